"""The ASIC controller: instruction memory, fetch, decode, scalar execution, dispatch, scoreboard,
SYNC/END and performance counters.

Golden models: values of :class:`pimgpt.sim.machine.FunctionalMachine` (scalar semantics of
:mod:`pimgpt.sim.scalar`, bit for bit: 32-bit two's complement, ``r0`` reads 0, floor division),
timing of :class:`pimgpt.sim.cycle.CycleSimulator` (its dispatch rule, exactly; what differs is
listed in :mod:`pimgpt.hdl.top`).

Dispatch (cycle correspondence)
-------------------------------
The controller runs at the DRAM command clock (the top's only clock). Instruction ``k`` is
dispatched in cycle ``t_k``: ``t_0`` is the cycle after ``start``; ``t_{k+1} = t_k + step``
with ``step = CycleSimulator.dispatch_step`` (``asic.issue_cycles`` ASIC cycles in DRAM cycles),
except that ``SYNC`` / ``END`` hold the next dispatch until every unit is idle (the simulator's
``dispatch = max(dispatch, done)``) and a full queue holds it until there is room (the
simulator's queues are unbounded: the one structural difference of the dispatcher). The
instruction memory is read synchronously one cycle ahead, the next ``pc`` (taken branch
included) computed combinationally in the dispatch cycle, so a branch costs nothing, as in the
simulator. Scalar and branch instructions execute in their dispatch cycle.

A PIM instruction becomes, in its dispatch cycle, one resolved op per channel it issues commands
on (:func:`pimgpt.hdl.sequencer.channel_op`, written here in hardware) pushed into that channel's
queue; an instruction that moves data between vector memory and the channels (WR_GB, WR_BANK,
WR_ABK, RD_MAC, RD_BANK) also pushes a *mover* op into the ASIC queue, and a vector instruction a
vector op (:func:`pimgpt.hdl.vector.op_layout`, operands resolved). Queues fall through: an op
pushed into an empty queue is at its head in the same cycle, so a unit can start it in its
dispatch cycle, as in the simulator.

Scoreboard
----------
The ASIC queue holds vector and mover ops in program order; its head starts when its unit is
free (a mover op: the data mover of every channel taking part) and its vector-memory ranges do
not conflict with those of the ops in flight: every vector op in flight (up to
:data:`~pimgpt.hdl.vector.MAX_IN_FLIGHT`: the unit overlaps ops by its issue rule) and each
channel mover's op (read-after-write, write-after-read, write-after-write; the overlap test and
the range of each instruction are ``CycleSimulator._vector`` / ``_move``'s). Because ops start
in program order, the ops in flight are everything an op can depend on. Each vector op's ranges
are released by its own ``done`` (vector ops complete in the order they started); a mover op's
read range when its data is staged and its write range when its data is in vector memory, both
per mover (inputs from the top).

Performance counters
--------------------
Reset by ``start``, counting until ``done``; read through ``ctr_addr`` -> ``ctr_data``
(combinational). :func:`counter_map` gives every address (also in the top's manifest).
"""

from __future__ import annotations

import math
from fractions import Fraction

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl import vector as vec
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import MachineConfig, ns_to_cycles
from pimgpt.hdl.sequencer import op_layout
from pimgpt.hdl.timing import DramCmd

__all__ = ["MOVER_OPS", "TAG_BITS", "COUNTER_BITS", "dispatch_step", "asic_ratio",
           "asic_edge", "channel_entry_layout", "mover_layout", "asic_entry_layout", "counter_map",
           "Controller"]

#: PIM instructions that move data between vector memory and the channels (through the mover).
MOVER_OPS = frozenset({Op.WR_GB, Op.WR_BANK, Op.WR_ABK, Op.RD_MAC, Op.RD_BANK})
#: Ops that read vector memory (the rest of MOVER_OPS write it).
MOVER_READS = frozenset({Op.WR_GB, Op.WR_BANK, Op.WR_ABK})
#: Width of the tag that pairs a channel's data op with the mover op of the same instruction.
TAG_BITS = 8
#: Width of every performance counter.
COUNTER_BITS = 32

_PF = isa.PimFormat.as_shape()
_VF = isa.VectorFormat.as_shape()
_SF = isa.ScalarFormat.as_shape()
_VADDR = _PF["vaddr"].shape
_COUNT = _PF["n"].shape
_RANGE_BITS = _VADDR.width + 2  # vector-memory address + length without overflow


def asic_ratio(config: MachineConfig) -> int:
    """DRAM command-clock cycles per ASIC cycle (an integer: the RTL's ASIC side advances on
    every ``ratio``-th cycle of the one clock)."""
    clk = config.clocks
    ratio = clk.dram_mhz / clk.asic_mhz
    if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
        raise PimgptError(f"the RTL needs the DRAM clock ({clk.dram_mhz} MHz) to be an integer "
                          f"multiple of the ASIC clock ({clk.asic_mhz} MHz)")
    return int(round(ratio))


def asic_edge(config: MachineConfig, t: int, k: int = 1) -> int:
    """The ``k``-th ASIC clock edge at or after DRAM cycle ``t`` (``k = 1``: the first). ASIC
    cycle ``j`` begins in DRAM cycle ``ceil(j * dram_mhz / asic_mhz)`` counted from reset: every
    ``asic_ratio``-th cycle when the ratio is an integer, as the RTL's ``asic_en``."""
    r = Fraction(str(config.clocks.dram_mhz)) / Fraction(str(config.clocks.asic_mhz))
    if r.denominator == 1:
        n = r.numerator
        return (-(-t // n) + k - 1) * n
    j = math.floor((t - 1) / r) + 1  # the first j with j * r > t - 1
    return math.ceil((j + k - 1) * r)


def dispatch_step(config: MachineConfig) -> int:
    """DRAM cycles between two dispatches: ``CycleSimulator.dispatch_step``'s formula."""
    return ns_to_cycles(config.asic.issue_cycles * 1000.0 / config.clocks.asic_mhz,
                        config.clocks.dram_mhz)


def channel_entry_layout(config: MachineConfig) -> data.StructLayout:
    """A channel queue entry: the sequencer's op (:func:`~pimgpt.hdl.sequencer.op_layout`), the
    global-buffer column of a MAC run (``gb``; the sequencer does not carry it), ``data`` (the
    op moves data: the mover must say ``go`` for its ``tag`` first)."""
    return data.StructLayout({
        "op": op_layout(config),
        "gb": _PF["gb"].shape,
        "data": unsigned(1),
        "tag": unsigned(TAG_BITS),
    })


def mover_layout(config: MachineConfig) -> data.StructLayout:
    """A mover op, operands resolved: ``op``; ``vaddr`` and ``words`` (the vector-memory span);
    ``lane_off`` (staging slot of the first word: ``addr % mac_lanes`` for WR_BANK, RD_BANK and
    WR_ABK's one lane, else 0); ``col0`` (first element column of WR_BANK / RD_BANK); ``gb``
    (WR_GB's first buffer column); ``ch_mask`` (channels that take part); ``ncmd`` (data commands
    each of them issues); ``tag``."""
    g = config.geometry
    return data.StructLayout({
        "op": isa.Opcode,
        "vaddr": _VADDR,
        "words": unsigned(_COUNT.width + max(exact_log2(g.mac_lanes), 1) + 1),
        "lane_off": unsigned(max(exact_log2(g.mac_lanes), 1)),
        "col0": op_layout(config)["col"].shape,
        "gb": _PF["gb"].shape,
        "ch_mask": unsigned(g.channels),
        "ncmd": _COUNT,
        "tag": unsigned(TAG_BITS),
    })


def asic_entry_layout(config: MachineConfig) -> data.StructLayout:
    """An ASIC queue entry: a vector op (``is_vec``; ``vop`` with ``rd`` for VARGMAX) or a mover
    op (``mop``)."""
    return data.StructLayout({
        "is_vec": unsigned(1),
        "vop": vec.op_layout(),
        "rd": _VF["rd"].shape,
        "mop": mover_layout(config),
    })


def counter_map(config: MachineConfig) -> dict[str, int]:
    """Performance counter name -> address of the ``ctr_addr`` port (each ``COUNTER_BITS`` wide,
    cleared by ``start``, counting DRAM command-clock cycles or events until ``done``).

    - ``cycles``: cycles from the first dispatch to ``done`` (the simulator's run span);
    - ``instructions``: instructions dispatched;
    - ``dispatch_stall``: cycles an instruction waited for room in a queue;
    - ``sync_wait``: cycles SYNC / END waited for the units;
    - ``vector_busy`` / ``vector_stall``: cycles the vector unit had an op in flight / the ASIC
      queue's head was a vector op that could not start;
    - ``mover_busy`` / ``mover_stall``: the same for the data mover;
    - ``ch<c>_busy`` / ``ch<c>_stall``: channel ``c``'s sequencer was busy / its queue's head was
      not taken;
    - ``cmd_<NAME>``: DRAM commands of each :class:`~pimgpt.hdl.timing.DramCmd`, all channels.
    """
    names = ["cycles", "instructions", "dispatch_stall", "sync_wait", "vector_busy",
             "vector_stall", "mover_busy", "mover_stall"]
    for c in range(config.geometry.channels):
        names += [f"ch{c}_busy", f"ch{c}_stall"]
    names += [f"cmd_{c.name}" for c in DramCmd]
    return {n: i for i, n in enumerate(names)}


class _Queue(wiring.Component):
    """A fall-through FIFO of ``depth`` entries: pushed into an empty queue, an entry is at the
    head (``o``) in the same cycle. ``full`` does not look at a same-cycle pop (no comb loop)."""

    def __init__(self, layout, depth: int):
        self._layout, self.depth = layout, depth
        super().__init__({
            "push": In(1), "i": In(layout),
            "o": Out(stream.Signature(layout)),
            "full": Out(1), "count": Out(range(depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        d = self.depth
        regs = Array(Signal(self._layout, name=f"q{i}") for i in range(d))
        rd, wr = Signal(range(d)), Signal(range(d))
        count = Signal(range(d + 1))
        empty = count == 0
        pop = self.o.valid & self.o.ready
        m.d.comb += [self.full.eq(count == d), self.count.eq(count),
                     self.o.valid.eq(~empty | self.push),
                     self.o.payload.eq(Mux(empty, self.i, regs[rd]))]
        store = self.push & ~(empty & pop)  # a push popped at once (fall-through) is not kept
        take = pop & ~empty
        with m.If(store):
            m.d.sync += wr.eq(Mux(wr == d - 1, 0, wr + 1))
        for k in range(d):  # one comparison per entry: an Array write prints an incomplete case
            with m.If(store & (wr == k)):
                m.d.sync += regs[k].eq(self.i)
        with m.If(take):
            m.d.sync += rd.eq(Mux(rd == d - 1, 0, rd + 1))
        m.d.sync += count.eq(count + store - take)
        return m


def _overlap(lo1, n1, lo2, n2):
    """The simulator's ``a < hi and lo < b`` for two non-empty spans."""
    return ((n1 != 0) & (n2 != 0) & (lo1 < (lo2 + n2)) & (lo2 < (lo1 + n1)))


class Controller(wiring.Component):
    """The ASIC controller (module docstring: dispatch timing, scoreboard, counters).

    Parameters
    ----------
    config : MachineConfig
        ``asic.imem_words`` sizes the instruction memory; geometry and clocks the rest.

    Attributes
    ----------
    imem_we, imem_addr, imem_wdata : In
        host write port of the instruction memory (``isa.WORD_BITS`` wide words).
    start : In(1)
        begin a run at pc 0 (registers keep their values, counters clear).
    reg_we, reg_addr, reg_wdata : In; reg_rdata : Out(32)
        host access to the scalar registers (``reg_rdata`` combinational; writes to r0 are
        ignored); use them only while not ``running``.
    running, done, error : Out(1)
        a run is under way; the last run reached END and every unit finished (until the next
        ``start``); sticky: a run met an instruction the controller refuses (unknown opcode,
        SDIV/SMOD by a non-positive divisor, pc beyond the memory).
    o_ch : Out(ArrayLayout of streams) -- one ``stream`` of :func:`channel_entry_layout` per
        channel: ``o_ch[c]`` (list attribute ``ch_ops``).
    o_asic : Out(stream.Signature(asic_entry_layout)) -- the ASIC queue's head (the top routes
        it to the vector unit or the mover); ``valid`` only when it may start (unit free is the
        top's ``ready``; the scoreboard is checked here).
    vec_idle, vec_release, vec_result : In -- the vector unit can take the op at the queue's
        head now (its issue rule, :class:`~pimgpt.hdl.vector.VectorIssue`); its oldest op in
        flight completes now (its ranges are released; VARGMAX writes ``vec_result`` to ``rd``).
    mover_idle, mover_rd_release, mover_wr_release : In(channels) -- each channel's data mover
        can take an op; its op's read / write range is released now (a range several movers
        hold is free once every one of them has released it).
    units_idle : In(1) -- every unit (channels, vector unit, mover) has finished its work.
    unit_busy : In(channels + 2) -- busy flags for the counters: channel sequencers, vector
        unit, mover.
    cmd_valid, cmd_code : In -- each channel's command strobe and code, for the counters.
    ctr_addr : In; ctr_data : Out(COUNTER_BITS)
        performance counters (:func:`counter_map`).
    """

    def __init__(self, config: MachineConfig):
        if not isinstance(config, MachineConfig):
            raise TypeError(f"config must be a MachineConfig, not {config!r}")
        self._config = config
        self.queue_depth = config.asic.queue_depth
        self.step = dispatch_step(config)
        g = config.geometry
        nc = g.channels
        self.counters = counter_map(config)
        self.imem_data = memory.MemoryData(shape=isa.WORD_BITS, depth=config.asic.imem_words,
                                           init=[])
        self.pc_bits = max(ceil_log2(config.asic.imem_words), 1)
        ch = {f"ch{c}": Out(stream.Signature(channel_entry_layout(config))) for c in range(nc)}
        super().__init__({
            "imem_we": In(1), "imem_addr": In(self.pc_bits), "imem_wdata": In(isa.WORD_BITS),
            "start": In(1),
            "reg_we": In(1), "reg_addr": In(exact_log2(isa.NUM_SREGS)),
            "reg_wdata": In(isa.SREG_BITS), "reg_rdata": Out(isa.SREG_BITS),
            "running": Out(1), "done": Out(1), "error": Out(1),
            **ch,
            "o_asic": Out(stream.Signature(asic_entry_layout(config))),
            "vec_idle": In(1), "vec_release": In(1), "vec_result": In(isa.SREG_BITS),
            "mover_idle": In(nc), "mover_rd_release": In(nc), "mover_wr_release": In(nc),
            "units_idle": In(1),
            "unit_busy": In(nc + 2),
            "cmd_valid": In(nc), "cmd_code": In(data.ArrayLayout(DramCmd, nc)),
            "ctr_addr": In(max(ceil_log2(len(self.counters)), 1)),
            "ctr_data": Out(COUNTER_BITS),
        })

    @property
    def ch_ops(self) -> list:
        """The per-channel op streams, channel 0 first."""
        return [getattr(self, f"ch{c}") for c in range(self._config.geometry.channels)]

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        g = cfg.geometry
        nc, nb, lanes = g.channels, g.banks_per_channel, g.mac_lanes
        lg_lanes, lg_nb = exact_log2(lanes), exact_log2(nb)
        step = self.step

        # --- instruction memory and fetch ------------------------------------------------------
        imem = m.submodules.imem = memory.Memory(data=self.imem_data)
        wp = imem.write_port()
        rp = imem.read_port()
        m.d.comb += [wp.addr.eq(self.imem_addr), wp.data.eq(self.imem_wdata),
                     wp.en.eq(self.imem_we)]
        instr = Signal(isa.Instr)
        m.d.comb += instr.eq(rp.data[:isa.Instr.as_shape().size])
        op = instr.opcode
        sf, pf, vf = instr.body.scalar, instr.body.pim, instr.body.vector

        # --- scalar registers ------------------------------------------------------------------
        regs = Array(Signal(signed(isa.SREG_BITS), name=f"r{i}") for i in range(isa.NUM_SREGS))
        m.d.comb += self.reg_rdata.eq(regs[self.reg_addr])

        def reg(idx):
            return regs[idx]  # r0 is never written, so it reads 0

        def eff(v, r):
            return (v + reg(r))[:isa.SREG_BITS]

        # --- run state -------------------------------------------------------------------------
        running = Signal()
        pc = Signal(self.pc_bits)
        fetched = Signal()  # rp.data holds the instruction at pc
        wait = Signal(range(step + 1))  # cycles before the next dispatch may happen
        syncing = Signal()  # a SYNC / END waits for the units
        ending = Signal()
        first = Signal()  # the next dispatch is the run's first
        m.d.comb += self.running.eq(running)

        # --- decode: channel ops ---------------------------------------------------------------
        is_pim = Cat(op == o for o in sorted(isa.PIM_OPS, key=lambda o: o.value)).any()
        is_vec = Cat(op == o for o in sorted(isa.VECTOR_OPS, key=lambda o: o.value)).any()
        is_mov = Cat(op == o for o in sorted(MOVER_OPS, key=lambda o: o.value)).any()
        one_bank = (op == Op.MAC_SBK) | (op == Op.RD_BANK) | (op == Op.WR_BANK)
        e_bank = Signal(isa.SREG_BITS)
        e_addr = Signal(isa.SREG_BITS)
        e_n = Signal(isa.SREG_BITS)
        e_vaddr = Signal(isa.SREG_BITS)
        m.d.comb += [e_bank.eq(eff(pf.bank, pf.bank_reg)), e_addr.eq(eff(pf.addr, pf.addr_reg)),
                     e_n.eq(eff(pf.n, pf.n_reg)), e_vaddr.eq(eff(pf.vaddr, pf.vaddr_reg))]
        tgt_ch = e_bank >> lg_nb
        tgt_bank = e_bank[:max(lg_nb, 1)] if lg_nb else Const(0, 1)
        first_col = e_addr >> lg_lanes
        lane_off = e_addr[:lg_lanes]
        # RD_BANK / WR_BANK: columns the span [addr, addr + n) touches
        bank_cols = Mux(e_n == 0, 0, ((e_addr + e_n - 1) >> lg_lanes) - first_col)
        bank_cols1 = Mux(e_n == 0, 0, bank_cols + 1)
        ch_col = Signal(op_layout(cfg)["col"].shape)
        ch_n = Signal(_COUNT)
        with m.If(op == Op.WR_GB):
            m.d.comb += [ch_col.eq(pf.gb), ch_n.eq(e_n)]
        with m.Elif((op == Op.RD_BANK) | (op == Op.WR_BANK)):
            m.d.comb += [ch_col.eq(first_col), ch_n.eq(bank_cols1)]
        with m.Elif(op == Op.RD_MAC):
            m.d.comb += [ch_col.eq(0), ch_n.eq(1)]
        with m.Elif(op == Op.WR_ABK):
            m.d.comb += [ch_col.eq(first_col), ch_n.eq(1)]
        with m.Else():
            m.d.comb += [ch_col.eq(first_col), ch_n.eq(e_n)]
        targets = Signal(nc)  # channels that get an op
        for c in range(nc):
            sel = Mux(one_bank, tgt_ch == c, pf.ch_mask[c])
            m.d.comb += targets[c].eq(is_pim & sel & (ch_n != 0))

        # --- queues ----------------------------------------------------------------------------
        tag = Signal(TAG_BITS)
        cq = []
        for c in range(nc):
            q = _Queue(channel_entry_layout(cfg), self.queue_depth)
            m.submodules[f"chq{c}"] = q
            wiring.connect(m, q.o, wiring.flipped(getattr(self, f"ch{c}")))
            m.d.comb += [q.i.op.op.eq(op), q.i.op.bank.eq(tgt_bank), q.i.op.col.eq(ch_col),
                         q.i.op.n.eq(ch_n), q.i.gb.eq(pf.gb), q.i.data.eq(is_mov),
                         q.i.tag.eq(tag)]
            cq.append(q)
        aq = m.submodules.asicq = _Queue(asic_entry_layout(cfg), self.queue_depth)

        # ASIC entry: vector op
        ai = aq.i
        m.d.comb += [ai.is_vec.eq(is_vec), ai.vop.opcode.eq(op),
                     ai.vop.dst.eq(eff(vf.dst, vf.dst_reg)), ai.vop.a.eq(eff(vf.a, vf.a_reg)),
                     ai.vop.b.eq(vf.b), ai.vop.n.eq(eff(vf.n, vf.n_reg)),
                     ai.vop.bcast.eq(vf.bcast), ai.vop.imm.eq(vf.imm), ai.rd.eq(vf.rd)]
        # ASIC entry: mover op
        mo = ai.mop
        n_targets = Signal(range(nc + 1))
        m.d.comb += n_targets.eq(sum(targets[c] for c in range(nc)))
        words = Signal.like(mo.words)
        with m.If(op == Op.WR_GB):
            m.d.comb += words.eq(e_n[:_COUNT.width] << lg_lanes)
        with m.Elif((op == Op.RD_BANK) | (op == Op.WR_BANK)):
            m.d.comb += words.eq(e_n[:_COUNT.width])
        with m.Else():  # RD_MAC, WR_ABK: one word per bank of every channel taking part
            m.d.comb += words.eq(sum(pf.ch_mask[c] for c in range(nc)) << lg_nb)
        # the movers taking part: those of the channels that get an op
        m.d.comb += [mo.op.eq(op), mo.vaddr.eq(e_vaddr), mo.words.eq(words),
                     mo.lane_off.eq(Mux((op == Op.WR_GB) | (op == Op.RD_MAC), 0, lane_off)),
                     mo.col0.eq(first_col), mo.gb.eq(pf.gb), mo.ch_mask.eq(targets),
                     mo.ncmd.eq(ch_n), mo.tag.eq(tag)]

        # --- scoreboard: the in-flight vector op and each channel mover's op -------------------
        RB = _RANGE_BITS
        # one entry per vector op in flight (at most vec.MAX_IN_FLIGHT, the unit's issue rule),
        # allocated in start order; ops complete in that order, each releasing the oldest entry
        VN = vec.MAX_IN_FLIGHT
        vq = [{"busy": Signal(name=f"v{i}_busy"), "argmax": Signal(name=f"v{i}_argmax"),
               "rd": Signal(4, name=f"v{i}_rd"),
               **{n: Signal(RB, name=f"v{i}_{n}") for n in ("r1", "r1n", "r2", "r2n", "w", "wn")}}
              for i in range(VN)]
        v_old, v_new = Signal(range(VN)), Signal(range(VN))  # oldest entry, next free entry
        mv = [{n: Signal(RB, name=f"mv{c}_{n}") for n in ("r", "rn", "w", "wn")}
              for c in range(nc)]

        def vec_ranges(e):
            """(reads, writes) of a vector op as (lo, n) pairs (CycleSimulator._vector)."""
            o = e.vop.opcode
            n = e.vop.n
            binary = (o == Op.VADD) | (o == Op.VSUB) | (o == Op.VMUL)
            r1 = (e.vop.a, Mux(o == Op.VSET, 0, n))
            r2 = (e.vop.b, Mux(binary, Mux(e.vop.bcast, Mux(n != 0, 1, 1), n), 0))
            red = (o == Op.VSUM) | (o == Op.VMAX)
            w = (e.vop.dst, Mux(red, 1, Mux(o == Op.VARGMAX, 0, n)))
            return (r1, r2), w

        def mov_ranges(e):
            o = e.mop.op
            rd = Cat(o == x for x in sorted(MOVER_READS, key=lambda x: x.value)).any()
            return (e.mop.vaddr, Mux(rd, e.mop.words, 0)), (e.mop.vaddr, Mux(rd, 0, e.mop.words))

        head = aq.o.payload
        (hr1, hr2), hw = vec_ranges(head)
        mr, mw = mov_ranges(head)
        reads = [Mux(head.is_vec, hr1[0], mr[0]), Mux(head.is_vec, hr1[1], mr[1])]
        reads2 = [hr2[0], Mux(head.is_vec, hr2[1], 0)]
        writes = [Mux(head.is_vec, hw[0], mw[0]), Mux(head.is_vec, hw[1], mw[1])]
        # each vector op's ranges still held (the oldest is released by vec_release)
        v_lives = [e["busy"] & ~(self.vec_release & (v_old == i)) for i, e in enumerate(vq)]
        v_live = Signal()
        m.d.comb += v_live.eq(Cat(v_lives).any())
        # each mover's ranges still held
        mr_live, mw_live = Signal(nc), Signal(nc)
        m_rd_held, m_wr_held = Signal(nc), Signal(nc)
        m.d.comb += [mr_live.eq(m_rd_held & ~self.mover_rd_release),
                     mw_live.eq(m_wr_held & ~self.mover_wr_release)]
        hz = []
        for lo, n in (reads, reads2):
            hz += [lv & _overlap(lo, n, e["w"], e["wn"]) for lv, e in zip(v_lives, vq)]
            for c in range(nc):
                hz.append(mw_live[c] & _overlap(lo, n, mv[c]["w"], mv[c]["wn"]))
        lo, n = writes
        for lv, e in zip(v_lives, vq):
            for r in ("r1", "r2", "w"):
                hz.append(lv & _overlap(lo, n, e[r], e[r + "n"]))
        for c in range(nc):
            hz.append(mr_live[c] & _overlap(lo, n, mv[c]["r"], mv[c]["rn"]))
            hz.append(mw_live[c] & _overlap(lo, n, mv[c]["w"], mv[c]["wn"]))
        hazard = Signal()
        m.d.comb += hazard.eq(Cat(hz).any())
        # a mover op starts when every mover taking part is free (none taking part: at once)
        movers_free = (head.mop.ch_mask & ~self.mover_idle) == 0
        unit_free = Mux(head.is_vec, self.vec_idle, movers_free)
        m.d.comb += [self.o_asic.payload.eq(head),
                     self.o_asic.valid.eq(aq.o.valid & ~hazard & unit_free),
                     aq.o.ready.eq(self.o_asic.ready & ~hazard & unit_free)]
        started = aq.o.valid & aq.o.ready
        v_start = started & head.is_vec
        with m.If(v_start):
            m.d.sync += v_new.eq(Mux(v_new == VN - 1, 0, v_new + 1))
        with m.If(self.vec_release):
            m.d.sync += v_old.eq(Mux(v_old == VN - 1, 0, v_old + 1))
        for i, e in enumerate(vq):
            # (a full table: the op starting takes the entry released in the same cycle)
            with m.If(v_start & (v_new == i)):
                m.d.sync += [e["busy"].eq(1), e["r1"].eq(hr1[0]), e["r1n"].eq(hr1[1]),
                             e["r2"].eq(hr2[0]), e["r2n"].eq(hr2[1]), e["w"].eq(hw[0]),
                             e["wn"].eq(hw[1]), e["argmax"].eq(head.vop.opcode == Op.VARGMAX),
                             e["rd"].eq(head.rd)]
            with m.Elif(self.vec_release & (v_old == i)):
                m.d.sync += e["busy"].eq(0)
        for c in range(nc):
            with m.If(started & ~head.is_vec & head.mop.ch_mask[c]):
                m.d.sync += [m_rd_held[c].eq(mr[1] != 0), m_wr_held[c].eq(mw[1] != 0),
                             mv[c]["r"].eq(mr[0]), mv[c]["rn"].eq(mr[1]),
                             mv[c]["w"].eq(mw[0]), mv[c]["wn"].eq(mw[1])]
            with m.Else():
                with m.If(self.mover_rd_release[c]):
                    m.d.sync += m_rd_held[c].eq(0)
                with m.If(self.mover_wr_release[c]):
                    m.d.sync += m_wr_held[c].eq(0)

        # --- dispatch --------------------------------------------------------------------------
        room = Signal()
        need_ch = targets
        ch_full = Cat(cq[c].full for c in range(nc))
        need_asic = is_vec | is_mov
        m.d.comb += room.eq(~(need_ch & ch_full).any() & ~(need_asic & aq.full))
        all_idle = Signal()
        m.d.comb += all_idle.eq(self.units_idle & ~aq.o.valid & ~v_live & ~mw_live.any()
                                & ~mr_live.any() & ~Cat(q.o.valid for q in cq).any())
        can = running & fetched & (wait == 0) & ~syncing
        dispatch = Signal()
        m.d.comb += dispatch.eq(can & room)
        for c in range(nc):
            m.d.comb += cq[c].push.eq(dispatch & targets[c])
        m.d.comb += aq.push.eq(dispatch & need_asic)
        with m.If(dispatch & is_mov):
            m.d.sync += tag.eq(tag + 1)

        # scalar execution and the next pc
        rs, rt = reg(sf.rs), reg(sf.rt)
        imm = sf.imm
        next_pc = Signal(self.pc_bits)
        taken = ((op == Op.BLT) & (rs < rt)) | ((op == Op.BGE) & (rs >= rt))
        m.d.comb += next_pc.eq(Mux(taken, imm[:self.pc_bits], pc + 1))
        bad_div = ((op == Op.SDIV) | (op == Op.SMOD)) & (imm <= 0)
        divisor = Mux(imm > 0, imm, 1)
        known = Cat(op == o for o in Op).any()
        bad_pc = Mux(taken, (imm < 0) | (imm >= cfg.asic.imem_words), Const(0, 1))
        wval = Signal(signed(isa.SREG_BITS))
        wen = Signal()
        with m.If(op == Op.SLI):
            m.d.comb += [wval.eq(imm), wen.eq(1)]
        with m.Elif(op == Op.SADD):
            m.d.comb += [wval.eq(rs + rt + imm), wen.eq(1)]
        with m.Elif(op == Op.SMUL):
            m.d.comb += [wval.eq(rs * imm), wen.eq(1)]
        with m.Elif(op == Op.SDIV):
            m.d.comb += [wval.eq(rs // divisor), wen.eq(1)]
        with m.Elif(op == Op.SMOD):
            m.d.comb += [wval.eq(rs % divisor), wen.eq(1)]

        # VARGMAX's result comes back from the vector unit at its done
        # (one comparison per register: an Array write prints an incomplete case statement)
        v_rd = Array(e["rd"] for e in vq)[v_old]
        argmax_w = self.vec_release & Array(e["busy"] & e["argmax"] for e in vq)[v_old]
        for i in range(1, isa.NUM_SREGS):
            with m.If(argmax_w & (v_rd == i)):
                m.d.sync += regs[i].eq(self.vec_result)
            with m.If(dispatch & wen & (sf.rd == i)):
                m.d.sync += regs[i].eq(wval)
            with m.If(self.reg_we & ~running & (self.reg_addr == i)):
                m.d.sync += regs[i].eq(self.reg_wdata)

        # fetch: the read port holds the instruction at pc until it is dispatched
        rd_addr = Signal(self.pc_bits)
        m.d.comb += [rp.addr.eq(rd_addr), rp.en.eq(1)]
        m.d.comb += rd_addr.eq(pc)
        with m.If(wait != 0):
            m.d.sync += wait.eq(wait - 1)
        with m.If(self.start):
            m.d.sync += [running.eq(1), pc.eq(0), fetched.eq(1), wait.eq(0), syncing.eq(0),
                         ending.eq(0), first.eq(1), self.done.eq(0), self.error.eq(0)]
            m.d.comb += rd_addr.eq(0)
        with m.Elif(dispatch):
            m.d.sync += [wait.eq(step - 1), first.eq(0)]
            with m.If(~known | bad_div | bad_pc):
                m.d.sync += [self.error.eq(1), running.eq(0)]
            with m.Elif((op == Op.SYNC) | (op == Op.END)):
                # everything may have finished already: then SYNC / END complete at once
                m.d.sync += [syncing.eq(~all_idle), ending.eq(op == Op.END), pc.eq(pc + 1)]
                m.d.comb += rd_addr.eq(pc + 1)
                with m.If(all_idle & (op == Op.END)):
                    m.d.sync += [running.eq(0), self.done.eq(1)]
            with m.Else():
                m.d.sync += pc.eq(next_pc)
                m.d.comb += rd_addr.eq(next_pc)
        with m.Elif(syncing & all_idle):
            m.d.sync += syncing.eq(0)
            with m.If(ending):
                m.d.sync += [running.eq(0), self.done.eq(1)]

        finish = Signal()  # END completes in this cycle
        m.d.comb += finish.eq(running & ((syncing & ending & all_idle)
                                         | (dispatch & (op == Op.END) & all_idle)))

        # --- performance counters --------------------------------------------------------------
        names = self.counters
        ctrs = [Signal(COUNTER_BITS, name=f"ctr_{n}") for n in names]
        counting = Signal()  # from the first dispatch to done
        with m.If(self.start):
            m.d.sync += counting.eq(0)
        with m.Elif(dispatch & first):
            m.d.sync += counting.eq(1)
        with m.Elif(finish):
            m.d.sync += counting.eq(0)
        live = counting | (dispatch & first)
        incs = {n: Const(0, 1) for n in names}
        # the simulator's span ends at the cycle everything has finished (that cycle excluded)
        incs["cycles"] = live & ~finish
        incs["instructions"] = dispatch
        incs["dispatch_stall"] = can & ~room
        incs["sync_wait"] = running & syncing & ~all_idle
        incs["vector_busy"] = self.unit_busy[nc]
        incs["vector_stall"] = aq.o.valid & head.is_vec & ~started
        incs["mover_busy"] = self.unit_busy[nc + 1]
        incs["mover_stall"] = aq.o.valid & ~head.is_vec & ~started
        for c in range(nc):
            incs[f"ch{c}_busy"] = self.unit_busy[c]
            chs = getattr(self, f"ch{c}")
            incs[f"ch{c}_stall"] = chs.valid & ~chs.ready
        ctr_mod = m.submodules.counters = Module()
        for name, ctr in zip(names, ctrs):
            if name.startswith("cmd_"):
                code = DramCmd[name[4:]]
                inc = sum((self.cmd_valid[c] & (self.cmd_code[c] == code)) for c in range(nc))
                inc = Mux(live, inc, 0)
            else:
                inc = Mux(live, incs[name], 0) if name != "cycles" else incs[name]
            with ctr_mod.If(self.start):
                ctr_mod.d.sync += ctr.eq(0)
            with ctr_mod.Else():
                ctr_mod.d.sync += ctr.eq(ctr + inc)
        # padded to every address: an unlisted one reads 0 (and the case is complete)
        pad = [Const(0, COUNTER_BITS)] * ((1 << len(self.ctr_addr)) - len(ctrs))
        m.d.comb += self.ctr_data.eq(Array(ctrs + pad)[self.ctr_addr])
        return m
