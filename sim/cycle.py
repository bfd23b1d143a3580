"""Cycle-accurate timing of PIM-GPT programs at DRAM-command level.

Time is counted in DRAM command-clock cycles (``clocks.dram_mhz``) from 0. The model:

- **Controller** (the RTL controller's rules, hdl/controller.py and hdl/top.py). Instructions
  are dispatched in program order, one per ``asic.issue_cycles`` ASIC cycles; scalar and branch
  instructions finish at dispatch. A PIM instruction goes to the queue of every channel it
  issues commands on; a vector instruction, and a PIM instruction that moves data between vector
  memory and the channels, to the ASIC queue. Every queue holds ``asic.queue_depth`` entries and
  dispatch waits while one it needs is full. ASIC-queue ops start in program order, at most one
  per cycle, when their unit is free and the vector-memory words they read (written by earlier
  instructions) are ready and those they write are no longer in use (a scoreboard over address
  ranges). ``SYNC`` and ``END`` wait for every unit (an idle channel owing a refresh issues it
  first); dispatch resumes the cycle after a ``SYNC`` that had to wait.
- **Data movers.** Each channel has one (hdl/top.py): a data-moving instruction starts when the
  movers of all its channels are idle; a write to the channels first stages its words, one
  ``vector_lanes`` row per ASIC cycle, then the channels send them; a read collects each
  channel's data, then drains that channel's words into vector memory, one row per ASIC cycle.
- **Channels.** Each PIM instruction becomes DRAM commands on every channel of its mask
  (ACT/ACT16, MAC/MAC16, WRGB, RDMAC, RD/WR, WR16, PRE/PREA, REF), each issued at the earliest
  cycle that satisfies every rule of :data:`pimgpt.hdl.timing.RULES`, the tFAW window and one
  command per cycle, in order (open-row policy: a row stays open until a command needs another
  row of that bank). Refresh: when a channel starts an instruction or opens a row at or after a
  refresh due time (every tREFI), it first closes its rows and issues REF at the earliest legal
  cycle no sooner than the due time.
- **Vector unit.** An operation starts on an ASIC clock edge; on N elements it streams
  ceil(N / lanes) beats, one per ASIC cycle, and completes after the pipeline latency
  (:func:`pimgpt.hdl.vector.op_latency`: deeper for exp, reciprocal, rsqrt and GELU, log2(lanes)
  adder levels more for reductions); when the next one may start is the unit's issue rule
  (:class:`pimgpt.hdl.vector.VectorIssue`: ops overlap, results leave in order).

``fast=True`` computes each run of same-kind column commands inside one row in closed form
(first command by the rules, the rest at the fixed spacing the rules force); the result is
identical to issuing every command (``fast=False``), which the tests check on many programs.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import MachineConfig, ns_to_cycles
from pimgpt.hdl.timing import (ALL_BANK_CMDS, FAW, REFRESH, RULE_CMDS, RULES, DramCmd, Scope,
                               bank_group, rule_cmd)
from pimgpt.hdl.controller import asic_edge, dispatch_step
from pimgpt.hdl.vector import VectorIssue
from pimgpt.mapping.pimbin import PimBinary
from pimgpt.sim.scalar import SCALAR_EXEC, exec_scalar, set_reg
from pimgpt.sim.trace import TraceEntry

NEVER = -(1 << 60)
C = DramCmd
_FORM = [rule_cmd(c).value for c in DramCmd]  # the rule form of each command, by value
_ACT = DramCmd.ACT.value
_BANK, _GROUP, _CHANNEL = Scope.BANK.value, Scope.GROUP.value, Scope.CHANNEL.value


@dataclass
class Interval:
    """A unit's busy span (for shares and the timeline). A channel span starts when the
    channel could take the instruction, so a refresh it waits for counts as its time."""

    unit: str  # "ch0".., "vector"
    kind: str  # "mac", "move", "asic"
    name: str
    start: int
    end: int


@dataclass
class StepTiming:
    """One program run: its span in cycles and what happened."""

    start: int
    end: int
    counters: Counter = field(default_factory=Counter)

    @property
    def cycles(self) -> int:
        return self.end - self.start


class _Channel:
    """Command timing state of one PIM channel.

    By default the channel issues its commands strictly in order. With
    ``geometry.gb_double_buffer`` it has two in-order command streams: **data-in** (the WRGB
    commands of WR_GB) and **compute** (every other command). Commands are booked when their
    instruction reaches the channel, each at the earliest cycle >= its stream's previous command
    that satisfies every rule of RULES, tFAW and the one-command-per-cycle bus against every
    command already booked on the channel, earlier *and later* ones, so a booked command never
    moves: WRGBs fill the command-bus cycles that the compute commands queued before them leave
    free, without delaying any of them (compute first); compute commands queued after a WR_GB
    go around its WRGBs. Dependencies go by global-buffer column: a MAC run starts after the
    last WRGB that wrote one of its columns, a WR_GB after the last MAC that read one of the
    columns it overwrites.
    """

    def __init__(self, sim: "CycleSimulator", index: int):
        self.sim, self.index = sim, index
        g = sim.cfg.geometry
        self.nb = g.banks_per_channel
        self.ngroups = g.bank_groups
        self.group = [bank_group(b, sim.cfg) for b in range(self.nb)]
        self.open: list[int | None] = [None] * self.nb
        # last issue cycle of each rule form (indexed by DramCmd value): per bank, per group,
        # per channel; in-order issue makes "last" the latest (double-buffered: of the compute
        # stream, whose commands are booked in cycle order)
        self.lb = [[NEVER] * self.nb for _ in DramCmd]
        self.lg = [[NEVER] * self.ngroups for _ in DramCmd]
        self.lc = [NEVER for _ in DramCmd]
        self.last = -1  # the channel's latest command (either stream)
        self.faw: deque[int] = deque(maxlen=FAW.count)
        self.next_ref = sim.t_refi
        self.counts: Counter = sim.counters
        self.db = g.gb_double_buffer
        if self.db:
            if not hasattr(sim, "db_before"):
                _db_tables(sim)
            self._prune_at = 4096
            self.clast = -1  # compute stream's last command
            self.dlast = -1  # data-in stream's last WRGB
            self.wrgb: list[int] = []  # cycles of the booked WRGBs (increasing)
            self.ccyc: list[int] = []  # cycles of the booked compute commands (increasing)
            # per rule form: cycles of compute commands that a rule links with WRGB
            self.cross: dict[int, list[int]] = {f: [] for f in sim.db_after}
            self.gb_written = [NEVER] * g.gb_cols  # last WRGB into each buffer column
            self.gb_read = [NEVER] * g.gb_cols  # last MAC reading each buffer column
            if sim.trace is not None and not isinstance(sim.trace, _CycleOrderedTrace):
                sim.trace = _CycleOrderedTrace(sim.trace)

    def free_from(self) -> int:
        """The first cycle at which the channel may issue another command (double-buffered:
        the earlier of its two streams')."""
        return (min(self.clast, self.dlast) if self.db else self.last) + 1

    # --- one command -------------------------------------------------------------------------

    def earliest(self, cmd: DramCmd, bank: int | None, t: int) -> int:
        """First cycle >= t at which ``cmd`` satisfies every rule (bank None: all banks)."""
        if self.db:
            if cmd is C.WRGB:
                return self._earliest_data_in(t)
            t = max(t, self.clast + 1)
        else:
            t = max(t, self.last + 1)
        form = _FORM[cmd.value]
        for first, scope, d in self.sim.cons[form]:
            if bank is None or scope == _CHANNEL:
                prev = self.lc[first]
            elif scope == _BANK:
                prev = self.lb[first][bank]
            elif scope == _GROUP:
                prev = self.lg[first][self.group[bank]]
            else:
                gb = self.group[bank]
                prev = max((v for i, v in enumerate(self.lg[first]) if i != gb), default=NEVER)
            if prev + d > t:
                t = prev + d
        if form == _ACT and len(self.faw) == FAW.count:
            t = max(t, self.faw[0] + self.sim.t_faw)
        if self.db:
            t = self._around_data_in(form, t)
        return t

    def _around_data_in(self, form: int, t: int) -> int:
        """Double-buffered: the first cycle >= t at which a compute command of rule form
        ``form`` keeps every rule with the booked WRGBs, before and after it."""
        before = self.sim.db_before[form]  # WRGB -> form
        after = self.sim.db_after.get(form, 0)  # form -> WRGB
        w = self.wrgb
        while w:
            i = bisect_right(w, t)
            if i and (w[i - 1] == t or w[i - 1] + before > t):
                t = max(t + 1, w[i - 1] + before)
                continue
            if i < len(w) and w[i] < t + after:
                t = w[i] + max(before, 1)
                continue
            return t
        return t

    def _earliest_data_in(self, t: int) -> int:
        """Double-buffered: the first cycle >= t after the previous WRGB at which a WRGB keeps
        every rule with the booked compute commands (before and after it) and finds the command
        bus free."""
        sim = self.sim
        t = max(t, self.dlast + 1, self.dlast + sim.db_ww)
        busy = self.ccyc
        while True:
            moved = False
            i = bisect_right(busy, t)
            if i and busy[i - 1] == t:
                t += 1
                continue
            for form, cyc in self.cross.items():
                if not cyc:
                    continue
                j = bisect_right(cyc, t)
                d = sim.db_after[form]  # form -> WRGB
                if j and cyc[j - 1] + d > t:
                    t, moved = cyc[j - 1] + d, True
                    break
                d2 = sim.db_before[form]  # WRGB -> form
                if j < len(cyc) and cyc[j] < t + d2:
                    t, moved = max(cyc[j] + d, cyc[j] + 1), True
                    break
            if not moved:
                return t

    def record(self, cmd: DramCmd, bank: int | None, t: int, row: int | None = None,
               col: int | None = None, repeat: int = 1, step: int = 0) -> None:
        """Book ``repeat`` commands at t, t+step, ... (all rule-legal, checked by the caller)."""
        form = _FORM[cmd.value]
        last_t = t + (repeat - 1) * step
        if self.db:
            self._record_db(cmd, form, t, last_t, repeat, step)
        if not self.db or cmd is not C.WRGB:
            if cmd in ALL_BANK_CMDS:
                self.lb[form] = [last_t] * self.nb
                self.lg[form] = [last_t] * self.ngroups
            elif bank is not None:
                self.lb[form][bank] = last_t
                self.lg[form][self.group[bank]] = last_t
            self.lc[form] = last_t
        self.last = max(self.last, last_t)
        if form == _ACT:
            self.faw.append(t)
        if cmd is C.ACT16:
            self.open = [row] * self.nb
        elif cmd is C.ACT:
            self.open[bank] = row
        elif cmd in (C.PREA, C.REF):
            self.open = [None] * self.nb
        elif cmd is C.PRE:
            self.open[bank] = None
        self.counts[cmd.name] += repeat
        if self.sim.trace is not None:
            tb = None if cmd in ALL_BANK_CMDS else bank
            for i in range(repeat):
                self.sim.trace.append(TraceEntry(t + i * step, self.index, cmd, tb, row,
                                                 None if col is None else col + i))

    def _record_db(self, cmd: DramCmd, form: int, t: int, last_t: int, repeat: int,
                   step: int) -> None:
        cycles = range(t, last_t + 1, step) if repeat > 1 else (t,)
        if cmd is C.WRGB:
            self.dlast = last_t
            self.wrgb.extend(cycles)
        else:
            self.clast = last_t
            self.ccyc.extend(cycles)
            if form in self.cross:
                self.cross[form].extend(cycles)
        if len(self.wrgb) + len(self.ccyc) > self._prune_at:
            # a command is never booked before its stream's last one, so entries more than the
            # longest rule before both streams' last commands can no longer constrain one
            floor = min(self.clast, self.dlast) - self.sim.db_reach
            for lst in (self.wrgb, self.ccyc, *self.cross.values()):
                del lst[:bisect_right(lst, floor)]
            self._prune_at = max(4096, 2 * (len(self.wrgb) + len(self.ccyc)))

    def issue(self, cmd: DramCmd, bank: int | None, t: int, row: int | None = None,
              col: int | None = None) -> int:
        t = self.earliest(cmd, bank, t)
        self.record(cmd, bank, t, row, col)
        return t

    # --- row management and refresh ----------------------------------------------------------

    def refresh_if_due(self, t: int) -> None:
        """Issue every REF due by cycle ``t`` (closing the rows first), each >= its due time."""
        while max(t, (self.clast if self.db else self.last) + 1) >= self.next_ref:
            due = self.next_ref
            if any(r is not None for r in self.open):
                self.issue(C.PREA, None, due)
            self.issue(C.REF, None, due)
            self.next_ref += self.sim.t_refi

    def ensure_row(self, bank: int | None, row: int, t: int) -> bool:
        """Open ``row`` (in every bank when bank is None); True when it was already open."""
        banks = range(self.nb) if bank is None else (bank,)
        if all(self.open[b] == row for b in banks):
            return True
        self.refresh_if_due(t)
        if bank is None:
            if any(r is not None for r in self.open):
                self.issue(C.PREA, None, t)
            self.issue(C.ACT16, None, t, row)
        else:
            if self.open[bank] is not None:
                self.issue(C.PRE, bank, t)
            self.issue(C.ACT, bank, t, row)
        return False

    def column_run(self, cmd: DramCmd, bank: int | None, first_col: int, n: int, t: int,
                   on_bus: bool = True, gb: int | None = None) -> int:
        """``n`` column commands over consecutive columns (element-column index) starting at
        ``first_col``, opening rows as needed; returns the cycle of the last one. ``gb``: the
        first global-buffer column a MAC run reads (double-buffered channels order MACs and
        WRGBs by the buffer columns they share; None: every column)."""
        reads_gb = self.db and cmd in (C.MAC, C.MAC16) and n > 0
        ready = t  # the MACs (not the row commands) wait for their buffer columns
        if reads_gb:
            cols = slice(None) if gb is None else slice(gb, gb + n)
            ready = max(t, max(self.gb_written[cols]) + 1)
        cpr = self.sim.cols_per_row
        c, end, last = first_col, first_col + n, t
        while c < end:
            row, col = divmod(c, cpr)
            k = min(end - c, cpr - col)
            if self.ensure_row(bank, row, t):
                self.sim.counters["row_hits"] += k
            else:
                self.sim.counters["row_hits"] += k - 1
                self.sim.counters["row_misses"] += 1
            last = self._run(cmd, bank, row, col, k, ready)
            c += k
        if reads_gb:
            n_cols = len(self.gb_read[cols])
            self.gb_read[cols] = [last] * n_cols
        return last

    def _run(self, cmd: DramCmd, bank: int | None, row: int | None, col: int | None, k: int,
             t: int) -> int:
        """k same-kind commands back to back (no row change in between)."""
        t0 = self.earliest(cmd, bank, t)
        if k > 1 and self.sim.fast and self._closed_form(cmd, t0):
            # Every rule from an earlier command binds the first one hardest, so the others
            # follow at the spacing the rules between two such commands force.
            step = self.sim.self_step[(_FORM[cmd.value], bank is None)]
            self.record(cmd, bank, t0, row, col, repeat=k, step=step)
            return t0 + (k - 1) * step
        self.record(cmd, bank, t0, row, col)
        tl = t0
        for i in range(1, k):
            tl = self.issue(cmd, bank, tl, row, None if col is None else col + i)
        return tl

    def _closed_form(self, cmd: DramCmd, t0: int) -> bool:
        """Whether a run starting at t0 follows the fixed spacing: always with one command
        stream; double-buffered, when no command of the other stream is booked within reach
        of it (otherwise the event path books it command by command)."""
        if not self.db:
            return True
        other = self.ccyc if cmd is C.WRGB else self.wrgb
        return not other or other[-1] < t0 - self.sim.db_reach

    def channel_cmds(self, cmd: DramCmd, n: int, t: int, col: int | None = None) -> int:
        """``n`` channel-level commands (WRGB, RDMAC) back to back; double-buffered, a WRGB run
        (``col``: its first buffer column) starts after the last MAC reading those columns."""
        if self.db and cmd is C.WRGB and n > 0:
            cols = slice(None) if col is None else slice(col, col + n)
            t = max(t, max(self.gb_read[cols]) + 1)
            last = self._run(cmd, None, None, col, n, t)
            n_cols = len(self.gb_written[cols])
            self.gb_written[cols] = [last] * n_cols
            return last
        return self._run(cmd, None, None, col, n, t)


def _db_tables(sim: "CycleSimulator") -> None:
    """Rule distances between WRGB and the compute commands (double-buffered channels), by rule
    form: ``db_before[f]`` WRGB -> f, ``db_after[f]`` f -> WRGB (for the forms some rule links
    with WRGB), ``db_ww`` WRGB -> WRGB, ``db_reach`` the longest rule (+1)."""
    w = C.WRGB.value
    sim.db_before = [max((d for f, _s, d in sim.cons[x] if f == w), default=0)
                     for x in range(len(sim.cons))]
    after = {f: max((d for ff, _s, d in sim.cons[w] if ff == f), default=0)
             for f in range(len(sim.cons)) if f != w}
    sim.db_after = {f: d for f, d in after.items() if d or sim.db_before[f]}
    sim.db_ww = max(max((d for f, _s, d in sim.cons[w] if f == w), default=0), 1)
    sim.db_reach = max([d for rules in sim.cons for _f, _s, d in rules]
                       + [sim.t_faw, 0]) + 1


class _CycleOrderedTrace(list):
    """The command trace of a double-buffered machine: its two command streams book commands
    out of cycle order, so each entry is inserted after every entry of a cycle <= its own
    (the trace stays in cycle order, as ``check-trace`` expects within a channel)."""

    def append(self, entry: TraceEntry) -> None:
        if not self or self[-1].cycle <= entry.cycle:
            super().append(entry)
        else:
            self.insert(bisect_right(self, entry.cycle, key=lambda e: e.cycle), entry)


class CycleSimulator:
    """Times programs on one machine configuration (state persists across runs)."""

    def __init__(self, config: MachineConfig, *, fast: bool = True, trace: bool = False,
                 timeline: bool = False):
        self.cfg = config
        g, clk = config.geometry, config.clocks
        self.fast = fast
        self.trace: list[TraceEntry] | None = [] if trace else None
        # with the trace: (channel, cycle) each channel op was presented to its sequencer
        self.presented: list[tuple[int, int]] | None = [] if trace else None
        self.intervals: list[Interval] | None = [] if timeline else None
        self.lanes = g.mac_lanes
        self.cols_per_row = g.cols_per_row
        self.nb, self.nc = g.banks_per_channel, g.channels
        # rules by the command they constrain, zero distances dropped
        # (first form, scope, cycles) by second form; all as ints for speed
        self.cons: list[list[tuple[int, int, int]]] = [[] for _ in DramCmd]
        for r in RULES:
            d = r.cycles(config)
            if d > 0:
                self.cons[r.second.value].append((r.first.value, r.scope.value, d))
        self.t_faw = FAW.cycles(config)
        self.t_refi = REFRESH.interval(config)
        # spacing of back-to-back same-kind commands (the closed form of the fast path)
        self.self_step: dict[tuple[int, bool], int] = {}
        for form in RULE_CMDS:
            for allb in (True, False):
                scopes = {_BANK, _GROUP, _CHANNEL} | ({Scope.OTHER_GROUP.value} if allb else set())
                d = max((dd for f, s, dd in self.cons[form.value]
                         if f == form.value and s in scopes), default=0)
                self.self_step[(form.value, allb)] = max(d, 1)
        cyc = lambda name: ns_to_cycles(getattr(config.timing, name), clk.dram_mhz)  # noqa: E731
        self.rdmac_latency = cyc("tCL_REG") + cyc("tBL")
        self.rd_latency = cyc("tCL") + cyc("tBL")
        self.wrgb_latency = cyc("tCWL_GB") + cyc("tBL")
        self.wr_latency = cyc("tCWL") + cyc("tBL")
        self.asic_ns = 1000.0 / clk.asic_mhz
        self.dispatch_step = dispatch_step(config)  # the RTL controller's own figure
        self.counters: Counter = Counter()
        self.channels = [_Channel(self, c) for c in range(self.nc)]
        self.vec_free = 0
        self.vec_issue = VectorIssue(config.asic, self.asic_cycles)  # the unit's issue rule
        # the ASIC queue (vector and mover ops, started in program order) and the data mover
        self.asic_last = NEVER  # start of the last ASIC-queue op
        self.mover_free = [0] * self.nc  # each channel's data mover
        # leave cycles of the last queue_depth entries of each channel queue and the ASIC queue
        self.queue_depth = config.asic.queue_depth
        self.left: dict[object, deque[int]] = {
            key: deque(maxlen=self.queue_depth) for key in [*range(self.nc), "asic"]}
        self.dispatch = 0
        self.now = 0  # completion of the last run
        self.writes: list[tuple[int, int, int]] = []  # vmem (lo, hi, ready)
        self.reads: list[tuple[int, int, int]] = []  # vmem (lo, hi, done)
        self.code: list[tuple[Op, dict[str, int]]] = []
        self.meta: dict = {}
        self.regs = [0] * isa.NUM_SREGS

    # --- helpers -----------------------------------------------------------------------------

    def asic_cycles(self, n: int) -> int:
        """ASIC cycles as DRAM command-clock cycles (rounded up)."""
        return ns_to_cycles(n * self.asic_ns, self.cfg.clocks.dram_mhz)

    def _ready(self, lo: int, hi: int) -> int:
        t = 0
        for a, b, r in self.writes:
            if a < hi and lo < b and r > t:
                t = r
        return t

    def _free(self, lo: int, hi: int) -> int:
        t = self._ready(lo, hi)
        for a, b, r in self.reads:
            if a < hi and lo < b and r > t:
                t = r
        return t

    def _note(self, reads: Iterable[tuple[int, int]], read_done: int,
              writes: Iterable[tuple[int, int]], ready: int) -> None:
        for lo, hi in reads:
            if hi > lo:
                self.reads.append((lo, hi, read_done))
        for lo, hi in writes:
            if hi > lo:
                self.writes.append((lo, hi, ready))
        if len(self.reads) + len(self.writes) > 32:
            # Nothing later starts before both its dispatch and its unit are free: entries that
            # end by then can no longer delay anything.
            floor = max(self.dispatch, min([self.vec_free] + [c.free_from() for c in self.channels]))
            self.reads = [e for e in self.reads if e[2] > floor]
            self.writes = [e for e in self.writes if e[2] > floor]

    def _span(self, unit: str, kind: str, op: Op, start: int, end: int) -> None:
        if self.intervals is not None:
            self.intervals.append(Interval(unit, kind, op.name, start, end))

    # --- programs ----------------------------------------------------------------------------

    def load(self, binary: PimBinary) -> None:
        """Take a program (checked against this configuration)."""
        binary.require_machine(self.cfg)
        self.load_code(binary.code, binary.meta)

    def load_code(self, code: Sequence[isa.Instruction], meta: dict | None = None) -> None:
        self.code = [(i.op, {f.name: int(i.args.get(f.name, 0))
                             for f in isa.FIELDS[isa.format_of(i.op)]}) for i in code]
        self.meta = dict(meta or {})

    def run(self, regs: dict[int, int] | None = None, max_steps: int = 50_000_000,
            start: int | None = None) -> StepTiming:
        """Time one run of the program from pc 0 to END. Its first dispatch is in cycle
        ``start`` (counted from reset; the machine idles, refreshing, until then) or, by
        default, in the cycle the last run ended."""
        r = self.regs  # persistent across runs, like the functional machine's
        for k, v in (regs or {}).items():
            set_reg(r, k, v)
        before = Counter(self.counters)
        if start is None:
            start = self.now
        elif start < self.now:
            raise PimgptError(f"a run cannot start at cycle {start}: the last one ended at "
                              f"{self.now}")
        self.dispatch = max(self.dispatch, start)
        pc, steps, code = 0, 0, self.code
        while True:
            if pc >= len(code):
                raise PimgptError(f"pc {pc} ran past the end of the program without END")
            op, a = code[pc]
            steps += 1
            if steps > max_steps:
                raise PimgptError(f"program did not reach END within {max_steps} instructions")
            self.counters["instructions"] += 1
            t = self.dispatch
            self.dispatch += self.dispatch_step
            if op in SCALAR_EXEC:
                nxt = exec_scalar(op, a, r)
                pc = pc + 1 if nxt is None else nxt
                continue
            if op is Op.END or op is Op.SYNC:
                idle = self._idle(t)
                if op is Op.END:
                    self.now = idle
                    break
                # the controller leaves SYNC the cycle after everything is idle
                self.dispatch = max(self.dispatch, idle + 1 if idle > t else idle)
            elif op is not Op.NOP:
                try:
                    t = self._execute(op, a, r, t)
                except PimgptError as exc:
                    raise PimgptError(f"pc {pc} ({op.name}): {exc}") from None
                self.dispatch = t + self.dispatch_step
            pc += 1
        delta = Counter(self.counters)
        delta.subtract(before)
        return StepTiming(start, self.now, +delta)

    def _channel_done(self) -> int:
        return max((c.last + 1 for c in self.channels if c.last >= 0), default=0)

    def _idle(self, t: int) -> int:
        """The first cycle >= ``t`` in which every unit has finished (SYNC / END): the vector
        unit, the mover and every sequencer, including a refresh that falls due meanwhile (an
        idle sequencer refreshes as soon as one is due and is busy until it has)."""
        done = max([t, self.vec_free, *self.mover_free, self._channel_done()]
                   + [e[2] for e in self.writes] + [e[2] for e in self.reads])
        while True:
            due = [ch for ch in self.channels if ch.next_ref <= done]
            if not due:
                return done
            for ch in due:
                ch.refresh_if_due(done)
                done = max(done, ch.last + 1)

    def _room(self, keys: Iterable[object], t: int) -> int:
        """The first cycle >= ``t`` in which none of the queues ``keys`` is full: an entry
        leaves its queue in the cycle its unit takes it, and the queue counts it until then."""
        for key in keys:
            left = self.left[key]
            if len(left) == self.queue_depth:
                t = max(t, left[0] + 1)
        return t

    def finish(self) -> None:
        """Issue the refreshes due by the end of the last run (idle channels refresh too)."""
        for ch in self.channels:
            ch.refresh_if_due(self.now)

    # --- instruction timing ------------------------------------------------------------------

    def _eff(self, a: dict[str, int], regs: list[int], name: str) -> int:
        return a[name] + regs[a[name + "_reg"]]

    def _vspan(self, lo: int, n: int) -> tuple[int, int]:
        if lo < 0 or n < 0 or lo + n > self.cfg.asic.vmem_words:
            raise PimgptError(f"vector memory words {lo}..{lo + n - 1} are outside "
                              f"0..{self.cfg.asic.vmem_words - 1}")
        return lo, lo + n

    def _bank_span(self, addr: int, n: int) -> None:
        size = self.cfg.geometry.bank_elems
        if addr < 0 or n < 0 or addr + n > size:
            raise PimgptError(f"bank elements {addr}..{addr + n - 1} are outside the bank "
                              f"(0..{size - 1})")

    def _gb_span(self, col: int, n: int) -> None:
        if col + n > self.cfg.geometry.gb_cols:
            raise PimgptError(f"global-buffer columns {col}..{col + n - 1} exceed its "
                              f"{self.cfg.geometry.gb_cols} columns")

    def _bank(self, g: int) -> tuple[_Channel, int]:
        if not 0 <= g < self.nc * self.nb:
            raise PimgptError(f"bank {g} does not exist (0..{self.nc * self.nb - 1})")
        return self.channels[g // self.nb], g % self.nb

    def _chans(self, mask: int) -> list[_Channel]:
        if mask >> self.nc:
            raise PimgptError(f"channel mask 0x{mask:x} names channels this machine lacks")
        return [self.channels[c] for c in range(self.nc) if mask >> c & 1]

    def _execute(self, op: Op, a: dict[str, int], regs: list[int], t: int) -> int:
        """Time one PIM or vector instruction dispatched at ``t`` at the earliest; returns
        the cycle it is dispatched in (later when a queue it needs is full)."""
        if op in isa.PIM_OPS:
            return self._pim(op, a, regs, t)
        return self._vector(op, a, regs, t)

    def _asic_start(self, t: int) -> int:
        """Book the ASIC queue's head start at ``t`` (one op leaves the queue per cycle)."""
        self.asic_last = t
        self.left["asic"].append(t)
        return t

    def _present(self, ch: _Channel, t: int) -> None:
        """Channel ``ch`` sees its next op from cycle ``t``: the sequencer refreshes first if
        one is due, then takes the op (the op leaves the channel queue)."""
        if self.presented is not None:
            self.presented.append((ch.index, t))
        ch.refresh_if_due(t)
        self.left[ch.index].append(max(t, ch.last + 1))

    def _pim(self, op: Op, a: dict[str, int], regs: list[int], t: int) -> int:
        lanes, nb = self.lanes, self.nb
        e = lambda name: self._eff(a, regs, name)  # noqa: E731
        n = e("n")
        kind = "mac" if op in (Op.MAC_ABK, Op.MAC_SBK) else "move"
        if op in (Op.MAC_ABK, Op.MAC_SBK):
            addr = e("addr")
            if addr % lanes:
                raise PimgptError(f"MAC address {addr} is not column-aligned")
            self._bank_span(addr, n * lanes)
            self._gb_span(a["gb"], n)
            if op is Op.MAC_ABK:
                targets = [(ch, None) for ch in self._chans(a["ch_mask"])]
            else:
                targets = [self._bank(e("bank"))]
            if not n:
                return t
            t = self._room([ch.index for ch, _ in targets], t)
            for ch, bank in targets:
                s = max(t, ch.last + 1)
                self._present(ch, t)
                cmd = C.MAC16 if bank is None else C.MAC
                last = ch.column_run(cmd, bank, addr // lanes, n, t, gb=a["gb"])
                self.counters["mac_columns"] += n * (nb if bank is None else 1)
                self._span(f"ch{ch.index}", kind, op, s, last + 1)
            return t
        if self.cfg.asic.data_path == "ideal":
            return self._move_ideal(op, a, regs, t, n)
        return self._move(op, a, regs, t, n)

    def _move_ideal(self, op: Op, a: dict[str, int], regs: list[int], t: int, n: int) -> int:
        """``asic.data_path == "ideal"``: each channel moves its share straight between vector
        memory and the DRAM at its I/O rate, with no mover, no staging or draining and no order
        with the vector ops (the source must be ready, the destination free)."""
        lanes, nb = self.lanes, self.nb
        e = lambda name: self._eff(a, regs, name)  # noqa: E731
        ends = []
        if op in (Op.WR_GB, Op.RD_MAC, Op.WR_ABK):
            chans = self._chans(a["ch_mask"])
            if op is Op.WR_GB:
                self._gb_span(a["gb"], n)
                span = self._vspan(e("vaddr"), n * lanes)
                chans = chans if n else []
            else:
                span = self._vspan(e("vaddr"), len(chans) * nb)
                if op is Op.WR_ABK:
                    addr = e("addr")
                    self._bank_span(addr, 1)
        else:  # WR_BANK, RD_BANK
            addr = e("addr")
            ch, bank = self._bank(e("bank"))
            self._bank_span(addr, n)
            span = self._vspan(e("vaddr"), n)
            chans = [ch] if n else []
        reads_vmem = op in (Op.WR_GB, Op.WR_BANK, Op.WR_ABK)
        t = self._room([ch.index for ch in chans], t)
        t0 = max(t, self._ready(*span) if reads_vmem else self._free(*span))
        for ch in chans:
            s = max(t0, ch.last + 1)
            self._present(ch, t0)
            if op is Op.WR_GB:
                last = ch.channel_cmds(C.WRGB, n, t0, a["gb"])
                end = last + self.wrgb_latency
                self.counters["io_bits"] += n * lanes * 16
            elif op is Op.RD_MAC:
                last = ch.channel_cmds(C.RDMAC, 1, t0)
                end = last + self.rdmac_latency
                self.counters["io_bits"] += nb * 16
            elif op is Op.WR_ABK:
                last = ch.column_run(C.WR16, None, addr // lanes, 1, t0)
                end = last + self.wr_latency
                self.counters["io_bits"] += lanes * 16
            else:
                first, lastc = addr // lanes, (addr + n - 1) // lanes
                cmd = C.WR if op is Op.WR_BANK else C.RD
                last = ch.column_run(cmd, bank, first, lastc - first + 1, t0)
                end = last + (self.wr_latency if op is Op.WR_BANK else self.rd_latency)
                self.counters["io_bits"] += (lastc - first + 1) * lanes * 16
            ends.append(end)
            self._span(f"ch{ch.index}", "move", op, s, end)
        done = max(ends, default=t0)
        if reads_vmem:
            self._note([span], done, [], 0)
        else:
            self._note([], 0, [span], done)
        return t

    def _move(self, op: Op, a: dict[str, int], regs: list[int], t: int, n: int) -> int:
        """A PIM instruction that moves data between vector memory and the channels, through
        the one data mover (hdl/top.py): it starts in ASIC-queue order once its vector-memory
        range is free; a write stages its words (one ``vector_lanes`` row per ASIC cycle) before
        the channels send them; a read collects the channels' data, then drains it into vector
        memory (one row per ASIC cycle)."""
        lanes, nb = self.lanes, self.nb
        e = lambda name: self._eff(a, regs, name)  # noqa: E731
        cfg = self.cfg
        reads_vmem = op in (Op.WR_GB, Op.WR_BANK, Op.WR_ABK)
        if op in (Op.WR_GB, Op.RD_MAC, Op.WR_ABK):
            chans = self._chans(a["ch_mask"])
            if op is Op.WR_GB:
                self._gb_span(a["gb"], n)
                words, ncmd = n * lanes, n
            else:
                words, ncmd = len(chans) * nb, 1
                if op is Op.WR_ABK:
                    addr = e("addr")
                    self._bank_span(addr, 1)
            first = 0
        else:  # WR_BANK, RD_BANK
            addr = e("addr")
            ch, bank = self._bank(e("bank"))
            self._bank_span(addr, n)
            chans = [ch]
            words = n
            first = addr // lanes
            ncmd = (addr + n - 1) // lanes - first + 1 if n else 0
        span = self._vspan(e("vaddr"), words)
        targets = chans if ncmd else []
        t = self._room([ch.index for ch in targets] + ["asic"], t)
        x = max([t, self.asic_last + 1, self._ready(*span) if reads_vmem else self._free(*span)]
                + [self.mover_free[ch.index] for ch in targets])
        self._asic_start(x)
        L = cfg.asic.vector_lanes
        rows = (span[1] - 1) // L - span[0] // L + 1 if words else 0
        if reads_vmem and words:
            staged = asic_edge(cfg, x + 1, rows + 1)  # the source range is released here
            go = staged + 1
        else:
            staged, go = x + 1, x + 1
        released = x + 1  # (reads) the destination range: every channel's data drained
        for rank, ch in enumerate(targets):
            s = max(go, ch.last + 1)
            self._present(ch, go)
            if op is Op.WR_GB:
                last = ch.channel_cmds(C.WRGB, n, go, a["gb"])
                end = last + self.wrgb_latency
                self.counters["io_bits"] += n * lanes * 16
            elif op is Op.RD_MAC:
                last = ch.channel_cmds(C.RDMAC, 1, go)
                end = last + self.rdmac_latency
                self.counters["io_bits"] += nb * 16
            elif op is Op.WR_ABK:
                last = ch.column_run(C.WR16, None, addr // lanes, 1, go)
                end = last + self.wr_latency
                self.counters["io_bits"] += lanes * 16
            else:
                cmd = C.WR if op is Op.WR_BANK else C.RD
                last = ch.column_run(cmd, bank, first, ncmd, go)
                end = last + (self.wr_latency if op is Op.WR_BANK else self.rd_latency)
                self.counters["io_bits"] += ncmd * lanes * 16
            if reads_vmem:
                self.mover_free[ch.index] = last + 2
            else:
                # this channel's words: all of RD_BANK's, RD_MAC's banks_per_channel at its rank
                lo, hi = (span[0] + rank * nb, span[0] + (rank + 1) * nb) if op is Op.RD_MAC \
                    else span
                end = asic_edge(cfg, end + 2, (hi - 1) // L - lo // L + 1)  # drained
                self.mover_free[ch.index] = end + 1
                released = max(released, end)
            # the instruction runs on this channel from its mover's start to its data's arrival
            # (writes) or the drain's end (reads)
            self._span(f"ch{ch.index}", "move", op, min(s, x), end)
        if reads_vmem:
            self._note([span], staged, [], 0)
        else:
            self._note([], 0, [span], released)
        return t

    def _vector(self, op: Op, a: dict[str, int], regs: list[int], t: int) -> int:
        n = a["n"] + regs[a["n_reg"]]
        dst = a["dst"] + regs[a["dst_reg"]]
        src = a["a"] + regs[a["a_reg"]]
        reads: list[tuple[int, int]] = []
        writes: list[tuple[int, int]] = []
        if op not in (Op.VSET,):
            reads.append(self._vspan(src, n))
        if op in (Op.VADD, Op.VSUB, Op.VMUL):
            reads.append(self._vspan(a["b"], 1 if a["bcast"] else n))
        if op in (Op.VSUM, Op.VMAX):
            writes.append(self._vspan(dst, 1))
        elif op is not Op.VARGMAX:
            writes.append(self._vspan(dst, n))
        self.counters["vmem_words"] += sum(hi - lo for lo, hi in reads + writes)
        beats = math.ceil(n / self.cfg.asic.vector_lanes)
        # the RTL vector unit's own issue rule (ops overlap; op_latency inside)
        issue = self.vec_issue
        t = self._room(["asic"], t)
        # the unit takes an op on an ASIC clock edge, in ASIC-queue order
        start = asic_edge(self.cfg, issue.earliest_start(
            op, n, max([t, self.asic_last + 1] + [self._ready(lo, hi) for lo, hi in reads]
                       + [self._free(lo, hi) for lo, hi in writes])))
        self._asic_start(start)
        done = issue.accept(op, n, start)  # an op of no elements: at the next ASIC edge
        self.vec_free = issue.free  # no vector op starts earlier
        self.counters["asic_cycles"] += beats
        self.counters[f"asic_{op.name}"] += n
        self._note(reads, done, writes, done)
        self._span("vector", "asic", op, start, done)
        return t
