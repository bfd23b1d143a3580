"""The bank MAC unit (spec: docs/numerics.md §4; golden: ``mac_accumulate`` / ``readout``).

One column beat per cycle: ``L = geometry.mac_lanes`` BF16 products (:class:`Bf16MulF32`), a
balanced binary32 adder tree (level 1 adds lane 2i to lane 2i+1, as ``mac_tree``) and one
binary32 accumulate ``A <- A ⊕ t`` (:class:`F32Add`). The read-out is ``bf16(A)``
(:class:`F32ToBf16`).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from pimgpt.errors import PimgptError
from pimgpt.hdl.fp import BFLOAT16, BINARY32, Bf16MulF32, F32Add, F32ToBf16
from pimgpt.hdl.params import MachineConfig

__all__ = ["beat_layout", "BankMac"]


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
