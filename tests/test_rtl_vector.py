# amaranth: UnusedElaboratable=no
"""The ASIC vector unit RTL (hdl/vector.py, and F32Mul in hdl/fp.py) against the golden numerics.

``F32Mul`` runs combinationally over random and directed operand pairs (every class: subnormal
products and ties, overflow, specials) against ``nm.binop("mul")``. The ``VectorUnit`` (the
``tiny`` preset, 4 lanes, with a smaller vector memory) runs one long simulation in which every
scenario below loads vector memory, issues instructions on ``i_op`` exactly as the compiler
emits them and reads the results back; each test then compares its scenario's results bit for
bit with :mod:`pimgpt.sim.numerics` (``binop``, ``vexp``, ``vrecip``, ``vrsqrt``, ``vgelu``,
``vsum``, ``vmax``, ``vargmax``, ``softmax``, ``layernorm``). Every op's cycle count, from the
accept to ``done``, must equal the cycle simulator's (``CycleSimulator`` on the same instruction).
Random back-to-back sequences (independent ranges; interleaved in-place chains) check overlapping
ops: every result word against the functional machine, ``ready`` in every cycle and every accept
and ``done`` cycle against :class:`VectorIssue` (the one issue rule, the simulator's too).
``PIMGPT_RTL_SAMPLES=<factor>`` multiplies the random sample counts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import deque

import numpy as np
import pytest
from amaranth.sim import Simulator
from test_rtl_mac import F32_SPECIALS, _f32_patterns, _mismatches, _run_comb

from pimgpt.errors import PimgptError
from pimgpt.hdl import fp, isa
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import preset
from pimgpt.hdl.vector import (GELU_FEEDS, MAX_IN_FLIGHT, PIPELINE_DEPTHS, VectorIssue,
                                VectorUnit, op_cycles, op_latency, op_timing)
from pimgpt.mapping.pimbin import PimBinary
from pimgpt.sim import numerics as nm
from pimgpt.sim.cycle import CycleSimulator
from pimgpt.sim.machine import FunctionalMachine

F32, U32 = np.float32, np.uint32
CANON32 = int(nm.CANON_NAN_F32)
SCALE = float(os.environ.get("PIMGPT_RTL_SAMPLES", "1"))
TINY = preset("tiny")
#: the tiny preset's 4 lanes and latencies, with 4096 words of vector memory
CFG = TINY.replace(name="tiny-vmem4k", asic=dataclasses.replace(TINY.asic, vmem_words=4096))
L = CFG.asic.vector_lanes


def _n(count: int) -> int:
    """A sample count scaled by PIMGPT_RTL_SAMPLES, rounded up to whole beats."""
    return max(L, -(-int(count * SCALE) // L) * L)


def _h32(v):
    return f"0x{v:08X}"


def _u32(x) -> np.ndarray:
    return np.asarray(x, dtype=F32).view(U32)


def _assert_bits(name, inputs, got, want):
    got, want = np.asarray(got, U32), np.asarray(want, U32)
    assert got.shape == want.shape
    inputs = [np.broadcast_to(np.asarray(i, U32), got.shape) for i in inputs]
    assert np.array_equal(got, want), _mismatches(name, inputs, got, want, _h32)


# --- F32Mul --------------------------------------------------------------------------------------

def _check_f32mul(a, b):
    a, b = np.asarray(a, U32), np.asarray(b, U32)
    got = _run_comb(fp.F32Mul(), ["a", "b"], [a, b]).astype(U32)
    want = nm.binop("mul", a.view(F32), b.view(F32)).view(U32)
    _assert_bits("mul", [a, b], got, want)
    return got


def _mul_edge_pairs(rng, n):
    """Operands whose product lands around the subnormal range, underflow or overflow, with
    random signs and fractions (rounding, ties and the carries into a new binade included)."""
    ea = rng.integers(0, 255, n)
    target = np.where(rng.integers(0, 2, n) == 0, rng.integers(-175, -118, n),
                      rng.integers(118, 131, n))
    eb = np.clip(target + 127 - ea + 127, 0, 254)

    def build(e):
        sign = rng.integers(0, 2, n).astype(U32) << U32(31)
        frac = rng.integers(0, 1 << 23, n).astype(U32)
        # sparse fractions make exact products and exact ties likely
        sparse = frac & (U32(0x7FFFFF) << rng.integers(0, 23, n).astype(U32))
        frac = np.where(rng.integers(0, 2, n) == 0, frac, sparse & U32(0x7FFFFF))
        return (sign | (e.astype(U32) << U32(23)) | frac).astype(U32)

    return build(ea), build(eb)


def test_f32mul_random_bit_exact():
    rng = np.random.default_rng(0xF32)
    n = int(20_000 * SCALE)
    a1, b1 = _f32_patterns(rng, n), _f32_patterns(rng, n)
    a2, b2 = _mul_edge_pairs(rng, n)
    a, b = np.concatenate([a1, a2]), np.concatenate([b1, b2])
    got = _check_f32mul(a, b)
    fy = got.view(F32)
    with np.errstate(all="ignore"):
        exact = a.view(F32).astype(np.float64) * b.view(F32).astype(np.float64)  # exact
    tiny = np.finfo(F32).tiny
    # the draw reaches every class it is meant to
    assert ((fy != 0) & (np.abs(fy) < tiny)).sum() > 1000  # subnormal products
    assert ((fy == 0) & (exact != 0)).sum() > 500  # underflow to ±0
    assert (np.isinf(fy) & np.isfinite(exact)).sum() > 500  # overflow
    assert np.isnan(fy).sum() > 200
    rounded = np.isfinite(exact) & (fy.astype(np.float64) != exact) & (fy != 0)
    assert rounded.sum() > 5000
    r = fy.astype(np.float64)
    with np.errstate(all="ignore"):
        lo = np.nextafter(fy, F32(-np.inf)).astype(np.float64)
        hi = np.nextafter(fy, F32(np.inf)).astype(np.float64)
    ties = np.isfinite(r) & ((exact == (r + lo) / 2) | (exact == (r + hi) / 2))
    assert ties.sum() > 200


F32MUL_DIRECTED = [
    # a, b, expected
    (0x3F800000, 0x3F800000, 0x3F800000),  # 1 * 1
    (0x3FC00000, 0xC0400000, 0xC0900000),  # 1.5 * -3 = -4.5
    (0x7F800000, 0x00000000, CANON32),  # Inf * 0 = NaN
    (0x80000000, 0xFF800000, CANON32),
    (0x7F800000, 0x00000001, 0x7F800000),  # Inf * subnormal = Inf
    (0xFF800000, 0xBF800000, 0x7F800000),
    (0xFFC00001, 0x3F800000, CANON32),  # NaN sign and payload dropped
    (0x00000000, 0x80000000, 0x80000000),  # signed zeros: XOR of the signs
    (0x80000000, 0x80000000, 0x00000000),
    (0x80000000, 0x7F7FFFFF, 0x80000000),
    (0x7F7FFFFF, 0x40000000, 0x7F800000),  # overflow
    (0x7F7FFFFF, 0x3F800001, 0x7F800000),  # FLT_MAX (1 + 2^-23) rounds to Inf
    (0x7F7FFFFF, 0x3F800000, 0x7F7FFFFF),
    (0xFF000000, 0x40000000, 0xFF800000),  # -2^127 * 2 = -Inf
    (0x00800000, 0x3F000000, 0x00400000),  # smallest normal * 0.5: exact subnormal
    (0x00000001, 0x3F000000, 0x00000000),  # 2^-150: tie, to even (+0)
    (0x80000001, 0x3F000000, 0x80000000),  # ... -0, sign kept
    (0x00000001, 0x3F400000, 0x00000001),  # 0.75 * 2^-149: up
    (0x00000003, 0x3F000000, 0x00000002),  # 1.5 * 2^-149: tie, to even (2)
    (0x00000005, 0x3F000000, 0x00000002),  # 2.5 * 2^-149: tie, to even (2)
    (0x00000001, 0x00000001, 0x00000000),  # 2^-298
    (0x00000001, 0x7F000000, 0x34800000),  # subnormal * huge = 2^-22, exact normal
    (0x007FFFFF, 0x3F800001, 0x00800000),  # rounds up to the smallest normal
    (0x3F800001, 0x3FC00000, 0x3FC00002),  # (1 + 2^-23) * 1.5: tie, to even
    (0x3F800001, 0x3F800001, 0x3F800002),  # (1 + 2^-23)^2: below the tie
    (0x3FFFFFFF, 0x3FFFFFFF, 0x407FFFFE),
    (0x4B800001, 0x3F7FFFFF, 0x4B800000),
]


def test_f32mul_directed():
    a, b, want = (np.array(col, U32) for col in zip(*F32MUL_DIRECTED))
    ab, ba = np.concatenate([a, b]), np.concatenate([b, a])  # both operand orders
    got = _check_f32mul(ab, ba)
    both = np.concatenate([want, want])
    _assert_bits("mul", [ab, ba], got, both)


def test_f32mul_all_special_pairs():
    a, b = (g.ravel() for g in np.meshgrid(F32_SPECIALS, F32_SPECIALS))
    got = _check_f32mul(a, b)
    assert np.all(got[np.isnan(got.view(F32))] == CANON32)


# --- VectorUnit simulation harness ---------------------------------------------------------------

class Harness:
    """Testbench-side helpers: memory access (directly on the banks), issuing ops, the host
    port. ``log`` collects ``(op, n, operands, cycles, handshake_ok)`` of every op."""

    def __init__(self, dut: VectorUnit, ctx):
        self.dut, self.ctx = dut, ctx
        self.log: list[tuple[Op, int, dict, int, bool]] = []

    def load(self, addr: int, values) -> None:
        for i, v in enumerate(np.asarray(values, dtype=F32).view(U32)):
            w, lanes = addr + i, self.dut.lanes
            self.ctx.set(self.dut.banks[w % lanes][w // lanes], int(v))

    def read(self, addr: int, n: int) -> np.ndarray:
        lanes = self.dut.lanes
        return np.array([self.ctx.get(self.dut.banks[w % lanes][w // lanes])
                         for w in range(addr, addr + n)], dtype=U32)

    async def op(self, opcode: Op, dst: int = 0, a: int = 0, b: int = 0, n: int = 0,
                 bcast: int = 0, imm: float | int | None = None) -> int:
        """Issue one op, wait for ``done``; returns the cycles from the accept to ``done``."""
        ctx, dut = self.ctx, self.dut
        if isinstance(imm, float) or isinstance(imm, np.floating):
            imm = int(_u32(imm))
        args = {"dst": dst, "a": a, "b": b, "n": n, "bcast": bcast, "imm": imm or 0}
        ctx.set(dut.i_op.payload, {"opcode": opcode, **args})
        ctx.set(dut.i_op.valid, 1)
        ok = bool(ctx.get(dut.i_op.ready)) and not ctx.get(dut.busy)
        await ctx.tick()
        ctx.set(dut.i_op.valid, 0)
        cycles = 1
        while not ctx.get(dut.done):
            ok &= bool(ctx.get(dut.busy))
            await ctx.tick()
            cycles += 1
            assert cycles < 100_000
        ok &= bool(ctx.get(dut.i_op.ready)) and not ctx.get(dut.busy)
        self.log.append((opcode, n, args, cycles, ok))
        return cycles

    @property
    def result(self) -> int:
        return self.ctx.get(self.dut.result)


SCENARIOS = {}


def scenario(fn):
    """Register an ``async fn(h, rng) -> results`` to run inside the shared simulation."""
    SCENARIOS[fn.__name__] = fn
    return fn


@pytest.fixture(scope="module")
def rtl() -> dict:
    """Runs every scenario in one simulation (building the simulator is the slow part)."""
    dut = VectorUnit(CFG)
    out: dict = {}

    async def bench(ctx):
        h = Harness(dut, ctx)
        rng = np.random.default_rng(0x7EC)
        # garbage everywhere, so that words an op must not touch are checked too
        h.load(0, _f32_patterns(rng, CFG.asic.vmem_words).view(F32))
        for name, fn in SCENARIOS.items():
            start = len(h.log)
            try:
                out[name] = await fn(h, rng)
            except AssertionError as exc:  # reported by the scenario's own test
                out[name] = exc
            out[name + ".log"] = h.log[start:]
        out["log"] = h.log

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    return out


def _get(rtl: dict, name: str):
    res = rtl[name]
    if isinstance(res, AssertionError):
        raise res
    return res


# --- elementwise -----------------------------------------------------------------------------

_BIN = {Op.VADD: "add", Op.VSUB: "sub", Op.VMUL: "mul", Op.VADDI: "add", Op.VMULI: "mul"}


@scenario
async def elementwise(h: Harness, rng) -> list:
    """Every elementwise op at unaligned addresses and lengths of every remainder, with
    broadcast and immediate operands of every class; in place too."""
    res = []
    A, B, D = 100, 1203, 2401  # each with a different remainder mod 4 (0, 3, 1)
    cases = []
    for op in (Op.VADD, Op.VSUB, Op.VMUL):
        for n, a_off, b_off, d_off, bcast in ((1, 0, 0, 0, 0), (2, 1, 2, 3, 0), (3, 3, 1, 2, 0),
                                              (5, 2, 3, 1, 1), (_n(300), 1, 0, 3, 0),
                                              (_n(40) + 1, 0, 3, 2, 1), (17, 1, 1, 0, 1)):
            cases.append((op, n, A + a_off, B + b_off, D + d_off, bcast, None))
    imms = [1.0, -0.0, 0.0, np.inf, -np.inf, np.nan, 1e-40, 3.4e38, -2.5, F32(1 / 3)]
    for op in (Op.VADDI, Op.VMULI):
        for i, imm in enumerate(imms):
            cases.append((op, 1 + 7 * i, A + i % 4, 0, D + (i + 1) % 4, 0, F32(imm)))
    cases.append((Op.VMOV, 23, A + 1, 0, D + 2, 0, None))
    cases.append((Op.VSET, 13, 0, 0, D + 3, 0, F32(-1.5)))
    cases.append((Op.VSET, 4, 0, 0, D, 0, F32(np.nan)))
    for op, n, a, b, d, bcast, imm in cases:
        xa = _f32_patterns(rng, n).view(F32)
        xb = _f32_patterns(rng, n).view(F32)
        h.load(a, xa)
        h.load(b, xb)
        before = h.read(d - 2, n + 4)
        await h.op(op, dst=d, a=a, b=b, n=n, bcast=bcast, imm=imm)
        got = h.read(d - 2, n + 4)
        if op in (Op.VADD, Op.VSUB, Op.VMUL):
            want = nm.binop(_BIN[op], xa, xb[0] if bcast else xb)
        elif op in (Op.VADDI, Op.VMULI):
            want = nm.binop(_BIN[op], xa, imm)
        elif op is Op.VMOV:
            want = xa
        else:
            want = np.full(n, imm, F32)
        want = np.concatenate([before[:2], _u32(want), before[-2:]])
        res.append((f"{op.name} n={n} bcast={bcast} imm={imm}", [_u32(xa), _u32(xb)], got,
                    want))
    # in place (dst == a), and dst below a overlapping it, as the compiler's sequences do
    for n, a, d in ((_n(60) + 3, A + 1, A + 1), (33, A + 6, A + 1)):
        xa = _f32_patterns(rng, n).view(F32)
        xb = _f32_patterns(rng, n).view(F32)
        h.load(a, xa)
        h.load(B, xb)
        await h.op(Op.VMUL, dst=d, a=a, b=B, n=n)
        res.append((f"VMUL in place n={n} a={a} dst={d}", [_u32(xa), _u32(xb)], h.read(d, n),
                    _u32(nm.binop("mul", xa, xb))))
    # a broadcast word inside the destination is read once, before it is overwritten
    # (word A + 1 is rewritten by the first beat while later beats are still being read)
    xa = _f32_patterns(rng, 40).view(F32)
    h.load(A, xa)
    await h.op(Op.VADD, dst=A, a=A, b=A + 1, n=40, bcast=1)
    res.append(("VADD bcast word inside dst", [_u32(xa)], h.read(A, 40),
                _u32(nm.binop("add", xa, xa[1]))))
    return res


def test_elementwise_bit_exact(rtl):
    for name, inputs, got, want in _get(rtl, "elementwise"):
        _assert_bits(name, [inp[:len(got)] if len(inp) >= len(got) else
                            np.resize(inp, len(got)) for inp in inputs], got, want)


# --- reductions ------------------------------------------------------------------------------

def _reduction_inputs(rng) -> list[np.ndarray]:
    """Vectors for VSUM/VMAX/VARGMAX: random of many lengths, cancellation, overflow, opposite
    infinities, signed zeros, NaNs, ties of the maximum across and within lanes."""
    out = []
    for n in (1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 33, _n(200) + 1):
        out.append(rng.standard_normal(n).astype(F32) * F32(rng.choice([1e-3, 1, 1e3])))
    for n in (6, 13, 40):
        out.append(_f32_patterns(rng, n).view(F32))
    big = F32(2.0 ** 25)
    out += [
        np.array([1, 1, big, -big], F32),  # order matters (docs/numerics.md §4)
        np.array([big, 1, -big, 1, 1, 1], F32),
        np.array([3e38, 3e38, 3e38, 3e38, -1, 3e38], F32),  # overflow to +Inf
        np.array([np.inf, 1, -np.inf, 2], F32),  # opposite infinities: NaN
        np.array([-0.0] * 7, F32),  # sums to +0; max -0 (first)
        np.array([-0.0, 0.0, -0.0, 0.0, 0.0], F32),  # max: the first of equal zeros
        np.array([0.0, -0.0, -0.0], F32),
        np.array([1, 5, 2, 5, 5, 0, 5, 3, 5], F32),  # ties across and within lanes
        np.array([2, 1, 1, 1, 7, 1, 1, 1, 7, 7, 7, 7, 7], F32),
        np.array([-1, -3, -1, -2, -1], F32),
        np.array([np.nan, 2, np.nan, 3, 3], F32),  # NaN ignored by argmax, NaN max
        np.array([np.nan, np.nan, np.nan], F32),  # all NaN: index 0
        np.array([-np.inf, -np.inf, -np.inf, -np.inf, -np.inf], F32),
        np.array([-np.inf, np.nan, -np.inf, -3e38], F32),
        np.array([1e-45, 0, 1.4e-45, 2.8e-45, 2.8e-45], F32),  # subnormals
    ]
    x = rng.integers(-3, 4, 61).astype(F32)  # many ties of the maximum
    out.append(x)
    return out


@scenario
async def reductions(h: Harness, rng) -> list:
    res = []
    for i, x in enumerate(_reduction_inputs(rng)):
        n = x.size
        a, d = 300 + i % 4, 2000 + (3 * i) % 4
        h.load(a, x)
        around = h.read(d - 1, 3)
        await h.op(Op.VSUM, dst=d, a=a, n=n)
        s = h.read(d - 1, 3)
        await h.op(Op.VMAX, dst=d, a=a, n=n)
        mx = h.read(d - 1, 3)
        await h.op(Op.VARGMAX, dst=d, a=a, n=n)
        res.append((x, around, s, mx, h.result, h.read(d - 1, 3)))
    # no elements: VSUM writes +0, VARGMAX gives 0
    h.load(2100, np.array([7.0], F32))
    await h.op(Op.VSUM, dst=2100, a=300, n=0)
    await h.op(Op.VARGMAX, a=300, n=0)
    res.append(("empty", h.read(2100, 1), h.result))
    return res


def test_reductions_bit_exact(rtl):
    *cases, (_, empty_sum, empty_arg) = _get(rtl, "reductions")
    for x, around, s, mx, arg, after in cases:
        what = f"x = {x[:12]!r}... (n={x.size})"
        assert s[0] == around[0] and s[2] == around[2], what  # only dst is written
        assert s[1] == _u32(nm.vsum(x, L)), (what, _h32(s[1]), _h32(int(_u32(nm.vsum(x, L)))))
        want_max = _u32(nm.vmax(x))
        assert mx[1] == want_max, (what, _h32(mx[1]))
        assert arg == nm.vargmax(x), what
        assert np.array_equal(after, mx), what  # VARGMAX writes nothing
    assert empty_sum[0] == 0 and empty_arg == 0


# --- functions -------------------------------------------------------------------------------

async def _run_function(h: Harness, op: Op, x: np.ndarray, chunk: int = 512) -> np.ndarray:
    out = []
    for i in range(0, x.size, chunk):
        part = x[i:i + chunk]
        a, d = 1 + (i // chunk) % 4, 2050 + (i // chunk) % 3  # unaligned, varying
        h.load(a, part)
        await h.op(op, dst=d, a=a, n=part.size)
        out.append(h.read(d, part.size))
    return np.concatenate(out)


def _bits_of(*patterns: int) -> np.ndarray:
    return np.array(patterns, U32).view(F32)


def _neighbours(*patterns: int, k: int = 2) -> np.ndarray:
    p = np.array(patterns, np.int64)
    return (p[:, None] + np.arange(-k, k + 1)).ravel().astype(U32).view(F32)


SPECIALS = F32_SPECIALS.view(F32)


def _exp_inputs(rng) -> np.ndarray:
    n = _n(600)
    return np.concatenate([
        rng.uniform(-87.3, 0.0, n).astype(F32),  # softmax inputs (x - max <= 0)
        rng.uniform(-20, 20, n // 2).astype(F32),
        rng.uniform(-103.98, -87.3, n // 4).astype(F32),  # subnormal results
        rng.uniform(88.0, 89.0, n // 8).astype(F32),  # around overflow
        rng.uniform(-110, -103, n // 8).astype(F32),  # around underflow
        rng.uniform(-1e-6, 1e-6, n // 8).astype(F32),  # k = 0, tiny r
        (np.arange(-300, 300) * F32(np.log(2) / 2)).astype(F32),  # halfway k (rint ties)
        _neighbours(int(_u32(nm.EXP_HI)), int(_u32(nm.EXP_LO)), 0x3F800000, 0xBF800000),
        SPECIALS, _bits_of(0x80000000, 0x00000000, 0xFF7FFFFF, 0x7F7FFFFF),
    ])


@scenario
async def vexp(h: Harness, rng) -> tuple:
    x = _exp_inputs(rng)
    return x, await _run_function(h, Op.VEXP, x)


def test_vexp_bit_exact(rtl):
    x, got = _get(rtl, "vexp")
    _assert_bits("exp", [_u32(x)], got, _u32(nm.vexp(x)))
    fy = got.view(F32)
    assert ((fy > 0) & (fy < np.finfo(F32).tiny)).sum() > 50  # subnormal results reached
    assert np.isinf(fy).sum() > 20 and (fy == 0).sum() > 20


def _across_exponents(rng, n: int, signs: bool = True) -> np.ndarray:
    exp = rng.integers(0, 255, n).astype(U32)
    frac = rng.integers(0, 1 << 23, n).astype(U32)
    sign = (rng.integers(0, 2, n).astype(U32) << U32(31)) if signs else U32(0)
    return (sign | (exp << U32(23)) | frac).astype(U32).view(F32)


def _pow2s() -> np.ndarray:
    return np.ldexp(F32(1), np.arange(-149, 128)).astype(F32)


@scenario
async def vrecip(h: Harness, rng) -> tuple:
    n = _n(800)
    x = np.concatenate([
        _across_exponents(rng, n),
        _bits_of(*rng.integers(1, 1 << 23, n // 8)),  # subnormals
        rng.uniform(1, 2, n // 4).astype(F32),
        _pow2s(), -_pow2s()[::7],
        _neighbours(0x00200000, 0x7E800000, 0x00000001, 0x007FFFFF, 0x3F800000, 0x7F7FFFFF),
        SPECIALS,
    ])
    return x, await _run_function(h, Op.VRECIP, x)


def test_vrecip_bit_exact(rtl):
    x, got = _get(rtl, "vrecip")
    _assert_bits("recip", [_u32(x)], got, _u32(nm.vrecip(x)))


@scenario
async def vrsqrt(h: Harness, rng) -> tuple:
    n = _n(800)
    x = np.concatenate([
        _across_exponents(rng, n, signs=False),
        _across_exponents(rng, n // 8),  # negative ones give NaN
        _bits_of(*rng.integers(1, 1 << 23, n // 8)),  # subnormals
        rng.uniform(1, 4, n // 4).astype(F32),
        _pow2s(),
        _neighbours(0x00800000, 0x01000000, 0x7E800000, 0x00000001, 0x007FFFFF, 0x3F800000,
                    0x40800000),
        SPECIALS,
    ])
    return x, await _run_function(h, Op.VRSQRT, x)


def test_vrsqrt_bit_exact(rtl):
    x, got = _get(rtl, "vrsqrt")
    _assert_bits("rsqrt", [_u32(x)], got, _u32(nm.vrsqrt(x)))


@scenario
async def vgelu(h: Harness, rng) -> tuple:
    n = _n(800)
    x = np.concatenate([
        rng.uniform(-10, 10, n).astype(F32),
        rng.uniform(-6, -4, n // 4).astype(F32),  # around the switch to -0
        rng.uniform(-1e-3, 1e-3, n // 8).astype(F32),
        np.linspace(-10, 10, 201, dtype=F32),
        _neighbours(0xC09EC875, 0x40A02000, 0x3F800000, 0xBF800000),
        _bits_of(0x7F7FFFFF, 0xFF7FFFFF, 0x5F000000, 0xDF000000, 0x0DA24260, 0x00000001,
                 0x80000001),
        SPECIALS,
    ])
    return x, await _run_function(h, Op.VGELU, x)


def test_vgelu_bit_exact(rtl):
    x, got = _get(rtl, "vgelu")
    _assert_bits("gelu", [_u32(x)], got, _u32(nm.vgelu(x)))


# --- the compiler's sequences ----------------------------------------------------------------

@scenario
async def softmax(h: Harness, rng) -> list:
    """mapping/compiler.py's softmax block for one head: scale, max, subtract, exp, sum,
    reciprocal, multiply, then zero the tail of the last column."""
    res = []
    row, sc = 1001, 3900  # score row and head scalar
    rows = [rng.standard_normal(n).astype(F32) * F32(s)
            for n, s in ((1, 1), (2, 3), (3, 1), (4, 10), (7, 0.1), (16, 30), (33, 2),
                         (_n(120) + 1, 5))]
    rows.append(np.array([0.5, -np.inf, 1.5, -np.inf, 0.25], F32))  # masked scores
    rows.append(np.array([0.5, np.nan, 1.5], F32))  # NaN poisons the row
    scale = 1.0 / math.sqrt(64)
    for x in rows:
        n = x.size
        h.load(row, x)
        await h.op(Op.VMULI, dst=row, a=row, n=n, imm=scale)
        await h.op(Op.VMAX, dst=sc, a=row, n=n)
        await h.op(Op.VSUB, dst=row, a=row, b=sc, n=n, bcast=1)
        await h.op(Op.VEXP, dst=row, a=row, n=n)
        await h.op(Op.VSUM, dst=sc, a=row, n=n)
        await h.op(Op.VRECIP, dst=sc, a=sc, n=1)
        await h.op(Op.VMUL, dst=row, a=row, b=sc, n=n, bcast=1)
        await h.op(Op.VSET, dst=row + n, n=CFG.geometry.mac_lanes, imm=0.0)
        res.append((x, h.read(row, n + CFG.geometry.mac_lanes)))
    return res


def test_softmax_sequence_bit_exact(rtl):
    for x, got in _get(rtl, "softmax"):
        scaled = nm.binop("mul", x, F32(1.0 / math.sqrt(64)))
        want = np.concatenate([_u32(nm.softmax(scaled, L)),
                               np.zeros(CFG.geometry.mac_lanes, U32)])
        _assert_bits(f"softmax(n={x.size})", [np.resize(_u32(x), got.size)], got, want)


@scenario
async def layernorm(h: Harness, rng) -> list:
    """mapping/compiler.py's ``_layernorm``: VSUM, VMULI 1/d, VSUB bcast, VMUL squares, VSUM,
    VMULI 1/d, VADDI eps, VRSQRT, VMUL bcast, VMUL gamma, VADD beta."""
    res = []
    eps = 1e-5
    src, dst, sq, s, gam, bet = 10, 1501, 2502, 3901, 3003, 3400
    for d, mean, sd in ((1, 3.0, 1.0), (5, 0.0, 1.0), (8, 1.0, 0.1), (30, -2.0, 10.0),
                        (_n(100) + 3, 0.5, 2.0), (64, 100.0, 0.01)):
        x = (F32(mean) + F32(sd) * rng.standard_normal(d)).astype(F32)
        gamma = (1 + 0.1 * rng.standard_normal(d)).astype(F32)
        beta = (0.1 * rng.standard_normal(d)).astype(F32)
        h.load(src, x)
        h.load(gam, gamma)
        h.load(bet, beta)
        inv_n = 1.0 / d
        await h.op(Op.VSUM, dst=s, a=src, n=d)
        await h.op(Op.VMULI, dst=s, a=s, n=1, imm=F32(inv_n))
        await h.op(Op.VSUB, dst=dst, a=src, b=s, n=d, bcast=1)
        await h.op(Op.VMUL, dst=sq, a=dst, b=dst, n=d)
        await h.op(Op.VSUM, dst=s + 1, a=sq, n=d)
        await h.op(Op.VMULI, dst=s + 1, a=s + 1, n=1, imm=F32(inv_n))
        await h.op(Op.VADDI, dst=s + 1, a=s + 1, n=1, imm=F32(eps))
        await h.op(Op.VRSQRT, dst=s + 1, a=s + 1, n=1)
        await h.op(Op.VMUL, dst=dst, a=dst, b=s + 1, n=d, bcast=1)
        await h.op(Op.VMUL, dst=dst, a=dst, b=gam, n=d)
        await h.op(Op.VADD, dst=dst, a=dst, b=bet, n=d)
        res.append((x, gamma, beta, eps, h.read(dst, d)))
    return res


def test_layernorm_sequence_bit_exact(rtl):
    for x, gamma, beta, eps, got in _get(rtl, "layernorm"):
        want = _u32(nm.layernorm(x, gamma, beta, eps, L))
        _assert_bits(f"layernorm(n={x.size})", [_u32(x)], got, want)


# --- overlapping ops: back-to-back sequences ----------------------------------------------------

_ALL_OPS = (Op.VADD, Op.VSUB, Op.VMUL, Op.VADDI, Op.VMULI, Op.VSET, Op.VMOV, Op.VEXP, Op.VRECIP,
            Op.VRSQRT, Op.VGELU, Op.VSUM, Op.VMAX, Op.VARGMAX)
_BINARY = (Op.VADD, Op.VSUB, Op.VMUL)


def _spans(o: dict) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(reads, writes) of an op as ``CycleSimulator._vector`` and the controller see them."""
    op, n = o["opcode"], o["n"]
    reads = [] if op is Op.VSET else [(o["a"], n)]
    if op in _BINARY:
        reads.append((o["b"], 1 if o["bcast"] else n))
    if op in (Op.VSUM, Op.VMAX):
        writes = [(o["dst"], 1)]
    else:
        writes = [] if op is Op.VARGMAX else [(o["dst"], n)]
    return [r for r in reads if r[1]], [w for w in writes if w[1]]


def _conflict(o: dict, other: dict) -> bool:
    """``o`` reads what ``other`` writes or writes what it reads or writes (the scoreboard)."""
    r1, w1 = _spans(o)
    r2, w2 = _spans(other)

    def meet(xs, ys):
        return any(a < c + m and c < a + n for a, n in xs for c, m in ys)

    return meet(r1, w2) or meet(w1, r2 + w2)


async def issue_sequence(h: Harness, ops: list[dict], asic=None) -> dict:
    """Feed ``ops`` to the unit as fast as it takes them, as the controller does: op ``k`` is
    presented from ``gap`` cycles after op ``k - 1`` was accepted, once no op in flight conflicts
    with it through memory (ops completing in this cycle no longer count). Every cycle an op is
    presented, ``ready`` must equal the issue rule's verdict; ``busy`` must equal "an op is in
    flight that does not complete now". Returns the accept and done cycles (the rule's and
    the unit's), the rule's binding parts, every VARGMAX's ``result`` at its done and the
    vector memory before and after."""
    ctx, dut = h.ctx, h.dut
    if ctx.get(dut.done):  # the last op of Harness.op completes now: start when it has
        await ctx.tick()
    rule = VectorIssue(asic or CFG.asic)
    words = dut.asic.vmem_words
    before = h.read(0, words)
    flight: deque = deque()  # (index, done the rule predicts)
    out = {"accept": [], "done": [], "want_done": [], "result": {}, "bad": [], "binding": []}
    k, cyc, present_from = 0, 0, ops[0]["gap"] if ops else 0
    while k < len(ops) or flight:
        if ctx.get(dut.done):
            if not flight:
                out["bad"].append(f"done in cycle {cyc} with nothing in flight")
            else:
                i, want = flight.popleft()
                out["done"].append(cyc)
                out["want_done"].append(want)
                if ops[i]["opcode"] is Op.VARGMAX:
                    out["result"][i] = ctx.get(dut.result)
        if bool(ctx.get(dut.busy)) != bool(flight):
            out["bad"].append(f"busy {ctx.get(dut.busy)} in cycle {cyc}, {len(flight)} in flight")
        valid = (k < len(ops) and cyc >= present_from
                 and not any(_conflict(ops[k], ops[i]) for i, _ in flight))
        if valid:
            o = ops[k]
            ctx.set(dut.i_op.payload, {f: o[f] for f in ("opcode", "dst", "a", "b", "n",
                                                         "bcast", "imm")})
        ctx.set(dut.i_op.valid, int(valid))
        if valid:
            ready = bool(ctx.get(dut.i_op.ready))
            bounds = rule.bounds(o["opcode"], o["n"], cyc)
            want = max(bounds.values()) == cyc
            if ready != want:
                out["bad"].append(f"op {k} ({o['opcode'].name} n={o['n']}) cycle {cyc}: ready "
                                  f"{ready}, rule {bounds}")
            if ready:
                out["binding"].append(max(bounds, key=lambda b: (bounds[b], b != "t")))
                out["accept"].append(cyc)
                flight.append((k, rule.accept(o["opcode"], o["n"], cyc)))
                k += 1
                present_from = cyc + 1 + (ops[k]["gap"] if k < len(ops) else 0)
        await ctx.tick()
        cyc += 1
        assert cyc < 200_000
    ctx.set(dut.i_op.valid, 0)
    out["before"], out["after"] = before, h.read(0, words)
    out["cycles"] = cyc
    return out


def golden_sequence(cfg, ops: list[dict], before: np.ndarray) -> FunctionalMachine:
    """The ops run in program order on the functional machine (each VARGMAX writes its own
    register ``rd``)."""
    fm = FunctionalMachine(cfg)
    code = [isa.make(o["opcode"], **{f: int(o[f]) for f in ("dst", "a", "b", "n", "bcast",
                                                             "imm", "rd")}) for o in ops]
    fm.load(PimBinary(config=cfg, code=code + [isa.make(Op.END)],
                      constants=[(0, before.view(F32))], image=None))
    fm.run()
    return fm


def check_sequence(cfg, ops: list[dict], out: dict) -> None:
    """Every result word and VARGMAX index bit for bit, every accept and done cycle as the issue
    rule says (``ready`` was checked against it in every cycle an op was presented)."""
    assert out["bad"] == []
    assert len(out["accept"]) == len(ops) == len(out["done"])
    assert out["done"] == out["want_done"]
    for k, o in enumerate(ops):
        assert out["done"][k] - out["accept"][k] == op_cycles(cfg.asic, o["opcode"], o["n"])
    fm = golden_sequence(cfg, ops, out["before"])
    got, want = out["after"], fm.vmem.view(U32)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(int(w), _h32(got[w]), _h32(want[w])) for w in bad[:10]]
    for i, r in out["result"].items():
        assert r == fm.regs[ops[i]["rd"]], (i, r)


def _pattern_words(rng, n: int) -> np.ndarray:
    """Half random bit patterns (every class), half ordinary numbers."""
    return np.where(rng.random(n) < 0.5, _f32_patterns(rng, n),
                    (rng.standard_normal(n) * 4).astype(F32).view(U32)).astype(U32)


def random_ops(rng, count: int, words: int, ops=_ALL_OPS, max_n: int = 40) -> list[dict]:
    """Random ops on independent ranges: operands from the lower quarter of vector memory
    (never written), results bumped through the rest; mostly back to back (``gap`` 0), few
    elements (many ops in flight), some empty ops."""
    out, ptr, rd = [], words // 4, 0
    for _ in range(count):
        op = ops[int(rng.integers(len(ops)))]
        n = int(rng.choice([1, 1, 2, L - 1, L, L + 1, int(rng.integers(1, 3 * L + 1)),
                            int(rng.integers(1, max_n + 1))]))
        if rng.random() < 0.03 and op is not Op.VMAX:
            n = 0  # (the functional machine writes NaN for an empty VMAX; the unit nothing)
        if op is Op.VARGMAX:
            if rd == 15:
                op = Op.VMAX
            else:
                rd += 1
        width = 0 if op is Op.VARGMAX else 1 if op in (Op.VSUM, Op.VMAX) else n
        if ptr + width + 2 > words:
            ptr = words // 4
        bcast = int(op in _BINARY and rng.random() < 0.3)
        out.append({"opcode": op, "n": n, "dst": ptr, "a": int(rng.integers(0, words // 4 - n)),
                    "b": int(rng.integers(0, words // 4 - n)), "bcast": bcast,
                    "imm": int(_f32_patterns(rng, 1)[0]), "rd": rd if op is Op.VARGMAX else 0,
                    "gap": int(rng.choice([0] * 12 + [1, 2, int(rng.integers(3, 40))]))})
        ptr += width + int(rng.integers(0, 3))
    return out


def chain_ops(rng, chains: int, rounds: int, base: int) -> tuple[list[dict], list]:
    """``chains`` independent in-place chains (the softmax / GELU / LayerNorm steps, each on its
    own buffer) interleaved step by step: each op waits for its chain's previous op (RAW) while
    ops of the other chains overlap it. Returns the ops and the buffers to load."""
    loads, progs = [], []
    rd = 0
    for c in range(chains):
        n = int(rng.integers(1, 40))
        x, y, s = base + 200 * c, base + 200 * c + 80, base + 200 * c + 190
        loads += [(x, (rng.standard_normal(n) * 3).astype(F32)),
                  (y, (rng.standard_normal(n)).astype(F32))]
        steps = []
        for _ in range(rounds):
            rd += 1
            steps += [
                (Op.VMULI, x, x, 0, n, 0, 0.125), (Op.VMAX, s, x, 0, n, 0, 0),
                (Op.VSUB, x, x, s, n, 1, 0), (Op.VEXP, x, x, 0, n, 0, 0),
                (Op.VSUM, s + 1, x, 0, n, 0, 0), (Op.VRECIP, s + 1, s + 1, 0, 1, 0, 0),
                (Op.VMUL, x, x, s + 1, n, 1, 0), (Op.VADD, x, x, y, n, 0, 0),
                (Op.VGELU, x, x, 0, n, 0, 0), (Op.VMUL, y, x, x, n, 0, 0),
                (Op.VSUM, s + 2, y, 0, n, 0, 0), (Op.VRSQRT, s + 2, s + 2, 0, 1, 0, 0),
                (Op.VARGMAX, 0, x, 0, n, 0, 0), (Op.VMOV, y, x, 0, n, 0, 0),
            ]
        progs.append([{"opcode": op, "dst": d, "a": a, "b": b, "n": nn, "bcast": bc,
                       "imm": int(_u32(F32(imm))), "rd": rd if op is Op.VARGMAX else 0,
                       "gap": 0} for op, d, a, b, nn, bc, imm in steps])
    ops = []
    while any(progs):
        for p in progs:
            if p:
                ops.append(p.pop(0))
    return ops, loads


@scenario
async def overlap_random(h: Harness, rng) -> list:
    res = []
    words = CFG.asic.vmem_words
    for count, kinds, max_n in ((int(160 * SCALE), _ALL_OPS, 40),
                                (int(160 * SCALE), _ALL_OPS, 40),
                                # short long-latency ops: more than MAX_IN_FLIGHT could be
                                (int(60 * SCALE), (Op.VGELU, Op.VSUM, Op.VARGMAX, Op.VEXP), 2)):
        h.load(0, _pattern_words(rng, words // 4).view(F32))
        ops = random_ops(rng, count, words, kinds, max_n)
        res.append((ops, await issue_sequence(h, ops)))
    return res


@scenario
async def overlap_chains(h: Harness, rng) -> list:
    ops, loads = chain_ops(rng, 3, 2, 1000)
    for addr, x in loads:
        h.load(addr, x)
    return [(ops, await issue_sequence(h, ops))]


def test_overlap_random_sequences(rtl):
    """Random back-to-back ops on independent ranges: bit-exact, accepted and done exactly as
    :class:`VectorIssue` says, with ops of every class overlapping."""
    binding = []
    for ops, out in _get(rtl, "overlap_random"):
        check_sequence(CFG, ops, out)
        binding += out["binding"]
        # the unit really overlaps: many ops accepted before the previous one's done
        early = sum(a < d for a, d in zip(out["accept"][1:], out["done"]))
        assert early > len(ops) // 2, early
    # rules 1, 2 and 4 each decided some accepts (rule 3 never binds at these latencies)
    assert {"read", "write", "in_flight"} <= set(binding), set(binding)


def test_overlap_in_place_chains(rtl):
    """Interleaved in-place chains (softmax, GELU, reductions): bit-exact; each op waits for its
    chain's previous op (the sequence's scoreboard), the others overlap it."""
    (ops, out), = _get(rtl, "overlap_chains")
    check_sequence(CFG, ops, out)
    early = sum(a < d for a, d in zip(out["accept"][1:], out["done"]))
    assert early > len(ops) // 4, early


#: Slow exp and reciprocal pipelines (latencies beyond what their datapaths need), so that a
#: VEXP / VRECIP could follow a VGELU before GELU's beats have passed the shared pipeline's
#: entry: rule 3 of VectorIssue decides there.
SLOW = CFG.replace(name="tiny-slow-exp", asic=dataclasses.replace(
    CFG.asic, exp_cycles=52, recip_cycles=44, vector_lanes=2, vmem_words=512))


def test_shared_pipelines_rule():
    """On SLOW, GELU / exp / reciprocal sequences: bit-exact and rule 3 binds."""
    assert op_latency(SLOW.asic, Op.VEXP) - op_latency(SLOW.asic, Op.VGELU) + GELU_FEEDS["exp"] > 0
    dut = VectorUnit(SLOW)
    rng = np.random.default_rng(0x6E1)
    res = {}

    async def bench(ctx):
        h = Harness(dut, ctx)
        h.load(0, _pattern_words(rng, 512).view(F32))
        ops = random_ops(rng, int(80 * SCALE), 512, (Op.VGELU, Op.VEXP, Op.VRECIP, Op.VADD),
                         max_n=8)
        res["ops"], res["out"] = ops, await issue_sequence(h, ops, SLOW.asic)

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    check_sequence(SLOW, res["ops"], res["out"])
    assert "pipe" in res["out"]["binding"]


def test_issue_rule_model():
    """VectorIssue on its own: op_timing's offsets, the four parts, DRAM-cycle scaling."""
    a = CFG.asic
    lat = op_latency(a, Op.VEXP)
    assert op_timing(a, Op.VEXP, 9) == (3, lat, 3 + lat)
    assert op_timing(a, Op.VSUM, 9) == (3, 3 + op_latency(a, Op.VSUM) - 1,
                                        3 + op_latency(a, Op.VSUM))
    assert op_timing(a, Op.VARGMAX, 0) == (1, 0, 1)
    r = VectorIssue(a)
    assert r.accept(Op.VEXP, 9, 0) == 3 + lat
    assert r.earliest_start(Op.VEXP, 4, 0) == 3  # read port
    assert r.earliest_start(Op.VADD, 4, 0) == 3 + lat - op_latency(a, Op.VADD)  # write order
    assert r.earliest_start(Op.VSUM, 0, 0) == 3 + lat  # an empty op waits for every done
    with pytest.raises(PimgptError, match="before the issue rule allows"):
        r.accept(Op.VADD, 4, 3)
    g = VectorIssue(a)
    g.accept(Op.VGELU, 8, 10)
    assert g.bounds(Op.VEXP, 1, 0)["pipe"] == 10 + 2 + GELU_FEEDS["exp"]
    assert g.bounds(Op.VRECIP, 1, 0)["pipe"] == 10 + 2 + GELU_FEEDS["recip"]
    assert g.bounds(Op.VRSQRT, 1, 0)["pipe"] == 0
    f = VectorIssue(a)
    for t in range(MAX_IN_FLIGHT):
        f.accept(Op.VGELU, 1, t)
    assert f.earliest_start(Op.VGELU, 1, 0) == op_cycles(a, Op.VGELU, 1)  # the first one's done
    d = VectorIssue(a, cycles=lambda k: 2 * k)  # DRAM cycles at twice the ASIC clock
    assert d.accept(Op.VEXP, 9, 4) == 4 + 2 * (3 + lat)
    assert d.earliest_start(Op.VADD, 4, 0) == 4 + 2 * (3 + lat - op_latency(a, Op.VADD))


# --- host port, handshake, cycles ------------------------------------------------------------

@scenario
async def host_port(h: Harness, rng) -> tuple:
    ctx, dut = h.ctx, h.dut
    words = _f32_patterns(rng, 11)
    base = 3501
    for i, w in enumerate(words):
        ctx.set(dut.host_addr, base + i)
        ctx.set(dut.host_wdata, int(w))
        ctx.set(dut.host_we, 1)
        await ctx.tick()
    ctx.set(dut.host_we, 0)
    in_memory = h.read(base, len(words))
    h.load(base + 20, words.view(F32))
    back = []
    for i in range(len(words)):
        ctx.set(dut.host_addr, base + 20 + i)
        await ctx.tick()
        back.append(ctx.get(dut.host_rdata))
    return words, in_memory, np.array(back, U32)


def test_host_port(rtl):
    words, in_memory, back = _get(rtl, "host_port")
    assert np.array_equal(in_memory, words)
    assert np.array_equal(back, words)


def test_handshake(rtl):
    """An op issued alone: ``ready`` high and ``busy`` low when it is accepted, ``busy`` high
    until ``done``, idle again in the ``done`` cycle (``ready`` against the issue rule in every
    cycle: ``issue_sequence``)."""
    bad = [(op.name, n) for op, n, _args, _cycles, ok in rtl["log"] if not ok]
    assert bad == []


def test_cycles_match_the_cycle_simulator(rtl):
    """Every op takes ``ceil(n / lanes) + op_latency`` ASIC cycles from its accept to ``done``
    (1 for ``n = 0``), and that is the cycle simulator's count for the same instruction."""
    log = rtl["log"]
    assert len(log) > 200
    for op, n, _args, cycles, _ok in log:
        assert cycles == op_cycles(CFG.asic, op, n), (op.name, n, cycles)
    seen: dict[tuple[Op, int], dict] = {}
    for op, n, args, _cycles, _ok in log:
        if n:
            seen.setdefault((op, -(-n // L)), args)
    assert {op for op, _ in seen} == set(isa.VECTOR_OPS)
    for (op, _beats), args in sorted(seen.items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
        sim = CycleSimulator(CFG)
        sim.load_code([isa.make(op, **{k: int(v) for k, v in args.items()}), isa.make(Op.END)])
        step = sim.run()
        assert step.cycles == sim.asic_cycles(op_cycles(CFG.asic, op, args["n"])), op.name


def test_latencies_come_from_the_config():
    a = CFG.asic
    assert op_latency(a, Op.VADD) == a.vec_latency
    assert op_latency(a, Op.VEXP) == a.vec_latency + a.exp_cycles
    assert op_latency(a, Op.VGELU) == a.vec_latency + a.gelu_cycles
    assert op_latency(a, Op.VARGMAX) == a.vec_latency * (1 + int(math.log2(L)))
    # the datapaths fit the tiny/paper latencies: one stage per dependent operation
    assert PIPELINE_DEPTHS == {"exp": 22, "recip": 13, "rsqrt": 14, "gelu": 46}
    assert PIPELINE_DEPTHS["exp"] + 1 <= a.vec_latency + a.exp_cycles - 2


def test_bad_configs():
    short = CFG.replace(asic=dataclasses.replace(CFG.asic, exp_cycles=18, vec_latency=3))
    with pytest.raises(PimgptError, match=r"too short.*ew needs 4 cycles, the config gives 3.*"
                                          r"exp needs 25 cycles, the config gives 21"):
        VectorUnit(short)
    odd = CFG.replace(asic=dataclasses.replace(CFG.asic, vmem_words=4098))
    with pytest.raises(PimgptError, match="multiple of asic.vector_lanes"):
        VectorUnit(odd)
    with pytest.raises(TypeError):
        VectorUnit(CFG.asic)
