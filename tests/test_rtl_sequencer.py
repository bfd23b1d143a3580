# amaranth: UnusedElaboratable=no
"""The channel sequencer RTL (hdl/sequencer.py) against written waveforms and the cycle simulator.

Written waveforms: every expected command cycle is worked out in the test from the ``tiny``
preset's rule distances, each looked up in ``RULES`` by its commands, scope and name (a changed
table changes the arithmetic, not a typed number): ACT16 -> MAC16 x n -> PREA when the next op
needs another row; column runs over back-to-back rows (all-bank and single-bank, with write
recovery); four ACTs and a fifth held by tFAW; refreshes falling due mid-stream, inside a column
run and on an idle channel.

Differential: seeded random programs of PIM instructions (every kind, random banks, rows, counts,
columns near row ends, random idle gaps of NOPs) run on ``CycleSimulator(fast=False,
trace=True)``; the sequencer gets each instruction's channel-0 share (``channel_op``) at its
dispatch cycle, and its full command trace (cycle, command, bank, row, column) must equal the
simulator's channel-0 trace. Presets ``tiny``, ``paper`` and ``gddr6``, plus a ``tiny`` variant
whose short tREFI and long tFAW make refreshes and the four-activate window bind often.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Sequence

import pytest
from amaranth.sim import Simulator
from helpers.seqprog import Entry, entry, random_program, simulator_expectation

from pimgpt.errors import PimgptError
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import MachineConfig, preset
from pimgpt.hdl.sequencer import ChannelSequencer, op_layout
from pimgpt.hdl.timing import FAW, REFRESH, RULES, DramCmd, Scope

C = DramCmd
TINY = preset("tiny")
#: tiny with a tFAW that binds: in-order issue puts at least tRCD_MAC + 1 between the ACTs of
#: single-bank MACs, so on the stock presets (4 x tRRD >= tFAW) the window never delays an ACT.
FAW_TINY = TINY.replace(name="tiny-faw", timing=dataclasses.replace(TINY.timing, tFAW=150.0))
#: tiny refreshing every 200 ns (400 cycles), with a tFAW of 250 ns (500 cycles): refreshes
#: inside column runs and after idle gaps, and ACTs held by the window, in short programs.
STRESS = TINY.replace(name="tiny-stress",
                      timing=dataclasses.replace(TINY.timing, tFAW=250.0, tREFI=200.0))


def rule(first: str, second: str, scope: str, name: str, config: MachineConfig = TINY) -> int:
    """The distance in cycles of the rule ``first -> second`` in ``scope`` named ``name``."""
    (r,) = [r for r in RULES if r.first is C[first] and r.second is C[second]
            and r.scope is Scope[scope] and r.name == name]
    return r.cycles(config)


# --- harness -------------------------------------------------------------------------------------

def run_rtl(config: MachineConfig, ops: Sequence[tuple[int, dict[str, int]]], cycles: int,
            ready_log: list[int] | None = None) -> list[Entry]:
    """Run the sequencer for ``cycles`` cycles and return its command trace.

    ``ops`` are ``(dispatch cycle, op fields)`` in program order. Each op is presented from
    ``max(its dispatch cycle, the previous op's transfer cycle + 1)`` until it transfers: the
    sequencer's cycle correspondence (hdl/sequencer.py). ``ready_log`` collects transfer cycles.
    """
    dut = ChannelSequencer(config)
    out: list[Entry] = []

    async def bench(ctx):
        i, cur = 0, None
        for cyc in range(cycles):
            if cur is None and i < len(ops) and ops[i][0] <= cyc:
                cur = ops[i][1]
                i += 1
                ctx.set(dut.i_op.payload, cur)
                ctx.set(dut.i_op.valid, 1)
            if ctx.get(dut.o_cmd.valid):
                p = ctx.get(dut.o_cmd.payload)
                cmd = C(p.cmd)
                assert p.all_banks == (cmd in {C.ACT16, C.PREA, C.MAC16, C.WR16, C.REF})
                out.append(entry(cyc, cmd, int(p.bank), int(p.row), int(p.col)))
            took = cur is not None and ctx.get(dut.i_op.ready)
            if cyc % 997 == 0:
                assert ctx.get(dut.cycle) == cyc
            await ctx.tick()
            if took:
                if ready_log is not None:
                    ready_log.append(cyc)
                cur = None
                ctx.set(dut.i_op.valid, 0)
        assert i == len(ops) and cur is None, "not every op was taken"

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    return out


def mac_abk(row: int, col: int, n: int, config: MachineConfig = TINY) -> dict[str, int]:
    return {"op": Op.MAC_ABK.value, "bank": 0, "col": row * config.geometry.cols_per_row + col,
            "n": n}


def single(op: Op, bank: int, row: int, col: int, n: int,
           config: MachineConfig = TINY) -> dict[str, int]:
    return {"op": op.value, "bank": bank, "col": row * config.geometry.cols_per_row + col, "n": n}


def check(got: list[Entry], want: list[Entry]) -> None:
    assert got == want, "\n".join(
        [f"{'':>3} {'rtl':<40} expected"]
        + [f"{k:>3} {str(a):<40} {b}" for k, (a, b) in
           enumerate(zip(got + [None] * len(want), want + [None] * len(got)))
           if a is not None or b is not None])


# --- written waveforms (tiny) --------------------------------------------------------------------

tRCD_MAC = rule("ACT", "MAC", "BANK", "tRCD_MAC")
tRCD_RD = rule("ACT", "RD", "BANK", "tRCD_RD")
tRCD_WR = rule("ACT", "WR", "BANK", "tRCD_WR")
tRAS = rule("ACT", "PRE", "BANK", "tRAS")
tRC = rule("ACT", "ACT", "BANK", "tRC")
tRP = rule("PRE", "ACT", "BANK", "tRP")
tRP_REF = rule("PRE", "REF", "BANK", "tRP")
tRRD_L = rule("ACT", "ACT", "GROUP", "tRRD_L")
tRRD_S = rule("ACT", "ACT", "OTHER_GROUP", "tRRD_S")
tRTP_MAC = rule("MAC", "PRE", "BANK", "tRTP")
tRTP_RD = rule("RD", "PRE", "BANK", "tRTP")
tWRREC = rule("WR", "PRE", "BANK", "tCWL+tBL+tWR")
# an all-bank command meets every scope of a rule: MAC16 to MAC16 is the larger tCCD
tCCD = max(rule("MAC", "MAC", "GROUP", "tCCD_L"), rule("MAC", "MAC", "OTHER_GROUP", "tCCD_S"))
tCCD_L_RD = rule("RD", "RD", "GROUP", "tCCD_L")
tRFC_ACT = rule("REF", "ACT", "CHANNEL", "tRFC")
RD_TO_WR = rule("RD", "WR", "CHANNEL", "tCL+tBL-tCWL")  # data-bus order
WR_TO_RD = rule("WR", "RD", "GROUP", "tCWL+tBL+tWTR_L")
CPR = TINY.geometry.cols_per_row


def test_act_mac_pre_waveform() -> None:
    """ACT16 -> MAC16 x 3, and PREA + ACT16 when the next op needs another row."""
    ready: list[int] = []
    got = run_rtl(TINY, [(0, mac_abk(0, 0, 3)), (2, mac_abk(1, 0, 2))], 400, ready)
    act0 = 0  # the op is presented in cycle 0 and every gate is open
    macs0 = [act0 + tRCD_MAC + i * tCCD for i in range(3)]
    # op 2 (dispatched in cycle 2) is taken in the cycle after op 1's last MAC16
    prea = max(macs0[-1] + 1, act0 + tRAS, macs0[-1] + tRTP_MAC)
    act1 = max(prea + tRP, act0 + tRC)
    macs1 = [act1 + tRCD_MAC + i * tCCD for i in range(2)]
    check(got, [entry(act0, C.ACT16, row=0)]
          + [entry(t, C.MAC16, row=0, col=i) for i, t in enumerate(macs0)]
          + [entry(prea, C.PREA), entry(act1, C.ACT16, row=1)]
          + [entry(t, C.MAC16, row=1, col=i) for i, t in enumerate(macs1)])
    assert ready == [0, macs0[-1] + 1]
    # written out for the tiny preset: 0, 56 58 60, 72, 104, 160 162
    assert [e[0] for e in got] == [0, 56, 58, 60, 72, 104, 160, 162]


def test_back_to_back_rows_all_bank() -> None:
    """A MAC_ABK run over the end of row 5 into row 6: PREA and ACT16 inside the op."""
    got = run_rtl(TINY, [(0, mac_abk(5, CPR - 2, 4))], 300)
    act5 = 0
    macs5 = [act5 + tRCD_MAC + i * tCCD for i in range(2)]
    prea = max(macs5[-1] + 1, act5 + tRAS, macs5[-1] + tRTP_MAC)
    act6 = max(prea + tRP, act5 + tRC)
    macs6 = [act6 + tRCD_MAC + i * tCCD for i in range(2)]
    check(got, [entry(act5, C.ACT16, row=5)]
          + [entry(t, C.MAC16, row=5, col=CPR - 2 + i) for i, t in enumerate(macs5)]
          + [entry(prea, C.PREA), entry(act6, C.ACT16, row=6)]
          + [entry(t, C.MAC16, row=6, col=i) for i, t in enumerate(macs6)])


def test_back_to_back_rows_single_bank() -> None:
    """RD over a row end on bank 1, then a write to another row and a read after it: tRTP, tRAS,
    tRC, tRCD_RD/WR, the data-bus turnaround and write recovery before the PRE."""
    ops = [(0, single(Op.RD_BANK, 1, 2, CPR - 1, 2)),
           (2, single(Op.WR_BANK, 1, 7, 0, 1)),
           (4, single(Op.RD_BANK, 1, 0, 3, 1))]
    got = run_rtl(TINY, ops, 500)
    a2 = 0
    rd2 = a2 + tRCD_RD
    p2 = max(rd2 + 1, a2 + tRAS, rd2 + tRTP_RD)
    a3 = max(p2 + tRP, a2 + tRC)
    rd3 = a3 + tRCD_RD
    p3 = max(rd3 + 1, a3 + tRAS, rd3 + tRTP_RD)
    a7 = max(p3 + tRP, a3 + tRC)
    wr7 = max(a7 + tRCD_WR, rd3 + RD_TO_WR)
    p7 = max(wr7 + 1, a7 + tRAS, wr7 + tWRREC)
    a0 = max(p7 + tRP, a7 + tRC)
    rd0 = max(a0 + tRCD_RD, wr7 + WR_TO_RD)
    check(got, [entry(a2, C.ACT, 1, 2), entry(rd2, C.RD, 1, 2, CPR - 1), entry(p2, C.PRE, 1),
                entry(a3, C.ACT, 1, 3), entry(rd3, C.RD, 1, 3, 0), entry(p3, C.PRE, 1),
                entry(a7, C.ACT, 1, 7), entry(wr7, C.WR, 1, 7, 0), entry(p7, C.PRE, 1),
                entry(a0, C.ACT, 1, 0), entry(rd0, C.RD, 1, 0, 3)])
    assert p7 == wr7 + tWRREC  # the write recovery is what holds that PRE


def _faw_ops(config: MachineConfig) -> list[tuple[int, dict[str, int]]]:
    # one-column MACs on banks 0..3 (row 0), then bank 0 again on row 1: a fifth ACT
    return [(2 * b, single(Op.MAC_SBK, b, 0, 0, 1, config)) for b in range(4)] + \
        [(8, single(Op.MAC_SBK, 0, 1, 0, 1, config))]


def test_faw_holds_the_fifth_act() -> None:
    """Four ACTs to different banks, then a fifth that waits for the tFAW window."""
    cfg = FAW_TINY
    t_faw = FAW.cycles(cfg)
    rrd_l, rrd_s = rule("ACT", "ACT", "GROUP", "tRRD_L", cfg), \
        rule("ACT", "ACT", "OTHER_GROUP", "tRRD_S", cfg)
    groups = [b // (cfg.geometry.banks_per_channel // cfg.geometry.bank_groups) for b in range(4)]
    acts, macs = [], []
    for b in range(4):
        t = 0 if b == 0 else macs[-1] + 1  # in order: after the previous op's MAC
        if b:
            t = max(t, acts[-1] + (rrd_l if groups[b] == groups[b - 1] else rrd_s))
        acts.append(t)
        macs.append(t + tRCD_MAC)
    pre = max(macs[-1] + 1, acts[0] + tRAS, macs[0] + tRTP_MAC)
    fifth = max(pre + tRP, acts[0] + tRC, acts[3] + tRRD_S, acts[0] + t_faw)
    assert fifth == acts[0] + t_faw > pre + tRP  # the window is what binds
    want = []
    for b in range(4):
        want += [entry(acts[b], C.ACT, b, 0), entry(macs[b], C.MAC, b, 0, 0)]
    want += [entry(pre, C.PRE, 0), entry(fifth, C.ACT, 0, 1),
             entry(fifth + tRCD_MAC, C.MAC, 0, 1, 0)]
    check(run_rtl(cfg, _faw_ops(cfg), fifth + tRCD_MAC + 10), want)
    # the stock preset: the same ops, the fifth ACT as soon as tRP allows
    stock = run_rtl(TINY, _faw_ops(TINY), fifth + 10)
    assert stock[9] == entry(pre + tRP, C.ACT, 0, 1)


def test_refresh_mid_stream() -> None:
    """A refresh falls due while ops stream: the op that starts after the due time closes the
    rows (PREA), refreshes, and re-opens its row after tRFC."""
    t_refi = REFRESH.interval(TINY)
    ops = [(0, mac_abk(0, 0, 1)),
           (t_refi - 3, mac_abk(0, 1, 3)),  # starts before the due time: no refresh
           (t_refi - 1, mac_abk(0, 4, 1))]  # starts after it: refresh first
    got = run_rtl(TINY, ops, t_refi + 400)
    act0 = 0
    mac0 = act0 + tRCD_MAC
    macs1 = [t_refi - 3 + i * tCCD for i in range(3)]  # row 0 still open: row hits
    assert macs1[-1] + 1 > t_refi
    prea = max(macs1[-1] + 1, macs1[-1] + tRTP_MAC)
    ref = prea + tRP_REF
    act = max(ref + tRFC_ACT, act0 + tRC)
    check(got, [entry(act0, C.ACT16, row=0), entry(mac0, C.MAC16, row=0, col=0)]
          + [entry(t, C.MAC16, row=0, col=1 + i) for i, t in enumerate(macs1)]
          + [entry(prea, C.PREA), entry(ref, C.REF), entry(act, C.ACT16, row=0),
             entry(act + tRCD_MAC, C.MAC16, row=0, col=4)])


def test_refresh_inside_a_column_run() -> None:
    """With tREFI = 400 cycles a long MAC_ABK run reaches a row change after the due time: it
    refreshes there, then opens the next row."""
    cfg = STRESS
    t_refi = REFRESH.interval(cfg)
    rows = 5
    got = run_rtl(cfg, [(0, mac_abk(0, 0, (rows - 1) * CPR + 1, cfg))], 2 * t_refi)
    want, act, refreshed = [], 0, False
    for row in range(rows):
        want.append(entry(act, C.ACT16, row=row))
        macs = [act + tRCD_MAC + i * tCCD for i in range(CPR if row < rows - 1 else 1)]
        want += [entry(t, C.MAC16, row=row, col=i) for i, t in enumerate(macs)]
        if row == rows - 1:
            break
        prea = max(macs[-1] + 1, act + tRAS, macs[-1] + tRTP_MAC)
        want.append(entry(prea, C.PREA))
        if macs[-1] + 1 >= t_refi and not refreshed:  # the row change sees the due refresh
            ref = prea + tRP_REF
            want.append(entry(ref, C.REF))
            act = max(ref + tRFC_ACT, act + tRC)
            refreshed = True
        else:
            act = max(prea + tRP, act + tRC)
    assert refreshed
    check(got, want)


def test_idle_channel_refreshes_on_time() -> None:
    """No ops: REF exactly every tREFI (rows closed); after an op, PREA first."""
    cfg = STRESS
    t_refi = REFRESH.interval(cfg)
    assert run_rtl(cfg, [], 3 * t_refi + 1) == [entry(k * t_refi, C.REF) for k in (1, 2, 3)]
    got = run_rtl(cfg, [(0, mac_abk(3, 0, 1, cfg))], t_refi + 100)
    assert got == [entry(0, C.ACT16, row=3), entry(tRCD_MAC, C.MAC16, row=3, col=0),
                   entry(t_refi, C.PREA), entry(t_refi + tRP_REF, C.REF)]


def test_ops_without_commands_are_taken_at_once() -> None:
    """n = 0 and non-PIM opcodes transfer in the cycle they are presented, even while busy."""
    ready: list[int] = []
    ops = [(0, mac_abk(0, 0, 2)), (1, mac_abk(0, 0, 0)), (2, {"op": Op.VADD.value, "bank": 0,
                                                             "col": 0, "n": 5})]
    got = run_rtl(TINY, ops, 100, ready)
    assert ready == [0, 1, 2]
    assert [e[1] for e in got] == [C.ACT16, C.MAC16, C.MAC16]


def test_interface_and_bad_arguments() -> None:
    dut = ChannelSequencer(preset("paper"))
    g = preset("paper").geometry
    assert len(dut.o_cmd.payload.bank) == 4 and len(dut.o_cmd.payload.row) == 14
    assert len(dut.i_op.payload.n) == 16  # the ISA's count operand
    assert op_layout(preset("paper"))["col"].shape.width == \
        (g.rows * g.cols_per_row).bit_length() - 1
    with pytest.raises(TypeError, match="config must be a MachineConfig"):
        ChannelSequencer("paper")
    with pytest.raises(PimgptError, match="cycle_bits must be a positive integer"):
        ChannelSequencer(TINY, cycle_bits=0)


# --- differential: the simulator's channel 0 -----------------------------------------------------

def compare_with_simulator(config: MachineConfig, seed: int, n_ops: int,
                           big_gap: float) -> Counter:
    code = random_program(config, random.Random(seed), n_ops, big_gap, seed % 4 == 0)
    ops, want, end = simulator_expectation(config, code)
    got = run_rtl(config, ops, end)
    if got != want:
        k = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got),
                                                                                len(want)))
        pytest.fail(f"{config.name} seed {seed}: command {k} differs: RTL "
                    f"{got[k] if k < len(got) else 'nothing'}, simulator "
                    f"{want[k] if k < len(want) else 'nothing'} (RTL {len(got)} commands, "
                    f"simulator {len(want)}; the simulator's preceding: {want[max(k - 3, 0):k]})")
    seen = Counter(e[1] for e in want)
    # activations that the tFAW window held (exactly tFAW after the fourth previous one)
    acts = [e[0] for e in want if e[1] in (C.ACT, C.ACT16)]
    seen["tFAW"] = sum(acts[i] - acts[i - FAW.count] == FAW.cycles(config)
                       for i in range(FAW.count, len(acts)))
    return seen


#: (config, seeds, ops per program, chance of a long idle gap): 62 programs in all
DIFFERENTIAL = [(TINY, 25, 20, 0.06), (preset("paper"), 12, 14, 0.03),
                (preset("gddr6"), 12, 14, 0.03), (STRESS, 13, 16, 0.05)]


@pytest.mark.parametrize("config,seeds,n_ops,big_gap", DIFFERENTIAL,
                         ids=[c.name for c, *_ in DIFFERENTIAL])
def test_matches_the_cycle_simulator(config: MachineConfig, seeds: int, n_ops: int,
                                     big_gap: float) -> None:
    seen: Counter = Counter()
    for seed in range(seeds):
        seen += compare_with_simulator(config, seed, n_ops, big_gap)
    # the programs reach every command the channel has
    assert set(DramCmd) <= set(seen), set(DramCmd) - set(seen)
    if config is STRESS:
        assert seen["tFAW"] > 0 and seen[C.REF] > 20
