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
on. An elementwise op or function writes beat ``j`` in cycle ``t + lat + j``, a reduction its one
word (``VARGMAX``: latches ``result``) in cycle ``t + beats + lat - 1`` (:func:`op_timing`). An op
with ``n = 0`` completes in cycle ``t + 1``; a ``VSUM`` with ``n = 0`` writes +0 to ``dst`` in
cycle ``t``, as the functional machine does.

**Overlap.** Ops overlap: ``i_op.ready`` says, for the op presented, whether :class:`VectorIssue`
lets it start now: (1) the previous op has read its last beat (``t >= t_prev + beats_prev``, one
accept per cycle); (2) its first write comes after the previous op's ``done`` (one write port,
results leave in order, so ``done`` pulses in accept order); (3) a ``VEXP`` / ``VRECIP`` waits
until the last ``VGELU``'s beats have entered that lane pipeline (:data:`GELU_FEEDS`); (4) at most
:data:`MAX_IN_FLIGHT` ops are in flight. Everything per op travels with its beats: the class,
the opcode's controls (subtract, multiply, pass, immediates, broadcast) and a first-beat flag in
delay registers down the pipelines (the first beat latches a broadcast word and restarts the
reduction accumulators / maxima; a reduction's result leaves its tree into delay registers), and
each op with elements leaves a write descriptor (``dst``, word count, class, the cycle of its
first write) in a queue of :data:`MAX_IN_FLIGHT` that the writer takes in order. The unit does
not check memory conflicts between ops in flight: an op that reads or writes what an earlier op
in flight writes, or writes what it reads, must wait for that op's ``done`` (the controller's
scoreboard; the cycle simulator's ``_ready`` / ``_free``).

**Overlapping spans.** Beats are read before they are written, in address order, so ``dst ==
a`` (in place) and ``dst < a`` are exact; ``dst > a`` with overlapping spans, which the functional
machine defines (it reads the whole source first), is not supported. A broadcast ``b`` word is
read once, at the first beat, so it may lie inside ``dst``.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl.fp import BINARY32, CANON_NAN_F32, F32Add, F32Mul, _lzc
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import Asic, MachineConfig
from pimgpt.sim import numerics as nm

__all__ = ["op_layout", "op_latency", "op_cycles", "op_timing", "VectorIssue", "MAX_IN_FLIGHT",
           "VectorUnit", "PIPELINE_DEPTHS", "GELU_FEEDS"]

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


def _build_depths() -> tuple[dict[str, int], dict[str, int]]:
    """Pipeline depth (stages from the operand register to the result) of each function, and
    the stage (from GELU's operand register) at which GELU feeds each shared pipeline."""
    out = {}
    for name, fn in (("exp", _exp), ("recip", _recip), ("rsqrt", _rsqrt)):
        p = _Pipe(None, name)
        out[name] = fn(p, _V(Signal(W), 0)).stage
    p = _Pipe(None, "gelu")
    feeds = {}

    def ext(name):
        def feed(v: _V) -> _V:
            feeds[name] = v.stage
            return _V(Signal(W), v.stage + out[name])
        return feed

    out["gelu"] = _gelu(p, _V(Signal(W), 0), ext("exp"), ext("recip")).stage
    return out, feeds


#: Stages of each function's datapath between its operand register and its result, as built:
#: one per dependent floating-point operation (exp 22, recip 13, rsqrt 14, gelu 46).
#: ``GELU_FEEDS``: GELU feeds its lane's exp pipeline 6 stages and its reciprocal pipeline 29
#: stages after its operand register; a VEXP / VRECIP beat enters them from its own operand
#: register (stage 0), so a GELU beat uses a shared pipeline's first stage that many cycles
#: after a VEXP / VRECIP beat read in the same cycle would.
PIPELINE_DEPTHS, GELU_FEEDS = _build_depths()


# --- the issue rule ------------------------------------------------------------------------------

#: The most vector ops in flight at once (accepted, ``done`` not yet reached): the depth of the
#: unit's write-descriptor queue and of the controller's vector scoreboard.
MAX_IN_FLIGHT = 8


def op_timing(asic: Asic, op: Op, n: int) -> tuple[int, int, int]:
    """``(slot, write, done)`` of an op on ``n`` elements accepted in ASIC cycle ``t``, as
    offsets from ``t``: it reads its operands in cycles ``t + 1 .. t + slot`` (``slot = beats =
    ceil(n / lanes)``; 1 and no read for ``n = 0``); its results use the write port from cycle
    ``t + write`` (one beat per cycle: ``write = op_latency`` for the elementwise ops and the
    functions; a reduction writes one word, or for ``VARGMAX`` latches ``result``, in cycle
    ``t + beats + op_latency - 1``; ``write = 0`` for ``n = 0``: a ``VSUM`` writes +0 in the
    accept cycle); ``done`` is ``t + done``, the cycle after its last write (``done = beats +
    op_latency``, 1 for ``n = 0``)."""
    if n == 0:
        return 1, 0, 1
    beats = -(-n // asic.vector_lanes)
    lat = op_latency(asic, op)
    return beats, (beats + lat - 1 if op in _REDUCTIONS else lat), beats + lat


class VectorIssue:
    """The vector unit's issue rule: the earliest cycle the next op may be accepted, given the
    ops accepted before it (the one rule of :class:`VectorUnit` and ``CycleSimulator._vector``).

    Op ``k`` (``n_k`` elements, accepted in cycle ``t_k``; ``slot_k, write_k, done_k`` from
    :func:`op_timing`, ``done_k`` absolute) may be accepted in cycle ``t`` when

    1. **read port**: ``t >= t_{k-1} + slot_{k-1}`` (the previous op has read its last beat;
       one accept per cycle);
    2. **write port, in order**: ``t + write_k >= done_{k-1}`` (its first write comes after the
       previous op's last one, so ops complete in the order they were accepted);
    3. **shared pipelines**: a ``VEXP`` (``VRECIP``) op: ``t >= t_g + beats_g +
       GELU_FEEDS["exp"]`` (``["recip"]``) for the last ``VGELU`` ``g`` with elements (its
       beats have entered the lane's exp / reciprocal pipeline before the op's first beat);
    4. **ops in flight**: ``t >= done_{k - MAX_IN_FLIGHT}``.

    The reduction state needs nothing more: every beat carries its op's first-beat flag, so a
    reduction's first beat restarts the lane accumulators / maxima while the trees hold the
    previous one's. Conflicts through memory (an op reading what an op in flight writes, ...)
    are the scoreboard's (the controller; the cycle simulator's ``_ready`` / ``_free``).

    Times are ASIC cycles, or any unit ``cycles`` converts a count of ASIC cycles into (the
    cycle simulator passes its ``asic_cycles``: DRAM command-clock cycles).
    """

    def __init__(self, asic: Asic, cycles=None):
        self.asic = asic
        self._cycles = cycles if cycles is not None else (lambda k: k)
        #: the end of the last op's read slot: no op is accepted earlier (rule 1)
        self.free = 0
        #: the last op's ``done``: every op accepted so far has completed by then
        self.done = 0
        self._pipes = {"exp": 0, "recip": 0}  # rule 3, by the VEXP / VRECIP op
        self._dones: list[int] = []  # done of the last MAX_IN_FLIGHT ops (rule 4)

    def bounds(self, op: Op, n: int, t: int) -> dict[str, int]:
        """The cycle from which each part of the rule lets ``op`` on ``n`` elements start
        (``"read"``, ``"write"``, ``"pipe"``, ``"in_flight"``: rules 1-4), and ``t``."""
        _slot, write, _done = op_timing(self.asic, op, n)
        pipe = {Op.VEXP: "exp", Op.VRECIP: "recip"}.get(op)
        return {"t": t, "read": self.free, "write": self.done - self._cycles(write),
                "pipe": self._pipes[pipe] if pipe else 0,
                "in_flight": self._dones[0] if len(self._dones) == MAX_IN_FLIGHT else 0}

    def earliest_start(self, op: Op, n: int, t: int) -> int:
        """The first cycle ``>= t`` in which the unit accepts ``op`` on ``n`` elements."""
        return max(self.bounds(op, n, t).values())

    def accept(self, op: Op, n: int, t: int) -> int:
        """Book ``op`` on ``n`` elements accepted in cycle ``t`` (at least
        :meth:`earliest_start`); returns its ``done`` cycle."""
        if t < self.earliest_start(op, n, t):
            raise PimgptError(f"{op.name} accepted in cycle {t}, before the issue rule allows "
                              f"({self.earliest_start(op, n, t)})")
        slot, _write, done = op_timing(self.asic, op, n)
        cyc = self._cycles
        self.free = t + cyc(slot)
        done = t + cyc(done)
        self.done = max(self.done, done)
        if op is Op.VGELU and n:
            for pipe, stage in GELU_FEEDS.items():
                self._pipes[pipe] = t + cyc(slot + stage)
        self._dones = (self._dones + [done])[-MAX_IN_FLIGHT:]
        return done


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
        vector ops (resolved operands); ``ready`` is high when :class:`VectorIssue` lets the
        presented op start in this cycle (it depends on the payload, never on ``valid``).
    busy : Out(1)
        an op is in flight that does not complete in this cycle (accepted, ``done`` not yet
        reached).
    done : Out(1)
        one-cycle pulse: the oldest op in flight has completed (ops complete in the order they
        were accepted; see the module docstring).
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
        NC = len(_CLASSES)

        mems = [memory.Memory(data) for data in self.banks]
        for k, mem in enumerate(mems):
            m.submodules[f"bank{k}"] = mem
        rd_a = [mem.read_port() for mem in mems]
        rd_b = [mem.read_port() for mem in mems]
        wr = [mem.write_port() for mem in mems]

        op = self.i_op.payload
        accept = self.i_op.valid & self.i_op.ready

        # --- the presented op, decoded ------------------------------------------------------
        beats = Signal(NW + 1)
        m.d.comb += beats.eq((op.n + (L - 1)) >> lg)
        op_cls = Signal(NC)  # one-hot class; 0: not a vector op (completes at once, no effect)
        w_off = Signal(CW)  # op_timing's ``write``
        d_off = Signal(CW)  # op_timing's ``done``
        is_sub, is_mul, pass_x, imm_x, imm_y = (Signal(name=f"dec_{n}") for n in
                                                ("is_sub", "is_mul", "pass_x", "imm_x", "imm_y"))
        lat = Const(0, CW)  # op_latency (one per class)
        lats = {}
        for o in isa.VECTOR_OPS:
            lats.setdefault(_class_of(o), set()).add(op_latency(asic, o))
        for i, c in enumerate(_CLASSES):
            ops_c = sorted((o for o in isa.VECTOR_OPS if _class_of(o) == c), key=lambda o: o.value)
            (lat_c,) = lats[c]
            m.d.comb += op_cls[i].eq(Cat(op.opcode == o for o in ops_c).any())
            lat = lat | Mux(op_cls[i], lat_c, 0)
        red = op_cls[_CLASSES.index("sum")] | op_cls[_CLASSES.index("max")]
        no_beats = Signal()  # done the next cycle (writes only VSUM's +0, at once)
        m.d.comb += [no_beats.eq((op.n == 0) | (op_cls == 0)),
                     w_off.eq(Mux(no_beats, 0, Mux(red, beats + lat - 1, lat))),
                     d_off.eq(Mux(no_beats, 1, beats + lat))]
        m.d.comb += [
            is_sub.eq(op.opcode == Op.VSUB),
            is_mul.eq((op.opcode == Op.VMUL) | (op.opcode == Op.VMULI)),
            pass_x.eq((op.opcode == Op.VSET) | (op.opcode == Op.VMOV)),
            imm_x.eq(op.opcode == Op.VSET),  # VSET: x = imm
            imm_y.eq((op.opcode == Op.VADDI) | (op.opcode == Op.VMULI)),  # y = imm
        ]

        # --- the issue rule (VectorIssue), in hardware --------------------------------------
        rd_left = Signal(NW + 1)  # elements still to read (this cycle's beat included)
        in_flight = Signal(range(MAX_IN_FLIGHT + 1))
        until_done = Signal(CW)  # cycles until the last accepted op's done (0: reached)
        pipe_wait = {p: Signal(CW, name=f"{p}_wait") for p in GELU_FEEDS}  # rule 3
        done = Signal()
        m.d.comb += [
            self.done.eq(done),
            self.busy.eq(in_flight > done),
            self.i_op.ready.eq(
                (rd_left <= L)  # 1: the read port is free from the next cycle on
                & (w_off >= until_done)  # 2: the first write follows the last op's done
                & ~(op_cls[_CLASSES.index("exp")] & (pipe_wait["exp"] != 0))  # 3
                & ~(op_cls[_CLASSES.index("recip")] & (pipe_wait["recip"] != 0))
                & ((in_flight < MAX_IN_FLIGHT) | done)),  # 4
        ]
        m.d.sync += in_flight.eq(in_flight + accept - done)
        with m.If(accept):
            m.d.sync += until_done.eq(d_off - 1)
        with m.Elif(until_done != 0):
            m.d.sync += until_done.eq(until_done - 1)
        for pipe, stage in GELU_FEEDS.items():
            w = pipe_wait[pipe]
            with m.If(accept & op_cls[_CLASSES.index("gelu")] & (op.n != 0)):
                m.d.sync += w.eq(beats + (stage - 1))
            with m.Elif(w != 0):
                m.d.sync += w.eq(w - 1)

        # --- read: one beat per cycle, each with its op's control ---------------------------
        rd_a_ptr, rd_b_ptr = Signal(AW + 1), Signal(AW + 1)
        rd_first = Signal()  # the beat read now is its op's first
        rd_cls = Signal(NC)
        rd_ctl = Signal(data.StructLayout({
            "is_sub": 1, "is_mul": 1, "pass_x": 1, "imm_x": 1, "imm_y": 1, "bcast": 1, "imm": W}))
        rd_active = rd_left != 0
        with m.If(accept):
            m.d.sync += [rd_left.eq(Mux(op_cls != 0, op.n, 0)), rd_a_ptr.eq(op.a),
                         rd_b_ptr.eq(op.b), rd_first.eq(1), rd_cls.eq(op_cls),
                         rd_ctl.eq(Cat(is_sub, is_mul, pass_x, imm_x, imm_y, op.bcast, op.imm))]
        with m.Elif(rd_active):
            m.d.sync += [rd_left.eq(Mux(rd_left > L, rd_left - L, 0)),
                         rd_a_ptr.eq(rd_a_ptr + L),
                         rd_b_ptr.eq(Mux(rd_ctl.bcast, rd_b_ptr, rd_b_ptr + L)),
                         rd_first.eq(0)]
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

        # data stage (stage 0, the cycle after the read): the beat's valid, first flag, lane
        # mask, rotations, class and control
        d_valid, d_first = Signal(), Signal()
        d_mask = Signal(L)
        d_rot_a, d_rot_b = Signal(max(lg, 1)), Signal(max(lg, 1))
        d_cls = Signal(NC)
        d_ctl = Signal.like(rd_ctl)
        m.d.sync += [
            d_valid.eq(rd_active),
            d_first.eq(rd_first),
            d_mask.eq(Cat(*(rd_left > i for i in range(L)))),
            d_rot_a.eq(rd_a_ptr[:lg] if lg else 0),
            d_rot_b.eq(rd_b_ptr[:lg] if lg else 0),
            d_cls.eq(Mux(rd_active, rd_cls, 0)),
            d_ctl.eq(rd_ctl),
        ]

        def is_cls(name: str) -> Value:
            """A beat of class ``name`` is in the data stage."""
            return d_cls[_CLASSES.index(name)]

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
        with m.If(d_valid & d_first):
            m.d.sync += b_latch.eq(ops_b[:W])
        b_word = Mux(d_first, ops_b[:W], b_latch)  # a broadcast word, read once per op

        # per-beat control down the pipelines: delay registers shared by the lanes
        cp = _Pipe(m, "ctl")
        c_sub, c_mul, c_pass = (_V(d_ctl.is_sub, 0), _V(d_ctl.is_mul, 0),
                                _V(d_ctl.pass_x, 0))
        c_gelu = _V(is_cls("gelu"), 0)

        def ctl(v: _V, stage: int) -> _V:
            """Control value ``v`` of the data stage, delayed to ``stage`` with its beat."""
            return _V(cp.at(v, stage), stage)

        # --- per-class operand registers (stage 1), loaded only by beats of their class ------
        def operand(name: str, value: Value) -> _V:
            reg = Signal(W, name=f"{name}_opd")
            mod = Module()
            with mod.If(is_cls(name.split("_")[0])):
                mod.d.sync += reg.eq(value)
            m.submodules[f"{name}_opd"] = mod
            return _V(reg, 1)

        outs: dict[str, list[Value]] = {c: [] for c in _CLASSES}
        for lane in range(L):
            xa = ops_a.word_select(lane, W)
            yb = Mux(d_ctl.bcast, b_word, ops_b.word_select(lane, W))

            # elementwise: add (or subtract) and multiply side by side, then select
            p = _Pipe(m, f"ew{lane}")
            x = operand(f"ew_x{lane}", Mux(d_ctl.imm_x, d_ctl.imm, xa))
            y = operand(f"ew_y{lane}", Mux(d_ctl.imm_y, d_ctl.imm, yb))
            ysub = p.logic(lambda y, sub: Mux(sub, y ^ SIGN, y), y, ctl(c_sub, y.stage))
            s, prod = p.add(x, ysub), p.mul(x, y)
            st = p._stage(s, prod)
            res = p.logic(lambda s, pr, x, mul, pas: Mux(mul, pr, Mux(pas, x, s)),
                          s, prod, p.delay(x, st), ctl(c_mul, st), ctl(c_pass, st))
            outs["ew"].append(p.at(res, self.write_stage["ew"]))

            # exp and reciprocal: fed by their own operand, or by a GELU beat at the stage
            # GELU feeds them (rule 3 of VectorIssue keeps the two apart)
            exp_in, recip_in = Signal(W, name=f"exp_in{lane}"), Signal(W, name=f"recip_in{lane}")
            pe, pr = _Pipe(m, f"exp{lane}"), _Pipe(m, f"recip{lane}")
            e_out = _exp(pe, _V(exp_in, 0))
            r_out = _recip(pr, _V(recip_in, 0))
            e_op = operand(f"exp_x{lane}", xa)
            r_op = operand(f"recip_x{lane}", xa)
            pg = _Pipe(m, f"gelu{lane}")

            def feed(v: _V, inp: Signal, own: _V, out: _V, key: str, pipe: str) -> _V:
                if v.stage - own.stage != GELU_FEEDS[pipe]:
                    raise AssertionError(f"GELU feeds {pipe} at stage {v.stage}")
                mod = Module()
                mod.d.comb += inp.eq(Mux(ctl(c_gelu, v.stage).sig, v.sig, own.sig))
                m.submodules[f"{key}_feed"] = mod
                return _V(out.sig, v.stage + out.stage)

            g_out = _gelu(pg, operand(f"gelu_x{lane}", xa),
                          lambda v: feed(v, exp_in, e_op, e_out, f"exp{lane}", "exp"),
                          lambda v: feed(v, recip_in, r_op, r_out, f"recip{lane}", "recip"))
            outs["gelu"].append(pg.at(g_out, self.write_stage["gelu"]))
            # as VEXP / VRECIP their operand register is stage 1, their input stage 0
            outs["exp"].append(pe.at(e_out, self.write_stage["exp"] - 1))
            outs["recip"].append(pr.at(r_out, self.write_stage["recip"] - 1))
            pq = _Pipe(m, f"rsqrt{lane}")
            q_out = _rsqrt(pq, _V(operand(f"rsqrt_x{lane}", xa).sig, 0))
            outs["rsqrt"].append(pq.at(q_out, self.write_stage["rsqrt"] - 1))

        # --- reductions: lane step at stage 1, tree, one result word -----------------------
        r_valid, r_sum, r_max, r_first = Signal(), Signal(), Signal(), Signal()
        r_mask = Signal(L)
        r_beat = Signal(NW)  # beat index of the next reduction beat of the op
        red_x = [Signal(W, name=f"red_x{lane}") for lane in range(L)]
        red_sel = is_cls("sum") | is_cls("max")
        m.d.sync += [r_valid.eq(red_sel), r_sum.eq(is_cls("sum")), r_max.eq(is_cls("max")),
                     r_first.eq(d_first)]
        with m.If(red_sel):
            m.d.sync += r_mask.eq(d_mask)
            m.d.sync += [red_x[lane].eq(ops_a.word_select(lane, W)) for lane in range(L)]
        beat_idx = Mux(r_first, 0, r_beat)
        with m.If(r_valid):
            m.d.sync += r_beat.eq(beat_idx + 1)

        # sum: lane accumulators from +0 at each op's first beat (masked lanes add +0, which
        # changes nothing: a lane sum starting at +0 is never -0), then the balanced tree of
        # mac_tree, one level per stage
        level = []
        for lane in range(L):
            acc = Signal(W, name=f"acc{lane}")
            add = F32Add()
            m.submodules[f"acc_add{lane}"] = add
            mod = Module()
            mod.d.comb += [add.a.eq(Mux(r_first, 0, acc)),
                           add.b.eq(Mux(r_mask[lane], red_x[lane], 0))]
            with mod.If(r_valid & r_sum):
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

        # max / argmax: per lane the first largest non-NaN element and whether a NaN was seen
        # (restarted by each op's first beat); the tree keeps the larger value, on equal values
        # the lower index
        IW = NW
        best = []
        for lane in range(L):
            val = Signal(W, name=f"best{lane}")
            idx = Signal(IW, name=f"best_idx{lane}")
            ok = Signal(name=f"best_ok{lane}")
            nan = Signal(name=f"seen_nan{lane}")
            mod = Module()
            x = red_x[lane]
            take = r_mask[lane] & ~_is_nan(x) & (r_first | ~ok | _gt(x, val))
            with mod.If(r_valid & r_max):
                with mod.If(take):
                    mod.d.sync += [val.eq(x), idx.eq(Cat(Const(lane, lg), beat_idx)[:IW]),
                                   ok.eq(1)]
                with mod.Elif(r_first):
                    mod.d.sync += ok.eq(0)
                mod.d.sync += nan.eq((nan & ~r_first) | (r_mask[lane] & _is_nan(x)))
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
        # the trees hold an op's result for one cycle (stage 2 + lg after its last beat): it
        # travels to the write stage in delay registers
        tree = 2 + lg
        rp = _Pipe(m, "red")
        max_word = Signal(W)
        index = Signal(isa.SREG_BITS)
        m.d.comb += [max_word.eq(Mux(mnan, CANON_NAN_F32, mval)), index.eq(Mux(mok, midx, 0))]
        outs["sum"] = [rp.at(_V(sum_out, tree), self.write_stage["sum"])] + [Const(0, W)] * (L - 1)
        outs["max"] = [rp.at(_V(max_word, tree), self.write_stage["max"])] + [Const(0, W)] * (L - 1)
        index_w = rp.at(_V(index, tree), self.write_stage["max"])

        # --- write: descriptors of the ops in flight, one writing at a time, in order ---------
        # ``due`` is the cycle before the op's first write (op_timing's ``write``), counted on a
        # free-running cycle counter; rule 2 keeps the descriptors in the order of their writes
        now = Signal(CW)
        m.d.sync += now.eq(now + 1)
        desc = data.StructLayout({"dst": AW + 1, "count": NW + 1, "cls": NC, "argmax": 1,
                                  "due": CW})
        D = MAX_IN_FLIGHT
        q = Array(Signal(desc, name=f"wq{i}") for i in range(D))
        q_wr, q_rd = Signal(range(D)), Signal(range(D))
        q_n = Signal(range(D + 1))
        push = accept & ~no_beats
        head = q[q_rd]
        pop = Signal()
        m.d.comb += pop.eq((q_n != 0) & (head.due == now))
        entry = Signal(desc)
        m.d.comb += [entry.dst.eq(op.dst), entry.cls.eq(op_cls),
                     entry.count.eq(Mux(op.opcode == Op.VARGMAX, 0, Mux(red, 1, op.n))),
                     entry.argmax.eq(op.opcode == Op.VARGMAX), entry.due.eq(now + w_off - 1)]
        wq_mod = Module()
        m.submodules.write_queue = wq_mod
        for i in range(D):  # one comparison per entry: an Array write prints an incomplete case
            with wq_mod.If(push & (q_wr == i)):
                wq_mod.d.sync += q[i].eq(entry)
        with m.If(push):
            m.d.sync += q_wr.eq(Mux(q_wr == D - 1, 0, q_wr + 1))
        with m.If(pop):
            m.d.sync += q_rd.eq(Mux(q_rd == D - 1, 0, q_rd + 1))
        m.d.sync += q_n.eq(q_n + push - pop)

        # the writer: the op writing now (one beat per cycle from its first write on)
        w_active = Signal()
        w_left = Signal(NW + 1)  # words still to write (this cycle's included)
        w_ptr = Signal(AW + 1)
        w_cls = Signal(NC)
        w_argmax = Signal()
        with m.If(pop):
            m.d.sync += [w_active.eq(1), w_left.eq(head.count), w_ptr.eq(head.dst),
                         w_cls.eq(head.cls), w_argmax.eq(head.argmax)]
        with m.Elif(w_active):
            m.d.sync += [w_left.eq(Mux(w_left > L, w_left - L, 0)), w_ptr.eq(w_ptr + L),
                         w_active.eq(w_left > L)]
        w_last = w_active & (w_left <= L)
        m.d.sync += done.eq(w_last | (accept & no_beats))

        # ``result``: latched by a VARGMAX in its write slot, so it holds the index from done on
        # (an empty VARGMAX gives 0)
        result_reg = Signal(isa.SREG_BITS)
        m.d.comb += self.result.eq(result_reg)
        with m.If(w_active & w_argmax):
            m.d.sync += result_reg.eq(index_w)
        with m.Elif(accept & (op.opcode == Op.VARGMAX) & (op.n == 0)):
            m.d.sync += result_reg.eq(0)

        wdata = Signal(L * W)
        wsel = Module()
        m.submodules.write_select = wsel
        with wsel.Switch(w_cls):
            for c in _CLASSES:
                with wsel.Case(1 << _CLASSES.index(c)):
                    wsel.d.comb += wdata.eq(Cat(*outs[c]))
            with wsel.Default():  # idle (nothing is written)
                wsel.d.comb += wdata.eq(0)
        rot = w_ptr[:lg] if lg else 0
        wmask = Cat(*(w_left > i for i in range(L)))
        if lg:
            rdata = (Cat(wdata, wdata) << (rot * W))[L * W:2 * L * W]
            rmask = (Cat(wmask, wmask) << rot)[L:2 * L]
        else:
            rdata, rmask = wdata, wmask
        # a VSUM of no elements writes +0 at once (rule 2: the write port is free then)
        zero_sum = accept & (op.opcode == Op.VSUM) & (op.n == 0)
        idle = ~self.busy & ~accept
        for k in range(L):
            row = _bank_row(w_ptr, k, lg)
            with m.If(w_active):
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
