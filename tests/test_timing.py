"""The DRAM timing-rule table, the command-trace CSV format and the trace checker.

Good traces below are built with hand-computed cycle counts for the ``paper`` preset (2 GHz
command clock: 1 ns = 2 cycles), not from the rule table, so a wrong rule fails them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from pimgpt.cli import main
from pimgpt.errors import PimgptError
from pimgpt.hdl import timing
from pimgpt.hdl.params import PAPER, TINY
from pimgpt.hdl.timing import FAW, REFRESH, RULES, DramCmd, Scope, rule_cmd, rules_for
from pimgpt.sim.trace import (HEADER, TraceEntry, Violation, check_trace, read_trace_csv,
                              write_trace_csv)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "timing.md"
C = DramCmd

# paper preset, hand values in cycles (ns x 2, rounded up)
T_RCD_MAC = 56
T_RCD_WR = 28
T_RP = 32
T_RAS = 54
T_RTP = 12
T_CCD = 2
T_RFC = 210
T_REFI = 3333
WRGB_TO_MAC = 4  # tCWL_GB + tBL = 2 + 2
WR_RECOVERY = 41  # tCWL + tBL + tWR = 6 + 2 + 33
COLS = PAPER.geometry.cols_per_row  # 64


def E(cycle: int, cmd: DramCmd, bank: int | None = None, row: int | None = None,
      col: int | None = None, ch: int = 0) -> TraceEntry:
    return TraceEntry(cycle, ch, cmd, bank, row, col)


def tile(t: int, row: int, ch: int = 0) -> tuple[list[TraceEntry], int]:
    """One matrix-vector tile: ACT16, 4 WRGB, 64 MAC16 at tCCD, RDMAC, PREA; returns the
    entries and the first cycle the next ACT16 may use."""
    out = [E(t, C.ACT16, row=row, ch=ch)]
    out += [E(t + 1 + 2 * k, C.WRGB, col=k, ch=ch) for k in range(4)]
    first_mac = t + T_RCD_MAC
    assert first_mac >= t + 7 + WRGB_TO_MAC
    out += [E(first_mac + T_CCD * k, C.MAC16, row=row, col=k % COLS, ch=ch) for k in range(64)]
    last_mac = first_mac + T_CCD * 63
    out.append(E(last_mac + T_CCD, C.RDMAC, ch=ch))
    prea = last_mac + T_RTP
    out.append(E(prea, C.PREA, ch=ch))
    return out, prea + T_RP


def single_bank_prologue(ch: int = 0) -> tuple[list[TraceEntry], int]:
    """ACTs to 5 banks (4 groups, tFAW just met), RD/WR/MAC, PREs, then ACT16/WR16/MAC16."""
    out = [E(0, C.ACT, 0, 1), E(11, C.ACT, 4, 2), E(22, C.ACT, 8, 3), E(33, C.ACT, 12, 4),
           E(44, C.ACT, 1, 5),  # tRRD 11 after bank 12, 44 >= tFAW 42 after the first
           E(60, C.RD, 0, 1, 7),  # tRCD_RD 36
           E(106, C.WR, 4, 2, 3),  # RD -> WR on the bus: tCL + tBL - tCWL = 46
           E(125, C.MAC, 4, 2, 3),  # WR -> MAC same bank: tCWL + tBL + tWTR_L = 19
           E(127, C.RD, 8, 3, 0),  # WR -> RD other group: tCWL + tBL + tWTR_S = 17
           E(177, C.RDMAC),  # RD -> RDMAC in bus order: tCL + tBL - tCL_REG = 50
           E(180, C.PRE, 0), E(181, C.PRE, 4), E(182, C.PRE, 8), E(183, C.PRE, 12),
           E(184, C.PRE, 1),
           E(216, C.ACT16, row=9),  # tRP after the last PRE
           E(216 + T_RCD_WR, C.WR16, row=9, col=5),
           E(216 + T_RCD_MAC, C.MAC16, row=9, col=5),  # > WR16 + 19
           E(216 + T_RCD_MAC + T_RTP, C.PREA)]  # WR16 + 41 = 285 is later still
    out[-1] = E(244 + WR_RECOVERY, C.PREA)
    out = [e._replace(channel=ch) for e in out]
    return out, out[-1].cycle + T_RP


def good_trace(tiles: int, channels: tuple[int, ...] = (0,), refresh: bool = True
               ) -> list[TraceEntry]:
    """A legal trace: the prologue then ``tiles`` tiles per channel, REF whenever one is due."""
    merged: list[TraceEntry] = []
    for ch in channels:
        entries, t = single_bank_prologue(ch)
        refs = 0
        for k in range(tiles):
            more, t = tile(t, 100 + k, ch)
            entries += more
            if refresh and t // T_REFI > refs:
                entries.append(E(t, C.REF, ch=ch))
                refs += 1
                t += T_RFC
        merged += entries
    merged.sort(key=lambda e: (e.cycle, e.channel))
    return merged


def rules_of(violations: list[Violation]) -> list[str]:
    return [v.rule for v in violations]


def index_of(entries: list[TraceEntry], pred, nth: int = 0) -> int:
    hits = [i for i, e in enumerate(entries) if pred(e)]
    return hits[nth]


# --- the rule table ------------------------------------------------------------------------------

def _rule(first: DramCmd, second: DramCmd, scope: Scope, name: str) -> timing.Rule:
    found = [r for r in RULES if (r.first, r.second, r.scope, r.name) == (first, second, scope,
                                                                          name)]
    assert len(found) == 1, (first, second, scope, name)
    return found[0]


@pytest.mark.parametrize("first, second, scope, name, cycles", [
    (C.ACT, C.ACT, Scope.BANK, "tRC", 89),
    (C.ACT, C.ACT, Scope.GROUP, "tRRD_L", 11),
    (C.ACT, C.ACT, Scope.OTHER_GROUP, "tRRD_S", 11),
    (C.ACT, C.PRE, Scope.BANK, "tRAS", 54),
    (C.PRE, C.ACT, Scope.BANK, "tRP", 32),
    (C.ACT, C.RD, Scope.BANK, "tRCD_RD", 36),
    (C.ACT, C.WR, Scope.BANK, "tRCD_WR", 28),
    (C.ACT, C.MAC, Scope.BANK, "tRCD_MAC", 56),
    (C.RD, C.PRE, Scope.BANK, "tRTP", 12),
    (C.MAC, C.PRE, Scope.BANK, "tRTP", 12),
    (C.WR, C.PRE, Scope.BANK, "tCWL+tBL+tWR", 41),
    (C.MAC, C.MAC, Scope.GROUP, "tCCD_L", 2),
    (C.RD, C.WR, Scope.OTHER_GROUP, "tCCD_S", 2),
    (C.WR, C.RD, Scope.GROUP, "tCWL+tBL+tWTR_L", 19),
    (C.WR, C.RD, Scope.OTHER_GROUP, "tCWL+tBL+tWTR_S", 17),
    (C.RD, C.WR, Scope.CHANNEL, "tCL+tBL-tCWL", 46),
    (C.RDMAC, C.WRGB, Scope.CHANNEL, "tCL_REG+tBL-tCWL_GB", 2),
    (C.RDMAC, C.WR, Scope.CHANNEL, "tCL_REG+tBL-tCWL", 0),  # 2 + 2 - 6, floored at 0
    (C.WRGB, C.WRGB, Scope.CHANNEL, "tBL", 2),
    (C.WRGB, C.MAC, Scope.CHANNEL, "tCWL_GB+tBL", 4),
    (C.MAC, C.RDMAC, Scope.CHANNEL, "tCCD_L", 2),
    (C.RDMAC, C.MAC, Scope.CHANNEL, "tCL_REG", 2),
    (C.PRE, C.REF, Scope.BANK, "tRP", 32),
    (C.REF, C.ACT, Scope.CHANNEL, "tRFC", 210),
    (C.REF, C.REF, Scope.CHANNEL, "tRFC", 210),
])
def test_rule_cycles_on_paper_preset(first, second, scope, name, cycles):
    assert _rule(first, second, scope, name).cycles(PAPER) == cycles


def test_rule_cycles_round_each_term_separately():
    # 1 GHz, tCWL=6, tBL=8, tWR=26 on gddr6; a 0.5 ns term at 1 GHz rounds up to 1 cycle alone
    from pimgpt.hdl.params import GDDR6
    assert _rule(C.WR, C.PRE, Scope.BANK, "tCWL+tBL+tWR").cycles(GDDR6) == 40
    odd = GDDR6.replace(timing=dataclasses.replace(GDDR6.timing, tCWL=5.5, tBL=7.5))
    assert _rule(C.WR, C.PRE, Scope.BANK, "tCWL+tBL+tWR").cycles(odd) == 6 + 8 + 26


def test_window_and_refresh_rules():
    assert (FAW.cmd, FAW.count, FAW.term, FAW.cycles(PAPER)) == (C.ACT, 4, "tFAW", 42)
    assert (REFRESH.max_postponed, REFRESH.interval(PAPER)) == (8, T_REFI)
    assert REFRESH.required(9 * T_REFI - 1, PAPER) == 0
    assert REFRESH.required(9 * T_REFI, PAPER) == 1


def test_command_sets_and_codes():
    assert C.__members__.keys() == {"ACT", "ACT16", "PRE", "PREA", "RD", "WR", "MAC", "MAC16",
                                    "WRGB", "RDMAC", "WR16", "REF"}
    assert len({c.value for c in C}) == 12 and max(c.value for c in C) < 16
    assert timing.DATA_BUS_CMDS == {C.RD, C.WR, C.WRGB, C.RDMAC, C.WR16}
    assert timing.ALL_BANK_CMDS == {C.ACT16, C.PREA, C.MAC16, C.WR16, C.REF}
    assert rule_cmd(C.ACT16) is C.ACT and rule_cmd(C.WR16) is C.WR and rule_cmd(C.REF) is C.REF
    assert timing.bank_group(3, PAPER) == 0 and timing.bank_group(4, PAPER) == 1
    assert timing.bank_group(15, PAPER) == 3 and timing.bank_group(2, TINY) == 1
    # every data-bus pair is kept tBL apart; REF blocks every command for tRFC
    bus = {rule_cmd(c) for c in timing.DATA_BUS_CMDS}
    tbl = {(r.first, r.second) for r in RULES if r.terms == ("tBL",)}
    assert tbl == {(a, b) for a in bus for b in bus}
    assert {r.second for r in RULES if r.first is C.REF} == set(timing.RULE_CMDS)
    assert {r.first for r in rules_for(C.MAC16)} >= {C.ACT, C.MAC, C.WRGB, C.RDMAC, C.REF}


# --- good traces ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def long_trace() -> list[TraceEntry]:
    """Every channel of the paper machine for > 12 tREFI (REFs needed), ~110k commands."""
    entries = good_trace(190, channels=tuple(range(PAPER.geometry.channels)))
    assert entries[-1].cycle > 12 * T_REFI
    return entries


def test_hand_written_trace_is_clean():
    entries = good_trace(3)
    assert check_trace(entries, PAPER) == []


def test_long_trace_with_refresh_is_clean(long_trace):
    assert sum(e.cmd is C.REF for e in long_trace) >= 8 * 12
    assert check_trace(long_trace, PAPER) == []


def test_check_is_linear_time():
    entries = good_trace(1500, channels=(0, 1))  # ~ 210k commands
    t0 = time.perf_counter()
    assert check_trace(entries, PAPER.replace(geometry=dataclasses.replace(
        PAPER.geometry, channels=2))) == []
    elapsed = time.perf_counter() - t0
    assert elapsed < 20, f"{len(entries)} commands took {elapsed:.1f} s"


# --- seeded violations ---------------------------------------------------------------------------

def test_trcd_violation_names_both_commands():
    entries = good_trace(3)
    i = index_of(entries, lambda e: e.cmd is C.MAC16 and e.row == 101)  # tile 1
    act = index_of(entries, lambda e: e.cmd is C.ACT16 and e.row == 101)
    assert entries[i].cycle - entries[act].cycle == T_RCD_MAC
    entries[i] = entries[i]._replace(cycle=entries[act].cycle + 20)
    v = check_trace(entries, PAPER)
    assert rules_of(v) == ["tRCD_MAC"]
    a = entries[act]
    assert v[0].message == (
        f"line {i + 2} (cycle {a.cycle + 20}, ch 0, MAC16 bank * row 101 col 0) follows line "
        f"{act + 2} (cycle {a.cycle}, ch 0, ACT16 bank * row 101) by 20 cycles; "
        f"tRCD_MAC requires 56")
    assert (v[0].line, v[0].first_line, v[0].distance, v[0].required) == (i + 2, act + 2, 20, 56)


def test_tfaw_violation():
    # five ACTs to four groups, tRRD apart: legal with tFAW = 21 ns, not with 30 ns (60 cycles)
    entries, _ = single_bank_prologue()
    assert check_trace(entries, PAPER) == []
    wide = PAPER.replace(timing=dataclasses.replace(PAPER.timing, tFAW=30.0))
    v = check_trace(entries, wide)
    assert rules_of(v) == ["tFAW"]
    assert v[0].line == 6 and v[0].first_line == 2 and v[0].required == 60
    assert "by 44 cycles with 3 activations between; tFAW requires 60" in v[0].message


def test_tfaw_counts_act16_as_one_activation():
    entries = [E(0, C.ACT16, row=1), E(89, C.PREA), E(121, C.ACT16, row=2), E(210, C.PREA),
               E(242, C.ACT, 0, 3), E(253, C.ACT, 4, 3), E(264, C.ACT, 8, 3)]
    wide = PAPER.replace(timing=dataclasses.replace(PAPER.timing, tFAW=150.0))  # 300 cycles
    v = check_trace(entries, wide)
    assert rules_of(v) == ["tFAW"] and v[0].line == 8 and v[0].first_line == 2
    assert check_trace(entries[1:], wide) == []  # four activations (a PRE to a closed bank)


def test_trp_violation():
    entries = good_trace(3)
    i = index_of(entries, lambda e: e.cmd is C.ACT16 and e.row == 102)
    entries[i:i + 1] = [entries[i]._replace(cycle=entries[i].cycle - 2)]
    v = check_trace(entries, PAPER)
    assert rules_of(v) == ["tRP"]
    assert entries[v[0].first_line - 2].cmd is C.PREA and v[0].distance == T_RP - 2


def test_tccd_violation():
    entries = good_trace(2)
    i = index_of(entries, lambda e: e.cmd is C.MAC16, nth=10)
    entries[i] = entries[i]._replace(cycle=entries[i].cycle - 1)
    v = check_trace(entries, PAPER)
    assert rules_of(v) == ["tCCD_L"]
    assert v[0].first_line == i + 1 and v[0].distance == 1 and v[0].required == 2


def test_single_bank_scopes():
    base = [E(0, C.ACT, 0, 1), E(11, C.ACT, 4, 1), E(67, C.MAC, 0, 1, 0)]
    assert check_trace(base + [E(69, C.MAC, 4, 1, 0)], PAPER) == []
    # 1 cycle after the MAC of another group: tCCD_S
    v = check_trace(base + [E(68, C.MAC, 4, 1, 0)], PAPER)
    assert rules_of(v) == ["tCCD_S"]
    # ACT to a bank of the same group 5 cycles after: tRRD_L; ACT16 after ACTs: every bank
    v = check_trace([E(0, C.ACT, 0, 1), E(5, C.ACT, 1, 1)], PAPER)
    assert rules_of(v) == ["tRRD_L"]
    v = check_trace([E(0, C.ACT, 0, 1), E(10, C.PRE, 0)], PAPER)
    assert rules_of(v) == ["tRAS"]
    v = check_trace([E(0, C.ACT, 0, 1), E(54, C.PRE, 0), E(87, C.ACT16, row=2)], PAPER)
    assert rules_of(v) == ["tRC"] and v[0].first_line == 2  # the ACT16 is an ACT of bank 0
    # ...and an all-bank command earlier binds a single-bank one later
    v = check_trace([E(0, C.ACT16, row=1), E(54, C.PREA), E(87, C.ACT, 5, 2)], PAPER)
    assert rules_of(v) == ["tRC"] and v[0].first_line == 2
    v = check_trace([E(0, C.ACT16, row=1), E(40, C.MAC, 3, 1, 0)], PAPER)
    assert rules_of(v) == ["tRCD_MAC"] and v[0].required == T_RCD_MAC


def test_write_rules_apply_to_wr16():
    entries = [E(0, C.ACT16, row=1), E(28, C.WR16, row=1, col=0), E(60, C.PREA)]
    v = check_trace(entries, PAPER)
    assert rules_of(v) == ["tCWL+tBL+tWR"]
    assert (v[0].required, v[0].distance, v[0].first_line) == (WR_RECOVERY, 32, 3)
    entries[2] = entries[2]._replace(cycle=28 + WR_RECOVERY)
    assert check_trace(entries, PAPER) == []


def test_data_bus_order():
    entries = [E(0, C.ACT, 0, 1), E(40, C.RD, 0, 1, 0), E(50, C.WRGB, col=0)]
    v = check_trace(entries, PAPER)
    assert rules_of(v) == ["tCL+tBL-tCWL_GB"] and v[0].required == 50


def test_refresh_postponed_too_long(long_trace):
    dropped = [e for e in long_trace if not (e.cmd is C.REF and e.channel == 3)]
    v = check_trace(dropped, PAPER)
    assert rules_of(v) == ["tREFI", "tREFI"]
    mid, end = v
    assert mid.entry.channel == 3 and mid.entry.cycle >= 9 * T_REFI
    earlier = [e for e in dropped if e.channel == 3 and e.cycle < mid.entry.cycle]
    assert earlier[-1].cycle < 9 * T_REFI  # reported at the first command once behind
    assert "channel 3 has issued 0 REF by cycle" in mid.message
    assert "tREFI requires at least 1" in mid.message
    assert end.line is None and end.message.startswith(f"end of trace (cycle {dropped[-1].cycle})")


def test_refresh_at_most_eight_postponed():
    one = PAPER.replace(geometry=dataclasses.replace(PAPER.geometry, channels=1))
    nine = 9 * T_REFI
    assert check_trace([E(0, C.WRGB, col=0), E(nine - 1, C.WRGB, col=0)], one) == []
    v = check_trace([E(0, C.WRGB, col=0), E(nine, C.WRGB, col=0)], one)
    assert rules_of(v) == ["tREFI", "tREFI"] and (v[0].line, v[1].line) == (3, None)
    assert v[0].message == (f"line 3 (cycle {nine}, ch 0, WRGB col 0): channel 0 has issued 0 REF "
                            f"by cycle {nine}; tREFI requires at least 1 (floor({nine} / tREFI) "
                            f"- 8 postponed)")
    assert check_trace([E(0, C.REF), E(nine, C.WRGB, col=0)], one) == []
    v = check_trace([E(0, C.REF), E(nine + T_REFI, C.WRGB, col=0)], one)
    assert rules_of(v) == ["tREFI", "tREFI"]
    # a channel that falls behind is reported once, then again only after catching up
    v = check_trace([E(nine, C.WRGB, col=0), E(nine + 2, C.WRGB, col=0), E(nine + 4, C.REF),
                     E(nine + T_REFI, C.WRGB, col=0)], one)
    assert [x.line for x in v] == [2, 5, None]


def test_refresh_protocol_and_timing():
    entries = [E(0, C.ACT, 0, 1), E(100, C.REF), E(200, C.ACT, 4, 1)]
    v = check_trace(entries, PAPER)
    assert rules_of(v) == ["protocol", "tRFC"]
    assert v[0].message.endswith("REF while bank 0 has row 1 open (since line 2)")
    assert v[1].required == T_RFC and v[1].first_line == 3


def test_mac_to_closed_bank():
    entries = good_trace(2)
    i = index_of(entries, lambda e: e.cmd is C.PREA)
    entries.insert(i + 1, E(entries[i].cycle + 20, C.MAC, 2, 100, 0))
    v = check_trace(entries, PAPER)
    assert rules_of(v) == ["protocol"]
    assert v[0].line == i + 3
    assert v[0].message.endswith("MAC to bank 2, which is precharged (no row open)")


def test_mac16_to_wrong_row_and_act_to_open_bank():
    entries = good_trace(3)
    i = index_of(entries, lambda e: e.cmd is C.PREA, nth=1)  # end of tile 0: drop it
    del entries[i]
    v = check_trace(entries, PAPER)
    assert rules_of(v) == ["protocol"]
    assert entries[v[0].line - 2].cmd is C.ACT16
    assert "ACT16 while bank 0 has row 100 open" in v[0].message
    j = index_of(entries, lambda e: e.cmd is C.MAC16 and e.row == 101, nth=5)
    entries[j] = entries[j]._replace(row=7)
    v = check_trace(entries, PAPER)
    assert rules_of(v) == ["protocol", "protocol"]
    assert v[1].message.endswith("MAC16 to row 7 of bank 0, which has row 101 open "
                                 f"(since line {v[0].line})")
    single = [E(0, C.ACT, 3, 1), E(100, C.ACT, 3, 2)]
    v = check_trace(single, PAPER)
    assert rules_of(v) == ["protocol"]
    assert v[0].message.endswith("ACT to bank 3, which has row 1 open (since line 2)")


def test_one_command_per_cycle():
    v = check_trace([E(0, C.WRGB, col=0), E(0, C.ACT, 1, 1)], PAPER)
    assert rules_of(v) == ["command bus"]
    assert check_trace([E(0, C.WRGB, col=0), E(0, C.ACT, 1, 1, ch=1)], PAPER) == []


@pytest.mark.parametrize("entry, message", [
    (E(0, C.ACT, 16, 1), "line 2: bank 16 is out of range for machine 'paper' (16 banks"),
    (E(0, C.ACT, 0, 16384), "line 2: row 16384 is out of range"),
    (E(0, C.WRGB, col=64), "line 2: column 64 is out of range for machine 'paper' "
                           "(64 global-buffer columns)"),
    (E(0, C.ACT, 0, 1, ch=8), "line 2: channel 8 is out of range for machine 'paper' "
                              "(8 channels)"),
    (E(0, C.MAC16, 0, 1, 0), "line 2: MAC16 is an all-bank command: its bank must be None"),
    (E(0, C.RD, 0, 1), "line 2: RD needs a column"),
])
def test_check_rejects_bad_entries(entry, message):
    with pytest.raises(PimgptError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_trace([entry], PAPER)


def test_check_rejects_cycles_going_backwards():
    with pytest.raises(PimgptError, match="line 3: cycle 5 on channel 0 goes backwards"):
        check_trace([E(9, C.ACT, 0, 1), E(5, C.PRE, 0)], PAPER)


# --- CSV -----------------------------------------------------------------------------------------

def test_csv_round_trip(tmp_path):
    entries = good_trace(2)
    path = tmp_path / "t.csv"
    write_trace_csv(path, entries)
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER == "cycle,channel,command,bank,row,column"
    assert lines[1:6] == ["0,0,ACT,0,1,", "11,0,ACT,4,2,", "22,0,ACT,8,3,", "33,0,ACT,12,4,",
                          "44,0,ACT,1,5,"]
    assert "177,0,RDMAC,,," in lines and "180,0,PRE,0,," in lines
    assert "216,0,ACT16,*,9," in lines and "244,0,WR16,*,9,5" in lines
    assert "285,0,PREA,*,," in lines and "318,0,WRGB,,,0" in lines
    assert read_trace_csv(path) == entries


def test_csv_write_is_atomic(tmp_path):
    path = tmp_path / "t.csv"
    with pytest.raises(PimgptError, match=r"trace entry 1 .*: PRE takes no row"):
        write_trace_csv(path, [E(0, C.ACT, 0, 1), E(60, C.PRE, 0, 1)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("body, message", [
    ("", "empty file"),
    ("cycle,channel,command,bank,row\n", "line 1: bad header"),
    (HEADER + "\n0,0,ACT,0,1\n", "line 2: expected 6 fields"),
    (HEADER + "\n0,0,ACT,0,1,\n\n5,0,PRE,0,,\n", "line 3: empty line"),
    (HEADER + "\n0,0,ACT,0,1,\n5,0,NOP,0,,\n", "line 3: unknown command 'NOP'"),
    (HEADER + "\nx,0,ACT,0,1,\n", "line 2: cycle 'x' is not an integer"),
    (HEADER + "\n0,0,ACT,0,1.5,\n", "line 2: row '1.5' is not an integer"),
    (HEADER + "\n-3,0,ACT,0,1,\n", "line 2: cycle -3 is negative"),
    (HEADER + "\n0,0,ACT,*,1,\n", "line 2: bank '*' is not an integer"),
    (HEADER + "\n0,0,MAC16,3,1,0\n", "line 2: MAC16 is an all-bank command: its bank must be '*'"),
    (HEADER + "\n0,0,WRGB,*,,0\n", "line 2: WRGB addresses no bank: its bank must be empty"),
    (HEADER + "\n0,0,PRE,0,4,\n", "line 2: PRE takes no row (found 4)"),
    (HEADER + "\n0,0,MAC,0,4,\n", "line 2: MAC needs a column"),
    (HEADER + "\n9,0,ACT,0,1,\n3,1,ACT,0,1,\n5,0,PRE,0,,\n",
     "line 4: cycle 5 on channel 0 goes backwards (line 2 is at cycle 9)"),
])
def test_csv_errors_name_the_line(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(PimgptError) as info:
        read_trace_csv(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_csv_missing_file(tmp_path):
    with pytest.raises(PimgptError, match="trace file not found"):
        read_trace_csv(tmp_path / "nope.csv")


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_clean_trace(tmp_path, capsys):
    path = tmp_path / "good.csv"
    entries = good_trace(2)
    write_trace_csv(path, entries)
    assert main(["check-trace", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.count("\n") == 1
    assert out.endswith(f"on machine 'paper': no violations\n")
    assert main(["check-trace", str(path), "--preset", "paper", "--json"]) == 0
    data = json.loads(capsys.readouterr()[0])
    assert data["ok"] is True and data["violation_count"] == 0 and data["commands"] == len(entries)


def test_cli_violations(tmp_path, capsys):
    entries = good_trace(3)
    for nth in (10, 80):
        i = index_of(entries, lambda e: e.cmd is C.MAC16, nth=nth)
        entries[i] = entries[i]._replace(cycle=entries[i].cycle - 1)
    path = tmp_path / "bad.csv"
    write_trace_csv(path, entries)
    assert main(["check-trace", str(path)]) == 1
    out = capsys.readouterr()[0].splitlines()
    assert len(out) == 3 and all("tCCD_L requires 2" in x for x in out[:2])
    assert out[2].endswith("2 violations")
    assert main(["check-trace", str(path), "--max", "1"]) == 1
    out = capsys.readouterr()[0].splitlines()
    assert len(out) == 2 and out[1].endswith("2 violations (showing 1)")
    assert main(["check-trace", str(path), "--json", "--max", "0"]) == 1
    data = json.loads(capsys.readouterr()[0])
    assert data["violation_count"] == 2 and data["violations"] == [] and data["ok"] is False
    assert main(["check-trace", str(path), "--json"]) == 1
    v = json.loads(capsys.readouterr()[0])["violations"][0]
    assert v["rule"] == "tCCD_L" and v["entry"]["command"] == "MAC16" and v["entry"]["bank"] == "*"


@pytest.mark.parametrize("args, message", [
    (["missing.csv"], "trace file not found: missing.csv"),
    (["BAD"], "BAD: line 3: unknown command 'FOO'"),
    (["RANGE", "--preset", "tiny"], "RANGE: line 2: bank 5 is out of range for machine 'tiny'"),
    (["GOOD", "--max", "-1"], "--max must be >= 0, not -1"),
    (["GOOD", "--preset", "huge"], "unknown preset 'huge'"),
])
def test_cli_bad_input(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    Path("BAD").write_text(HEADER + "\n0,0,ACT,0,1,\n1,0,FOO,,,\n")
    Path("RANGE").write_text(HEADER + "\n0,0,ACT,5,1,\n")
    Path("GOOD").write_text(HEADER + "\n0,0,ACT,5,1,\n")
    assert main(["check-trace", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"pimgpt: error: {message}")


# --- docs ----------------------------------------------------------------------------------------

def test_docs_timing_md_is_up_to_date():
    assert DOCS.read_text() == timing.render_doc(), (
        "docs/timing.md is stale: run python -m pimgpt.hdl.timing -o docs/timing.md")


def test_table_lists_every_rule_with_paper_cycles():
    table = timing.table_markdown()
    rows = table.splitlines()[2:]
    assert len(rows) == len(RULES)
    assert "| ACT | MAC | BANK | `tRCD_MAC` | 56 | row to column (MAC) |" in rows
    assert "| RD | WR | CHANNEL | `tCL+tBL-tCWL` | 46 | data-bus bursts in command order |" in rows
