"""Verilog generation, manifests and synthesis reports (filled in by the RTL work)."""
