# amaranth: UnusedElaboratable=no
"""The bank MAC RTL (hdl/fp.py, hdl/mac.py) against the golden numerics, bit for bit.

Each floating-point block runs combinationally on Amaranth's simulator over >= 10,000 random
inputs drawn to hit every class (random bit patterns, subnormals, Inf, NaN, signed zeros, extreme
exponents, cancellation, rounding ties) plus directed corner cases, and is compared with the numpy
golden model (``nm.binop``, ``nm.f32_to_bf16_bits``). ``BankMac`` runs >= 10,000 random column
beats in streams of random lengths with clears in between and random ``valid`` gaps, compared
with ``nm.mac_accumulate`` / ``nm.readout`` after every cycle; directed streams cover one corner
class each. Finally the unit converts to Verilog for the ``tiny`` and ``paper`` presets.

The pipelined variants run the same way: ``F32Add`` and ``Bf16MulF32`` with registers after every
step stream random operands one pair per cycle, compared after their latency;
``PipelinedBankMac`` (every product and tree level cut into 1 to 5 register stages) runs random
streams and, beside ``BankMac``, every directed stream, its latency accounted for.
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Cat
from amaranth.sim import Simulator

from pimgpt.errors import PimgptError
from pimgpt.hdl import fp
from pimgpt.hdl.mac import ADD_CUTS, MUL_CUTS, BankMac, MacAccumulator, PipelinedBankMac, \
    beat_layout
from pimgpt.hdl.params import preset
from pimgpt.sim import numerics as nm

F32 = np.float32
U32, U16 = np.uint32, np.uint16
N_RANDOM = 40_000  # random inputs per floating-point block
N_BEATS = 10_000  # random column beats through BankMac (pipeline 0)

CANON32 = int(nm.CANON_NAN_F32)
CANON16 = int(nm.CANON_NAN_BF16)

#: Interesting binary32 patterns: signed zeros, Inf, NaNs of every kind, the extreme finite
#: values of each class, and a few ordinary numbers.
F32_SPECIALS = np.array([
    0x00000000, 0x80000000, 0x7F800000, 0xFF800000,  # ±0, ±Inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FFFFFFF, 0xFFFFFFFF,  # NaNs
    0x7F7FFFFF, 0xFF7FFFFF, 0x7F7FFFFE, 0x7F000000, 0x7E800000,  # largest finite
    0x00800000, 0x80800000, 0x00800001, 0x01000000,  # smallest normals
    0x007FFFFF, 0x807FFFFF, 0x00400000, 0x00000001, 0x80000001, 0x00000003,  # subnormals
    0x3F800000, 0xBF800000, 0x3F800001, 0x3FFFFFFF, 0x4B800000, 0x33800000, 0x33000000,
], dtype=U32)

BF16_SPECIALS = np.array([
    0x0000, 0x8000, 0x7F80, 0xFF80,  # ±0, ±Inf
    0x7FC0, 0xFFC0, 0x7F81, 0xFF81, 0x7FFF, 0xFFFF,  # NaNs
    0x7F7F, 0xFF7F, 0x7F00, 0x0080, 0x8080, 0x0081,  # extreme normals
    0x007F, 0x807F, 0x0040, 0x0001, 0x8001,  # subnormals
    0x3F80, 0xBF80, 0x3F81, 0x3FFF, 0x4000, 0x3F00,
], dtype=U16)


# --- input generators ----------------------------------------------------------------------------

def _rand_u32(rng, n):
    return rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(U32)


def _f32_patterns(rng, n):
    """binary32 patterns from a mix of classes: random bits, specials, subnormals, extreme
    exponents, and ordinary numbers of moderate range."""
    kind = rng.integers(0, 6, n)
    sign = rng.integers(0, 2, n).astype(U32) << U32(31)
    frac = rng.integers(0, 1 << 23, n).astype(U32)
    out = _rand_u32(rng, n)  # kind 0: any bit pattern
    out = np.where(kind == 1, rng.choice(F32_SPECIALS, n), out)
    out = np.where(kind == 2, sign | frac, out)  # subnormal (or zero)
    extreme = rng.choice(np.array([0, 1, 2, 3, 125, 126, 127, 128, 252, 253, 254, 255], U32), n)
    out = np.where(kind == 3, sign | (extreme << U32(23)) | frac, out)
    moderate = rng.integers(100, 155, n).astype(U32)
    out = np.where(kind >= 4, sign | (moderate << U32(23)) | frac, out)
    return out.astype(U32)


def _add_pairs(rng, n):
    """Operand pairs for the adder: independent, x + (-x), near cancellation, close exponents
    (both signs, carries and borrows), large exponent gaps, constructed rounding ties."""
    a = _f32_patterns(rng, n)
    b = _f32_patterns(rng, n)
    kind = rng.integers(0, 6, n)
    sign = rng.integers(0, 2, n).astype(U32) << U32(31)
    # exact cancellation: b = -a
    b = np.where(kind == 1, a ^ U32(0x80000000), b)
    # near cancellation: b = -(a +- a few ulps); the pattern arithmetic may cross binades
    delta = rng.integers(-4, 5, n).astype(np.int64)
    near = ((a.astype(np.int64) + delta) & 0xFFFFFFFF).astype(U32) ^ U32(0x80000000)
    b = np.where(kind == 2, near, b)
    # exponent of b within +-30 binades of a's, random fraction and sign
    ea = (a >> U32(23)) & U32(0xFF)
    eb = np.clip(ea.astype(np.int64) + rng.integers(-30, 31, n), 0, 254).astype(U32)
    close = sign | (eb << U32(23)) | (rng.integers(0, 1 << 23, n).astype(U32))
    b = np.where(kind == 3, close, b)
    # rounding ties: b is d binades below a with its lowest d significand bits 100..0, so
    # a + b is exactly halfway between two binary32 numbers (unless it carries or borrows)
    d = rng.integers(1, 25, n).astype(U32)
    eb = ea.astype(np.int64) - d.astype(np.int64)
    tie_frac = (rng.integers(0, 1 << 23, n).astype(U32) >> d << d) | (U32(1) << (d - U32(1)))
    tie = sign | (np.clip(eb, 1, 254).astype(U32) << U32(23)) | (tie_frac & U32(0x7FFFFF))
    b = np.where((kind == 4) & (eb >= 1), tie, b)
    # kind 5 stays independent
    swap = rng.integers(0, 2, n).astype(bool)
    return np.where(swap, b, a).astype(U32), np.where(swap, a, b).astype(U32)


def _bf16_patterns(rng, n):
    kind = rng.integers(0, 5, n)
    sign = rng.integers(0, 2, n).astype(U16) << U16(15)
    frac = rng.integers(0, 1 << 7, n).astype(U16)
    out = rng.integers(0, 1 << 16, n).astype(U16)  # kind 0: any bit pattern
    out = np.where(kind == 1, rng.choice(BF16_SPECIALS, n), out)
    out = np.where(kind == 2, sign | frac, out)  # subnormal (or zero)
    exp = rng.integers(0, 255, n).astype(U16)
    out = np.where(kind >= 3, sign | (exp << U16(7)) | frac, out)
    return out.astype(U16)


def _mul_pairs(rng, n):
    """Operand pairs for the multiplier: random classes, plus pairs whose exponents put the
    product at the subnormal boundary (rounding, ties, underflow to ±0) or at overflow."""
    a, b = _bf16_patterns(rng, n), _bf16_patterns(rng, n)
    kind = rng.integers(0, 4, n)
    ea = rng.integers(0, 255, n)
    # exponent sum ea + eb - 127 around the binary32 subnormal range [-149, -126] ... overflow
    target = np.where(kind == 1, rng.integers(-160, -120, n), rng.integers(120, 132, n))
    eb = np.clip(target + 127 - ea + 127, 0, 254)
    sign_a = rng.integers(0, 2, n).astype(U16) << U16(15)
    sign_b = rng.integers(0, 2, n).astype(U16) << U16(15)
    fa = rng.integers(0, 1 << 7, n).astype(U16)
    fb = rng.integers(0, 1 << 7, n).astype(U16)
    aa = sign_a | (ea.astype(U16) << U16(7)) | fa
    bb = sign_b | (eb.astype(U16) << U16(7)) | fb
    edge = kind >= 1
    return np.where(edge, aa, a).astype(U16), np.where(edge, bb, b).astype(U16)


# --- golden references ---------------------------------------------------------------------------

def _ref_add(a, b):
    return nm.binop("add", a.view(F32), b.view(F32)).view(U32)


def _ref_mul(a, b):
    return nm.binop("mul", nm.bf16_bits_to_f32(a), nm.bf16_bits_to_f32(b)).view(U32)


def _ref_bf16(a):
    return np.asarray(nm.f32_to_bf16_bits(a.view(F32)), dtype=U16)


# --- simulation harnesses ------------------------------------------------------------------------

def _run_comb(dut, ports, columns):
    """Drive a combinational block: per row set all input ``ports`` at once, read ``dut.y``."""
    target = Cat(*(getattr(dut, p) for p in ports))
    shifts = np.cumsum([0] + [len(getattr(dut, p)) for p in ports[:-1]])
    words = [sum(int(v) << int(s) for v, s in zip(row, shifts)) for row in zip(*columns)]
    out = np.zeros(len(words), dtype=np.uint64)

    async def bench(ctx):
        for i, word in enumerate(words):
            ctx.set(target, word)
            out[i] = ctx.get(dut.y)

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return out


def _mismatches(name, inputs, got, want, fmt):
    bad = np.flatnonzero(got != want)
    rows = [f"{name}({', '.join(fmt(int(col[i])) for col in inputs)}) = {fmt(int(got[i]))}, "
            f"want {fmt(int(want[i]))}" for i in bad[:8]]
    return f"{len(bad)} of {len(got)} differ:\n" + "\n".join(rows)


def _h32(v):
    return f"0x{v:08X}"


def _h16(v):
    return f"0x{v:04X}"


def _check_add(a, b):
    a, b = np.asarray(a, U32), np.asarray(b, U32)
    got = _run_comb(fp.F32Add(), ["a", "b"], [a, b]).astype(U32)
    want = _ref_add(a, b)
    assert np.array_equal(got, want), _mismatches("add", [a, b], got, want, _h32)
    return got


def _check_mul(a, b):
    a, b = np.asarray(a, U16), np.asarray(b, U16)
    got = _run_comb(fp.Bf16MulF32(), ["a", "b"], [a, b]).astype(U32)
    want = _ref_mul(a, b)
    assert np.array_equal(got, want), _mismatches("mul", [a, b], got, want, _h32)
    return got


def _check_bf16(a):
    a = np.asarray(a, U32)
    got = _run_comb(fp.F32ToBf16(), ["a"], [a]).astype(U16)
    want = _ref_bf16(a)
    assert np.array_equal(got, want), _mismatches("bf16", [a], got, want, _h32)
    return got


def _is_tie(exact, rounded):
    """Where the float64 value ``exact`` lies halfway between ``rounded`` (binary32) and one of
    its neighbours."""
    with np.errstate(all="ignore"):
        r = rounded.astype(np.float64)
        lo = np.nextafter(rounded, F32(-np.inf)).astype(np.float64)
        hi = np.nextafter(rounded, F32(np.inf)).astype(np.float64)
        return np.isfinite(r) & ((exact == (r + lo) / 2) | (exact == (r + hi) / 2))


# --- F32Add --------------------------------------------------------------------------------------

def test_f32add_random_bit_exact():
    rng = np.random.default_rng(0xADD)
    a, b = _add_pairs(rng, N_RANDOM)
    got = _check_add(a, b)
    # the draw reaches every class it is meant to
    fa, fb, fy = a.view(F32), b.view(F32), got.view(F32)
    assert (a == (b ^ U32(0x80000000))).sum() > 500
    assert (np.isnan(fy)).sum() > 500 and (np.isinf(fy)).sum() > 100
    tiny = np.finfo(F32).tiny
    assert ((fy != 0) & (np.abs(fy) < tiny)).sum() > 100  # subnormal results
    assert ((np.abs(fa) < tiny) & (np.abs(fb) < tiny)).sum() > 100
    with np.errstate(invalid="ignore"):  # widening a signalling NaN
        exact = fa.astype(np.float64) + fb.astype(np.float64)  # exact for gaps up to 29
    assert _is_tie(exact, fy).sum() > 200


F32ADD_DIRECTED = [
    # a, b, expected
    (0x3F800000, 0xBF800000, 0x00000000),  # 1 + (-1) = +0
    (0x80000000, 0x80000000, 0x80000000),  # (-0) + (-0) = -0
    (0x00000000, 0x80000000, 0x00000000),  # (+0) + (-0) = +0
    (0x80000000, 0x00000000, 0x00000000),
    (0x80000001, 0x00000001, 0x00000000),  # subnormal cancellation = +0
    (0x80000000, 0x3F800000, 0x3F800000),  # -0 + 1 = 1
    (0xBF800000, 0x00000000, 0xBF800000),  # -1 + 0 = -1 (sign of the non-zero operand)
    (0x7F800000, 0xFF800000, CANON32),  # Inf + (-Inf) = NaN
    (0x7F800000, 0x7F800000, 0x7F800000),
    (0xFF800000, 0x7F7FFFFF, 0xFF800000),
    (0xFFC00000, 0x3F800000, CANON32),  # NaN sign and payload dropped
    (0x3F800000, 0x7F800001, CANON32),
    (0xFFFFFFFF, 0xFF800000, CANON32),
    (0x7F7FFFFF, 0x7F7FFFFF, 0x7F800000),  # FLT_MAX + FLT_MAX = Inf
    (0x7F7FFFFF, 0x73000000, 0x7F800000),  # FLT_MAX + half an ulp: tie to even = Inf
    (0x7F7FFFFF, 0x72FFFFFF, 0x7F7FFFFF),  # just below the tie: FLT_MAX
    (0xFF7FFFFF, 0xF3000000, 0xFF800000),
    (0x00400000, 0x00400000, 0x00800000),  # subnormal + subnormal = smallest normal
    (0x007FFFFF, 0x00000001, 0x00800000),
    (0x00800000, 0x80000001, 0x007FFFFF),  # normal - subnormal = subnormal
    (0x3F800000, 0x33800000, 0x3F800000),  # 1 + 2^-24: tie, 1 is even
    (0x3F800001, 0x33800000, 0x3F800002),  # odd: tie rounds up
    (0x3F800000, 0x33800001, 0x3F800001),  # above the tie
    (0x3F800000, 0xB3000000, 0x3F800000),  # 1 - 2^-25: tie, rounds to 1 (even)
    (0x3F800000, 0xB3000001, 0x3F7FFFFF),  # just above half an ulp below 1
    (0x3F800000, 0xB3800000, 0x3F7FFFFF),  # 1 - 2^-24 exact
    (0x4B800000, 0x3F800000, 0x4B800000),  # 2^24 + 1: tie to even
    (0x4B800001, 0x3F800000, 0x4B800002),
    (0x7F000000, 0x00000001, 0x7F000000),  # huge exponent spread
    (0x00000001, 0xFF000000, 0xFF000000),
    (0x3F800000, 0x3F800000, 0x40000000),
    (0x3FFFFFFF, 0x3FFFFFFF, 0x407FFFFF),
    (0x3FFFFFFF, 0x33800000, 0x40000000),  # (2 - 2^-23) + 2^-24: tie, up to 2 (new binade)
]


def test_f32add_directed():
    a, b, want = (np.array(col, U32) for col in zip(*F32ADD_DIRECTED))
    ab, ba = np.concatenate([a, b]), np.concatenate([b, a])  # both operand orders
    got = _check_add(ab, ba)
    both = np.concatenate([want, want])
    assert np.array_equal(got, both), _mismatches("add", [ab, ba], got, both, _h32)


def test_f32add_all_special_pairs():
    a, b = (g.ravel() for g in np.meshgrid(F32_SPECIALS, F32_SPECIALS))
    got = _check_add(a, b)
    assert np.all(got[np.isnan(got.view(F32))] == CANON32)


# --- Bf16MulF32 ----------------------------------------------------------------------------------

def test_bf16mul_random_bit_exact():
    rng = np.random.default_rng(0x3017)
    a, b = _mul_pairs(rng, N_RANDOM)
    got = _check_mul(a, b)
    fy = got.view(F32)
    with np.errstate(invalid="ignore"):  # widening a signalling NaN
        exact = (nm.bf16_bits_to_f32(a).astype(np.float64)
                 * nm.bf16_bits_to_f32(b).astype(np.float64))  # exact: 16 significant bits
    tiny = np.finfo(F32).tiny
    assert ((fy != 0) & (np.abs(fy) < tiny)).sum() > 500  # subnormal products
    assert ((fy != exact) & np.isfinite(exact) & (exact != 0) & (fy != 0)).sum() > 200  # rounded
    assert ((fy == 0) & (exact != 0)).sum() > 200  # underflow to ±0
    assert (np.isinf(fy) & np.isfinite(exact)).sum() > 200  # overflow
    assert np.isnan(fy).sum() > 100


BF16MUL_DIRECTED = [
    (0x3F80, 0x3F80, 0x3F800000),  # 1 * 1
    (0x3FC0, 0xC040, 0xC0900000),  # 1.5 * -3 = -4.5
    (0x7F80, 0x0000, CANON32),  # Inf * 0 = NaN
    (0x8000, 0xFF80, CANON32),
    (0x7F80, 0x0001, 0x7F800000),  # Inf * subnormal = Inf
    (0xFF80, 0x3F80, 0xFF800000),
    (0xFF80, 0xBF80, 0x7F800000),
    (0x7FC1, 0x3F80, CANON32),  # NaN payload and sign dropped
    (0xFFFF, 0x0000, CANON32),
    (0x0000, 0x8000, 0x80000000),  # signed zeros: XOR of the signs
    (0x8000, 0x8000, 0x00000000),
    (0x8000, 0x3F80, 0x80000000),
    (0x7F7F, 0x7F7F, 0x7F800000),  # overflow
    (0xFF7F, 0x4000, 0xFF800000),  # 2 * -max = -Inf (exact product >= 2^128)
    (0x7F00, 0x4000, 0x7F800000),  # 2^127 * 2 = 2^128 = Inf
    (0x7F7F, 0x3F80, 0x7F7F0000),
    (0x0001, 0x3F80, 0x00010000),  # BF16 subnormal * 1: exact binary32 subnormal
    (0x0001, 0x0001, 0x00000000),  # 2^-266: underflow to +0
    (0x8001, 0x0001, 0x80000000),  # ... to -0 (sign kept)
    (0x0001, 0x3780, 0x00000001),  # 2^-133 * 2^-16 = 2^-149, the smallest subnormal
    (0x0001, 0x3700, 0x00000000),  # 2^-150: tie, rounds to even (+0)
    (0x0001, 0x3740, 0x00000001),  # 1.5 * 2^-150: above the tie
    (0x0003, 0x3700, 0x00000002),  # 3 * 2^-150 = 1.5 * 2^-149: tie, to even (2)
    (0x0005, 0x3700, 0x00000002),  # 2.5 * 2^-149: tie, to even (2)
    (0x0080, 0x3F00, 0x00400000),  # smallest normal * 0.5: exact subnormal
    (0x00FF, 0x3F00, 0x007F8000),
    (0x0080, 0x0080, 0x00000000),  # 2^-252: +0
]


def test_bf16mul_directed():
    a, b, want = (np.array(col) for col in zip(*BF16MUL_DIRECTED))
    a, b, want = a.astype(U16), b.astype(U16), want.astype(U32)
    ab, ba = np.concatenate([a, b]), np.concatenate([b, a])  # both operand orders
    got = _check_mul(ab, ba)
    both = np.concatenate([want, want])
    assert np.array_equal(got, both), _mismatches("mul", [ab, ba], got, both, _h32)


def test_bf16mul_all_special_pairs():
    a, b = (g.ravel() for g in np.meshgrid(BF16_SPECIALS, BF16_SPECIALS))
    got = _check_mul(a, b)
    assert np.all(got[np.isnan(got.view(F32))] == CANON32)


# --- F32ToBf16 -----------------------------------------------------------------------------------

def test_f32_to_bf16_random_bit_exact():
    rng = np.random.default_rng(0xBF16)
    a = _f32_patterns(rng, N_RANDOM)
    # ties and near-ties on the discarded half
    low = rng.choice(np.array([0x8000, 0x7FFF, 0x8001, 0x0000, 0xFFFF], U32), N_RANDOM)
    a = np.where(rng.integers(0, 3, N_RANDOM) == 0, (a & U32(0xFFFF0000)) | low, a).astype(U32)
    got = _check_bf16(a)
    # independent cross-check: ml_dtypes' own rounding (non-NaN inputs)
    finite = ~np.isnan(a.view(F32))
    md = a.view(F32)[finite].astype(ml_dtypes.bfloat16).view(U16)
    assert np.array_equal(got[finite], md)
    assert np.all(got[~finite] == CANON16)


BF16_DIRECTED = [  # docs/numerics.md §3 table, plus the Inf cases
    (0x3F808000, 0x3F80), (0x3F818000, 0x3F82), (0x3F808001, 0x3F81), (0x00008000, 0x0000),
    (0x80000001, 0x8000), (0x007FFFFF, 0x0080), (0x7F7FFFFF, 0x7F80), (0x7F800001, 0x7FC0),
    (0xFFFFFFFF, 0x7FC0), (0x7F7F8000, 0x7F80), (0x7F7F7FFF, 0x7F7F), (0x7F800000, 0x7F80),
    (0xFF800000, 0xFF80), (0x00000000, 0x0000), (0x80000000, 0x8000), (0xFFC00000, 0x7FC0),
]


def test_f32_to_bf16_directed():
    a, want = (np.array(col) for col in zip(*BF16_DIRECTED))
    got = _check_bf16(a.astype(U32))
    assert np.array_equal(got, want.astype(U16))


# --- pipelined F32Add and Bf16MulF32 -------------------------------------------------------------

def _run_pipe(dut, ports, columns):
    """Drive a pipelined block with one row of inputs per cycle; return ``y`` for each row,
    read ``dut.latency`` cycles after it was presented (the rows stream without gaps)."""
    target = Cat(*(getattr(dut, p) for p in ports))
    shifts = np.cumsum([0] + [len(getattr(dut, p)) for p in ports[:-1]])
    words = [sum(int(v) << int(s) for v, s in zip(row, shifts)) for row in zip(*columns)]
    lat = dut.latency
    out = np.zeros(len(words), dtype=np.uint64)

    async def bench(ctx):
        for i in range(len(words) + lat):
            if i < len(words):
                ctx.set(target, words[i])
            if i >= lat:
                out[i - lat] = ctx.get(dut.y)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


N_PIPE = 4000  # random operand pairs streamed through each pipelined block


@pytest.mark.parametrize("stages", [fp.F32Add.STEPS, ("sum",), ("unpack", "norm")],
                         ids=["all", "sum", "unpack+norm"])
def test_f32add_pipelined_bit_exact(stages):
    dut = fp.F32Add(stages=stages)
    assert dut.latency == len(stages)
    rng = np.random.default_rng(0xADD + dut.latency)
    a, b = _add_pairs(rng, N_PIPE)
    a = np.concatenate([a, F32_SPECIALS, np.repeat(F32_SPECIALS, len(F32_SPECIALS))])
    b = np.concatenate([b, F32_SPECIALS[::-1], np.tile(F32_SPECIALS, len(F32_SPECIALS))])
    got = _run_pipe(dut, ["a", "b"], [a, b]).astype(U32)
    want = _ref_add(a, b)
    assert np.array_equal(got, want), _mismatches("add", [a, b], got, want, _h32)


@pytest.mark.parametrize("stages", [fp.Bf16MulF32.STEPS, ("product",), ("lzc", "denorm")],
                         ids=["all", "product", "lzc+denorm"])
def test_bf16mul_pipelined_bit_exact(stages):
    dut = fp.Bf16MulF32(stages=stages)
    assert dut.latency == len(stages)
    rng = np.random.default_rng(0x3017 + dut.latency)
    a, b = _mul_pairs(rng, N_PIPE)
    a = np.concatenate([a, np.repeat(BF16_SPECIALS, len(BF16_SPECIALS))])
    b = np.concatenate([b, np.tile(BF16_SPECIALS, len(BF16_SPECIALS))])
    got = _run_pipe(dut, ["a", "b"], [a, b]).astype(U32)
    want = _ref_mul(a, b)
    assert np.array_equal(got, want), _mismatches("mul", [a, b], got, want, _h32)


def test_fp_pipeline_steps_checked():
    with pytest.raises(ValueError, match=r"^F32Add: unknown pipeline steps \['round'\] "
                                         r"\(known: unpack, sum, lzc, norm\)$"):
        fp.F32Add(stages=("sum", "round"))
    with pytest.raises(ValueError, match=r"^Bf16MulF32: unknown pipeline steps \['sum'\]"):
        fp.Bf16MulF32(stages="sum")
    assert fp.F32Add(stages="norm").latency == 1 and fp.F32Add().latency == 0
    assert set(ADD_CUTS) == set(MUL_CUTS) == {1, 2, 3, 4, 5}
    for k in ADD_CUTS:  # k - 1 registers inside an operation, in datapath order
        assert len(ADD_CUTS[k]) == len(MUL_CUTS[k]) == k - 1
        assert list(ADD_CUTS[k]) == [s for s in fp.F32Add.STEPS if s in ADD_CUTS[k]]
        assert list(MUL_CUTS[k]) == [s for s in fp.Bf16MulF32.STEPS if s in MUL_CUTS[k]]


# --- BankMac -------------------------------------------------------------------------------------

def _beat_word(layout, w, x):
    """The payload bits of one beat: lane l of each ArrayLayout field at 16 * l."""
    def field(values):
        return int.from_bytes(np.asarray(values, dtype="<u2").tobytes(), "little")
    return (field(w) << layout["w"].offset) | (field(x) << layout["x"].offset)


def _run_mac(dut, cycles):
    """Drive ``dut`` one cycle per ``(valid, clear, w, x)`` and return, after each clock edge,
    the ``acc`` and ``readout`` values; ``ready`` is checked in every cycle."""
    layout = beat_layout(dut.lanes)
    words = [_beat_word(layout, w, x) for _, _, w, x in cycles]
    acc = np.zeros(len(cycles), U32)
    rd = np.zeros(len(cycles), U16)
    not_ready = []

    async def bench(ctx):
        for i, ((valid, clear, _, _), word) in enumerate(zip(cycles, words)):
            ctx.set(dut.i_beat.payload.as_value(), word)
            ctx.set(dut.i_beat.valid, valid)
            ctx.set(dut.clear, clear)
            if not ctx.get(dut.i_beat.ready):
                not_ready.append(i)
            await ctx.tick()
            acc[i] = ctx.get(dut.acc)
            rd[i] = ctx.get(dut.readout)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert not not_ready, f"ready low in cycles {not_ready[:10]}"
    return acc, rd


def _model_mac(cycles, latency):
    """The golden accumulator as the DUT shows it after each cycle's clock edge: the state after
    the operations of cycle ``n + 1 - latency`` (a clear first, then a transferred beat)."""
    acc = np.zeros(1, F32)
    states = []
    for valid, clear, w, x in cycles:
        if clear:
            acc = np.zeros(1, F32)
        if valid:
            acc = nm.mac_accumulate(acc, nm.bf16_bits_to_f32(w)[None, None, :],
                                    nm.bf16_bits_to_f32(x)[None, :])
        states.append(acc[0])
    states = [F32(0.0)] * (latency - 1) + states
    acc = np.array(states[:len(cycles)], F32)
    readout = nm.readout(acc).view(U32) >> U32(16)
    return acc.view(U32), readout.astype(U16)


def _check_mac(dut, cycles):
    got_acc, got_rd = _run_mac(dut, cycles)
    want_acc, want_rd = _model_mac(cycles, dut.latency)
    bad = np.flatnonzero((got_acc != want_acc) | (got_rd != want_rd))
    assert not bad.size, (
        f"{bad.size} of {len(cycles)} cycles differ; first at cycle {bad[0]}: acc "
        f"{_h32(int(got_acc[bad[0]]))} want {_h32(int(want_acc[bad[0]]))}, readout "
        f"{_h16(int(got_rd[bad[0]]))} want {_h16(int(want_rd[bad[0]]))}")
    return got_acc


_FLAVOURS = ("normal", "normal", "normal", "mixed", "bits", "tiny", "huge", "cancel")


def _operands(rng, flavour, n, lanes):
    """``n`` beats of (w, x) BF16 patterns of one stream flavour."""
    shape = (n, lanes)

    def normal():
        scale = F32(2.0) ** rng.integers(-24, 25)
        return nm.f32_to_bf16_bits((rng.standard_normal(shape) * scale).astype(F32))

    def exps(lo, hi):
        sign = rng.integers(0, 2, shape).astype(U16) << U16(15)
        return (sign | (rng.integers(lo, hi + 1, shape).astype(U16) << U16(7))
                | rng.integers(0, 128, shape).astype(U16)).astype(U16)

    if flavour == "normal":
        return normal(), normal()
    if flavour == "bits":
        return (rng.integers(0, 1 << 16, shape).astype(U16),
                rng.integers(0, 1 << 16, shape).astype(U16))
    if flavour == "tiny":  # products around and below the binary32 subnormal range
        return exps(0, 40), exps(0, 90)
    if flavour == "huge":  # products around overflow
        return exps(170, 254), exps(100, 200)
    if flavour == "mixed":
        out = []
        for _ in range(2):
            v = normal()
            pick = rng.random(shape)
            v = np.where(pick < 0.03, rng.choice(BF16_SPECIALS, shape), v)
            v = np.where((pick >= 0.03) & (pick < 0.08), exps(0, 0), v)
            out.append(v.astype(U16))
        return tuple(out)
    # cancel: in about half the lane pairs lane 2i+1 is the negation of lane 2i (that level-1
    # sum is +0), and every second beat negates the one before it (so the accumulator of a
    # stream that started at +0 returns to +0)
    w, x = normal(), normal()
    pairs = rng.random((n, lanes // 2)) < 0.5
    w[:, 1::2] = np.where(pairs, w[:, 0::2] ^ U16(0x8000), w[:, 1::2])
    x[:, 1::2] = np.where(pairs, x[:, 0::2], x[:, 1::2])
    w[1::2] = w[0::2][:len(w[1::2])] ^ U16(0x8000)
    x[1::2] = x[0::2][:len(x[1::2])]
    return w, x


def _random_cycles(rng, lanes, beats, max_len=48, gap_p=0.15):
    """Cycles for random streams: a clear before each stream (alone, or with its first beat),
    random stream lengths and flavours, and idle cycles (valid low, junk payload) in between."""
    cycles = []
    total = 0
    first = True
    while total < beats:
        n = int(rng.integers(1, max_len + 1))
        w, x = _operands(rng, _FLAVOURS[rng.integers(len(_FLAVOURS))], n, lanes)
        # a clear cycle of its own, or a clear with the first beat (after reset: no clear,
        # the stream relies on the reset value +0)
        join = bool(rng.integers(0, 2))
        if not join:
            cycles.append((0, 1, *(rng.integers(0, 1 << 16, (2, lanes)).astype(U16))))
        for i in range(n):
            while rng.random() < gap_p:
                cycles.append((0, 0, *(rng.integers(0, 1 << 16, (2, lanes)).astype(U16))))
            clear = int(i == 0 and join and not first)
            cycles.append((1, clear, w[i], x[i]))
        total += n
        first = False
    return cycles


def test_bank_mac_random_streams_bit_exact():
    dut = BankMac(preset("tiny"))
    assert dut.lanes == preset("tiny").geometry.mac_lanes and dut.latency == 1
    rng = np.random.default_rng(0xBA2C)
    cycles = _random_cycles(rng, dut.lanes, N_BEATS)
    assert sum(valid for valid, *_ in cycles) >= N_BEATS
    acc = _check_mac(dut, cycles).view(F32)
    # the streams reach NaN, Inf and exact +0 accumulators, and subnormal ones
    assert np.isnan(acc).sum() > 100 and np.isinf(acc).sum() > 100
    assert (acc.view(U32) == 0).sum() > 500
    assert ((acc != 0) & (np.abs(acc) < np.finfo(F32).tiny)).sum() > 20


@pytest.mark.parametrize("pipeline", [1, 2])
def test_bank_mac_pipelined_random_streams(pipeline):
    dut = BankMac(preset("tiny"), pipeline=pipeline)
    assert dut.latency == 1 + pipeline
    rng = np.random.default_rng(100 + pipeline)
    _check_mac(dut, _random_cycles(rng, dut.lanes, 1500, max_len=12, gap_p=0.3))


@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_bank_mac_lanes_from_config(lanes):
    tiny = preset("tiny")
    config = tiny.replace(geometry=dataclasses.replace(
        tiny.geometry, mac_lanes=lanes, column_bytes=lanes * 2))
    dut = BankMac(config)
    assert dut.lanes == lanes
    assert dut.i_beat.payload.shape() == beat_layout(lanes)
    rng = np.random.default_rng(lanes)
    _check_mac(dut, _random_cycles(rng, lanes, 600))


def _stream(lanes, beats, clear_first=True):
    """Cycles for one stream of (w, x) beats, each lane list padded with +0 to ``lanes``."""
    cycles = [(0, 1, np.zeros(lanes, U16), np.zeros(lanes, U16))] if clear_first else []
    for w, x in beats:
        w = np.array(list(w) + [0] * (lanes - len(w)), U16)
        x = np.array(list(x) + [0] * (lanes - len(x)), U16)
        cycles.append((1, 0, w, x))
    return cycles


def _bf(values):
    return [int(v) for v in nm.f32_to_bf16_bits(np.asarray(values, F32))]


def _check_finals(dut, cases):
    """Run the ``(cycles, (acc, readout))`` cases back to back in one simulation (each followed
    by idle cycles that drain the pipeline), check every cycle against the golden model, and
    check each case's final accumulator and read-out against the expected bit patterns."""
    idle = (0, 0, np.zeros(dut.lanes, U16), np.zeros(dut.lanes, U16))
    cycles, ends = [], []
    for case_cycles, _ in cases:
        cycles += case_cycles + [idle] * dut.latency
        ends.append(len(cycles) - 1)
    acc, rd = _run_mac(dut, cycles)
    want_acc, want_rd = _model_mac(cycles, dut.latency)
    assert np.array_equal(acc, want_acc) and np.array_equal(rd, want_rd)
    got = [(int(acc[i]), int(rd[i])) for i in ends]
    assert got == [want for _, want in cases], [
        (i, f"{_h32(g[0])}/{_h16(g[1])}", f"{_h32(w[0])}/{_h16(w[1])}")
        for i, (g, (_, w)) in enumerate(zip(got, cases)) if g != w]


@pytest.fixture(params=["comb", "pipelined", "deep"])
def mac(request):
    if request.param == "deep":  # every product and tree level in 3 stages: latency 16
        return PipelinedBankMac(preset("paper"), stages_per_op=3)
    return BankMac(preset("paper"), pipeline={"comb": 0, "pipelined": 2}[request.param])


PLUS_ZERO = (0x00000000, 0x0000)
PLUS_INF = (0x7F800000, 0x7F80)
NAN = (CANON32, CANON16)


def test_bank_mac_all_zeros(mac):
    L = mac.lanes
    zeros = ([0] * L, [0] * L)
    neg = ([0x8000] * L, [0] * L)  # every product -0, every tree sum -0
    _check_finals(mac, [
        (_stream(L, [zeros] * 5), PLUS_ZERO),
        (_stream(L, [neg] * 5), PLUS_ZERO),  # +0 ⊕ -0 = +0: the accumulator is never -0
        (_stream(L, [(_bf([3.0]), _bf([5.0]))]) + _stream(L, []), PLUS_ZERO),  # a lone clear
    ])


def test_bank_mac_subnormal_products(mac):
    L = mac.lanes
    # 2^-133 * 1 (an exact binary32 subnormal), 2^-133 * 2^-16 = 2^-149, 2^-133 * 2^-17 =
    # 2^-150 (a tie: rounds to +0), 2^-133 * 1.5 * 2^-17 (above the tie: 2^-149)
    beat = ([0x0001, 0x0001, 0x0001, 0x0001], [0x3F80, 0x3780, 0x3700, 0x3740])
    under = ([0x8001] * L, [0x0001] * L)  # every product underflows to -0
    _check_finals(mac, [
        (_stream(L, [beat]), (0x00010002, 0x0001)),
        (_stream(L, [beat] * 3), (0x00030006, 0x0003)),
        (_stream(L, [under] * 3), PLUS_ZERO),
    ])


def test_bank_mac_inf_times_zero_is_canonical_nan(mac):
    L = mac.lanes
    bad = ([0xFF80] + _bf([1.0]), [0x8000] + _bf([2.0]))  # -Inf * -0 = NaN in lane 0
    ok = (_bf([1.0, 2.0]), _bf([3.0, 4.0]))  # 1*3 + 2*4 = 11
    _check_finals(mac, [
        (_stream(L, [bad]), NAN),
        (_stream(L, [ok, bad, ok]), NAN),  # NaN is sticky ...
        (_stream(L, [ok, bad]) + _stream(L, [ok]), (0x41300000, 0x4130)),  # ... until a clear
    ])


def test_bank_mac_overflow_to_inf(mac):
    L = mac.lanes
    big = ([0x7F7F] * L, [0x3F80] * L)  # products near FLT_MAX: the tree overflows
    prod = ([0x7F00], [0x4000])  # 2^127 * 2 = 2^128: the product itself is Inf
    neg = ([0xFF00], [0x4000])
    _check_finals(mac, [
        (_stream(L, [big]), PLUS_INF),
        (_stream(L, [prod]), PLUS_INF),
        (_stream(L, [prod, big]), PLUS_INF),  # +Inf stays +Inf ...
        (_stream(L, [prod, neg]), NAN),  # ... until an opposite Inf
        (_stream(L, [([0x7F00] * 2, [0x3F80] * 2)]), PLUS_INF),  # level 1: 2^127 + 2^127
        # finite tree sums whose accumulation overflows: 2^127 + 2^126 + 2^126
        (_stream(L, [([0x7F00], [0x3F80]), ([0x7E80], [0x3F80]), ([0x7E80], [0x3F80])]),
         PLUS_INF),
        (_stream(L, [([0xFF00], [0x3F80]), ([0xFE80], [0x3F80]), ([0xFE80], [0x3F80])]),
         (0xFF800000, 0xFF80)),
    ])


def test_bank_mac_exponent_spread_and_order(mac):
    L = mac.lanes
    one, big = _bf([1.0])[0], _bf([2.0 ** 25])[0]
    nbig = big ^ 0x8000
    spread = _bf([2.0 ** 50, 2.0 ** -50, 2.0 ** -60])
    _check_finals(mac, [
        # docs/numerics.md §4: products [1, 1, big, -big] in one column give 2 ...
        (_stream(L, [([one, one, big, nbig], [one] * 4)]), (0x40000000, 0x4000)),
        # ... but 0 one lane per column (2 ⊕ big is a tie that rounds to big)
        (_stream(L, [([v], [one]) for v in (one, one, big, nbig)]), PLUS_ZERO),
        # 2^100 ⊕ 2^-100 ⊕ ... = 2^100
        (_stream(L, [(spread, spread)]), (0x71800000, 0x7180)),
        # column order decides: 1 is absorbed by 2^50 unless -2^50 has come first
        (_stream(L, [([big], [big]), ([one], [one]), ([nbig], [big])]), PLUS_ZERO),
        (_stream(L, [([big], [big]), ([nbig], [big]), ([one], [one])]), (0x3F800000, 0x3F80)),
    ])


def test_bank_mac_cancellation_to_plus_zero(mac):
    L = mac.lanes
    w = _bf(np.linspace(-3, 5, L))
    x = _bf(np.linspace(1, 2, L))
    negw = [v ^ 0x8000 for v in w]
    # inside one tree: lane 2i+1 = -(lane 2i) makes every level-1 sum +0
    pw = [v for a in w[:L // 2] for v in (a, a ^ 0x8000)]
    px = [v for a in x[:L // 2] for v in (a, a)]
    _check_finals(mac, [
        (_stream(L, [(w, x), (negw, x)]), PLUS_ZERO),
        (_stream(L, [(negw, x), (w, x)]), PLUS_ZERO),
        (_stream(L, [(pw, px)]), PLUS_ZERO),
        (_stream(L, [(w, x), (negw, x)] * 3), PLUS_ZERO),
    ])


def test_bank_mac_clear_with_beat_starts_new_stream(mac):
    L = mac.lanes
    three = _stream(L, [(_bf([1.0]), _bf([3.0]))], clear_first=False)[0]
    five = _stream(L, [(_bf([1.0]), _bf([5.0]))], clear_first=False)[0]
    clear_and_five = (1, 1, five[2], five[3])
    _check_finals(mac, [
        ([three, three, clear_and_five], (0x40A00000, 0x40A0)),
        ([three, clear_and_five, five], (0x41200000, 0x4120)),
        ([three, clear_and_five, clear_and_five], (0x40A00000, 0x40A0)),
    ])


def test_bank_mac_rejects_bad_arguments():
    with pytest.raises(PimgptError, match=r"^BankMac pipeline must be 0, 1 or 2 stages, not 3$"):
        BankMac(preset("tiny"), pipeline=3)
    with pytest.raises(TypeError, match=r"^config must be a MachineConfig, not 16$"):
        BankMac(16)


def test_bank_mac_signature():
    dut = BankMac(preset("paper"))
    lanes = preset("paper").geometry.mac_lanes
    members = dut.signature.members
    assert set(members) == {"i_beat", "clear", "acc", "readout"}
    assert members["i_beat"].signature.members["payload"].shape == beat_layout(lanes)
    assert len(dut.acc) == 32 and len(dut.readout) == 16


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_bank_mac_converts_to_verilog(name):
    text = verilog.convert(BankMac(preset(name)), name="bank_mac", emit_src=False)
    assert "module bank_mac(" in text
    for port in ("i_beat__valid", "i_beat__ready", "i_beat__payload", "clear", "acc", "readout"):
        assert port in text


# --- PipelinedBankMac, MacAccumulator ------------------------------------------------------------

@pytest.mark.parametrize("stages", [1, 2, 3, 4, 5])
def test_pipelined_bank_mac_random_streams(stages):
    dut = PipelinedBankMac(preset("tiny"), stages_per_op=stages)
    levels = preset("tiny").geometry.mac_lanes.bit_length() - 1
    assert dut.latency == stages * (1 + levels) + 1
    rng = np.random.default_rng(200 + stages)
    beats = 3000 if stages == 2 else 600  # 2: the generated bank_mac_s2
    cycles = _random_cycles(rng, dut.lanes, beats, max_len=24, gap_p=0.2)
    acc = _check_mac(dut, cycles).view(F32)
    assert np.isnan(acc).sum() > 10 and (acc.view(U32) == 0).sum() > 10


@pytest.mark.parametrize("lanes", [1, 2])
def test_pipelined_bank_mac_lanes_from_config(lanes):
    tiny = preset("tiny")
    config = tiny.replace(geometry=dataclasses.replace(
        tiny.geometry, mac_lanes=lanes, column_bytes=lanes * 2))
    dut = PipelinedBankMac(config, stages_per_op=3)
    assert dut.lanes == lanes and dut.latency == 3 * lanes + 1  # log2(lanes) + 1 operations
    rng = np.random.default_rng(300 + lanes)
    _check_mac(dut, _random_cycles(rng, lanes, 400))


def test_mac_accumulator_alone():
    """The accumulate stage on its own: clear first, then the tree sum, once per valid."""
    dut = MacAccumulator()
    rng = np.random.default_rng(0xACC)
    n = 3000
    t = _f32_patterns(rng, n)
    valid = rng.random(n) < 0.8
    clear = rng.random(n) < 0.05
    got = np.zeros(n, U32)

    async def bench(ctx):
        for i in range(n):
            ctx.set(dut.t, int(t[i]))
            ctx.set(dut.valid, int(valid[i]))
            ctx.set(dut.clear, int(clear[i]))
            await ctx.tick()
            got[i] = ctx.get(dut.acc)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = np.zeros(n, U32)
    acc = np.zeros(1, F32)
    for i in range(n):
        if clear[i]:
            acc = np.zeros(1, F32)
        if valid[i]:
            acc = nm.binop("add", acc, t[i:i + 1].view(F32))
        want[i] = acc.view(U32)[0]
    assert np.array_equal(got, want), _mismatches("acc", [t], got, want, _h32)


def test_pipelined_bank_mac_rejects_bad_arguments():
    for bad in (0, 6, "2", 2.0):
        with pytest.raises(PimgptError, match=r"^PipelinedBankMac stages_per_op must be 1 to 5, "):
            PipelinedBankMac(preset("tiny"), stages_per_op=bad)
    with pytest.raises(TypeError, match=r"^config must be a MachineConfig, not 16$"):
        PipelinedBankMac(16)


def test_pipelined_bank_mac_signature_and_verilog():
    dut = PipelinedBankMac(preset("paper"), stages_per_op=2)
    assert dut.signature == BankMac(preset("paper")).signature
    text = verilog.convert(dut, name="bank_mac_s2", emit_src=False)
    assert "module bank_mac_s2(" in text
    for port in ("i_beat__valid", "i_beat__ready", "i_beat__payload", "clear", "acc", "readout"):
        assert port in text
