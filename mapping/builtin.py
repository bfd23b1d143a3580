"""Built-in model shapes with seeded random weights (no checkpoint needed).

The GPT-2 shapes are those of the released checkpoints; the GPT-3 shapes follow the GPT-3
paper (Brown et al. 2020, table 2.1) at its 2048-token context. ``gpt3-xl`` is listed there as
24 heads of 128 with d_model 2048, which is inconsistent (24 x 128 = 3072); pimgpt uses 16 heads
of 128, the reading GPT-Neo 1.3B adopted. ``tiny`` is the default: a two-layer byte-level model
small enough to compile, simulate and run as RTL in seconds. Its default weights are *trained*
(on CPython's standard-library sources, ``tools/train_tiny.py``; shipped in
``mapping/data/tiny``), so it writes Python-looking text; other seeds give random weights.

Weights are generated one tensor at a time when the compiler asks for it, from a numpy
``default_rng`` seeded by ``(seed, crc32(tensor name))``: every tensor is reproducible on its
own, in any order, across runs and platforms, and nothing is held in memory.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from pimgpt.errors import PimgptError
from pimgpt.mapping.model import GPTSpec, GPTWeights

_GPT2_VOCAB = 50257


def _spec(name: str, n_layer: int, d_model: int, n_head: int, n_ctx: int,
          vocab: int = _GPT2_VOCAB) -> GPTSpec:
    return GPTSpec(name=name, n_layer=n_layer, d_model=d_model, n_head=n_head, vocab=vocab,
                   n_ctx=n_ctx)


#: Every built-in model by name.
BUILTIN_SPECS: dict[str, GPTSpec] = {s.name: s for s in (
    _spec("tiny", 2, 64, 4, 128, vocab=256),
    _spec("gpt2-small", 12, 768, 12, 1024),
    _spec("gpt2-medium", 24, 1024, 16, 1024),
    _spec("gpt2-large", 36, 1280, 20, 1024),
    _spec("gpt2-xl", 48, 1600, 25, 1024),
    _spec("gpt3-small", 12, 768, 12, 2048),
    _spec("gpt3-medium", 24, 1024, 16, 2048),
    _spec("gpt3-large", 24, 1536, 16, 2048),
    _spec("gpt3-xl", 24, 2048, 16, 2048),  # 16 heads of 128, see the module docstring
)}

#: The model ``pimgpt run`` uses when given neither a checkpoint nor ``--model``.
DEFAULT_MODEL = "tiny"


def builtin_spec(name: str) -> GPTSpec:
    """The shape of a built-in model; unknown names are an error listing the known ones."""
    try:
        return BUILTIN_SPECS[name]
    except KeyError:
        raise PimgptError(f"unknown model {name!r} (known: "
                          f"{', '.join(BUILTIN_SPECS)})") from None


def _generate(spec: GPTSpec, seed: int, name: str) -> np.ndarray:
    """One tensor, GPT-2-style initialisation, from its own seeded stream."""
    shape = spec.tensor_shapes()[name]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])

    def normal(std: float) -> np.ndarray:
        # float32 straight from the generator: no float64 copy of a 300 MB embedding
        out = rng.standard_normal(shape, dtype=np.float32)
        out *= np.float32(std)
        return out

    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
        out = normal(0.1)
        out += np.float32(1.0)
        return out
    if name == "wpe.weight":
        return normal(0.01)
    if name.endswith(".bias"):
        return normal(0.02)
    if name.endswith("c_proj.weight"):
        # GPT-2 scales residual-path projections by 1/sqrt(2 * n_layer)
        return normal(0.02 / np.sqrt(2 * spec.n_layer))
    return normal(0.02)


#: Built-in models whose seed-0 weights are a trained checkpoint shipped with the package.
TRAINED = {"tiny": "tiny"}


def trained_path(name: str) -> Path:
    """Directory of a shipped trained checkpoint (config.json + model.safetensors)."""
    return Path(__file__).with_name("data") / TRAINED[name]


def builtin_model(name: str, seed: int = 0) -> GPTWeights:
    """A built-in model: the shipped trained weights (``tiny``, seed 0) or seeded random float32
    weights generated lazily per tensor."""
    spec = builtin_spec(name)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PimgptError(f"model seed must be a non-negative integer, not {seed!r}")
    seed = int(seed)
    if name in TRAINED and seed == 0:
        from pimgpt.mapping.checkpoint import load_checkpoint
        weights = load_checkpoint(trained_path(name))
        if weights.spec != spec:
            raise PimgptError(f"shipped checkpoint {trained_path(name)} does not have the "
                              f"shape of built-in model {name}")
        return weights
    return GPTWeights(spec, lambda tensor: _generate(spec, seed, tensor),
                      source=f"{name} (seed {seed})")


def list_models() -> list[dict[str, int | str]]:
    """One row per built-in model, for ``pimgpt models``."""
    return [{"name": s.name, "layers": s.n_layer, "d_model": s.d_model, "heads": s.n_head,
             "d_head": s.d_head, "vocab": s.vocab, "ctx": s.n_ctx, "params": s.param_count()}
            for s in BUILTIN_SPECS.values()]
