"""The machine description (parameters, ISA) and the Amaranth components built from it."""
