"""Random PIM programs for the channel sequencer and what the cycle simulator makes of them.

Shared by the Amaranth-simulator test (tests/test_rtl_sequencer.py) and the cocotb bench
(tests/helpers/tb_channel_sequencer.py), so both check the same programs.
"""

from __future__ import annotations

import random

from pimgpt.hdl import isa
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import MachineConfig
from pimgpt.hdl.sequencer import channel_op
from pimgpt.hdl.timing import (COLUMN_OPERAND_CMDS, REFRESH, ROW_OPERAND_CMDS,
                               SINGLE_BANK_CMDS, DramCmd)
from pimgpt.sim.cycle import CycleSimulator

Entry = tuple[int, DramCmd, "int | None", "int | None", "int | None"]


def entry(cycle: int, cmd: DramCmd, bank: int | None = None, row: int | None = None,
          col: int | None = None) -> Entry:
    """One trace line with the fields ``cmd`` does not carry set to None (as the simulator's)."""
    return (cycle, cmd, bank if cmd in SINGLE_BANK_CMDS else None,
            row if cmd in ROW_OPERAND_CMDS else None, col if cmd in COLUMN_OPERAND_CMDS else None)


def random_program(config: MachineConfig, rng: random.Random, n_ops: int, big_gap: float,
                   idle_refi: bool) -> list[isa.Instruction]:
    """PIM instructions touching channel 0 (some also others), NOP gaps, END; with
    ``idle_refi`` one gap somewhere lasts a whole tREFI. Every instruction reads or writes
    vector-memory words no other touches, so none waits on the scoreboard (when each op reaches
    the channel is the simulator's to say: :func:`simulator_expectation`)."""
    g = config.geometry
    nb, cpr, lanes, nc = g.banks_per_channel, g.cols_per_row, g.mac_lanes, g.channels
    rows = rng.sample(range(g.rows - 1), 3) + [g.rows - 1]  # few rows: hits and misses
    vptr = 0

    def vspan(words: int) -> int:
        nonlocal vptr
        vptr += words
        assert vptr <= config.asic.vmem_words
        return vptr - words

    code: list[isa.Instruction] = []
    kinds = [Op.MAC_ABK, Op.MAC_ABK, Op.MAC_SBK, Op.MAC_SBK, Op.WR_GB, Op.RD_MAC, Op.RD_BANK,
             Op.WR_BANK, Op.WR_ABK]
    step = CycleSimulator(config).dispatch_step
    long_at = rng.randrange(n_ops) if idle_refi else -1
    for k in range(n_ops):
        gap = rng.choice([0, 0, 0, 1, 2, 5, 20, 60])
        if rng.random() < big_gap:
            gap = rng.randint(200, 1500)
        if k == long_at:
            gap = -(-REFRESH.interval(config) // step)
        code += [isa.make(Op.NOP)] * gap
        kind = rng.choice(kinds)
        bank = rng.randrange(nb)  # a bank of channel 0
        row = rng.choice(rows)
        c0 = rng.randrange(cpr) if rng.random() < 0.5 else rng.choice([0, cpr - 1, cpr - 2])
        c0 = max(c0, 0)
        mask = rng.choice([1, 1, min(3, (1 << nc) - 1), (1 << nc) - 1])
        chans = bin(mask).count("1")
        if kind in (Op.MAC_ABK, Op.MAC_SBK):
            col = row * cpr + c0
            n = min(rng.choice([0, 1, 2, 3, rng.randint(1, 2 * cpr)]), g.rows * cpr - col,
                    g.gb_cols)
            gb = rng.randrange(g.gb_cols - n + 1)
            where = {"ch_mask": mask} if kind is Op.MAC_ABK else {"bank": bank}
            code.append(isa.make(kind, addr=col * lanes, gb=gb, n=n, **where))
        elif kind is Op.WR_GB:
            n = rng.randint(0, min(g.gb_cols, 6))
            code.append(isa.make(kind, ch_mask=mask, gb=rng.randrange(g.gb_cols - n + 1), n=n,
                                 vaddr=vspan(n * lanes * chans)))
        elif kind is Op.RD_MAC:
            code.append(isa.make(kind, ch_mask=mask, vaddr=vspan(chans * nb)))
        elif kind is Op.WR_ABK:
            addr = (row * cpr + c0) * lanes + rng.randrange(lanes)
            code.append(isa.make(kind, ch_mask=mask, addr=addr, vaddr=vspan(chans * nb)))
        else:  # RD_BANK / WR_BANK: element counts, unaligned starts
            addr = (row * cpr + c0) * lanes + rng.randrange(lanes)
            n = min(rng.choice([0, 1, 5, lanes, rng.randint(1, 6 * lanes)]), g.bank_elems - addr)
            code.append(isa.make(kind, bank=bank, addr=addr, n=n, vaddr=vspan(n)))
    code.append(isa.make(Op.END))
    return code


def simulator_expectation(config: MachineConfig, code: list[isa.Instruction], channel: int = 0
                          ) -> tuple[list[tuple[int, dict[str, int]]], list[Entry], int]:
    """Run ``code`` on ``CycleSimulator(fast=False, trace=True)``: the channel's ops with the
    cycles the simulator presents them to the channel (dispatch, or later for a data op whose
    mover must stage first or a queue that was full), its command trace, and the cycle the run
    ends (the idle channel's refreshes up to then included, as the sequencer issues them by
    itself)."""
    sim = CycleSimulator(config, fast=False, trace=True)
    sim.load_code(code)
    sim.run()
    end = sim.now + 1
    sim.channels[channel].refresh_if_due(end)
    want = sorted(entry(e.cycle, e.cmd, e.bank, e.row, e.column)
                  for e in sim.trace if e.channel == channel and e.cycle < end)
    ops = [op for ins in code if (op := channel_op(ins, config, channel)) is not None]
    times = [t for c, t in sim.presented if c == channel]
    assert len(times) == len(ops), (len(times), len(ops))
    ops = list(zip(times, ops))
    return ops, want, end
