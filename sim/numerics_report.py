"""Measured accuracy of the golden numerics against float64 math (the table in docs/numerics.md).

``python -m pimgpt.sim.numerics_report`` prints the table as markdown. Seeds are fixed and every
input set is a fixed grid plus fixed-seed random samples, so the output is reproducible;
``--scale`` shrinks the sample counts for a quick look (the documented table uses 1).

The references are float64 evaluations on the same binary32 inputs, so each error figure is the
error the machine's arithmetic itself adds, not input quantisation. ``ulp`` is the binary32 unit in
the last place of the exact result (``2^-149`` in the subnormal range).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

import numpy as np

from pimgpt.hdl.params import PAPER
from pimgpt.sim import numerics as nm

F32 = np.float32
F64 = np.float64
SEED = 20240611
LN_EPS = 1e-5  # GPT-2's LayerNorm epsilon


@dataclass(frozen=True)
class Row:
    """One line of the table; a metric is None where it means nothing for that function."""

    function: str
    inputs: str
    samples: int
    max_rel: float | None
    max_ulp: float | None
    max_abs: float | None
    note: str = ""


def ulp32(ref: np.ndarray) -> np.ndarray:
    """binary32 ulp at each exact (float64) value: 2^(e-23) for |ref| in [2^e, 2^(e+1))."""
    _, e = np.frexp(np.abs(np.asarray(ref, F64)))  # |ref| = m 2^e, m in [0.5, 1); 0 gives e=0
    return np.ldexp(1.0, np.where(ref == 0, -126, np.maximum(e - 1, -126)) - 23)


def _errors(y: np.ndarray, ref: np.ndarray, rel_mask: np.ndarray | None = None
            ) -> tuple[float, float, float]:
    """(max rel, max ulp, max abs) of binary32 ``y`` against float64 ``ref``."""
    y = np.asarray(y, F64)
    ref = np.asarray(ref, F64)
    if not (np.isfinite(ref).all() and np.isfinite(y).all()):
        raise ValueError("input ranges are chosen to keep every result finite")
    err = np.abs(y - ref)
    mask = (ref != 0) if rel_mask is None else rel_mask & (ref != 0)
    rel = float((err[mask] / np.abs(ref[mask])).max()) if mask.any() else float("nan")
    return rel, float((err / ulp32(ref)).max()), float(err.max())


def _n(count: int, scale: float) -> int:
    return max(16, int(count * scale))


def _grid_and_random(lo: float, hi: float, n_grid: int, n_rand: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([np.linspace(lo, hi, n_grid), rng.uniform(lo, hi, n_rand)]).astype(F32)


def _mantissas(lo_bits: int, count: int, scale: float) -> np.ndarray:
    """Every binary32 from ``lo_bits`` up (``count`` patterns), or an even stride of them."""
    step = max(1, round(1 / scale))
    return (np.arange(0, count, step, dtype=np.uint32) + np.uint32(lo_bits)).view(F32)


def _exp_rows(scale: float) -> list[Row]:
    x = _grid_and_random(-87.3, 88.7, _n(1 << 21, scale), _n(1 << 20, scale), SEED)
    rel, ulp, _ = _errors(nm.vexp(x), np.exp(x.astype(F64)))
    xs = _grid_and_random(float(nm.EXP_LO), -87.3, _n(1 << 18, scale), _n(1 << 18, scale),
                          SEED + 1)
    _, ulp_s, abs_s = _errors(nm.vexp(xs), np.exp(xs.astype(F64)))
    return [Row("exp", "[-87.3, 88.7], grid + uniform", x.size, rel, ulp, None),
            Row("exp", "[EXP_LO, -87.3] (subnormal results)", xs.size, None, ulp_s, abs_s,
                "ulp of the subnormal grid (2^-149)")]


def _recip_rows(scale: float) -> list[Row]:
    # The algorithm sees only the significand for normal x whose reciprocal is normal, so every
    # significand of [1, 2) covers all those binades; the random part checks each binade anyway.
    m = _mantissas(0x3F800000, 1 << 23, scale)
    rel_m, ulp_m, _ = _errors(nm.vrecip(m), 1.0 / m.astype(F64))
    rng = np.random.default_rng(SEED + 2)
    per = _n(8192, scale)
    e = np.repeat(np.arange(-126, 128), per)
    x = (np.ldexp(rng.uniform(1.0, 2.0, e.size), e) * rng.choice([-1.0, 1.0], e.size)).astype(F32)
    ref = 1.0 / x.astype(F64)
    rel, ulp, _ = _errors(nm.vrecip(x), ref, rel_mask=np.abs(ref) >= 2.0 ** -126)
    return [Row("recip", "every significand of [1, 2)", m.size, rel_m, ulp_m, None,
                "exhaustive" if scale >= 1 else "strided"),
            Row("recip", f"+-[2^-126, 2^128): {per} uniform per binade", x.size, rel, ulp, None,
                "rel over normal results; ulp incl. subnormal results (|x| > 2^126)")]


def _rsqrt_rows(scale: float) -> list[Row]:
    rng = np.random.default_rng(SEED + 3)
    x = np.exp(rng.uniform(math.log(1e-30), math.log(1e30), _n(1 << 21, scale))).astype(F32)
    rel, ulp, _ = _errors(nm.vrsqrt(x), 1.0 / np.sqrt(x.astype(F64)))
    # rsqrt(4x) = rsqrt(x)/2 exactly (seed, h and y*y all scale by powers of two), so every
    # binary32 of [1, 4) covers all binades away from the two edge ranges below
    m = _mantissas(0x3F800000, 1 << 24, scale)
    rel_m, ulp_m, _ = _errors(nm.vrsqrt(m), 1.0 / np.sqrt(m.astype(F64)))
    edges = []
    for lo, hi, why in ((2.0 ** -149, 2.0 ** -126, "subnormal x (pre-scaled by 2^24)"),
                        (2.0 ** -126, 2.0 ** -125, "h = 0.5x is subnormal"),
                        (2.0 ** 126, float(np.finfo(F32).max), "y*y is subnormal")):
        xe = np.exp(rng.uniform(math.log(lo), math.log(hi), _n(1 << 20, scale))).astype(F32)
        xe = xe[(xe >= lo) & (xe < hi)]
        r, u, _ = _errors(nm.vrsqrt(xe), 1.0 / np.sqrt(xe.astype(F64)))
        edges.append(Row("rsqrt", f"[2^{round(math.log2(lo))}, {hi:.4g}), log-uniform",
                         xe.size, r, u, None, why))
    return [Row("rsqrt", "[1e-30, 1e30], log-uniform", x.size, rel, ulp, None),
            Row("rsqrt", "every binary32 of [1, 4)", m.size, rel_m, ulp_m, None,
                "exhaustive" if scale >= 1 else "strided"), *edges]


def gelu_f64(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh-form GELU in float64 with the exact constants."""
    x = np.asarray(x, F64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _gelu_rows(scale: float) -> list[Row]:
    x = _grid_and_random(-10.0, 10.0, _n(1 << 21, scale), _n(1 << 20, scale), SEED + 4)
    y, ref = nm.vgelu(x), gelu_f64(x)
    _, _, abs_all = _errors(y, ref)
    pos = x > 0
    rel_p, ulp_p, _ = _errors(y[pos], ref[pos])
    neg = (x < 0) & (x >= -3)
    rel_n, _, abs_n = _errors(y[neg], ref[neg])
    return [Row("gelu", "[-10, 10], grid + uniform", x.size, None, None, abs_all,
                "absolute error is the meaningful measure"),
            Row("gelu", "(0, 10] (subset of the above)", int(pos.sum()), rel_p, ulp_p, None),
            Row("gelu", "[-3, 0) (subset of the above)", int(neg.sum()), rel_n, None, abs_n,
                "1 + tanh cancels; below about -5 the result is -0")]


def _vectors(scale: float, total: int, seed: int, lengths: tuple[int, int]):
    """Fixed-seed random vector lengths adding up to at least ``total * scale`` elements."""
    rng = np.random.default_rng(seed)
    left = _n(total, scale)
    while left > 0:
        n = int(rng.integers(*lengths))
        left -= n
        yield rng, n


def _softmax_rows(scale: float) -> list[Row]:
    lanes = PAPER.asic.vector_lanes
    errs, rels, rels_big, count = [], [], [], 0
    for rng, n in _vectors(scale, 1 << 20, SEED + 5, (1, 1025)):
        sigma = math.exp(rng.uniform(math.log(0.1), math.log(30.0)))
        x = (sigma * rng.standard_normal(n)).astype(F32)
        y = nm.softmax(x, lanes).astype(F64)
        e = np.exp(x.astype(F64) - float(x.max()))
        ref = e / e.sum()
        err = np.abs(y - ref)
        big = ref >= 1e-3
        errs.append(err.max())
        normal = ref >= 2.0 ** -126  # subnormal p loses relative precision by design
        rels.append((err[normal] / ref[normal]).max())
        rels_big.append((err[big] / ref[big]).max())
        count += n
    return [Row("softmax", f"length 1..1024, N(0, s^2), s log-uniform in [0.1, 30], "
                f"L={lanes}", count, max(rels), None, max(errs),
                f"max rel err where p >= 1e-3: {max(rels_big):.3g}; rel err of tiny p grows "
                "with |x - max| (the rounded subtraction)")]


def _layernorm_rows(scale: float) -> list[Row]:
    lanes = PAPER.asic.vector_lanes
    eps = float(F32(LN_EPS))
    rows = []
    for label, offset, seed in (("|mean| <= sd", 1.0, SEED + 6),
                                ("|mean| <= 100 sd", 100.0, SEED + 7)):
        abs_err, rel_err, count = 0.0, 0.0, 0
        for rng, n in _vectors(scale, 1 << 20, seed, (32, 4097)):
            sd = math.exp(rng.uniform(math.log(0.01), math.log(10.0)))
            mu = sd * offset * rng.uniform(-1.0, 1.0)
            x = (mu + sd * rng.standard_normal(n)).astype(F32)
            xd = x.astype(F64)
            ref = (xd - xd.mean()) / np.sqrt(xd.var() + eps)
            # gamma = 1, beta = 0: the affine step is two more binops, measured elsewhere
            y = nm.layernorm(x, np.ones(n, F32), np.zeros(n, F32), LN_EPS, lanes).astype(F64)
            err = np.abs(y - ref)
            big = np.abs(ref) >= 0.1
            abs_err = max(abs_err, float(err.max()))
            rel_err = max(rel_err, float((err[big] / np.abs(ref[big])).max()))
            count += n
        rows.append(Row("layernorm", f"length 32..4096, x = mean + sd N(0,1), sd log-uniform "
                        f"in [0.01, 10], {label}, L={lanes}, eps=1e-5", count, rel_err, None,
                        abs_err, "normalised output (gamma=1, beta=0); rel where |y| >= 0.1; "
                        "error grows with |mean|/sd (cancellation in x - mean)"))
    return rows


def _bf16(a: np.ndarray) -> np.ndarray:
    return nm.round_bf16(np.asarray(a, F32))


def _exact_dot(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x . w[j] exactly rounded to float64: BF16 products are exact in float64, fsum is exact."""
    prods = w.astype(F64) * x.astype(F64)
    return np.array([math.fsum(r) for r in prods])


def _mac_rows(scale: float) -> list[Row]:
    lanes = PAPER.geometry.mac_lanes
    rng = np.random.default_rng(SEED + 8)
    out = []
    for dist in ("normal", "uniform"):
        norm_err, ulp_acc, rel_acc, rel_ro, ulp_ro, count = 0.0, 0.0, 0.0, 0.0, 0.0, 0
        for n in (16, 64, 256, 768, 3072):
            m = max(4, _n((1 << 18) // n, scale))
            draw = rng.standard_normal if dist == "normal" else rng.random
            x, w = _bf16(draw(n)), _bf16(draw((m, n)))
            acc = nm.mac_dot(x, w, lanes).astype(F64)
            exact = _exact_dot(x, w)
            mag = np.abs(w.astype(F64) * x.astype(F64)).sum(axis=1)
            norm_err = max(norm_err, float((np.abs(acc - exact) / mag).max()) / 2.0 ** -24)
            if dist == "uniform":
                r, u, _ = _errors(acc, exact)
                rel_acc, ulp_acc = max(rel_acc, r), max(ulp_acc, u)
                ro = nm.readout(acc.astype(F32)).astype(F64)
                rel_ro = max(rel_ro, float((np.abs(ro - exact) / exact).max()))
                ulp_ro = max(ulp_ro, float((np.abs(ro - exact) / (ulp32(exact) * 2.0 ** 16))
                                           .max()))
            count += m * n
        if dist == "normal":
            out.append(Row("MAC accumulator", f"BF16 N(0,1) operands, n in 16..3072, "
                           f"{lanes} lanes", count, None, None, None,
                           f"max |acc - dot| / sum|x w| = {norm_err:.3g} x 2^-24"))
        else:
            out.append(Row("MAC accumulator", f"BF16 U[0,1) operands, n in 16..3072, "
                           f"{lanes} lanes", count, rel_acc, ulp_acc, None,
                           f"max |acc - dot| / sum|x w| = {norm_err:.3g} x 2^-24"))
            out.append(Row("MAC read-out (BF16)", "the same", count, rel_ro, None, None,
                           f"max error {ulp_ro:.3g} BF16 ulp"))
    return out


def _vsum_rows(scale: float) -> list[Row]:
    lanes = PAPER.asic.vector_lanes
    worst, count = 0.0, 0
    for rng, n in _vectors(scale, 1 << 20, SEED + 9, (1, 4097)):
        x = rng.standard_normal(n).astype(F32)
        exact = math.fsum(x.astype(F64))
        worst = max(worst, abs(float(nm.vsum(x, lanes)) - exact)
                    / float(np.abs(x.astype(F64)).sum()))
        count += n
    return [Row("vsum", f"length 1..4096, N(0,1), L={lanes}", count, None, None, None,
                f"max |sum - exact| / sum|x| = {worst / 2.0 ** -24:.3g} x 2^-24")]


def measure(scale: float = 1.0) -> list[Row]:
    """Every row of the table; ``scale`` multiplies the sample counts."""
    return [*_exp_rows(scale), *_recip_rows(scale), *_rsqrt_rows(scale), *_gelu_rows(scale),
            *_softmax_rows(scale), *_layernorm_rows(scale), *_vsum_rows(scale),
            *_mac_rows(scale)]


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    lines = ["| function | inputs | samples | max rel err | max ulp err | max abs err | notes |",
             "|---|---|---:|---:|---:|---:|---|"]
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731 - "|x|" must not split a cell
    for r in rows:
        lines.append(f"| {cell(r.function)} | {cell(r.inputs)} | {r.samples:,} | "
                     f"{_fmt(r.max_rel, '.3g')} | {_fmt(r.max_ulp, '.3f')} | "
                     f"{_fmt(r.max_abs, '.3g')} | {cell(r.note)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table (markdown) to stdout."""
    ap = argparse.ArgumentParser(prog="python -m pimgpt.sim.numerics_report",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the sample counts (default 1: the documented table)")
    args = ap.parse_args(argv)
    if not args.scale > 0:
        ap.error("--scale must be positive")
    print(render(measure(args.scale)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
