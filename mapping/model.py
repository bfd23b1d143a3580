"""The GPT-2-family model as the compiler sees it: a shape and a source of named tensors.

Tensor names are canonical Hugging Face GPT-2 names without the ``transformer.`` prefix, with
Conv1D orientation (``[in, out]``) for every linear layer:

=============================  ==================  ============================================
name                           shape               meaning
=============================  ==================  ============================================
``wte.weight``                 (vocab, d)          token embedding (and tied LM head)
``wpe.weight``                 (n_ctx, d)          position embedding
``h.{i}.ln_1.weight/.bias``    (d,)                LayerNorm before attention
``h.{i}.attn.c_attn.weight``   (d, 3d)             fused Q|K|V projection; ``.bias`` (3d,)
``h.{i}.attn.c_proj.weight``   (d, d)              attention output projection; ``.bias`` (d,)
``h.{i}.ln_2.weight/.bias``    (d,)                LayerNorm before the MLP
``h.{i}.mlp.c_fc.weight``      (d, 4d)             FFN1; ``.bias`` (4d,)
``h.{i}.mlp.c_proj.weight``    (4d, d)             FFN2; ``.bias`` (d,)
``ln_f.weight/.bias``          (d,)                final LayerNorm
``lm_head.weight``             (vocab, d)          only when the head is not tied to ``wte``
=============================  ==================  ============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from pimgpt.errors import PimgptError


@dataclass(frozen=True, kw_only=True)
class GPTSpec:
    """Shape of a GPT-2-family decoder (pre-LayerNorm, GELU MLP, learned positions)."""

    name: str
    n_layer: int
    d_model: int
    n_head: int
    vocab: int
    n_ctx: int
    d_ff: int = 0  # 0 means 4 * d_model
    ln_eps: float = 1e-5
    tied_head: bool = True

    def __post_init__(self) -> None:
        for field in ("n_layer", "d_model", "n_head", "vocab", "n_ctx"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise PimgptError(f"model {self.name}: {field} must be a positive integer, "
                                  f"not {value!r}")
        if self.d_model % self.n_head:
            raise PimgptError(f"model {self.name}: d_model ({self.d_model}) is not divisible "
                              f"by n_head ({self.n_head})")
        if self.d_ff == 0:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        if isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff <= 0:
            raise PimgptError(f"model {self.name}: d_ff must be a positive integer, "
                              f"not {self.d_ff!r}")
        if isinstance(self.ln_eps, bool) or not isinstance(self.ln_eps, (int, float)) \
                or not self.ln_eps > 0:
            raise PimgptError(f"model {self.name}: ln_eps must be a positive number, "
                              f"not {self.ln_eps!r}")
        if not isinstance(self.tied_head, bool):
            raise PimgptError(f"model {self.name}: tied_head must be true or false")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the model needs, with its shape, in a fixed order."""
        d, f = self.d_model, self.d_ff
        shapes: dict[str, tuple[int, ...]] = {"wte.weight": (self.vocab, d),
                                              "wpe.weight": (self.n_ctx, d)}
        for i in range(self.n_layer):
            p = f"h.{i}."
            shapes.update({
                p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
                p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
                p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
                p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
                p + "mlp.c_fc.weight": (d, f), p + "mlp.c_fc.bias": (f,),
                p + "mlp.c_proj.weight": (f, d), p + "mlp.c_proj.bias": (d,),
            })
        shapes["ln_f.weight"] = (d,)
        shapes["ln_f.bias"] = (d,)
        if not self.tied_head:
            shapes["lm_head.weight"] = (self.vocab, d)
        return shapes

    def param_count(self) -> int:
        """Parameters (the tied head counted once)."""
        return sum(int(np.prod(s)) for s in self.tensor_shapes().values())


class GPTWeights:
    """A model: its :class:`GPTSpec` and a loader of tensors by canonical name.

    Tensors are produced on demand (``loader(name)``) so that multi-GB models are never held in
    memory twice; each comes back as a float32, float16 or bfloat16 array of the listed shape.
    """

    def __init__(self, spec: GPTSpec, loader: Callable[[str], np.ndarray], source: str = ""):
        self.spec = spec
        self._loader = loader
        self.source = source or spec.name
        self._shapes = spec.tensor_shapes()

    def tensor(self, name: str) -> np.ndarray:
        """The named tensor, shape-checked."""
        shapes = self._shapes
        if name not in shapes:
            raise KeyError(name)
        arr = self._loader(name)
        if tuple(arr.shape) != shapes[name]:
            raise PimgptError(f"{self.source}: tensor {name} has shape {tuple(arr.shape)}, "
                              f"expected {shapes[name]}")
        return arr

    def f32(self, name: str) -> np.ndarray:
        """The named tensor as float32."""
        return np.asarray(self.tensor(name), dtype=np.float32)

    def head(self) -> np.ndarray:
        """The LM-head matrix (vocab, d): ``wte`` when tied."""
        return self.f32("wte.weight" if self.spec.tied_head else "lm_head.weight")

    def names(self) -> Iterator[str]:
        return iter(self._shapes)

    @classmethod
    def from_arrays(cls, spec: GPTSpec, arrays: dict[str, np.ndarray],
                    source: str = "") -> "GPTWeights":
        """Weights held in memory (tests, small models)."""
        missing = [n for n in spec.tensor_shapes() if n not in arrays]
        if missing:
            raise PimgptError(f"{source or spec.name}: missing tensor(s) "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        return cls(spec, arrays.__getitem__, source)
