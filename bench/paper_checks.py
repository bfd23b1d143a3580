#!/usr/bin/env python3
"""The PIM-GPT paper's qualitative claims, measured on one simulated decode step.

Every figure comes from ONE decode step at context position ``--position`` (default 511:
attention over 512 tokens), registers ``{REG_POS: position, REG_TOKEN_IN: 1}``, on a fresh
``CycleSimulator`` (fast engine, timeline on), of a layout-only compile (no DRAM image) with a
``--max-tokens`` KV reservation (default 1024) for the ``paper`` preset or a variant of it:

(a) row-hit rate >= 97 % for gpt2-small, -medium, -large and -xl. Row-hit rate = column
    commands (MAC16, MAC, RD, WR, WR16) that found their row open / all column commands.
(b) VMM share of latency >= 98 % for gpt3-xl. VMM share = cycles of the step during which at
    least one PIM channel is executing a VMM instruction (MAC_ABK, MAC_SBK, WR_GB or RD_MAC:
    the union over channels of those instructions' busy intervals) / step cycles. Also printed:
    the pure-MAC share (union of MAC_ABK/MAC_SBK intervals only), the any-PIM share (every
    channel interval, including the RD_BANK/WR_BANK/WR_ABK parameter fetches and KV appends),
    the ASIC-only share (the vector unit busy, from an op's start to its result, while no
    channel is busy with anything) and the idle share (neither).
(c) ASIC clock 1 GHz -> 100 MHz slows gpt2-xl by <= 20 %: step cycles with
    ``clocks.asic_mhz = 100`` / step cycles on ``paper`` - 1 (DRAM clock unchanged; the ASIC
    clock also paces instruction dispatch, one instruction per ``asic.issue_cycles``).
(d) 8 -> 16 channels speeds a gpt2-xl token by >= 1.8x: step cycles on ``paper`` / step
    cycles with ``geometry.channels = 16`` (recompiled for that machine).

The machine is the ``paper`` preset, the one the RTL builds (per-channel data movers, 4-deep
controller queues); ``--paper-assumptions`` measures it under the paper's evaluation
assumptions instead (free ASIC<->PIM data movement, 64-deep queues:
``pimgpt.sim.shares.paper_assumptions``), which tests/test_paper_claims.py asserts (b) and (d)
on.

Each check runs only when its model is among ``--models`` (default: the five models the
checks need); the others say "skipped". Shares are printed for every measured model. The
output is deterministic (no host timings). Exit status 0 when every selected measurement was
taken (whether or not a claim held), 1 when a compile or simulation failed.

    python bench/paper_checks.py
    python bench/paper_checks.py --models gpt2-small,gpt2-xl --position 1023 --json
    python bench/paper_checks.py --paper-assumptions
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

GPT2 = ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl")
DEFAULT_MODELS = GPT2 + ("gpt3-xl",)
ROW_HIT_TARGET = 0.97
VMM_MODEL, VMM_TARGET = "gpt3-xl", 0.98
ASIC_MODEL, ASIC_SLOW_MHZ, ASIC_TARGET = "gpt2-xl", 100.0, 0.20
CHAN_MODEL, CHAN_WIDE, CHAN_TARGET = "gpt2-xl", 16, 1.8


def _mark(ok: bool | None) -> str:
    return "skipped" if ok is None else ("PASS" if ok else "MISS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), metavar="A,B,...",
                   help="comma-separated built-in models to measure (default: "
                        f"{','.join(DEFAULT_MODELS)}); a check whose model is absent is skipped")
    p.add_argument("--position", type=int, default=511, metavar="P",
                   help="context position of the timed step (default 511)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="KV-cache positions reserved at compile (default 1024; > position)")
    p.add_argument("--no-overlap", action="store_true",
                   help="compile without overlapping channel and ASIC work (the plain "
                        "layer-by-layer order; CompileOptions(overlap=False))")
    p.add_argument("--paper-assumptions", action="store_true",
                   help="measure the paper preset under the paper's evaluation assumptions "
                        "(free ASIC<->PIM data movement, 64-deep queues) instead of the machine "
                        "the RTL builds")
    p.add_argument("--progress", action="store_true", help="one stderr line per simulation")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pimgpt.errors import PimgptError
    from pimgpt.hdl.params import preset
    from pimgpt.mapping.compiler import CompileOptions
    from pimgpt.sim.shares import paper_assumptions, step

    options = CompileOptions(overlap=not args.no_overlap)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not 0 <= args.position < args.max_tokens:
        print(f"error: --position {args.position} must be in 0..{args.max_tokens - 1} "
              f"(--max-tokens {args.max_tokens})", file=sys.stderr)
        return 1
    paper = preset("paper")
    if args.paper_assumptions:
        paper = paper_assumptions(paper)
    slow = paper.replace(name="paper-asic100",
                         clocks=dataclasses.replace(paper.clocks, asic_mhz=ASIC_SLOW_MHZ))
    wide = paper.replace(name=f"paper-{CHAN_WIDE}ch",
                         geometry=dataclasses.replace(paper.geometry, channels=CHAN_WIDE))
    errors: dict[str, str] = {}

    def run(label: str, config, model: str, timeline: bool = True) -> dict | None:
        try:
            r = step(config, model, args.position, args.max_tokens, timeline, options)
        except (PimgptError, KeyError) as exc:
            errors[label] = str(exc)
            r = None
        if args.progress:
            print(f"  done {label}", file=sys.stderr, flush=True)
        return r

    base = {m: run(m, paper, m) for m in models}
    base = {m: r for m, r in base.items() if r is not None}
    checks: dict[str, dict] = {}

    # (a) row hits
    a_models = [m for m in GPT2 if m in base]
    rates = {m: base[m]["row_hit_rate"] for m in a_models}
    a_ok = None if not a_models else all(r is not None and r >= ROW_HIT_TARGET
                                         for r in rates.values())
    checks["a_row_hits"] = {"claim": f"row-hit rate >= {ROW_HIT_TARGET:.0%} for "
                                     f"{', '.join(GPT2)}",
                            "measured": rates, "missing": [m for m in GPT2 if m not in base],
                            "partial": 0 < len(a_models) < len(GPT2), "pass": a_ok}
    # (b) VMM share
    if VMM_MODEL in base:
        sh = base[VMM_MODEL]["shares"]
        checks["b_vmm_share"] = {"claim": f"VMM share >= {VMM_TARGET:.0%} for {VMM_MODEL}",
                                 "vmm_share": sh["vmm"], "mac_share": sh["mac"],
                                 "pim_any_share": sh["pim_any"], "asic_only_share":
                                 sh["asic_only"], "idle_share": sh["idle"],
                                 "pass": sh["vmm"] >= VMM_TARGET}
    else:
        checks["b_vmm_share"] = {"claim": f"VMM share >= {VMM_TARGET:.0%} for {VMM_MODEL}",
                                 "pass": None}
    # (c) ASIC clock
    c = {"claim": f"ASIC {paper.clocks.asic_mhz:g} -> {ASIC_SLOW_MHZ:g} MHz slows "
                  f"{ASIC_MODEL} by <= {ASIC_TARGET:.0%}", "pass": None}
    if ASIC_MODEL in base:
        r = run(f"{ASIC_MODEL} asic {ASIC_SLOW_MHZ:g} MHz", slow, ASIC_MODEL)
        if r is not None:
            slowdown = r["cycles"] / base[ASIC_MODEL]["cycles"] - 1
            c.update(base_cycles=base[ASIC_MODEL]["cycles"], slow_cycles=r["cycles"],
                     slowdown=slowdown, slow_run=r)
            c["pass"] = slowdown <= ASIC_TARGET
    checks["c_asic_clock"] = c
    # (d) channels
    d = {"claim": f"{paper.geometry.channels} -> {CHAN_WIDE} channels speeds {CHAN_MODEL} "
                  f"by >= {CHAN_TARGET}x", "pass": None}
    if CHAN_MODEL in base:
        r = run(f"{CHAN_MODEL} {CHAN_WIDE} channels", wide, CHAN_MODEL)
        if r is not None:
            speedup = base[CHAN_MODEL]["cycles"] / r["cycles"]
            d.update(base_cycles=base[CHAN_MODEL]["cycles"], wide_cycles=r["cycles"],
                     speedup=speedup, wide_run=r)
            d["pass"] = speedup >= CHAN_TARGET
    checks["d_channels"] = d

    result = {"position": args.position, "attended_tokens": args.position + 1,
              "max_tokens": args.max_tokens, "preset": "paper", "machine": paper.name,
              "engine": "fast",
              "overlap": not args.no_overlap,
              "models": base, "checks": checks, "errors": errors, "cpus": os.cpu_count()}
    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 1 if errors else 0

    print(f"paper checks: one decode step at position {args.position} (attention over "
          f"{args.position + 1} tokens), KV reserved for {args.max_tokens}, layout-only "
          f"compile{'' if args.no_overlap else ' (overlap schedule)'}, fast engine, fresh "
          f"simulator per run")
    print()
    print(f"  per model on {paper.name} (data path {paper.asic.data_path}, queues "
          f"{paper.asic.queue_depth} deep; shares of the step's cycles):")
    print(f"  {'model':<12} {'latency us':>11} {'row hits':>9} {'VMM':>7} {'MAC':>7} "
          f"{'any PIM':>8} {'vector':>7} {'ASIC only':>9} {'idle':>6}")
    for m, r in base.items():
        s = r["shares"]
        hit = "n/a" if r["row_hit_rate"] is None else f"{r['row_hit_rate']:.2%}"
        print(f"  {m:<12} {r['latency_us']:>11.1f} {hit:>9} {s['vmm']:>7.2%} {s['mac']:>7.2%} "
              f"{s['pim_any']:>8.2%} {s['vector']:>7.2%} {s['asic_only']:>9.2%} "
              f"{s['idle']:>6.2%}")
    for label, err in errors.items():
        print(f"  {label}: ERROR: {err}")
    print("    VMM: >= 1 channel in MAC_ABK/MAC_SBK/WR_GB/RD_MAC; MAC: MAC_ABK/MAC_SBK only;")
    print("    any PIM: any channel instruction (also RD_BANK/WR_BANK/WR_ABK); vector: vector "
          "unit op start .. result;")
    print("    ASIC only: vector busy and no channel busy; idle: neither")
    print()
    ca = checks["a_row_hits"]
    print(f"  (a) {ca['claim']}: {_mark(ca['pass'])}")
    for m, rate in ca["measured"].items():
        print(f"        {m:<12} {rate:.2%}" if rate is not None else f"        {m:<12} n/a")
    if ca["missing"] and ca["pass"] is not None:
        print(f"        PARTIAL: judged on {len(ca['measured'])} of {len(GPT2)} models; not "
              f"measured: {', '.join(ca['missing'])}")
    cb = checks["b_vmm_share"]
    print(f"  (b) {cb['claim']}: {_mark(cb['pass'])}")
    if cb["pass"] is not None:
        print(f"        VMM share {cb['vmm_share']:.2%}, pure-MAC share {cb['mac_share']:.2%}, "
              f"any-PIM share {cb['pim_any_share']:.2%}, ASIC-only share "
              f"{cb['asic_only_share']:.2%}, idle {cb['idle_share']:.2%}")
    cc = checks["c_asic_clock"]
    print(f"  (c) {cc['claim']}: {_mark(cc['pass'])}")
    if cc["pass"] is not None:
        print(f"        {cc['base_cycles']:,} cycles at {paper.clocks.asic_mhz:g} MHz -> "
              f"{cc['slow_cycles']:,} at {ASIC_SLOW_MHZ:g} MHz (DRAM {paper.clocks.dram_mhz:g} "
              f"MHz both): {cc['slowdown']:+.2%}")
        s = cc["slow_run"]["shares"]
        print(f"        at {ASIC_SLOW_MHZ:g} MHz: VMM share {s['vmm']:.2%}, ASIC-only "
              f"{s['asic_only']:.2%}, idle {s['idle']:.2%}")
    cd = checks["d_channels"]
    print(f"  (d) {cd['claim']}: {_mark(cd['pass'])}")
    if cd["pass"] is not None:
        print(f"        {cd['base_cycles']:,} cycles on {paper.geometry.channels} channels -> "
              f"{cd['wide_cycles']:,} on {CHAN_WIDE}: {cd['speedup']:.3f}x")
        s = cd["wide_run"]["shares"]
        print(f"        on {CHAN_WIDE} channels: VMM share {s['vmm']:.2%}, ASIC-only "
              f"{s['asic_only']:.2%}, idle {s['idle']:.2%}, row hits "
              f"{cd['wide_run']['row_hit_rate']:.2%}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
