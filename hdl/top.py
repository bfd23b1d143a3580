"""The PIM-GPT top: controller, vector unit, ``channels`` x (sequencer + PIM channel + data
mover between vector memory and that channel).

Clocking
--------
One clock, the DRAM command clock (cycle ``x`` of the top is cycle ``x`` of
:class:`~pimgpt.sim.cycle.CycleSimulator`). The ASIC side advances at the ASIC clock: with
``ratio = dram_mhz / asic_mhz`` (an integer, :func:`~pimgpt.hdl.controller.asic_ratio`; 2 for
``tiny``) an enable ``asic_en`` is high in every ``ratio``-th cycle (cycles ``x`` with
``x % ratio == 0`` counted from reset) and the vector unit (its memory included) is wrapped in an
``EnableInserter`` on it, so each of its cycles is one ASIC cycle. The vector unit takes an op
only in an ``asic_en`` cycle; its ``done`` counts in the ``asic_en`` cycle it is high in, which
is ``start + asic_cycles(beats + latency)``, the simulator's completion. It overlaps ops by its
issue rule (:class:`~pimgpt.hdl.vector.VectorIssue`, which the simulator imports): its
``i_op.ready`` for the op at the ASIC queue's head is the controller's ``vec_idle``, and each
``done`` (ops complete in the order they started) is a ``vec_release`` of the oldest vector op
in flight (a VARGMAX's index is on ``result`` in that cycle). The controller's dispatch and the
sequencers run every cycle (dispatch every ``dispatch_step`` cycles, see
:mod:`pimgpt.hdl.controller`).

Data movers
-----------
Each channel has its own data mover (submodule ``mover<c>``) between vector memory and that
channel, with its own read and write port on every vector-memory bank (one ``L =
asic.vector_lanes``-word row per ASIC cycle, aligned rows, no rotation needed) and a staging
buffer of ``stage_cols`` BF16 columns. A data-moving PIM instruction (WR_GB, WR_BANK, WR_ABK,
RD_MAC, RD_BANK) is one ASIC-queue op; it starts, in program order with the vector ops, once
the movers of every channel taking part are idle and its vector-memory range is free, and each
of those movers takes it:

- WR_GB, WR_BANK, WR_ABK: *stage* the source words (rounded to BF16) row by row: the ``rows``
  aligned rows the span touches are read at the first ``rows`` ASIC edges after the start and
  captured one edge later; at that ``rows + 1``-th edge the source range is released, and from
  the next cycle the channel's data op may go (``go``); every data command (WRGB / WR / WR16)
  takes its data from the buffer in its cycle; the mover is idle two cycles after the last one.
- RD_MAC, RD_BANK: let the channel's data op go the cycle after the start; capture the
  read-out (``o_mac``) or columns (``o_rd``) as they arrive; from two cycles after the last
  arrival *drain* this channel's words (RD_MAC: its ``banks_per_channel`` words, at its rank
  among the channels taking part; RD_BANK: all) into vector memory (BF16 widened to binary32),
  one aligned row per ASIC edge; the destination range is released with the last row's write
  once every mover taking part has drained, and the mover is idle the cycle after.

A channel's later ops wait behind its data op in its queue. :class:`CycleSimulator` models
exactly this (``_move``): the top's cycle count equals the simulator's, run by run.

Controller rules the simulator shares
-------------------------------------
Vector ops start on ASIC clock edges (:func:`~pimgpt.hdl.controller.asic_edge`); vector and
mover ops leave the ASIC queue in program order, at most one per cycle; every queue is
``asic.queue_depth`` deep and dispatch stalls while a target queue is full; SYNC / END complete
when every unit is idle, an idle sequencer that owes a refresh counting as busy until it has
issued it; dispatch resumes the cycle after a SYNC that had to wait.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, EnableInserter, Module, Mux, Signal, Value
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl.channel import ChannelPim, column_layout
from pimgpt.hdl.controller import (COUNTER_BITS, Controller, asic_ratio, counter_map,
                                   dispatch_step, mover_layout)
from pimgpt.hdl.fp import BFLOAT16, F32ToBf16
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import MachineConfig
from pimgpt.hdl.sequencer import ChannelSequencer
from pimgpt.hdl.timing import DramCmd
from pimgpt.hdl.vector import VectorUnit

__all__ = ["PimGptTop", "MoverState"]

_W = 32  # vector-memory word (binary32)
_H = BFLOAT16.width


class MoverState:
    """States of the data mover (values of ``PimGptTop``'s mover state register)."""

    IDLE, STAGE, CMDS, DRAIN = range(4)


class _MoverPort:
    """One data mover's read and write port on every vector-memory bank: ``rd_addr`` /
    ``rd_data`` (one aligned row, ``L`` words), ``wr_addr`` / ``wr_data`` / ``wr_en`` (per word)."""

    def __init__(self, c: int, rows: int, L: int):
        self.rd_addr = Signal(range(rows), name=f"mv{c}_rd_addr")
        self.rd_data = Signal(data.ArrayLayout(_W, L), name=f"mv{c}_rd_data")
        self.wr_addr = Signal(range(rows), name=f"mv{c}_wr_addr")
        self.wr_data = Signal(data.ArrayLayout(_W, L), name=f"mv{c}_wr_data")
        self.wr_en = Signal(L, name=f"mv{c}_wr_en")


class _VectorUnitWithMover(VectorUnit):
    """The vector unit with one extra read and one extra write port per vector-memory bank for
    each channel's data mover (:class:`_MoverPort`, ``movers[c]``). The ports are added to the
    unit's bank memories after it has elaborated them; a ``dma`` port of VectorUnit itself would
    be the clean form (see the report of issue 4). Two movers never write the same word in one
    cycle: their spans in flight are disjoint (the scoreboard)."""

    def __init__(self, config: MachineConfig):
        super().__init__(config)
        L = self.lanes
        rows = config.asic.vmem_words // L
        self.movers = [_MoverPort(c, rows, L) for c in range(config.geometry.channels)]

    def elaborate(self, platform):
        m = super().elaborate(platform)
        for k in range(self.lanes):
            mem = m.submodules[f"bank{k}"]
            for p in self.movers:
                rp = mem.read_port()
                wp = mem.write_port()
                m.d.comb += [rp.addr.eq(p.rd_addr), p.rd_data[k].eq(rp.data),
                             wp.addr.eq(p.wr_addr), wp.data.eq(p.wr_data[k]),
                             wp.en.eq(p.wr_en[k])]
        return m


class PimGptTop(wiring.Component):
    """The whole machine (module docstring: clocking, the mover, differences from the simulator).

    Parameters
    ----------
    config : MachineConfig
    array_rows : int or None
        Rows of every bank the channel models hold (:class:`~pimgpt.hdl.channel.ChannelPim`).
    stage_cols : int or None
        Columns of each mover's staging buffer (default ``gb_cols + 1``: a whole global buffer,
        and any RD_BANK / WR_BANK of up to ``gb_cols`` columns' elements at any alignment);
        a larger move raises ``error``.

    Attributes
    ----------
    start, done, running, error : the run (``error``: the controller refused an instruction, a
        channel saw a protocol error, or a move exceeded the staging buffer).
    imem_we, imem_addr, imem_wdata : load the program (one isa.WORD_BITS-bit word per cycle).
    reg_we, reg_addr, reg_wdata, reg_rdata : scalar registers (while not running).
    vmem_we, vmem_addr, vmem_wdata, vmem_rdata : vector memory, one word per ASIC cycle while
        idle (``vmem_rdata``: the word addressed at the previous ASIC edge).
    dram_en, dram_we, dram_bank, dram_col, dram_wdata, dram_rdata, dram_rvalid : the DRAM image
        backdoor: global bank ``dram_bank``, element column ``dram_col`` (one column per cycle).
    ctr_addr, ctr_data : performance counters (:func:`~pimgpt.hdl.controller.counter_map`).
    manifest_extra : dict
        counter addresses and clocking facts for the generated-Verilog manifest.
    """

    def __init__(self, config: MachineConfig, *, array_rows: int | None = None,
                 stage_cols: int | None = None):
        if not isinstance(config, MachineConfig):
            raise TypeError(f"config must be a MachineConfig, not {config!r}")
        g = config.geometry
        self._config = config
        self.ratio = asic_ratio(config)
        self.stage_cols = g.gb_cols + 1 if stage_cols is None else stage_cols
        if self.stage_cols * g.mac_lanes < g.channels * g.banks_per_channel:
            raise PimgptError("stage_cols too small for one word per bank (RD_MAC / WR_ABK)")
        if config.asic.data_path != "mover":
            raise PimgptError(f"the RTL implements asic.data_path = 'mover', not "
                              f"'{config.asic.data_path}' (a what-if of the simulator)")
        self.controller = Controller(config)
        self.vector = _VectorUnitWithMover(config)
        self.channels = [ChannelPim(config, array_rows=array_rows) for _ in range(g.channels)]
        self.sequencers = [ChannelSequencer(config) for _ in range(g.channels)]
        self.counters = counter_map(config)
        self.manifest_extra = {
            "counters": dict(self.counters),
            "counter_bits": COUNTER_BITS,
            "asic_ratio": self.ratio,
            "dispatch_step": dispatch_step(config),
            "queue_depth": config.asic.queue_depth,
            "stage_cols": self.stage_cols,
        }
        ctl = self.controller
        nbits = max(ceil_log2(g.banks), 1)
        super().__init__({
            "start": In(1), "done": Out(1), "running": Out(1), "error": Out(1),
            "imem_we": In(1), "imem_addr": In(ctl.pc_bits), "imem_wdata": In(isa.WORD_BITS),
            "reg_we": In(1), "reg_addr": In(exact_log2(isa.NUM_SREGS)),
            "reg_wdata": In(isa.SREG_BITS), "reg_rdata": Out(isa.SREG_BITS),
            "vmem_we": In(1), "vmem_addr": In(self.vector.addr_bits), "vmem_wdata": In(_W),
            "vmem_rdata": Out(_W),
            "dram_en": In(1), "dram_we": In(1), "dram_bank": In(nbits),
            "dram_col": In(max(ceil_log2(g.rows * g.cols_per_row), 1)),
            "dram_wdata": In(column_layout(config)), "dram_rdata": Out(column_layout(config)),
            "dram_rvalid": Out(1),
            "ctr_addr": In(max(ceil_log2(len(self.counters)), 1)),
            "ctr_data": Out(COUNTER_BITS),
        })

    def _mover(self, m: Module, c: int, take: Value, mop: Value, asic_en: Value) -> Signal:
        """Channel ``c``'s data mover (module docstring), as submodule ``mover<c>``: it takes
        ``mop`` when ``take``, gates channel ``c``'s data ops and feeds their data; returns its
        idle flag. Its range releases go to the controller's bit ``c``."""
        cfg = self._config
        g = cfg.geometry
        nb, lanes = g.banks_per_channel, g.mac_lanes
        lg_nb, lg_lanes = exact_log2(nb), exact_log2(lanes)
        L = cfg.asic.vector_lanes
        lgL = exact_log2(L)
        cbits = exact_log2(g.cols_per_row)
        S = self.stage_cols * lanes  # staging slots (BF16)
        ctl, port = self.controller, self.vector.movers[c]
        chan, sq = self.channels[c], self.sequencers[c]
        mod = m.submodules[f"mover{c}"] = Module()

        cur = Signal(mover_layout(cfg), name="cur")
        state = Signal(range(4), name="state")
        idle = Signal(name="idle")
        mod.d.comb += idle.eq(state == MoverState.IDLE)
        row = Signal(range(cfg.asic.vmem_words // L + 1), name="row")
        pending = Signal(name="pending")
        rem = Signal.like(cur.ncmd, name="rem")
        rcol = Signal(range(self.stage_cols + 1), name="rcol")
        slots = [Signal(_H, name=f"slot{j}") for j in range(S)]
        overflow = Signal(name="overflow")
        self._overflow.append(overflow)
        is_read = (cur.op == Op.RD_MAC) | (cur.op == Op.RD_BANK)
        in_bank = (cur.op == Op.RD_BANK) | (cur.op == Op.WR_BANK)
        soff = Mux(in_bank, cur.lane_off, 0)  # slot of the first word
        # word w of vector memory <-> slot w - dshift
        dshift = Signal(range(-(S + 1), cfg.asic.vmem_words + 1), name="dshift")
        mod.d.comb += dshift.eq(cur.vaddr - soff)
        r_end = Signal.like(row, name="r_end")  # staging: the last row of the whole span
        mod.d.comb += r_end.eq((cur.vaddr + cur.words - 1) >> lgL)
        # rank of this channel among those taking part (RD_MAC / WR_ABK word order)
        # (at least 1 bit: channel 0's would be a zero-width wire, `[-1:0]` in the Verilog)
        rank = Signal(range(max(c + 1, 2)), name="rank")
        mod.d.comb += rank.eq(sum(cur.ch_mask[i] for i in range(c)) if c else 0)
        # a read drains this channel's words: RD_MAC its rank's banks_per_channel, RD_BANK all
        d_lo = Signal(range(cfg.asic.vmem_words + S + 1), name="d_lo")
        d_n = Signal.like(cur.words, name="d_n")
        mod.d.comb += [d_lo.eq(Mux(cur.op == Op.RD_MAC, cur.vaddr + (rank << lg_nb), cur.vaddr)),
                       d_n.eq(Mux(cur.op == Op.RD_MAC, nb, cur.words))]
        d_end = Signal.like(row, name="d_end")
        mod.d.comb += d_end.eq((d_lo + d_n - 1) >> lgL)

        with mod.If(take):
            mod.d.sync += [cur.eq(mop), rcol.eq(0), pending.eq(0), row.eq(mop.vaddr >> lgL),
                           rem.eq(mop.ncmd)]
            reads = Cat(mop.op == o for o in (Op.WR_GB, Op.WR_BANK, Op.WR_ABK)).any()
            too_big = mop.words + Mux((mop.op == Op.RD_BANK) | (mop.op == Op.WR_BANK),
                                      mop.lane_off, 0) > S
            with mod.If(too_big):
                mod.d.sync += overflow.eq(1)
            mod.d.sync += state.eq(Mux(reads & (mop.words != 0), MoverState.STAGE,
                                       MoverState.CMDS))

        rd_release, wr_release = Signal(name="rd_release"), Signal(name="wr_release")
        mod.d.comb += port.rd_addr.eq(row)

        # STAGE: one row per ASIC cycle; the row addressed at one edge is captured at the next
        conv = []
        for k in range(L):
            cv = mod.submodules[f"bf16_{k}"] = F32ToBf16()
            mod.d.comb += cv.a.eq(port.rd_data[k])
            conv.append(cv.y)
        stage_cap = Signal(name="stage_cap")
        stage_base = Signal(range(-(S + 1) - cfg.asic.vmem_words, cfg.asic.vmem_words + 1),
                            name="stage_base")
        mod.d.comb += stage_base.eq(((row - 1) << lgL) - dshift)
        with mod.If((state == MoverState.STAGE) & asic_en):
            mod.d.comb += stage_cap.eq(pending)
            with mod.If(row <= r_end):
                mod.d.sync += [row.eq(row + 1), pending.eq(1)]
            with mod.Else():
                mod.d.sync += [pending.eq(0), state.eq(MoverState.CMDS)]
                mod.d.comb += rd_release.eq(1)

        # CMDS: the channel executes the instruction; data commands / read-outs are counted
        go = state == MoverState.CMDS
        cmd = sq.o_cmd
        wr_cmd = cmd.valid & (((cur.op == Op.WR_GB) & (cmd.payload.cmd == DramCmd.WRGB))
                              | ((cur.op == Op.WR_BANK) & (cmd.payload.cmd == DramCmd.WR))
                              | ((cur.op == Op.WR_ABK) & (cmd.payload.cmd == DramCmd.WR16)))
        got = (((cur.op == Op.RD_BANK) & chan.o_rd.valid)
               | ((cur.op == Op.RD_MAC) & chan.o_mac.valid))
        with mod.If(go & (wr_cmd | got) & (rem != 0)):
            mod.d.sync += rem.eq(rem - 1)
        with mod.If(go & (rem == 0)):
            with mod.If(is_read & (cur.words != 0)):
                mod.d.sync += [state.eq(MoverState.DRAIN), row.eq(d_lo >> lgL)]
            with mod.Else():
                mod.d.sync += state.eq(MoverState.IDLE)
                with mod.If(is_read):
                    mod.d.comb += wr_release.eq(1)

        # DRAIN: one row per ASIC cycle into vector memory
        drain_base = Signal.like(stage_base, name="drain_base")
        mod.d.comb += drain_base.eq((row << lgL) - dshift)
        # padded to a power of two: every index value is listed (no incomplete case in Verilog)
        slot_arr = Array(slots + [Const(0, _H)] * ((1 << ceil_log2(S)) - S))
        mod.d.comb += port.wr_addr.eq(row)
        with mod.If((state == MoverState.DRAIN) & asic_en):
            for k in range(L):
                w = (row << lgL) + k
                j = drain_base + k
                mod.d.comb += [port.wr_data[k].eq(Cat(Const(0, 16), slot_arr[j[:ceil_log2(S)]])),
                               port.wr_en[k].eq((w >= d_lo) & (w < d_lo + d_n))]
            mod.d.sync += row.eq(row + 1)
            with mod.If(row == d_end):
                mod.d.sync += state.eq(MoverState.IDLE)
                mod.d.comb += wr_release.eq(1)

        # slot writes: staged words, RD columns, RD_MAC read-outs
        with mod.If(go & chan.o_rd.valid & (cur.op == Op.RD_BANK)):
            mod.d.sync += rcol.eq(rcol + 1)
        for j in range(S):
            rel = Signal(stage_base.shape(), name=f"srel{j}")
            mod.d.comb += rel.eq(j - stage_base)
            # (j >= soff only where it can fail: soff <= mac_lanes - 1; no constant comparison)
            in_span = ((j >= soff) if j < lanes - 1 else Const(1, 1)) & (j < soff + cur.words)
            with mod.If(stage_cap & (rel >= 0) & (rel < L) & in_span):
                mod.d.sync += slots[j].eq(Array(conv)[rel[:max(lgL, 1)]] if L > 1 else conv[0])
            col_j, lane_j = j // lanes, j % lanes
            if col_j < self.stage_cols:
                with mod.If(go & chan.o_rd.valid & (cur.op == Op.RD_BANK) & (rcol == col_j)):
                    mod.d.sync += slots[j].eq(chan.o_rd.payload[lane_j])
            with mod.If(go & chan.o_mac.valid & (cur.op == Op.RD_MAC) & (rank == (j >> lg_nb))):
                mod.d.sync += slots[j].eq(chan.o_mac.payload[j % nb])

        # channel ops: a data op waits for this mover's go; i_data from the staging buffer
        cols = [Cat(slots[i * lanes:(i + 1) * lanes]) for i in range(self.stage_cols)]
        cbits_col = max(ceil_log2(self.stage_cols), 1)
        col_arr = Array(cols + [Const(0, lanes * _H)] * ((1 << cbits_col) - len(cols)))
        q = ctl.ch_ops[c]
        allowed = ~q.payload.data | (go & (q.payload.tag == cur.tag) & (rem != 0))
        mod.d.comb += [sq.i_op.payload.eq(q.payload.op), sq.i_op.valid.eq(q.valid & allowed),
                       q.ready.eq(sq.i_op.ready & allowed)]
        transfer = q.valid & q.ready
        # the MAC run's global-buffer columns: gb + (element column - first column)
        cur_gb = Signal.like(q.payload.gb, name="cur_gb")
        cur_col = Signal.like(q.payload.op.col, name="cur_col")
        with mod.If(transfer):
            mod.d.sync += [cur_gb.eq(q.payload.gb), cur_col.eq(q.payload.op.col)]
        cp = sq.o_cmd.payload
        elemcol = Cat(cp.col[:cbits], cp.row)
        base_gb = Mux(transfer, q.payload.gb, cur_gb)
        base_col = Mux(transfer, q.payload.op.col, cur_col)
        idata = chan.i_data
        mod.d.comb += idata.gb_col.eq(base_gb + (elemcol - base_col))
        wr_ci = Signal(range(-(1 << 20), 1 << 20), name="wr_ci")
        with mod.If(cp.cmd == DramCmd.WRGB):
            mod.d.comb += wr_ci.eq(cp.col - cur.gb)
        with mod.Else():
            mod.d.comb += wr_ci.eq(elemcol - cur.col0)
        mod.d.comb += idata.column.eq(col_arr[wr_ci[:cbits_col]])
        mask = Signal(lanes, name="wr_mask")
        for lane in range(lanes):
            e = (wr_ci << lg_lanes) + lane
            mod.d.comb += mask[lane].eq((e >= soff) & (e < soff + cur.words))
        lane1 = Signal(lanes, name="wr16_mask")
        mod.d.comb += lane1.eq(1 << cur.lane_off)
        mod.d.comb += idata.mask.eq(Mux(cur.op == Op.WR_ABK, lane1, mask))
        for b in range(nb):
            j = (rank << lg_nb) + b if lg_nb else rank + b
            mod.d.comb += idata.banks[b].eq(slot_arr[j[:ceil_log2(S)]])
        self._releases.append((rd_release, wr_release))
        return idle

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        g = cfg.geometry
        nc, nb = g.channels, g.banks_per_channel
        lg_nb = exact_log2(nb)

        ctl = m.submodules.controller = self.controller
        vu = self.vector
        seqs, chans = self.sequencers, self.channels
        for c in range(nc):
            m.submodules[f"seq{c}"] = seqs[c]
            m.submodules[f"ch{c}"] = chans[c]
            m.d.comb += [chans[c].i_cmd.valid.eq(seqs[c].o_cmd.valid),
                         chans[c].i_cmd.payload.eq(seqs[c].o_cmd.payload)]

        # --- the ASIC clock enable ---------------------------------------------------------------
        asic_en = Signal()
        if self.ratio == 1:
            m.d.comb += asic_en.eq(1)
        else:
            phase = Signal(range(self.ratio))
            m.d.sync += phase.eq(Mux(phase == self.ratio - 1, 0, phase + 1))
            m.d.comb += asic_en.eq(phase == 0)
        m.submodules.vector = EnableInserter({"sync": asic_en})(vu)

        # --- host ports --------------------------------------------------------------------------
        m.d.comb += [
            ctl.start.eq(self.start), self.done.eq(ctl.done), self.running.eq(ctl.running),
            ctl.imem_we.eq(self.imem_we), ctl.imem_addr.eq(self.imem_addr),
            ctl.imem_wdata.eq(self.imem_wdata),
            ctl.reg_we.eq(self.reg_we), ctl.reg_addr.eq(self.reg_addr),
            ctl.reg_wdata.eq(self.reg_wdata), self.reg_rdata.eq(ctl.reg_rdata),
            ctl.ctr_addr.eq(self.ctr_addr), self.ctr_data.eq(ctl.ctr_data),
            vu.host_addr.eq(self.vmem_addr), vu.host_we.eq(self.vmem_we & ~ctl.running),
            vu.host_wdata.eq(self.vmem_wdata), self.vmem_rdata.eq(vu.host_rdata),
        ]
        dram_ch = self.dram_bank >> lg_nb
        rsel = Signal(range(max(nc, 2)))
        m.d.sync += rsel.eq(dram_ch)
        for c in range(nc):
            h = chans[c].host
            m.d.comb += [h.en.eq(self.dram_en & (dram_ch == c)), h.we.eq(self.dram_we),
                         h.bank.eq(self.dram_bank[:max(lg_nb, 1)] if lg_nb else 0),
                         h.col.eq(self.dram_col), h.wdata.eq(self.dram_wdata)]
        m.d.comb += [self.dram_rdata.eq(Array(ch.host.rdata for ch in chans)[rsel]),
                     self.dram_rvalid.eq(Cat(ch.host.rvalid for ch in chans).any())]

        # --- ASIC queue head: vector unit or the channels' movers ----------------------------
        self._overflow, self._releases = [], []
        head = ctl.o_asic.payload
        idle_v = Signal(nc)  # each mover is idle
        movers_free = Signal()  # every mover the head's op names is idle
        m.d.comb += movers_free.eq((head.mop.ch_mask & ~idle_v) == 0)
        m.d.comb += [
            vu.i_op.payload.eq(head.vop),
            vu.i_op.valid.eq(ctl.o_asic.valid & head.is_vec & asic_en),
            ctl.o_asic.ready.eq(Mux(head.is_vec, vu.i_op.ready & asic_en, movers_free)),
            ctl.vec_idle.eq(vu.i_op.ready & asic_en),
            ctl.vec_release.eq(vu.done & asic_en),
            ctl.vec_result.eq(vu.result),
            ctl.mover_idle.eq(idle_v),
        ]
        take = ctl.o_asic.valid & ~head.is_vec & movers_free
        for c in range(nc):
            m.d.comb += idle_v[c].eq(self._mover(m, c, take & head.mop.ch_mask[c], head.mop,
                                                 asic_en))
        m.d.comb += [ctl.mover_rd_release.eq(Cat(r for r, _ in self._releases)),
                     ctl.mover_wr_release.eq(Cat(w for _, w in self._releases))]

        # --- idle, busy, counters -----------------------------------------------------------------
        vec_idle = ~vu.busy & ~(vu.done & ~asic_en)
        seq_idle = ~Cat(s.busy for s in seqs).any()
        m.d.comb += [
            ctl.units_idle.eq(vec_idle & seq_idle & idle_v.all()),
            ctl.unit_busy.eq(Cat(*(s.busy for s in seqs), vu.busy | vu.done, ~idle_v.all())),
            ctl.cmd_valid.eq(Cat(s.o_cmd.valid for s in seqs)),
        ]
        for c in range(nc):
            m.d.comb += ctl.cmd_code[c].eq(seqs[c].o_cmd.payload.cmd)
        m.d.comb += self.error.eq(ctl.error | Cat(self._overflow).any()
                                  | Cat(ch.error for ch in chans).any())
        return m
