"""Checkpoint fixtures written with numpy only (no torch needed to make them)."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from pimgpt.mapping.model import GPTSpec

_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def random_arrays(spec: GPTSpec, seed: int) -> dict[str, np.ndarray]:
    """Every tensor of ``spec`` (canonical names and shapes), float32, seeded.

    LayerNorm weights sit around 1 so that the model's activations stay in a sane range.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in spec.tensor_shapes().items():
        arr = rng.normal(0.0, 0.05, size=shape).astype(np.float32)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            arr += np.float32(1.0)
        out[name] = arr
    return out


def hf_config(spec: GPTSpec, tied: bool = True) -> dict:
    """The config.json a Hugging Face GPT2LMHeadModel of this shape would write."""
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": spec.n_layer,
        "n_embd": spec.d_model,
        "n_head": spec.n_head,
        "vocab_size": spec.vocab,
        "n_positions": spec.n_ctx,
        "n_inner": None if spec.d_ff == 4 * spec.d_model else spec.d_ff,
        "layer_norm_epsilon": spec.ln_eps,
        "activation_function": "gelu_new",
        "tie_word_embeddings": tied,
    }


def write_hf_checkpoint(directory: str | Path, spec: GPTSpec, arrays: dict[str, np.ndarray],
                        dtype: str = "float32", prefix: bool = True, buffers: bool = True,
                        tied: bool = True) -> Path:
    """Write ``config.json`` + ``model.safetensors`` as Hugging Face would; returns the directory.

    ``prefix`` stores body tensors as ``transformer.*``; ``buffers`` adds the attention-mask
    buffers older GPT-2 checkpoints carry; ``tied=False`` stores ``arrays["lm_head.weight"]``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np_dtype = _DTYPES[dtype]
    tensors: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        if name == "lm_head.weight":
            continue
        key = f"transformer.{name}" if prefix else name
        tensors[key] = np.ascontiguousarray(arr.astype(np_dtype))
    if not tied:
        tensors["lm_head.weight"] = np.ascontiguousarray(arrays["lm_head.weight"].astype(np_dtype))
    if buffers:
        mask = np.tril(np.ones((spec.n_ctx, spec.n_ctx), dtype=bool))[None, None]
        for i in range(spec.n_layer):
            key = f"transformer.h.{i}.attn" if prefix else f"h.{i}.attn"
            tensors[f"{key}.bias"] = mask
            tensors[f"{key}.masked_bias"] = np.array(-1e4, dtype=np.float32)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config(spec, tied), indent=2))
    return directory
