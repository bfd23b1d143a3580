"""The evaluation study: the paper's figures measured on our simulator, beside baselines.

:func:`run_study` returns one JSON-ready dict (``results.json``); :mod:`pimgpt.study.report`
renders it. Parts:

1. **Models**: each built-in model on the ``paper`` machine, one decode step timed at each of
   ``positions`` (0, every 64th, 1023 by default) with a 1,024-token KV reservation; per-token
   latency, tokens/s, energy/token, row-hit rate and time shares for a 1,024-token generation
   by linear interpolation between the timed positions (:mod:`pimgpt.study.points`).
2. **Baselines** (:mod:`pimgpt.study.baselines`): CPU numpy float32 and torch float32 measured
   here at ``cpu_positions`` (interpolated the same way); a GPU measured with torch when CUDA is
   present, else the T4 bandwidth-roofline estimate; speed-up = baseline latency / PIM latency,
   energy efficiency = baseline energy / PIM energy.
3. **Sensitivity** (:mod:`pimgpt.study.sensitivity`): each dimension's variants on
   ``sensitivity_model``.
4. **Accuracy** (:mod:`pimgpt.study.accuracy`): PIM numerics against float32.
5. **Improvement** (issue 6(b)): pending until the compiler offers its option.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pimgpt.errors import PimgptError
from pimgpt.study import baselines as bl
from pimgpt.study.points import interpolation_weights, make_point
from pimgpt.study.sensitivity import DIMENSIONS, IMPROVEMENT, Dimension
from pimgpt.study.sweep import execute

MODELS = ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl",
          "gpt3-small", "gpt3-medium", "gpt3-large", "gpt3-xl")

#: The paper's headline ranges over its 8 models (reference/pim-gpt-paper-notes.md 7.4:
#: arXiv 2310.09385 v2 / npj Unconventional Computing 2024 abstract).
PAPER_RANGES: dict[str, tuple[float, float]] = {
    "speedup_vs_gpu": (41.0, 137.0), "speedup_vs_cpu": (631.0, 1074.0),
    "energy_vs_gpu": (123.0, 383.0), "energy_vs_cpu": (320.0, 602.0),
}
PAPER_BASELINES = {"gpu": "NVIDIA T4", "cpu": "Intel Xeon Gold 6154"}
#: Accuracy runs of --quick: (model, tokens of the sample).
QUICK_ACCURACY: tuple[tuple[str, int | None], ...] = (("tiny", 128), ("gpt2-small", 24))


def _every(step: int, n: int) -> list[int]:
    return sorted(set(range(0, n, step)) | {n - 1})


@dataclass(frozen=True)
class StudyOptions:
    """What a study measures (defaults: the full study)."""

    quick: bool = False
    models: tuple[str, ...] = MODELS
    preset: str = "paper"
    max_tokens: int = 1024
    positions: tuple[int, ...] = tuple(_every(64, 1024))
    cpu_positions: tuple[int, ...] = (0, 511, 1023)
    cpu_repeats: int = 5
    cpu_threads: int = 1  # the 2 cores here are shared: 2 BLAS threads measure contention
    cpu_models: tuple[str, ...] | None = None  # None: the same as models
    torch: bool = True
    sensitivity_model: str = "gpt2-xl"
    sensitivity_position: int = 1023
    dimensions: tuple[str, ...] | None = None  # None: every dimension
    accuracy: tuple[tuple[str, int | None], ...] = (("tiny", None), ("gpt2-small", 64))
    jobs: int = 1
    gpu_results: str | None = None  # a GPU measured elsewhere (python -m pimgpt.study.gpu)

    @classmethod
    def quick_defaults(cls, **changes: Any) -> "StudyOptions":
        """The --quick study: fewer positions, repeats, sensitivity points, accuracy tokens."""
        base = cls(quick=True, positions=(0, 511, 1023), cpu_positions=(0, 1023), cpu_repeats=2,
                   sensitivity_model="gpt2-small", accuracy=QUICK_ACCURACY)
        return dataclasses.replace(base, **changes)

    def check(self) -> None:
        """Reject inconsistent options with one error line."""
        from pimgpt.hdl.params import PRESETS
        from pimgpt.mapping.builtin import BUILTIN_SPECS
        for m in list(self.models) + list(self.cpu_models or ()) + [self.sensitivity_model] + \
                [a for a, _ in self.accuracy]:
            if m not in BUILTIN_SPECS:
                raise PimgptError(f"unknown model {m!r} (known: {', '.join(BUILTIN_SPECS)})")
        if not self.models:
            raise PimgptError("no models to study")
        if self.preset not in PRESETS:
            raise PimgptError(f"unknown preset {self.preset!r} (known: "
                              f"{', '.join(sorted(PRESETS))})")
        for name, ps in (("positions", self.positions), ("cpu positions", self.cpu_positions)):
            if not ps or min(ps) < 0 or max(ps) >= self.max_tokens:
                raise PimgptError(f"{name} must lie in 0..{self.max_tokens - 1}")
        if self.cpu_repeats < 1 or self.jobs < 1 or self.cpu_threads < 1:
            raise PimgptError("repeats, jobs and CPU threads must be positive")
        known = {d.name for d in DIMENSIONS}
        for d in self.dimensions or ():
            if d not in known:
                raise PimgptError(f"unknown sensitivity dimension {d!r} (known: "
                                  f"{', '.join(sorted(known))})")


Progress = Callable[[str], None]


def _per_token(rows: Sequence[dict[str, Any]], watts: float | None) -> dict[str, Any]:
    """Interpolated per-token figures of a baseline timed at a few positions."""
    w = interpolation_weights([r["position"] for r in rows])
    sec = sum(wi * r["seconds"] for wi, r in zip(w, rows))
    out = {"positions": [r["position"] for r in rows],
           "per_position_us": [r["seconds"] * 1e6 for r in rows],
           "latency_us": sec * 1e6, "tokens_per_s": 1.0 / sec}
    if watts is not None:
        out["watts"] = watts
        out["energy_mj"] = sec * watts * 1e3
    return out


def _ratios(pim: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    return {"speedup": base["latency_us"] / pim["latency_us"],
            "energy_ratio": (base["energy_mj"] / pim["energy_mj"]
                             if base.get("energy_mj") is not None else None)}


def run_study(opts: StudyOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Measure everything ``opts`` asks for; the results dict the report is made from."""
    from pimgpt import __version__
    from pimgpt.hdl.params import PRESETS
    from pimgpt.mapping.builtin import BUILTIN_SPECS

    opts.check()
    tick = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    base = PRESETS[opts.preset]
    base_dict = base.to_dict()

    # 1. the models on the PIM machine
    points = [make_point(m, base_dict, {}, {}, opts.max_tokens, opts.positions)
              for m in opts.models]
    by_key = {}
    for rec in execute(points, opts.jobs):
        by_key[rec["key"]] = rec
        tick("pim")
    from pimgpt.study.points import point_key
    models: list[dict[str, Any]] = []
    for m, p in zip(opts.models, points):
        rec = by_key[point_key(p)]
        if rec["status"] != "ok":
            raise PimgptError(f"{m} on {opts.preset}: {rec['error']}")
        models.append({"model": m, "params": BUILTIN_SPECS[m].param_count(),
                       "pim": {**rec["summary"], "steps": rec["steps"]}})

    # 2. baselines
    desc = bl.cpu_description()
    threads = opts.cpu_threads
    gpu_name = bl.gpu_device()
    use_torch = opts.torch and bl.torch_available()
    cpu_models = set(opts.cpu_models if opts.cpu_models is not None else opts.models)
    power = bl.cpu_power(desc, threads)
    loads = []
    for row in models:
        m = row["model"]
        spec = BUILTIN_SPECS[m]
        if m in cpu_models:
            meas = bl.measure_cpu(m, opts.cpu_positions, opts.cpu_repeats, use_torch, threads,
                                  gpu=gpu_name is not None)
            loads.append(meas["load"][0])
            cpu = {"numpy": _per_token(meas["numpy"], power["watts"])}
            tick("cpu")
            if use_torch:
                cpu["torch"] = _per_token(meas["torch"], power["watts"])
                tick("cpu")
            if gpu_name:
                row["gpu"] = {**_per_token(meas["gpu"], None), "kind": "measured",
                              "device": gpu_name, "energy_mj": None}
            for v in cpu.values():
                v.update(_ratios(row["pim"], v))
            row["cpu"] = cpu
            row["cpu_best"] = min(cpu, key=lambda k: cpu[k]["latency_us"])
        if "gpu" not in row:
            row["gpu"] = {**_per_token(bl.t4_roofline(spec, opts.positions), bl.T4_POWER_W),
                          "kind": "estimate", "device": "NVIDIA T4 (bandwidth roofline)"}
        row["gpu"].update(_ratios(row["pim"], row["gpu"]))

    imported = None
    if opts.gpu_results:
        from pimgpt.study import gpu as gpu_file
        imported = gpu_file.load(opts.gpu_results)
        for row in models:
            rows = imported["models"].get(row["model"])
            if rows:
                g = {**_per_token(sorted(rows, key=lambda r: r["position"]), None),
                     "kind": "measured elsewhere", "device": imported["device"],
                     "energy_mj": None}
                g.update(_ratios(row["pim"], g))
                row["gpu_imported"] = g

    # 3. sensitivity
    sens: list[dict[str, Any]] = []
    wanted = set(opts.dimensions) if opts.dimensions else None
    for dim in DIMENSIONS:
        if wanted is not None and dim.name not in wanted:
            continue
        sens.append(_sensitivity(dim, opts, tick))

    # 4. accuracy
    acc = []
    if opts.accuracy:
        from pimgpt.study.accuracy import evaluate
        for name, n in opts.accuracy:
            acc.append(evaluate(name, base, n))
            tick("accuracy")

    # 5. improvement
    improvement = _improvement(opts, base_dict, models, tick)

    gpu_kind = "measured" if gpu_name else "estimate"
    from pimgpt.mapping import compiler
    defaults = getattr(compiler, "CompileOptions", None)
    return {
        "study": {"quick": opts.quick, "pimgpt": __version__, "preset": opts.preset,
                  "max_tokens": opts.max_tokens, "positions": list(opts.positions),
                  "cpu_positions": list(opts.cpu_positions), "cpu_repeats": opts.cpu_repeats,
                  "sensitivity_model": opts.sensitivity_model,
                  "sensitivity_position": opts.sensitivity_position,
                  # the compile options every point without its own uses (the defaults)
                  "compile_options": defaults().to_dict() if defaults else {},
                  "wall_seconds": time.perf_counter() - t_start},
        "machine": {"cpu": desc, "threads": threads, "gpu": gpu_name,
                    "load_average": loads, "cpu_power": power, "gpu_kind": gpu_kind,
                    "gpu_basis": (f"measured on {gpu_name}, torch float16, batch 1, KV cache"
                                  if gpu_name else
                                  f"estimate: weights (float16) + KV cache read once at the "
                                  f"T4's {bl.T4_BANDWIDTH_GBPS:g} GB/s, {bl.T4_POWER_W:g} W "
                                  f"board power; no GPU on this machine"),
                    "sources": bl.SOURCES,
                    "gpu_imported": imported},
        "paper": {"ranges": {k: list(v) for k, v in PAPER_RANGES.items()},
                  "baselines": PAPER_BASELINES},
        "models": models,
        "sensitivity": sens,
        "accuracy": acc,
        "improvement": improvement,
    }


def _sensitivity(dim: Dimension, opts: StudyOptions, tick: Progress) -> dict[str, Any]:
    from pimgpt.hdl.params import PRESETS
    from pimgpt.mapping.builtin import BUILTIN_SPECS
    model = dim.model_for(opts.sensitivity_model)
    out: dict[str, Any] = {"name": dim.name, "title": dim.title, "axis": dim.axis,
                           "baseline": dim.baseline, "note": dim.note, "log_x": dim.log_x,
                           "model": model}
    if not dim.available:
        out.update(status="pending", variants=[],
                   pending=f"needs compile option(s) {', '.join(dim.requires)} "
                           f"(CompileOptions) in the compiler")
        return out
    if dim.infeasibility is not None:
        # computed, not measured: every model of the study and the sensitivity model
        names = list(dict.fromkeys(list(opts.models) + [model]))
        out.update(status="infeasible", variants=[], model=", ".join(names),
                   infeasible=dim.infeasibility(names, PRESETS[opts.preset]))
        return out
    n_ctx = BUILTIN_SPECS[model].n_ctx
    rows, points = [], []
    for v in dim.selected(opts.quick):
        # the study's reservation, capped at the model's context (a variant's own is kept,
        # and skipped when the model cannot take it)
        mt = v.max_tokens or min(opts.max_tokens, n_ctx)
        pos = v.position if v.position is not None else min(opts.sensitivity_position, mt - 1)
        row = {"label": v.label, "x": v.x, "max_tokens": mt, "position": pos}
        if mt > n_ctx:
            row.update(status="skipped", error=f"{model} has a context of {n_ctx} tokens")
            rows.append(row)
            points.append(None)
            tick("sensitivity")
            continue
        base = PRESETS[v.preset or opts.preset].to_dict()
        points.append(make_point(model, base, v.overrides, v.options, mt, [pos]))
        rows.append(row)
    todo = [p for p in points if p is not None]
    from pimgpt.study.points import point_key
    results = {}
    for rec in execute(todo, opts.jobs):
        results[rec["key"]] = rec
        tick("sensitivity")
    for row, p in zip(rows, points):
        if p is None:
            continue
        rec = results[point_key(p)]
        row["status"] = rec["status"]
        row["error"] = rec["error"]
        if rec["status"] == "ok":
            s = rec["summary"]
            row.update(latency_us=s["latency_us"], tokens_per_s=s["tokens_per_s"],
                       energy_mj=s["energy_mj"], row_hit_rate=s["row_hit_rate"],
                       shares=s["shares"])
    base_row = next((r for r in rows if r["label"] == dim.baseline and r["status"] == "ok"),
                    None)
    for r in rows:
        if base_row is not None and r["status"] == "ok":
            r["relative_latency"] = r["latency_us"] / base_row["latency_us"]
    out.update(status="measured", variants=rows)
    return out


def _is_default(options: dict[str, Any]) -> bool:
    """Whether compile ``options`` are what a compile without options uses anyway."""
    from pimgpt.mapping import compiler
    cls = getattr(compiler, "CompileOptions", None)
    return cls is not None and all(getattr(cls(), k, object()) == v for k, v in options.items())


def _improvement(opts: StudyOptions, base_dict: dict, models: list[dict[str, Any]],
                 tick: Progress) -> dict[str, Any]:
    dim = IMPROVEMENT
    out: dict[str, Any] = {"title": dim.title, "note": dim.note}
    if not dim.available:
        out.update(status="pending", rows=[],
                   pending=f"needs compile option(s) {', '.join(dim.requires)} "
                           f"(CompileOptions) in the compiler")
        return out
    from pimgpt.study.points import point_key
    main = {m["model"]: m["pim"] for m in models}
    summaries: dict[tuple[str, str], dict | str] = {}
    todo = []
    for m in opts.models:
        for v in dim.variants:
            if _is_default(dict(v.options)):
                summaries[(m, v.label)] = main[m]  # the models table already measured it
            else:
                p = make_point(m, base_dict, {}, v.options, opts.max_tokens, opts.positions)
                todo.append(((m, v.label), p))
    res = {}
    for rec in execute([p for _, p in todo], opts.jobs):
        res[rec["key"]] = rec
        tick("improvement")
    for ident, p in todo:
        rec = res[point_key(p)]
        summaries[ident] = rec["summary"] if rec["status"] == "ok" else rec["error"]
    before, after = dim.variants
    rows = []
    for m in opts.models:
        a, b = summaries[(m, before.label)], summaries[(m, after.label)]
        if isinstance(a, str) or isinstance(b, str):
            rows.append({"model": m, "status": "error", "error": a if isinstance(a, str) else b})
            continue
        rows.append({"model": m, "status": "ok", "baseline_latency_us": a["latency_us"],
                     "improved_latency_us": b["latency_us"],
                     "speedup": a["latency_us"] / b["latency_us"],
                     "baseline_energy_mj": a["energy_mj"], "improved_energy_mj": b["energy_mj"]})
    out.update(status="measured", rows=rows, labels=[before.label, after.label])
    return out


def progress_total(opts: StudyOptions) -> int:
    """How many progress ticks :func:`run_study` gives (for a progress bar)."""
    n = len(opts.models)
    cpu_models = opts.cpu_models if opts.cpu_models is not None else opts.models
    n += len(cpu_models) * (2 if opts.torch and bl.torch_available() else 1)
    for dim in DIMENSIONS:
        if opts.dimensions and dim.name not in opts.dimensions:
            continue
        if dim.available:
            n += len(dim.selected(opts.quick))
    n += len(opts.accuracy)
    if IMPROVEMENT.available:
        n += sum(not _is_default(dict(v.options)) for v in IMPROVEMENT.variants) * \
            len(opts.models)
    return n


__all__ = ["MODELS", "PAPER_RANGES", "StudyOptions", "run_study", "progress_total"]
