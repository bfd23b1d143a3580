"""End to end: compile -> .pimbin -> functional machine, against the golden model (bit-exact)
and the independent float32 reference (top-1 agreement under teacher forcing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.ckpt import random_arrays, write_hf_checkpoint

from pimgpt.hdl.params import preset
from pimgpt.mapping.builtin import DEFAULT_MODEL, builtin_model
from pimgpt.mapping.checkpoint import load_checkpoint
from pimgpt.mapping.compiler import CompileOptions, compile_model
from pimgpt.mapping.model import GPTSpec
from pimgpt.mapping.pimbin import read_pimbin, write_pimbin
from pimgpt.sim.golden import GoldenGPT
from pimgpt.sim.machine import FunctionalMachine
from pimgpt.sim.reference import Float32GPT

# A trained checkpoint with awkward sizes (tools/train_tiny.py awkward): d_model 120 is not a
# multiple of 16 nor of a row, 5 heads (not a power of two) of 24 (not a whole column), an odd
# vocabulary of 997; its 256-token context crosses the tiny machine's 128-token V rows.
AWKWARD_DIR = Path(__file__).parent / "data" / "awkward"
AWKWARD = GPTSpec(name="awkward", n_layer=2, d_model=120, n_head=5, vocab=997, n_ctx=256)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


def _run_both(config, weights, prompt, n_tokens, tmp_path, max_tokens=None, options=None):
    """Compile, write and re-read the .pimbin, run it; run the golden model; return both."""
    binary, report = compile_model(config, weights, max_tokens, options=options)
    path = tmp_path / "model.pimbin"
    write_pimbin(path, binary)
    machine = FunctionalMachine(config)
    machine.load(read_pimbin(path, config))
    gen = machine.generate(prompt, n_tokens, keep_logits=True)
    tokens, logits = GoldenGPT(config, weights).generate(prompt, n_tokens, keep_logits=True)
    return gen, tokens, logits, report


def _assert_bit_exact(gen, tokens, logits):
    assert gen.generated_ids == tokens
    assert len(gen.logits) == len(logits)
    for step, (a, b) in enumerate(zip(gen.logits, logits)):
        diff = np.flatnonzero(_bits(a) != _bits(b[:a.size]))
        assert diff.size == 0, f"step {step}: logits differ at {diff[:5]}"


#: compile options under test: the default, the plain schedule, each mapping technique off
OPTIONS = {"default": {}, "plain": {"overlap": False}, "no-row-fill": {"row_fill": False},
           "no-head-concat": {"head_concat": False}, "no-kv-layout": {"kv_layout": False}}


@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize("machine", ["paper", "tiny"])
def test_default_model_matches_golden_bit_for_bit(machine, options, tmp_path):
    """Every schedule and mapping (CompileOptions) computes the golden model's bits."""
    config = preset(machine)
    weights = builtin_model(DEFAULT_MODEL)
    gen, tokens, logits, report = _run_both(config, weights, [72, 101, 108, 108, 111], 8,
                                            tmp_path, max_tokens=16,
                                            options=CompileOptions(**OPTIONS[options]))
    assert len(gen.generated_ids) == 8
    _assert_bit_exact(gen, tokens, logits)
    assert report.row_hit_bound > 0.5


@pytest.mark.parametrize("machine", ["paper", "tiny"])
def test_awkward_checkpoint_matches_golden_and_reference(machine, tmp_path):
    weights = load_checkpoint(AWKWARD_DIR)
    assert weights.spec == AWKWARD
    config = preset(machine)
    # teacher-forced text the model was not trained on (this file), as bytes
    prompt = list(Path(__file__).read_bytes()[:210])
    gen, tokens, logits, _report = _run_both(config, weights, prompt, 4, tmp_path)
    _assert_bit_exact(gen, tokens, logits)

    # teacher forcing: every prompt position's logits against the float32 reference
    ref = Float32GPT(weights).forward(prompt)
    pim = np.stack(gen.logits[:len(prompt)])
    agree = np.mean(ref.argmax(axis=1) == pim.argmax(axis=1))
    err = float(np.max(np.abs(ref - pim)))
    scale = float(np.max(np.abs(ref)))
    print(f"{machine}: top-1 agreement {agree:.2%} over {len(prompt)} positions, "
          f"max |logit error| {err:.3g} (largest |logit| {scale:.3g})")
    assert agree >= 0.99
    # BF16 keeps 8 significant bits (0.4 % per rounding); a few roundings in series stay
    # within a couple of percent of the logit scale
    assert err <= 0.02 * scale


def test_thirty_two_channels_match_golden(tmp_path):
    """The ISA's 32-bit channel mask: a 32-channel paper machine (512 banks) runs the default
    model bit for bit, every weight VMM addressing all 32 channels."""
    import dataclasses
    config = preset("paper")
    config = config.replace(name="paper-32ch",
                            geometry=dataclasses.replace(config.geometry, channels=32))
    gen, tokens, logits, _ = _run_both(config, builtin_model(DEFAULT_MODEL), [72, 101, 108], 4,
                                       tmp_path, max_tokens=16)
    _assert_bit_exact(gen, tokens, logits)
    binary, _ = compile_model(config, builtin_model(DEFAULT_MODEL), 16, with_image=False)
    macs = [i for i in binary.code if i.op.name == "MAC_ABK" and i.addr_reg == 0]
    assert macs and all(i.ch_mask == 0xFFFFFFFF for i in macs)


@pytest.mark.parametrize("options", [{"kv_layout": False},
                                     {"kv_layout": False, "overlap": False,
                                      "head_concat": False}])
def test_row_major_v_matches_golden_across_token_chunks(options, tmp_path):
    """V row-major (score.V on the vector unit) over 210 tokens on the tiny machine: two token
    chunks of its 128-token rows (first read-out copied, the second added), heads of 24 values
    padded to 32, 8 banks (a block of 16 tokens spans two slots): bit for bit."""
    weights = load_checkpoint(AWKWARD_DIR)
    prompt = list(Path(__file__).read_bytes()[:210])
    gen, tokens, logits, _ = _run_both(preset("tiny"), weights, prompt, 2, tmp_path,
                                       options=CompileOptions(**options))
    _assert_bit_exact(gen, tokens, logits)


def test_bf16_and_fp16_checkpoints_compile_to_the_same_program(tmp_path):
    """The code does not depend on weight values or their stored precision; the image does."""
    arrays = random_arrays(AWKWARD, seed=3)
    codes, images = [], []
    for dtype in ("float32", "float16", "bfloat16"):
        weights = load_checkpoint(write_hf_checkpoint(tmp_path / dtype, AWKWARD, arrays,
                                                      dtype=dtype))
        binary, _ = compile_model(preset("tiny"), weights, 32)
        codes.append(binary.code)
        images.append(binary.image)
    assert codes[0] == codes[1] == codes[2]
    assert not np.array_equal(images[0], images[1])  # fp16 rounding differs from bf16's


def test_compile_is_deterministic(tmp_path):
    weights = builtin_model(DEFAULT_MODEL)
    blobs = []
    for i in range(2):
        binary, _ = compile_model(preset("paper"), weights, 32)
        write_pimbin(tmp_path / f"{i}.pimbin", binary)
        blobs.append((tmp_path / f"{i}.pimbin").read_bytes())
    assert blobs[0] == blobs[1]


def test_every_bank_computes_in_weight_vmms():
    """All channels and banks work at once: every MAC of a weight VMM addresses all channels."""
    binary, _ = compile_model(preset("paper"), builtin_model(DEFAULT_MODEL), 16)
    macs = [i for i in binary.code if i.op.name == "MAC_ABK" and i.addr_reg == 0]
    assert macs and all(i.ch_mask == 0xFF for i in macs)
