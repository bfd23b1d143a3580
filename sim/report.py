"""Timed greedy generation: drive the cycle simulator one decode step per token and report.

:func:`simulate_generation` feeds a compiled GPT's decode step to
:class:`~pimgpt.sim.cycle.CycleSimulator` position by position, exactly as
:meth:`~pimgpt.sim.machine.FunctionalMachine.generate` does (one step per prompt token, then one
per generated token but the last). With ``timing_only=False`` the functional machine runs in
lockstep and supplies the real next tokens; with ``timing_only=True`` no values are computed and
every position after the prompt is fed token 0 (only the embedding-row address depends on it).

:class:`SimReport` turns the cycle counts, DRAM command counters and busy intervals into latency,
throughput, energy (:mod:`pimgpt.sim.energy`), row-hit rate, time shares and per-channel
utilisation. A "token" in per-token figures is one decode step (prefill is token by token too).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl.params import MachineConfig
from pimgpt.hdl.timing import DramCmd
from pimgpt.mapping.pimbin import PimBinary
from pimgpt.sim.cycle import CycleSimulator, Interval
from pimgpt.sim.energy import (ASIC_OP_KIND, COMPONENTS, EnergyBreakdown, EnergyModel, Events,
                               energy)
from pimgpt.sim.trace import TraceEntry

#: Interval kinds of the cycle simulator and how reports name them.
KINDS: dict[str, str] = {"mac": "PIM MAC", "move": "data movement", "asic": "ASIC vector"}

#: Vector-memory words each element of a vector op reads plus writes (the estimate behind
#: ``Events.vmem_words``; a broadcast operand is counted as if it were a full vector).
_VMEM_WORDS_PER_ELEM: dict[str, int] = {
    "VADD": 3, "VSUB": 3, "VMUL": 3, "VADDI": 2, "VMULI": 2, "VMOV": 2, "VSET": 1, "VSUM": 1,
    "VMAX": 1, "VARGMAX": 1, "VEXP": 2, "VRECIP": 2, "VRSQRT": 2, "VGELU": 2,
}

TIMING_ONLY_NOTE = ("timing only: prompt tokens, then token 0 at every generated position "
                    "(no values computed)")
FULL_NOTE = "full run: the functional machine supplied each generated token"


class BusyTime:
    """Length of the union of spans added step by step.

    Spans added with ``horizon`` h may overlap earlier ones, but every later span must start at
    or after h (each simulator run starts where the previous one ended), so merged segments that
    end by h are final and only the rest is kept.
    """

    def __init__(self) -> None:
        self.done = 0
        self.pending: list[tuple[int, int]] = []

    def add(self, spans: Iterable[tuple[int, int]], horizon: int) -> None:
        """Merge ``spans`` (start, end) in; later spans start at or after ``horizon``."""
        segs = sorted(self.pending + [(s, e) for s, e in spans if e > s])
        merged: list[list[int]] = []
        for s, e in segs:
            if merged and s <= merged[-1][1]:
                if e > merged[-1][1]:
                    merged[-1][1] = e
            else:
                merged.append([s, e])
        self.pending = []
        for s, e in merged:
            if e <= horizon:
                self.done += e - s
            else:
                self.pending.append((s, e))

    @property
    def total(self) -> int:
        """Cycles covered by at least one span."""
        return self.done + sum(e - s for s, e in self.pending)


@dataclass
class SimReport:
    """Timing, energy and utilisation of one simulated generation."""

    model: str
    machine: str
    engine: str  # "fast" (closed-form column runs) or "event" (every command issued)
    timing_only: bool
    prompt_ids: list[int]
    n_tokens: int
    fed_ids: list[int]  # token fed at each step
    generated_ids: list[int] | None  # None when timing_only
    step_cycles: list[int]
    instructions_per_step: int
    dram_mhz: float
    channels: int
    banks_per_channel: int
    counters: dict[str, int]
    events: Events
    energy: EnergyBreakdown  # the whole run, joules
    kind_busy: dict[str, int]  # cycles any unit did each kind of work (union over units)
    any_busy: int  # cycles any unit did anything
    channel_busy: list[int]  # cycles each channel was busy
    trace: list[TraceEntry] | None = field(default=None, repr=False)
    intervals: list[Interval] | None = field(default=None, repr=False)

    # --- derived figures ---------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Decode steps (tokens processed)."""
        return len(self.step_cycles)

    @property
    def total_cycles(self) -> int:
        """Cycles from the first step's start to the last step's end."""
        return sum(self.step_cycles)

    @property
    def seconds(self) -> float:
        """Simulated time of the whole generation."""
        return self.total_cycles / (self.dram_mhz * 1e6)

    @property
    def latency_us(self) -> float:
        """Mean time per token (decode step) in microseconds."""
        return self.total_cycles / self.steps / self.dram_mhz

    @property
    def tokens_per_second(self) -> float:
        """Tokens (decode steps) per simulated second."""
        return self.steps / self.seconds if self.total_cycles else 0.0

    @property
    def energy_per_token(self) -> EnergyBreakdown:
        """The energy breakdown per token (decode step), joules."""
        return self.energy.per_token(self.steps)

    @property
    def energy_per_token_mj(self) -> float:
        """Energy per token (decode step) in millijoules."""
        return self.energy.total / self.steps * 1e3

    @property
    def row_hit_rate(self) -> float | None:
        """Column commands that found their row open (None when there were none)."""
        hits, misses = self.counters.get("row_hits", 0), self.counters.get("row_misses", 0)
        return hits / (hits + misses) if hits + misses else None

    def _share(self, cycles: int) -> float:
        return cycles / self.total_cycles if self.total_cycles else 0.0

    @property
    def time_shares(self) -> dict[str, float]:
        """Share of the total time each kind of work was going on somewhere (they overlap)."""
        return {kind: self._share(self.kind_busy[kind]) for kind in KINDS}

    @property
    def overlap(self) -> float:
        """How much the shares overlap: their sum minus the share of time anything was busy."""
        return sum(self.time_shares.values()) - self._share(self.any_busy)

    @property
    def channel_utilisation(self) -> list[float]:
        """Share of the total time each channel was busy."""
        return [self._share(b) for b in self.channel_busy]

    @property
    def command_counts(self) -> dict[str, int]:
        """DRAM commands issued, machine-wide, by command (zeros included)."""
        return {c.name: int(self.counters.get(c.name, 0)) for c in DramCmd}

    @property
    def note(self) -> str:
        """How the tokens were chosen."""
        return TIMING_ONLY_NOTE if self.timing_only else FULL_NOTE

    # --- output ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (deterministic: no host timings)."""
        per_tok = self.energy_per_token.to_dict()
        ev = {k: getattr(self.events, k) for k in (
            "channels", "seconds", "act", "pre", "rd", "wr", "mac", "gb_write", "mac_readout",
            "wr16", "ref", "io_bits", "vmem_words", "banks_per_channel")}
        ev["asic_ops"] = dict(sorted(self.events.asic_ops.items()))
        shares = self.time_shares
        return {
            "model": self.model, "machine": self.machine, "engine": self.engine,
            "timing_only": self.timing_only, "token_note": self.note,
            "prompt_ids": list(self.prompt_ids), "tokens": self.n_tokens,
            "fed_ids": list(self.fed_ids),
            "generated_ids": None if self.generated_ids is None else list(self.generated_ids),
            "steps": self.steps, "instructions_per_step": self.instructions_per_step,
            "dram_mhz": self.dram_mhz, "total_cycles": self.total_cycles,
            "step_cycles": list(self.step_cycles), "seconds": self.seconds,
            "latency_us_per_token": self.latency_us,
            "tokens_per_second": self.tokens_per_second,
            "energy_per_token_mj": self.energy_per_token_mj,
            "energy_breakdown_mj_per_token": {k: v * 1e3 for k, v in per_tok.items()},
            "energy_total_j": self.energy.total,
            "row_hit_rate": self.row_hit_rate,
            "row_hits": int(self.counters.get("row_hits", 0)),
            "row_misses": int(self.counters.get("row_misses", 0)),
            "time_shares": {"pim_mac": shares["mac"], "data_movement": shares["move"],
                            "asic": shares["asic"], "any_busy": self._share(self.any_busy),
                            "overlap": self.overlap},
            "busy_cycles": {**{k: self.kind_busy[k] for k in KINDS}, "any": self.any_busy},
            "channel_utilisation": self.channel_utilisation,
            "command_counts": self.command_counts,
            "counters": {k: int(v) for k, v in sorted(self.counters.items())},
            "events": ev, "vmem_words_estimated": True,
        }

    def format_text(self) -> str:
        """A compact human-readable report."""
        mhz = self.dram_mhz
        cyc = self.step_cycles
        gen = "" if self.generated_ids is None else \
            f"\ngenerated ids: {','.join(map(str, self.generated_ids))}"
        hit = self.row_hit_rate
        lines = [
            f"model {self.model} on machine '{self.machine}': {self.steps} decode "
            f"step{'s' * (self.steps != 1)} "
            f"(prompt {len(self.prompt_ids)}, {self.n_tokens} generated), "
            f"{self.instructions_per_step:,} instructions per step, {self.engine} engine",
            f"tokens: {self.note}{gen}",
            "",
            f"latency      {self.latency_us:12.3f} us/token   {self.total_cycles / self.steps:,.0f}"
            f" cycles at {mhz:g} MHz (min {min(cyc):,}, max {max(cyc):,})",
            f"throughput   {self.tokens_per_second:12,.0f} tokens/s",
            f"energy       {self.energy_per_token_mj:12.5g} mJ/token   "
            f"{self.energy.total * 1e3:.5g} mJ in {self.seconds * 1e6:,.1f} us",
            "row hits     " + ("         n/a" if hit is None else f"{hit:12.1%}") +
            f"   {self.counters.get('row_hits', 0):,} hits, "
            f"{self.counters.get('row_misses', 0):,} misses",
            "",
            "time share (units work in parallel: shares overlap by "
            f"{self.overlap:.1%}; any unit busy {self._share(self.any_busy):.1%})",
        ]
        for kind, label in KINDS.items():
            lines.append(f"  {label:<16}{self.time_shares[kind]:8.1%}")
        util = self.channel_utilisation
        lines.append("channel busy " + "  ".join(f"ch{i} {u:.1%}" for i, u in enumerate(util)))
        lines.append("")
        lines.append(f"energy per token {'mJ':>12} {'share':>7}")
        per_tok = self.energy_per_token
        total = per_tok.total
        for name in COMPONENTS:
            v = getattr(per_tok, name)
            lines.append(f"  {name:<16}{v * 1e3:12.5g} {v / total if total else 0:7.1%}")
        lines.append(f"  {'total':<16}{total * 1e3:12.5g} {1 if total else 0:7.1%}")
        lines.append("  (vector-memory words estimated from element counts and I/O)")
        counts = [f"{k} {v:,}" for k, v in self.command_counts.items() if v]
        lines.append("")
        lines.append("commands     " + "  ".join(counts))
        return "\n".join(lines)


def counter_events(counters: Counter, config: MachineConfig, cycles: int) -> Events:
    """Energy events of a run from the cycle simulator's counters."""
    nb = config.geometry.banks_per_channel
    c = lambda name: int(counters.get(name, 0))  # noqa: E731
    asic: dict[str, int] = {}
    vmem = c("io_bits") // 16
    for key in sorted(counters):
        if not key.startswith("asic_") or key == "asic_cycles":
            continue
        op = key[len("asic_"):]
        kind = ASIC_OP_KIND.get(op)
        if kind is not None:
            asic[kind] = asic.get(kind, 0) + c(key)
        vmem += c(key) * _VMEM_WORDS_PER_ELEM.get(op, 2)
    return Events(
        channels=config.geometry.channels, seconds=cycles / (config.clocks.dram_mhz * 1e6),
        act=c("ACT16") * nb + c("ACT"), pre=c("PREA") * nb + c("PRE"), rd=c("RD"), wr=c("WR"),
        mac=c("MAC16") * nb + c("MAC"), gb_write=c("WRGB"), mac_readout=c("RDMAC"),
        wr16=c("WR16"), ref=c("REF"), io_bits=c("io_bits"), asic_ops=asic, vmem_words=vmem,
        banks_per_channel=nb)


def simulate_generation(config: MachineConfig, binary: PimBinary, prompt_ids: Sequence[int],
                        n_tokens: int, *, timing_only: bool = True, trace: bool = False,
                        timeline: bool = False, progress: Callable[[int], None] | None = None,
                        fast: bool = True, energy_model: EnergyModel | None = None
                        ) -> SimReport:
    """Time greedy generation of ``n_tokens`` after ``prompt_ids`` with ``binary``'s decode step.

    ``trace`` keeps every DRAM command (``report.trace``), ``timeline`` every busy interval
    (``report.intervals``); ``progress`` is called with each position after its step; ``fast``
    False uses the command-by-command reference engine.
    """
    from pimgpt.sim.machine import check_generation
    prompt, total = check_generation(binary.meta, prompt_ids, n_tokens)
    meta = binary.meta["model"]
    machine = None
    if not timing_only:
        if binary.image is None:
            raise PimgptError("the program has no DRAM image (compiled layout-only), so no "
                              "tokens can be computed: simulate it timing-only")
        from pimgpt.sim.machine import FunctionalMachine
        machine = FunctionalMachine(config)
        machine.load(binary)
        machine.reset()
    sim = CycleSimulator(config, fast=fast, trace=trace, timeline=True)
    sim.load(binary)
    assert sim.intervals is not None
    nc = config.geometry.channels
    kind_busy = {k: BusyTime() for k in KINDS}
    any_busy = BusyTime()
    chan_busy = [BusyTime() for _ in range(nc)]
    kept: list[Interval] = []
    step_cycles: list[int] = []
    fed: list[int] = []
    generated: list[int] = []
    token = prompt[0]
    for pos in range(total):
        if pos < len(prompt):
            token = prompt[pos]
        fed.append(token)
        if machine is not None:
            machine.set_reg(isa.REG_POS, pos)
            machine.set_reg(isa.REG_TOKEN_IN, token)
            out_token = int(machine.run().outputs["token"])
        step = sim.run({isa.REG_POS: pos, isa.REG_TOKEN_IN: token})
        step_cycles.append(step.cycles)
        spans = sim.intervals
        by_kind: dict[str, list[tuple[int, int]]] = {k: [] for k in KINDS}
        by_chan: list[list[tuple[int, int]]] = [[] for _ in range(nc)]
        for iv in spans:
            by_kind.setdefault(iv.kind, []).append((iv.start, iv.end))
            if iv.unit.startswith("ch"):
                by_chan[int(iv.unit[2:])].append((iv.start, iv.end))
        for k, b in kind_busy.items():
            b.add(by_kind[k], step.end)
        any_busy.add(((iv.start, iv.end) for iv in spans), step.end)
        for c, b in enumerate(chan_busy):
            b.add(by_chan[c], step.end)
        if timeline:
            kept.extend(spans)
        spans.clear()
        if machine is not None:
            token = out_token
            if pos >= len(prompt) - 1 and len(generated) < n_tokens:
                generated.append(token)
        else:
            token = 0
        if progress is not None:
            progress(pos)
    sim.finish()
    cycles = sum(step_cycles)
    counters = Counter({k: v for k, v in sim.counters.items() if v})
    events = counter_events(counters, config, cycles)
    return SimReport(
        model=str(meta.get("name", "?")), machine=config.name,
        engine="fast" if fast else "event", timing_only=timing_only, prompt_ids=prompt,
        n_tokens=n_tokens, fed_ids=fed, generated_ids=None if machine is None else generated,
        step_cycles=step_cycles, instructions_per_step=len(binary.code),
        dram_mhz=float(config.clocks.dram_mhz), channels=nc,
        banks_per_channel=config.geometry.banks_per_channel,
        counters=dict(sorted(counters.items())), events=events,
        energy=energy(events, energy_model or EnergyModel.paper_default()),
        kind_busy={k: b.total for k, b in kind_busy.items()}, any_busy=any_busy.total,
        channel_busy=[b.total for b in chan_busy],
        trace=sim.trace, intervals=kept if timeline else None)

