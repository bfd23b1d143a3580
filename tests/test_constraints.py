"""SDC and board constraints (constraints/): derived from the configuration, deterministic, the
committed files current, bad output paths refused with one error line and nothing written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pimgpt.cli import main
from pimgpt.constraints.board import LPF_NAME, prototype_lpf
from pimgpt.constraints.commands import constraint_files
from pimgpt.constraints.sdc import BLOCK_DOMAIN, IO_BUDGET, sdc
from pimgpt.gen.verilog import BLOCKS
from pimgpt.hdl.params import preset

FOLDER = Path(__file__).resolve().parent.parent / "constraints"


@pytest.mark.parametrize("name", ["paper", "tiny"])
def test_committed_files_are_current(name: str) -> None:
    for fname, text in constraint_files(preset(name)).items():
        assert (FOLDER / fname).read_text() == text, f"constraints/{fname} is stale: run " \
            f"'pimgpt constraints --preset {name} -o constraints'"


def test_periods_follow_the_clocks() -> None:
    cfg = preset("paper")
    slow = cfg.replace(name="slow", clocks=cfg.clocks.__class__(
        **{**cfg.clocks.__dict__, "asic_mhz": 100.0}))
    for config in (cfg, slow):
        for domain, mhz in (("asic", config.clocks.asic_mhz), ("dram", config.clocks.dram_mhz)):
            text = sdc(config, domain)
            period = float(re.search(r"create_clock -name \w+ -period ([\d.]+) \[get_ports clk\]",
                                     text).group(1))
            assert period == pytest.approx(1000.0 / mhz)
            delay = float(re.search(r"set_output_delay -clock \w+ ([\d.]+)", text).group(1))
            assert delay == pytest.approx(IO_BUDGET * period, abs=1e-4)
            assert config.hash[:16] in text
    assert "period 10.0000" in sdc(slow, "asic")


def test_every_block_has_a_clock_domain() -> None:
    assert set(BLOCKS) <= set(BLOCK_DOMAIN)


def test_board_file() -> None:
    lpf = prototype_lpf()
    assert lpf == prototype_lpf()  # deterministic
    assert 'LOCATE COMP "clk25_0__io" SITE "G2";' in lpf
    assert 'FREQUENCY PORT "clk25_0__io" 25000000.0 HZ;' in lpf
    assert len(re.findall(r'LOCATE COMP "led_\d__io"', lpf)) == 8
    assert 'LOCATE COMP "uart_0__tx__io"' in lpf


def test_command_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "c"
    assert main(["constraints", "--preset", "tiny", "-o", str(out)]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in written) == sorted(["tiny-asic.sdc", "tiny-dram.sdc",
                                                            LPF_NAME])
    for p in written:
        assert Path(p).read_text() == (FOLDER / Path(p).name).read_text()


def test_bad_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "f").write_text("x")
    for target, msg in ((tmp_path / "f", "output path exists and is not a directory"),
                        (tmp_path / "no" / "c", "parent of the output directory does not exist")):
        assert main(["constraints", "-o", str(target)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and msg in err, err
    assert main(["constraints", "--preset", "huge", "-o", str(tmp_path / "x")]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
