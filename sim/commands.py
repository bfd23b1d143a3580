"""The ``pimgpt`` subcommands of the simulators (CLI glue only)."""

from __future__ import annotations

import argparse

from pimgpt.cli import print_json
from pimgpt.errors import PimgptError
from pimgpt.hdl.params import resolve_config


def cmd_check_trace(args: argparse.Namespace) -> int:
    """Check a DRAM command trace; exit 0 when clean, 1 with violations (2: bad input)."""
    from pimgpt.sim.trace import check_trace, read_trace_csv

    if args.max is not None and args.max < 0:
        raise PimgptError(f"--max must be >= 0, not {args.max}")
    config = resolve_config(args.preset, args.config)
    entries = read_trace_csv(args.trace)
    try:
        violations = check_trace(entries, config)
    except PimgptError as exc:
        raise PimgptError(f"{args.trace}: {exc}") from None
    shown = violations if args.max is None else violations[:args.max]
    channels = len({e.channel for e in entries})
    end = max((e.cycle for e in entries), default=0)
    if args.json:
        print_json({"trace": str(args.trace), "machine": config.name, "commands": len(entries),
                    "channels": channels, "end_cycle": end, "violation_count": len(violations),
                    "violations": [v.to_dict() for v in shown], "ok": not violations})
    else:
        for v in shown:
            print(v.message)
        more = f" (showing {len(shown)})" if len(shown) < len(violations) else ""
        verdict = f"{len(violations)} violation{'s' * (len(violations) != 1)}{more}" \
            if violations else "no violations"
        print(f"{args.trace}: {len(entries)} commands on {channels} channel"
              f"{'s' * (channels != 1)} to cycle {end} on machine '{config.name}': {verdict}")
    return 1 if violations else 0
