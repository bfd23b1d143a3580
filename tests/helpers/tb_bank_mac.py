"""cocotb bench of the generated ``bank_mac`` block against the golden MAC numerics.

Driver: every cycle a random mix of a column beat (``i_beat``), a clear, both, or neither
(idle), operands drawn to hit every BF16 class. Model: :func:`pimgpt.sim.numerics.mac_accumulate`
on the transferred beats. Monitor: ``acc`` and ``readout`` after every rising edge. Scoreboard:
bit-exact comparison, cycle by cycle, shifted by the unit's documented latency.

Environment: ``PIMGPT_CONFIG`` (the machine), ``PIMGPT_SEED``, ``PIMGPT_BEATS`` (cycles to drive).
"""

from __future__ import annotations

import os
import random

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from helpers.cocotb_bench import CycleCounter, Scoreboard, start
from helpers.cocotb_runner import load_tb_config

from pimgpt.hdl.mac import BankMac
from pimgpt.sim import numerics as nm

F32 = np.float32


def bf16_operand(rng: random.Random) -> int:
    """A BF16 bit pattern: mostly ordinary numbers near 1 (so sums stay meaningful), some zeros,
    subnormals, extremes, Inf and NaN."""
    r = rng.random()
    sign = rng.getrandbits(1) << 15
    if r < 0.80:
        return sign | (rng.randint(117, 137) << 7) | rng.getrandbits(7)
    if r < 0.85:
        return sign  # signed zero
    if r < 0.90:
        return sign | rng.randint(1, 127)  # subnormal
    if r < 0.95:
        return sign | (rng.choice((1, 2, 253, 254)) << 7) | rng.getrandbits(7)  # extremes
    return rng.getrandbits(16)  # anything, Inf and NaN included


def pack(words: list[int], width: int) -> int:
    out = 0
    for i, w in enumerate(words):
        out |= w << (i * width)
    return out


@cocotb.test()
async def random_beats_bit_exact(dut) -> None:
    config = load_tb_config()
    lanes = config.geometry.mac_lanes
    latency = BankMac(config).latency  # the generated block has the default pipeline
    rng = random.Random(int(os.environ["PIMGPT_SEED"]))
    cycles = int(os.environ.get("PIMGPT_BEATS", "400"))

    await start(dut)
    counter = CycleCounter(dut)
    board = Scoreboard("bank_mac acc/readout", lambda v: f"acc=0x{v[0]:08x} readout=0x{v[1]:04x}")
    acc = np.zeros(1, F32)
    history: list[int] = []  # acc bits after each cycle's transfer, by cycle

    async def driver() -> None:
        nonlocal acc
        for _ in range(cycles):
            await FallingEdge(dut.clk)
            beat = rng.random() < 0.7
            clear = rng.random() < 0.05
            w = [bf16_operand(rng) for _ in range(lanes)]
            x = [bf16_operand(rng) for _ in range(lanes)]
            dut.i_beat__valid.value = int(beat)
            dut.i_beat__payload.value = pack(w + x, 16)
            dut.clear.value = int(clear)
            # model: a clear takes effect before a beat in the same cycle
            if clear:
                acc = np.zeros(1, F32)
            if beat:
                rows = nm.bf16_bits_to_f32(np.array(w, np.uint16)).reshape(1, 1, lanes)
                gb = nm.bf16_bits_to_f32(np.array(x, np.uint16)).reshape(1, lanes)
                acc = nm.mac_accumulate(acc, rows, gb)
            history.append(int(acc.view(np.uint32)[0]))
        await FallingEdge(dut.clk)
        dut.i_beat__valid.value = 0
        dut.clear.value = 0

    seen: list[tuple[int, tuple[int, int]]] = []

    async def monitor() -> None:
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            seen.append((counter.now, (int(dut.acc.value), int(dut.readout.value))))

    cocotb.start_soon(monitor())
    await driver()
    for _ in range(latency + 1):
        await RisingEdge(dut.clk)
    # transfer n is sampled at rising edge n + 1 (driven on the falling edge before it) and
    # shows in acc from edge n + latency on
    for n, bits in enumerate(history):
        a = np.array([bits], np.uint32).view(F32)
        board.expect(n + latency, (bits, int(nm.f32_to_bf16_bits(a)[0])))
    for cycle, value in seen:
        if latency <= cycle < len(history) + latency:
            board.observe(cycle, value)
    board.finish()
    dut._log.info("bank_mac: %d cycles matched bit for bit (latency %d)", board.matched,
                  latency)
