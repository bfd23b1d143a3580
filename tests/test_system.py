"""System test: the compiled tiny GPT on every machine model through one device API.

The built-in ``tiny`` model compiled for the ``tiny`` machine runs prefill plus 8 generated
tokens through :func:`pimgpt.sim.device.generate` on each backend. Every backend must produce
the golden model's tokens and, bit for bit, its logits at every step; timed backends must take,
run by run, exactly the cycles the cycle simulator predicts for the same token stream. The RTL
backend joins this parametrization with the generated top (issue 5).
"""

from __future__ import annotations

import numpy as np
import pytest

from pimgpt.hdl import isa
from pimgpt.hdl.params import preset
from pimgpt.mapping.builtin import DEFAULT_MODEL, builtin_model
from pimgpt.mapping.compiler import compile_model
from pimgpt.sim.cycle import CycleSimulator
from pimgpt.sim.device import BACKENDS, generate
from pimgpt.sim.golden import GoldenGPT

TINY = preset("tiny")
PROMPT = [100, 101, 102, 32, 116]  # "def t"
N_TOKENS = 8


@pytest.fixture(scope="module")
def program():
    weights = builtin_model(DEFAULT_MODEL)
    binary, _ = compile_model(TINY, weights, len(PROMPT) + N_TOKENS)
    tokens, logits = GoldenGPT(TINY, weights).generate(PROMPT, N_TOKENS, keep_logits=True)
    return binary, tokens, logits


def predicted_cycles(binary, token_stream: list[int]) -> list[int]:
    """The cycle simulator's prediction, run by run, for the given input tokens."""
    sim = CycleSimulator(TINY)
    sim.load(binary)
    return [sim.run({isa.REG_POS: pos, isa.REG_TOKEN_IN: tok}).cycles
            for pos, tok in enumerate(token_stream)]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_tiny_gpt_on_every_backend(program, backend: str) -> None:
    binary, tokens, logits = program
    device = BACKENDS[backend](TINY)
    device.load(binary)
    gen = generate(device, binary.meta, PROMPT, N_TOKENS, keep_logits=True)
    assert gen.generated_ids == tokens
    assert len(gen.logits) == len(logits) == len(PROMPT) + N_TOKENS - 1
    for step, (got, want) in enumerate(zip(gen.logits, logits)):
        diff = np.flatnonzero(got.view(np.uint32) != want[:got.size].view(np.uint32))
        assert diff.size == 0, f"step {step}: logits differ at {diff[:5]}"
    if backend == "functional":
        assert gen.cycles == []
    else:
        stream = PROMPT + tokens[:-1]
        assert gen.cycles == predicted_cycles(binary, stream)
        assert all(c > 0 for c in gen.cycles)
