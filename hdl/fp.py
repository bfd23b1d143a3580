"""Synthesizable floating-point building blocks of the bank MAC (spec: docs/numerics.md §2-§4).

Every block is combinational and bit-exact with IEEE 754 binary32 as numpy computes it: round to
nearest even, subnormal operands and results kept, overflow to ±Inf, ``x + (-x) = +0``, and every
NaN result the canonical quiet NaN of :mod:`pimgpt.sim.numerics` (sign and payload never
propagated). Format widths come from numpy / ml_dtypes, the NaN patterns from the golden model;
nothing is retyped here.

- :class:`F32Add`: ``a ⊕ b`` on binary32 patterns.
- :class:`Bf16MulF32`: ``widen(a) ⊗ widen(b)`` on BF16 patterns, the binary32 product.
- :class:`F32ToBf16`: ``bf16(a)``, binary32 to BF16 (the MAC read-out rounding, §3).
- :class:`F32Mul`: ``a ⊗ b`` on binary32 patterns (the ASIC vector unit's multiplier, §5).

The adder uses the classic guard/round/sticky datapath: the smaller operand is aligned into a
field three bits wider than the significand, with every bit shifted out of it ORed into the
lowest (sticky) bit; that is enough for a correctly rounded sum or difference. Both the adder
and the multiplier round once, by adding the round-up bit to the packed exponent and fraction.

Each block is a short chain of combinational steps, each a small sub-module writing one
struct-shaped signal (see :func:`_step`): that keeps Amaranth's simulator fast, and the step
boundaries are where pipeline registers would go.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from pimgpt.sim import numerics as _nm

__all__ = ["FloatFormat", "BINARY32", "BFLOAT16", "CANON_NAN_F32", "CANON_NAN_BF16",
           "F32Add", "Bf16MulF32", "F32ToBf16", "F32Mul"]


@dataclass(frozen=True)
class FloatFormat:
    """An IEEE-style binary format: 1 sign bit, ``exp_bits`` exponent bits, ``frac_bits``
    fraction bits (the hidden bit not stored)."""

    exp_bits: int
    frac_bits: int

    @classmethod
    def of(cls, finfo) -> "FloatFormat":
        """The format of a numpy / ml_dtypes ``finfo``."""
        return cls(exp_bits=int(finfo.nexp), frac_bits=int(finfo.nmant))

    @property
    def width(self) -> int:
        return 1 + self.exp_bits + self.frac_bits

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def exp_max(self) -> int:
        """The all-ones exponent field (Inf and NaN)."""
        return (1 << self.exp_bits) - 1

    @property
    def inf_mag(self) -> int:
        """The magnitude bits (sign excluded) of ±Inf; larger magnitudes are NaN."""
        return self.exp_max << self.frac_bits


BINARY32 = FloatFormat.of(np.finfo(np.float32))
BFLOAT16 = FloatFormat.of(ml_dtypes.finfo(ml_dtypes.bfloat16))

#: Canonical quiet NaNs, from the golden model.
CANON_NAN_F32 = int(_nm.CANON_NAN_F32)
CANON_NAN_BF16 = int(_nm.CANON_NAN_BF16)

#: Bits a BF16 pattern is shifted left when widened to binary32: ``widen(b) = f32(b << 16)``.
_WIDEN_SHIFT = BINARY32.width - BFLOAT16.width
assert BINARY32.exp_bits == BFLOAT16.exp_bits and CANON_NAN_F32 == CANON_NAN_BF16 << _WIDEN_SHIFT


def _lzc(value: Value, width: int) -> Value:
    """Leading zeros of the ``width``-bit ``value`` (a value >= ``width`` when it is zero).

    A balanced priority encoder: ``log2`` levels of muxes, not a ``width``-long chain.
    """
    size = 1 << ceil_log2(width)
    padded = Cat(Const(0, size - width), value[:width])  # pad below: leading zeros unchanged

    def count(v: Value, w: int) -> Value:
        if w == 1:
            return ~v[0]
        half = w // 2
        hi, lo = v[half:], v[:half]
        return Mux(hi.any(), count(hi, half), half + count(lo, half))

    return count(padded, size)


def _step(m: Module, name: str, registered: bool = False,
          **outputs: Value | tuple[Value, object]) -> data.View:
    """One step of a combinational datapath, in its own sub-module.

    Each output is an expression (kept at its own shape) or ``(expression, shape)``; the step
    returns one struct-shaped signal with a field per output. Amaranth's simulator re-runs all
    of a module's combinational logic whenever a signal it reads changes, and pays per signal
    assigned: a datapath written as a chain of steps, each in its own module reading only the
    step before it and writing one signal, runs every step once per input change. (One module
    with many internal signals would re-run once per signal level.) Values a later step needs
    are therefore carried through the steps in between. Synthesis sees plain wires.

    With ``registered`` the step's signal is a register (``sync`` domain, reset to 0): a
    pipeline stage boundary. Everything a later step reads passes through it, so a datapath
    cut at any set of steps stays consistent.
    """
    values, shapes = {}, {}
    for key, value in outputs.items():
        value, shape = value if isinstance(value, tuple) else (value, None)
        values[key] = Value.cast(value)
        shapes[key] = values[key].shape() if shape is None else shape
    signal = Signal(data.StructLayout(shapes), name=name)
    step = Module()
    domain = step.d.sync if registered else step.d.comb
    domain += [signal[key].eq(value) for key, value in values.items()]
    m.submodules[name] = step
    return signal


def _check_stages(owner: str, stages, steps: tuple[str, ...]) -> frozenset[str]:
    if isinstance(stages, str):
        stages = (stages,)
    out = frozenset(stages)
    unknown = sorted(out - set(steps))
    if unknown:
        raise ValueError(f"{owner}: unknown pipeline steps {unknown} (known: {', '.join(steps)})")
    return out


def _carry(step: data.View, *names: str) -> dict[str, Value]:
    return {name: step[name] for name in names}


def _round_pack(mant: Value, guard: Value, sticky: Value, exp_field: Value) -> Value:
    """Magnitude bits of a binary32 result, rounded to nearest even.

    ``mant`` holds the 24 kept significand bits (hidden bit at the top, 0 for a subnormal),
    ``exp_field`` the biased exponent (0 for a subnormal, at most the largest finite one),
    ``guard`` the first discarded bit and ``sticky`` the OR of the rest. Adding the round-up to
    the packed exponent and fraction carries naturally: a subnormal becomes the smallest normal,
    a binade's largest significand the next power of two and ``FLT_MAX`` rounds up to Inf.
    """
    round_up = guard & (sticky | mant[0])
    packed = Cat(mant[:BINARY32.frac_bits], exp_field[:BINARY32.exp_bits])
    return (packed + round_up)[:BINARY32.width - 1]


_INF_MAG = Const(BINARY32.inf_mag, BINARY32.width - 1)


class F32Add(wiring.Component):
    """Binary32 adder: ``y = a ⊕ b`` (one rounding, round to nearest even), combinational by
    default.

    Parameters
    ----------
    stages : iterable of str
        Steps of the datapath (:data:`STEPS`: ``unpack``, ``sum``, ``lzc``, ``norm``) whose
        outputs are registers; ``y`` then follows ``a`` and ``b`` by ``latency = len(stages)``
        cycles, accepting new operands every cycle. The rounding and packing after ``norm``
        stay combinational.

    Attributes
    ----------
    a, b : In(32)
        binary32 bit patterns.
    y : Out(32)
        ``a + b`` rounded to binary32; NaN results are ``0x7FC00000``.
    latency : int
        cycles from ``a``, ``b`` to ``y`` (0: combinational).
    """

    #: The datapath's steps, in order; each may end in a pipeline register.
    STEPS = ("unpack", "sum", "lzc", "norm")

    def __init__(self, *, stages=()):
        width = BINARY32.width
        self.stages = _check_stages("F32Add", stages, self.STEPS)
        self.latency = len(self.stages)
        super().__init__({"a": In(width), "b": In(width), "y": Out(width)})

    def elaborate(self, platform):
        m = Module()
        reg = self.stages
        W, FB = BINARY32.width, BINARY32.frac_bits
        SIG = FB + 1  # significand bits with the hidden bit
        EXT = SIG + 3  # plus guard, round and sticky
        passed = ("spec", "spec_y", "sx", "sub", "ex_eff")

        # --- order the operands, handle Inf/NaN, unpack --------------------------------------
        a, b = self.a, self.b
        mag_a, mag_b = a[:W - 1], b[:W - 1]
        a_inf, b_inf = mag_a == BINARY32.inf_mag, mag_b == BINARY32.inf_mag
        # x: the operand of larger magnitude (magnitudes order like their bit patterns)
        swap = mag_b > mag_a
        x, y = Mux(swap, b, a), Mux(swap, a, b)
        ex, ey = x[FB:W - 1], y[FB:W - 1]
        sub = x[W - 1] ^ y[W - 1]
        nan = (mag_a > BINARY32.inf_mag) | (mag_b > BINARY32.inf_mag) | (a_inf & b_inf & sub)
        # subnormals count with the exponent of the smallest normal, without the hidden bit
        ex_eff, ey_eff = Mux(ex == 0, 1, ex), Mux(ey == 0, 1, ey)
        diff = (ex_eff - ey_eff)[:BINARY32.exp_bits]
        s1 = _step(m, "unpack", "unpack" in reg,
                   spec=nan | a_inf | b_inf, spec_y=Mux(nan, CANON_NAN_F32, x),
                   sx=x[W - 1], sub=sub, ex_eff=(ex_eff, BINARY32.exp_bits),
                   mx=Cat(Const(0, EXT - SIG), x[:FB], ex != 0),
                   my=Cat(Const(0, EXT - SIG), y[:FB], ey != 0),
                   shift=(Mux(diff > EXT, EXT, diff), range(EXT + 1)))

        # --- align y (every bit shifted out is ORed into the LSB), add or subtract ---------
        lost = (s1.my & ((Const(1, EXT + 1) << s1.shift) - 1)[:EXT]).any()
        my_al = Cat((s1.my >> s1.shift) | lost, Const(0, 1))
        s2 = _step(m, "sum", "sum" in reg, **_carry(s1, *passed),
                   total=(s1.mx + (my_al ^ s1.sub.replicate(EXT + 1)) + s1.sub, EXT + 1))

        # --- normalise: a carry shifts right by one; otherwise the leading one goes up to the
        # hidden-bit position, but not below the smallest exponent (a subnormal result): a
        # marker bit at that limit caps the leading-zero count
        limit = Const(1 << (EXT - 1), EXT) >> (s2.ex_eff - 1).as_unsigned()
        s3 = _step(m, "lzc", "lzc" in reg, **_carry(s2, *passed, "total"),
                   left=(_lzc(s2.total[:EXT] | limit, EXT), range((1 << ceil_log2(EXT)) + 1)))

        total, carry = s3.total, s3.total[EXT]
        s4 = _step(m, "norm", "norm" in reg, **_carry(s3, "spec", "spec_y"),
                   norm=(Mux(carry, Cat(total[0] | total[1], total[2:]), total << s3.left), EXT),
                   exp_res=(Mux(carry, s3.ex_eff + 1, s3.ex_eff - s3.left), BINARY32.exp_bits),
                   overflow=carry & (s3.ex_eff == BINARY32.exp_max - 1),
                   # exact cancellation is +0 (round to nearest); (-0) + (-0) keeps its sign
                   sign=s3.sx & ~(s3.sub & (total == 0)))

        # --- round to nearest even, pack, select ----------------------------------------------
        norm = s4.norm
        mag = _round_pack(norm[3:], guard=norm[2], sticky=norm[1] | norm[0],
                          exp_field=Mux(norm[EXT - 1], s4.exp_res, 0))
        with m.If(s4.spec):
            m.d.comb += self.y.eq(s4.spec_y)
        with m.Elif(s4.overflow):  # carry out of the largest binade
            m.d.comb += self.y.eq(Cat(_INF_MAG, s4.sign))
        with m.Else():
            m.d.comb += self.y.eq(Cat(mag, s4.sign))
        return m


class Bf16MulF32(wiring.Component):
    """BF16 x BF16 -> binary32 multiplier: ``y = widen(a) ⊗ widen(b)``, combinational.

    The exact product has at most 16 significant bits, so it only rounds in the subnormal range
    (ties to even, possibly to ±0) and only overflows when the exact product is at least 2^128.

    Parameters
    ----------
    stages : iterable of str
        Steps of the datapath (:data:`STEPS`: ``product``, ``lzc``, ``norm``, ``denorm``) whose
        outputs are registers; ``y`` then follows ``a`` and ``b`` by ``latency = len(stages)``
        cycles, accepting new operands every cycle. The rounding and packing after
        ``denorm`` stay combinational.

    Attributes
    ----------
    a, b : In(16)
        BF16 bit patterns.
    y : Out(32)
        the binary32 product; NaN results are ``0x7FC00000``.
    latency : int
        cycles from ``a``, ``b`` to ``y`` (0: combinational).
    """

    #: The datapath's steps, in order; each may end in a pipeline register.
    STEPS = ("product", "lzc", "norm", "denorm")

    def __init__(self, *, stages=()):
        self.stages = _check_stages("Bf16MulF32", stages, self.STEPS)
        self.latency = len(self.stages)
        super().__init__({"a": In(BFLOAT16.width), "b": In(BFLOAT16.width),
                          "y": Out(BINARY32.width)})

    def elaborate(self, platform):
        m = Module()
        _multiply(m, self.a, self.b, BFLOAT16, self.y, self.stages)
        return m


def _multiply(m: Module, a: Value, b: Value, fmt: FloatFormat, y: Value,
              stages: frozenset[str] = frozenset()) -> None:
    """``y = a ⊗ b`` rounded to binary32 for operands in ``fmt`` (BF16 or binary32), in ``m``.

    The significand product (subnormal operands without the hidden bit) is normalised by its
    leading-zero count; a product wider than the binary32 significand plus guard folds the bits
    below the guard into one sticky bit; a result below the smallest normal is shifted onto the
    subnormal grid before the single rounding (ties to even). Overflow gives ±Inf; ``0 x Inf``
    and NaN operands give ``0x7FC00000``. The steps named in ``stages`` end in a register.
    """
    W, FB = fmt.width, fmt.frac_bits
    PW = 2 * (FB + 1)  # product width
    EXT = BINARY32.frac_bits + 3  # binary32 significand, guard bit and one sticky position
    # value = 1.f * 2^(ea + eb - 2 bias - 2 FB + PW - 1 - lz) for a nonzero product with lz
    # leading zeros (subnormal operands count with exponent 1); e_off is that biased binary32
    # exponent plus OFF, never negative
    OFF = fmt.bias - 1 + PW - 1
    passed = ("spec", "spec_y", "sign")

    # --- specials, significand product, exponent sum ------------------------------------------
    mag_a, mag_b = a[:W - 1], b[:W - 1]
    a_inf, b_inf = mag_a == fmt.inf_mag, mag_b == fmt.inf_mag
    a_zero, b_zero = mag_a == 0, mag_b == 0
    nan = ((mag_a > fmt.inf_mag) | (mag_b > fmt.inf_mag) | (a_inf & b_zero)
           | (b_inf & a_zero))
    sign = a[W - 1] ^ b[W - 1]
    ea, eb = a[FB:W - 1], b[FB:W - 1]
    s1 = _step(m, "product", "product" in stages,
               spec=nan | a_inf | b_inf | a_zero | b_zero,
               spec_y=Mux(nan, CANON_NAN_F32,
                          Cat(Mux(a_inf | b_inf, _INF_MAG, 0)[:BINARY32.width - 1], sign)),
               sign=sign,
               prod=(Cat(a[:FB], ea != 0) * Cat(b[:FB], eb != 0), PW),
               e_sum=Mux(ea == 0, 1, ea) + Mux(eb == 0, 1, eb))
    s2 = _step(m, "lzc", "lzc" in stages, **_carry(s1, *passed, "prod", "e_sum"),
               lz=(_lzc(s1.prod, PW), range(PW + 1)))

    # --- normalise; below the smallest normal, the shift onto the subnormal grid ------------
    e_off = (s2.e_sum + (PW - 1) - s2.lz)[:fmt.exp_bits + 2]
    normal = e_off > OFF
    top = (s2.prod << s2.lz)[:PW]
    if PW <= EXT:  # a BF16 product fits: nothing to fold
        wide = Cat(Const(0, EXT - PW), top)
    else:  # the bits below the guard position fold into one sticky bit
        wide = Cat(top[PW - EXT] | top[:PW - EXT].any(), top[PW - EXT + 1:])
    s3 = _step(m, "norm", "norm" in stages, **_carry(s2, *passed),
               wide=(wide, EXT),
               under=(Mux(normal, 0, Mux(e_off + EXT <= OFF + 1, EXT, OFF + 1 - e_off)),
                      range(EXT + 1)),
               exp_field=(Mux(normal, e_off - OFF, 0), BINARY32.exp_bits),
               overflow=e_off >= OFF + BINARY32.exp_max)
    lost = (s3.wide & ((Const(1, EXT + 1) << s3.under) - 1)[:EXT]).any()
    s4 = _step(m, "denorm", "denorm" in stages, **_carry(s3, *passed, "exp_field", "overflow"),
               shifted=(s3.wide >> s3.under, EXT), lost=lost)

    # --- round to nearest even, pack, select ------------------------------------------------
    sh = s4.shifted
    mag = _round_pack(sh[2:], guard=sh[1], sticky=sh[0] | s4.lost, exp_field=s4.exp_field)
    with m.If(s4.spec):
        m.d.comb += y.eq(s4.spec_y)
    with m.Elif(s4.overflow):
        m.d.comb += y.eq(Cat(_INF_MAG, s4.sign))
    with m.Else():
        m.d.comb += y.eq(Cat(mag, s4.sign))


class F32ToBf16(wiring.Component):
    """Binary32 -> BF16 rounding (docs/numerics.md §3), combinational.

    ``y = (a + 0x7FFF + a[16]) >> 16`` on the bit pattern (nearest, ties to even, overflow to
    ±Inf, exact on the subnormal grid); any NaN gives ``0x7FC0``.

    Attributes
    ----------
    a : In(32)
        binary32 bit pattern.
    y : Out(16)
        BF16 bit pattern.
    """

    def __init__(self):
        super().__init__({"a": In(BINARY32.width), "y": Out(BFLOAT16.width)})

    def elaborate(self, platform):
        m = Module()
        a = self.a
        half = (1 << (_WIDEN_SHIFT - 1)) - 1
        rounded = a + half + a[_WIDEN_SHIFT]
        with m.If(a[:BINARY32.width - 1] > BINARY32.inf_mag):
            m.d.comb += self.y.eq(CANON_NAN_BF16)
        with m.Else():
            m.d.comb += self.y.eq(rounded[_WIDEN_SHIFT:BINARY32.width])
        return m


class F32Mul(wiring.Component):
    """Binary32 multiplier: ``y = a ⊗ b`` (one rounding, round to nearest even), combinational.

    The 24 x 24-bit significand product (subnormal operands without the hidden bit) is
    normalised by its leading-zero count, the bits below the guard bit are ORed into one sticky
    bit, and a result below the smallest normal is shifted onto the subnormal grid before the
    single rounding (ties to even, possibly to ±0 with the sign kept). Overflow gives ±Inf
    (also by rounding up from ``FLT_MAX``); ``0 x Inf`` and NaN operands give ``0x7FC00000``;
    a zero operand gives a zero with the XOR of the signs.

    Attributes
    ----------
    a, b : In(32)
        binary32 bit patterns.
    y : Out(32)
        ``a * b`` rounded to binary32; NaN results are ``0x7FC00000``.
    """

    def __init__(self):
        width = BINARY32.width
        super().__init__({"a": In(width), "b": In(width), "y": Out(width)})

    def elaborate(self, platform):
        m = Module()
        _multiply(m, self.a, self.b, BINARY32, self.y)
        return m
