"""The PIM-GPT top: controller, vector unit, ``channels`` x (sequencer + PIM channel) and the data
mover between vector memory and the channels.

Clocking
--------
One clock, the DRAM command clock (cycle ``x`` of the top is cycle ``x`` of
:class:`~pimgpt.sim.cycle.CycleSimulator`). The ASIC side advances at the ASIC clock: with
``ratio = dram_mhz / asic_mhz`` (an integer, :func:`~pimgpt.hdl.controller.asic_ratio`; 2 for
``tiny``) an enable ``asic_en`` is high in every ``ratio``-th cycle (cycles ``x`` with
``x % ratio == 0`` counted from reset) and the vector unit (its memory included) is wrapped in an
``EnableInserter`` on it, so each of its cycles is one ASIC cycle. The vector unit takes an op
only in an ``asic_en`` cycle; its ``done`` counts in the ``asic_en`` cycle it is high in, which
is ``start + asic_cycles(beats + latency)``, the simulator's completion. The controller's
dispatch and the sequencers run every cycle (dispatch every ``dispatch_step`` cycles, see
:mod:`pimgpt.hdl.controller`).

Data mover
----------
One mover executes the data-moving PIM instructions one at a time, in program order, reaching
vector memory through its own read and write port on every vector-memory bank (one ``L =
asic.vector_lanes``-word row per ASIC cycle, aligned rows, no rotation needed) and a staging
buffer of ``stage_cols`` BF16 columns:

- WR_GB, WR_BANK, WR_ABK: *stage* the source words (rounded to BF16) row by row: ``rows + 1``
  ASIC cycles (``rows`` aligned vector-memory rows the span touches, plus the read latency); the
  source range is released then. Then the channel ops are let go (``go``); every data command
  (WRGB / WR / WR16) takes its data from the buffer in its cycle; the mover is free the cycle
  after the last one.
- RD_MAC, RD_BANK: let the channel ops go at once; capture each channel's read-out (``o_mac``)
  or columns (``o_rd``) as they arrive; then *drain* them into vector memory (BF16 widened to
  binary32), one aligned row per ASIC cycle; the destination range is released with the last
  row's write.

Differences from CycleSimulator (precisely which rule would have to change)
---------------------------------------------------------------------------
1. Vector ops start on ASIC clock edges: ``start = ceil_to(max(t, vec_free, ...), ratio)``
   (cycles ``x % ratio == 0``) instead of any DRAM cycle.
2. One vector op at a time: ``vec_free = done`` instead of ``start + asic_cycles(beats)``
   (the vector unit's own rule, hdl/vector.py).
3. Vector and mover ops *start* in program order (one ASIC queue): a vector op cannot start
   before every earlier data-moving PIM instruction has started in the mover, and vice versa.
4. Data-moving PIM instructions are serialized through the one mover and timed as above: WR_GB /
   WR_BANK / WR_ABK present their channel ops only after staging (``t0 = mover_start +
   asic_cycles(rows + 1)`` rounded to ASIC edges), RD_MAC / RD_BANK release their destination
   after the drain (``ready = last data + drain``), not at ``tr + rdmac_latency``.
5. PIM channel ops of a data instruction are presented only while the mover holds that
   instruction (``go``): a channel's later ops wait behind it.
6. Queues are ``queue_depth`` deep: dispatch stalls when a target queue is full.
7. SYNC / END also wait for a refresh a sequencer owes while idle (its ``busy``).

Everything else (dispatch times, branch timing, scalar execution, channel command timing given
the time an op is presented, vector op durations) is the simulator's rule.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, EnableInserter, Module, Mux, Signal
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


class _VectorUnitWithMover(VectorUnit):
    """The vector unit with one extra read and one extra write port per vector-memory bank for
    the data mover (``mover_rd_addr`` / ``mover_rd_data``; ``mover_wr_*``). The ports are added
    to the unit's bank memories after it has elaborated them; a ``dma`` port of VectorUnit itself
    would be the clean form (see the report of issue 4)."""

    def __init__(self, config: MachineConfig):
        super().__init__(config)
        L = self.lanes
        rows = config.asic.vmem_words // L
        self.mover_rd_addr = Signal(range(rows))
        self.mover_rd_data = Signal(data.ArrayLayout(_W, L))
        self.mover_wr_addr = Signal(range(rows))
        self.mover_wr_data = Signal(data.ArrayLayout(_W, L))
        self.mover_wr_en = Signal(L)

    def elaborate(self, platform):
        m = super().elaborate(platform)
        for k in range(self.lanes):
            mem = m.submodules[f"bank{k}"]
            rp = mem.read_port()
            wp = mem.write_port()
            m.d.comb += [rp.addr.eq(self.mover_rd_addr), self.mover_rd_data[k].eq(rp.data),
                         wp.addr.eq(self.mover_wr_addr), wp.data.eq(self.mover_wr_data[k]),
                         wp.en.eq(self.mover_wr_en[k])]
        return m


class PimGptTop(wiring.Component):
    """The whole machine (module docstring: clocking, the mover, differences from the simulator).

    Parameters
    ----------
    config : MachineConfig
    array_rows : int or None
        Rows of every bank the channel models hold (:class:`~pimgpt.hdl.channel.ChannelPim`).
    queue_depth : int
        Depth of the controller's queues.
    stage_cols : int or None
        Columns of the mover's staging buffer (default ``gb_cols + 1``: a whole global buffer,
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
                 queue_depth: int = 4, stage_cols: int | None = None):
        if not isinstance(config, MachineConfig):
            raise TypeError(f"config must be a MachineConfig, not {config!r}")
        g = config.geometry
        self._config = config
        self.ratio = asic_ratio(config)
        self.stage_cols = g.gb_cols + 1 if stage_cols is None else stage_cols
        if self.stage_cols * g.mac_lanes < g.channels * g.banks_per_channel:
            raise PimgptError("stage_cols too small for one word per bank (RD_MAC / WR_ABK)")
        self.controller = Controller(config, queue_depth=queue_depth)
        self.vector = _VectorUnitWithMover(config)
        self.channels = [ChannelPim(config, array_rows=array_rows) for _ in range(g.channels)]
        self.sequencers = [ChannelSequencer(config) for _ in range(g.channels)]
        self.counters = counter_map(config)
        self.manifest_extra = {
            "counters": dict(self.counters),
            "counter_bits": COUNTER_BITS,
            "asic_ratio": self.ratio,
            "dispatch_step": dispatch_step(config),
            "queue_depth": queue_depth,
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

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        g = cfg.geometry
        nc, nb, lanes = g.channels, g.banks_per_channel, g.mac_lanes
        lg_nb, lg_lanes = exact_log2(nb), exact_log2(lanes)
        L = cfg.asic.vector_lanes
        lgL = exact_log2(L)
        cbits = exact_log2(g.cols_per_row)
        S = self.stage_cols * lanes  # staging slots (BF16)

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

        # --- host ports ----------------------------------------------------------------------------
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

        # --- ASIC queue head: vector unit or mover --------------------------------------------
        head = ctl.o_asic.payload
        state = Signal(range(4))
        mover_idle = state == MoverState.IDLE
        m.d.comb += [
            vu.i_op.payload.eq(head.vop),
            vu.i_op.valid.eq(ctl.o_asic.valid & head.is_vec & asic_en),
            ctl.o_asic.ready.eq(Mux(head.is_vec, vu.i_op.ready & asic_en, mover_idle)),
            ctl.vec_idle.eq(vu.i_op.ready & asic_en),
            ctl.vec_release.eq(vu.done & asic_en),
            ctl.vec_result.eq(vu.result),
            ctl.mover_idle.eq(mover_idle),
        ]
        take_mover = ctl.o_asic.valid & ~head.is_vec & mover_idle

        # --- the mover ----------------------------------------------------------------------------
        cur = Signal(mover_layout(cfg))
        row = Signal(range(cfg.asic.vmem_words // L + 1))
        pending = Signal()
        rem = [Signal.like(cur.ncmd, name=f"rem{c}") for c in range(nc)]
        rcol = Signal(range(self.stage_cols + 1))
        slots = [Signal(_H, name=f"slot{j}") for j in range(S)]
        overflow = Signal()
        is_read = Cat(cur.op == o for o in (Op.RD_MAC, Op.RD_BANK)).any()
        in_bank = (cur.op == Op.RD_BANK) | (cur.op == Op.WR_BANK)
        soff = Mux(in_bank, cur.lane_off, 0)  # slot of the first word
        # word w of vector memory <-> slot w - dshift
        dshift = Signal(range(-(S + 1), cfg.asic.vmem_words + 1))
        m.d.comb += dshift.eq(cur.vaddr - soff)
        r_end = Signal.like(row)
        m.d.comb += r_end.eq((cur.vaddr + cur.words - 1) >> lgL)

        # rank of each channel among those taking part (RD_MAC / WR_ABK word order)
        rank = [sum(cur.ch_mask[i] for i in range(c)) if c else Const(0, 1) for c in range(nc)]

        acc = Signal(mover_layout(cfg))
        m.d.comb += acc.eq(head.mop)
        with m.If(take_mover):
            m.d.sync += [cur.eq(acc), rcol.eq(0), pending.eq(0), row.eq(acc.vaddr >> lgL)]
            m.d.sync += [rem[c].eq(Mux(acc.ch_mask[c], acc.ncmd, 0)) for c in range(nc)]
            reads = Cat(acc.op == o for o in (Op.WR_GB, Op.WR_BANK, Op.WR_ABK)).any()
            too_big = acc.words + Mux((acc.op == Op.RD_BANK) | (acc.op == Op.WR_BANK),
                                      acc.lane_off, 0) > S
            with m.If(too_big):
                m.d.sync += overflow.eq(1)
            m.d.sync += state.eq(Mux(reads & (acc.words != 0), MoverState.STAGE,
                                     MoverState.CMDS))

        rd_release, wr_release = Signal(), Signal()
        m.d.comb += [ctl.mover_rd_release.eq(rd_release), ctl.mover_wr_release.eq(wr_release),
                     vu.mover_rd_addr.eq(row)]

        # STAGE: one row per ASIC cycle; the row addressed at one edge is captured at the next
        conv = []
        for k in range(L):
            cv = m.submodules[f"mover_bf16_{k}"] = F32ToBf16()
            m.d.comb += cv.a.eq(vu.mover_rd_data[k])
            conv.append(cv.y)
        stage_cap = Signal()
        stage_base = Signal(range(-(S + 1) - cfg.asic.vmem_words, cfg.asic.vmem_words + 1))
        m.d.comb += stage_base.eq(((row - 1) << lgL) - dshift)
        with m.If((state == MoverState.STAGE) & asic_en):
            m.d.comb += stage_cap.eq(pending)
            with m.If((row <= r_end)):
                m.d.sync += [row.eq(row + 1), pending.eq(1)]
            with m.Else():
                m.d.sync += [pending.eq(0), state.eq(MoverState.CMDS)]
                m.d.comb += rd_release.eq(1)

        # CMDS: the channels execute the instruction; data commands / read-outs are counted
        go = state == MoverState.CMDS
        counted = []
        for c in range(nc):
            cmd = seqs[c].o_cmd
            wr_cmd = cmd.valid & (((cur.op == Op.WR_GB) & (cmd.payload.cmd == DramCmd.WRGB))
                                  | ((cur.op == Op.WR_BANK) & (cmd.payload.cmd == DramCmd.WR))
                                  | ((cur.op == Op.WR_ABK) & (cmd.payload.cmd == DramCmd.WR16)))
            got = (((cur.op == Op.RD_BANK) & chans[c].o_rd.valid)
                   | ((cur.op == Op.RD_MAC) & chans[c].o_mac.valid))
            dec = go & (wr_cmd | got) & (rem[c] != 0)
            with m.If(dec):
                m.d.sync += rem[c].eq(rem[c] - 1)
            counted.append(dec)
        all_done = Cat(r == 0 for r in rem).all()
        with m.If(go & all_done):
            with m.If(is_read & (cur.words != 0)):
                m.d.sync += [state.eq(MoverState.DRAIN), row.eq(cur.vaddr >> lgL)]
            with m.Else():
                m.d.sync += state.eq(MoverState.IDLE)
                with m.If(is_read):
                    m.d.comb += wr_release.eq(1)

        # DRAIN: one row per ASIC cycle into vector memory
        drain_base = Signal.like(stage_base)
        m.d.comb += drain_base.eq((row << lgL) - dshift)
        # padded to a power of two: every index value is listed (no incomplete case in Verilog)
        slot_arr = Array(slots + [Const(0, _H)] * ((1 << ceil_log2(S)) - S))
        m.d.comb += vu.mover_wr_addr.eq(row)
        with m.If((state == MoverState.DRAIN) & asic_en):
            for k in range(L):
                w = (row << lgL) + k
                j = drain_base + k
                m.d.comb += [vu.mover_wr_data[k].eq(Cat(Const(0, 16), slot_arr[j[:ceil_log2(S)]])),
                             vu.mover_wr_en[k].eq((w >= cur.vaddr) & (w < cur.vaddr + cur.words))]
            m.d.sync += row.eq(row + 1)
            with m.If(row == r_end):
                m.d.sync += state.eq(MoverState.IDLE)
                m.d.comb += wr_release.eq(1)

        # slot writes: staged words, RD columns, RD_MAC read-outs
        rd_strobe = Cat(chans[c].o_rd.valid for c in range(nc)).any()
        # (one channel delivers RD columns at a time: OR them)
        rd_any = Signal(column_layout(cfg))
        acc_or = Const(0, len(rd_any.as_value()))
        for c in range(nc):
            acc_or = acc_or | Mux(chans[c].o_rd.valid, chans[c].o_rd.payload.as_value(), 0)
        m.d.comb += rd_any.eq(acc_or)
        with m.If(go & rd_strobe & (cur.op == Op.RD_BANK)):
            m.d.sync += rcol.eq(rcol + 1)
        slot_mod = m.submodules.slots = Module()
        for j in range(S):
            rel = Signal(stage_base.shape(), name=f"srel{j}")
            slot_mod.d.comb += rel.eq(j - stage_base)
            # (j >= soff only where it can fail: soff <= mac_lanes - 1; no constant comparison)
            in_span = ((j >= soff) if j < lanes - 1 else Const(1, 1)) & (j < soff + cur.words)
            with slot_mod.If(stage_cap & (rel >= 0) & (rel < L) & in_span):
                slot_mod.d.sync += slots[j].eq(Array(conv)[rel[:max(lgL, 1)]] if L > 1
                                               else conv[0])
            col_j, lane_j = j // lanes, j % lanes
            if col_j < self.stage_cols:
                with slot_mod.If(go & rd_strobe & (cur.op == Op.RD_BANK) & (rcol == col_j)):
                    slot_mod.d.sync += slots[j].eq(rd_any[lane_j])
            for c in range(nc):
                with slot_mod.If(go & chans[c].o_mac.valid & (cur.op == Op.RD_MAC)
                                 & (rank[c] == (j >> lg_nb))):
                    slot_mod.d.sync += slots[j].eq(chans[c].o_mac.payload[j % nb])

        # --- channel ops: gated by the mover's go for data ops; i_data from the staging buffer
        cols = [Cat(slots[i * lanes:(i + 1) * lanes]) for i in range(self.stage_cols)]
        cbits_col = max(ceil_log2(self.stage_cols), 1)
        col_arr = Array(cols + [Const(0, lanes * _H)] * ((1 << cbits_col) - len(cols)))
        for c in range(nc):
            q = ctl.ch_ops[c]
            sq = seqs[c]
            allowed = ~q.payload.data | (go & (q.payload.tag == cur.tag) & (rem[c] != 0))
            m.d.comb += [sq.i_op.payload.eq(q.payload.op), sq.i_op.valid.eq(q.valid & allowed),
                         q.ready.eq(sq.i_op.ready & allowed)]
            transfer = q.valid & q.ready
            # the MAC run's global-buffer columns: gb + (element column - first column)
            cur_gb = Signal.like(q.payload.gb, name=f"cur_gb{c}")
            cur_col = Signal.like(q.payload.op.col, name=f"cur_col{c}")
            with m.If(transfer):
                m.d.sync += [cur_gb.eq(q.payload.gb), cur_col.eq(q.payload.op.col)]
            cp = sq.o_cmd.payload
            elemcol = Cat(cp.col[:cbits], cp.row)
            base_gb = Mux(transfer, q.payload.gb, cur_gb)
            base_col = Mux(transfer, q.payload.op.col, cur_col)
            idata = chans[c].i_data
            m.d.comb += idata.gb_col.eq(base_gb + (elemcol - base_col))
            wr_ci = Signal(range(-(1 << 20), 1 << 20), name=f"wr_ci{c}")
            with m.If(cp.cmd == DramCmd.WRGB):
                m.d.comb += wr_ci.eq(cp.col - cur.gb)
            with m.Else():
                m.d.comb += wr_ci.eq(elemcol - cur.col0)
            m.d.comb += idata.column.eq(col_arr[wr_ci[:cbits_col]])
            mask = Signal(lanes, name=f"wr_mask{c}")
            for lane in range(lanes):
                e = (wr_ci << lg_lanes) + lane
                m.d.comb += mask[lane].eq((e >= soff) & (e < soff + cur.words))
            lane1 = Signal(lanes, name=f"wr16_mask{c}")
            m.d.comb += lane1.eq(1 << cur.lane_off)
            m.d.comb += idata.mask.eq(Mux(cur.op == Op.WR_ABK, lane1, mask))
            for b in range(nb):
                j = (rank[c] << lg_nb) + b if lg_nb else rank[c] + b
                m.d.comb += idata.banks[b].eq(slot_arr[j[:ceil_log2(S)]])

        # --- idle, busy, counters -----------------------------------------------------------------
        vec_idle = ~vu.busy & ~(vu.done & ~asic_en)
        seq_idle = ~Cat(s.busy for s in seqs).any()
        m.d.comb += [
            ctl.units_idle.eq(vec_idle & seq_idle & mover_idle),
            ctl.unit_busy.eq(Cat(*(s.busy for s in seqs), vu.busy | vu.done, ~mover_idle)),
            ctl.cmd_valid.eq(Cat(s.o_cmd.valid for s in seqs)),
        ]
        for c in range(nc):
            m.d.comb += ctl.cmd_code[c].eq(seqs[c].o_cmd.payload.cmd)
        m.d.comb += self.error.eq(ctl.error | overflow | Cat(ch.error for ch in chans).any())
        return m
