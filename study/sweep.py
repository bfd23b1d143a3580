"""Design-space sweeps: a TOML grid of machine/compile variants, run in parallel, resumable.

Grid file (every list in ``[grid]`` is one axis; the sweep runs every combination)::

    models = ["gpt2-small", "gpt2-medium"]   # built-in models (an axis too); or model = "..."
    base = "paper"                           # preset name, or a machine TOML file (relative
                                             # to the grid file)
    max_tokens = 1024                        # KV-cache positions reserved at compile
    positions = [0, 511, 1023]               # decode steps timed per point

    [grid]
    "geometry.channels" = [4, 8, 16]         # any MachineConfig field: group.field
    "clocks.asic_mhz" = [100.0, 1000.0]
    "options.gb_double_buffer" = [true, false]   # compile options (CompileOptions fields)

A scalar in ``[grid]`` is a one-value axis. Each point is a :func:`~pimgpt.study.points`
point measured by :func:`~pimgpt.study.points.run_point` (a point whose machine is invalid or
whose model does not fit records its error instead of numbers).

Output folder: ``results.jsonl`` gets one line per finished point, written and fsynced as it
finishes, keyed by the point's hash; a later run of the same grid into the same folder reads it
and runs only the points missing (a torn last line from a killed run is dropped). When every
point is done, ``results.csv`` and ``results.json`` (grid order, no host timings, so an
interrupted-and-resumed sweep writes the same bytes as an uninterrupted one) are written
atomically.

Execution: ``jobs`` local worker processes (``concurrent.futures.ProcessPoolExecutor``), or an
existing Dask cluster via its scheduler address (``distributed.Client(address)``).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from pimgpt.errors import PimgptError
from pimgpt.fileio import write_text_atomic
from pimgpt.study.points import (CONFIG_GROUPS, compile_option_names, make_point, options_available,
                                  point_key, run_point)

TOP_KEYS = {"models", "model", "base", "max_tokens", "positions", "grid"}
JSONL = "results.jsonl"


@dataclass(frozen=True)
class Grid:
    """A parsed sweep grid: its axes and the points they span, in grid order."""

    path: Path
    axes: dict[str, list[Any]]  # "model" first, then [grid] keys in file order
    points: list[dict[str, Any]]
    labels: list[dict[str, Any]]  # each point's axis values (what results tables show)


def _err(path: Path, msg: str) -> PimgptError:
    return PimgptError(f"{path}: {msg}")


def _int(path: Path, name: str, value: Any, lo: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _err(path, f"{name} must be an integer >= {lo}, not {value!r}")
    return value


def load_grid(path: str | Path) -> Grid:
    """Parse and check a grid file; every problem is one PimgptError naming it."""
    from pimgpt.hdl.params import PRESETS, load_config
    from pimgpt.mapping.builtin import BUILTIN_SPECS

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PimgptError(f"grid file not found: {path}") from None
    except IsADirectoryError:
        raise PimgptError(f"grid file is a directory: {path}") from None
    except UnicodeDecodeError:
        raise _err(path, "not valid TOML (not UTF-8 text)") from None
    except tomllib.TOMLDecodeError as exc:
        raise _err(path, f"not valid TOML: {exc}") from None
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise _err(path, f"unknown key(s) {', '.join(unknown)} (known: "
                         f"{', '.join(sorted(TOP_KEYS))})")
    if "models" in data and "model" in data:
        raise _err(path, "give models = [...] or model = \"...\", not both")
    models = data.get("models", data.get("model"))
    if models is None:
        raise _err(path, "no models: add models = [\"gpt2-small\", ...]")
    models = models if isinstance(models, list) else [models]
    if not models:
        raise _err(path, "models is empty")
    for m in models:
        if not isinstance(m, str) or m not in BUILTIN_SPECS:
            raise _err(path, f"unknown model {m!r} (known: {', '.join(BUILTIN_SPECS)})")
    base_name = data.get("base", "paper")
    if not isinstance(base_name, str):
        raise _err(path, f"base must be a preset name or a TOML file, not {base_name!r}")
    if base_name in PRESETS:
        base = PRESETS[base_name]
    else:
        base_path = (path.parent / base_name)
        if not base_path.suffix == ".toml":
            raise _err(path, f"base {base_name!r} is neither a preset "
                             f"({', '.join(sorted(PRESETS))}) nor a .toml file")
        base = load_config(base_path)
    max_tokens = _int(path, "max_tokens", data.get("max_tokens", 1024), lo=1)
    positions = data.get("positions", [max_tokens - 1])
    if not isinstance(positions, list) or not positions:
        raise _err(path, f"positions must be a non-empty list of integers, not {positions!r}")
    for p in positions:
        _int(path, "each position", p)
        if p >= max_tokens:
            raise _err(path, f"position {p} is outside 0..{max_tokens - 1} (max_tokens "
                             f"{max_tokens})")
    grid = data.get("grid", {})
    if not isinstance(grid, dict):
        raise _err(path, "[grid] must be a table")
    base_dict = base.to_dict()
    axes: dict[str, list[Any]] = {"model": list(models)}
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise _err(path, f"grid axis {key!r} has no values")
        group, _, name = key.partition(".")
        if group == "options":
            if not name:
                raise _err(path, f"grid key {key!r}: name the compile option (options.NAME)")
            if not options_available([name]):
                raise _err(path, f"grid key {key!r}: the compiler has no option {name!r} "
                                 f"(known: {', '.join(compile_option_names()) or 'none'})")
        elif group in CONFIG_GROUPS:
            if name not in base_dict[group]:
                raise _err(path, f"grid key {key!r}: [{group}] has no field {name!r} (known: "
                                 f"{', '.join(sorted(base_dict[group]))})")
        else:
            raise _err(path, f"grid key {key!r} must be <group>.<field> with group one of "
                             f"{', '.join(CONFIG_GROUPS + ('options',))}")
        for v in values:
            if isinstance(v, (dict, list)) or (isinstance(v, float) and not math.isfinite(v)):
                raise _err(path, f"grid axis {key!r}: value {v!r} is not a number, string or "
                                 f"boolean")
        axes[key] = values
    points, labels = [], []
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        label = dict(zip(names, combo))
        overrides = {k: v for k, v in label.items() if k.split(".")[0] in CONFIG_GROUPS}
        options = {k.split(".", 1)[1]: v for k, v in label.items() if k.startswith("options.")}
        points.append(make_point(label["model"], base_dict, overrides, options, max_tokens,
                                 positions))
        labels.append(label)
    return Grid(path=path, axes=axes, points=points, labels=labels)


# --- the results file ------------------------------------------------------------------------

def read_done(path: Path) -> dict[str, dict[str, Any]]:
    """Finished results by key from a results.jsonl; a torn last line is cut off the file."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    good = 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # a write cut short by a kill: drop it
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(rec, dict) or "key" not in rec:
            raise PimgptError(f"{path}: line {len(done) + 1} is not a sweep result")
        done[rec["key"]] = rec
        good += len(line)
    if good != len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(good)
    return done


def _append(path: Path, rec: Mapping[str, Any]) -> None:
    # one write of one line, then fsync: a kill leaves whole lines and at most one torn one
    line = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
    with open(path, "a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


# --- execution -------------------------------------------------------------------------------

def execute(points: Sequence[dict[str, Any]], jobs: int = 1,
            scheduler: str | None = None) -> Iterator[dict[str, Any]]:
    """Run points; yield each result as it finishes (any order).

    ``scheduler``: address of a running Dask scheduler (``tcp://host:port``); otherwise
    ``jobs`` local processes (1: in this process, no pool).
    """
    if not points:
        return
    if scheduler:
        yield from _execute_dask(points, scheduler)
    elif jobs <= 1:
        for p in points:
            yield run_point(p)
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_point, p) for p in points]
            for f in as_completed(futures):
                yield f.result()


def _execute_dask(points: Sequence[dict[str, Any]], address: str) -> Iterator[dict[str, Any]]:
    if address.startswith("ray://"):
        raise PimgptError("Ray clusters are not supported; give a Dask scheduler address "
                          "(tcp://host:8786)")
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise PimgptError("--scheduler needs dask.distributed: pip install 'pimgpt[study]'") \
            from None
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise PimgptError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    try:
        # pure=False: a point is run even if the cluster has a result under the same name
        futures = [client.submit(run_point, p, pure=False) for p in points]
        for f in as_completed(futures):
            yield f.result()
    finally:
        client.close()


# --- tables ----------------------------------------------------------------------------------

CSV_FIGURES = ("status", "latency_us", "tokens_per_s", "energy_mj", "row_hit_rate",
               "share_pim_mac", "share_data_movement", "share_asic", "error")


def result_row(label: Mapping[str, Any], rec: Mapping[str, Any]) -> dict[str, Any]:
    """One flat table row: the point's axis values, then its figures."""
    row: dict[str, Any] = dict(label)
    s = rec.get("summary") or {}
    sh = s.get("shares", {})
    row.update(status=rec["status"], latency_us=s.get("latency_us"),
               tokens_per_s=s.get("tokens_per_s"), energy_mj=s.get("energy_mj"),
               row_hit_rate=s.get("row_hit_rate"), share_pim_mac=sh.get("pim_mac"),
               share_data_movement=sh.get("data_movement"), share_asic=sh.get("asic"),
               error=rec.get("error"))
    return row


def to_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text with a header; floats with repr precision (round-trip exact), None empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else repr(r[c]) if isinstance(r[c], float)
                    else r[c] for c in columns])
    return buf.getvalue()


def run_sweep(grid: Grid, out: Path, jobs: int = 1, scheduler: str | None = None,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) ``grid`` into folder ``out``; return the summary of the whole sweep.

    ``progress(done, total)`` is called once at the start and after each point.
    """
    # the folder appears with the first finished point: a sweep that cannot start (an
    # unreachable scheduler, say) leaves nothing behind
    jsonl = out / JSONL
    done = read_done(jsonl)
    keys = [point_key(p) for p in grid.points]
    todo = [p for p, k in zip(grid.points, keys) if k not in done]
    resumed = len(grid.points) - len(todo)
    if progress:
        progress(resumed, len(grid.points))
    n = resumed
    if scheduler and scheduler.startswith("ray://"):
        raise PimgptError("Ray clusters are not supported; give a Dask scheduler address "
                          "(tcp://host:8786)")
    for rec in execute(todo, jobs, scheduler):
        out.mkdir(exist_ok=True)
        _append(jsonl, rec)
        done[rec["key"]] = rec
        n += 1
        if progress:
            progress(n, len(grid.points))
    out.mkdir(exist_ok=True)
    rows = [result_row(lab, done[k]) for lab, k in zip(grid.labels, keys)]
    columns = list(grid.axes) + list(CSV_FIGURES)
    write_text_atomic(out / "results.csv", to_csv(rows, columns))
    summary = {"grid": str(grid.path), "axes": grid.axes, "points": len(grid.points),
               "resumed": resumed, "errors": sum(r["status"] != "ok" for r in rows),
               "results": [{"label": lab, "key": k, **{f: done[k].get(f) for f in
                            ("status", "error", "summary", "steps")}}
                           for lab, k in zip(grid.labels, keys)]}
    text = json.dumps({k: v for k, v in summary.items() if k != "resumed"}, indent=2,
                      sort_keys=True) + "\n"
    write_text_atomic(out / "results.json", text)
    return summary
