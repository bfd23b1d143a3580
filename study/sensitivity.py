"""The sensitivity study as data: dimensions -> variants -> (machine, compile options).

Each :class:`Dimension` lists :class:`Variant` s; a variant is a machine (a preset plus dotted
``group.field`` overrides, the same form ``pimgpt sweep`` grids use) and compile options
(``CompileOptions`` fields), optionally with its own KV reservation / timed position. The study
turns every variant into a :mod:`pimgpt.study.points` point and plots each dimension's figure
against its variants. Adding a dimension is adding one entry to :data:`DIMENSIONS`.

A dimension whose ``requires`` names compile options the compiler does not offer yet is
reported as pending (no numbers are made up); it runs as soon as ``CompileOptions`` has those
fields; its note says why it is not available.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from pimgpt.study.points import options_available


@dataclass(frozen=True)
class Variant:
    """One setting of a dimension."""

    label: str  # shown in tables and on the plot's axis
    x: float | None = None  # numeric axis value (None: categorical axis)
    preset: str | None = None  # starting machine (None: the study's base preset)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # "group.field" -> value
    options: Mapping[str, Any] = field(default_factory=dict)  # CompileOptions fields
    max_tokens: int | None = None  # KV reservation (None: the study's)
    position: int | None = None  # timed position (None: the study's sensitivity position)
    quick: bool = True  # part of --quick


@dataclass(frozen=True)
class Dimension:
    """One axis of the sensitivity study."""

    name: str
    title: str
    axis: str  # x-axis label
    variants: tuple[Variant, ...]
    baseline: str  # label of the variant that matches the paper machine
    requires: tuple[str, ...] = ()  # CompileOptions fields needed
    log_x: bool = False
    note: str = ""
    #: the largest model this dimension uses: a bigger sensitivity model is replaced by it
    #: (e.g. a 2-channel machine holds 1 GiB, too little for GPT2-XL)
    max_model: str | None = None
    #: a dimension whose "off" setting cannot run at all: computes, per model, why (from the
    #: model's shapes and the machine), instead of measuring variants
    infeasibility: Callable[[Sequence[str], Any], list[dict[str, Any]]] | None = None

    def model_for(self, model: str) -> str:
        """The model this dimension measures when the study's sensitivity model is ``model``."""
        from pimgpt.mapping.builtin import builtin_spec
        if self.max_model and builtin_spec(model).param_count() > \
                builtin_spec(self.max_model).param_count():
            return self.max_model
        return model

    @property
    def available(self) -> bool:
        """Whether the compiler offers every option this dimension needs."""
        return not self.requires or options_available(self.requires)

    def selected(self, quick: bool) -> tuple[Variant, ...]:
        """The variants a (quick) study runs."""
        return tuple(v for v in self.variants if v.quick or not quick)


def _ctx(n: int, quick: bool = True) -> Variant:
    return Variant(label=str(n), x=n, max_tokens=n, position=n - 1, quick=quick)


def _channels(c: int) -> dict[str, Any]:
    """Overrides of a ``c``-channel paper machine: fewer channels get more rows per bank, so
    that the machine keeps at least the paper machine's capacity, and a larger instruction
    memory (attention's code grows with the head rounds, ceil(heads / channels))."""
    from pimgpt.hdl.params import PAPER
    scale = max(PAPER.geometry.channels // c, 1)
    if scale == 1:
        return {"geometry.channels": c}
    return {"geometry.channels": c, "geometry.rows": PAPER.geometry.rows * scale,
            "asic.imem_words": PAPER.asic.imem_words * scale}


def tiling_off(models: Sequence[str], config: Any) -> list[dict[str, Any]]:
    """Per model: which weight matrices could run without tiling, i.e. with the whole input
    vector (BF16, one value per matrix input) in the global buffer at once (``gb_bytes`` per
    channel), computed from the model's shapes and the machine."""
    from pimgpt.hdl.params import BF16_BYTES
    from pimgpt.mapping.builtin import builtin_spec
    gb = config.geometry.gb_bytes
    rows = []
    for name in models:
        s = builtin_spec(name)
        inputs = {"QKV": s.d_model, "attention projection": s.d_model, "FFN1": s.d_model,
                  "FFN2": s.d_ff, "LM head": s.d_model}
        too_big = [k for k, n in inputs.items() if n * BF16_BYTES > gb]

        def sizes(names: list[str]) -> str:
            by: dict[int, list[str]] = {}
            for k in names:
                by.setdefault(inputs[k] * BF16_BYTES, []).append(k)
            return " and ".join(f"{b:,} B ({', '.join(ks)})" for b, ks in sorted(by.items()))

        fit = [k for k in inputs if k not in too_big]
        reason = (f"inputs of {sizes(too_big)} exceed the {gb:,} B global buffer"
                  if too_big else f"every input fits the {gb:,} B global buffer")
        if too_big and fit:
            reason += f"; {sizes(fit)} would fit"
        rows.append({
            "model": name, "d_model": s.d_model, "d_ff": s.d_ff,
            "input_bytes": {k: n * BF16_BYTES for k, n in inputs.items()},
            "largest_input_bytes": max(inputs.values()) * BF16_BYTES, "gb_bytes": gb,
            "too_big": too_big, "feasible": not too_big, "reason": reason,
        })
    return rows


def _on_off(option: str) -> tuple[Variant, ...]:
    return (Variant(label="on", options={option: True}),
            Variant(label="off", options={option: False}))


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension(
        name="channels", title="PIM channels", axis="channels", log_x=True, baseline="8",
        variants=tuple(Variant(label=str(c), x=c, overrides=_channels(c),
                               quick=c in (2, 8, 16, 32))
                       for c in (2, 4, 8, 16, 32)),
        note="16 banks per channel each; below 8 channels each bank has more rows and the "
             "controller a larger instruction memory (2 channels: 4x, 4 channels: 2x) so that "
             "the machine still holds the paper machine's 4 GiB and GPT2-XL's program fits; the "
             "model is recompiled for each machine"),
    Dimension(
        name="asic_clock", title="ASIC clock", axis="ASIC clock (MHz)", log_x=True,
        baseline="1000",
        variants=tuple(Variant(label=f"{m:g}", x=m, overrides={"clocks.asic_mhz": float(m)},
                               quick=m in (100, 1000))
                       for m in (100, 200, 500, 1000)),
        note="DRAM command clock unchanged; the ASIC clock also paces instruction dispatch"),
    Dimension(
        name="dram_timing", title="DRAM timing set", axis="timing set", baseline="AiM GDDR6",
        variants=(Variant(label="AiM GDDR6", preset="paper"),
                  Variant(label="generic GDDR6", preset="gddr6")),
        note="AiM: SK hynix AiM GDDR6 preset, 2 GHz command clock (the paper preset); generic: "
             "Ramulator 2 GDDR6_2000 preset, 1 GHz command clock (the gddr6 preset)"),
    Dimension(
        name="context", title="Context length", axis="context length (tokens)", log_x=True,
        baseline="1024",
        variants=(_ctx(128), _ctx(256, quick=False), _ctx(512, quick=False), _ctx(1024),
                  _ctx(2048, quick=False)),
        note="KV cache reserved for the context; one step at its last position (attention over "
             "the whole context); 2048 only for models whose context allows it"),
    Dimension(
        name="gb_double_buffer", title="Global-buffer double-buffering",
        axis="double-buffering", baseline="off",
        variants=(Variant(label="off"),
                  Variant(label="on", overrides={"geometry.gb_double_buffer": True})),
        note="off: each channel issues its commands in one in-order stream (the paper "
             "machine); on: geometry.gb_double_buffer, the buffer used as two halves, input "
             "chunks of half a buffer in alternate halves, and a channel's WR_GB issuing its "
             "WRGBs in command-bus cycles its queued MACs leave free (two command streams, "
             "compute first, every timing rule kept)"),
    Dimension(
        name="head_concat", title="Mapping: head concatenation", axis="head concatenation",
        baseline="on", requires=("head_concat",), variants=_on_off("head_concat"),
        # without the technique GPT2-XL's KV cache no longer fits the 4 GiB paper machine
        max_model="gpt2-large",
        note="on: a token's K heads side by side in its record and as many q heads as the "
             "global buffer holds per load; off: every K head in a row of its own and one q head "
             "per load (CompileOptions.head_concat; GPT2-XL does not fit the machine without "
             "it)"),
    Dimension(
        name="row_fill", title="Mapping: rows filled", axis="row filling",
        baseline="on", requires=("row_fill",), variants=_on_off("row_fill"),
        max_model="gpt2-large",  # GPT2-XL does not fit the paper machine without row filling
        note="on: weight segments of consecutive output groups back to back, filling whole "
             "rows; off: every segment starts a row (CompileOptions.row_fill; GPT2-XL does not "
             "fit the machine without it)"),
    Dimension(
        name="kv_layout", title="Mapping: KV-cache layout", axis="paper KV layout",
        baseline="on", requires=("kv_layout",), variants=_on_off("kv_layout"),
        note="on: V column-major (a row holds one feature over many tokens), score.V a MAC over "
             "tokens on the banks; off: V row-major like K, V rows read to the ASIC and score.V "
             "formed on its vector unit in the MAC's order (CompileOptions.kv_layout; results "
             "bit-identical)"),
    Dimension(
        name="tiling", title="Mapping: tiling", axis="tiling", baseline="on",
        variants=(), infeasibility=tiling_off,
        note="without tiling a matrix's whole input vector must sit in the global buffer at "
             "once; the table compares each layer's input (BF16 bytes) with the machine's "
             "global buffer (geometry.gb_bytes), computed from the model shapes"),
)

#: The improvement over the paper-faithful baseline (issue 6(b)): the compile option that turns
#: it on, measured on every model against the same compile without it. The compiler's
#: ``CompileOptions.overlap`` orders independent work so PIM channels and the ASIC vector unit
#: overlap (partial sums double-buffered, next layer's parameters prefetched during softmax,
#: per-head softmax and per-chunk GELU); ``overlap=False`` is the paper's layer-by-layer order.
IMPROVEMENT = Dimension(
    name="improvement", title="Improvement over the paper-faithful schedule",
    axis="schedule", baseline="paper-faithful", requires=("overlap",),
    variants=(Variant(label="paper-faithful", options={"overlap": False}),
              Variant(label="improved", options={"overlap": True})),
    note="CompileOptions.overlap: channel and vector-unit work reordered to overlap (results "
         "bit-identical); off = the paper's layer-by-layer order")
