"""Busy intervals of the cycle simulator as a Chrome trace-event file (Perfetto, chrome://tracing).

One process holds the PIM channels (a thread per channel), another the ASIC vector unit. Every
interval is a complete event (``"ph": "X"``) named after its instruction, with ``ts`` and
``dur`` in microseconds of simulated time and the exact cycles in ``args``. A unit's intervals
may overlap (the vector pipeline, a read-out's latency tail under the next command), but complete
events on one thread must nest, so each event is drawn only up to the start of the next one on its
unit (``args.end_cycle`` keeps the true end). The output is deterministic and written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from pimgpt.errors import PimgptError
from pimgpt.fileio import atomic_output
from pimgpt.hdl.params import MachineConfig
from pimgpt.sim.cycle import Interval

#: Process ids of the two halves of the machine.
PID_PIM = 1
PID_ASIC = 2
#: Thread id of the vector unit inside the ASIC process.
TID_VECTOR = 0


def _where(unit: str, channels: int) -> tuple[int, int]:
    """(pid, tid) of a simulator unit name."""
    if unit == "vector":
        return PID_ASIC, TID_VECTOR
    if unit.startswith("ch") and unit[2:].isdigit() and int(unit[2:]) < channels:
        return PID_PIM, int(unit[2:])
    raise PimgptError(f"timeline: unknown unit {unit!r} (expected ch0..ch{channels - 1} or "
                      f"vector)")


def timeline_events(intervals: Iterable[Interval], config: MachineConfig) -> list[dict[str, Any]]:
    """The trace events: metadata first, then the intervals sorted by unit and time."""
    nc = config.geometry.channels
    mhz = float(config.clocks.dram_mhz)
    us = lambda cycles: round(cycles / mhz, 6)  # noqa: E731
    meta: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": PID_PIM, "tid": 0,
         "args": {"name": f"PIM channels ({config.name})"}},
        {"ph": "M", "name": "process_sort_index", "pid": PID_PIM, "tid": 0,
         "args": {"sort_index": 0}},
        {"ph": "M", "name": "process_name", "pid": PID_ASIC, "tid": 0,
         "args": {"name": "ASIC"}},
        {"ph": "M", "name": "process_sort_index", "pid": PID_ASIC, "tid": 0,
         "args": {"sort_index": 1}},
        {"ph": "M", "name": "thread_name", "pid": PID_ASIC, "tid": TID_VECTOR,
         "args": {"name": "vector unit"}},
    ]
    for c in range(nc):
        meta.append({"ph": "M", "name": "thread_name", "pid": PID_PIM, "tid": c,
                     "args": {"name": f"ch{c}"}})
        meta.append({"ph": "M", "name": "thread_sort_index", "pid": PID_PIM, "tid": c,
                     "args": {"sort_index": c}})
    rows = []
    for iv in intervals:
        if iv.end < iv.start:
            raise PimgptError(f"timeline: interval {iv.name} on {iv.unit} ends (cycle {iv.end}) "
                              f"before it starts (cycle {iv.start})")
        pid, tid = _where(iv.unit, nc)
        rows.append((pid, tid, iv.start, iv.end, iv.kind, iv.name))
    rows.sort()
    events = []
    for i, (pid, tid, start, end, kind, name) in enumerate(rows):
        shown = end
        if i + 1 < len(rows) and rows[i + 1][:2] == (pid, tid):
            shown = min(end, rows[i + 1][2])
        ts = us(start)
        events.append({"ph": "X", "name": name, "cat": kind, "pid": pid, "tid": tid, "ts": ts,
                       "dur": round(us(shown) - ts, 6),
                       "args": {"start_cycle": start, "end_cycle": end}})
    return meta + events


def write_timeline(path: str | Path, intervals: Iterable[Interval],
                   config: MachineConfig) -> int:
    """Write the intervals as Chrome trace-event JSON; returns the number of interval events."""
    events = timeline_events(intervals, config)
    body = ",\n".join(json.dumps(e, sort_keys=True, separators=(",", ":")) for e in events)
    other = json.dumps({"machine": config.name, "dram_mhz": float(config.clocks.dram_mhz),
                        "time_unit": "ts and dur in microseconds of simulated time"},
                       sort_keys=True, separators=(",", ":"))
    text = (f'{{"displayTimeUnit":"ns","otherData":{other},\n"traceEvents":[\n{body}\n]}}\n')
    with atomic_output(path) as fh:
        fh.write(text.encode())
    return sum(1 for e in events if e["ph"] == "X")
