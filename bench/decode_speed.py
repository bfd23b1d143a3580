#!/usr/bin/env python3
"""Functional decode speed: the PIM path (compiled program on FunctionalMachine) next to the
plain float32 numpy reference (Float32GPT), same model, same prompt, same process.

PIM path: ``compile_model`` in memory (with the DRAM image) -> ``FunctionalMachine.load`` ->
``generate(prompt, tokens)``. The machine runs one decode-step program per position (prompt
positions included), so every step is one token through the whole model; each step is timed
through ``generate``'s ``on_step`` callback. Step 0 also pays ``generate``'s reset (a copy of
the whole bank image), so the warm figure is the mean of steps 1 .. end; compile and load are
reported separately and never counted.

Reference: ``Float32GPT.generate`` batches the prompt into one prefill pass and then decodes
token by token with a KV cache. Its per-token decode cost is
``(t(generate(prompt, n)) - t(generate(prompt, 1))) / (n - 1)``, each time the best of
``--repeat`` (default 5) after one untimed warm-up call. With ``--tokens 1`` there is no decode
step, so a single-position forward, ``generate(prompt[:1], 1)``, stands in.

Target: PIM warm seconds per token within 4x of the reference's (ratio <= 4): PASS or MISS.
The reference figure depends heavily on BLAS threading: on a small or busy host, OpenBLAS's
default of one thread per CPU can make these matrix-vector products several times slower than
one thread does, which flatters the ratio. The thread situation is printed; ``--blas-threads 1``
gives the single-thread reference (run both before quoting a ratio).
Figures are printed, not asserted; exit status 0 unless something failed.

    python bench/decode_speed.py                       # gpt2-small, 8-token prompt, 8 tokens
    python bench/decode_speed.py --tokens 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

TARGET_RATIO = 4.0  # PIM warm s/token <= 4 x reference decode s/token


def blas_threads() -> dict:
    """What numpy's BLAS may use: threadpoolctl's view if installed, else what is knowable."""
    import numpy as np
    info: dict = {"cpu_count": os.cpu_count()}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
           if k in os.environ}
    info["env"] = env
    try:
        from threadpoolctl import threadpool_info
        info["threadpoolctl"] = [
            {k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version",
                                   "threading_layer", "architecture")}
            for p in threadpool_info()]
    except ImportError:
        info["threadpoolctl"] = None
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
        except Exception:  # noqa: BLE001  (older numpy: no dict mode; informational only)
            info["numpy_blas"] = "unknown"
    return info


def _threads_text(info: dict) -> str:
    parts = [f"os.cpu_count() = {info['cpu_count']}"]
    if "affinity_cpus" in info:
        parts.append(f"affinity {info['affinity_cpus']} CPUs")
    parts.append("env " + (", ".join(f"{k}={v}" for k, v in info["env"].items())
                           if info["env"] else "sets no *_NUM_THREADS"))
    if info.get("threadpoolctl"):
        pools = "; ".join(f"{p['internal_api']} {p['version']} ({p['user_api']}): "
                          f"{p['num_threads']} threads" for p in info["threadpoolctl"])
        parts.append(f"threadpoolctl: {pools}")
    else:
        note = "" if info["env"] else " (OpenBLAS defaults to one thread per CPU)"
        parts.append(f"threadpoolctl not installed; numpy BLAS {info.get('numpy_blas')}{note}")
    return "; ".join(parts)


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-small", metavar="NAME",
                   help="built-in model (default: gpt2-small)")
    p.add_argument("--preset", default="paper", metavar="NAME",
                   help="machine preset (default: paper)")
    p.add_argument("--tokens", type=int, default=8, metavar="N",
                   help="tokens to generate (default: 8)")
    p.add_argument("--prompt-len", type=int, default=8, metavar="N",
                   help="prompt length in tokens (seeded random ids; default: 8)")
    p.add_argument("--repeat", type=int, default=5, metavar="N",
                   help="reference timings to take the best of (default: 5)")
    p.add_argument("--blas-threads", type=int, metavar="N",
                   help="set OPENBLAS/OMP/MKL/BLIS_NUM_THREADS to N before numpy loads "
                        "(default: leave the environment alone)")
    p.add_argument("--progress", action="store_true",
                   help="log each PIM step to stderr as it finishes")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args(argv)
    for name in ("tokens", "prompt_len", "repeat", "blas_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.blas_threads is not None:
        if "numpy" in sys.modules:
            print("decode_speed.py: warning: numpy already loaded; --blas-threads may not take "
                  "effect", file=sys.stderr)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS"):
            os.environ[var] = str(args.blas_threads)
    import numpy as np

    from pimgpt.hdl.params import preset
    from pimgpt.mapping.builtin import builtin_model
    from pimgpt.mapping.compiler import compile_model
    from pimgpt.sim.machine import FunctionalMachine
    from pimgpt.sim.reference import Float32GPT

    config = preset(args.preset)
    weights = builtin_model(args.model)
    spec = weights.spec
    prompt = [int(t) for t in np.random.default_rng(1234).integers(0, spec.vocab,
                                                                    args.prompt_len)]
    n = args.tokens
    max_tokens = args.prompt_len + n
    threads = blas_threads()

    # --- PIM path ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    binary, report = compile_model(config, weights, max_tokens)
    compile_s = time.perf_counter() - t0
    machine = FunctionalMachine(config)
    t0 = time.perf_counter()
    machine.load(binary)
    load_s = time.perf_counter() - t0
    del binary

    stamps: list[float] = []

    def on_step(pos: int) -> None:
        stamps.append(time.perf_counter())
        if args.progress:
            prev = stamps[-2] if len(stamps) > 1 else t_gen
            print(f"  PIM step {pos}: {stamps[-1] - prev:.3f} s", file=sys.stderr, flush=True)

    t_gen = time.perf_counter()
    gen = machine.generate(prompt, n, on_step=on_step)
    pim_total = time.perf_counter() - t_gen
    steps = [b - a for a, b in zip([t_gen] + stamps[:-1], stamps)]
    warm = steps[1:]
    pim_warm = statistics.fmean(warm) if warm else None
    pim_median = statistics.median(warm) if warm else None
    pim_first = steps[0]
    decode_steps = steps[args.prompt_len:]  # positions fed a generated token
    pim_decode = statistics.fmean(decode_steps) if decode_steps else None
    instr_per_step = sum(gen.counters.get(k, 0) for k in gen.counters
                         if k.isupper()) / len(steps) if steps else None

    # --- reference -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    ref = Float32GPT(weights)
    ref_load_s = time.perf_counter() - t0
    ref_ids = ref.generate(prompt, n)  # warm-up, untimed; also the tokens to compare

    def best(fn) -> float:
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    ref_t1 = best(lambda: ref.generate(prompt, 1))
    if n >= 2:
        ref_tn = best(lambda: ref.generate(prompt, n))
        ref_tok = max(ref_tn - ref_t1, 0.0) / (n - 1)
        ref_method = (f"(t(generate(prompt, {n})) - t(generate(prompt, 1))) / {n - 1}, "
                      f"best of {args.repeat}")
    else:
        ref_tn = ref_t1
        ref_tok = best(lambda: ref.generate(prompt[:1], 1))
        ref_method = f"single-position forward generate(prompt[:1], 1), best of {args.repeat}"

    ratio = pim_warm / ref_tok if pim_warm is not None and ref_tok > 0 else None
    ok = None if ratio is None else ratio <= TARGET_RATIO
    agree = sum(a == b for a, b in zip(gen.generated_ids, ref_ids))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024)

    result = {
        "model": args.model, "preset": args.preset, "params": spec.param_count(),
        "prompt_len": args.prompt_len, "tokens": n, "max_tokens": max_tokens,
        "threads": threads,
        "pim": {
            "compile_seconds": compile_s, "load_seconds": load_s,
            "instructions_per_step": report.instructions,
            "executed_instructions_per_step": instr_per_step,
            "steps": len(steps), "step_seconds": steps,
            "first_step_seconds": pim_first,
            "warm_seconds_per_token": pim_warm,
            "warm_median_seconds_per_token": pim_median,
            "warm_tokens_per_second": 1.0 / pim_warm if pim_warm else None,
            "decode_only_seconds_per_token": pim_decode,
            "generate_total_seconds": pim_total,
            "generated_ids": gen.generated_ids,
        },
        "reference": {
            "load_seconds": ref_load_s, "method": ref_method,
            "generate_1_seconds": ref_t1, "generate_n_seconds": ref_tn,
            "seconds_per_token": ref_tok,
            "tokens_per_second": 1.0 / ref_tok if ref_tok > 0 else None,
            "generated_ids": ref_ids,
        },
        "tokens_agree": agree,
        "ratio_pim_over_reference": ratio,
        "target_ratio": TARGET_RATIO,
        "pass": ok,
        "peak_rss_bytes": peak_rss,
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0

    def per(s: float | None) -> str:
        return "n/a" if s is None else f"{s:.4f} s/token ({1.0 / s:.2f} tokens/s)" if s > 0 \
            else f"{s:.4f} s/token"

    print(f"decode speed: {args.model} ({spec.param_count():,} params), preset {args.preset}, "
          f"prompt {args.prompt_len} tokens, {n} generated, KV {max_tokens} positions")
    print(f"  threads: {_threads_text(threads)}")
    print(f"  PIM (FunctionalMachine, bit-exact):")
    print(f"    compile {compile_s:.2f} s, load {load_s:.2f} s (not counted); "
          f"{report.instructions:,} instructions per step")
    print(f"    steps ({len(steps)}): " + " ".join(f"{s:.3f}" for s in steps) + " s")
    print(f"    first step:   {pim_first:.4f} s (includes generate's reset of the bank image)")
    print(f"    warm:         {per(pim_warm)}  [mean of steps 1..{len(steps) - 1}]")
    if pim_median is not None:
        print(f"    warm median:  {per(pim_median)}")
    if pim_decode is not None:
        print(f"    decode only:  {per(pim_decode)}  [steps fed a generated token]")
    print(f"  reference (Float32GPT, numpy float32):")
    print(f"    load {ref_load_s:.2f} s (not counted); generate(prompt, 1) {ref_t1:.4f} s, "
          f"generate(prompt, {n}) {ref_tn:.4f} s")
    print(f"    decode:       {per(ref_tok)}  [{ref_method}]")
    print(f"  generated tokens agree: {agree}/{n} (PIM {gen.generated_ids}, "
          f"reference {ref_ids})")
    print(f"  peak RSS:       {peak_rss / 2 ** 30:.2f} GiB")
    if ratio is None:
        print(f"  ratio PIM / reference: n/a (needs at least two PIM steps)   target <= "
              f"{TARGET_RATIO:.0f}x   n/a")
    else:
        print(f"  ratio PIM / reference: {ratio:.1f}x   target <= {TARGET_RATIO:.0f}x   "
              f"{_mark(ok)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
