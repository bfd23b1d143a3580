"""cocotb bench of the generated ``channel_sequencer`` block against the cycle simulator.

Model: a seeded random program (:func:`helpers.seqprog.random_program`: every PIM instruction
kind, random banks, rows, counts, idle gaps, one tREFI-long gap in some) run on
``CycleSimulator(fast=False, trace=True)``. Driver: each of channel 0's ops on ``i_op`` from its
dispatch cycle (or the cycle after the previous op was taken, whichever is later), held until
``i_op__ready``. Monitor: every ``o_cmd`` strobe as a trace line. Scoreboard: the RTL's command
trace equals the simulator's channel-0 trace, command for command and cycle for cycle; a
mismatch names the seed and the first differing command.

Environment: ``PIMGPT_CONFIG``, ``PIMGPT_SEED`` (first seed), ``PIMGPT_PROGRAMS`` (how many
programs, one reset each), ``PIMGPT_OPS`` (instructions per program).
"""

from __future__ import annotations

import os
import random

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from helpers.cocotb_bench import Scoreboard, start
from helpers.cocotb_runner import load_tb_config
from helpers.seqprog import entry, random_program, simulator_expectation

from pimgpt.hdl.sequencer import cmd_layout, op_layout
from pimgpt.hdl.timing import DramCmd


def pack(layout, fields: dict[str, int]) -> int:
    """An op's fields as the payload integer (offsets from the Amaranth layout)."""
    out = 0
    for name, f in layout:
        out |= (int(fields.get(name, 0)) & ((1 << f.width) - 1)) << f.offset
    return out


def unpack(layout, value: int) -> dict[str, int]:
    return {name: (value >> f.offset) & ((1 << f.width) - 1) for name, f in layout}


@cocotb.test()
async def random_programs_match_the_simulator(dut) -> None:
    config = load_tb_config()
    seed0 = int(os.environ["PIMGPT_SEED"])
    programs = int(os.environ.get("PIMGPT_PROGRAMS", "4"))
    n_ops = int(os.environ.get("PIMGPT_OPS", "16"))
    in_layout, out_layout = op_layout(config), cmd_layout(config)
    cycles_run = commands = 0
    for seed in range(seed0, seed0 + programs):
        code = random_program(config, random.Random(seed), n_ops, 0.04, seed % 4 == 0)
        ops, want, end = simulator_expectation(config, code)
        board = Scoreboard(f"seed {seed}", repr)
        for e in want:
            board.expect(e[0], e)
        dut.i_op__valid.value = 0
        # A fresh sequencer per program. start() returns at the falling edge in the middle of
        # cycle 0 (the registers hold their reset values until the next rising edge).
        await start(dut)
        i, cur = 0, None
        for cyc in range(end):
            if cyc:
                await FallingEdge(dut.clk)  # the rising edge before it ended cycle cyc - 1
            # driver: the op of this cycle, held until it is taken
            if cur is None and i < len(ops) and ops[i][0] <= cyc:
                cur = ops[i][1]
                i += 1
                dut.i_op__payload.value = pack(in_layout, cur)
                dut.i_op__valid.value = 1
            await ReadOnly()  # every combinational output of cycle cyc has settled
            assert int(dut.cycle.value) == cyc, (int(dut.cycle.value), cyc)
            # monitor: the command the sequencer issues in this cycle
            if int(dut.o_cmd__valid.value):
                f = unpack(out_layout, int(dut.o_cmd__payload.value))
                e = entry(cyc, DramCmd(f["cmd"]), f["bank"], f["row"], f["col"])
                board.observe(cyc, e)
            taken = cur is not None and int(dut.i_op__ready.value)
            await RisingEdge(dut.clk)  # ends cycle cyc: a taken op is gone
            if taken:
                cur = None
                dut.i_op__valid.value = 0
        assert i == len(ops) and cur is None, f"seed {seed}: not every op was taken"
        board.finish()
        cycles_run += end
        commands += board.matched
        dut._log.info("seed %d: %d commands in %d cycles equal the simulator's", seed,
                      board.matched, end)
    dut._log.info("%d programs: %d commands in %d cycles, all equal", programs, commands,
                  cycles_run)
