#!/usr/bin/env python3
"""Wall time and memory of timing-only simulation: a large model generating tokens.

Compiles a built-in model (default gpt2-xl) layout-only (no DRAM image: timing-only
simulation never reads weight values) for the ``paper`` preset with a ``--max-tokens`` KV
reservation (default 1024) and runs ``simulate_generation(config, binary, [1], N,
timing_only=True)`` (fast engine, the path ``pimgpt simulate`` takes): a one-token prompt and
N generated tokens, i.e. N decode steps at positions 0 .. N-1. Each step is timed through the
``progress`` callback. Printed:

* wall seconds of the N steps, seconds per token (mean; first and last step too);
* the time for 1,024 tokens: measured when N >= 1024, otherwise an EXTRAPOLATION, given two
  ways: *naive* (s/token x 1024; an underestimate, since a step attends to pos + 1 tokens) and
  *position-aware*, which assumes a step's cost is linear in its position and takes the slope
  from two extra timed steps, at position 0 and at position max_tokens - 1, each on a fresh
  ``CycleSimulator`` (fast, timeline on, as ``simulate_generation`` uses it): with
  k = (t(last) / t(0) - 1) / (max_tokens - 1), the 1,024-token time is
  mean s/token x 1024 x (1 + k x 1023 / 2) / (1 + k x (N - 1) / 2). The target
  (<= 60 s) is judged on the measured time, else on the position-aware estimate;
* peak RSS of the process (``getrusage`` ru_maxrss, whole run; target < 4 GB = 4e9 bytes);
* engine throughput in DRAM commands per second (the sum of the ACT, ACT16, PRE, PREA, RD, WR,
  MAC, MAC16, WRGB, RDMAC, WR16 and REF counters over wall seconds): for the fast path on the
  generation above, and for the fast path and the event engine (``fast=False``, every command
  issued one by one) on one gpt2-small token (``--compare-model``, a one-step
  ``simulate_generation``), whose cycle counts must agree. The fast path books a run of
  same-kind column commands in one go, so its commands/s counts commands accounted for, not
  commands visited.

Wall times depend on the host (its CPU count is printed); the simulated cycle counts do not.
Exit status 0 when the measurement completed (whether or not a target was met), 1 when a
compile or simulation failed.

    python bench/timing_speed.py                   # gpt2-xl, 8 tokens
    python bench/timing_speed.py --tokens 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

TARGET_TOKENS = 1024
TARGET_SECONDS = 60.0  # 1,024 tokens, timing only
TARGET_RSS_BYTES = 4e9  # "4 GB"
GIB = 2 ** 30


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def command_total(counts: dict) -> int:
    """Sum of the DRAM command counters (every DramCmd: ACT .. REF)."""
    from pimgpt.hdl.timing import DramCmd
    return sum(int(counts.get(c.name, 0)) for c in DramCmd)


def compile_for(config, model: str, max_tokens: int):
    from pimgpt.mapping.builtin import builtin_model
    from pimgpt.mapping.compiler import compile_model
    t0 = time.perf_counter()
    binary, report = compile_model(config, builtin_model(model), max_tokens, with_image=False)
    return binary, report, time.perf_counter() - t0


def bare_step(config, binary, position: int) -> tuple[float, int]:
    """Wall seconds and cycles of one step at ``position`` on a fresh simulator (timeline on)."""
    from pimgpt.hdl import isa
    from pimgpt.sim.cycle import CycleSimulator
    sim = CycleSimulator(config, fast=True, timeline=True)
    sim.load(binary)
    t0 = time.perf_counter()
    st = sim.run({isa.REG_POS: position, isa.REG_TOKEN_IN: 1})
    return time.perf_counter() - t0, st.cycles


def generation(config, binary, tokens: int, fast: bool = True,
               progress: bool = False) -> dict:
    from pimgpt.sim.report import simulate_generation
    stamps: list[float] = []

    def on_step(pos: int) -> None:
        stamps.append(time.perf_counter())
        if progress:
            dt = stamps[-1] - (stamps[-2] if len(stamps) > 1 else t0)
            print(f"  step {pos}: {dt:.2f} s", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    rep = simulate_generation(config, binary, [1], tokens, timing_only=True, fast=fast,
                              progress=on_step)
    wall = time.perf_counter() - t0
    steps = [b - a for a, b in zip([t0] + stamps[:-1], stamps)]
    cmds = command_total(rep.command_counts)
    return {"engine": rep.engine, "steps": rep.steps, "wall_seconds": wall,
            "step_seconds": steps, "seconds_per_token": wall / rep.steps,
            "step_cycles": list(rep.step_cycles), "total_cycles": rep.total_cycles,
            "simulated_us_per_token": rep.latency_us, "commands": cmds,
            "command_counts": rep.command_counts,
            "commands_per_second": cmds / wall if wall else None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-xl", metavar="NAME",
                   help="built-in model (default: gpt2-xl)")
    p.add_argument("--tokens", type=int, default=8, metavar="N",
                   help="tokens to generate, i.e. decode steps at positions 0..N-1 (default 8)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="KV-cache positions reserved at compile (default 1024)")
    p.add_argument("--preset", default="paper", metavar="NAME",
                   help="machine preset (default: paper)")
    p.add_argument("--compare-model", default="gpt2-small", metavar="NAME",
                   help="model of the fast vs event engine comparison, one token "
                        "(default: gpt2-small)")
    p.add_argument("--progress", action="store_true", help="each step's wall time to stderr")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pimgpt.errors import PimgptError
    from pimgpt.hdl.params import preset

    result: dict = {"model": args.model, "preset": args.preset, "tokens": args.tokens,
                    "max_tokens": args.max_tokens, "cpus": os.cpu_count(),
                    "targets": {"tokens": TARGET_TOKENS, "seconds": TARGET_SECONDS,
                                "peak_rss_bytes": TARGET_RSS_BYTES}}
    error = None
    try:
        if args.tokens < 1 or args.tokens > args.max_tokens:
            raise PimgptError(f"--tokens must be in 1..{args.max_tokens} (--max-tokens)")
        config = preset(args.preset)
        binary, report, compile_s = compile_for(config, args.model, args.max_tokens)
        result["compile_seconds"] = compile_s
        result["instructions"] = report.instructions
        gen = generation(config, binary, args.tokens, progress=args.progress)
        result["generation"] = gen
        result["rss_after_generation_bytes"] = _maxrss_bytes()
        n = gen["steps"]
        spt = gen["seconds_per_token"]
        est: dict = {"naive_seconds": spt * TARGET_TOKENS}
        if n >= TARGET_TOKENS:
            est["measured"] = True
            judged = gen["wall_seconds"]
        else:
            last = args.max_tokens - 1
            t_first, c_first = bare_step(config, binary, 0)
            t_last, c_last = bare_step(config, binary, last)
            k = (t_last / t_first - 1) / last if last else 0.0
            aware = spt * TARGET_TOKENS * (1 + k * (TARGET_TOKENS - 1) / 2) / \
                (1 + k * (n - 1) / 2)
            est.update(measured=False, probe_positions=[0, last],
                       probe_seconds=[t_first, t_last], probe_cycles=[c_first, c_last],
                       slope_per_position=k, position_aware_seconds=aware)
            judged = aware
        result["extrapolation"] = est
        result["seconds_for_1024"] = judged

        cmp_binary, _r, _s = compile_for(config, args.compare_model,
                                         min(args.max_tokens,
                                             _n_ctx(args.compare_model)))
        fast_small = generation(config, cmp_binary, 1, fast=True)
        event_small = generation(config, cmp_binary, 1, fast=False)
        result["engine_compare"] = {
            "model": args.compare_model, "tokens": 1, "fast": fast_small, "event": event_small,
            "cycles_agree": fast_small["step_cycles"] == event_small["step_cycles"],
            "commands_agree": fast_small["command_counts"] == event_small["command_counts"],
            "speedup": event_small["wall_seconds"] / fast_small["wall_seconds"]}
    except (PimgptError, KeyError) as exc:
        error = str(exc)
    peak = _maxrss_bytes()
    result["peak_rss_bytes"] = peak
    result["error"] = error
    time_ok = None if error else result["seconds_for_1024"] <= TARGET_SECONDS
    mem_ok = None if error else peak < TARGET_RSS_BYTES
    result["pass"] = {"seconds_for_1024": time_ok, "peak_rss": mem_ok}

    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 1 if error else 0

    print(f"timing-only simulation speed: {args.model}, preset {args.preset}, KV reserved for "
          f"{args.max_tokens}, layout-only compile, {os.cpu_count()} CPUs")
    if error:
        print(f"  ERROR: {error}")
        return 1
    gen = result["generation"]
    est = result["extrapolation"]
    print(f"  compile (layout only): {result['compile_seconds']:.2f} s, "
          f"{result['instructions']:,} instructions")
    print(f"  generation:  {gen['steps']} tokens (positions 0..{gen['steps'] - 1}), fast "
          f"engine: {gen['wall_seconds']:.2f} s wall, {gen['seconds_per_token']:.3f} s/token "
          f"(first step {gen['step_seconds'][0]:.3f} s, last {gen['step_seconds'][-1]:.3f} s)")
    print(f"               simulated {gen['simulated_us_per_token']:.1f} us/token, "
          f"{gen['commands']:,} DRAM commands")
    if est["measured"]:
        print(f"  1,024 tokens: {result['seconds_for_1024']:.1f} s (measured)")
    else:
        print(f"  1,024 tokens: EXTRAPOLATION from {gen['steps']} tokens (not measured):")
        print(f"    naive:          {gen['seconds_per_token']:.3f} s/token x 1024 = "
              f"{est['naive_seconds']:,.0f} s (underestimate: later steps attend to more "
              f"tokens)")
        print(f"    position-aware: {est['position_aware_seconds']:,.0f} s (step cost linear "
              f"in position; probes on a fresh simulator: position 0 "
              f"{est['probe_seconds'][0]:.2f} s, position {est['probe_positions'][1]} "
              f"{est['probe_seconds'][1]:.2f} s; slope {est['slope_per_position']:.2e} "
              f"per position)")
    how = "measured" if est["measured"] else "position-aware extrapolation"
    print(f"  target time:   1,024 tokens <= {TARGET_SECONDS:.0f} s ({how}): "
          f"{result['seconds_for_1024']:,.0f} s   {_mark(time_ok)}")
    print(f"  peak RSS:      {peak / GIB:.2f} GiB ({peak / 1e9:.2f} GB) [ru_maxrss, whole run; "
          f"{result['rss_after_generation_bytes'] / 1e9:.2f} GB after the generation]")
    print(f"  target memory: peak RSS < {TARGET_RSS_BYTES / 1e9:.0f} GB   {_mark(mem_ok)}")
    ec = result["engine_compare"]
    print("  engine throughput (DRAM commands / wall second; sum of ACT ACT16 PRE PREA RD WR "
          "MAC MAC16 WRGB RDMAC WR16 REF):")
    print(f"    fast,  {args.model} {gen['steps']} tokens: {gen['commands_per_second']:>14,.0f} "
          f"cmd/s ({gen['commands']:,} commands in {gen['wall_seconds']:.2f} s)")
    for label in ("fast", "event"):
        r = ec[label]
        print(f"    {label + ',':<6} {ec['model']} 1 token: {r['commands_per_second']:>14,.0f} "
              f"cmd/s ({r['commands']:,} commands in {r['wall_seconds']:.2f} s)")
    print(f"    event / fast wall time on {ec['model']}: {ec['speedup']:.1f}x; cycles agree: "
          f"{ec['cycles_agree']}, command counts agree: {ec['commands_agree']}")
    print("    (the fast path books each same-kind column run in one go: its rate counts "
          "commands accounted for, not visited)")
    return 0


def _n_ctx(model: str) -> int:
    from pimgpt.mapping.builtin import builtin_spec
    return builtin_spec(model).n_ctx


if __name__ == "__main__":
    sys.exit(main())
