"""The DRAM command sequencer of one PIM channel (ASIC side): PIM operations in, DRAM commands out.

Golden model: the channel model of the cycle simulator (``pimgpt.sim.cycle._Channel`` driven by
``CycleSimulator._pim``, event semantics). The sequencer issues the same commands at the same
cycles, so a channel's RTL command trace equals the simulator's.

Cycle correspondence
--------------------
- Cycle ``x`` of the sequencer (the value of its ``cycle`` output, counted from reset) is cycle
  ``x`` of the simulator; ``o_cmd.valid`` in cycle ``x`` is a command the simulator issues at
  cycle ``x``. The command output is combinational from the state and ``i_op`` (a command can
  issue in the very cycle its op is presented, as in the simulator).
- Op ``k`` (the instruction's share of this channel, dispatched at ``t_k``: the ``t`` that
  ``_pim`` hands the channel, ``t0`` for the ops that wait on vector memory) is presented, in
  program order, from cycle ``max(t_k, x_{k-1} + 1)`` until it transfers, ``x_{k-1}`` being the
  previous op's transfer cycle: "valid first asserted in cycle t == dispatch at t", plus the
  stream's one op at a time. That is exact because the simulator starts op ``k`` at
  ``max(t_k, last + 1)`` and an op that issues commands transfers no later than its first
  command (``x_{k-1} <= last``). A dispatcher presenting each op as soon as it is dispatched
  and its predecessor has transferred does this by itself.
- Only ops that issue commands should be sent (:func:`channel_op` returns ``None`` for the
  others). A zero-command op is taken at once, even while busy, and does nothing, as in the
  simulator (whose refresh check at its start the sequencer makes anyway); but its transfer
  occupies the stream for a cycle and could hold a queued successor back by that cycle.
- REFs owed saturate at ``REFRESH.max_postponed + 1``; the simulator does not bound them, but
  the sequencer checks for a due refresh at every op start and row change, far more often.

Scheduling policy (the simulator's, in hardware)
------------------------------------------------
In order, one command per cycle, each at the first cycle that satisfies every rule of
:data:`~pimgpt.hdl.timing.RULES` and the :data:`~pimgpt.hdl.timing.FAW` window; open-row policy.
Decisions are taken once, in the cycle the sequencer reaches them (``max(t, last + 1)`` in the
simulator), and kept while the chosen command waits for its gates:

- *op start* (phase ``IDLE``): a refresh is due -> refresh first; otherwise take the op: channel
  commands (WRGB, RDMAC) start at once; a column run whose row is open in its bank(s) starts with
  its column command, else with PRE/PREA (a row is open) or ACT/ACT16.
- *row change* inside a column run (phase ``ROW``): a refresh is due -> refresh, then open the
  row; else PRE/PREA then ACT/ACT16.
- *refresh*: PREA when any row is open, then REF, then the check again (REFs owed for several
  intervals go back to back). While idle the sequencer refreshes as soon as one is due, which is
  when the simulator's later ``refresh_if_due`` would have placed it.

Timing gates: every rule distance is a constant taken from ``RULES`` at elaboration. For each
command form that rules name as ``first``, a saturating "cycles since the last issue" counter per
channel, and where a BANK / GROUP / OTHER_GROUP rule needs one, per bank and per bank group (the
simulator's ``lc``, ``lb``, ``lg``); a command may issue when each counter has reached the
largest distance a rule asks of it. tFAW is a shift register of the ages of the last
``FAW.count`` activations; refresh a modulo-tREFI counter and a count of REFs owed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from amaranth.hdl import Array, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl.isa import Opcode
from pimgpt.hdl.params import MachineConfig
from pimgpt.hdl.timing import (ALL_BANK_CMDS, CHANNEL_CMDS, FAW, REFRESH, RULES,
                               SINGLE_BANK_CMDS, DramCmd, Scope, bank_group, rule_cmd)

__all__ = ["OP_COMMAND", "ONE_COMMAND_OPS", "Phase", "op_layout", "cmd_layout",
           "gate_distances", "channel_op", "ChannelSequencer"]

#: The command each PIM instruction repeats on a channel (``CycleSimulator._pim``): its column
#: commands, or channel commands for WR_GB and RD_MAC, which need no open row.
OP_COMMAND: dict[Opcode, DramCmd] = {
    Opcode.WR_GB: DramCmd.WRGB,
    Opcode.MAC_ABK: DramCmd.MAC16,
    Opcode.MAC_SBK: DramCmd.MAC,
    Opcode.RD_MAC: DramCmd.RDMAC,
    Opcode.WR_BANK: DramCmd.WR,
    Opcode.RD_BANK: DramCmd.RD,
    Opcode.WR_ABK: DramCmd.WR16,
}
#: Instructions that issue exactly one command per channel whatever their ``n``.
ONE_COMMAND_OPS: frozenset[Opcode] = frozenset({Opcode.RD_MAC, Opcode.WR_ABK})

if set(OP_COMMAND) != set(isa.PIM_OPS):  # a new PIM instruction needs a command here
    raise PimgptError(f"OP_COMMAND covers {sorted(o.name for o in OP_COMMAND)}, "
                      f"isa.PIM_OPS is {sorted(o.name for o in isa.PIM_OPS)}")

#: Width of the op's count: the ISA's ``n`` operand.
_COUNT_SHAPE = isa.PimFormat.as_shape()["n"].shape


class Phase(enum.Enum, shape=3):
    """What the sequencer is doing; ``IDLE`` and ``ROW`` are the cycles where it decides."""

    IDLE = 0  # between ops: refresh if due, else take the next op (decision)
    ROW = 1  # a column run reached a row that is not open: refresh if due, else PRE/ACT (decision)
    REF_PRE = 2  # refresh: PREA before REF
    REF = 3  # refresh: REF
    PRE = 4  # close the op's bank (PRE) or every bank (PREA)
    ACT = 5  # open the op's row (ACT, or ACT16 for all-bank ops)
    COL = 6  # the op's column commands (or WRGB / RDMAC)


def _sorted(items) -> list:
    """Enum members in value order (a deterministic order for generated logic)."""
    return sorted(items, key=lambda x: x.value)


def _bits(n: int) -> int:
    """Bits of an index 0..n-1 for a power-of-two n (at least 1, so a port never vanishes)."""
    return max(exact_log2(n), 1)


def op_layout(config: MachineConfig) -> data.StructLayout:
    """One channel op: a PIM instruction resolved for one channel (see :func:`channel_op`).

    - ``op``: the instruction's :class:`~pimgpt.hdl.isa.Opcode` (non-PIM opcodes are no-ops);
    - ``bank``: the bank within the channel (MAC_SBK, RD_BANK, WR_BANK);
    - ``col``: the first element-column index ``addr // mac_lanes`` of the column run (row
      ``col // cols_per_row``, column ``col % cols_per_row``), or the first global-buffer column
      for WR_GB;
    - ``n``: the commands to issue: columns of the run (WR_GB, MAC_*, RD/WR_BANK); ignored by
      RD_MAC and WR_ABK, which issue one.
    """
    g = config.geometry
    col_bits = max(exact_log2(g.rows * g.cols_per_row), exact_log2(g.gb_cols), 1)
    return data.StructLayout({
        "op": Opcode,
        "bank": unsigned(_bits(g.banks_per_channel)),
        "col": unsigned(col_bits),
        "n": _COUNT_SHAPE,
    })


def cmd_layout(config: MachineConfig) -> data.StructLayout:
    """One DRAM command: ``cmd``; ``all_banks`` (the command is in ``ALL_BANK_CMDS``); ``bank``
    (single-bank commands); ``row`` (ACT, ACT16, column commands); ``col`` (the column in the row
    for column commands, the global-buffer column for WRGB). Fields a command does not carry
    hold don't-care values."""
    g = config.geometry
    return data.StructLayout({
        "cmd": DramCmd,
        "all_banks": unsigned(1),
        "bank": unsigned(_bits(g.banks_per_channel)),
        "row": unsigned(_bits(g.rows)),
        "col": unsigned(max(exact_log2(g.cols_per_row), exact_log2(g.gb_cols), 1)),
    })


def gate_distances(config: MachineConfig) -> dict[DramCmd, dict[tuple[DramCmd, Scope], int]]:
    """For each rule form as ``second``: the largest distance (cycles) each ``(first, scope)``
    asks for. Distances of 0 or 1 are left out: one command per cycle, in order, already keeps
    any two commands at least a cycle apart (the simulator's ``t >= last + 1``)."""
    need: dict[DramCmd, dict[tuple[DramCmd, Scope], int]] = {}
    for r in RULES:
        d = r.cycles(config)
        if d > 1:
            per = need.setdefault(r.second, {})
            per[(r.first, r.scope)] = max(per.get((r.first, r.scope), 0), d)
    return need


def channel_op(instr: isa.Instruction, config: MachineConfig, channel: int,
               regs: Sequence[int] | None = None) -> dict[str, int] | None:
    """The op a dispatcher hands channel ``channel``'s sequencer for ``instr`` (fields of
    :func:`op_layout`), or ``None`` when the instruction issues no command on that channel.

    Register-relative operands are resolved with ``regs`` (all zero by default), as
    ``CycleSimulator._pim`` does; range checks are the simulator's business, not repeated here.
    """
    op = instr.op
    if op not in isa.PIM_OPS:
        return None
    g = config.geometry
    r = list(regs) if regs is not None else [0] * isa.NUM_SREGS
    a: Mapping[str, int] = instr.args

    def eff(name: str) -> int:
        return int(a[name]) + r[int(a[name + "_reg"])]

    nb, lanes = g.banks_per_channel, g.mac_lanes
    bank, col, n = 0, 0, 0
    if op in (Opcode.MAC_SBK, Opcode.RD_BANK, Opcode.WR_BANK):
        gbank = eff("bank")
        if gbank // nb != channel:
            return None
        bank = gbank % nb
    elif not int(a["ch_mask"]) >> channel & 1:
        return None
    if op is Opcode.WR_GB:
        col, n = int(a["gb"]), eff("n")
    elif op in (Opcode.RD_BANK, Opcode.WR_BANK):
        addr, elems = eff("addr"), eff("n")
        col = addr // lanes
        n = (addr + elems - 1) // lanes - col + 1 if elems else 0
    elif op in ONE_COMMAND_OPS:
        col, n = (eff("addr") // lanes if op is Opcode.WR_ABK else 0), 1
    else:  # MAC_ABK, MAC_SBK
        col, n = eff("addr") // lanes, eff("n")
    if n == 0:
        return None
    return {"op": op.value, "bank": bank, "col": col, "n": n}


def require_single_stream(config: MachineConfig) -> None:
    """Refuse a machine whose channels the RTL does not implement: global-buffer
    double-buffering (two command streams per channel) exists only in the cycle simulator."""
    if config.geometry.gb_double_buffer:
        raise PimgptError(
            f"machine '{config.name}' has geometry.gb_double_buffer = true, which the RTL does "
            f"not implement: the channel sequencer issues one in-order command stream (the "
            f"double-buffered data-in/compute streams exist only in the cycle simulator); set "
            f"geometry.gb_double_buffer = false to generate RTL")


class ChannelSequencer(wiring.Component):
    """DRAM command sequencer of one PIM channel (module docstring: policy and cycle mapping).

    Parameters
    ----------
    config : MachineConfig
        Geometry (banks, bank groups, rows, columns per row, global-buffer columns) sizes the
        ports and tables; ``RULES``, ``FAW`` and ``REFRESH`` at ``config``'s clock give every
        gate's distance.
    cycle_bits : int
        Width of the free-running ``cycle`` counter (it wraps; nothing inside depends on it).

    Attributes
    ----------
    i_op : In(stream.Signature(op_layout(config)))
        channel ops in program order. ``ready`` is high while the sequencer has no op in hand and
        no refresh to issue, and for ops that issue no command.
    o_cmd : Out(Signature({"valid": Out(1), "payload": Out(cmd_layout(config))}))
        one DRAM command in each cycle ``valid`` is high (a strobe: the bus cannot stall).
    cycle : Out(cycle_bits)
        cycles since reset: the simulator's cycle number.
    busy : Out(1)
        an accepted op still has commands to issue, or a refresh is due or under way.
    """

    def __init__(self, config: MachineConfig, *, cycle_bits: int = 32):
        if not isinstance(config, MachineConfig):
            raise TypeError(f"config must be a MachineConfig, not {config!r}")
        if type(cycle_bits) is not int or cycle_bits < 1:
            raise PimgptError(f"cycle_bits must be a positive integer, not {cycle_bits!r}")
        require_single_stream(config)
        self._config = config
        self.cycle_bits = cycle_bits
        super().__init__({
            "i_op": In(stream.Signature(op_layout(config))),
            # a strobe rather than a stream: the command bus has no backpressure (and a stream's
            # constant ``ready`` cannot be a port of the generated module)
            "o_cmd": Out(wiring.Signature({"valid": Out(1), "payload": Out(cmd_layout(config))})),
            "cycle": Out(cycle_bits),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        g = cfg.geometry
        nb, ngroups = g.banks_per_channel, g.bank_groups
        cbits = exact_log2(g.cols_per_row)  # column-in-row bits of an element-column index
        row_bits = exact_log2(g.rows)
        group = [bank_group(b, cfg) for b in range(nb)]
        need = gate_distances(cfg)
        p = self.i_op.payload

        # --- free-running cycle counter --------------------------------------------------------
        # (In a module of its own, like the other logic that changes every cycle: Amaranth's
        # simulator re-runs a module's combinational logic whenever a signal it reads changes.)
        counter = m.submodules.counter = Module()
        cycle = Signal(self.cycle_bits)
        counter.d.sync += cycle.eq(cycle + 1)
        counter.d.comb += self.cycle.eq(cycle)

        # --- state -----------------------------------------------------------------------------
        phase = Signal(Phase)
        busy = Signal()  # an accepted op still has commands to issue
        r_op = Signal(Opcode)
        r_bank = Signal.like(p.bank)
        r_col = Signal.like(p.col)  # the next command's element-column (or buffer column)
        r_rem = Signal(_COUNT_SHAPE)  # commands of the op still to issue
        open_v = Signal(nb)  # bank b has a row open
        open_row = Array(Signal(row_bits, name=f"open_row{b}") for b in range(nb))

        # refresh: REFs owed = intervals elapsed - REFs issued (the simulator's
        # cycle >= next_ref is owed != 0); postponing more than REFRESH allows is illegal anyway
        t_refi = REFRESH.interval(cfg)
        ref_phase = Signal(range(t_refi))
        owed_max = REFRESH.max_postponed + 1
        owed = Signal(range(owed_max + 1))
        due = Signal()
        refresh = m.submodules.refresh = Module()
        refresh.d.comb += due.eq(owed != 0)

        # --- the op in hand: the presented one while IDLE, else the registered one -------------
        # (Decoding is written as comparisons and if/elif chains, not m.Switch: Yosys prints a
        # switch whose unlisted values keep the old value as a case statement without those
        # values, which Verilator -Wall reports as CASEINCOMPLETE.)
        idle = phase == Phase.IDLE
        p_count = Signal(_COUNT_SHAPE)  # commands the presented op issues
        p_pim = Cat(p.op == op for op in _sorted(isa.PIM_OPS)).any()
        p_one = Cat(p.op == op for op in _sorted(ONE_COMMAND_OPS)).any()
        m.d.comb += p_count.eq(Mux(p_one, 1, Mux(p_pim, p.n, 0)))
        v_op = Signal(Opcode)
        v_bank = Signal.like(p.bank)
        v_col = Signal.like(p.col)
        v_rem = Signal(_COUNT_SHAPE)
        with m.If(idle):
            m.d.comb += [v_op.eq(p.op), v_bank.eq(p.bank), v_col.eq(p.col), v_rem.eq(p_count)]
        with m.Else():
            m.d.comb += [v_op.eq(r_op), v_bank.eq(r_bank), v_col.eq(r_col), v_rem.eq(r_rem)]

        col_cmd = Signal(DramCmd)  # the op's repeated command
        is_chan = Signal()  # WRGB / RDMAC: no rows involved
        is_all = Signal()  # all-bank op: PREA / ACT16
        for i, (op, cmd) in enumerate(OP_COMMAND.items()):
            with (m.If if i == 0 else m.Elif)(v_op == op):
                m.d.comb += [col_cmd.eq(cmd), is_chan.eq(cmd in CHANNEL_CMDS),
                             is_all.eq(cmd in ALL_BANK_CMDS)]

        row = v_col[cbits:cbits + row_bits]
        in_row = v_col[:cbits]
        bank_open = open_v.bit_select(v_bank, 1)
        hit_all = Cat(open_v[b] & (open_row[b] == row) for b in range(nb)).all()
        hit = Mux(is_all, hit_all, bank_open & (open_row[v_bank] == row))
        opened = Mux(is_all, open_v.any(), bank_open)  # a row to close before the ACT

        # --- the pending command ---------------------------------------------------------------
        pend = Signal(Phase)  # the phase whose command is pending this cycle
        pend_valid = Signal()
        ref_first = Mux(open_v.any(), Phase.REF_PRE, Phase.REF)
        with m.If(idle):
            with m.If(due):
                m.d.comb += [pend.eq(ref_first), pend_valid.eq(1)]
            with m.Elif(self.i_op.valid & (p_count != 0)):
                m.d.comb += pend_valid.eq(1)
                with m.If(is_chan | hit):
                    m.d.comb += pend.eq(Phase.COL)
                with m.Elif(opened):
                    m.d.comb += pend.eq(Phase.PRE)
                with m.Else():
                    m.d.comb += pend.eq(Phase.ACT)
        with m.Elif(phase == Phase.ROW):
            m.d.comb += pend_valid.eq(1)
            with m.If(due):
                m.d.comb += pend.eq(ref_first)
            with m.Elif(opened):
                m.d.comb += pend.eq(Phase.PRE)
            with m.Else():
                m.d.comb += pend.eq(Phase.ACT)
        with m.Else():
            m.d.comb += [pend.eq(phase), pend_valid.eq(1)]

        cmd = Signal(DramCmd)
        with m.If(pend == Phase.REF_PRE):
            m.d.comb += cmd.eq(DramCmd.PREA)
        with m.Elif(pend == Phase.REF):
            m.d.comb += cmd.eq(DramCmd.REF)
        with m.Elif(pend == Phase.PRE):
            m.d.comb += cmd.eq(Mux(is_all, DramCmd.PREA, DramCmd.PRE))
        with m.Elif(pend == Phase.ACT):
            m.d.comb += cmd.eq(Mux(is_all, DramCmd.ACT16, DramCmd.ACT))
        with m.Else():
            m.d.comb += cmd.eq(col_cmd)

        # --- timing gates: cycles since the last issue of each rule form -----------------------
        # The age registers read min(cycles since the last issue, the largest distance asked of
        # them); they start saturated (never issued, the simulator's NEVER).
        def cap(first: DramCmd, scopes: set[Scope], seconds) -> int:
            return max((d for s in seconds for (f, sc), d in need.get(s, {}).items()
                        if f == first and sc in scopes), default=0)

        bank_forms = SINGLE_BANK_CMDS  # single-bank commands are their own rule forms
        age_ch: dict[DramCmd, Signal] = {}
        age_bank: dict[DramCmd, list[Signal]] = {}
        age_grp: dict[DramCmd, list[Signal]] = {}
        for first in sorted({f for per in need.values() for f, _ in per}, key=lambda c: c.value):
            top = cap(first, set(Scope), need)
            age_ch[first] = Signal(range(top + 1), init=top, name=f"age_{first.name}")
            top = cap(first, {Scope.BANK}, bank_forms)
            if top:
                age_bank[first] = [Signal(range(top + 1), init=top,
                                          name=f"age_{first.name}_b{b}") for b in range(nb)]
            top = cap(first, {Scope.GROUP, Scope.OTHER_GROUP}, bank_forms)
            if top:
                age_grp[first] = [Signal(range(top + 1), init=top,
                                         name=f"age_{first.name}_g{i}") for i in range(ngroups)]

        # the ages change every cycle: a module of their own (see the cycle counter)
        gates = m.submodules.gates = Module()

        # tFAW: ages of the last FAW.count activations, oldest first
        t_faw = FAW.cycles(cfg)
        faw = [Signal(range(t_faw + 1), init=t_faw, name=f"faw{i}") for i in range(FAW.count)]

        def ready_for(second: DramCmd, bank: int | None) -> Signal:
            """Every gate of ``second`` is open (``bank`` None: all-bank or channel command)."""
            form = rule_cmd(second)
            conds = []
            for (first, scope), d in need.get(form, {}).items():
                if bank is None or scope == Scope.CHANNEL:
                    conds.append(age_ch[first] >= d)
                elif scope == Scope.BANK:
                    conds.append(age_bank[first][bank] >= d)
                elif scope == Scope.GROUP:
                    conds.append(age_grp[first][group[bank]] >= d)
                else:
                    conds += [age_grp[first][i] >= d for i in range(ngroups) if i != group[bank]]
            if form == FAW.cmd:
                conds.append(faw[0] >= t_faw)
            ok = Signal(name=f"ok_{second.name}" + ("" if bank is None else f"_b{bank}"))
            gates.d.comb += ok.eq(Cat(conds).all() if conds else 1)
            return ok

        gate_ok = Signal()
        m.d.comb += gate_ok.eq(Cat(
            (cmd == c) & (Array(ready_for(c, b) for b in range(nb))[v_bank]
                          if c in SINGLE_BANK_CMDS else ready_for(c, None))
            for c in DramCmd).any())
        issue = Signal()
        m.d.comb += issue.eq(pend_valid & gate_ok)

        # --- outputs ---------------------------------------------------------------------------
        is_all_cmd = Signal()
        m.d.comb += is_all_cmd.eq(Cat(cmd == c for c in _sorted(ALL_BANK_CMDS)).any())
        m.d.comb += [
            self.o_cmd.valid.eq(issue),
            self.o_cmd.payload.cmd.eq(cmd),
            self.o_cmd.payload.all_banks.eq(is_all_cmd),
            self.o_cmd.payload.bank.eq(v_bank),
            self.o_cmd.payload.row.eq(row),
            self.o_cmd.payload.col.eq(Mux(is_chan, v_col, in_row)),
            self.i_op.ready.eq((idle & ~due) | (p_count == 0)),
            self.busy.eq(~idle | due),
        ]

        # --- bookkeeping of an issued command: gates, tFAW, open rows, refresh -----------------
        issued_form = {f: Signal(name=f"issued_{f.name}")
                       for f in sorted({rule_cmd(c) for c in DramCmd}, key=lambda c: c.value)}
        for f, sig in issued_form.items():
            forms = [c for c in DramCmd if rule_cmd(c) == f]
            m.d.comb += sig.eq(issue & Cat(cmd == c for c in forms).any())
        for f, a in age_ch.items():
            gates.d.sync += a.eq(Mux(issued_form[f], 1, Mux(a == a.init, a, a + 1)))
        for ages, of_bank in ((age_bank, lambda b: [b]),
                              (age_grp, lambda i: [b for b in range(nb) if group[b] == i])):
            for f, regs in ages.items():
                for i, a in enumerate(regs):
                    in_scope = is_all_cmd | Cat(v_bank == b for b in of_bank(i)).any()
                    gates.d.sync += a.eq(Mux(issued_form[f] & in_scope, 1,
                                             Mux(a == a.init, a, a + 1)))
        act_issued = issued_form[FAW.cmd]  # an ACT16 is one activation
        for i, a in enumerate(faw):
            older = Mux(a == t_faw, a, a + 1)
            if i + 1 < len(faw):
                newer = faw[i + 1]
                gates.d.sync += a.eq(Mux(act_issued, Mux(newer == t_faw, newer, newer + 1), older))
            else:
                gates.d.sync += a.eq(Mux(act_issued, 1, older))

        for b in range(nb):
            mine = is_all_cmd | (v_bank == b)
            with m.If(issue & ((cmd == DramCmd.ACT16) | (cmd == DramCmd.ACT)) & mine):
                m.d.sync += [open_v[b].eq(1), open_row[b].eq(row)]
            with m.If(issue & ((cmd == DramCmd.PREA) | (cmd == DramCmd.REF) |
                               ((cmd == DramCmd.PRE) & (v_bank == b)))):
                m.d.sync += open_v[b].eq(0)

        ref_issued = Signal()
        m.d.comb += ref_issued.eq(issue & (cmd == DramCmd.REF))
        wrap = ref_phase == t_refi - 1
        refresh.d.sync += ref_phase.eq(Mux(wrap, 0, ref_phase + 1))
        with refresh.If(wrap & ~ref_issued & (owed != owed_max)):
            refresh.d.sync += owed.eq(owed + 1)
        with refresh.Elif(ref_issued & ~wrap):
            refresh.d.sync += owed.eq(owed - 1)

        # --- sequencing --------------------------------------------------------------------------
        accept = self.i_op.valid & idle & ~due & (p_count != 0)
        with m.If(accept):
            m.d.sync += [r_op.eq(p.op), r_bank.eq(p.bank), r_col.eq(p.col), r_rem.eq(p_count),
                         busy.eq(1)]
        with m.If(issue):
            with m.If(pend == Phase.REF_PRE):
                m.d.sync += phase.eq(Phase.REF)
            with m.Elif(pend == Phase.REF):
                # back to the decision that asked for it: the row change or the op start
                m.d.sync += phase.eq(Mux(busy, Phase.ROW, Phase.IDLE))
            with m.Elif(pend == Phase.PRE):
                m.d.sync += phase.eq(Phase.ACT)
            with m.Elif(pend == Phase.ACT):
                m.d.sync += phase.eq(Phase.COL)
            with m.Else():  # COL
                m.d.sync += [r_col.eq(v_col + 1), r_rem.eq(v_rem - 1)]
                with m.If(v_rem == 1):
                    m.d.sync += [phase.eq(Phase.IDLE), busy.eq(0)]
                with m.Elif(~is_chan & (in_row == g.cols_per_row - 1)):
                    m.d.sync += phase.eq(Phase.ROW)
                with m.Else():
                    m.d.sync += phase.eq(Phase.COL)
        with m.Elif(pend_valid):
            m.d.sync += phase.eq(pend)  # the decision stands while its command waits
        return m
