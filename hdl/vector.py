"""The ASIC vector unit with its vector memory (spec: docs/numerics.md §5-§13; instruction
semantics: docs/isa.md and ``FunctionalMachine``'s vector handlers; timing: ``Asic`` in
hdl/params.py and ``CycleSimulator._vector``).

Every vector instruction (``VADD`` ... ``VARGMAX``) runs bit-exact with :mod:`pimgpt.sim.numerics`
on ``L = asic.vector_lanes`` binary32 lanes, one beat (``L`` consecutive elements) per cycle.

**Vector memory.** ``asic.vmem_words`` binary32 words in ``L`` banks (``amaranth.lib.memory``):
word ``w`` lives in bank ``w % L``, row ``w // L``. ``L`` consecutive words starting at any word
address fall into ``L`` different banks, so every beat of an operand, aligned or not, is one read
per bank (bank ``k`` reads row ``s // L + (k < s % L)``) followed by a rotation by ``s % L``;
results are rotated back and written one word per bank. Each bank has two synchronous read
ports (operands ``a`` and ``b``; the host reads through ``a``) and one write port (results, or
the host).

**Pipelines.** Each lane has its own unrolled, fully pipelined datapath per function, built from
:class:`~pimgpt.hdl.fp.F32Add` / :class:`~pimgpt.hdl.fp.F32Mul` stages in exactly the order of
docs/numerics.md (one floating-point operation per stage; small integer glue such as ``frexp``,
the seeds and the special-value selection shares a stage). GELU reuses the exp and reciprocal
pipelines of its lane. ``VSUM`` keeps ``L`` lane accumulators (lane ``l`` adds elements ``l,
l+L, ...`` from +0) and adds them with the balanced tree of ``mac_tree``; ``VMAX``/``VARGMAX``
keep per-lane (first) maxima and combine them by a tree that prefers the lower index on ties.

**Timing** (exactly ``CycleSimulator._vector``, in ASIC cycles): an op accepted on ``i_op`` in
cycle ``t`` with ``n > 0`` elements reads beat ``j`` in cycle ``t + 1 + j`` (``beats =
ceil(n / L)``) and asserts ``done`` in cycle ``t + beats + lat`` with :func:`op_latency`'s
``lat``; every result word is in memory (and ``result`` holds a ``VARGMAX`` index) from that cycle
on, and ``i_op.ready`` is high again in it, so the next op can be accepted in the ``done`` cycle.
An op with ``n = 0`` completes in cycle ``t + 1`` (the cycle simulator counts 0 cycles); a
``VSUM`` with ``n = 0`` writes +0 to ``dst`` as the functional machine does.

One op is in flight at a time (``i_op.ready`` is low from the accept until ``done``). The cycle
simulator lets the next op start streaming as soon as the previous op's beats are out; that
overlap is not implemented (results of different latencies would contend for the write ports).

**Overlapping spans.** Beats are read before they are written, in address order, so ``dst ==
a`` (in place) and ``dst < a`` are exact; ``dst > a`` with overlapping spans, which the functional
machine defines (it reads the whole source first), is not supported. A broadcast ``b`` word is
read once, at the first beat, so it may lie inside ``dst``.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl.fp import BINARY32, CANON_NAN_F32, F32Add, F32Mul, _lzc
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import Asic, MachineConfig
from pimgpt.sim import numerics as nm

__all__ = ["op_layout", "op_latency", "op_cycles", "VectorUnit", "PIPELINE_DEPTHS"]

W = BINARY32.width
SIGN = 1 << (W - 1)
INF = BINARY32.inf_mag
NEG_INF = SIGN | INF
NEG_ZERO = SIGN


def _bits(x) -> int:
    """The binary32 pattern of a numpy / Python number (constants come from the golden model)."""
    return int(np.asarray(x, dtype=np.float32).view(np.uint32))


#: Constants of docs/numerics.md §7, taken from the golden model (never retyped).
_LOG2E, _LN2_HI, _LN2_LO = _bits(nm.LOG2E), _bits(nm.LN2_HI), _bits(nm.LN2_LO)
_EXP_HI, _EXP_LO = _bits(nm.EXP_HI), _bits(nm.EXP_LO)
_EXP_C = [_bits(c) for c in nm.EXP_COEFFS]
_RECIP_A, _RECIP_B = _bits(nm.RECIP_SEED_A), _bits(nm.RECIP_SEED_B)
_RSQRT_MAGIC = int(nm.RSQRT_MAGIC)
_GELU_C, _GELU_A = _bits(nm.GELU_C), _bits(nm.GELU_A)
_HALF, _ONE, _ONE_HALF, _TWO = _bits(0.5), _bits(1.0), _bits(1.5), _bits(2.0)
#: rsqrt's subnormal pre-scaling 2^24 and post-scaling 2^12 (``vrsqrt``)
_RSQRT_PRE, _RSQRT_POST = _bits(2.0 ** 24), _bits(2.0 ** 12)
#: rint by the 1.5 * 2^23 trick: for |t| < 2^22, ``(t ⊕ M) ⊖ M`` is ``t`` rounded to an integer
#: with ties to even (the sum lies in [2^23, 2^24), whose spacing is 1, and M is even), and
#: ``bits(t ⊕ M) - bits(M)`` is that integer. exp only rounds |t| <= 151.
_RINT_MAGIC = _bits(1.5 * 2.0 ** BINARY32.frac_bits)


# --- operations and timing -----------------------------------------------------------------------

_VF = isa.VectorFormat.as_shape()


def op_layout() -> data.StructLayout:
    """Payload of one vector op: the opcode and the operands of the ISA's vector format, with
    register-relative operands already resolved (``dst``, ``a``, ``n`` are effective values)."""
    return data.StructLayout({
        "opcode": isa.Opcode,
        "dst": _VF["dst"].shape,
        "a": _VF["a"].shape,
        "b": _VF["b"].shape,
        "n": _VF["n"].shape,
        "bcast": _VF["bcast"].shape,
        "imm": _VF["imm"].shape,
    })


_ELEMENTWISE = (Op.VADD, Op.VSUB, Op.VMUL, Op.VADDI, Op.VMULI, Op.VSET, Op.VMOV)
_REDUCTIONS = (Op.VSUM, Op.VMAX, Op.VARGMAX)


def _fn_cycles(asic: Asic) -> dict[Op, int]:
    return {Op.VEXP: asic.exp_cycles, Op.VRECIP: asic.recip_cycles,
            Op.VRSQRT: asic.rsqrt_cycles, Op.VGELU: asic.gelu_cycles}


def op_latency(asic: Asic, op: Op) -> int:
    """Pipeline latency of a vector op in ASIC cycles after its last beat: ``vec_latency``, plus
    the function's ``*_cycles``, plus ``log2(lanes) * vec_latency`` for the reductions (the
    one formula, which ``CycleSimulator._vector`` uses too)."""
    lat = asic.vec_latency + _fn_cycles(asic).get(op, 0)
    if op in _REDUCTIONS:
        lat += exact_log2(asic.vector_lanes) * asic.vec_latency
    return lat


def op_cycles(asic: Asic, op: Op, n: int) -> int:
    """ASIC cycles from accepting an op on ``n`` elements to its ``done``: ``ceil(n / lanes) +
    op_latency`` (the cycle simulator's count), and 1 for ``n = 0`` (the simulator's 0)."""
    if n == 0:
        return 1
    return -(-n // asic.vector_lanes) + op_latency(asic, op)


# --- pipeline scheduling -------------------------------------------------------------------------

class _V:
    """A value of a pipelined datapath: a signal and the stage (cycle offset) it is valid in;
    ``stage is None`` for constants."""

    __slots__ = ("sig", "stage")

    def __init__(self, sig: Value, stage: int | None):
        self.sig, self.stage = sig, stage


class _Pipe:
    """Builds one lane's pipelined datapath, one operation at a time, ASAP-scheduled.

    An operation on values of stages ``s_i`` runs in stage ``max(s_i)`` (earlier inputs are
    delayed by registers, shared per value) and, for the floating-point units, is registered:
    its result is valid one stage later. Every unit and every piece of glue logic sits in its own
    small module, which keeps Amaranth's simulator fast (see ``pimgpt.hdl.fp._step``).
    """

    def __init__(self, m: Module | None, name: str):
        self.m, self.name = m, name  # no module: only count the stages (see PIPELINE_DEPTHS)
        self._count = 0
        self._delays: dict[_V, list[Value]] = {}
        self._regs: Module | None = None

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{self.name}_{kind}{self._count}"

    @staticmethod
    def const(bits: int, width: int = W) -> _V:
        return _V(Const(bits, width), None)

    def at(self, v: _V, stage: int) -> Value:
        """``v`` as seen in ``stage`` (delayed by registers as needed)."""
        if v.stage is None:
            return v.sig
        if stage < v.stage:
            raise AssertionError(f"value of stage {v.stage} used in stage {stage}")
        if self.m is None:
            return v.sig
        chain = self._delays.setdefault(v, [v.sig])
        if len(chain) <= stage - v.stage and self._regs is None:
            # all delay registers of the pipe in one module: fewer modules convert faster,
            # and a sync-only module costs the simulator nothing between clock edges
            self._regs = Module()
            self.m.submodules[f"{self.name}_delays"] = self._regs
        while len(chain) <= stage - v.stage:
            reg = Signal(Value.cast(v.sig).shape(), name=self._name("d"))
            self._regs.d.sync += reg.eq(chain[-1])
            chain.append(reg)
        return chain[stage - v.stage]

    def delay(self, v: _V, stage: int) -> _V:
        return _V(self.at(v, stage), stage)

    @staticmethod
    def _stage(*vals: _V) -> int:
        stages = [v.stage for v in vals if v.stage is not None]
        return max(stages) if stages else 0

    def _fp(self, unit_cls, a: _V, b: _V, negate_b: bool = False) -> _V:
        s = self._stage(a, b)
        if self.m is None:
            return _V(Signal(W), s + 1)
        unit = unit_cls()
        name = self._name(unit_cls.__name__.lower())
        self.m.submodules[name] = unit
        wires = Module()
        bv = self.at(b, s)
        wires.d.comb += [unit.a.eq(self.at(a, s)), unit.b.eq(bv ^ SIGN if negate_b else bv)]
        out = Signal(W, name=f"{name}_q")
        wires.d.sync += out.eq(unit.y)
        self.m.submodules[f"{name}_w"] = wires
        return _V(out, s + 1)

    def add(self, a: _V, b: _V) -> _V:
        """``a ⊕ b``, registered."""
        return self._fp(F32Add, a, b)

    def sub(self, a: _V, b: _V) -> _V:
        """``a ⊖ b`` as ``a ⊕ (-b)`` (IEEE defines subtraction so, NaNs and zeros included)."""
        return self._fp(F32Add, a, b, negate_b=True)

    def mul(self, a: _V, b: _V) -> _V:
        """``a ⊗ b``, registered."""
        return self._fp(F32Mul, a, b)

    def logic(self, fn, *vals: _V, shape=W, reg: bool = False) -> _V:
        """Glue logic ``fn(*signals)``: combinational in the stage of its latest input, or
        registered (valid one stage later) with ``reg``."""
        s = self._stage(*vals)
        sig = Signal(shape, name=self._name("g"))
        if self.m is None:
            return _V(sig, s + int(reg))
        mod = Module()
        domain = mod.d.sync if reg else mod.d.comb
        domain += sig.eq(fn(*(self.at(v, s) for v in vals)))
        self.m.submodules[self._name("gm")] = mod
        return _V(sig, s + int(reg))


# --- glue of the functions -----------------------------------------------------------------------

def _is_nan(x: Value) -> Value:
    return x[:W - 1] > INF


def _order_key(x: Value) -> Value:
    """An unsigned key ordered like the IEEE values of non-NaN ``x``, with -0 equal to +0."""
    neg_zero = x == NEG_ZERO
    return Mux(neg_zero, SIGN, Mux(x[W - 1], ~x, x | SIGN))[:W]


def _gt(x: Value, y: Value) -> Value:
    """``x > y`` as IEEE compares (false when either is NaN)."""
    return ~_is_nan(x) & ~_is_nan(y) & (_order_key(x) > _order_key(y))


def _pow2(k: Value) -> Value:
    """The binary32 pattern of 2^k for a signed ``k`` with a normal result (the only case the
    functions need for non-special inputs, docs/numerics.md §7)."""
    return Cat(Const(0, BINARY32.frac_bits), (k + BINARY32.bias)[:BINARY32.exp_bits], Const(0, 1))


def _scale(p: _Pipe, y: _V, k: _V) -> _V:
    """``scale(y, k) = (y ⊗ 2^k1) ⊗ 2^k2``, ``k1 = k >> 1`` (arithmetic), ``k2 = k - k1``."""
    k1 = p.logic(lambda k: _pow2(k >> 1), k)
    k2 = p.logic(lambda k: _pow2(k - (k >> 1)), k)
    return p.mul(p.mul(y, k1), k2)


_K = 10  # bits of the signed exponents (|k| <= 151, |e| <= 149)


def _exp(p: _Pipe, x: _V) -> _V:
    """``vexp`` (docs/numerics.md §8)."""
    c = p.const
    hi = p.logic(lambda x: _gt(x, Const(_EXP_HI, W)), x, shape=1)
    lo = p.logic(lambda x: _gt(Const(_EXP_LO, W), x), x, shape=1)
    xc = p.logic(lambda x, h, lo_: Mux(h, _EXP_HI, Mux(lo_, _EXP_LO, x)), x, hi, lo)
    t = p.mul(xc, c(_LOG2E))
    biased = p.add(t, c(_RINT_MAGIC))
    kf = p.sub(biased, c(_RINT_MAGIC))  # rint(t), ties to even
    k = p.logic(lambda b: (b - _RINT_MAGIC)[:_K], biased, shape=signed(_K))
    r = p.sub(p.sub(xc, p.mul(kf, c(_LN2_HI))), p.mul(kf, c(_LN2_LO)))
    poly = c(_EXP_C[-1])
    for coef in reversed(_EXP_C[:-1]):
        poly = p.add(p.mul(poly, r), c(coef))
    y = _scale(p, poly, k)
    return p.logic(lambda y, h, lo_: Mux(h, INF, Mux(lo_, 0, y)), y, hi, lo)


def _frexp(x: Value) -> tuple[Value, Value]:
    """``|x| = m 2^e``, ``m`` in [0.5, 1) as a binary32 pattern, ``e`` signed (finite non-zero
    ``x``; subnormals are normalised by their leading-zero count)."""
    FB, EB = BINARY32.frac_bits, BINARY32.exp_bits
    frac, ex = x[:FB], x[FB:W - 1]
    lz = _lzc(frac, FB)
    sub_frac = (frac << (lz + 1))[:FB]
    half_exp = Const(BINARY32.bias - 1, EB)  # m in [0.5, 1)
    m = Cat(Mux(ex == 0, sub_frac, frac), half_exp, Const(0, 1))
    e = Mux(ex == 0, -(BINARY32.bias - 1) - lz, ex - (BINARY32.bias - 1))
    return m, e


def _recip(p: _Pipe, x: _V) -> _V:
    """``vrecip`` (docs/numerics.md §9)."""
    c = p.const
    m = p.logic(lambda x: _frexp(x)[0], x)
    negk = p.logic(lambda x: (-_frexp(x)[1])[:_K], x, shape=signed(_K))
    y = p.sub(c(_RECIP_A), p.mul(c(_RECIP_B), m))
    for _ in range(nm.RECIP_ITERS):
        y = p.mul(y, p.sub(c(_TWO), p.mul(m, y)))
    y = _scale(p, y, negk)

    def special(y: Value, x: Value) -> Value:
        sign = x[W - 1]
        mag = x[:W - 1]
        return Mux(_is_nan(x), CANON_NAN_F32,
                   Mux(mag == 0, Cat(Const(INF, W - 1), sign),
                       Mux(mag == INF, Cat(Const(0, W - 1), sign), y ^ (sign << (W - 1)))))

    return p.logic(special, y, x)


def _rsqrt(p: _Pipe, x: _V) -> _V:
    """``vrsqrt`` (docs/numerics.md §10)."""
    c = p.const
    FB = BINARY32.frac_bits
    sub = p.logic(lambda x: ~x[W - 1] & (x[FB:W - 1] == 0) & (x[:FB] != 0), x, shape=1)
    xs = p.logic(lambda xm, x, s: Mux(s, xm, x), p.mul(x, c(_RSQRT_PRE)), x, sub)
    y = p.logic(lambda xs: (_RSQRT_MAGIC - (xs >> 1))[:W], xs)
    h = p.mul(c(_HALF), xs)
    for _ in range(nm.RSQRT_ITERS):
        y = p.mul(y, p.sub(c(_ONE_HALF), p.mul(h, p.mul(y, y))))
    y = p.logic(lambda y12, y, s: Mux(s, y12, y), p.mul(y, c(_RSQRT_POST)), y, sub)

    def special(y: Value, x: Value) -> Value:
        sign, mag = x[W - 1], x[:W - 1]
        return Mux(mag == 0, Cat(Const(INF, W - 1), sign),
                   Mux(x == INF, 0, Mux(_is_nan(x) | sign, CANON_NAN_F32, y)))

    return p.logic(special, y, x)


def _gelu(p: _Pipe, x: _V, exp_stage, recip_stage) -> _V:
    """``vgelu`` (docs/numerics.md §11) around the lane's exp and reciprocal pipelines:
    ``exp_stage(v)`` / ``recip_stage(v)`` feed ``v`` into them and return their result."""
    c = p.const
    u = p.mul(c(_GELU_C), p.add(x, p.mul(c(_GELU_A), p.mul(p.mul(x, x), x))))
    e = exp_stage(p.add(u, u))
    rc = recip_stage(p.add(e, c(_ONE)))
    th = p.sub(c(_ONE), p.mul(rc, c(_TWO)))
    hx = p.mul(c(_HALF), x)
    y = p.mul(hx, p.add(c(_ONE), th))
    # the one special case: -Inf gives -0 (0.5 ⊗ x is -Inf exactly when x is)
    return p.logic(lambda y, hx: Mux(hx == NEG_INF, NEG_ZERO, y), y, hx)


def _build_depths() -> dict[str, int]:
    """Pipeline depth (stages from the operand register to the result) of each function."""
    out = {}
    for name, fn in (("exp", _exp), ("recip", _recip), ("rsqrt", _rsqrt)):
        p = _Pipe(None, name)
        out[name] = fn(p, _V(Signal(W), 0)).stage
    p = _Pipe(None, "gelu")

    def ext(depth):
        return lambda v: _V(Signal(W), v.stage + depth)

    out["gelu"] = _gelu(p, _V(Signal(W), 0), ext(out["exp"]), ext(out["recip"])).stage
    return out


#: Stages of each function's datapath between its operand register and its result, as built:
#: one per dependent floating-point operation (exp 22, recip 13, rsqrt 14, gelu 46).
PIPELINE_DEPTHS: dict[str, int] = _build_depths()


# --- the unit ------------------------------------------------------------------------------------

def _bank_row(start: Value, k: int, lg: int) -> Value:
    """Row of bank ``k`` in the beat of ``2^lg`` words from word ``start``: ``start // L``, one
    more for the banks below ``start % L`` (their word of the beat wraps into the next row)."""
    if k == (1 << lg) - 1:  # the last bank is never below start % L
        return start >> lg
    return (start >> lg) + (start[:lg] > k)

_CLASSES = ("ew", "exp", "recip", "rsqrt", "gelu", "sum", "max")


def _class_of(op: Op) -> str:
    if op in _ELEMENTWISE:
        return "ew"
    return {Op.VEXP: "exp", Op.VRECIP: "recip", Op.VRSQRT: "rsqrt", Op.VGELU: "gelu",
            Op.VSUM: "sum", Op.VMAX: "max", Op.VARGMAX: "max"}[op]


#: Cycles of every op before and after its datapath: the read (address to data) and the write.
_OVERHEAD = 2
#: Depth of each class's datapath from the data stage to the result, as built (the operand
#: register is the first stage; a reduction's lane step is 1, its tree log2(lanes) more).
_BASE_DEPTH = {"ew": 2, "exp": 1 + PIPELINE_DEPTHS["exp"], "recip": 1 + PIPELINE_DEPTHS["recip"],
               "rsqrt": 1 + PIPELINE_DEPTHS["rsqrt"], "gelu": 1 + PIPELINE_DEPTHS["gelu"]}


class VectorUnit(wiring.Component):
    """The ASIC vector unit: ``asic.vector_lanes`` binary32 lanes and the vector memory.

    Parameters
    ----------
    config : MachineConfig
        ``asic.vector_lanes`` (lanes, a power of two), ``asic.vmem_words`` (a multiple of the
        lanes) and the latencies ``vec_latency``, ``exp_cycles``, ``recip_cycles``,
        ``rsqrt_cycles``, ``gelu_cycles``, each at least what the datapath needs
        (:data:`PIPELINE_DEPTHS`; a :class:`PimgptError` names the shortfall).

    Attributes
    ----------
    i_op : In(stream.Signature(op_layout()))
        vector ops (resolved operands); ``ready`` is high while the unit is idle and in the
        cycle its op completes.
    busy : Out(1)
        an op is in flight (accepted, ``done`` not yet reached).
    done : Out(1)
        one-cycle pulse: the last accepted op has completed (see the module docstring).
    result : Out(isa.SREG_BITS)
        the index of the last completed ``VARGMAX`` (for the scalar register ``rd``), valid
        from its ``done`` on.
    host_addr, host_we, host_wdata : In
        host port (only while the unit is idle): write ``host_wdata`` to word ``host_addr``
        when ``host_we``; otherwise read it.
    host_rdata : Out(32)
        the word at the ``host_addr`` of the previous cycle.
    banks : list of amaranth.lib.memory.MemoryData
        the vector memory, word ``w`` at bank ``w % lanes``, row ``w // lanes``.
    """

    def __init__(self, config: MachineConfig):
        if not isinstance(config, MachineConfig):
            raise TypeError(f"config must be a MachineConfig, not {config!r}")
        asic = config.asic
        self.asic = asic
        self.lanes = asic.vector_lanes
        if asic.vmem_words % self.lanes:
            raise PimgptError(f"asic.vmem_words ({asic.vmem_words}) must be a multiple of "
                              f"asic.vector_lanes ({self.lanes}) for the banked vector memory")
        self.addr_bits = ceil_log2(asic.vmem_words)
        # the write stage of each class, counted from the data stage of its last beat
        self.write_stage: dict[str, int] = {}
        for op in list(_ELEMENTWISE) + list(_fn_cycles(asic)) + list(_REDUCTIONS):
            cls = _class_of(op)
            self.write_stage[cls] = op_latency(asic, op) - _OVERHEAD
        lg = exact_log2(self.lanes)
        need = dict(_BASE_DEPTH, sum=2 + lg, max=2 + lg)
        short = [f"{cls} needs {need[cls] + _OVERHEAD} cycles, the config gives "
                 f"{self.write_stage[cls] + _OVERHEAD}" for cls in _CLASSES
                 if self.write_stage[cls] < need[cls]]
        if short:
            raise PimgptError("asic latencies too short for the vector unit's pipelines: "
                              + "; ".join(short))
        self.banks = [memory.MemoryData(shape=W, depth=asic.vmem_words // self.lanes, init=[])
                      for _ in range(self.lanes)]
        super().__init__({
            "i_op": In(stream.Signature(op_layout())),
            "busy": Out(1),
            "done": Out(1),
            "result": Out(isa.SREG_BITS),
            "host_addr": In(self.addr_bits),
            "host_we": In(1),
            "host_wdata": In(W),
            "host_rdata": Out(W),
        })

    def elaborate(self, platform):
        m = Module()
        L, lg = self.lanes, exact_log2(self.lanes)
        asic = self.asic
        AW = _VF["a"].shape.width
        NW = _VF["n"].shape.width
        CW = ceil_log2((1 << NW) // L + 2 + max(op_latency(asic, op) for op in Op
                                                if op in isa.VECTOR_OPS))

        mems = [memory.Memory(data) for data in self.banks]
        for k, mem in enumerate(mems):
            m.submodules[f"bank{k}"] = mem
        rd_a = [mem.read_port() for mem in mems]
        rd_b = [mem.read_port() for mem in mems]
        wr = [mem.write_port() for mem in mems]

        op = self.i_op.payload
        accept = self.i_op.valid & self.i_op.ready

        # --- control: counters set when an op is accepted -----------------------------------
        cnt = Signal(range(1 << CW))  # cycles to done (1: done now, 0: idle)
        cls = Signal(len(_CLASSES))  # one-hot class of the op in flight
        opc = Signal(isa.Opcode)
        imm = Signal(W)
        bcast = Signal()
        rd_left = Signal(NW + 1)  # elements still to read
        rd_a_ptr, rd_b_ptr = Signal(AW + 1), Signal(AW + 1)
        wr_wait = Signal(range(1 << CW))  # cycles until the first write
        wr_left = Signal(NW + 1)  # elements still to write
        wr_ptr = Signal(AW + 1)

        def is_cls(name: str) -> Value:
            return cls[_CLASSES.index(name)]

        m.d.comb += [
            self.done.eq(cnt == 1),
            self.busy.eq(cnt > 1),
            self.i_op.ready.eq(~self.busy),
        ]
        with m.If(cnt != 0):
            m.d.sync += cnt.eq(cnt - 1)
        with m.If(wr_wait != 0):
            m.d.sync += wr_wait.eq(wr_wait - 1)

        beats = (op.n + (L - 1)) >> lg
        with m.If(accept):
            m.d.sync += [opc.eq(op.opcode), imm.eq(op.imm), bcast.eq(op.bcast),
                         rd_left.eq(op.n), rd_a_ptr.eq(op.a), rd_b_ptr.eq(op.b),
                         wr_ptr.eq(op.dst)]
            with m.Switch(op.opcode):
                for o in isa.VECTOR_OPS:
                    c = _class_of(o)
                    s = self.write_stage[c]
                    with m.Case(o):
                        m.d.sync += cls.eq(1 << _CLASSES.index(c))
                        with m.If(op.n == 0):
                            m.d.sync += [cnt.eq(1), wr_left.eq(0), wr_wait.eq(0)]
                        with m.Else():
                            m.d.sync += cnt.eq(beats + op_latency(asic, o))
                            if c in ("sum", "max"):
                                # one word after the last beat (none for VARGMAX)
                                m.d.sync += [wr_wait.eq(beats + s),
                                             wr_left.eq(0 if o is Op.VARGMAX else 1)]
                            else:
                                m.d.sync += [wr_wait.eq(s + 1), wr_left.eq(op.n)]
                with m.Default():  # not a vector op: completes at once, does nothing
                    m.d.sync += [cls.eq(0), cnt.eq(1), rd_left.eq(0), wr_left.eq(0),
                                 wr_wait.eq(0)]

        # --- read: one beat per cycle -------------------------------------------------------
        rd_active = rd_left != 0
        with m.If(rd_active & ~accept):
            m.d.sync += [rd_left.eq(Mux(rd_left > L, rd_left - L, 0)),
                         rd_a_ptr.eq(rd_a_ptr + L),
                         rd_b_ptr.eq(Mux(bcast, rd_b_ptr, rd_b_ptr + L))]
        host_bank = Signal(max(lg, 1))
        m.d.sync += host_bank.eq(self.host_addr[:lg] if lg else 0)
        a_addr = Mux(rd_active, rd_a_ptr, self.host_addr)
        for k in range(L):
            for port, addr in ((rd_a[k], a_addr), (rd_b[k], rd_b_ptr)):
                m.d.comb += port.addr.eq(_bank_row(addr, k, lg))
        if L > 1:
            m.d.comb += self.host_rdata.eq(
                Cat(*(p.data for p in rd_a)).word_select(host_bank, W))
        else:
            m.d.comb += self.host_rdata.eq(rd_a[0].data)

        # data stage (the cycle after the read): valid, lane mask, rotations, first beat
        d_valid, d_first = Signal(), Signal()
        d_mask = Signal(L)
        d_rot_a, d_rot_b = Signal(max(lg, 1)), Signal(max(lg, 1))
        m.d.sync += [
            d_valid.eq(rd_active & ~accept),
            d_first.eq(accept),
            d_mask.eq(Cat(*(rd_left > i for i in range(L)))),
            d_rot_a.eq(rd_a_ptr[:lg] if lg else 0),
            d_rot_b.eq(rd_b_ptr[:lg] if lg else 0),
        ]
        # d_first: the beat read right after the accept is the first one
        first_beat = Signal()
        m.d.sync += first_beat.eq(d_first)

        def rotate_in(ports, rot):
            both = Cat(*(p.data for p in ports), *(p.data for p in ports))
            return (both >> (rot * W))[:L * W] if lg else both[:W]

        ops_a = Signal(L * W)
        ops_b = Signal(L * W)
        b_latch = Signal(W)
        rot_mod = Module()
        m.submodules.rotate_in = rot_mod
        rot_mod.d.comb += [ops_a.eq(rotate_in(rd_a, d_rot_a)),
                           ops_b.eq(rotate_in(rd_b, d_rot_b))]
        with m.If(d_valid & first_beat):
            m.d.sync += b_latch.eq(ops_b[:W])
        b_word = Mux(first_beat, ops_b[:W], b_latch)  # a broadcast word, read once

        # --- per-class operand registers (stage 1), loaded only when their class runs --------
        def operand(name: str, value: Value) -> _V:
            reg = Signal(W, name=f"{name}_opd")
            mod = Module()
            with mod.If(d_valid & is_cls(name.split("_")[0])):
                mod.d.sync += reg.eq(value)
            m.submodules[f"{name}_opd"] = mod
            return _V(reg, 1)

        # control of the elementwise ops, decoded once
        is_sub = Signal()
        is_mul = Signal()
        pass_x = Signal()
        imm_x = Signal()  # VSET: x = imm
        imm_y = Signal()  # VADDI / VMULI: y = imm
        m.d.comb += [
            is_sub.eq(opc == Op.VSUB),
            is_mul.eq((opc == Op.VMUL) | (opc == Op.VMULI)),
            pass_x.eq((opc == Op.VSET) | (opc == Op.VMOV)),
            imm_x.eq(opc == Op.VSET),
            imm_y.eq((opc == Op.VADDI) | (opc == Op.VMULI)),
        ]

        outs: dict[str, list[Value]] = {c: [] for c in _CLASSES}
        for lane in range(L):
            xa = ops_a.word_select(lane, W)
            yb = Mux(bcast, b_word, ops_b.word_select(lane, W))

            # elementwise: add (or subtract) and multiply side by side, then select
            p = _Pipe(m, f"ew{lane}")
            x = operand(f"ew_x{lane}", Mux(imm_x, imm, xa))
            y = operand(f"ew_y{lane}", Mux(imm_y, imm, yb))
            ysub = p.logic(lambda y: Mux(is_sub, y ^ SIGN, y), y)
            s, prod = p.add(x, ysub), p.mul(x, y)
            res = p.logic(lambda s, pr, x: Mux(is_mul, pr, Mux(pass_x, x, s)),
                          s, prod, p.delay(x, 2))
            outs["ew"].append(p.at(res, self.write_stage["ew"]))

            # exp and reciprocal: fed by their own operand, or by GELU
            gelu_sel = is_cls("gelu")
            exp_in, recip_in = Signal(W, name=f"exp_in{lane}"), Signal(W, name=f"recip_in{lane}")
            pe, pr = _Pipe(m, f"exp{lane}"), _Pipe(m, f"recip{lane}")
            e_out = _exp(pe, _V(exp_in, 0))
            r_out = _recip(pr, _V(recip_in, 0))
            e_op = operand(f"exp_x{lane}", xa)
            r_op = operand(f"recip_x{lane}", xa)
            pg = _Pipe(m, f"gelu{lane}")
            feeds = {}

            def feed(v: _V, inp: Signal, own: _V, out: _V, key: str, pg=pg, feeds=feeds) -> _V:
                mod = Module()
                mod.d.comb += inp.eq(Mux(gelu_sel, v.sig, own.sig))
                m.submodules[f"{key}_feed"] = mod
                feeds[key] = v.stage
                return _V(out.sig, v.stage + out.stage)

            g_out = _gelu(pg, operand(f"gelu_x{lane}", xa),
                          lambda v: feed(v, exp_in, e_op, e_out, f"exp{lane}"),
                          lambda v: feed(v, recip_in, r_op, r_out, f"recip{lane}"))
            outs["gelu"].append(pg.at(g_out, self.write_stage["gelu"]))
            # as VEXP / VRECIP their operand register is stage 1, their input stage 0
            outs["exp"].append(pe.at(e_out, self.write_stage["exp"] - 1))
            outs["recip"].append(pr.at(r_out, self.write_stage["recip"] - 1))
            pq = _Pipe(m, f"rsqrt{lane}")
            q_out = _rsqrt(pq, _V(operand(f"rsqrt_x{lane}", xa).sig, 0))
            outs["rsqrt"].append(pq.at(q_out, self.write_stage["rsqrt"] - 1))

        # --- reductions: lane step at stage 1, tree, one result word -----------------------
        r_valid = Signal()
        r_mask = Signal(L)
        r_beat = Signal(NW)
        red_x = [Signal(W, name=f"red_x{lane}") for lane in range(L)]
        red_sel = is_cls("sum") | is_cls("max")
        m.d.sync += r_valid.eq(d_valid & red_sel)
        with m.If(d_valid & red_sel):
            m.d.sync += r_mask.eq(d_mask)
            m.d.sync += [red_x[lane].eq(ops_a.word_select(lane, W)) for lane in range(L)]
        with m.If(accept):
            m.d.sync += r_beat.eq(0)
        with m.Elif(r_valid):
            m.d.sync += r_beat.eq(r_beat + 1)

        # sum: lane accumulators from +0 (masked lanes add +0, which changes nothing: a lane
        # sum starting at +0 is never -0), then the balanced tree of mac_tree
        level = []
        for lane in range(L):
            acc = Signal(W, name=f"acc{lane}")
            add = F32Add()
            m.submodules[f"acc_add{lane}"] = add
            mod = Module()
            mod.d.comb += [add.a.eq(acc), add.b.eq(Mux(r_mask[lane], red_x[lane], 0))]
            with mod.If(accept):
                mod.d.sync += acc.eq(0)
            with mod.Elif(r_valid & is_cls("sum")):
                mod.d.sync += acc.eq(add.y)
            m.submodules[f"acc{lane}"] = mod
            level.append(acc)
        depth = 0
        while len(level) > 1:
            depth += 1
            nxt = []
            for i in range(len(level) // 2):
                add = F32Add()
                m.submodules[f"tree_add{depth}_{i}"] = add
                q = Signal(W, name=f"tree{depth}_{i}")
                mod = Module()
                mod.d.comb += [add.a.eq(level[2 * i]), add.b.eq(level[2 * i + 1])]
                mod.d.sync += q.eq(add.y)
                m.submodules[f"tree_w{depth}_{i}"] = mod
                nxt.append(q)
            level = nxt
        sum_out = level[0]

        # max / argmax: per lane the first largest non-NaN element and whether a NaN was seen;
        # the tree keeps the larger value, on equal values the lower index
        IW = NW
        best = []
        for lane in range(L):
            val = Signal(W, name=f"best{lane}")
            idx = Signal(IW, name=f"best_idx{lane}")
            ok = Signal(name=f"best_ok{lane}")
            nan = Signal(name=f"seen_nan{lane}")
            mod = Module()
            x = red_x[lane]
            take = r_mask[lane] & ~_is_nan(x) & (~ok | _gt(x, val))
            with mod.If(accept):
                mod.d.sync += [ok.eq(0), nan.eq(0)]
            with mod.Elif(r_valid & is_cls("max")):
                with mod.If(take):
                    mod.d.sync += [val.eq(x), idx.eq(Cat(Const(lane, lg), r_beat)[:IW]), ok.eq(1)]
                with mod.If(r_mask[lane] & _is_nan(x)):
                    mod.d.sync += nan.eq(1)
            m.submodules[f"best{lane}"] = mod
            best.append((val, idx, ok, nan))
        depth = 0
        while len(best) > 1:
            depth += 1
            nxt = []
            for i in range(len(best) // 2):
                (v0, i0, k0, n0), (v1, i1, k1, n1) = best[2 * i], best[2 * i + 1]
                val = Signal(W, name=f"mtree{depth}_{i}")
                idx = Signal(IW, name=f"mtree_idx{depth}_{i}")
                ok, nan = Signal(name=f"mtree_ok{depth}_{i}"), Signal(name=f"mtree_nan{depth}_{i}")
                right = k1 & (~k0 | _gt(v1, v0) | ((_order_key(v1) == _order_key(v0)) & (i1 < i0)))
                mod = Module()
                mod.d.sync += [val.eq(Mux(right, v1, v0)), idx.eq(Mux(right, i1, i0)),
                               ok.eq(k0 | k1), nan.eq(n0 | n1)]
                m.submodules[f"mtree_w{depth}_{i}"] = mod
                nxt.append((val, idx, ok, nan))
            best = nxt
        (mval, midx, mok, mnan), = best
        outs["sum"] = [sum_out] + [Const(0, W)] * (L - 1)
        outs["max"] = [Mux(mnan, CANON_NAN_F32, mval)] + [Const(0, W)] * (L - 1)
        # ``result`` must hold the index in the done cycle itself: present it combinationally
        result_reg = Signal(isa.SREG_BITS)
        empty = Signal()  # the op in flight has no elements (its tree holds stale values)
        with m.If(accept):
            m.d.sync += empty.eq(op.n == 0)
        index = Mux(mok & ~empty, midx, 0)
        m.d.comb += self.result.eq(Mux(self.done & (opc == Op.VARGMAX), index, result_reg))
        with m.If(self.done & (opc == Op.VARGMAX)):
            m.d.sync += result_reg.eq(index)

        # --- write: one beat per cycle, rotated into the banks -------------------------------
        wr_active = (wr_wait == 0) & (wr_left != 0)
        with m.If(wr_active & ~accept):
            m.d.sync += [wr_left.eq(Mux(wr_left > L, wr_left - L, 0)), wr_ptr.eq(wr_ptr + L)]
        wdata = Signal(L * W)
        wsel = Module()
        m.submodules.write_select = wsel
        with wsel.Switch(cls):
            for c in _CLASSES:
                with wsel.Case(1 << _CLASSES.index(c)):
                    wsel.d.comb += wdata.eq(Cat(*outs[c]))
            with wsel.Default():  # idle (nothing is written)
                wsel.d.comb += wdata.eq(0)
        rot = wr_ptr[:lg] if lg else 0
        wmask = Cat(*(wr_left > i for i in range(L)))
        if lg:
            rdata = (Cat(wdata, wdata) << (rot * W))[L * W:2 * L * W]
            rmask = (Cat(wmask, wmask) << rot)[L:2 * L]
        else:
            rdata, rmask = wdata, wmask
        # a VSUM of no elements writes +0 at once
        zero_sum = accept & (op.opcode == Op.VSUM) & (op.n == 0)
        idle = ~self.busy & ~accept
        for k in range(L):
            row = _bank_row(wr_ptr, k, lg)
            with m.If(wr_active):
                m.d.comb += [wr[k].addr.eq(row), wr[k].data.eq(rdata.word_select(k, W)),
                             wr[k].en.eq(rmask[k])]
            with m.Elif(zero_sum):
                m.d.comb += [wr[k].addr.eq(op.dst >> lg), wr[k].data.eq(0),
                             wr[k].en.eq((op.dst[:lg] == k) if lg else 1)]
            with m.Elif(idle):
                m.d.comb += [wr[k].addr.eq(self.host_addr >> lg),
                             wr[k].data.eq(self.host_wdata),
                             wr[k].en.eq(self.host_we & ((self.host_addr[:lg] == k)
                                                         if lg else 1))]
        return m
