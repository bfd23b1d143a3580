"""A plain float32 numpy GPT-2: the yardstick the PIM path is compared against.

It shares nothing with the machine model or the golden numerics: ordinary numpy float32
arithmetic (BLAS matrix products, numpy tanh/exp), weights as given by the checkpoint widened to
float32. It matches Hugging Face's ``GPT2LMHeadModel`` to about 1e-5 on small models.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pimgpt.errors import PimgptError
from pimgpt.mapping.model import GPTWeights

F32 = np.float32
_GELU_C = F32(np.sqrt(2.0 / np.pi))
_GELU_A = F32(0.044715)


def gelu_new(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return F32(0.5) * x * (F32(1.0) + np.tanh(_GELU_C * (x + _GELU_A * x * x * x)))


class Float32GPT:
    """A GPT-2-family model evaluated in float32, all weights loaded once."""

    def __init__(self, weights: GPTWeights) -> None:
        self.spec = weights.spec
        self.w = {name: weights.f32(name) for name in weights.names()}
        self.head = self.w["wte.weight" if self.spec.tied_head else "lm_head.weight"]
        self._eps = F32(self.spec.ln_eps)

    # --- building blocks -------------------------------------------------------------------

    def _ln(self, x: np.ndarray, prefix: str) -> np.ndarray:
        mean = x.mean(axis=-1, keepdims=True, dtype=F32)
        xc = x - mean
        var = (xc * xc).mean(axis=-1, keepdims=True, dtype=F32)
        return xc / np.sqrt(var + self._eps) * self.w[prefix + ".weight"] + \
            self.w[prefix + ".bias"]

    def _linear(self, x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ self.w[prefix + ".weight"] + self.w[prefix + ".bias"]

    def forward_cached(self, ids: list[int], cache: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Hidden states after ``ln_f`` for ``ids`` at the positions after those in ``cache``.

        ``cache`` holds each layer's keys and values, (n_head, T_past, d_head); it is extended
        in place, so a prefill followed by one-token steps computes the same attention as one
        full pass.
        """
        s = self.spec
        past = cache[0][0].shape[1] if cache else 0
        t = len(ids)
        nh, dh = s.n_head, s.d_head
        x = self.w["wte.weight"][ids] + self.w["wpe.weight"][past:past + t]
        # Query row i sits at position past + i and sees keys 0 .. past + i.
        mask = np.arange(past + t)[None, :] > (past + np.arange(t))[:, None]
        scale = F32(1.0 / np.sqrt(dh))
        for layer in range(s.n_layer):
            p = f"h.{layer}."
            qkv = self._linear(self._ln(x, p + "ln_1"), p + "attn.c_attn")
            q, k, v = (qkv[:, j * s.d_model:(j + 1) * s.d_model].reshape(t, nh, dh)
                       .transpose(1, 0, 2) for j in range(3))
            if len(cache) > layer:
                k = np.concatenate([cache[layer][0], k], axis=1)
                v = np.concatenate([cache[layer][1], v], axis=1)
                cache[layer] = (k, v)
            else:
                cache.append((k, v))
            scores = (q @ k.transpose(0, 2, 1)) * scale
            scores[:, mask] = -np.inf
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            att = (probs @ v).transpose(1, 0, 2).reshape(t, s.d_model)
            x = x + self._linear(att, p + "attn.c_proj")
            h = gelu_new(self._linear(self._ln(x, p + "ln_2"), p + "mlp.c_fc"))
            x = x + self._linear(h, p + "mlp.c_proj")
        return self._ln(x, "ln_f")

    def _check(self, ids: Sequence[int], what: str) -> list[int]:
        s = self.spec
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise PimgptError(f"{what}: token id {i!r} is not an integer")
            if not 0 <= i < s.vocab:
                raise PimgptError(f"{what}: token id {int(i)} is outside the vocabulary "
                                  f"(0..{s.vocab - 1}) of {s.name}")
            out.append(int(i))
        if not out:
            raise PimgptError(f"{what}: no tokens")
        return out

    # --- public ----------------------------------------------------------------------------

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (T, vocab) float32 for every position of ``ids`` (causal attention)."""
        ids = self._check(ids, "input")
        if len(ids) > self.spec.n_ctx:
            raise PimgptError(f"input: {len(ids)} tokens exceed the context of "
                              f"{self.spec.name} ({self.spec.n_ctx})")
        return (self.forward_cached(ids, []) @ self.head.T).astype(F32, copy=False)

    def generate(self, prompt_ids: Sequence[int], n_tokens: int) -> list[int]:
        """``n_tokens`` greedy tokens after the prompt (KV cache; ties go to the lowest id)."""
        prompt = self._check(prompt_ids, "prompt")
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or \
                n_tokens < 0:
            raise PimgptError(f"number of tokens must be a non-negative integer, not "
                              f"{n_tokens!r}")
        # The last generated token is never fed back, so it needs no position.
        needed = len(prompt) + max(int(n_tokens) - 1, 0)
        if needed > self.spec.n_ctx:
            raise PimgptError(f"prompt ({len(prompt)}) + tokens ({n_tokens}) need {needed} "
                              f"positions, more than the context of {self.spec.name} "
                              f"({self.spec.n_ctx})")
        cache: list[tuple[np.ndarray, np.ndarray]] = []
        out: list[int] = []
        feed = prompt
        for _ in range(int(n_tokens)):
            hidden = self.forward_cached(feed, cache)[-1]
            token = int(np.argmax(hidden @ self.head.T))
            out.append(token)
            feed = [token]
        return out
