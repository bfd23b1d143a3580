"""``pimgpt study`` and ``pimgpt sweep`` (CLI glue only)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pimgpt.cli import print_json
from pimgpt.errors import PimgptError


def _bar(total: int, desc: str, enabled: bool, initial: int = 0):
    """A tqdm bar on stderr for interactive use; silent when piped or with --json."""
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="pt", file=sys.stderr,
                leave=False, disable=not enabled or not sys.stderr.isatty())


def _check_out_dir(out: Path) -> None:
    """The report folder may be new, empty, or an earlier study's report (replaced)."""
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise PimgptError(f"output directory's parent does not exist: {parent}")
    if out.exists():
        if not out.is_dir():
            raise PimgptError(f"output path exists and is not a directory: {out}")
        if any(out.iterdir()) and not (out / "results.json").is_file():
            raise PimgptError(f"{out} exists and is not an earlier study report (no "
                              f"results.json); choose another --out")


def _models(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    if not names:
        raise PimgptError("--models needs at least one model name")
    return names


def cmd_study(args: argparse.Namespace) -> int:
    """Run the evaluation study and write its report folder (atomically: all or nothing)."""
    from pimgpt.study.report import model_rows, write_report
    from pimgpt.study.run import StudyOptions, progress_total, run_study

    out = Path(args.out)
    _check_out_dir(out)
    changes = {}
    models = _models(args.models)
    if models is not None:
        changes["models"] = models
    if args.no_torch:
        changes["torch"] = False
    if args.jobs is not None:
        if args.jobs < 1:
            raise PimgptError(f"--jobs must be at least 1, not {args.jobs}")
        changes["jobs"] = args.jobs
    if args.cpu_threads is not None:
        changes["cpu_threads"] = args.cpu_threads
    if args.gpu_results:
        from pimgpt.study.gpu import load
        load(args.gpu_results)  # a bad file fails before the study starts
        changes["gpu_results"] = args.gpu_results
    if args.sensitivity_model:
        changes["sensitivity_model"] = args.sensitivity_model
    opts = StudyOptions.quick_defaults(**changes) if args.quick else StudyOptions(**changes)
    opts.check()

    with _bar(progress_total(opts), "study", not args.json) as bar:
        results = run_study(opts, progress=lambda _what: bar.update(1))
    parent = out.parent if str(out.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=parent))
    old = None
    try:
        files = write_report(results, tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

    rows = model_rows(results)
    if args.json:
        print_json({"out": str(out), "files": sorted(files), "models": rows,
                    "wall_seconds": results["study"]["wall_seconds"]})
        return 0
    print(f"study report written to {out}/report.md ({len(files)} files, "
          f"{results['study']['wall_seconds']:.0f} s)")
    print(f"  {'model':<12} {'PIM us/tok':>11} {'tokens/s':>9} {'mJ/tok':>8} {'row hits':>9} "
          f"{'CPU us/tok':>11} {'speed-up':>9}")
    for r in rows:
        hit = "n/a" if r["pim_row_hit_rate"] is None else f"{r['pim_row_hit_rate']:.1%}"
        cpu = r["cpu_best_latency_us"]
        print(f"  {r['model']:<12} {r['pim_latency_us']:>11.1f} {r['pim_tokens_per_s']:>9.0f} "
              f"{r['pim_energy_mj']:>8.3f} {hit:>9} "
              f"{'n/a' if cpu is None else f'{cpu:.1f}':>11} "
              f"{'n/a' if cpu is None else format(r['speedup_vs_cpu_best'], '.1f'):>9}")
    return 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run or resume a TOML design-space grid."""
    from pimgpt.study.sweep import load_grid, run_sweep

    grid = load_grid(args.grid)
    out = Path(args.out) if args.out else Path(f"{Path(args.grid).stem}-sweep")
    if out.exists() and not out.is_dir():
        raise PimgptError(f"output path exists and is not a directory: {out}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise PimgptError(f"output directory's parent does not exist: {parent}")
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if jobs < 1:
        raise PimgptError(f"--jobs must be at least 1, not {jobs}")

    bar = None
    with contextlib.ExitStack() as stack:
        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(_bar(total, "sweep", not args.json, initial=done))
            else:
                bar.update(done - bar.n)
        summary = run_sweep(grid, out, jobs=jobs, scheduler=args.scheduler, progress=progress)

    if args.json:
        print_json({"out": str(out), "points": summary["points"], "resumed": summary["resumed"],
                    "errors": summary["errors"], "results": summary["results"]})
        return 0
    where = f"Dask scheduler {args.scheduler}" if args.scheduler else f"{jobs} local process(es)"
    print(f"sweep {grid.path}: {summary['points']} point(s), {summary['resumed']} already done, "
          f"{summary['errors']} with errors; ran on {where}")
    print(f"results: {out}/results.csv, {out}/results.json ({out}/results.jsonl as they "
          f"finished)")
    axes = list(grid.axes)
    for res in summary["results"]:
        label = " ".join(f"{k}={res['label'][k]}" for k in axes)
        s = res["summary"]
        if res["status"] == "ok":
            print(f"  {label}: {s['latency_us']:.1f} us/token, {s['energy_mj']:.4g} mJ/token")
        else:
            print(f"  {label}: error: {res['error']}")
    return 0
