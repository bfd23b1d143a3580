"""Loading GPT-2-family checkpoints into :class:`~pimgpt.mapping.model.GPTWeights`.

Two formats are read:

- **Hugging Face GPT-2**: a directory holding ``config.json`` and ``model.safetensors`` (or a
  sharded ``model.safetensors.index.json``), or the path of a ``.safetensors`` file whose
  directory holds ``config.json``. The safetensors header is parsed and checked here, and each
  tensor is read from disk only when the compiler asks for it, so a multi-GB model is never held
  in memory twice. float32, float16 and bfloat16 tensors are served in their stored dtype.
- **nanoGPT** ``.pt`` files (needs torch, the ``[hf]`` extra): ``{"model": state_dict,
  "model_args": {...}}`` as nanoGPT's ``train.py`` writes them, or a bare state dict.

Every problem with the input is a one-line :class:`~pimgpt.errors.PimgptError` naming the file,
the tensor and what was expected.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy before any BF16 tensor is read)
import numpy as np

from pimgpt.errors import PimgptError
from pimgpt.mapping.model import GPTSpec, GPTWeights

#: safetensors dtype tags pimgpt accepts for weights, and their numpy types.
_ST_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
#: Byte sizes of every safetensors dtype, so that buffers of other types can still be
#: size-checked (and then ignored).
_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U64": 8, "I32": 4,
                "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1,
                "F8_E5M2": 1, "C64": 8}

#: Non-weight buffers some GPT-2 checkpoints carry (the causal mask and its fill value).
_BUFFER_SUFFIXES = ("attn.bias", "attn.masked_bias")

#: Activations that are the tanh GELU pimgpt implements (HF spells it two ways).
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")

#: A name that looks like a GPT-2 weight, used to reject tensors a config does not account for
#: (a layer beyond n_layer means config.json and the weights disagree).
_GPT2_NAME = re.compile(r"^(wte|wpe|ln_f)\.|^h\.\d+\.")

#: The safetensors header is capped (100 MB as in the reference implementation) so that a
#: corrupt length cannot make us allocate gigabytes.
_MAX_HEADER = 100_000_000


def load_checkpoint(path: str | Path) -> GPTWeights:
    """Open a Hugging Face GPT-2 checkpoint (directory or ``.safetensors``) or a nanoGPT ``.pt``.

    The spec comes from ``config.json`` (or nanoGPT's ``model_args``); tensors are shape-checked
    against it up front and loaded lazily, one per request.
    """
    path = Path(path)
    if not path.exists():
        raise PimgptError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _load_hf_dir(path)
    if path.suffix == ".safetensors":
        return _load_hf_dir(path.parent, files=[path])
    if path.name.endswith(".safetensors.index.json"):
        return _load_hf_dir(path.parent, index=path)
    if path.suffix in (".pt", ".pth", ".ckpt") or _is_zip(path):
        return _load_nanogpt(path)
    raise PimgptError(f"{path}: not a recognised checkpoint (expected a Hugging Face GPT-2 "
                      f"directory, a .safetensors file or a nanoGPT .pt file)")


# --- Hugging Face: safetensors -------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    """Where one tensor lives in a safetensors file."""

    file: Path
    key: str  # the name as stored (possibly with the ``transformer.`` prefix)
    dtype: str  # safetensors tag
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def _read_safetensors_header(path: Path) -> dict[str, _Entry]:
    """Parse and validate a safetensors header; returns every tensor entry by stored name."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise PimgptError(f"{path}: truncated safetensors file ({size} bytes, shorter "
                                  f"than its 8-byte header length)")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise PimgptError(f"{path}: truncated safetensors file (header of {n} bytes, "
                                  f"but the file has only {size - 8} after the length)")
            if n > _MAX_HEADER:
                raise PimgptError(f"{path}: corrupt safetensors header (claims {n} bytes, "
                                  f"limit {_MAX_HEADER})")
            raw = fh.read(n)
    except OSError as exc:
        raise PimgptError(f"cannot read {path}: {exc.strerror}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PimgptError(f"{path}: corrupt safetensors header (not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise PimgptError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + n
    data_size = size - data_start
    entries: dict[str, _Entry] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise PimgptError(f"{path}: corrupt safetensors header (entry {key!r} lacks a valid "
                              f"dtype, shape or data_offsets)") from None
        if not isinstance(dtype, str) or any(s < 0 for s in shape) or not 0 <= begin <= end:
            raise PimgptError(f"{path}: corrupt safetensors header (entry {key!r} has invalid "
                              f"dtype, shape or data_offsets)")
        if end > data_size:
            raise PimgptError(f"{path}: truncated safetensors file (tensor {key} ends at byte "
                              f"{end} of the data, which has only {data_size} bytes)")
        itemsize = _ST_ITEMSIZE.get(dtype)
        if itemsize is not None and end - begin != math.prod(shape) * itemsize:
            raise PimgptError(f"{path}: corrupt safetensors header (tensor {key} {dtype} "
                              f"{shape} needs {math.prod(shape) * itemsize} bytes, offsets "
                              f"give {end - begin})")
        entries[key] = _Entry(path, key, dtype, shape, data_start + begin, end - begin)
    return entries


def _read_entry(entry: _Entry) -> np.ndarray:
    """Read one tensor from disk (a fresh array; nothing is cached)."""
    try:
        with open(entry.file, "rb") as fh:
            fh.seek(entry.offset)
            data = fh.read(entry.nbytes)
    except OSError as exc:
        raise PimgptError(f"cannot read {entry.file}: {exc.strerror}") from None
    if len(data) != entry.nbytes:
        raise PimgptError(f"{entry.file}: truncated while reading tensor {entry.key}")
    # bytearray gives a writable array, which downstream code may modify in place
    return np.frombuffer(bytearray(data), dtype=_ST_DTYPES[entry.dtype]).reshape(entry.shape)


def _is_buffer(name: str) -> bool:
    return any(name == s or name.endswith("." + s) for s in _BUFFER_SUFFIXES)


def _canonical_name(key: str) -> str:
    """Stored name to canonical name: HF's ``transformer.`` prefix removed."""
    return key[len("transformer."):] if key.startswith("transformer.") else key


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PimgptError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PimgptError(f"{path}: not valid JSON (not UTF-8 text)") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PimgptError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise PimgptError(f"{path}: not a JSON object")
    return config


def _config_int(config: Mapping[str, Any], keys: tuple[str, ...], where: Path) -> int:
    for key in keys:
        if key in config and config[key] is not None:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise PimgptError(f"{where}: {key} must be a positive integer, not {value!r}")
            return value
    raise PimgptError(f"{where}: missing {' or '.join(keys)}")


def _spec_from_config(config: Mapping[str, Any], where: Path, name: str) -> GPTSpec:
    """A GPTSpec from a Hugging Face GPT2Config; anything that changes the maths is rejected."""
    model_type = config.get("model_type")
    if model_type is None:
        raise PimgptError(f"{where}: no model_type (pimgpt compiles GPT-2-family models, "
                          f"model_type 'gpt2')")
    if model_type != "gpt2":
        raise PimgptError(f"unsupported architecture {model_type!r} in {where.name} (pimgpt "
                          f"compiles GPT-2-family models, model_type 'gpt2')")
    act = config.get("activation_function", "gelu_new")  # GPT2Config's default
    if act not in _TANH_GELU:
        raise PimgptError(f"{where}: activation_function {act!r} is not supported (pimgpt "
                          f"implements the tanh GELU: {' or '.join(_TANH_GELU)})")
    # These GPT2Config switches change the attention maths the machine implements.
    if config.get("scale_attn_weights", True) is not True:
        raise PimgptError(f"{where}: scale_attn_weights=false is not supported (pimgpt scales "
                          f"attention scores by 1/sqrt(d_head))")
    if config.get("scale_attn_by_inverse_layer_idx", False):
        raise PimgptError(f"{where}: scale_attn_by_inverse_layer_idx=true is not supported")
    if config.get("add_cross_attention", False):
        raise PimgptError(f"{where}: add_cross_attention=true is not supported (decoder-only "
                          f"GPT-2 only)")
    n_inner = config.get("n_inner")
    d_ff = 0 if n_inner is None else _config_int(config, ("n_inner",), where)
    eps = config.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise PimgptError(f"{where}: layer_norm_epsilon must be a number, not {eps!r}")
    return _make_spec(
        where,
        name=name,
        n_layer=_config_int(config, ("n_layer",), where),
        d_model=_config_int(config, ("n_embd",), where),
        n_head=_config_int(config, ("n_head",), where),
        vocab=_config_int(config, ("vocab_size",), where),
        n_ctx=_config_int(config, ("n_positions", "n_ctx"), where),
        d_ff=d_ff,
        ln_eps=float(eps),
        tied_head=bool(config.get("tie_word_embeddings", True)),
    )


def _shard_files(index: Path) -> list[Path]:
    """The shard files a ``model.safetensors.index.json`` names."""
    data = _read_config(index)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise PimgptError(f"{index}: no weight_map")
    files = []
    for shard in sorted(set(map(str, weight_map.values()))):
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise PimgptError(f"{index}: shard {shard} not found")
        files.append(shard_path)
    return files


def _load_hf_dir(directory: Path, files: list[Path] | None = None,
                 index: Path | None = None) -> GPTWeights:
    config_path = directory / "config.json"
    if files is None:
        if index is None and not (directory / "model.safetensors").is_file() and \
                (directory / "model.safetensors.index.json").is_file():
            index = directory / "model.safetensors.index.json"
        if index is not None:
            files = _shard_files(index)
        else:
            files = [directory / "model.safetensors"]
    where = files[0] if len(files) == 1 else (index or directory)
    missing = [p.name for p in (config_path, *files) if not p.is_file()]
    if missing:
        raise PimgptError(f"{directory}: no {' or '.join(missing)} (a Hugging Face GPT-2 "
                          f"checkpoint directory holds config.json and model.safetensors)")
    name = directory.resolve().name or "model"
    spec = _spec_from_config(_read_config(config_path), config_path, name)

    stored: dict[str, _Entry] = {}
    for f in files:
        for key, entry in _read_safetensors_header(f).items():
            canon = _canonical_name(key)
            if _is_buffer(canon):
                continue
            if canon in stored:
                raise PimgptError(f"{where}: tensor {canon} is stored twice (as "
                                  f"{stored[canon].key} and {key})")
            stored[canon] = entry

    spec = _resolve_head(spec, stored, where,
                         same=lambda: _entries_equal(stored["wte.weight"],
                                                     stored["lm_head.weight"]))
    _check_names(spec, stored.keys(), where, config_path)
    for canon, entry in stored.items():
        if canon in spec.tensor_shapes() and entry.dtype not in _ST_DTYPES:
            raise PimgptError(f"{entry.file}: tensor {canon} has unsupported dtype "
                              f"{entry.dtype} (pimgpt reads F32, F16 and BF16)")
    _check_shapes(spec, {k: e.shape for k, e in stored.items()}, where)

    def loader(canon: str) -> np.ndarray:
        return _read_entry(stored[canon])

    return GPTWeights(spec, loader, source=str(where))


def _entries_equal(a: _Entry, b: _Entry) -> bool:
    """Bit-for-bit equality of two stored tensors, compared in chunks (bounded memory)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    chunk = 1 << 24
    try:
        with open(a.file, "rb") as fa, open(b.file, "rb") as fb:
            fa.seek(a.offset)
            fb.seek(b.offset)
            left = a.nbytes
            while left:
                step = min(chunk, left)
                if fa.read(step) != fb.read(step):
                    return False
                left -= step
    except OSError as exc:
        raise PimgptError(f"cannot read {a.file}: {exc.strerror}") from None
    return True


def _resolve_head(spec: GPTSpec, stored: Mapping[str, Any], where: Path,
                  same: Callable[[], bool]) -> GPTSpec:
    """Decide tied vs untied head from what is stored.

    An absent ``lm_head.weight`` means tied (an error if config.json says the head is not tied);
    a present one that is bit-identical to ``wte`` is tied as well (nanoGPT and some exporters
    store the shared matrix twice). Otherwise the head is separate.
    """
    if "lm_head.weight" not in stored:
        if not spec.tied_head:
            raise PimgptError(f"{where}: missing tensor(s) lm_head.weight (config.json has "
                              f"tie_word_embeddings=false)")
        return replace(spec, tied_head=True)
    if "wte.weight" in stored and same():
        return replace(spec, tied_head=True)
    return replace(spec, tied_head=False)


def _check_names(spec: GPTSpec, present: Any, where: Path, config_path: Path | None) -> None:
    expected = spec.tensor_shapes()
    missing = [n for n in expected if n not in present]
    if missing:
        more = f" ({len(missing)} in all)" if len(missing) > 5 else ""
        raise PimgptError(f"{where}: missing tensor(s) {', '.join(missing[:5])}{more}")
    unexpected = sorted(n for n in present if n not in expected and _GPT2_NAME.match(n))
    if unexpected:
        src = config_path.name if config_path else "model_args"
        raise PimgptError(f"{where}: unexpected tensor {unexpected[0]} ({src} gives "
                          f"n_layer={spec.n_layer}, n_embd={spec.d_model})")


def _check_shapes(spec: GPTSpec, shapes: Mapping[str, tuple[int, ...]], where: Path) -> None:
    for canon, want in spec.tensor_shapes().items():
        got = tuple(shapes[canon])
        if got != want:
            raise PimgptError(f"{where}: tensor {canon} has shape {got}, expected {want}")


# --- nanoGPT -------------------------------------------------------------------------------------

def _is_zip(path: Path) -> bool:
    """torch.save's zip format, for .pt files saved under another suffix."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _torch_load(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise PimgptError(f"{path}: reading a nanoGPT .pt checkpoint needs torch: "
                          f"pip install 'pimgpt[hf]'") from None
    try:
        try:
            # mmap keeps the tensors on disk until one is asked for (zip-format files only)
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=False)
    except PimgptError:
        raise
    except Exception as exc:  # torch raises many types for a bad file; report any as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PimgptError(f"{path}: cannot read as a PyTorch checkpoint: {first}") from None


_TORCH_DTYPES = ("float32", "float16", "bfloat16")


def _check_torch_dtype(path: Path, name: str, tensor: Any) -> None:
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _TORCH_DTYPES:
        raise PimgptError(f"{path}: tensor {name} has unsupported dtype {dtype} (pimgpt reads "
                          f"float32, float16 and bfloat16)")


def _to_numpy(tensor: Any) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        # numpy has no bfloat16: reinterpret the bits as ml_dtypes' type, no rounding
        return tensor.detach().contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.detach().numpy()


def _load_nanogpt(path: Path) -> GPTWeights:
    """A nanoGPT checkpoint: nn.Linear weights ([out, in]) transposed to the canonical layout.

    nanoGPT's MLP uses the exact (erf) GELU while pimgpt computes the tanh form; the two differ
    by at most 4.8e-4 per activation (near x = 2.7, where one BF16 step is 0.016).
    """
    obj = _torch_load(path)  # first: it turns a missing torch into a PimgptError
    import torch

    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], Mapping):
        state, args = obj["model"], obj.get("model_args")
    elif isinstance(obj, Mapping):
        state, args = obj, None
    else:
        raise PimgptError(f"{path}: not a nanoGPT checkpoint (expected a dict with 'model' and "
                          f"'model_args', or a state dict)")
    tensors: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue  # non-tensor extras a state dict may carry
        canon = _canonical_name(key.removeprefix("_orig_mod."))
        if _is_buffer(canon):
            continue
        if canon in tensors:
            raise PimgptError(f"{path}: tensor {canon} is stored twice")
        tensors[canon] = value
    for needed in ("wte.weight", "wpe.weight", "h.0.attn.c_attn.weight"):
        if needed not in tensors or tensors[needed].dim() != 2:
            raise PimgptError(f"{path}: missing tensor(s) {needed} (not a GPT-2 state dict)")

    spec = _spec_from_nanogpt(path, tensors, args)
    spec = _resolve_head(spec, tensors, path,
                         same=lambda: _tensors_equal(tensors["wte.weight"],
                                                     tensors["lm_head.weight"]))
    shapes = spec.tensor_shapes()
    # Orientation is a property of the whole file: nn.Linear stores c_attn as (3d, d), HF's
    # Conv1D as (d, 3d). Square matrices (attn.c_proj) cannot tell, so c_attn decides for all.
    d = spec.d_model
    linear = tuple(tensors["h.0.attn.c_attn.weight"].shape) == (3 * d, d)
    transposed = {n for n in shapes if linear and n.endswith(
        ("c_attn.weight", "c_proj.weight", "c_fc.weight"))}
    # bias=False models have no biases at all (LayerNorm ones included): they are served as 0
    zero_bias = "h.0.ln_1.bias" not in tensors
    present = set(tensors) | ({n for n in shapes if n.endswith(".bias")} if zero_bias else set())
    _check_names(spec, present, path, None)
    for canon, want in shapes.items():
        if canon not in tensors:
            continue
        stored = tuple(tensors[canon].shape)
        expect = want[::-1] if canon in transposed else want
        if stored != expect:
            layout = " (nn.Linear layout [out, in])" if canon in transposed else ""
            raise PimgptError(f"{path}: tensor {canon} has shape {stored}, expected "
                              f"{expect}{layout}")
        _check_torch_dtype(path, canon, tensors[canon])

    def loader(canon: str) -> np.ndarray:
        if canon not in tensors:
            return np.zeros(shapes[canon], dtype=np.float32)
        arr = _to_numpy(tensors[canon])
        return np.ascontiguousarray(arr.T if canon in transposed else arr)

    return GPTWeights(spec, loader, source=str(path))


def _tensors_equal(a: Any, b: Any) -> bool:
    """Bit-for-bit equality (torch.equal would call -0.0 == 0.0 and NaN != NaN)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride():
        return True  # the same storage: nanoGPT's weight tying survives torch.save
    if a.element_size() not in (2, 4):
        return False
    int_type = {2: torch.int16, 4: torch.int32}[a.element_size()]
    return bool(torch.equal(a.contiguous().view(int_type), b.contiguous().view(int_type)))


def _positive_ints(path: Path, args: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in args:
            raise PimgptError(f"{path}: model_args lacks {key}")
        value = args[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise PimgptError(f"{path}: model_args {key} must be a positive integer, "
                              f"not {value!r}")


def _spec_from_nanogpt(path: Path, tensors: Mapping[str, Any],
                       args: Any) -> GPTSpec:
    """The spec from ``model_args``; a bare state dict's shape is read off its tensors."""
    name = path.stem
    if args is not None:
        if not isinstance(args, Mapping):
            raise PimgptError(f"{path}: model_args is not a dict")
        _positive_ints(path, args, ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"))
        return _make_spec(path, name=name, n_layer=args["n_layer"], d_model=args["n_embd"],
                          n_head=args["n_head"], vocab=args["vocab_size"],
                          n_ctx=args["block_size"])
    # Bare state dict: every dimension but the head count is in the shapes. GPT-2 and nanoGPT
    # models all use 64-wide heads, so that convention gives n_head.
    vocab, d = (int(s) for s in tensors["wte.weight"].shape)
    if d % 64:
        raise PimgptError(f"{path}: a bare state dict does not say n_head and its n_embd ({d}) "
                          f"is not a multiple of 64; save it with nanoGPT's model_args")
    layers = {int(m.group(1)) for n in tensors if (m := re.match(r"h\.(\d+)\.", n))}
    fc = tensors.get("h.0.mlp.c_fc.weight")
    d_ff = 0
    if fc is not None and fc.dim() == 2 and d in tuple(fc.shape):
        # (d_ff, d) from nn.Linear or (d, d_ff) from Conv1D
        d_ff = int(fc.shape[0] if fc.shape[1] == d else fc.shape[1])
    return _make_spec(path, name=name, n_layer=max(layers) + 1, d_model=d, n_head=d // 64,
                      vocab=vocab, n_ctx=int(tensors["wpe.weight"].shape[0]), d_ff=d_ff)


def _make_spec(where: Path, **fields: Any) -> GPTSpec:
    """GPTSpec(**fields), its validation errors prefixed with the file they came from."""
    try:
        return GPTSpec(**fields)
    except PimgptError as exc:
        raise PimgptError(f"{where}: {exc}") from None


__all__ = ["load_checkpoint"]
