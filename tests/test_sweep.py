"""``pimgpt sweep``: TOML grids, parallel points, resumption after a kill, Dask clusters.

Checked: grid errors are one line and exit status 2; a parallel sweep writes one result per
point (invalid machines record their error and the sweep goes on); a sweep killed with SIGKILL
mid-run (a torn last line included) resumes without redoing finished points and writes
byte-identical results to an uninterrupted run; the same sweep on a Dask LocalCluster through
``--scheduler`` gives the same results too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pimgpt.cli import main
from pimgpt.errors import PimgptError
from pimgpt.study.sweep import JSONL, load_grid, read_done

FAST_GRID = """\
models = ["tiny"]
base = "paper"
max_tokens = 128
positions = [0, 127]
[grid]
"geometry.channels" = [2, 8, 64]
"clocks.asic_mhz" = [100.0, 1000.0]
"""

# six points of about half a second each: long enough to be killed in the middle
SLOW_GRID = """\
models = ["gpt2-small"]
max_tokens = 1024
positions = [1023]
[grid]
"clocks.asic_mhz" = [100.0, 150.0, 200.0, 300.0, 500.0, 1000.0]
"""


def _grid(tmp_path: Path, text: str, name: str = "grid.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _sweep(argv: list[str], capsys) -> dict:
    assert main(["sweep"] + argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("text, message", [
    ("models = [", "not valid TOML"),
    ("model = \"gpt2-small\"\nfoo = 1", "unknown key(s) foo"),
    ("positions = [0]", "no models"),
    ("models = [\"gpt9\"]", "unknown model 'gpt9'"),
    ("model = \"tiny\"\nmax_tokens = 16\npositions = [16]", "position 16 is outside 0..15"),
    ("model = \"tiny\"\nmax_tokens = 0", "max_tokens must be an integer >= 1"),
    ("model = \"tiny\"\n[grid]\n\"geometry.chanels\" = [2]", "[geometry] has no field 'chanels'"),
    ("model = \"tiny\"\n[grid]\n\"speed\" = [2]", "must be <group>.<field>"),
    ("model = \"tiny\"\n[grid]\n\"clocks.asic_mhz\" = []", "has no values"),
    ("model = \"tiny\"\nbase = \"nowhere\"", "neither a preset"),
    ("model = \"tiny\"\n[grid]\n\"options.warp_drive\" = [true]", "no option 'warp_drive'"),
    ("model = \"tiny\"\nbase = \"missing.toml\"", "config file not found"),
])
def test_grid_errors(tmp_path, capsys, text, message):
    grid = _grid(tmp_path, text)
    out = tmp_path / "out"
    assert main(["sweep", str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pimgpt: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_missing_grid_and_bad_jobs(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.toml")]) == 2
    assert "grid file not found" in capsys.readouterr().err
    grid = _grid(tmp_path, FAST_GRID)
    assert main(["sweep", str(grid), "--jobs", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_grid_points(tmp_path):
    g = load_grid(_grid(tmp_path, FAST_GRID))
    assert list(g.axes) == ["model", "geometry.channels", "clocks.asic_mhz"]
    assert len(g.points) == 6 and len({json.dumps(p, sort_keys=True) for p in g.points}) == 6
    assert g.labels[1] == {"model": "tiny", "geometry.channels": 2, "clocks.asic_mhz": 1000.0}
    assert g.points[1]["overrides"] == {"geometry.channels": 2, "clocks.asic_mhz": 1000.0}


def test_parallel_sweep(tmp_path, capsys):
    grid = _grid(tmp_path, FAST_GRID)
    out = tmp_path / "out"
    res = _sweep([str(grid), "--out", str(out), "--jobs", "2"], capsys)
    assert res["points"] == 6 and res["resumed"] == 0 and res["errors"] == 2
    assert len((out / JSONL).read_text().splitlines()) == 6
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0].startswith("model,geometry.channels,clocks.asic_mhz,status,latency_us")
    assert len(lines) == 7
    by = {(r["label"]["geometry.channels"], r["label"]["clocks.asic_mhz"]): r
          for r in res["results"]}
    assert "exceeds the ISA's limit" in by[(64, 100.0)]["error"]
    lat = {k: r["summary"]["latency_us"] for k, r in by.items() if r["status"] == "ok"}
    assert lat[(2, 100.0)] > lat[(2, 1000.0)]  # a slower ASIC is slower
    assert lat[(2, 1000.0)] > lat[(8, 1000.0)]  # more channels are faster
    # a second run finds everything done and writes the same files
    before = (out / "results.csv").read_bytes()
    again = _sweep([str(grid), "--out", str(out), "--jobs", "2"], capsys)
    assert again["resumed"] == 6
    assert (out / "results.csv").read_bytes() == before


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_killed_sweep_resumes(tmp_path, capsys):
    grid = _grid(tmp_path, SLOW_GRID)
    ref = tmp_path / "ref"
    _sweep([str(grid), "--out", str(ref), "--jobs", "1"], capsys)

    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", "import sys; from pimgpt.cli import main; sys.exit(main())",
           "sweep", str(grid), "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _lines(out / JSONL) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes
    finally:
        proc.wait()
    finished = _lines(out / JSONL)
    assert 2 <= finished < 6, "the sweep was not killed in the middle"
    assert not (out / "results.csv").exists()
    with open(out / JSONL, "ab") as fh:  # a line torn by the kill
        fh.write(b'{"key": "0123456789abcdef", "status": "o')

    res = _sweep([str(grid), "--out", str(out), "--jobs", "2"], capsys)
    assert res["resumed"] == finished and res["points"] == 6
    assert len(read_done(out / JSONL)) == 6
    for name in ("results.csv", "results.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


@pytest.mark.filterwarnings("ignore")
def test_dask_scheduler(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    grid = _grid(tmp_path, FAST_GRID.replace("[2, 8, 64]", "[2, 8]"))
    local = tmp_path / "local"
    _sweep([str(grid), "--out", str(local), "--jobs", "1"], capsys)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        out = tmp_path / "dask"
        res = _sweep([str(grid), "--out", str(out), "--scheduler", cluster.scheduler_address],
                     capsys)
    assert res["points"] == 4 and res["errors"] == 0
    assert (out / "results.csv").read_bytes() == (local / "results.csv").read_bytes()


def test_unreachable_scheduler(tmp_path, capsys):
    grid = _grid(tmp_path, FAST_GRID)
    assert main(["sweep", str(grid), "--out", str(tmp_path / "o"),
                 "--scheduler", "ray://somewhere:10001"]) == 2
    assert "Ray clusters are not supported" in capsys.readouterr().err


def test_read_done_rejects_foreign_lines(tmp_path):
    p = tmp_path / JSONL
    p.write_text('[1, 2]\n')
    with pytest.raises(PimgptError, match="not a sweep result"):
        read_done(p)


def test_compile_option_axis(tmp_path, capsys):
    from pimgpt.study.points import options_available
    assert options_available(["overlap"])
    grid = _grid(tmp_path, 'model = "tiny"\nmax_tokens = 128\npositions = [127]\n'
                           '[grid]\n"options.overlap" = [false, true]\n')
    res = _sweep([str(grid), "--out", str(tmp_path / "o"), "--jobs", "1"], capsys)
    assert [r["label"]["options.overlap"] for r in res["results"]] == [False, True]
    assert all(r["status"] == "ok" for r in res["results"])
