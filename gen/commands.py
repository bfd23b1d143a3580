"""The ``pimgpt verilog`` and ``pimgpt synth`` subcommands (CLI glue only)."""

from __future__ import annotations

import argparse
import sys

from pimgpt.cli import print_json
from pimgpt.hdl.params import MachineConfig, resolve_config


def _config(args: argparse.Namespace) -> MachineConfig:
    return resolve_config(getattr(args, "preset", None), getattr(args, "config", None))


def cmd_verilog(args: argparse.Namespace) -> int:
    from pimgpt.gen.verilog import block_names, check_blocks, write_verilog

    blocks = check_blocks(args.block) if args.block else block_names()
    config = _config(args)
    for path in write_verilog(config, args.output, blocks):
        print(path)
    return 0


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_synth(args: argparse.Namespace) -> int:
    from pimgpt.gen.synth import TARGETS, synth
    from pimgpt.gen.verilog import block_names, check_blocks
    from pimgpt.errors import PimgptError

    if args.target not in TARGETS:
        raise PimgptError(f"unknown target {args.target!r} (known: {', '.join(TARGETS)})")
    blocks = check_blocks(args.block) if args.block else block_names()
    config = _config(args)
    results = []
    for block in blocks:
        # progress goes to stderr, also with --json (whose stdout is the report alone)
        results.append(synth(config, block, args.target, progress=_progress))
    if args.json:
        print_json({"results": results})
        return 0
    generic = args.target == "generic"
    if generic:
        header = ("block", "cells", "LUT4-eq", "FFs", "memories", "memory bits", "seconds")
        rows = [(r["block"], r["cells"], r["lut4_equiv"], r["ffs"], r["memories"],
                 r["memory_bits"], r["seconds"]["total"]) for r in results]
    else:
        header = ("block", "cells", "LUTs", "FFs", "DSPs", "BRAMs", "Fmax MHz")
        rows = [(r["block"], r["cells"], r["luts"], r["ffs"], r["dsps"], r["brams"],
                 r["fmax_mhz"]) for r in results]
    widths = [max(len(_fmt(x)) for x in col) for col in zip(header, *rows)]
    device = results[0].get("device")
    where = f" ({device['device']} speed {device['speed']}, {device['package']})" if device else ""
    print(f"{args.target}{where}, config {config.name} ({config.hash[:12]})")
    for row in (header, *rows):
        print("  ".join(_fmt(x).rjust(w) if i else _fmt(x).ljust(w)
                        for i, (x, w) in enumerate(zip(row, widths))))
    if generic:
        print("LUT4-eq: the gate netlist mapped onto 4-input LUTs (abc -lut 4); memories are "
              "kept as memories, not expanded into flip-flops")
        for r in results:
            print(f"{r['block']}: {r['method']}")
    return 0
