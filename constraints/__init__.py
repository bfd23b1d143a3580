"""Timing and pin constraints: SDC files for the ASIC's clocks derived from the machine
description (:mod:`pimgpt.constraints.sdc`) and the FPGA prototype's clock and pin constraints
for the ULX3S-85F board (:mod:`pimgpt.constraints.board`). ``pimgpt constraints`` writes them;
the files in this folder are the ``paper`` and ``tiny`` presets' (tests keep them current)."""
