"""The PIM-GPT paper's reported behaviour, checked on our simulator (issue 3 acceptance).

Each figure is one decode step at position 511 (attention over 512 tokens, KV reserved for
1,024) of a layout-only compile on the ``paper`` preset, timed by the fast engine
(:func:`pimgpt.sim.shares.step`); ``bench/paper_checks.py`` prints the same figures with the
breakdown. These tests can fail: they assert the paper's thresholds, not our current numbers.

The ``paper`` preset is the machine our RTL builds: per-channel data movers that stage and drain
through the vector memory's row ports, in order with the vector work, and 4-deep controller
queues (hdl/top.py; the simulator predicts that RTL cycle for cycle). The paper's own
evaluation assumes free ASIC<->PIM data movement and a controller that runs far ahead; the VMM
share (b) and channel scaling (d) claims hold under those assumptions
(:func:`~pimgpt.sim.shares.paper_assumptions`), which is what they assert here. On the RTL
machine they are measured, not asserted: ``python bench/paper_checks.py`` (both miss there).

The fourth claim, ASIC 1 GHz -> 100 MHz costing <= 20 %, does not hold on either machine (the
vector unit's 64 lanes and its dependent LayerNorm/softmax chains; see the issue notes and
``bench/paper_checks.py``); it is measured by the bench, not asserted here.
"""

from __future__ import annotations

import dataclasses

import pytest

from pimgpt.hdl.params import preset
from pimgpt.mapping.compiler import CompileOptions
from pimgpt.sim.shares import paper_assumptions, step

PAPER = preset("paper")
ASSUMED = paper_assumptions(PAPER)  # the paper's evaluation assumptions
POS, KV = 511, 1024


@pytest.mark.parametrize("model", ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_row_hit_rate_at_least_97_percent(model: str) -> None:
    r = step(PAPER, model, POS, KV, timeline=False)
    assert r["row_hit_rate"] >= 0.97, r["row_hit_rate"]


def test_vmm_share_of_gpt3_xl_at_least_98_percent() -> None:
    r = step(ASSUMED, "gpt3-xl", POS, KV)
    sh = r["shares"]
    assert sh["vmm"] >= 0.98, sh
    # the shares partition the step: busy (PIM or ASIC) plus idle is everything
    assert sh["pim_any"] + sh["asic_only"] + sh["idle"] == pytest.approx(1.0)


@pytest.mark.slow
def test_sixteen_channels_speed_gpt2_xl_by_at_least_1_8x() -> None:
    wide = ASSUMED.replace(name="paper-16ch",
                           geometry=dataclasses.replace(ASSUMED.geometry, channels=16))
    base = step(ASSUMED, "gpt2-xl", POS, KV, timeline=False)["cycles"]
    fast = step(wide, "gpt2-xl", POS, KV, timeline=False)["cycles"]
    assert base / fast >= 1.8, base / fast


def test_overlap_schedule_is_faster_than_the_plain_order() -> None:
    """The overlap schedule (default) beats the plain layer-by-layer order on the same
    machine; both are the same computation (the bit-exact tests run both)."""
    plain = step(PAPER, "gpt2-small", POS, KV, timeline=False,
                 options=CompileOptions(overlap=False))["cycles"]
    overlap = step(PAPER, "gpt2-small", POS, KV, timeline=False)["cycles"]
    assert overlap < 0.97 * plain, (overlap, plain)


@pytest.mark.parametrize("switch", ["row_fill", "head_concat"])
def test_each_mapping_technique_pays(switch: str) -> None:
    """Switching one of the paper's mapping techniques off costs time and row hits."""
    base = step(PAPER, "gpt2-small", POS, KV, timeline=False)
    off = step(PAPER, "gpt2-small", POS, KV, timeline=False,
               options=CompileOptions(**{switch: False}))
    assert off["cycles"] > 1.03 * base["cycles"], (off["cycles"], base["cycles"])
    assert off["row_hit_rate"] < base["row_hit_rate"]
