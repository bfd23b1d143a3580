"""Cycle-accurate timing: hand-computed cycles, fast path == event engine, legal traces."""

from __future__ import annotations

import dataclasses
import random

import pytest
from helpers.randprog import random_config, random_program

from pimgpt.hdl import isa
from pimgpt.hdl.controller import asic_edge
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import GDDR6, PAPER, TINY, ns_to_cycles
from pimgpt.hdl.timing import DramCmd
from pimgpt.mapping.builtin import builtin_model
from pimgpt.mapping.compiler import compile_model
from pimgpt.sim.cycle import CycleSimulator
from pimgpt.sim.trace import check_trace

PRESETS = {"paper": PAPER, "tiny": TINY, "gddr6": GDDR6}


def cyc(config, name):
    return ns_to_cycles(getattr(config.timing, name), config.clocks.dram_mhz)


def run(config, code, fast=True, regs=None):
    sim = CycleSimulator(config, fast=fast, trace=True)
    sim.load_code(code)
    step = sim.run(regs)
    return sim, step


def commands(sim):
    return [(e.cycle, e.cmd.name) for e in sim.trace]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_single_row_pass_hand_computed(name):
    """ACT16 at 0, first MAC16 tRCD_MAC later, the rest tCCD_L apart, RDMAC tCCD_L after the
    last MAC, its data tCL_REG + tBL later; the channel's mover writes the 16 words (one vector
    memory row) at the first ASIC edge two cycles after the data and is idle one cycle later:
    that is when END completes."""
    c = PRESETS[name]
    n = 4
    sim, step = run(c, [isa.make(Op.MAC_ABK, ch_mask=1, addr=0, n=n, gb=0),
                        isa.make(Op.RD_MAC, ch_mask=1, vaddr=0), isa.make(Op.END)])
    first = cyc(c, "tRCD_MAC")
    ccd = max(cyc(c, "tCCD_L"), 1)
    expect = [(0, "ACT16")] + [(first + i * ccd, "MAC16") for i in range(n)]
    rdmac = first + (n - 1) * ccd + ccd
    expect.append((rdmac, "RDMAC"))
    assert commands(sim) == expect
    data = rdmac + cyc(c, "tCL_REG") + cyc(c, "tBL")
    assert step.cycles == asic_edge(c, data + 2) + 1
    if name == "paper":  # 2 GHz: tRCD_MAC 28 ns = 56, tCCD_L 1 ns = 2, tCL_REG + tBL = 4;
        # ASIC edges every 2 cycles
        assert step.cycles == 56 + 3 * 2 + 2 + 4 + 2 + 1 == 71


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_row_change_inside_a_mac_run(name):
    """A MAC run from a row's last column into the next row: PREA after tRTP (and tRAS), ACT16
    after tRP (and tRC), then the MAC after tRCD_MAC."""
    c = PRESETS[name]
    cpr = c.geometry.cols_per_row
    sim, step = run(c, [isa.make(Op.MAC_ABK, ch_mask=1, addr=(cpr - 1) * 16, n=2, gb=0),
                        isa.make(Op.END)])
    mac0 = cyc(c, "tRCD_MAC")
    prea = max(mac0 + cyc(c, "tRTP"), cyc(c, "tRAS"), mac0 + 1)
    act = max(prea + cyc(c, "tRP"), cyc(c, "tRC"))
    mac = act + cyc(c, "tRCD_MAC")
    assert commands(sim) == [(0, "ACT16"), (mac0, "MAC16"), (prea, "PREA"), (act, "ACT16"),
                             (mac, "MAC16")]
    assert [e.row for e in sim.trace] == [0, 0, None, 1, 1]
    assert step.cycles == mac + 1
    if name == "paper":
        assert (prea, act, mac) == (68, 100, 156)


def test_write_global_buffer_then_mac_waits_for_the_data():
    c = PAPER
    sim, _ = run(c, [isa.make(Op.WR_GB, ch_mask=1, gb=0, n=2, vaddr=0),
                     isa.make(Op.MAC_ABK, ch_mask=1, addr=0, n=1, gb=0), isa.make(Op.END)])
    got = commands(sim)
    # the mover stages the 32 words (one vector-memory row): the row is read at the first ASIC
    # edge after it starts and captured at the second; the channel sends from the cycle after
    go = asic_edge(c, 1, 2) + 1
    assert got[:2] == [(go, "WRGB"), (go + 2, "WRGB")]  # tBL apart on the data bus
    act = got[2][0]
    assert got[3] == (max(act + cyc(c, "tRCD_MAC"),
                          go + 2 + cyc(c, "tCWL_GB") + cyc(c, "tBL")), "MAC16")


def test_single_bank_write_needs_its_row_then_the_all_bank_mac_reopens():
    c = PAPER
    sim, _ = run(c, [isa.make(Op.MAC_ABK, ch_mask=1, addr=0, n=1, gb=0),
                     isa.make(Op.WR_BANK, bank=3, addr=5 * c.geometry.row_elems, n=1, vaddr=0),
                     isa.make(Op.MAC_ABK, ch_mask=1, addr=0, n=1, gb=0), isa.make(Op.END)])
    names = [n for _, n in commands(sim)]
    assert names == ["ACT16", "MAC16", "PRE", "ACT", "WR", "PREA", "ACT16", "MAC16"]
    assert check_trace(sim.trace, c) == []


def test_vector_work_waits_for_mac_results():
    c = PAPER
    sim, step = run(c, [isa.make(Op.MAC_ABK, ch_mask=1, addr=0, n=1, gb=0),
                        isa.make(Op.RD_MAC, ch_mask=1, vaddr=0),
                        isa.make(Op.VEXP, dst=100, a=0, n=16), isa.make(Op.END)])
    rdmac = [t for t, n in commands(sim) if n == "RDMAC"][0]
    ready = asic_edge(c, rdmac + cyc(c, "tCL_REG") + cyc(c, "tBL") + 2)  # drained
    one_beat = 1 + c.asic.vec_latency + c.asic.exp_cycles  # 16 lanes: one beat, then latency
    assert step.cycles == ready + sim.asic_cycles(one_beat)


def test_refresh_is_issued_every_trefi_and_the_trace_is_legal():
    c = TINY
    cpr = c.geometry.cols_per_row
    code = [isa.make(Op.MAC_ABK, ch_mask=3, addr=(i % 50) * cpr * 16, n=cpr, gb=0)
            for i in range(200)] + [isa.make(Op.END)]
    sim, step = run(c, code)
    sim.finish()
    refi = ns_to_cycles(c.timing.tREFI, c.clocks.dram_mhz)
    refs = [e for e in sim.trace if e.cmd is DramCmd.REF and e.channel == 0]
    assert len(refs) == step.end // refi
    for k, e in enumerate(refs, start=1):
        assert k * refi <= e.cycle < k * refi + 400  # at the first row change after it is due
    assert check_trace(sim.trace, c) == []


@pytest.mark.parametrize("seed", range(50))
@pytest.mark.parametrize("double_buffer", [False, True])
def test_fast_path_equals_event_engine_on_random_programs(seed, double_buffer):
    rng = random.Random(seed)
    config = random_config(rng)
    if double_buffer:  # two command streams per channel: data-in (WRGB) and compute
        config = config.replace(geometry=dataclasses.replace(config.geometry,
                                                             gb_double_buffer=True))
    code = random_program(rng, config, length=rng.randint(20, 80))
    fast, fstep = run(config, code, fast=True)
    slow, sstep = run(config, code, fast=False)
    assert fstep.cycles == sstep.cycles
    assert fast.trace == slow.trace
    assert fstep.counters == sstep.counters
    assert check_trace(slow.trace, config) == []


def test_compiled_model_fast_equals_event_and_trace_is_legal():
    """The default model on the tiny machine, 24 decode steps: identical cycles per step."""
    binary, _ = compile_model(TINY, builtin_model("tiny"), 24)
    runs = {}
    for fast in (True, False):
        sim = CycleSimulator(TINY, fast=fast, trace=True)
        sim.load(binary)
        runs[fast] = [sim.run({isa.REG_POS: p, isa.REG_TOKEN_IN: 100}).cycles
                      for p in range(24)]
        sim.finish()
        assert check_trace(sim.trace, TINY) == []
        hits = sim.counters["row_hits"] / (sim.counters["row_hits"] + sim.counters["row_misses"])
        assert 0.5 < hits < 1.0
    assert runs[True] == runs[False]
    assert runs[True][-1] > runs[True][0]  # attention grows with the position


def test_slower_asic_clock_slows_vector_work_only():
    code = [isa.make(Op.VEXP, dst=0, a=100, n=1024), isa.make(Op.END)]
    fast_asic = run(PAPER, code)[1].cycles
    slow_cfg = PAPER.replace(clocks=dataclasses.replace(PAPER.clocks, asic_mhz=100.0))
    assert run(slow_cfg, code)[1].cycles == pytest.approx(10 * fast_asic, rel=0.01)


@pytest.mark.slow
def test_gpt2_small_32_tokens_fast_path_equals_event_engine():
    """Acceptance: GPT2-small decoding 32 tokens on the paper machine, cycle for cycle."""
    binary, _ = compile_model(PAPER, builtin_model("gpt2-small"), 64, with_image=False)
    per_step = {}
    for fast in (True, False):
        sim = CycleSimulator(PAPER, fast=fast)
        sim.load(binary)
        per_step[fast] = [sim.run({isa.REG_POS: p, isa.REG_TOKEN_IN: 464 + p}).cycles
                          for p in range(32)]
        per_step[(fast, "counters")] = dict(sim.counters)
    assert per_step[True] == per_step[False]
    assert per_step[(True, "counters")] == per_step[(False, "counters")]
