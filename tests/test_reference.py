"""The float32 numpy reference against Hugging Face transformers, and its own consistency."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.ckpt import random_arrays, write_hf_checkpoint

from pimgpt.errors import PimgptError
from pimgpt.mapping.builtin import builtin_model
from pimgpt.mapping.checkpoint import load_checkpoint
from pimgpt.mapping.model import GPTSpec, GPTWeights
from pimgpt.sim.reference import Float32GPT, gelu_new

IDS = [3, 17, 999, 0, 512, 42, 42, 7, 250, 998, 1, 64, 300, 77, 5, 600, 123, 9, 880, 31]


def hf_model(tmp_path, monkeypatch, **config):
    """A seeded random GPT2LMHeadModel saved as safetensors; returns (model, directory)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may reach the network
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1234)
    model = GPT2LMHeadModel(GPT2Config(bos_token_id=0, eos_token_id=0, **config)).eval()
    with torch.no_grad():
        # HF initialises LayerNorms to exactly (1, 0) and biases to 0; perturb them so the test
        # also checks that every LayerNorm and bias is wired to the right place.
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.02)
    directory = tmp_path / "hf-gpt2"
    model.save_pretrained(directory, safe_serialization=True)
    return model, directory


def torch_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def compare_with_hf(tmp_path, monkeypatch, ids: list[int], **config) -> Float32GPT:
    model, directory = hf_model(tmp_path, monkeypatch, **config)
    weights = load_checkpoint(directory)
    ref = Float32GPT(weights)
    ours = ref.forward(ids)
    theirs = torch_logits(model, ids)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (len(ids),
                                                                       config["vocab_size"])
    err = float(np.abs(ours - theirs).max())
    print(f"max abs logit error vs transformers ({config}): {err:.3g}")
    assert err <= 1e-4
    # the comparison is not vacuous: the logits vary by far more than the tolerance
    assert float(theirs.std()) > 1e-2
    return ref


@pytest.mark.hf
def test_matches_transformers(tmp_path, monkeypatch):
    compare_with_hf(tmp_path, monkeypatch, IDS, n_layer=2, n_embd=64, n_head=4,
                    vocab_size=1000, n_positions=128)


@pytest.mark.hf
def test_matches_transformers_awkward_shape(tmp_path, monkeypatch):
    ids = [i % 997 for i in IDS]
    compare_with_hf(tmp_path, monkeypatch, ids, n_layer=2, n_embd=60, n_head=3,
                    vocab_size=997, n_positions=128)


@pytest.mark.hf
def test_matches_transformers_untied_head(tmp_path, monkeypatch):
    ref = compare_with_hf(tmp_path, monkeypatch, IDS[:9], n_layer=1, n_embd=32, n_head=2,
                          vocab_size=1000, n_positions=16, tie_word_embeddings=False,
                          n_inner=48, layer_norm_epsilon=1e-3)
    assert not ref.spec.tied_head
    assert (ref.spec.d_ff, ref.spec.ln_eps) == (48, 1e-3)


@pytest.mark.hf
def test_generate_matches_teacher_forced_forward_on_hf_model(tmp_path, monkeypatch):
    _, directory = hf_model(tmp_path, monkeypatch, n_layer=2, n_embd=64, n_head=4,
                            vocab_size=1000, n_positions=128)
    check_generate(Float32GPT(load_checkpoint(directory)), IDS[:5], 12)


def check_generate(ref: Float32GPT, prompt: list[int], n: int) -> list[int]:
    """generate() (KV cache) must equal the argmax of a teacher-forced full forward pass."""
    out = ref.generate(prompt, n)
    assert len(out) == n
    logits = ref.forward(prompt + out[:-1])
    expected = [int(i) for i in logits[len(prompt) - 1:].argmax(axis=-1)]
    assert out == expected
    return out


def test_generate_matches_forward_builtin():
    ref = Float32GPT(builtin_model("tiny", seed=1))
    # (a random tied-head model mostly echoes its last token: wte . wte dominates the logits)
    check_generate(ref, [72, 101, 108, 108, 111], 20)
    # and a prompt that fills the context except for the positions the tokens need
    check_generate(ref, list(range(100, 228))[:120], 9)


def test_generate_matches_forward_random_arrays():
    spec = GPTSpec(name="r", n_layer=3, d_model=48, n_head=6, vocab=500, n_ctx=40,
                   tied_head=False)
    ref = Float32GPT(GPTWeights.from_arrays(spec, random_arrays(spec, 5)))
    out = check_generate(ref, [1], 30)
    assert len(set(out)) > 3  # a varied stream, so the comparison means something


def test_forward_is_causal():
    ref = Float32GPT(builtin_model("tiny"))
    full = ref.forward([1, 2, 3, 4, 5, 6])
    prefix = ref.forward([1, 2, 3])
    np.testing.assert_allclose(full[:3], prefix, rtol=0, atol=1e-5)
    changed = ref.forward([1, 2, 3, 4, 5, 7])
    np.testing.assert_allclose(full[:5], changed[:5], rtol=0, atol=1e-5)
    assert np.abs(full[5] - changed[5]).max() > 1e-3


def test_forward_matches_dtype_of_checkpoint(tmp_path):
    """bfloat16 checkpoints are widened exactly: same logits as the bf16-rounded float32 ones."""
    import ml_dtypes

    spec = GPTSpec(name="b", n_layer=1, d_model=32, n_head=4, vocab=300, n_ctx=16)
    arrays = random_arrays(spec, 2)
    rounded = {n: a.astype(ml_dtypes.bfloat16).astype(np.float32) for n, a in arrays.items()}
    d = write_hf_checkpoint(tmp_path / "b", spec, arrays, dtype="bfloat16")
    a = Float32GPT(load_checkpoint(d)).forward([5, 6, 7])
    b = Float32GPT(GPTWeights.from_arrays(spec, rounded)).forward([5, 6, 7])
    np.testing.assert_array_equal(a, b)


def test_gelu_new():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0], dtype=np.float32)
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x.astype(np.float64)
                                                            ** 3)))
    np.testing.assert_allclose(gelu_new(x), expected, rtol=1e-6, atol=1e-7)
    assert gelu_new(x).dtype == np.float32


def test_input_validation():
    ref = Float32GPT(builtin_model("tiny"))
    with pytest.raises(PimgptError, match=r"token id 256 is outside the vocabulary \(0..255\)"):
        ref.forward([1, 256])
    with pytest.raises(PimgptError, match="token id -1 is outside"):
        ref.generate([-1], 2)
    with pytest.raises(PimgptError, match="129 tokens exceed the context of tiny \\(128\\)"):
        ref.forward([0] * 129)
    with pytest.raises(PimgptError, match="input: no tokens"):
        ref.forward([])
    with pytest.raises(PimgptError, match="is not an integer"):
        ref.forward([1.5])
    with pytest.raises(PimgptError, match=r"prompt \(120\) \+ tokens \(10\) need 129 positions"):
        ref.generate([0] * 120, 10)
    with pytest.raises(PimgptError, match="non-negative integer, not -2"):
        ref.generate([1], -2)
    assert ref.generate([0] * 120, 9) == ref.generate([0] * 120, 9)
    assert ref.generate([1, 2], 0) == []
