"""One measurement point of the study and of ``pimgpt sweep``: a model on a machine variant,
timed for one decode step at each of a few context positions.

A point is a plain JSON-ready dict, so it can be hashed (its key), pickled to a worker process
or a Dask worker, and written next to its result::

    {"model": "gpt2-xl",
     "base": {...},                        # MachineConfig.to_dict() of the starting machine
     "overrides": {"geometry.channels": 16, "clocks.asic_mhz": 100.0},
     "options": {},                        # compile options (CompileOptions fields), see below
     "max_tokens": 1024,                   # KV-cache positions reserved at compile
     "positions": [0, 64, ..., 1023]}      # decode steps to time

:func:`run_point` compiles the model layout-only (timing needs no DRAM image), then times one
decode step at each position, in increasing order, on ONE cycle simulator (so each step starts
with the rows, refresh schedule and vector unit the previous timed step left behind), with the
registers ``REG_POS = position`` and ``REG_TOKEN_IN = 1``. A step's latency depends on its
position only through attention (scores and score.V over ``position + 1`` cached tokens), which
grows linearly, so the per-token figures of a whole generation are estimated by linear
interpolation between the timed positions (:func:`interpolation_weights`); when every position
is timed, the weights are exact (1/N each).

Compile options: the mapping-technique switches and the scheduling improvements arrive as a
frozen dataclass ``CompileOptions`` in ``pimgpt.mapping.compiler`` passed as
``compile_model(..., options=...)``; global-buffer double-buffering is a machine option
(``geometry.gb_double_buffer``, an override like any other). A point with options
needs that class and those fields; :func:`options_available` tells the study which ones exist, so
a dimension that needs a missing option is reported as pending, never faked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping, Sequence

import numpy as np

from pimgpt.errors import PimgptError

#: Work the cycle simulator records as busy intervals, and how reports name it.
SHARE_KINDS: dict[str, str] = {"mac": "pim_mac", "move": "data_movement", "asic": "asic"}
#: Groups of a MachineConfig that dotted override keys may name.
CONFIG_GROUPS = ("geometry", "clocks", "timing", "asic")


def point_key(point: Mapping[str, Any]) -> str:
    """Stable identity of a point: SHA-256 of its canonical JSON (first 16 hex digits)."""
    blob = json.dumps(point, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def make_point(model: str, base: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
               options: Mapping[str, Any] | None = None, max_tokens: int = 1024,
               positions: Sequence[int] = (1023,)) -> dict[str, Any]:
    """A point dict (validated for shape, not built: building a machine may fail per point)."""
    positions = sorted({int(p) for p in positions})
    if not positions:
        raise PimgptError("a point needs at least one position to time")
    if positions[0] < 0 or positions[-1] >= max_tokens:
        raise PimgptError(f"positions must lie in 0..{max_tokens - 1} (max_tokens "
                          f"{max_tokens}), not {positions[0]}..{positions[-1]}")
    return {"model": str(model), "base": dict(base), "overrides": dict(overrides or {}),
            "options": dict(options or {}), "max_tokens": int(max_tokens),
            "positions": positions}


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]):
    """A MachineConfig from a ``to_dict()`` form and dotted ``group.field`` overrides."""
    from pimgpt.hdl.params import MachineConfig

    data = json.loads(json.dumps(dict(base)))  # deep copy
    for key, value in overrides.items():
        group, _, name = key.partition(".")
        if group not in CONFIG_GROUPS or not name:
            raise PimgptError(f"override key {key!r} must be <group>.<field> with group one of "
                              f"{', '.join(CONFIG_GROUPS)}")
        if name not in data[group]:
            raise PimgptError(f"override key {key!r}: [{group}] has no field {name!r} (known: "
                              f"{', '.join(sorted(data[group]))})")
        data[group][name] = value
    if overrides:
        data["name"] = f"{data.get('name', 'custom')}*"
    return MachineConfig.from_dict(data, where="machine")


def options_available(names: Sequence[str]) -> bool:
    """Whether the compiler takes ``options=CompileOptions(...)`` with every field in ``names``."""
    from pimgpt.mapping import compiler
    cls = getattr(compiler, "CompileOptions", None)
    if cls is None or not dataclasses.is_dataclass(cls):
        return False
    fields = {f.name for f in dataclasses.fields(cls)}
    return set(names) <= fields


def compile_option_names() -> list[str]:
    """Fields of the compiler's ``CompileOptions`` (none when it has no such class)."""
    from pimgpt.mapping import compiler
    cls = getattr(compiler, "CompileOptions", None)
    if cls is None or not dataclasses.is_dataclass(cls):
        return []
    return [f.name for f in dataclasses.fields(cls)]


def compile_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``compile_model`` for a point's compile options."""
    if not options:
        return {}
    from pimgpt.mapping import compiler
    cls = getattr(compiler, "CompileOptions", None)
    if cls is None or not options_available(list(options)):
        raise PimgptError(f"compile option(s) {', '.join(sorted(options))} are not supported by "
                          f"this compiler (pimgpt.mapping.compiler.CompileOptions)")
    try:
        return {"options": cls(**options)}
    except (TypeError, ValueError) as exc:
        raise PimgptError(f"compile options {dict(options)}: {exc}") from None


def interpolation_weights(positions: Sequence[int]) -> list[float]:
    """Weights w such that sum(w_i f(p_i)) is the mean over every integer position from the
    first to the last timed one of f interpolated linearly between the timed positions."""
    ps = np.asarray(sorted(positions), dtype=np.float64)
    if len(ps) == 1:
        return [1.0]
    xs = np.arange(ps[0], ps[-1] + 1, dtype=np.float64)
    eye = np.eye(len(ps))
    return [float(np.interp(xs, ps, eye[i]).mean()) for i in range(len(ps))]


def run_point(point: Mapping[str, Any]) -> dict[str, Any]:
    """Measure one point; never raises for bad machines or models (the error is the result).

    Returns ``{"key", "status": "ok"|"error", "error", "steps": [...], "summary": {...}}``;
    ``summary`` holds the interpolated per-token figures (see the module docstring).
    """
    key = point_key(point)
    try:
        steps, meta = _measure(point)
    except PimgptError as exc:
        return {"key": key, "status": "error", "error": str(exc), "steps": [], "summary": None}
    except (ValueError, KeyError, ArithmeticError, MemoryError) as exc:
        # a machine variant the compiler or simulator cannot handle: one point's failure,
        # recorded with its type so it is not mistaken for an input error
        return {"key": key, "status": "error", "error": f"{type(exc).__name__}: {exc}",
                "steps": [], "summary": None}
    return {"key": key, "status": "ok", "error": None, "steps": steps,
            "summary": summarise(steps), **meta}


def _measure(point: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from pimgpt.hdl import isa
    from pimgpt.mapping.builtin import builtin_model
    from pimgpt.mapping.compiler import compile_model
    from pimgpt.sim.cycle import CycleSimulator
    from pimgpt.sim.energy import EnergyModel, energy
    # counter_events turns simulator counters into energy events exactly as SimReport does;
    # sharing it keeps the study's energy identical to 'pimgpt simulate'
    from pimgpt.sim.report import counter_events
    from pimgpt.sim.shares import union_length

    config = apply_overrides(point["base"], point["overrides"])
    kwargs = compile_kwargs(point["options"])
    weights = builtin_model(point["model"])
    binary, report = compile_model(config, weights, point["max_tokens"], with_image=False,
                                   **kwargs)
    sim = CycleSimulator(config, fast=True, timeline=True)
    sim.load(binary)
    emodel = EnergyModel.paper_default()
    mhz = config.clocks.dram_mhz
    steps = []
    for pos in point["positions"]:
        st = sim.run({isa.REG_POS: pos, isa.REG_TOKEN_IN: 1})
        spans = sim.intervals or []
        by_kind: dict[str, list[tuple[int, int]]] = {k: [] for k in SHARE_KINDS}
        for iv in spans:
            by_kind.setdefault(iv.kind, []).append((iv.start, iv.end))
        busy = {SHARE_KINDS[k]: union_length(by_kind[k], st.start, st.end) for k in SHARE_KINDS}
        busy["any"] = union_length([(iv.start, iv.end) for iv in spans], st.start, st.end)
        # the ASIC working while no channel does: the part of the token PIM does not hide
        busy["asic_only"] = busy["any"] - union_length(
            [(iv.start, iv.end) for iv in spans if iv.unit.startswith("ch")], st.start, st.end)
        spans.clear()
        e = energy(counter_events(st.counters, config, st.cycles), emodel)
        steps.append({
            "position": pos, "cycles": st.cycles, "latency_us": st.cycles / mhz,
            "energy_mj": e.total * 1e3,
            "energy_mj_by_component": {k: v * 1e3 for k, v in e.to_dict().items()
                                       if k != "total"},
            "row_hits": int(st.counters.get("row_hits", 0)),
            "row_misses": int(st.counters.get("row_misses", 0)),
            "busy_cycles": busy,
        })
    meta = {"machine": config.name, "dram_mhz": mhz, "params": weights.spec.param_count(),
            "instructions": report.instructions, "used_bytes": report.used_bytes,
            "capacity_bytes": report.capacity_bytes}
    return steps, meta


def summarise(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-token figures of a generation over the timed span of positions (interpolated)."""
    w = interpolation_weights([s["position"] for s in steps])
    cycles = sum(wi * s["cycles"] for wi, s in zip(w, steps))
    lat = sum(wi * s["latency_us"] for wi, s in zip(w, steps))
    en = sum(wi * s["energy_mj"] for wi, s in zip(w, steps))
    hits = sum(wi * s["row_hits"] for wi, s in zip(w, steps))
    misses = sum(wi * s["row_misses"] for wi, s in zip(w, steps))
    shares = {k: sum(wi * s["busy_cycles"][k] for wi, s in zip(w, steps)) / cycles
              if cycles else 0.0 for k in list(SHARE_KINDS.values()) + ["any", "asic_only"]}
    comps = steps[0]["energy_mj_by_component"].keys()
    return {
        "positions": [s["position"] for s in steps],
        "first_position": steps[0]["position"], "last_position": steps[-1]["position"],
        "latency_us": lat, "tokens_per_s": 1e6 / lat if lat else 0.0,
        "energy_mj": en,
        "energy_mj_by_component": {k: sum(wi * s["energy_mj_by_component"][k]
                                          for wi, s in zip(w, steps)) for k in comps},
        "row_hit_rate": hits / (hits + misses) if hits + misses else None,
        "shares": shares,
    }
