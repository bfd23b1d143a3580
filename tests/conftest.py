"""Session-wide fixtures shared by several test modules."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pimgpt.cli import main

#: lines for the run's "figures" section (simulator speeds and the like, kept in CI logs)
_FIGURES: list[str] = []


@pytest.fixture(scope="session")
def report_figure():
    """A function that adds one line to the figures printed at the end of the test run."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter) -> None:
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def tiny_verilog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every block for the ``tiny`` preset, written once per session by ``pimgpt verilog``
    (minutes, most of it the top): tests/test_gen.py checks the files, tests/test_system.py
    simulates their ``top``."""
    out = tmp_path_factory.mktemp("gen") / "rtl"
    t = time.monotonic()
    assert main(["verilog", "--preset", "tiny", "-o", str(out)]) == 0
    print(f"pimgpt verilog --preset tiny: {time.monotonic() - t:.0f} s")
    return out


@pytest.fixture(scope="session")
def rtl_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulator builds of the generated system (harness + top), shared by the session."""
    return tmp_path_factory.mktemp("rtl")
