"""Golden numerics (sim/numerics.py) against ml_dtypes, float64 math, and an independent scalar
model of docs/numerics.md.

The scalar model does one binary32 operation at a time on Python floats: the exact binary64
result of a binary32 +, - or * rounded once to binary32 is the correctly rounded binary32 result
(53 >= 2*24 + 2), and ``struct``'s float cast does that rounding (RNE, subnormals kept). Its
constants are the hex values the spec lists, not the module's, so the two are checked against
each other.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimgpt.sim import numerics as nm
from pimgpt.sim import numerics_report as report

F32 = np.float32
F64 = np.float64
CANON = 0x7FC00000
FLT_MAX = float(np.finfo(F32).max)
TINY = 2.0 ** -126

# --- the scalar model ----------------------------------------------------------------------------


def r32(v: float) -> float:
    """v rounded to binary32: nearest, ties to even, subnormals kept, overflow to +-Inf."""
    if v != v:
        return math.nan
    try:
        return struct.unpack("<f", struct.pack("<f", v))[0]
    except OverflowError:  # struct refuses what rounds to Inf; IEEE gives Inf
        return math.copysign(math.inf, v)


def bits(v: float) -> int:
    """binary32 pattern of a binary32 value; any NaN as the canonical NaN."""
    return CANON if v != v else struct.unpack("<I", struct.pack("<f", v))[0]


def from_bits(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b & 0xFFFFFFFF))[0]


def add(a: float, b: float) -> float:
    return r32(a + b)


def sub(a: float, b: float) -> float:
    return r32(a - b)


def mul(a: float, b: float) -> float:
    return r32(a * b)


# constants exactly as docs/numerics.md gives them
LOG2E = from_bits(0x3FB8AA3B)
LN2_HI = from_bits(0x3F317200)
LN2_LO = from_bits(0x35BFBE8E)
EXP_HI = from_bits(0x42B17218)
EXP_LO = from_bits(0xC2CFF1B5)
EXP_C = [from_bits(b) for b in (0x3F800000, 0x3F800000, 0x3F000000, 0x3E2AAAAB, 0x3D2AAAAB,
                                0x3C088889, 0x3AB60B61, 0x39500D01)]
RECIP_A = from_bits(0x4034B4B5)
RECIP_B = from_bits(0x3FF0F0F1)
MAGIC = 0x5F3759DF
GELU_C = from_bits(0x3F4C422A)
GELU_A = from_bits(0x3D372713)


def scale2(y: float, k: int) -> float:
    k1 = k >> 1  # floor(k / 2)
    return mul(mul(y, 2.0 ** k1), 2.0 ** (k - k1))


def ref_exp(x: float) -> float:
    if x != x:
        return math.nan
    if x > EXP_HI:
        return math.inf
    if x < EXP_LO:
        return 0.0
    k = round(mul(x, LOG2E))  # Python's round: ties to even
    r = sub(sub(x, mul(k, LN2_HI)), mul(k, LN2_LO))
    p = EXP_C[7]
    for c in reversed(EXP_C[:7]):
        p = add(mul(p, r), c)
    return scale2(p, k)


def ref_recip(x: float) -> float:
    if x != x:
        return math.nan
    if x == 0:
        return math.copysign(math.inf, x)
    if math.isinf(x):
        return math.copysign(0.0, x)
    m, e = math.frexp(abs(x))
    y = sub(RECIP_A, mul(RECIP_B, m))
    for _ in range(3):
        y = mul(y, sub(2.0, mul(m, y)))
    y = scale2(y, -e)
    return -y if x < 0 else y


def ref_rsqrt(x: float) -> float:
    if x != x or x < 0:
        return math.nan
    if x == 0:
        return math.copysign(math.inf, x)
    if math.isinf(x):
        return 0.0
    sub_in = x < TINY
    xs = mul(x, 2.0 ** 24) if sub_in else x
    y = from_bits(MAGIC - (bits(xs) >> 1))
    h = mul(0.5, xs)
    for _ in range(3):
        y = mul(y, sub(1.5, mul(h, mul(y, y))))
    return mul(y, 2.0 ** 12) if sub_in else y


def ref_gelu(x: float) -> float:
    if x == -math.inf:
        return -0.0
    u = mul(GELU_C, add(x, mul(GELU_A, mul(mul(x, x), x))))
    e = ref_exp(add(u, u))
    th = sub(1.0, mul(ref_recip(add(e, 1.0)), 2.0))
    return mul(mul(0.5, x), add(1.0, th))


def ref_tree(v: list[float]) -> float:
    while len(v) > 1:
        v = [add(v[2 * i], v[2 * i + 1]) for i in range(len(v) // 2)]
    return v[0]


def ref_vsum(x: list[float], lanes: int) -> float:
    acc = [0.0] * lanes
    for i, v in enumerate(x):
        acc[i % lanes] = add(acc[i % lanes], v)
    return ref_tree(acc)


def ref_argmax(x: list[float]) -> int:
    best = None
    for i, v in enumerate(x):
        if v == v and (best is None or v > x[best]):
            best = i
    return 0 if best is None else best


def ref_vmax(x: list[float]) -> float:
    return math.nan if any(v != v for v in x) else x[ref_argmax(x)]


def ref_mac_dot(x: list[float], w: list[float], lanes: int, acc: float = 0.0) -> float:
    pad = -len(x) % lanes
    x, w = x + [0.0] * pad, w + [0.0] * pad
    for c in range(0, len(x), lanes):
        acc = add(acc, ref_tree([mul(a, b) for a, b in zip(x[c:c + lanes], w[c:c + lanes])]))
    return acc


def ref_softmax(x: list[float], lanes: int) -> list[float]:
    m = ref_vmax(x)
    e = [ref_exp(sub(v, m)) for v in x]
    r = ref_recip(ref_vsum(e, lanes))
    return [mul(v, r) for v in e]


def ref_layernorm(x, g, b, eps, lanes):
    inv_n = r32(1.0 / len(x))
    mean = mul(ref_vsum(x, lanes), inv_n)
    xc = [sub(v, mean) for v in x]
    var = mul(ref_vsum([mul(v, v) for v in xc], lanes), inv_n)
    r = ref_rsqrt(add(var, r32(eps)))
    return [add(mul(mul(v, r), gg), bb) for v, gg, bb in zip(xc, g, b)]


# --- helpers -------------------------------------------------------------------------------------

def u32(a) -> np.ndarray:
    return np.asarray(a, F32).view(np.uint32)


def assert_bits(got, want: list[float]) -> None:
    """Bit-exact comparison; NaNs must be the canonical one."""
    got = np.atleast_1d(np.asarray(got))
    assert got.dtype == F32
    exp_bits = np.array([bits(v) for v in want], np.uint32)
    bad = np.flatnonzero(u32(got) != exp_bits)
    assert bad.size == 0, [(int(i), hex(int(u32(got)[i])), hex(int(exp_bits[i])))
                           for i in bad[:5]]


def bf16_values(rng: np.random.Generator, shape, mix: bool = True) -> np.ndarray:
    """BF16 values (as binary32) from every corner: any finite exponent, subnormals, +-0, +-Inf,
    NaN, values near 1, and exact negations for cancellation."""
    n = int(np.prod(shape))
    pats = rng.integers(0, 0x10000, n).astype(np.uint16)  # anything, NaNs included
    if mix:
        kind = rng.integers(0, 8, n)
        near1 = (0x3F80 + rng.integers(-64, 64, n)).astype(np.uint16)
        sub = rng.integers(1, 0x80, n).astype(np.uint16)
        special = rng.choice(np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x7F7F, 0xFF7F,
                                       0x0080], np.uint16), n)
        pats = np.where(kind == 1, near1, pats)
        pats = np.where(kind == 2, sub, pats)
        pats = np.where(kind == 3, special, pats)
        pats = np.where(kind >= 4, near1 ^ np.uint16(0x8000) * rng.integers(0, 2, n)
                        .astype(np.uint16), pats)
    return nm.bf16_bits_to_f32(pats.reshape(shape))


def finite_bf16(rng: np.random.Generator, shape, lo_exp: int = -20, hi_exp: int = 20):
    v = rng.uniform(1.0, 2.0, shape) * 2.0 ** rng.integers(lo_exp, hi_exp, shape)
    return nm.round_bf16((v * rng.choice([-1.0, 1.0], shape)).astype(F32))


# --- the scalar model is itself right ------------------------------------------------------------

def test_r32_matches_numpy_cast_and_exhibits_each_rounding_case():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.standard_normal(20000) * 10.0 ** rng.integers(-45, 39, 20000),
                        [2.0 ** -150, 2.0 ** -150 * 3, 2.0 ** -151, 1 + 2.0 ** -24,
                         1 + 3 * 2.0 ** -24, FLT_MAX + 2.0 ** 102, FLT_MAX + 2.0 ** 103,
                         -0.0]])
    with np.errstate(over="ignore"):
        want = v.astype(F32)
    got = np.array([r32(float(t)) for t in v], F32)
    assert (u32(got) == u32(want)).all()
    assert r32(2.0 ** -150) == 0.0 and r32(3 * 2.0 ** -150) == 2.0 ** -148  # ties to even
    assert r32(1 + 2.0 ** -24) == 1.0 and r32(1 + 3 * 2.0 ** -24) == 1 + 2.0 ** -22
    # FLT_MAX + half an ulp (2^103) is a tie whose even neighbour is 2^128: Inf
    assert r32(FLT_MAX + 2.0 ** 102) == FLT_MAX and r32(FLT_MAX + 2.0 ** 103) == math.inf


def test_constants_are_the_documented_ones():
    pairs = [(nm.LOG2E, LOG2E), (nm.LN2_HI, LN2_HI), (nm.LN2_LO, LN2_LO), (nm.EXP_HI, EXP_HI),
             (nm.EXP_LO, EXP_LO), (nm.RECIP_SEED_A, RECIP_A), (nm.RECIP_SEED_B, RECIP_B),
             (nm.GELU_C, GELU_C), (nm.GELU_A, GELU_A), *zip(nm.EXP_COEFFS, EXP_C)]
    for mod, doc in pairs:
        assert isinstance(mod, F32) and bits(float(mod)) == bits(doc)
    assert len(nm.EXP_COEFFS) == 8 and nm.EXP_ORDER == 7
    assert int(nm.RSQRT_MAGIC) == MAGIC and nm.RECIP_ITERS == 3 and nm.RSQRT_ITERS == 3
    # each is the binary32 nearest its exact value
    nearest = lambda q: r32(float(q))  # noqa: E731 - binary64 then binary32: no tie here
    assert EXP_C == [nearest(Fraction(1, math.factorial(k))) for k in range(8)]
    assert RECIP_A == nearest(Fraction(48, 17)) and RECIP_B == nearest(Fraction(32, 17))
    assert GELU_A == nearest(Fraction("0.044715")) and LOG2E == r32(1 / math.log(2))
    assert GELU_C == r32(math.sqrt(2 / math.pi))
    # LN2_HI is ln 2 cut to 15 bits; LN2_LO the binary32 nearest the remainder (ln 2 to 60 digits)
    ln2 = Fraction("0.693147180559945309417232121458176568075500134360255254120680")
    assert Fraction(LN2_HI) == Fraction(math.floor(ln2 * 2 ** 15), 2 ** 15)
    rest = ln2 - Fraction(LN2_HI)
    lo = F32(LN2_LO)
    for other in (np.nextafter(lo, F32(0)), np.nextafter(lo, F32(1))):
        assert abs(Fraction(LN2_LO) - rest) < abs(Fraction(float(other)) - rest)
    # k * LN2_HI is exact for |k| <= 255: LN2_HI has 15 significant bits
    assert all(mul(k, LN2_HI) == k * LN2_HI for k in range(-255, 256))


def test_layernorm_inv_n_is_correctly_rounded():
    """1/n via binary64 then binary32 (what layernorm does) is the binary32 nearest 1/n."""
    for n in range(1, 1 << 16):
        q = F32(1.0 / n)
        lo, hi = np.nextafter(q, F32(0)), np.nextafter(q, F32(1))
        exact = Fraction(1, n)
        err = abs(Fraction(float(q)) - exact)
        assert err <= abs(Fraction(float(lo)) - exact) and err <= abs(Fraction(float(hi)) - exact)
        if err == abs(Fraction(float(lo)) - exact) or err == abs(Fraction(float(hi)) - exact):
            assert bits(float(q)) % 2 == 0  # a tie must go to even


# --- BF16 ----------------------------------------------------------------------------------------

def _ml_bf16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, F32).astype(ml_dtypes.bfloat16).view(np.uint16)


def test_bf16_rounding_matches_ml_dtypes_on_random_patterns():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 1 << 32, 1 << 21, dtype=np.uint64).astype(np.uint32).view(F32)
    got = nm.f32_to_bf16_bits(x)
    assert got.dtype == np.uint16 and got.shape == x.shape
    nan = np.isnan(x)
    assert (got[~nan] == _ml_bf16(x[~nan])).all()
    assert (got[nan] == 0x7FC0).all() and nan.sum() > 1000


def test_bf16_rounding_every_high_half_with_each_kind_of_low_half():
    """All 65536 upper halves x {0, 1, just under half, tie, just over half, all ones}: the
    integer rule (round up above half, ties to an even result) and ml_dtypes agree."""
    hi = np.arange(1 << 16, dtype=np.uint32)
    for low in (0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF):
        pat = (hi << np.uint32(16)) | np.uint32(low)
        x = pat.view(F32)
        got = nm.f32_to_bf16_bits(x).astype(np.uint32)
        nan = np.isnan(x)
        up = (low > 0x8000) | ((low == 0x8000) & ((hi & 1) == 1))
        want = hi + up.astype(np.uint32)
        assert (got[~nan] == want[~nan]).all(), low
        assert (got[~nan] == _ml_bf16(x[~nan])).all(), low
        assert (got[nan] == 0x7FC0).all()


@pytest.mark.parametrize("f32,bf16", [
    (0x00000000, 0x0000), (0x80000000, 0x8000),  # +-0 keep their sign
    (0x00000001, 0x0000), (0x80000001, 0x8000),  # tiniest subnormal rounds to a signed zero
    (0x00008000, 0x0000), (0x00018000, 0x0002),  # subnormal ties: to even
    (0x00008001, 0x0001), (0x007FFFFF, 0x0080),  # largest subnormal rounds up to TINY
    (0x3F808000, 0x3F80), (0x3F818000, 0x3F82), (0x3F807FFF, 0x3F80), (0x3F808001, 0x3F81),
    (0x7F7E8000, 0x7F7E), (0x7F7F7FFF, 0x7F7F),  # largest finite BF16 kept
    (0x7F7F8000, 0x7F80), (0x7F7FFFFF, 0x7F80), (0xFF7FFFFF, 0xFF80),  # overflow to +-Inf
    (0x7F800000, 0x7F80), (0xFF800000, 0xFF80),
    (0x7F800001, 0x7FC0), (0x7F80FFFF, 0x7FC0), (0x7FC00000, 0x7FC0), (0xFFC00000, 0x7FC0),
    (0x7FFFFFFF, 0x7FC0), (0xFFFFFFFF, 0x7FC0), (0xFFFF8001, 0x7FC0),  # every NaN: canonical
])
def test_bf16_rounding_edge_cases(f32, bf16):
    x = np.array([f32], np.uint32).view(F32)
    assert int(nm.f32_to_bf16_bits(x)[0]) == bf16
    scalar = nm.f32_to_bf16_bits(x[0])  # scalar in, scalar out (NaN included)
    assert isinstance(scalar, np.uint16) and int(scalar) == bf16
    assert int(nm.f32_to_bf16_bits(x.reshape(()))) == bf16


def test_bf16_widening_is_exact_for_every_pattern():
    b = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    f = nm.bf16_bits_to_f32(b)
    assert f.dtype == F32
    assert (u32(f) == b.astype(np.uint32) << np.uint32(16)).all()  # NaN payloads too
    ok = ~np.isnan(f)
    assert (u32(b[ok].view(ml_dtypes.bfloat16).astype(F32)) == u32(f[ok])).all()
    back = nm.f32_to_bf16_bits(f)
    assert (back[ok] == b[ok]).all() and (back[~ok] == 0x7FC0).all()


def test_round_bf16_lands_on_the_bf16_grid():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(100000) * 10.0 ** rng.integers(-40, 38, 100000)).astype(F32)
    y = nm.round_bf16(x)
    assert y.dtype == F32 and (u32(y) & 0xFFFF == 0).all()
    assert (u32(nm.round_bf16(y)) == u32(y)).all()
    assert (u32(y) == (nm.f32_to_bf16_bits(x).astype(np.uint32) << 16)).all()
    assert isinstance(nm.round_bf16(F32(1.00390625)), F32)
    assert float(nm.round_bf16(F32(1.00390625))) == 1.0  # tie to even
    assert u32(nm.round_bf16(np.array([np.nan], F32)))[0] == CANON


# --- bank MAC ------------------------------------------------------------------------------------

def _check_mac_dot(x: np.ndarray, w: np.ndarray, lanes: int) -> None:
    got = nm.mac_dot(x, w, lanes)
    assert got.dtype == F32 and got.shape == (w.shape[0],)
    want = [ref_mac_dot(x.tolist(), row.tolist(), lanes) for row in w]
    assert_bits(got, want)


@pytest.mark.parametrize("lanes", [1, 2, 4, 16])
@pytest.mark.parametrize("n", [1, 3, 16, 17, 64, 100])
def test_mac_dot_matches_scalar_model_random(lanes, n):
    rng = np.random.default_rng(lanes * 1000 + n)
    _check_mac_dot(finite_bf16(rng, n), finite_bf16(rng, (40, n)), lanes)


@pytest.mark.parametrize("seed", range(6))
def test_mac_dot_matches_scalar_model_adversarial(seed):
    """Overflowing and subnormal products, Inf, NaN, +-0, cancellation, exponent spread."""
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 80))
    _check_mac_dot(bf16_values(rng, n), bf16_values(rng, (60, n)), 16)
    _check_mac_dot(finite_bf16(rng, n, -133, 127), finite_bf16(rng, (60, n), -133, 127), 16)


def test_mac_order_is_visible_and_followed():
    """Inputs whose sum depends on the order: only the documented tree/column order fits."""
    big = 2.0 ** 25  # binary32 spacing 4 above it, 2 below: big +- 1 rounds back to +-big
    w = np.ones((1, 4), F32)
    x = np.array([big, 1.0, -big, 1.0], F32)
    assert float(nm.mac_dot(x, w, 4)[0]) == 0.0  # tree: (big + 1) + (-big + 1) = big - big
    assert float(nm.mac_dot(x, w, 2)[0]) == 0.0  # columns: (big + 1), then (-big + 1)
    assert float(nm.mac_dot(x, w, 1)[0]) == 1.0  # big, +1 lost, -big: 0, +1
    x = np.array([1.0, 1.0, big, -big], F32)
    assert float(nm.mac_dot(x, w, 4)[0]) == 2.0  # tree: (1 + 1) + (big - big)
    assert float(nm.mac_dot(x, w, 1)[0]) == 0.0  # 2 + big is a tie, to even: big; - big


def test_mac_signed_zero_inf_nan():
    z = np.zeros(16, F32)
    neg = np.full(16, -1.0, F32)
    # products all -0: the tree keeps -0, the accumulator (+0 after clear) + -0 is +0
    assert bits(float(nm.mac_tree((neg * z)[None])[0])) == 0x80000000
    assert bits(float(nm.mac_dot(neg, z[None], 16)[0])) == 0x00000000
    # an accumulator already at -0 stays -0 on a -0 tree
    acc = nm.mac_accumulate(np.array([-0.0], F32), (neg * 0)[None, None], z[None])
    assert bits(float(acc[0])) == 0x80000000
    inf = np.array([np.inf] + [1.0] * 15, F32)
    assert float(nm.mac_dot(inf, np.ones((1, 16), F32), 16)[0]) == math.inf
    assert bits(float(nm.mac_dot(inf, np.zeros((1, 16), F32), 16)[0])) == CANON  # Inf * 0
    mixed = np.array([np.inf, -np.inf] + [0.0] * 14, F32)
    assert bits(float(nm.mac_dot(mixed, np.ones((1, 16), F32), 16)[0])) == CANON  # Inf - Inf
    snan = np.array([0x7F810000], np.uint32).view(F32)  # a signalling BF16 NaN
    x = np.concatenate([snan, np.ones(15, F32)])
    assert bits(float(nm.mac_dot(x, np.ones((1, 16), F32), 16)[0])) == CANON
    big = np.full(16, 2.0 ** 127, F32)
    assert float(nm.mac_dot(big, np.full((1, 16), 2.0, F32), 16)[0]) == math.inf


def test_mac_products_exact_unless_out_of_range():
    """A BF16 x BF16 product (<= 16 significant bits) is exact in binary32 unless it overflows
    or has bits below 2^-149."""
    rng = np.random.default_rng(4)
    a = finite_bf16(rng, 200000, -140, 127)
    b = finite_bf16(rng, 200000, -140, 127)
    got = np.array([nm.mac_dot(a[i:i + 1], b[i:i + 1, None].T, 1)[0]
                    for i in range(0, 200000, 97)], F32)
    exact = a[::97].astype(F64) * b[::97].astype(F64)
    with np.errstate(over="ignore"):
        rounded = exact.astype(F32)
    zero_sign = rounded == 0  # the +0 accumulator turns a -0 (underflowed) product into +0
    assert (u32(got)[~zero_sign] == u32(rounded)[~zero_sign]).all()
    in_range = (np.abs(exact) < 2.0 ** 128) & (np.abs(exact) >= TINY)
    assert (got[in_range].astype(F64) == exact[in_range]).all() and in_range.sum() > 1000
    assert (np.isinf(got) == (np.abs(exact) >= 2.0 ** 128)).all()
    assert (got[zero_sign] == 0).all() and (u32(got[zero_sign]) == 0).all()
    assert zero_sign.sum() > 10 and (~in_range & ~zero_sign & np.isfinite(got)).sum() > 10


def test_mac_accumulate_banks_columns_and_initial_value():
    rng = np.random.default_rng(5)
    for _ in range(20):
        banks, ncols, lanes = 3, int(rng.integers(1, 6)), 8
        rows = bf16_values(rng, (banks, ncols, lanes))
        gb = bf16_values(rng, (ncols, lanes))
        acc0 = rng.standard_normal(banks).astype(F32) * F32(2.0 ** int(rng.integers(-10, 10)))
        got = nm.mac_accumulate(acc0, rows, gb)
        want = [ref_mac_dot(gb.reshape(-1).tolist(), rows[b].reshape(-1).tolist(), lanes,
                            float(acc0[b])) for b in range(banks)]
        assert_bits(got, want)


def test_mac_tree_pairs_neighbours_level_by_level():
    rng = np.random.default_rng(6)
    for lanes in (1, 2, 4, 8, 16, 32):
        with np.errstate(all="ignore"):
            p = bf16_values(rng, (50, lanes)) * finite_bf16(rng, (50, lanes))
        assert_bits(nm.mac_tree(p), [ref_tree(r.tolist()) for r in p])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)), min_size=1,
                max_size=40), st.sampled_from([1, 2, 4, 16]))
def test_mac_dot_matches_scalar_model_hypothesis(pairs, lanes):
    x = nm.bf16_bits_to_f32(np.array([a for a, _ in pairs], np.uint16))
    w = nm.bf16_bits_to_f32(np.array([[b for _, b in pairs]], np.uint16))
    _check_mac_dot(x, w, lanes)


# --- vector sum, max, argmax ---------------------------------------------------------------------

@pytest.mark.parametrize("lanes", [1, 2, 4, 16])
def test_vsum_lane_order(lanes):
    rng = np.random.default_rng(7 + lanes)
    for n in [0, 1, lanes - 1, lanes, lanes + 1, 3 * lanes + 2, 257]:
        for x in (rng.standard_normal(n).astype(F32) * F32(1e4),
                  bf16_values(rng, max(n, 0)), finite_bf16(rng, n, -140, 127)):
            got = nm.vsum(x, lanes)
            assert isinstance(got, F32)
            assert_bits(got, [ref_vsum(x.tolist(), lanes)])


def test_vsum_order_and_zero_rules():
    big = 2.0 ** 24
    x = np.array([big, 1.0, 1.0, 1.0, -big, 1.0, 1.0, 1.0], F32)
    # lanes=4: lane 0 = big - big = 0, lanes 1..3 = 2 each; tree: (0 + 2) + (2 + 2) = 6
    assert float(nm.vsum(x, 4)) == 6.0
    # lanes=1: big+1+1+1 each lost, then -big: 0, then +3
    assert float(nm.vsum(x, 1)) == 3.0
    assert bits(float(nm.vsum(np.full(5, -0.0, F32), 4))) == 0  # lanes start at +0
    assert bits(float(nm.vsum(np.array([], F32), 4))) == 0
    assert bits(float(nm.vsum(np.array([np.inf, -np.inf], F32), 4))) == CANON
    assert float(nm.vsum(np.array([3e38, 3e38], F32), 1)) == math.inf


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, math.inf, -math.inf, math.nan]),
                max_size=20))
def test_argmax_and_max_rules_hypothesis(values):
    x = np.array(values, F32)
    assert nm.vargmax(x) == ref_argmax(values)
    if values:
        assert_bits(np.asarray(nm.vmax(x)).reshape(1), [ref_vmax(values)])


def test_argmax_rules():
    nan, inf = math.nan, math.inf
    cases = {(1.0, 3.0, 3.0, 2.0): 1, (nan, 1.0, nan, 1.0): 1, (-0.0, 0.0): 0, (0.0, -0.0): 0,
             (nan, nan): 0, (): 0, (-inf, nan): 0, (nan, -inf): 1, (nan, inf, inf): 1,
             (-1.0, nan, -0.0): 2}
    for x, want in cases.items():
        assert nm.vargmax(np.array(x, F32)) == want, x
    assert bits(float(nm.vmax(np.array([-0.0, 0.0], F32)))) == 0x80000000  # the first one
    assert bits(float(nm.vmax(np.array([0.0, -0.0], F32)))) == 0
    assert bits(float(nm.vmax(np.array([1.0, nan], F32)))) == CANON
    assert isinstance(nm.vmax(np.array([1.0, 2.0], F32)), F32)


# --- ASIC functions: bit-exact against the scalar model ------------------------------------------

def _probe_points(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    specials = [0.0, -0.0, math.inf, -math.inf, math.nan, TINY, -TINY, 2.0 ** -149, -2.0 ** -149,
                1e-40, -1e-40, FLT_MAX, -FLT_MAX, 1.0, -1.0, 0.5, 2.0, 3.0]
    return np.concatenate([rng.uniform(lo, hi, n), specials]).astype(F32)


def _log_points(rng: np.random.Generator, n: int) -> np.ndarray:
    mag = np.exp(rng.uniform(math.log(2.0 ** -149), math.log(FLT_MAX), n))
    return (mag * rng.choice([-1.0, 1.0], n)).astype(F32)


def _check_elementwise(fn, ref, x: np.ndarray) -> None:
    got = fn(x)
    assert got.dtype == F32 and got.shape == x.shape
    assert_bits(got, [ref(float(v)) for v in x])


def test_exp_matches_scalar_model():
    rng = np.random.default_rng(8)
    ln2 = math.log(2)
    ties = (np.arange(-151, 129) + 0.5) * ln2  # where k = rint(x log2e) switches
    near = np.concatenate([np.nextafter(ties.astype(F32), F32(np.inf)),
                           np.nextafter(ties.astype(F32), F32(-np.inf)), ties.astype(F32)])
    thr = np.array([EXP_HI, EXP_LO], F32)
    edges = np.concatenate([thr, np.nextafter(thr, F32(0)), np.nextafter(thr, F32(200))])
    x = np.concatenate([_probe_points(rng, -110, 95, 20000), near, edges,
                        rng.uniform(-1e-3, 1e-3, 1000).astype(F32)])
    _check_elementwise(nm.vexp, ref_exp, x)


def test_recip_matches_scalar_model():
    rng = np.random.default_rng(9)
    x = np.concatenate([_probe_points(rng, -10, 10, 5000), _log_points(rng, 15000)])
    _check_elementwise(nm.vrecip, ref_recip, x)


def test_rsqrt_matches_scalar_model():
    rng = np.random.default_rng(10)
    x = np.concatenate([_probe_points(rng, -1, 100, 5000), np.abs(_log_points(rng, 15000)),
                        _log_points(rng, 1000)])
    _check_elementwise(nm.vrsqrt, ref_rsqrt, x)


def test_gelu_matches_scalar_model():
    rng = np.random.default_rng(11)
    x = np.concatenate([_probe_points(rng, -12, 12, 15000), _log_points(rng, 5000)])
    _check_elementwise(nm.vgelu, ref_gelu, x)


@pytest.mark.parametrize("lanes", [1, 4, 16])
def test_softmax_matches_scalar_model(lanes):
    rng = np.random.default_rng(12 + lanes)
    for n in (1, 2, 5, 16, 33, 300):
        for scale in (0.1, 3.0, 40.0):
            x = (scale * rng.standard_normal(n)).astype(F32)
            assert_bits(nm.softmax(x, lanes), ref_softmax(x.tolist(), lanes))
    for x in ([0.0, -math.inf, 1.0], [-math.inf, -math.inf], [math.inf, 1.0], [1.0, math.nan],
              [5.0, 5.0, 5.0], [-0.0, 0.0], [-200.0, 0.0]):
        assert_bits(nm.softmax(np.array(x, F32), lanes), ref_softmax(x, lanes))


@pytest.mark.parametrize("lanes", [1, 4, 16])
def test_layernorm_matches_scalar_model(lanes):
    rng = np.random.default_rng(20 + lanes)
    for n in (1, 2, 7, 64, 129):
        for mu, sd in ((0.0, 1.0), (50.0, 0.01), (-3.0, 1e3)):
            x = (mu + sd * rng.standard_normal(n)).astype(F32)
            g = (1 + 0.3 * rng.standard_normal(n)).astype(F32)
            b = (0.3 * rng.standard_normal(n)).astype(F32)
            for eps in (1e-5, 1e-12):
                got = nm.layernorm(x, g, b, eps, lanes)
                assert_bits(got, ref_layernorm(x.tolist(), g.tolist(), b.tolist(), eps, lanes))


# --- special values and thresholds ---------------------------------------------------------------

def _f(v) -> np.ndarray:
    return np.array(v, F32)


def test_exp_special_values_and_thresholds():
    y = nm.vexp(_f([0.0, -0.0, math.inf, -math.inf, math.nan, 100.0, 1e30, -200.0, -1e30]))
    assert list(u32(y)) == [0x3F800000, 0x3F800000, 0x7F800000, 0, CANON, 0x7F800000,
                            0x7F800000, 0, 0]
    hi, lo = F32(EXP_HI), F32(EXP_LO)
    assert nm.vexp(_f([hi]))[0] == np.inf
    assert np.isfinite(nm.vexp(_f([np.nextafter(hi, F32(0))]))[0])
    assert u32(nm.vexp(_f([lo])))[0] == 0
    assert u32(nm.vexp(_f([np.nextafter(lo, F32(0))])))[0] == 1  # 2^-149
    # around both thresholds overflow/underflow agree with the correctly rounded exp
    for t in (hi, lo):
        pat = u32(_f([t]))[0].astype(np.int64) + np.arange(-3000, 3000)
        x = pat.astype(np.uint32).view(F32)
        with np.errstate(over="ignore"):
            exact = np.exp(x.astype(F64)).astype(F32)
        y = nm.vexp(x)
        assert (np.isinf(y) == np.isinf(exact)).all() and ((y == 0) == (exact == 0)).all()
    x = np.linspace(-104, 88.72, 1 << 20).astype(F32)
    assert (np.diff(nm.vexp(x).astype(F64)) >= 0).all()  # monotonic


def test_recip_special_values():
    y = nm.vrecip(_f([0.0, -0.0, math.inf, -math.inf, math.nan, 2.0 ** -149, 2.0 ** -127,
                      2.0 ** 127, FLT_MAX]))
    assert list(u32(y)[:5]) == [0x7F800000, 0xFF800000, 0, 0x80000000, CANON]
    assert y[5] == np.inf and y[6] == F32(2.0 ** 127) and y[7] == F32(2.0 ** -127)
    assert u32(y)[8] == bits(r32(1 / FLT_MAX))  # subnormal result, correctly rounded here
    p = np.ldexp(F32(1), np.arange(-126, 127)).astype(F32)
    assert (nm.vrecip(p).astype(F64) == 1 / p.astype(F64)).all()  # powers of two exact
    rng = np.random.default_rng(13)
    x = _log_points(rng, 10000)
    assert (u32(nm.vrecip(-x)) == (u32(nm.vrecip(x)) ^ np.uint32(0x80000000))).all()


def test_rsqrt_special_values():
    y = nm.vrsqrt(_f([0.0, -0.0, math.inf, -math.inf, math.nan, -1.0, -1e-40, 2.0 ** -149,
                      FLT_MAX]))
    assert list(u32(y)[:7]) == [0x7F800000, 0xFF800000, 0, CANON, CANON, CANON, CANON]
    assert abs(float(y[7]) - 2.0 ** 74.5) <= 2 * 2.0 ** 51  # within 2 ulp
    assert abs(float(y[8]) - FLT_MAX ** -0.5) / FLT_MAX ** -0.5 < 3 * 2.0 ** -23
    # rsqrt(4x) = rsqrt(x) / 2 exactly away from the edge binades (the report relies on it)
    rng = np.random.default_rng(14)
    x = np.exp(rng.uniform(math.log(2.0 ** -120), math.log(2.0 ** 120), 100000)).astype(F32)
    assert (nm.vrsqrt(x * F32(4)) == nm.vrsqrt(x) * F32(0.5)).all()
    # Newton's rsqrt step approaches from below: even exact cases land an ulp low (documented)
    assert u32(nm.vrsqrt(_f([1.0])))[0] == 0x3F7FFFFF


def test_gelu_special_values():
    y = nm.vgelu(_f([0.0, -0.0, math.inf, -math.inf, math.nan, -10.0, -1e30, -FLT_MAX, 10.0,
                     1e30, FLT_MAX]))
    assert list(u32(y)[:8]) == [0, 0x80000000, 0x7F800000, 0x80000000, CANON, 0x80000000,
                                0x80000000, 0x80000000]
    assert list(y[8:]) == [F32(10.0), F32(1e30), F32(FLT_MAX)]
    tiny = _f([1e-30, -1e-30, 2.0 ** -149])
    assert (nm.vgelu(tiny) == tiny * F32(0.5)).all()
    rng = np.random.default_rng(22)
    big = np.exp(rng.uniform(math.log(5.01), math.log(FLT_MAX), 1 << 16)).astype(F32)
    assert (nm.vgelu(big) == big).all()
    # every binary32 from -6 up to 0xC09EC875 (-4.96197) gives -0, the next one up does not
    pats = np.arange(0xC09EC875, 0xC0C00001, dtype=np.uint32)
    assert (u32(nm.vgelu(pats.view(F32))) == 0x80000000).all()
    assert nm.vgelu(np.array([0xC09EC874], np.uint32).view(F32))[0] < 0
    assert (u32(nm.vgelu(-big)) == 0x80000000).all()


def test_softmax_and_layernorm_special_cases():
    assert (nm.softmax(_f([3.5]), 4) == 1).all()
    y = nm.softmax(_f([0.0, -math.inf, 0.0]), 4)
    assert list(y) == [0.5, 0.0, 0.5]
    assert (u32(nm.softmax(_f([1.0, math.nan]), 4)) == CANON).all()
    assert (u32(nm.softmax(_f([math.inf, 1.0]), 4)) == CANON).all()
    assert (u32(nm.softmax(_f([-math.inf, -math.inf]), 4)) == CANON).all()
    b = _f([0.25])
    assert nm.layernorm(_f([7.0]), _f([3.0]), b, 1e-5, 4)[0] == b[0]  # n = 1: beta
    x = np.full(64, 0.5, F32)
    beta = np.linspace(-1, 1, 64).astype(F32)
    assert (nm.layernorm(x, np.ones(64, F32), beta, 1e-5, 16) == beta).all()


# --- accuracy against float64 (the bounds docs/numerics.md states) --------------------------------

def ulp_err(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(y, F64) - ref) / report.ulp32(ref)


def test_ulp32():
    ref = np.array([1.0, 1.9999999, 2.0, 2.0 ** -130, 0.0, 3e38, -1.5])
    assert list(report.ulp32(ref)) == [2.0 ** -23, 2.0 ** -23, 2.0 ** -22, 2.0 ** -149,
                                       2.0 ** -149, 2.0 ** 104, 2.0 ** -23]


def test_exp_accuracy():
    x = np.linspace(-87.3, 88.7, 1 << 20).astype(F32)
    assert ulp_err(nm.vexp(x), np.exp(x.astype(F64))).max() <= 2.0
    xs = np.linspace(float(EXP_LO), -87.3, 1 << 16).astype(F32)  # subnormal results
    assert ulp_err(nm.vexp(xs), np.exp(xs.astype(F64))).max() <= 1.0


def test_recip_accuracy_every_significand():
    m = (np.arange(1 << 23, dtype=np.uint32) | np.uint32(0x3F800000)).view(F32)
    assert ulp_err(nm.vrecip(m), 1.0 / m.astype(F64)).max() <= 2.0
    rng = np.random.default_rng(15)
    x = _log_points(rng, 1 << 18)
    x = x[np.abs(x) >= TINY / 2]  # below that 1/x overflows
    assert ulp_err(nm.vrecip(x), 1.0 / x.astype(F64)).max() <= 2.0


def test_rsqrt_accuracy():
    m = (np.arange(0, 1 << 24, 3, dtype=np.uint32) + np.uint32(0x3F800000)).view(F32)
    assert ulp_err(nm.vrsqrt(m), 1.0 / np.sqrt(m.astype(F64))).max() <= 2.0
    rng = np.random.default_rng(16)
    x = np.exp(rng.uniform(math.log(1e-30), math.log(1e30), 1 << 20)).astype(F32)
    assert ulp_err(nm.vrsqrt(x), 1.0 / np.sqrt(x.astype(F64))).max() <= 2.0
    x = np.abs(_log_points(rng, 1 << 20))
    err = ulp_err(nm.vrsqrt(x), 1.0 / np.sqrt(x.astype(F64)))
    assert err.max() <= 3.0
    edge = (x.astype(F64) >= 2.0 ** 126) | ((x >= TINY) & (x < 2 * TINY))
    assert err[~edge].max() <= 2.0


def test_gelu_accuracy():
    x = np.linspace(-10, 10, 1 << 21).astype(F32)
    y, ref = nm.vgelu(x), report.gelu_f64(x)
    assert np.abs(y.astype(F64) - ref).max() <= 1e-6
    assert ulp_err(y[x > 0], ref[x > 0]).max() <= 5.0


def test_softmax_layernorm_accuracy():
    rng = np.random.default_rng(17)
    for _ in range(200):
        n = int(rng.integers(1, 512))
        x = (rng.uniform(0.1, 10) * rng.standard_normal(n)).astype(F32)
        e = np.exp(x.astype(F64) - x.max())
        ref = e / e.sum()
        y = nm.softmax(x, 16).astype(F64)
        big = ref >= 1e-3
        assert (np.abs(y - ref)[big] / ref[big]).max() <= 1e-6
        xd = (rng.uniform(-1, 1) + rng.uniform(0.1, 10) * rng.standard_normal(n + 1))
        xf = xd.astype(F32)
        xd = xf.astype(F64)
        ref = (xd - xd.mean()) / np.sqrt(xd.var() + float(F32(1e-5)))
        y = nm.layernorm(xf, np.ones(n + 1, F32), np.zeros(n + 1, F32), 1e-5, 16)
        assert np.abs(y.astype(F64) - ref).max() <= 2e-6


def test_mac_dot_error_bound():
    """|acc - exact| <= (log2(lanes) + ncols) * 2^-24 * sum |x w| (the standard bound)."""
    rng = np.random.default_rng(18)
    for n in (16, 256, 3072):
        x = nm.round_bf16(rng.standard_normal(n).astype(F32))
        w = nm.round_bf16(rng.standard_normal((64, n)).astype(F32))
        prods = w.astype(F64) * x.astype(F64)
        exact = np.array([math.fsum(r) for r in prods])
        acc = nm.mac_dot(x, w, 16).astype(F64)
        bound = (4 + n // 16) * 2.0 ** -24 * np.abs(prods).sum(axis=1)
        assert (np.abs(acc - exact) <= bound).all()


# --- determinism, dtypes, no float64 leaks -------------------------------------------------------

@pytest.mark.parametrize("fn", [nm.vexp, nm.vrecip, nm.vrsqrt, nm.vgelu, nm.round_bf16])
def test_elementwise_deterministic_and_binary32(fn):
    rng = np.random.default_rng(19)
    x = np.concatenate([rng.uniform(-20, 20, 3000), _log_points(rng, 3000)]).astype(F32)
    a, b = fn(x), fn(x.copy())
    assert a.dtype == F32 and (u32(a) == u32(b)).all()
    # each element on its own (0-d and length 1) and reversed: same bits, no batch effects
    rev = fn(x[::-1].copy())[::-1]
    assert (u32(rev) == u32(a)).all()
    for i in range(0, x.size, 97):
        assert u32(np.asarray(fn(x[i])))[()] == u32(a)[i]
        assert u32(fn(x[i:i + 1]))[0] == u32(a)[i]


def test_composites_deterministic_and_binary32():
    rng = np.random.default_rng(21)
    x = rng.standard_normal(300).astype(F32)
    g, b = rng.standard_normal(300).astype(F32), rng.standard_normal(300).astype(F32)
    w = nm.round_bf16(rng.standard_normal((7, 300)).astype(F32))
    xb = nm.round_bf16(x)
    for make in (lambda: nm.softmax(x, 16), lambda: nm.layernorm(x, g, b, 1e-5, 16),
                 lambda: nm.mac_dot(xb, w, 16), lambda: nm.readout(nm.mac_dot(xb, w, 16)),
                 lambda: nm.binop("add", x, g), lambda: nm.binop("sub", x, F32(2)),
                 lambda: nm.binop("mul", x, g)):
        a, b2 = make(), make()
        assert a.dtype == F32 and (u32(a) == u32(b2)).all()
    # a row's MAC result does not depend on the rows computed with it
    full = nm.mac_dot(xb, w, 16)
    for j in range(7):
        assert u32(nm.mac_dot(xb, w[j:j + 1], 16))[0] == u32(full)[j]
    assert isinstance(nm.vsum(x, 16), F32) and isinstance(nm.vmax(x), F32)
    assert (u32(nm.readout(full)) & 0xFFFF == 0).all()


# --- the report ----------------------------------------------------------------------------------

def test_report_rows_within_documented_bounds():
    rows = report.measure(scale=0.02)
    names = {r.function for r in rows}
    assert {"exp", "recip", "rsqrt", "gelu", "softmax", "layernorm", "vsum",
            "MAC accumulator", "MAC read-out (BF16)"} <= names
    for r in rows:
        assert r.samples > 0
        if r.function in ("exp", "recip"):
            assert r.max_ulp <= 2.0
        if r.function == "rsqrt":
            assert r.max_ulp <= 3.0
        if r.function == "gelu" and r.max_abs is not None:
            assert r.max_abs <= 1e-6
    text = report.render(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| function |") and len(lines) == len(rows) + 2
    for line in lines:  # no unescaped "|" inside a cell
        assert line.replace("\\|", "").count("|") == 8


def test_report_main_is_deterministic(capsys):
    assert report.main(["--scale", "0.003"]) == 0
    first = capsys.readouterr().out
    assert report.main(["--scale", "0.003"]) == 0
    assert capsys.readouterr().out == first and first.startswith("| function |")
