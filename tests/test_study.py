"""``pimgpt study``: a reduced study through the CLI, then its report checked for consistency.

Checked: every report file is written; results.json, the CSV tables and the markdown tables
show the same numbers; each speed-up / energy ratio is the ratio of the two figures it shows;
the per-token figures are the interpolation of the per-position steps; pending dimensions say
so instead of showing numbers; plots and report are byte-stable for the same results; bad input
is one error line, exit status 2, and no output folder.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from pimgpt.cli import main
from pimgpt.study import run as study_run
from pimgpt.study.points import interpolation_weights
from pimgpt.study.report import write_report
from pimgpt.study.sensitivity import DIMENSIONS, IMPROVEMENT

pytest.importorskip("matplotlib")

MODEL = "gpt2-small"
FILES = ("report.md", "results.json", "models.csv", "positions.csv", "baselines.csv",
         "sensitivity.csv", "accuracy.csv", "latency_vs_position.png", "throughput.png",
         "energy.png", "breakdown.png", "ratios.png")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict]:
    """A quick study of one model (sensitivity and accuracy on the small models)."""
    out = tmp_path_factory.mktemp("study") / "report"
    # a GPU measurement file as 'python -m pimgpt.study.gpu' writes it (test values)
    gpu = out.parent / "gpu.json"
    gpu.write_text(json.dumps({"format": "pimgpt-gpu-baseline-1", "device": "Test GPU",
                               "torch": "0", "dtype": "float16", "batch": 1, "repeats": 1,
                               "models": {MODEL: [{"position": 1023, "seconds": 0.006},
                                                  {"position": 0, "seconds": 0.005}]}}))
    mp = pytest.MonkeyPatch()
    mp.setattr(study_run, "QUICK_ACCURACY", (("tiny", 40), (MODEL, 6)))
    try:
        rc = main(["study", "--quick", "--models", MODEL, "--sensitivity-model", "tiny",
                   "--gpu-results", str(gpu), "--out", str(out), "--json"])
    finally:
        mp.undo()
    assert rc == 0
    return out, json.loads((out / "results.json").read_text())


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _md_table(md: str, first_header: str, contains: str) -> list[list[str]]:
    """Rows of the first markdown table whose header starts with ``first_header`` and
    contains ``contains``."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"| {first_header} |") and contains in line:
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip("|").split("|")])
            header = [c.strip() for c in line.strip("|").split("|")]
            return [header] + rows
    raise AssertionError(f"no table {first_header!r} / {contains!r}")


def test_files_written(study, capsys):
    out, res = study
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for d in res["sensitivity"]:
        if d["status"] == "measured" and any(v["status"] == "ok" for v in d["variants"]):
            assert (out / f"sensitivity_{d['name']}.png").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders
    assert (out / "gpu_imported.json").is_file()
    assert [m["model"] for m in res["models"]] == [MODEL]


def test_json_and_csv_agree(study):
    out, res = study
    m = res["models"][0]
    row = _csv(out / "models.csv")[0]
    assert row["model"] == MODEL
    assert float(row["pim_latency_us"]) == m["pim"]["latency_us"]
    assert float(row["pim_energy_mj"]) == m["pim"]["energy_mj"]
    assert float(row["speedup_vs_gpu"]) == m["gpu"]["speedup"]
    best = m["cpu_best"]
    assert row["cpu_best"] == best
    assert float(row["cpu_best_latency_us"]) == m["cpu"][best]["latency_us"]
    pos = _csv(out / "positions.csv")
    assert [int(r["position"]) for r in pos] == [s["position"] for s in m["pim"]["steps"]]
    assert [float(r["latency_us"]) for r in pos] == [s["latency_us"] for s in m["pim"]["steps"]]
    acc = _csv(out / "accuracy.csv")
    assert [r["model"] for r in acc] == [a["model"] for a in res["accuracy"]]
    sens = _csv(out / "sensitivity.csv")
    assert {r["dimension"] for r in sens} == {d.name for d in DIMENSIONS}


def test_ratios_are_ratios(study):
    _, res = study
    m = res["models"][0]
    p = m["pim"]
    assert p["tokens_per_s"] == pytest.approx(1e6 / p["latency_us"], rel=1e-12)
    for base in list(m["cpu"].values()) + [m["gpu"]]:
        assert base["speedup"] == pytest.approx(base["latency_us"] / p["latency_us"], rel=1e-12)
        if base.get("energy_mj") is not None:
            assert base["energy_ratio"] == pytest.approx(base["energy_mj"] / p["energy_mj"],
                                                         rel=1e-12)
            assert base["energy_mj"] == pytest.approx(
                base["latency_us"] * 1e-6 * base["watts"] * 1e3, rel=1e-12)
    # the per-token figures are the interpolation of the timed steps
    steps = p["steps"]
    w = interpolation_weights([s["position"] for s in steps])
    assert p["latency_us"] == pytest.approx(sum(a * s["latency_us"] for a, s in zip(w, steps)))
    assert min(s["latency_us"] for s in steps) <= p["latency_us"] <= \
        max(s["latency_us"] for s in steps)
    assert 0.5 < p["row_hit_rate"] <= 1.0
    for k in ("pim_mac", "data_movement", "asic"):
        assert 0.0 <= p["shares"][k] <= 1.0


def test_report_tables_match(study):
    out, res = study
    md = (out / "report.md").read_text()
    m = res["models"][0]
    t = _md_table(md, "model", "speed-up vs CPU")
    header, row = t[0], t[1]
    cell = dict(zip(header, row))
    pim = float(cell["PIM latency (µs/token)"])
    cpu = float(cell["CPU latency (µs/token)"])
    sp = float(cell["speed-up vs CPU"])
    assert pim == pytest.approx(m["pim"]["latency_us"], abs=0.05)
    # the shown speed-up is the ratio of the two latencies shown (up to their rounding)
    assert (cpu - 0.05) / (pim + 0.05) - 0.05 <= sp <= (cpu + 0.05) / (pim - 0.05) + 0.05
    e_pim, e_cpu = float(cell["PIM energy (mJ/token)"]), float(cell["CPU energy (mJ/token)"])
    eff = float(cell["energy eff. vs CPU"])
    assert (e_cpu - 5e-4) / (e_pim + 5e-4) - 0.05 <= eff <= (e_cpu + 5e-4) / (e_pim - 5e-4) + 0.05
    g = dict(zip(*_md_table(md, "model", "speed-up vs GPU")[:2]))
    gl = [v for k, v in g.items() if k.startswith("GPU latency")][0]
    assert float(g["speed-up vs GPU"]) == pytest.approx(float(gl) / pim, abs=0.06)
    assert ("estimate" in md) == (res["machine"]["gpu_kind"] == "estimate")
    # the imported GPU: mean of 5 ms at 0 and 6 ms at 1023 (linear) = 5.5 ms
    gi = m["gpu_imported"]
    assert gi["latency_us"] == pytest.approx(5500.0)
    t = dict(zip(*_md_table(md, "model", "GPU latency (µs/token, measured)")[:2]))
    assert float(t["GPU latency (µs/token, measured)"]) == 5500.0
    assert float(t["speed-up vs GPU"]) == pytest.approx(5500.0 / pim, abs=0.06)
    assert "Test GPU" in md
    # per-position table = the steps
    pt = _md_table(md, "position", MODEL)
    assert [float(r[1]) for r in pt[1:]] == [round(s["latency_us"], 1)
                                             for s in m["pim"]["steps"]]


def test_pending_dimensions_have_no_numbers(study):
    out, res = study
    md = (out / "report.md").read_text()
    for d in DIMENSIONS:
        r = next(x for x in res["sensitivity"] if x["name"] == d.name)
        if d.infeasibility is not None:
            assert r["status"] == "infeasible" and r["variants"] == []
        elif d.available:
            assert r["status"] == "measured"
        else:
            assert r["status"] == "pending" and r["variants"] == []
            section = md.split(f"### {d.title}")[1].split("\n#")[0]
            assert "**Pending**" in section and "|" not in section
    assert IMPROVEMENT.available  # CompileOptions.overlap


def test_tiling_off_is_a_computed_infeasibility(study):
    """Tiling off is not measured but computed per model: the largest layer input (BF16
    bytes) against the machine's global buffer, in results.json, the CSV and the report."""
    from pimgpt.hdl.params import PAPER
    from pimgpt.mapping.builtin import builtin_spec
    out, res = study
    d = next(x for x in res["sensitivity"] if x["name"] == "tiling")
    rows = {r["model"]: r for r in d["infeasible"]}
    assert set(rows) == {MODEL, "tiny"}
    for name, r in rows.items():
        s = builtin_spec(name)
        assert r["gb_bytes"] == PAPER.geometry.gb_bytes
        assert r["largest_input_bytes"] == 2 * max(s.d_model, s.d_ff)
        assert r["feasible"] == (r["largest_input_bytes"] <= r["gb_bytes"])
    assert not rows[MODEL]["feasible"] and rows[MODEL]["too_big"] == ["FFN2"]  # 3,072 inputs
    csv_rows = [r for r in _csv(out / "sensitivity.csv") if r["dimension"] == "tiling"]
    assert {r["model"]: r["status"] for r in csv_rows}[MODEL] == "infeasible"
    md = (out / "report.md").read_text()
    section = md.split("### Mapping: tiling")[1].split("\n#")[0]
    assert "**Off is infeasible**" in section
    t = {r[0]: r for r in _md_table(md, "model", "runs without tiling")[1:]}
    assert t[MODEL][3] == "6,144" and t[MODEL][4] == "2,048" and t[MODEL][5] == "no"


def test_improvement_measured(study):
    out, res = study
    imp = res["improvement"]
    assert imp["status"] == "measured" and [r["model"] for r in imp["rows"]] == [MODEL]
    r = imp["rows"][0]
    assert r["status"] == "ok"
    assert r["speedup"] == pytest.approx(r["baseline_latency_us"] / r["improved_latency_us"],
                                         rel=1e-12)
    # one of the two is the models table's own compile (the compiler's default options)
    assert res["models"][0]["pim"]["latency_us"] in (r["baseline_latency_us"],
                                                     r["improved_latency_us"])
    t = dict(zip(*_md_table((out / "report.md").read_text(), "model", "gain")[:2]))
    assert float(t["gain"]) == pytest.approx(r["speedup"], abs=5e-4)


def test_sensitivity_figures(study):
    _, res = study
    ch = next(d for d in res["sensitivity"] if d["name"] == "channels")
    ok = {v["label"]: v for v in ch["variants"] if v["status"] == "ok"}
    assert ok["8"]["relative_latency"] == 1.0
    assert ok["2"]["latency_us"] > ok["8"]["latency_us"] > ok["16"]["latency_us"]
    assert "32" in ok  # the ISA addresses 32 channels
    ctx = next(d for d in res["sensitivity"] if d["name"] == "context")
    by = {v["label"]: v for v in ctx["variants"]}
    assert by["1024"]["status"] == "skipped"  # tiny's context is 128 tokens
    assert by["128"]["status"] == "ok"


def test_accuracy_figures(study):
    _, res = study
    tiny = next(a for a in res["accuracy"] if a["model"] == "tiny")
    assert tiny["tokens"] == 40 and tiny["trained"]
    assert 0.8 <= tiny["top1_agreement"] <= 1.0
    assert 0 < tiny["max_abs_logit_error"] < 1.0
    assert tiny["perplexity_f32"] < 20  # trained on Python: far below the 256 of chance
    assert tiny["perplexity_diff"] == pytest.approx(tiny["perplexity_pim"] -
                                                    tiny["perplexity_f32"])


def test_report_is_deterministic(study, tmp_path):
    out, res = study
    again = tmp_path / "again"
    again.mkdir()
    write_report(res, again)
    for name in sorted(p.name for p in out.iterdir()):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_interpolation_weights():
    assert interpolation_weights([7]) == [1.0]
    ps = [0, 64, 500, 1023]
    w = interpolation_weights(ps)
    assert sum(w) == pytest.approx(1.0)
    # exact for linear functions: the mean of a + b x over 0..1023
    assert sum(wi * (3 + 2 * p) for wi, p in zip(w, ps)) == pytest.approx(3 + 2 * 511.5)
    assert interpolation_weights(list(range(5))) == pytest.approx([0.2] * 5)


def test_torch_baseline_matches_reference():
    pytest.importorskip("torch")
    from pimgpt.mapping.builtin import builtin_model
    from pimgpt.sim.reference import Float32GPT
    from pimgpt.study.baselines import TorchGPT
    f32 = Float32GPT(builtin_model("tiny"))
    tg = TorchGPT(f32, 8)
    ids = [10, 20, 30, 40]
    want = f32.forward(ids).argmax(-1)
    got = [tg.step(t, p) for p, t in enumerate(ids)]
    assert got == [int(x) for x in want]


@pytest.mark.parametrize("argv, message", [
    (["--models", "nope"], "unknown model 'nope'"),
    (["--models", ","], "--models needs at least one model"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--cpu-threads", "0"], "must be positive"),
    (["--sensitivity-model", "gpt9"], "unknown model 'gpt9'"),
])
def test_bad_input(tmp_path, capsys, argv, message):
    out = tmp_path / "r"
    assert main(["study", "--quick", "--out", str(out)] + argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pimgpt: error: ") and message in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_gpu_file(tmp_path, capsys):
    bad = tmp_path / "gpu.json"
    bad.write_text('{"format": "something else"}')
    out = tmp_path / "r"
    assert main(["study", "--quick", "--gpu-results", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a GPU baseline file" in err and err.count("\n") == 1
    assert not out.exists()


def test_bad_output_folder(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["study", "--quick", "--out", str(busy)]) == 2
    assert "not an earlier study report" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["study", "--quick", "--out", str(afile)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["study", "--quick", "--out", str(tmp_path / "no" / "dir")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "busy"]


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    text = capsys.readouterr().out
    assert "--quick" in text and "report.md" in text and "examples" in text
    assert re.search(r"T4", text)
