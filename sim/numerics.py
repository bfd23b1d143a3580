"""Golden numerics: every arithmetic step of the machine, bit for bit (spec: docs/numerics.md).

All ASIC arithmetic is IEEE 754 binary32 with round-to-nearest-even and subnormals, done with
numpy ``float32`` operations one rounding at a time, in exactly the order written here; the RTL
implements the same sequences. Values leaving the ASIC for the PIM side are rounded to BF16.
Every stored NaN is the canonical quiet NaN (``0x7FC00000`` / ``0x7FC0``).

The functional machine model, the golden GPT and (later) the RTL all use these functions; nothing
else in pimgpt performs machine arithmetic.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
CANON_NAN_F32 = np.uint32(0x7FC00000)
CANON_NAN_BF16 = np.uint16(0x7FC0)

#: Terms of the exp Taylor polynomial: 1 + r + r^2/2! + ... + r^EXP_ORDER/EXP_ORDER!
EXP_ORDER = 7
EXP_COEFFS = tuple(F32(1.0 / np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in
                   range(EXP_ORDER + 1))  # 1/k!, rounded to binary32
LOG2E = F32(1.4426950408889634)
LN2_HI = F32(0.693145751953125)  # 0x3F317200: k * LN2_HI is exact for |k| < 2^8
LN2_LO = F32(1.4286067653302002e-06)  # ln 2 - LN2_HI, rounded
EXP_HI = F32(88.72283935546875)  # 0x42B17218: exp(x) rounds to +Inf for x >= this (x > it: forced)
EXP_LO = F32(-103.97208404541016)  # 0xC2CFF1B5: exp(x) rounds to +0 for x <= this (x < it: forced)

RECIP_SEED_A = F32(48.0 / 17.0)  # y0 = A - B*m on m in [0.5, 1): relative error <= 1/17
RECIP_SEED_B = F32(32.0 / 17.0)
RECIP_ITERS = 3

RSQRT_MAGIC = np.uint32(0x5F3759DF)
RSQRT_ITERS = 3

GELU_C = F32(0.7978845608028654)  # sqrt(2/pi)
GELU_A = F32(0.044715)


# --- conversions ---------------------------------------------------------------------------------

def canon(x: np.ndarray) -> np.ndarray:
    """binary32 array with every NaN replaced by the canonical quiet NaN."""
    x = np.asarray(x, dtype=F32)
    nan = np.isnan(x)
    if nan.any():
        x = x.copy()
        x.view(np.uint32)[nan] = CANON_NAN_F32
    return x


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round binary32 to BF16 (nearest, ties to even), returning the 16-bit patterns.

    Overflow rounds to infinity, subnormals round on the BF16 grid, NaN becomes ``0x7FC0``.
    """
    bits = np.asarray(x, dtype=F32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    # np.where, not item assignment: a scalar input gives a numpy scalar, which is read-only
    return np.where(nan, CANON_NAN_BF16, out)[()]


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    """Exact widening of BF16 bit patterns to binary32."""
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(F32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """binary32 -> BF16 -> binary32: the value a BF16 store of ``x`` holds."""
    return bf16_bits_to_f32(f32_to_bf16_bits(x))


# --- bank MAC ------------------------------------------------------------------------------------

def mac_tree(products: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sum ``axis`` (a power of two, the MAC lanes) as a balanced binary adder tree.

    Level by level, lane 2i is added to lane 2i+1, each addition rounded to binary32. The lane
    axis may be anywhere (the functional machine keeps lanes first so each add is contiguous).
    """
    s = np.moveaxis(products, axis, 0)
    with np.errstate(all="ignore"):  # Inf/NaN/overflow are ordinary IEEE results here
        while s.shape[0] > 1:
            s = s[0::2] + s[1::2]
    return canon(s[0])


def mac_accumulate(acc: np.ndarray, rows: np.ndarray, gb: np.ndarray,
                   lane_axis: int = -1, col_axis: int = -1) -> np.ndarray:
    """Apply MAC commands: ``acc`` (banks,) plus, column by column, the tree of the products.

    ``rows``: BF16 operands as binary32, shape ``(..., banks, ncols, lanes)``; ``gb``: the global
    buffer columns as binary32, broadcastable to it (``(ncols, lanes)`` when all banks share one
    buffer). Per column the products ``rows[b, c, l] * gb[c, l]`` (exact for normal BF16
    operands) are summed by :func:`mac_tree` and added to the accumulator ``acc``
    (``(..., banks)``), one rounding per addition, columns in order. Other layouts name their
    axes: ``lane_axis`` in the operands, ``col_axis`` in the tree sums (operands without the
    lane axis); the functional machine uses lanes first and columns before banks so that every
    step works on long contiguous runs.
    """
    with np.errstate(all="ignore"):
        trees = mac_tree(rows * gb, axis=lane_axis)
        stream = np.concatenate([np.expand_dims(np.asarray(acc, dtype=F32), col_axis), trees],
                                axis=col_axis)
        acc = np.take(np.cumsum(stream, axis=col_axis, dtype=F32), -1, axis=col_axis)
    return canon(acc)  # the host's default NaN (0xFFC00000 on x86) is not the machine's


def mac_dot(x: np.ndarray, w: np.ndarray, lanes: int) -> np.ndarray:
    """Accumulator of a MAC stream after ``x . w[j]`` for every row j of ``w``, from +0.

    ``x``: (n,) and ``w``: (m, n) BF16 values as binary32; n is padded with zeros to a whole
    number of ``lanes``-wide columns. Returns the binary32 accumulators (before read-out).
    """
    n = x.shape[-1]
    ncols = -(-n // lanes)
    pad = ncols * lanes - n
    if pad:
        x = np.concatenate([x, np.zeros(pad, F32)])
        w = np.concatenate([w, np.zeros((w.shape[0], pad), F32)], axis=1)
    return mac_accumulate(np.zeros(w.shape[0], F32), w.reshape(w.shape[0], ncols, lanes),
                          x.reshape(ncols, lanes))


def readout(acc: np.ndarray) -> np.ndarray:
    """MAC-register read-out: the accumulator rounded to BF16 (returned as binary32)."""
    return round_bf16(acc)


# --- ASIC vector functions -----------------------------------------------------------------------

def _scale_pow2(y: np.ndarray, k: np.ndarray) -> np.ndarray:
    """y * 2^k as two binary32 multiplies by exact powers of two (2^floor(k/2), then the rest)."""
    k = k.astype(np.int32)
    k1 = k >> 1
    k2 = k - k1
    p1 = np.ldexp(F32(1.0), np.clip(k1, -149, 127)).astype(F32)
    p2 = np.ldexp(F32(1.0), np.clip(k2, -149, 127)).astype(F32)
    return (y * p1) * p2


def vexp(x: np.ndarray) -> np.ndarray:
    """exp(x): range reduction x = k ln2 + r, |r| <= ln2/2, Horner Taylor polynomial, * 2^k."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(all="ignore"):
        xc = np.clip(x, EXP_LO, EXP_HI)
        k = np.rint(xc * LOG2E)  # ties to even
        r = (xc - k * LN2_HI) - k * LN2_LO
        p = np.full_like(r, EXP_COEFFS[EXP_ORDER])
        for c in EXP_COEFFS[EXP_ORDER - 1::-1]:
            p = p * r + c
        y = _scale_pow2(p, k)
        y = np.where(x > EXP_HI, F32(np.inf), y)
        y = np.where(x < EXP_LO, F32(0.0), y)
    return canon(y)


def vrecip(x: np.ndarray) -> np.ndarray:
    """1/x: |x| = m 2^e with m in [0.5, 1); seed A - B m; Newton y <- y (2 - m y); * 2^-e."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(all="ignore"):
        m, e = np.frexp(np.abs(x))
        m = m.astype(F32)
        y = RECIP_SEED_A - RECIP_SEED_B * m
        for _ in range(RECIP_ITERS):
            y = y * (F32(2.0) - m * y)
        y = _scale_pow2(y, -e)
        y = np.where(np.signbit(x), -y, y)
        y = np.where(x == 0, np.where(np.signbit(x), F32(-np.inf), F32(np.inf)), y)
        y = np.where(np.isinf(x), np.where(np.signbit(x), F32(-0.0), F32(0.0)), y)
        y = np.where(np.isnan(x), F32(np.nan), y)
    return canon(y.astype(F32))


def vrsqrt(x: np.ndarray) -> np.ndarray:
    """1/sqrt(x): seed 0x5F3759DF - (bits >> 1), Newton y <- y (1.5 - (0.5 x) y^2).

    Subnormal inputs are first scaled by 2^24 (the result then by 2^12) so the seed stays valid.
    """
    x = np.asarray(x, dtype=F32)
    with np.errstate(all="ignore"):
        sub = (x > 0) & (x < np.finfo(F32).tiny)
        xs = np.where(sub, x * F32(2.0 ** 24), x)
        y = (RSQRT_MAGIC - (xs.view(np.uint32) >> np.uint32(1))).view(F32)
        h = F32(0.5) * xs
        for _ in range(RSQRT_ITERS):
            y = y * (F32(1.5) - h * (y * y))
        y = np.where(sub, y * F32(2.0 ** 12), y)
        y = np.where(x == 0, np.where(np.signbit(x), F32(-np.inf), F32(np.inf)), y)
        y = np.where(np.isposinf(x), F32(0.0), y)
        y = np.where((x < 0) | np.isnan(x), F32(np.nan), y)
    return canon(y.astype(F32))


def vgelu(x: np.ndarray) -> np.ndarray:
    """GPT-2's GELU, 0.5 x (1 + tanh(c (x + a x^3))), with tanh(u) = 1 - 2 / (exp(2u) + 1)."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(all="ignore"):
        u = GELU_C * (x + GELU_A * ((x * x) * x))
        e = vexp(u + u)
        th = F32(1.0) - (vrecip(e + F32(1.0)) * F32(2.0))
        y = (F32(0.5) * x) * (F32(1.0) + th)
        y = np.where(np.isneginf(x), F32(-0.0), y)
    return canon(y.astype(F32))


def vsum(x: np.ndarray, lanes: int) -> np.float32:
    """Sum as the vector unit does it: lane l adds elements l, l+L, ... in order from +0, then
    the L lane sums are added by a balanced tree (lane 2i + lane 2i+1, level by level)."""
    x = np.asarray(x, dtype=F32)
    n = x.shape[0]
    rows = max(1, -(-n // lanes))
    grid = np.zeros((rows + 1, lanes), F32)  # row 0: the +0 each lane starts from
    grid.reshape(-1)[lanes:lanes + n] = x
    with np.errstate(all="ignore"):  # Inf/NaN/overflow are ordinary IEEE results here
        lane_sums = np.cumsum(grid, axis=0, dtype=F32)[-1]
    return canon(np.asarray(mac_tree(lane_sums), dtype=F32))[()]


def vargmax(x: np.ndarray) -> int:
    """Index of the first largest element; NaN is ignored, -0 equals +0, all-NaN gives 0."""
    x = np.asarray(x, dtype=F32)
    if x.size == 0:
        return 0
    valid = ~np.isnan(x)
    if not valid.any():
        return 0
    masked = np.where(valid, x, F32(-np.inf))
    return int(np.flatnonzero((masked == masked.max()) & valid)[0])


def vmax(x: np.ndarray) -> np.float32:
    """Largest element (the one :func:`vargmax` picks); NaN if any element is NaN."""
    x = np.asarray(x, dtype=F32)
    if np.isnan(x).any():
        return canon(np.asarray(np.nan, F32))[()]
    return x[vargmax(x)]


def binop(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise ``add``, ``sub`` or ``mul`` in binary32 (b may be a broadcast scalar)."""
    with np.errstate(all="ignore"):
        if op == "add":
            y = a + b
        elif op == "sub":
            y = a - b
        elif op == "mul":
            y = a * b
        else:  # pragma: no cover - programming error
            raise ValueError(op)
    return canon(np.asarray(y, dtype=F32))


# --- composite sequences (what the compiler emits, as primitive steps) --------------------------

def softmax(x: np.ndarray, lanes: int) -> np.ndarray:
    """max, subtract, exp, sum, reciprocal, multiply: the compiler's softmax sequence."""
    x = np.asarray(x, dtype=F32)
    e = vexp(binop("sub", x, vmax(x)))
    return binop("mul", e, vrecip(np.asarray([vsum(e, lanes)], F32))[0])


def layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
              lanes: int) -> np.ndarray:
    """mean, centre, variance, + eps, rsqrt, scale, * gamma, + beta: the compiler's sequence."""
    x = np.asarray(x, dtype=F32)
    inv_n = F32(1.0 / x.shape[0])
    mean = binop("mul", vsum(x, lanes), inv_n)
    xc = binop("sub", x, mean)
    var = binop("mul", vsum(binop("mul", xc, xc), lanes), inv_n)
    r = vrsqrt(binop("add", var, F32(eps)).reshape(1))[0]
    y = binop("mul", xc, r)
    return binop("add", binop("mul", y, gamma), beta)
