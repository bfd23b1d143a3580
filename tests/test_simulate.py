"""``pimgpt simulate`` and :mod:`pimgpt.sim.report` / :mod:`pimgpt.sim.timeline`: timed greedy
generation of the built-in ``tiny`` model on the ``tiny`` and ``paper`` machines.

Checked: the report's figures are sane and consistent (energy breakdown sums to the total,
shares are fractions), the full run's tokens are the functional machine's, a timing-only run
fed the same tokens times identically, the written trace passes the checker, the timeline has
every unit, outputs are byte-for-byte deterministic, the event engine agrees with the fast one,
and bad inputs are one error line with no files left behind.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from pimgpt.cli import main
from pimgpt.errors import PimgptError
from pimgpt.hdl.params import preset
from pimgpt.mapping.builtin import builtin_model
from pimgpt.mapping.compiler import compile_model
from pimgpt.sim.cycle import Interval
from pimgpt.sim.energy import COMPONENTS
from pimgpt.sim.machine import FunctionalMachine
from pimgpt.sim.report import BusyTime, SimReport, simulate_generation
from pimgpt.sim.timeline import PID_ASIC, PID_PIM, write_timeline

PRESETS = ["tiny", "paper"]
PROMPT = [72, 101, 108, 108]
N_TOKENS = 4
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def binaries() -> dict[tuple[str, bool], object]:
    """(preset, with_image) -> compiled tiny model."""
    weights = builtin_model("tiny")
    return {(name, img): compile_model(preset(name), weights, MAX_TOKENS, with_image=img)[0]
            for name in PRESETS for img in (True, False)}


@pytest.fixture(scope="module")
def full_reports(binaries) -> dict[str, SimReport]:
    return {name: simulate_generation(preset(name), binaries[name, True], PROMPT, N_TOKENS,
                                      timing_only=False)
            for name in PRESETS}


def _sim(*args: str, cwd: Path | None = None) -> int:
    if cwd is None:
        return main(["simulate", *args])
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return main(["simulate", *args])
    finally:
        os.chdir(old)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("pimgpt: error: ")
    return lines[0]


# --- the report ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_report_fields_are_sane(name, full_reports):
    r = full_reports[name]
    config = preset(name)
    steps = len(PROMPT) + N_TOKENS - 1
    assert r.steps == steps == len(r.step_cycles)
    assert all(c > 0 for c in r.step_cycles)
    assert r.total_cycles == sum(r.step_cycles)
    assert r.latency_us > 0
    assert math.isclose(r.latency_us, r.total_cycles / steps / config.clocks.dram_mhz)
    assert math.isclose(r.tokens_per_second, 1e6 / r.latency_us)
    assert 0 < r.row_hit_rate <= 1
    assert r.row_hit_rate == r.counters["row_hits"] / (r.counters["row_hits"]
                                                       + r.counters["row_misses"])
    shares = r.time_shares
    assert set(shares) == {"mac", "move", "asic"}
    assert all(0 < s <= 1 for s in shares.values())
    busy = r.any_busy / r.total_cycles
    assert max(shares.values()) <= busy <= 1
    assert math.isclose(r.overlap, sum(shares.values()) - busy)
    assert r.overlap >= 0
    util = r.channel_utilisation
    assert len(util) == config.geometry.channels
    assert all(0 < u <= 1 for u in util)
    # energy: positive, breakdown sums to the total, per token = total / steps
    assert r.energy.total > 0 and r.energy_per_token_mj > 0
    per = r.energy_per_token
    assert all(getattr(per, c) >= 0 for c in COMPONENTS)
    assert math.isclose(math.fsum(getattr(per, c) for c in COMPONENTS) * 1e3,
                        r.energy_per_token_mj, rel_tol=1e-12)
    assert math.isclose(r.energy_per_token_mj, r.energy.total * 1e3 / steps)
    for c in ("dram_activate", "dram_mac", "io", "asic_compute", "dram_background"):
        assert getattr(per, c) > 0, c
    # events come from the counters as documented
    nb = config.geometry.banks_per_channel
    ev = r.events
    assert ev.act == r.counters["ACT16"] * nb + r.counters.get("ACT", 0)
    assert ev.mac == r.counters["mac_columns"]
    assert ev.gb_write == r.counters["WRGB"] and ev.mac_readout == r.counters["RDMAC"]
    assert ev.seconds == pytest.approx(r.total_cycles / (config.clocks.dram_mhz * 1e6))
    assert ev.asic_ops["exp"] == r.counters["asic_VEXP"]
    counts = r.command_counts
    assert counts["ACT16"] > 0 and counts["MAC16"] > 0 and counts["REF"] > 0
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["steps"] == steps and d["timing_only"] is False
    assert math.isclose(sum(v for k, v in d["energy_breakdown_mj_per_token"].items()
                            if k != "total"), d["energy_per_token_mj"], rel_tol=1e-12)
    text = r.format_text()
    for word in ("latency", "tokens/s", "mJ/token", "row hits", "PIM MAC", "data movement",
                 "ASIC vector", "ch0", "total", "MAC16"):
        assert word in text, word


@pytest.mark.parametrize("name", PRESETS)
def test_full_run_tokens_are_the_functional_machines(name, binaries, full_reports):
    machine = FunctionalMachine(preset(name))
    machine.load(binaries[name, True])
    gen = machine.generate(PROMPT, N_TOKENS)
    r = full_reports[name]
    assert r.generated_ids == gen.generated_ids
    assert r.fed_ids == PROMPT + gen.generated_ids[:-1]


@pytest.mark.parametrize("name", PRESETS)
def test_timing_only_fed_the_same_tokens_gives_the_same_cycles(name, binaries, full_reports):
    full = full_reports[name]
    fed = PROMPT + full.generated_ids[:-1]
    timed = simulate_generation(preset(name), binaries[name, False], fed, 1)
    assert timed.fed_ids == full.fed_ids
    assert timed.generated_ids is None and timed.timing_only
    assert timed.step_cycles == full.step_cycles
    assert timed.counters == full.counters
    assert timed.kind_busy == full.kind_busy and timed.channel_busy == full.channel_busy
    # plain timing-only: the prompt, then token 0
    plain = simulate_generation(preset(name), binaries[name, False], PROMPT, N_TOKENS)
    assert plain.fed_ids == PROMPT + [0] * (N_TOKENS - 1)
    assert len(plain.step_cycles) == len(full.step_cycles)
    assert plain.step_cycles[:len(PROMPT)] == full.step_cycles[:len(PROMPT)]


def test_layout_only_program_needs_timing_only(binaries):
    with pytest.raises(PimgptError, match="timing-only"):
        simulate_generation(preset("tiny"), binaries["tiny", False], PROMPT, 2,
                            timing_only=False)
    with pytest.raises(PimgptError, match="reserved KV space for 16"):
        simulate_generation(preset("tiny"), binaries["tiny", False], PROMPT, 14)
    with pytest.raises(PimgptError, match="outside the vocabulary"):
        simulate_generation(preset("tiny"), binaries["tiny", False], [256], 1)


def test_busy_time_is_the_union_across_steps():
    b = BusyTime()
    b.add([(0, 10), (5, 12), (20, 25), (30, 40)], horizon=35)
    assert b.done == 17 and b.pending == [(30, 40)]
    b.add([(35, 50), (60, 60), (70, 71)], horizon=100)  # overlaps the pending segment
    assert b.total == 12 + 5 + 20 + 1
    assert b.pending == []


# --- timeline ------------------------------------------------------------------------------------

def test_timeline_events_by_hand(tmp_path):
    config = preset("tiny")  # 2000 MHz: 1 cycle = 0.0005 us
    assert config.clocks.dram_mhz == 2000
    ivs = [Interval("vector", "asic", "VEXP", 102, 110),
           Interval("vector", "asic", "VADD", 100, 104),
           Interval("ch1", "mac", "MAC_ABK", 10, 30), Interval("ch0", "move", "WR_GB", 0, 7)]
    path = tmp_path / "t.json"
    assert write_timeline(path, ivs, config) == 4
    doc = json.loads(path.read_text())
    assert doc["displayTimeUnit"] == "ns"
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    # VADD overlaps VEXP on the vector unit: it is drawn up to VEXP's start (slices must nest)
    assert [(e["pid"], e["tid"], e["name"], e["cat"], e["ts"], e["dur"]) for e in xs] == [
        (PID_PIM, 0, "WR_GB", "move", 0.0, 0.0035),
        (PID_PIM, 1, "MAC_ABK", "mac", 0.005, 0.01),
        (PID_ASIC, 0, "VADD", "asic", 0.05, 0.001),
        (PID_ASIC, 0, "VEXP", "asic", 0.051, 0.004)]
    assert xs[1]["args"] == {"start_cycle": 10, "end_cycle": 30}
    assert xs[2]["args"] == {"start_cycle": 100, "end_cycle": 104}
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
             if e["name"] == "thread_name"}
    assert names == {(PID_PIM, 0): "ch0", (PID_PIM, 1): "ch1", (PID_ASIC, 0): "vector unit"}
    procs = {e["pid"] for e in doc["traceEvents"] if e["name"] == "process_name"}
    assert procs == {PID_PIM, PID_ASIC}
    # an unknown unit is an error and leaves no file
    bad = tmp_path / "bad.json"
    with pytest.raises(PimgptError, match="unknown unit 'ch7'"):
        write_timeline(bad, [Interval("ch7", "mac", "MAC_ABK", 0, 1)], config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


# --- the command ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESETS)
def test_cli_trace_passes_the_checker_and_timeline_has_every_unit(name, tmp_path, capsys):
    trace, timeline = tmp_path / "t.csv", tmp_path / "t.json"
    assert _sim("--model", "tiny", "--preset", name, "--prompt-ids", "72,101,108",
                "--tokens", "3", "--trace", str(trace), "--timeline", str(timeline),
                "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trace"]["commands"] == len(trace.read_text().splitlines()) - 1
    assert main(["check-trace", str(trace), "--preset", name, "--json"]) == 0
    check = json.loads(capsys.readouterr().out)
    assert check["violation_count"] == 0 and check["commands"] == out["trace"]["commands"]
    assert check["channels"] == preset(name).geometry.channels
    doc = json.loads(timeline.read_text())
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert out["timeline"]["events"] == len(xs)
    units = {(e["pid"], e["tid"]) for e in xs}
    nc = preset(name).geometry.channels
    assert units == {(PID_PIM, c) for c in range(nc)} | {(PID_ASIC, 0)}
    assert {e["cat"] for e in xs} == {"mac", "move", "asic"}
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in xs)
    for a, b in zip(xs, xs[1:]):  # sorted by unit and time; slices on a thread never overlap
        if (a["pid"], a["tid"]) == (b["pid"], b["tid"]):
            assert a["args"]["start_cycle"] <= b["args"]["start_cycle"]
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-9
    end_us = out["total_cycles"] / out["dram_mhz"]
    assert max(e["ts"] + e["dur"] for e in xs) <= end_us + 1e-6


def test_cli_outputs_are_deterministic(tmp_path, capsys):
    outs = []
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        assert _sim("--model", "tiny", "--preset", "tiny", "--prompt", "Hi", "--tokens", "3",
                    "--trace", "t.csv", "--timeline", "t.json", "--json",
                    cwd=tmp_path / d) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    for f in ("t.csv", "t.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_cli_text_report(capsys):
    assert _sim("--model", "tiny", "--preset", "tiny", "--tokens", "2") == 0
    out = capsys.readouterr().out
    assert "model tiny on machine 'tiny'" in out
    assert "full run" in out and "generated text:" in out
    assert _sim("--model", "tiny", "--preset", "tiny", "--tokens", "2", "--timing-only") == 0
    out = capsys.readouterr().out
    assert "timing only" in out and "token 0" in out and "generated" not in out.split("\n")[2]


def test_event_engine_gives_identical_cycles(tmp_path, capsys):
    runs = []
    for flag in ([], ["--event-engine"]):
        trace = tmp_path / f"t{len(runs)}.csv"
        assert _sim("--model", "tiny", "--preset", "paper", "--prompt-ids", "1,2",
                    "--tokens", "3", "--timing-only", "--trace", str(trace), "--json",
                    *flag) == 0
        runs.append((json.loads(capsys.readouterr().out), trace.read_bytes()))
    (fast, fast_trace), (event, event_trace) = runs
    assert fast["engine"] == "fast" and event["engine"] == "event"
    assert fast["step_cycles"] == event["step_cycles"]
    assert fast["counters"] == event["counters"]
    assert fast_trace == event_trace


def test_cli_pimbin_input(tmp_path, capsys):
    binary = tmp_path / "m.pimbin"
    assert main(["compile", "--model", "tiny", "--preset", "tiny", "--layout-only",
                 "--max-tokens", "8", "-o", str(binary), "--json"]) == 0
    capsys.readouterr()
    assert _sim(str(binary), "--prompt-ids", "5,6", "--tokens", "2") == 2
    assert "--timing-only" in _one_error_line(capsys)
    assert _sim(str(binary), "--prompt-ids", "5,6", "--tokens", "2", "--timing-only",
                "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["machine"] == "tiny" and out["fed_ids"] == [5, 6, 0] and out["steps"] == 3
    assert _sim(str(binary), "--prompt-ids", "5,6", "--tokens", "7", "--timing-only") == 2
    assert "reserved KV space for 8" in _one_error_line(capsys)


def test_help_explains_the_model(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("cycle-accurate", "DRAM commands", "refresh", "vector-unit", "--event-engine",
                 "--timing-only", "--timeline"):
        assert word in out, word


@pytest.mark.parametrize("args, message", [
    (["--tokens", "-1"], "--tokens must be >= 0, not -1"),
    (["--trace", "missing/t.csv"], "--trace: output directory does not exist: missing"),
    (["--trace", "."], "--trace: output path is a directory"),
    (["--trace", "x.json", "--timeline", "x.json"], "same file"),
    (["--timeline", "missing/t.json"], "--timeline: output directory does not exist"),
    (["--prompt-ids", "300"], "outside the vocabulary"),
    (["--prompt-ids", "1", "--tokens", "128"], "more than the context of tiny (128)"),
    (["--max-tokens", "2", "--prompt-ids", "1,2"], "--max-tokens 2 is less than"),
    (["--model", "nope"], "unknown model 'nope'"),
])
def test_bad_inputs_are_one_line_and_no_files(args, message, tmp_path, capsys):
    base = ["--preset", "tiny"] + ([] if "--model" in args else ["--model", "tiny"])
    outputs = [] if any(a in args for a in ("--trace", "--timeline")) else \
        ["--trace", "t.csv", "--timeline", "t.json"]
    assert _sim(*base, *args, *outputs, cwd=tmp_path) == 2
    assert message in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_failed_timeline_write_removes_the_trace(tmp_path, capsys, monkeypatch):
    import pimgpt.sim.timeline as timeline

    def fail(*_a, **_k):
        raise PimgptError("disk full")
    monkeypatch.setattr(timeline, "write_timeline", fail)
    assert _sim("--model", "tiny", "--preset", "tiny", "--tokens", "1", "--trace", "t.csv",
                "--timeline", "t.json", cwd=tmp_path) == 2
    assert _one_error_line(capsys) == "pimgpt: error: disk full"
    assert list(tmp_path.iterdir()) == []
