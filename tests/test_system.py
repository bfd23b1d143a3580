"""System test: the compiled tiny GPT on every machine model through one device API.

The built-in ``tiny`` model compiled for the ``tiny`` machine runs prefill plus 8 generated
tokens through :func:`pimgpt.sim.device.generate` on each backend. Every backend must produce
the golden model's tokens and, bit for bit, its logits at every step; timed backends must take,
run by run, exactly the cycles the cycle simulator predicts for the same token stream (for the
RTL, whose host turnarounds between runs take cycles, the simulator started at each run's own
first-dispatch cycle).

Backends: those of :data:`pimgpt.sim.device.BACKENDS` plus ``rtl``, the generated Verilog top
(``pimgpt verilog --preset tiny``, generated once per session by tests/conftest.py) under cocotb
on Verilator (:mod:`helpers.rtl_device`; ``PIMGPT_RTL_SIM=icarus`` runs it on Icarus instead,
which takes about two hours: 40-65 cycles/s against Verilator's ~34,000; ``PIMGPT_WAVES=1`` writes
its waveform and prints the path). :func:`test_rtl_command_trace`
checks the DRAM command trace of the RTL's generation: no timing or protocol violation, and
command for command the cycle simulator's trace of the same runs started at the RTL's cycles.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.rtl_device import RtlDevice, first_difference, simulate_on_rtl_timeline

from pimgpt.hdl import isa
from pimgpt.hdl.params import preset
from pimgpt.mapping.builtin import DEFAULT_MODEL, builtin_model
from pimgpt.mapping.compiler import compile_model
from pimgpt.sim.cycle import CycleSimulator
from pimgpt.sim.device import BACKENDS, generate
from pimgpt.sim.golden import GoldenGPT
from pimgpt.sim.trace import check_trace, read_trace_csv, write_trace_csv

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


#: the RTL backend's simulator
RTL_SIM = os.environ.get("PIMGPT_RTL_SIM", "verilator")


class Devices:
    """Makes each backend's device for the tests of this module and keeps the ones made (the
    RTL device's runs and trace are checked by test_rtl_command_trace); closes them at the
    end."""

    def __init__(self, request: pytest.FixtureRequest):
        self.request = request
        self.made: dict[str, object] = {}

    def __call__(self, backend: str):
        if backend == "rtl":
            t = time.monotonic()
            device = RtlDevice(TINY, self.request.getfixturevalue("tiny_verilog"),
                               self.request.getfixturevalue("rtl_root"), sim=RTL_SIM)
            print(f"rtl ({RTL_SIM}): build {device.build.build_seconds:.0f} s, simulation "
                  f"start {time.monotonic() - t:.1f} s")
        else:
            device = BACKENDS[backend](TINY)
        self.made[backend] = device
        return device

    def close(self) -> None:
        for device in self.made.values():
            if hasattr(device, "close"):
                device.close()


@pytest.fixture(scope="module")
def devices(request: pytest.FixtureRequest):
    made = Devices(request)
    yield made
    made.close()


@pytest.mark.parametrize("backend", sorted([*BACKENDS, "rtl"]))
def test_tiny_gpt_on_every_backend(program, devices, backend: str, report_figure) -> None:
    binary, tokens, logits = program
    device = devices(backend)
    device.load(binary)
    gen = generate(device, binary.meta, PROMPT, N_TOKENS, keep_logits=True)
    assert gen.generated_ids == tokens
    assert len(gen.logits) == len(logits) == len(PROMPT) + N_TOKENS - 1
    for step, (got, want) in enumerate(zip(gen.logits, logits)):
        diff = np.flatnonzero(got.view(np.uint32) != want[:got.size].view(np.uint32))
        assert diff.size == 0, f"step {step}: logits differ at {diff[:5]}"
    if backend == "functional":
        assert gen.cycles == []
    elif backend == "rtl":
        # the host's register writes between runs take RTL clock cycles, so each run starts
        # at another refresh and ASIC-clock phase than back to back: the simulator started at
        # the RTL's own first-dispatch cycles must take exactly the RTL's cycles
        cycles = device.runs[-1]["end"] + 1  # since reset, host turnarounds included
        wall = sum(r["wall_s"] for r in device.runs)
        report_figure(f"system test, rtl on {RTL_SIM}: {len(device.runs)} runs, {cycles:,} "
                      f"cycles in {wall:.1f} s: {cycles / wall:,.0f} cycles/s (build "
                      f"{device.build.build_seconds:.0f} s)")
        _, timings = simulate_on_rtl_timeline(TINY, binary, device.runs)
        assert gen.cycles == [t.cycles for t in timings]
        assert gen.cycles == [r["counters"]["cycles"] for r in device.runs]
    else:
        stream = PROMPT + tokens[:-1]
        assert gen.cycles == predicted_cycles(binary, stream)
        assert all(c > 0 for c in gen.cycles)


def test_rtl_command_trace(program, devices, tmp_path: Path) -> None:
    """The RTL's DRAM command trace of the tiny GPT's generation (the body test's run, or one
    made here): ``pimgpt check-trace`` finds no violation, and it equals, command for command,
    the cycle simulator's trace of the same runs started at the RTL's first-dispatch cycles."""
    binary, tokens, _ = program
    device = devices.made.get("rtl")
    if device is None or len(device.runs) != len(PROMPT) + N_TOKENS - 1:
        device = devices("rtl")
        device.load(binary)
        generate(device, binary.meta, PROMPT, N_TOKENS)
    runs = device.runs
    end = runs[-1]["end"]
    got = [e for e in device.command_trace() if e.cycle < end]
    csv = tmp_path / "rtl_trace.csv"
    write_trace_csv(csv, got)
    violations = check_trace(read_trace_csv(csv), TINY)
    assert not violations, (f"{len(violations)} violation(s) in {csv}, the first: "
                            f"{violations[0].message}")

    sim, timings = simulate_on_rtl_timeline(TINY, binary, runs)
    want = sorted((e for e in sim.trace if e.cycle < end), key=lambda e: (e.cycle, e.channel))
    predicted = predicted_cycles(binary, PROMPT + tokens[:-1])
    table = "\n".join(
        f"run {i:2d}: t0 {r['t0']:7d}  RTL {r['counters']['cycles']:6d}  simulator "
        f"{predicted[i]:6d} (back to back), {t.cycles:6d} (at the RTL's t0)"
        for i, (r, t) in enumerate(zip(runs, timings)))
    print(table)
    diff = first_difference(got, want)
    assert diff is None, f"{diff}\n{table}"
    assert [r["counters"]["cycles"] for r in runs] == [t.cycles for t in timings], table
