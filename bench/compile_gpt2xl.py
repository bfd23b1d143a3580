#!/usr/bin/env python3
"""Compile time and peak memory of a large built-in model (default: gpt2-xl, 1.56 B params).

Compiles the built-in shape (seeded random weights, generated lazily per tensor) for a machine
preset with the given KV reservation, writes the .pimbin, and prints:

* wall time of ``compile_model`` (weight generation, placement, DRAM image, code) and of
  ``write_pimbin``;
* peak RSS of the process: ``getrusage(RUSAGE_SELF).ru_maxrss`` (the authoritative figure,
  covering the whole run, interpreter and imports included), ``VmHWM`` from /proc/self/status,
  and the peak VmRSS a sampling thread saw during each phase;
* the BF16 weight size (parameters x 2 bytes) and peak RSS / BF16 size;
* the targets: compile + write <= 60 s wall, peak RSS <= 2 x BF16 size, each PASS or MISS.

The file goes to a fresh temporary directory inside the repository checkout (same filesystem
as the repo, so never a RAM-backed /tmp that would hide memory use) or to ``--out``; it is
deleted afterwards unless ``--keep``.

Figures are printed, not asserted: this is a measurement, not a test. The exit status is 0
when the run completed (whether or not a target was met), 1 when compiling or writing failed.

    python bench/compile_gpt2xl.py                  # gpt2-xl, preset paper, 1024 tokens
    python bench/compile_gpt2xl.py --layout-only    # placement and code only, no image
    python bench/compile_gpt2xl.py --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TARGET_SECONDS = 60.0  # compile + write, wall clock
TARGET_PEAK_RATIO = 2.0  # peak RSS / (params x 2 bytes)

MIB = 2 ** 20
GIB = 2 ** 30


# --- memory ------------------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in KiB; None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class RssSampler(threading.Thread):
    """Samples VmRSS every ``interval`` s; keeps the maximum per phase label."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self) -> None:
        kib = _status_kib("VmRSS")
        if kib is None:
            return
        self.samples += 1
        if kib * 1024 > self.peaks.get(self.phase, 0):
            self.peaks[self.phase] = kib * 1024

    def enter(self, phase: str) -> None:
        self.sample()  # close the previous phase with a fresh reading
        self.phase = phase
        self.sample()

    def stop(self) -> None:
        self.sample()
        self._halt.set()
        self.join()


# --- helpers -----------------------------------------------------------------------------------

def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / GIB:.2f} GiB ({n / 1e9:.2f} GB)"


def _threads_note() -> str:
    return f"{os.cpu_count()} CPUs"


def _cleanup(args: argparse.Namespace, tmpdir: Path | None, out_path: Path,
             error: str | None) -> None:
    """Delete what this run wrote unless --keep (never a pre-existing --out file on error)."""
    if args.keep and error is None:
        return
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)
    elif error is None and out_path.exists():
        out_path.unlink()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-xl", metavar="NAME",
                   help="built-in model (default: gpt2-xl; see 'pimgpt models')")
    p.add_argument("--preset", default="paper", metavar="NAME",
                   help="machine preset (default: paper)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="KV-cache positions to reserve (default: 1024)")
    p.add_argument("--layout-only", action="store_true",
                   help="no DRAM image (placement and code only)")
    p.add_argument("--out", metavar="FILE.pimbin",
                   help="write here instead of a temporary directory inside the repo")
    p.add_argument("--keep", action="store_true", help="do not delete the written .pimbin")
    p.add_argument("--fsync", action="store_true",
                   help="also time an fsync of the written file (reported separately, not "
                        "part of the target)")
    p.add_argument("--imem-words", type=int, metavar="N",
                   help="override the preset's asic.imem_words (NOT the preset any more: the "
                        "output says so); lets a model whose program outgrows the controller's "
                        "instruction memory be measured anyway")
    p.add_argument("--progress", action="store_true",
                   help="log each placed tensor with elapsed time and RSS to stderr")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return p.parse_args(argv)


# --- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pimgpt.errors import PimgptError
    from pimgpt.hdl.params import BF16_BYTES, preset
    from pimgpt.mapping.builtin import builtin_model
    from pimgpt.mapping.compiler import compile_model
    from pimgpt.mapping.pimbin import write_pimbin

    config = preset(args.preset)
    machine_note = f"preset {args.preset}"
    if args.imem_words is not None:
        config = config.replace(asic=dataclasses.replace(config.asic,
                                                         imem_words=args.imem_words))
        machine_note += f" with asic.imem_words overridden to {args.imem_words} (NOT the preset)"
    weights = builtin_model(args.model)
    params = weights.spec.param_count()
    bf16_bytes = params * BF16_BYTES

    result: dict = {
        "model": args.model, "preset": args.preset, "imem_words_override": args.imem_words,
        "max_tokens": args.max_tokens, "layout_only": args.layout_only,
        "params": params, "bf16_bytes": bf16_bytes, "cpus": os.cpu_count(),
        "targets": {"seconds": TARGET_SECONDS, "peak_over_bf16": TARGET_PEAK_RATIO},
    }

    # Where the file goes; the temp dir lives in the checkout (same filesystem as the repo).
    tmpdir = None
    if args.out:
        out_path = Path(args.out).resolve()
    else:
        tmpdir = Path(tempfile.mkdtemp(prefix=".bench-compile-", dir=REPO))
        out_path = tmpdir / f"{args.model}.pimbin"
    result["output"] = str(out_path)

    sampler = RssSampler()
    sampler.start()
    baseline = _status_kib("VmRSS")
    result["baseline_rss_bytes"] = baseline * 1024 if baseline is not None else None

    t_start = time.perf_counter()
    done = [0]

    def progress(name: str) -> None:
        done[0] += 1
        if args.progress:
            rss = _status_kib("VmRSS") or 0
            print(f"  [{time.perf_counter() - t_start:7.2f} s] start {done[0]:4d} {name:<28} "
                  f"RSS {rss / 2 ** 20:6.2f} GiB", file=sys.stderr, flush=True)

    error = None
    compile_s = write_s = fsync_s = None
    file_bytes = None
    report = None
    try:
        sampler.enter("compile")
        t0 = time.perf_counter()
        try:
            binary, report = compile_model(config, weights, args.max_tokens,
                                           with_image=not args.layout_only, progress=progress)
        except PimgptError as exc:
            error = f"compile failed: {exc}"
        compile_s = time.perf_counter() - t0

        if error is None:
            image_bytes = binary.image.nbytes if binary.image is not None else 0
            free = shutil.disk_usage(out_path.parent).free
            if image_bytes + 64 * MIB > free:
                error = (f"not enough free disk in {out_path.parent}: the image needs "
                         f"{image_bytes / GIB:.2f} GiB, {free / GIB:.2f} GiB free")
        if error is None:
            sampler.enter("write")
            t0 = time.perf_counter()
            try:
                write_pimbin(out_path, binary)
            except PimgptError as exc:
                error = f"write failed: {exc}"
            write_s = time.perf_counter() - t0
            if error is None:
                file_bytes = out_path.stat().st_size
                if args.fsync:
                    sampler.enter("fsync")
                    t0 = time.perf_counter()
                    fd = os.open(out_path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    fsync_s = time.perf_counter() - t0
        sampler.enter("end")
    finally:
        try:
            sampler.stop()
        finally:
            _cleanup(args, tmpdir, out_path, error)

    peak = _maxrss_bytes()

    hwm = _status_kib("VmHWM")
    total_s = (compile_s or 0.0) + (write_s or 0.0)
    ratio = peak / bf16_bytes
    result.update({
        "machine": machine_note,
        "error": error,
        "compile_seconds": compile_s,
        "compiler_reported_seconds": report.seconds if report else None,
        "write_seconds": write_s,
        "fsync_seconds": fsync_s,
        "total_seconds": total_s,
        "file_bytes": file_bytes,
        "write_mb_per_s": (file_bytes / 1e6 / write_s) if file_bytes and write_s else None,
        "peak_rss_bytes": peak,
        "vmhwm_bytes": hwm * 1024 if hwm is not None else None,
        "sampled_peak_rss_bytes": dict(sampler.peaks),
        "rss_samples": sampler.samples,
        "peak_over_bf16": ratio,
        "kept": bool(args.keep and error is None),
        "report": report.to_dict() if report else None,
    })
    time_ok = None if error else total_s <= TARGET_SECONDS
    mem_ok = None if error else ratio <= TARGET_PEAK_RATIO
    result["pass"] = {"seconds": time_ok, "peak_over_bf16": mem_ok}

    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 1 if error else 0

    print(f"compile benchmark: {args.model} ({params:,} params), {machine_note}, "
          f"max_tokens {args.max_tokens}{', layout only' if args.layout_only else ''}, "
          f"{_threads_note()}")
    if error:
        print(f"  ERROR: {error}")
    if report:
        print(f"  program:          {report.instructions:,} instructions "
              f"(imem {config.asic.imem_words:,} words)")
        print(f"  PIM memory:       {report.used_bytes / MIB:,.1f} of "
              f"{report.capacity_bytes / MIB:,.1f} MiB (weights {report.weight_bytes / MIB:,.1f} "
              f"MiB, KV {report.kv_bytes / MIB:,.1f} MiB)")
    print(f"  compile wall:     {compile_s:.2f} s" if compile_s is not None else
          "  compile wall:     n/a")
    if write_s is not None:
        rate = f", {result['write_mb_per_s']:.0f} MB/s" if result["write_mb_per_s"] else ""
        print(f"  write wall:       {write_s:.2f} s ({file_bytes / GIB:.2f} GiB file{rate}; "
              f"page cache, no fsync)")
    if fsync_s is not None:
        print(f"  fsync:            {fsync_s:.2f} s (not counted in the target)")
    print(f"  compile + write:  {total_s:.2f} s")
    print(f"  baseline RSS:     {_fmt_bytes(result['baseline_rss_bytes'])} (after imports)")
    print(f"  peak RSS:         {_fmt_bytes(peak)}  [getrusage ru_maxrss]")
    print(f"                    {_fmt_bytes(result['vmhwm_bytes'])}  [/proc VmHWM]")
    for phase, b in sampler.peaks.items():
        if phase in ("start", "end"):
            continue
        print(f"    sampled VmRSS peak during {phase:<8} {_fmt_bytes(b)}")
    print(f"  BF16 weights:     {_fmt_bytes(bf16_bytes)} ({params:,} x 2 bytes)")
    print(f"  peak / BF16:      {ratio:.2f}x")
    print(f"  target time:      compile + write <= {TARGET_SECONDS:.0f} s   {_mark(time_ok)}")
    print(f"  target memory:    peak RSS <= {TARGET_PEAK_RATIO:.0f}x BF16 size   "
          f"{_mark(mem_ok)}")
    if args.keep and error is None:
        print(f"  kept: {out_path}")
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
