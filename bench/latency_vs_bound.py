#!/usr/bin/env python3
"""Simulated per-token latency of every built-in GPT next to the bank-bandwidth lower bound.

For each model (default: the 8 built-in GPT-2 / GPT-3 shapes) on a machine preset (default
``paper``): compile layout-only (no DRAM image; timing needs none) with a ``--max-tokens``
KV reservation (default 1024), then time ONE decode step at context position ``--position``
(default 1023, so the step's attention covers position + 1 = 1024 tokens) on a fresh
``CycleSimulator`` (fast engine), registers ``{REG_POS: position, REG_TOKEN_IN: 1}``.

The lower bound streams every weight value once through a bank MAC lane at one MAC column
command per tCCD_L on every bank of every channel at once::

    matrix params  = all Conv1D weights (c_attn, attn c_proj, c_fc, mlp c_proj of every layer)
                     + the LM head (vocab x d; the tied wte for these models)
    MAC cols / ch  = ceil(matrix params / (channels x banks_per_channel x mac_lanes))
    bound cycles   = MAC cols / ch x tCCD_L (cycles of the DRAM command clock)
    bound us       = bound cycles / dram_mhz

It ignores everything else the step does (attention MACs over the KV cache, row activations
and precharges, global-buffer writes, MAC read-outs, refresh, ASIC work), so latency / bound
>= 1. Target: latency / bound <= 1.25 for gpt2-xl (PASS/MISS). The row-hit rate of the step's
column commands (MAC, RD, WR, WR16: those that found their row open) is printed for each
model, with the step's MAC16 commands per channel and their issue time at tCCD_L (how much of
the latency the MAC commands alone account for).

The output is deterministic (no host timings). Exit status 0 when every model was measured
(whether or not the target was met), 1 when a compile or simulation failed.

    python bench/latency_vs_bound.py
    python bench/latency_vs_bound.py --models gpt2-small,gpt2-xl --position 511 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

DEFAULT_MODELS = ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl",
                  "gpt3-small", "gpt3-medium", "gpt3-large", "gpt3-xl")
TARGET_MODEL = "gpt2-xl"
TARGET_RATIO = 1.25  # simulated latency / bank-bandwidth bound
MATRIX_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                   "mlp.c_proj.weight")


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def matrix_params(spec) -> int:
    """Conv1D weights of every layer plus the LM head (the tied wte when tied)."""
    shapes = spec.tensor_shapes()
    n = sum(math.prod(shp) for name, shp in shapes.items() if name.endswith(MATRIX_SUFFIXES))
    head = "wte.weight" if spec.tied_head else "lm_head.weight"
    return n + math.prod(shapes[head])


def bound(config, params: int) -> dict:
    """The bank-bandwidth lower bound of streaming ``params`` weights once."""
    from pimgpt.hdl.params import ns_to_cycles
    g, clk = config.geometry, config.clocks
    lanes_total = g.channels * g.banks_per_channel * g.mac_lanes
    cols = math.ceil(params / lanes_total)
    tccd = ns_to_cycles(config.timing.tCCD_L, clk.dram_mhz)
    cycles = cols * tccd
    return {"mac_cols_per_channel": cols, "tCCD_L_cycles": tccd, "cycles": cycles,
            "us": cycles / clk.dram_mhz}


def measure(name: str, config, position: int, max_tokens: int) -> dict:
    from pimgpt.hdl import isa
    from pimgpt.hdl.params import ns_to_cycles
    from pimgpt.mapping.builtin import builtin_model
    from pimgpt.mapping.compiler import compile_model
    from pimgpt.sim.cycle import CycleSimulator

    weights = builtin_model(name)
    spec = weights.spec
    binary, report = compile_model(config, weights, max_tokens, with_image=False)
    sim = CycleSimulator(config, fast=True)
    sim.load(binary)
    step = sim.run({isa.REG_POS: position, isa.REG_TOKEN_IN: 1})
    clk, g = config.clocks, config.geometry
    params = matrix_params(spec)
    b = bound(config, params)
    hits, misses = step.counters.get("row_hits", 0), step.counters.get("row_misses", 0)
    mac16_per_ch = step.counters.get("MAC16", 0) / g.channels
    tccd = ns_to_cycles(config.timing.tCCD_L, clk.dram_mhz)
    latency_us = step.cycles / clk.dram_mhz
    return {
        "model": name, "params": spec.param_count(), "matrix_params": params,
        "instructions": report.instructions,
        "step_cycles": step.cycles, "latency_us": latency_us,
        "bound": b, "ratio": step.cycles / b["cycles"],
        "row_hits": int(hits), "row_misses": int(misses),
        "row_hit_rate": hits / (hits + misses) if hits + misses else None,
        "mac16_per_channel": mac16_per_ch,
        "mac_issue_us": mac16_per_ch * tccd / clk.dram_mhz,
        "commands": {k: int(v) for k, v in sorted(step.counters.items()) if k.isupper()},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), metavar="A,B,...",
                   help="comma-separated built-in models (default: the 8 GPT-2/GPT-3 shapes)")
    p.add_argument("--position", type=int, default=1023, metavar="P",
                   help="context position of the timed step (default 1023: attention over "
                        "1024 tokens)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="KV-cache positions reserved at compile (default 1024; > position)")
    p.add_argument("--preset", default="paper", metavar="NAME",
                   help="machine preset (default: paper)")
    p.add_argument("--progress", action="store_true", help="one stderr line per model")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pimgpt.errors import PimgptError
    from pimgpt.hdl.params import preset

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        config = preset(args.preset)
    except PimgptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not 0 <= args.position < args.max_tokens:
        print(f"error: --position {args.position} must be in 0..{args.max_tokens - 1} "
              f"(--max-tokens {args.max_tokens})", file=sys.stderr)
        return 1
    g, clk = config.geometry, config.clocks
    formula = (f"bound cycles = ceil(matrix params / (channels {g.channels} x banks "
               f"{g.banks_per_channel} x mac_lanes {g.mac_lanes})) x tCCD_L; "
               f"bound us = cycles / dram_mhz ({clk.dram_mhz:g}); matrix params = all Conv1D "
               f"weights (c_attn, attn.c_proj, c_fc, mlp.c_proj) + LM head (vocab x d)")
    rows: list[dict] = []
    errors: dict[str, str] = {}
    for name in models:
        try:
            rows.append(measure(name, config, args.position, args.max_tokens))
        except (PimgptError, KeyError) as exc:
            errors[name] = str(exc)
        if args.progress:
            print(f"  done {name}", file=sys.stderr, flush=True)
    target_row = next((r for r in rows if r["model"] == TARGET_MODEL), None)
    ok = None if target_row is None else target_row["ratio"] <= TARGET_RATIO
    result = {
        "preset": args.preset, "position": args.position, "max_tokens": args.max_tokens,
        "attended_tokens": args.position + 1, "engine": "fast", "bound_formula": formula,
        "tCCD_L_ns": config.timing.tCCD_L, "models": rows, "errors": errors,
        "target": {"model": TARGET_MODEL, "max_ratio": TARGET_RATIO,
                   "ratio": None if target_row is None else target_row["ratio"], "pass": ok},
        "cpus": os.cpu_count(),
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 1 if errors else 0

    tccd = rows[0]["bound"]["tCCD_L_cycles"] if rows else None
    print(f"latency vs bank-bandwidth bound: preset {args.preset}, one decode step at position "
          f"{args.position} (attention over {args.position + 1} tokens), KV reserved for "
          f"{args.max_tokens}, layout-only compile, fast engine, fresh simulator")
    print(f"  bound: {formula}")
    if tccd is not None:
        print(f"         tCCD_L = {config.timing.tCCD_L:g} ns = {tccd} cycles; the bound "
              f"ignores attention MACs, ACT/PRE, WRGB, RDMAC, refresh and ASIC work")
    print()
    print(f"  {'model':<12} {'matrix params':>14} {'MAC cols/ch':>12} {'bound us':>10} "
          f"{'latency us':>11} {'lat/bound':>10} {'row hits':>9} {'MAC16/ch':>10} "
          f"{'MAC issue us':>13}")
    for r in rows:
        hit = "n/a" if r["row_hit_rate"] is None else f"{r['row_hit_rate']:.2%}"
        print(f"  {r['model']:<12} {r['matrix_params']:>14,} "
              f"{r['bound']['mac_cols_per_channel']:>12,} {r['bound']['us']:>10.1f} "
              f"{r['latency_us']:>11.1f} {r['ratio']:>9.2f}x {hit:>9} "
              f"{r['mac16_per_channel']:>10,.0f} {r['mac_issue_us']:>13.1f}")
    for name, err in errors.items():
        print(f"  {name:<12} ERROR: {err}")
    print()
    print("  row hits: column commands (MAC16, MAC, RD, WR, WR16) that found their row open; "
          "MAC issue us: the step's MAC16 commands per channel x tCCD_L")
    if target_row is None:
        print(f"  target: {TARGET_MODEL} latency / bound <= {TARGET_RATIO}x   n/a "
              f"({TARGET_MODEL} not measured)")
    else:
        print(f"  target: {TARGET_MODEL} latency / bound <= {TARGET_RATIO}x: "
              f"{target_row['ratio']:.3f}x   {_mark(ok)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
