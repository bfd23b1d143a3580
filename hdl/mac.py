"""The bank MAC unit (spec: docs/numerics.md §4; golden: ``mac_accumulate`` / ``readout``).

One column beat per cycle: ``L = geometry.mac_lanes`` BF16 products (:class:`Bf16MulF32`), a
balanced binary32 adder tree (level 1 adds lane 2i to lane 2i+1, as ``mac_tree``) and one
binary32 accumulate ``A <- A ⊕ t`` (:class:`F32Add`). The read-out is ``bf16(A)``
(:class:`F32ToBf16`).

:class:`BankMac` puts at most two registers before the accumulator; :class:`PipelinedBankMac`
cuts every floating-point operation of the products and the tree into ``stages_per_op``
register stages, and :class:`MacAccumulator` is the accumulate stage alone (the recurrence that
bounds the clock of both, synthesised on its own as the ``mac_acc`` block).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from pimgpt.errors import PimgptError
from pimgpt.hdl.fp import BFLOAT16, BINARY32, Bf16MulF32, F32Add, F32ToBf16
from pimgpt.hdl.params import MachineConfig

__all__ = ["beat_layout", "BankMac", "PipelinedBankMac", "MacAccumulator", "ADD_CUTS",
           "MUL_CUTS"]


def beat_layout(lanes: int) -> data.StructLayout:
    """One MAC command's operands: a bank-row column ``w`` and a global-buffer column ``x``,
    ``lanes`` BF16 bit patterns each (lane ``l`` is element ``l`` of the column)."""
    return data.StructLayout({
        "w": data.ArrayLayout(unsigned(BFLOAT16.width), lanes),
        "x": data.ArrayLayout(unsigned(BFLOAT16.width), lanes),
    })


class BankMac(wiring.Component):
    """One bank's MAC unit: BF16 products, balanced binary32 adder tree, binary32 accumulator.

    Every cycle it accepts a beat (``i_beat.ready`` is always 1). A transferred beat with
    products ``p_l = widen(w_l) ⊗ widen(x_l)`` and tree sum ``t`` does ``acc <- acc ⊕ t``.
    ``clear`` sets the accumulator to +0; a clear in the same cycle as a transferred beat
    clears first, so that beat starts the new stream (``acc <- (+0) ⊕ t``). Beats and clears
    take effect in the order they are presented.

    Parameters
    ----------
    config : MachineConfig
        ``geometry.mac_lanes`` gives the lane count (a power of two).
    pipeline : int
        Register stages before the accumulator: 0 (products, tree and accumulate in one
        cycle), 1 (registers after the products) or 2 (after the products and after the tree).
        The accumulate itself is a single-cycle loop, so throughput is one beat per cycle in
        every case.

    Attributes
    ----------
    i_beat : In(stream.Signature(beat_layout(lanes)))
        the column beats.
    clear : In(1)
        clear the accumulator to +0 (in order with the beats).
    acc : Out(32)
        the accumulator, binary32 bit pattern.
    readout : Out(16)
        ``bf16(acc)``, the MAC register read-out: a BF16 bit pattern, combinational from
        ``acc``.
    latency : int
        ``1 + pipeline``: a beat or clear presented (and transferred) in cycle ``n`` is
        reflected in ``acc`` and ``readout`` from cycle ``n + latency`` on.
    """

    def __init__(self, config: MachineConfig, *, pipeline: int = 0):
        if not isinstance(config, MachineConfig):
            raise TypeError(f"config must be a MachineConfig, not {config!r}")
        if type(pipeline) is not int or pipeline not in (0, 1, 2):
            raise PimgptError(f"BankMac pipeline must be 0, 1 or 2 stages, not {pipeline!r}")
        self.lanes = config.geometry.mac_lanes
        self.pipeline = pipeline
        self.latency = 1 + pipeline
        super().__init__({
            "i_beat": In(stream.Signature(beat_layout(self.lanes))),
            "clear": In(1),
            "acc": Out(BINARY32.width),
            "readout": Out(BFLOAT16.width),
        })

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        beat = self.i_beat.payload

        # the unit never stalls: ready is a constant, a beat transfers whenever valid is high
        m.d.comb += self.i_beat.ready.eq(1)
        valid = self.i_beat.valid & self.i_beat.ready
        clear = self.clear

        # --- products ---------------------------------------------------------------------
        # Each level's wiring sits in its own small module: Amaranth's simulator re-runs a
        # module's combinational statements whenever any signal they read changes.
        products = []
        wires = m.submodules.operands = Module()
        for lane in range(lanes):
            mul = m.submodules[f"mul{lane}"] = Bf16MulF32()
            wires.d.comb += [mul.a.eq(beat.w[lane]), mul.b.eq(beat.x[lane])]
            products.append(mul.y)
        if self.pipeline >= 1:
            regs = [Signal(BINARY32.width, name=f"p{lane}") for lane in range(lanes)]
            v1, c1 = Signal(name="p_valid"), Signal(name="p_clear")
            m.d.sync += [r.eq(p) for r, p in zip(regs, products)]
            m.d.sync += [v1.eq(valid), c1.eq(clear)]
            products, valid, clear = regs, v1, c1

        # --- balanced adder tree: level by level, lane 2i + lane 2i+1 ----------------------
        level, depth = products, 0
        while len(level) > 1:
            depth += 1
            nxt = []
            wires = m.submodules[f"level{depth}"] = Module()
            for i in range(len(level) // 2):
                add = m.submodules[f"add{depth}_{i}"] = F32Add()
                wires.d.comb += [add.a.eq(level[2 * i]), add.b.eq(level[2 * i + 1])]
                nxt.append(add.y)
            level = nxt
        tree = level[0]
        if self.pipeline >= 2:
            t2 = Signal(BINARY32.width, name="tree")
            v2, c2 = Signal(name="t_valid"), Signal(name="t_clear")
            m.d.sync += [t2.eq(tree), v2.eq(valid), c2.eq(clear)]
            tree, valid, clear = t2, v2, c2

        # --- accumulate (one rounding per beat, in beat order) -----------------------------
        acc = Signal(BINARY32.width, name="acc_reg")  # resets to +0
        accadd = m.submodules.acc_add = F32Add()
        m.d.comb += [accadd.a.eq(Mux(clear, 0, acc)), accadd.b.eq(tree)]
        with m.If(valid):
            m.d.sync += acc.eq(accadd.y)
        with m.Elif(clear):
            m.d.sync += acc.eq(0)

        rd = m.submodules.readout = F32ToBf16()
        m.d.comb += [rd.a.eq(acc), self.acc.eq(acc), self.readout.eq(rd.y)]
        return m


class MacAccumulator(wiring.Component):
    """The MAC unit's accumulate stage: ``A <- A ⊕ t`` once per transferred tree sum.

    A single-cycle loop through one :class:`F32Add` (every beat is rounded once, in order, as
    docs/numerics.md §4 demands); its delay sets the clock of every MAC variant.

    Attributes
    ----------
    t : In(32)
        the tree sum, binary32 bit pattern.
    valid : In(1)
        add ``t`` this cycle.
    clear : In(1)
        clear the accumulator to +0; with ``valid`` in the same cycle the clear comes first
        (``A <- (+0) ⊕ t``).
    acc : Out(32)
        the accumulator ``A`` (a register, reset to +0).
    """

    def __init__(self):
        super().__init__({"t": In(BINARY32.width), "valid": In(1), "clear": In(1),
                          "acc": Out(BINARY32.width)})

    def elaborate(self, platform):
        m = Module()
        acc = Signal(BINARY32.width, name="acc_reg")  # resets to +0
        add = m.submodules.acc_add = F32Add()
        m.d.comb += [add.a.eq(Mux(self.clear, 0, acc)), add.b.eq(self.t), self.acc.eq(acc)]
        with m.If(self.valid):
            m.d.sync += acc.eq(add.y)
        with m.Elif(self.clear):
            m.d.sync += acc.eq(0)
        return m


#: Internal pipeline registers of each floating-point operation for ``stages_per_op`` = 1 ... 5
#: (the operation's output register ends its last stage). The steps of :class:`F32Add` are
#: compare and unpack | align and add | leading zeros | normalise | round and pack; those of
#: :class:`Bf16MulF32` significand product | leading zeros | normalise | subnormal shift |
#: round. The cuts are the best measured: one operation between registers on the ECP5
#: LFE5U-85F, speed 8 (``pimgpt synth`` flow, nextpnr seed 1), reaches for 1 ... 5 stages:
#: adder 36, 60, 79, 92 (the accumulate loop cut the same way), 100 MHz; multiplier 45, 72,
#: 104, -, 128 MHz.
ADD_CUTS: dict[int, tuple[str, ...]] = {
    1: (), 2: ("sum",), 3: ("unpack", "lzc"), 4: ("unpack", "sum", "norm"), 5: F32Add.STEPS}
MUL_CUTS: dict[int, tuple[str, ...]] = {
    1: (), 2: ("lzc",), 3: ("product", "norm"), 4: ("product", "lzc", "norm"),
    5: Bf16MulF32.STEPS}


class PipelinedBankMac(wiring.Component):
    """The bank MAC unit with every floating-point operation before the accumulator pipelined.

    The same unit as :class:`BankMac` (same interface, same arithmetic, bit for bit: products,
    balanced tree, one accumulate per beat in beat order), but each product and each tree
    level's addition takes ``stages_per_op`` register stages: ``stages_per_op - 1`` registers
    inside the operation (:data:`MUL_CUTS`, :data:`ADD_CUTS`) and one at its output. The
    accumulate (:class:`MacAccumulator`) stays a single-cycle loop, so the unit still takes
    one beat every cycle (``i_beat.ready`` is always 1).

    Parameters
    ----------
    config : MachineConfig
        ``geometry.mac_lanes`` gives the lane count (a power of two).
    stages_per_op : int
        1 (a register after each operation: each stage is one product or one tree level)
        to 5 (a register after every step of the datapaths).

    Attributes
    ----------
    i_beat, clear, acc, readout
        as :class:`BankMac`.
    latency : int
        ``stages_per_op * (1 + log2(lanes)) + 1``: a beat or clear presented (and transferred)
        in cycle ``n`` is reflected in ``acc`` and ``readout`` from cycle ``n + latency`` on.
    """

    def __init__(self, config: MachineConfig, *, stages_per_op: int = 1):
        if not isinstance(config, MachineConfig):
            raise TypeError(f"config must be a MachineConfig, not {config!r}")
        if type(stages_per_op) is not int or stages_per_op not in ADD_CUTS:
            raise PimgptError(f"PipelinedBankMac stages_per_op must be 1 to {len(ADD_CUTS)}, "
                              f"not {stages_per_op!r}")
        self.lanes = config.geometry.mac_lanes
        self.stages_per_op = stages_per_op
        self.levels = self.lanes.bit_length() - 1
        self.latency = stages_per_op * (1 + self.levels) + 1
        super().__init__({
            "i_beat": In(stream.Signature(beat_layout(self.lanes))),
            "clear": In(1),
            "acc": Out(BINARY32.width),
            "readout": Out(BFLOAT16.width),
        })

    def elaborate(self, platform):
        m = Module()
        s = self.stages_per_op
        beat = self.i_beat.payload
        m.d.comb += self.i_beat.ready.eq(1)

        def stage(value: Value, name: str) -> Signal:
            reg = Signal(BINARY32.width, name=name)
            m.d.sync += reg.eq(value)
            return reg

        # --- products: s stages ----------------------------------------------------------------
        wires = m.submodules.operands = Module()
        level = []
        for lane in range(self.lanes):
            mul = m.submodules[f"mul{lane}"] = Bf16MulF32(stages=MUL_CUTS[s])
            wires.d.comb += [mul.a.eq(beat.w[lane]), mul.b.eq(beat.x[lane])]
            level.append(stage(mul.y, f"p{lane}"))

        # --- balanced adder tree, lane 2i + lane 2i+1: s stages per level ------------------------
        for depth in range(1, self.levels + 1):
            wires = m.submodules[f"level{depth}"] = Module()
            nxt = []
            for i in range(len(level) // 2):
                add = m.submodules[f"add{depth}_{i}"] = F32Add(stages=ADD_CUTS[s])
                wires.d.comb += [add.a.eq(level[2 * i]), add.b.eq(level[2 * i + 1])]
                nxt.append(stage(add.y, f"s{depth}_{i}"))
            level = nxt

        # --- valid and clear travel beside the data ----------------------------------------------
        valid, clear = self.i_beat.valid, self.clear
        for k in range(self.latency - 1):
            v, c = Signal(name=f"valid_d{k + 1}"), Signal(name=f"clear_d{k + 1}")
            m.d.sync += [v.eq(valid), c.eq(clear)]
            valid, clear = v, c

        # --- accumulate (one rounding per beat, in beat order), read-out ------------------------
        acc = m.submodules.accumulator = MacAccumulator()
        m.d.comb += [acc.t.eq(level[0]), acc.valid.eq(valid), acc.clear.eq(clear)]
        rd = m.submodules.readout = F32ToBf16()
        m.d.comb += [rd.a.eq(acc.acc), self.acc.eq(acc.acc), self.readout.eq(rd.y)]
        return m
