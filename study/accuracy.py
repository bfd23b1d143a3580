"""Accuracy of the PIM numerics against float32 on a text sample shipped with the package.

For each model the sample is cut into windows of at most the model's context and run with
teacher forcing (every token of the sample is fed, whatever was predicted):

* PIM numerics: :class:`pimgpt.sim.golden.GoldenGPT` for the machine (BF16 weights and
  activations into the bank MACs, binary32 ASIC functions): bit for bit the logits the compiled
  program computes on that machine (tests/test_e2e.py checks that equality);
* float32: :class:`pimgpt.sim.reference.Float32GPT` (one causal pass per window).

Reported: top-1 agreement (positions whose argmax is the same), the largest and the mean
absolute logit difference, and the perplexity of each on the sample's next tokens
(exp of the mean negative log-likelihood, softmax in float64) with their difference.

The sample (``study/data/sample.txt``) is Python source written for this study. The ``tiny``
model is trained on Python sources, so its perplexity means something; the GPT-2/GPT-3 shapes
carry seeded random weights, where perplexity is near the vocabulary size for both numerics and
only the difference (the numerics' effect) is informative.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import numpy as np

from pimgpt.errors import PimgptError


def sample_text() -> str:
    """The shipped text sample."""
    return (files("pimgpt.study") / "data" / "sample.txt").read_text(encoding="utf-8")


def encode(spec, text: str) -> tuple[list[int], str]:
    """Token ids of ``text`` for a model and how they were made."""
    if spec.vocab <= 256:
        return list(text.encode("utf-8")), "UTF-8 bytes"
    try:
        from pimgpt.mapping.tokenizer import get_tokenizer
        return list(get_tokenizer(spec).encode(text)), "GPT-2 BPE"
    except (ImportError, PimgptError, AttributeError):
        # without the [text] extra: bytes are valid ids of a 50257-token vocabulary too
        return list(text.encode("utf-8")), "UTF-8 bytes (no GPT-2 tokenizer installed)"


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    return lse - z[np.arange(len(targets)), targets]


def evaluate(model_name: str, config, max_tokens: int | None = None) -> dict[str, Any]:
    """Accuracy figures of one built-in model on ``config``'s numerics (first ``max_tokens``
    tokens of the sample; all of it when None)."""
    from pimgpt.mapping.builtin import builtin_model
    from pimgpt.sim.golden import GoldenGPT
    from pimgpt.sim.reference import Float32GPT

    weights = builtin_model(model_name)
    spec = weights.spec
    ids, how = encode(spec, sample_text())
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise PimgptError("the accuracy sample needs at least 2 tokens")
    ref = Float32GPT(weights)
    gold = GoldenGPT(config, weights)
    pim_logits, f32_logits = [], []
    for lo in range(0, len(ids), spec.n_ctx):
        window = ids[lo:lo + spec.n_ctx]
        f32_logits.append(ref.forward(window))
        gold.reset()
        pim_logits.append(np.stack([gold.step(t, p) for p, t in enumerate(window)]))
    del ref, gold
    pim = np.concatenate(pim_logits).astype(np.float32)
    f32 = np.concatenate(f32_logits)
    # next-token targets inside each window (the last token of a window predicts nothing)
    tgt_idx, pred_idx = [], []
    for lo in range(0, len(ids), spec.n_ctx):
        n = min(spec.n_ctx, len(ids) - lo)
        pred_idx.extend(range(lo, lo + n - 1))
        tgt_idx.extend(range(lo + 1, lo + n))
    targets = np.asarray(ids)[tgt_idx]
    nll_pim = _nll(pim[pred_idx], targets)
    nll_f32 = _nll(f32[pred_idx], targets)
    diff = np.abs(pim.astype(np.float64) - f32.astype(np.float64))
    ppl_pim, ppl_f32 = float(np.exp(nll_pim.mean())), float(np.exp(nll_f32.mean()))
    return {
        "model": model_name, "machine": config.name, "tokens": len(ids), "tokenizer": how,
        "trained": spec.vocab <= 256 and model_name == "tiny",
        "top1_agreement": float(np.mean(pim.argmax(-1) == f32.argmax(-1))),
        "max_abs_logit_error": float(diff.max()),
        "mean_abs_logit_error": float(diff.mean()),
        "logit_std_f32": float(f32.std()),
        "perplexity_f32": ppl_f32, "perplexity_pim": ppl_pim,
        "perplexity_diff": ppl_pim - ppl_f32,
        "perplexity_rel_diff": ppl_pim / ppl_f32 - 1,
    }
