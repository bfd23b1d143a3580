"""Time shares of one simulated decode step: how much of it the PIM channels spend in VMMs,
in other channel work, the ASIC alone, or idle (the paper's "non-VMM share" and row hits).

Shares come from the cycle simulator's timeline (:attr:`CycleSimulator.intervals`) as unions of
busy spans, so overlapping work is counted once:

- ``vmm``: at least one channel executes a VMM instruction (MAC_ABK, MAC_SBK, WR_GB, RD_MAC);
- ``mac``: at least one channel executes MAC_ABK or MAC_SBK;
- ``pim_any``: at least one channel executes anything (also RD_BANK, WR_BANK, WR_ABK);
- ``vector``: the vector unit works on an operation (start to result);
- ``asic_only``: the vector unit works while no channel does; ``idle``: neither.
"""

from __future__ import annotations

from typing import Iterable

from pimgpt.hdl import isa
from pimgpt.hdl.params import MachineConfig

VMM_OPS = frozenset({"MAC_ABK", "MAC_SBK", "WR_GB", "RD_MAC"})
MAC_OPS = frozenset({"MAC_ABK", "MAC_SBK"})


def paper_assumptions(config: MachineConfig) -> MachineConfig:
    """``config`` under the PIM-GPT paper's evaluation assumptions: data moves between the ASIC
    and the channels cost nothing on the ASIC side (``asic.data_path = "ideal"``) and the
    controller dispatches far ahead of its units (64-deep queues). The RTL builds neither
    (its per-channel data movers and 4-deep queues are ``config``'s own); the paper-claim
    checks report both machines."""
    import dataclasses

    return config.replace(name=f"{config.name}-ideal",
                          asic=dataclasses.replace(config.asic, data_path="ideal",
                                                   queue_depth=64))


def union_length(spans: Iterable[tuple[int, int]], lo: int, hi: int) -> int:
    """Cycles of [lo, hi) covered by at least one (start, end) span."""
    segs = sorted((max(s, lo), min(e, hi)) for s, e in spans)
    total, cur_s, cur_e = 0, None, None
    for s, e in segs:
        if e <= s:
            continue
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        elif e > cur_e:
            cur_e = e
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def step(config: MachineConfig, model: str, position: int, max_tokens: int,
         timeline: bool = True, options=None) -> dict:
    """Compile built-in ``model`` for ``config`` (layout only, ``options`` as
    :class:`~pimgpt.mapping.compiler.CompileOptions`) and time one decode step at ``position``
    on a fresh fast-engine simulator: cycles, latency, row hits and (with ``timeline``) the
    busy cycles and shares of the module docstring."""
    from pimgpt.mapping.builtin import builtin_model
    from pimgpt.mapping.compiler import compile_model
    from pimgpt.sim.cycle import CycleSimulator

    binary, report = compile_model(config, builtin_model(model), max_tokens, with_image=False,
                                   options=options)
    sim = CycleSimulator(config, fast=True, timeline=timeline)
    sim.load(binary)
    st = sim.run({isa.REG_POS: position, isa.REG_TOKEN_IN: 1})
    hits, misses = st.counters.get("row_hits", 0), st.counters.get("row_misses", 0)
    out = {
        "model": model, "machine": {"channels": config.geometry.channels,
                                    "asic_mhz": config.clocks.asic_mhz,
                                    "dram_mhz": config.clocks.dram_mhz},
        "instructions": report.instructions,
        "instructions_executed": int(st.counters.get("instructions", 0)),
        "cycles": st.cycles, "latency_us": st.cycles / config.clocks.dram_mhz,
        "row_hits": int(hits), "row_misses": int(misses),
        "row_hit_rate": hits / (hits + misses) if hits + misses else None,
    }
    if timeline:
        iv = sim.intervals
        lo, hi = st.start, st.end
        chan = [(i.start, i.end) for i in iv if i.unit != "vector"]
        vec = [(i.start, i.end) for i in iv if i.unit == "vector"]
        busy = {
            "vmm": union_length([(i.start, i.end) for i in iv
                                 if i.unit != "vector" and i.name in VMM_OPS], lo, hi),
            "mac": union_length([(i.start, i.end) for i in iv
                                 if i.unit != "vector" and i.name in MAC_OPS], lo, hi),
            "pim_any": union_length(chan, lo, hi),
            "vector": union_length(vec, lo, hi),
            "any": union_length(chan + vec, lo, hi),
        }
        busy["asic_only"] = busy["any"] - busy["pim_any"]
        busy["idle"] = st.cycles - busy["any"]
        out["busy_cycles"] = busy
        out["shares"] = {k: v / st.cycles if st.cycles else 0.0 for k, v in busy.items()}
    return out
