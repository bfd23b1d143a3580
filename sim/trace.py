"""DRAM command traces: CSV I/O and the checker of every timing and protocol rule.

A trace is the command stream the ASIC issues to the PIM channels (written by the cycle
simulator). :func:`check_trace` replays it against :data:`pimgpt.hdl.timing.RULES`, the tFAW
window, the refresh requirement and the bank-state protocol (docs/timing.md) in one pass: it
keeps, per channel and per rule command, the latest issue per bank, per bank group and per
channel, a deque of the last activations and a refresh count, so a trace checks in linear time.

Lines are numbered as in the CSV file: line 1 is the header, entry ``i`` is on line ``i + 2``.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

from pimgpt.errors import PimgptError
from pimgpt.fileio import atomic_output
from pimgpt.hdl.params import MachineConfig
from pimgpt.hdl.timing import (ALL_BANK_CMDS, CHANNEL_CMDS, COLUMN_CMDS, COLUMN_OPERAND_CMDS, FAW,
                               REFRESH, ROW_OPERAND_CMDS, RULE_CMDS, RULES, DramCmd, Scope,
                               rule_cmd)

#: The CSV header, exactly.
HEADER = "cycle,channel,command,bank,row,column"
_FIELDS = HEADER.split(",")
_BY_NAME = {c.name: c for c in DramCmd}
#: Line number of entry 0 (the header is line 1).
FIRST_LINE = 2


class TraceEntry(NamedTuple):
    """One command: ``bank`` is None for all-bank (``*``) and channel commands (WRGB, RDMAC);
    ``row``/``column`` None where the command has none."""

    cycle: int
    channel: int
    cmd: DramCmd
    bank: int | None
    row: int | None
    column: int | None

    def describe(self) -> str:
        """``cycle 140, ch 0, MAC16 bank * row 5 col 3``."""
        parts = [f"cycle {self.cycle}, ch {self.channel}, {self.cmd.name}"]
        if self.cmd in ALL_BANK_CMDS:
            parts.append("bank *")
        elif self.cmd not in CHANNEL_CMDS:
            parts.append(f"bank {self.bank}")
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"col {self.column}")
        return " ".join(parts)


def _shape_error(e: TraceEntry) -> str | None:
    """What is wrong with which operands ``e`` carries, or None."""
    cmd = e.cmd
    if not isinstance(cmd, DramCmd):
        return f"unknown command {cmd!r}"
    if cmd in ALL_BANK_CMDS or cmd in CHANNEL_CMDS:
        if e.bank is not None:
            kind = "an all-bank command" if cmd in ALL_BANK_CMDS else "a channel command"
            return f"{cmd.name} is {kind}: its bank must be None, not {e.bank}"
    elif e.bank is None:
        return f"{cmd.name} needs a bank number"
    if (e.row is not None) != (cmd in ROW_OPERAND_CMDS):
        return (f"{cmd.name} needs a row" if e.row is None
                else f"{cmd.name} takes no row (found {e.row})")
    if (e.column is not None) != (cmd in COLUMN_OPERAND_CMDS):
        return (f"{cmd.name} needs a column" if e.column is None
                else f"{cmd.name} takes no column (found {e.column})")
    return None


# --- CSV -----------------------------------------------------------------------------------------

def write_trace_csv(path: str | Path, entries: Iterable[TraceEntry]) -> None:
    """Write a trace atomically (a failure leaves no file)."""
    with atomic_output(path) as fh:
        out = [HEADER]
        for i, e in enumerate(entries):
            problem = _shape_error(e)
            if problem:
                raise PimgptError(f"trace entry {i} ({e}): {problem}")
            bank = "*" if e.cmd in ALL_BANK_CMDS else ("" if e.bank is None else str(e.bank))
            row = "" if e.row is None else str(e.row)
            col = "" if e.column is None else str(e.column)
            out.append(f"{e.cycle},{e.channel},{e.cmd.name},{bank},{row},{col}")
        fh.write(("\n".join(out) + "\n").encode())


def _int(text: str, what: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise PimgptError(f"{where}: {what} {text!r} is not an integer") from None
    if value < 0:
        raise PimgptError(f"{where}: {what} {value} is negative")
    return value


def read_trace_csv(path: str | Path) -> list[TraceEntry]:
    """Read a trace; a malformed line is a :class:`PimgptError` naming the file and line.

    Ranges (channel, bank, row, column) depend on the machine and are checked by
    :func:`check_trace`.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline=None) as fh:
            text = fh.read()
    except FileNotFoundError:
        raise PimgptError(f"trace file not found: {path}") from None
    except IsADirectoryError:
        raise PimgptError(f"trace path is a directory: {path}") from None
    except UnicodeDecodeError:
        raise PimgptError(f"{path}: not a trace (not UTF-8 text)") from None
    except OSError as exc:
        raise PimgptError(f"cannot read trace file {path}: {exc.strerror}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise PimgptError(f"{path}: empty file (expected the header {HEADER!r})")
    if [f.strip() for f in lines[0].split(",")] != _FIELDS:
        raise PimgptError(f"{path}: line 1: bad header {lines[0][:80]!r} (expected {HEADER!r})")
    entries: list[TraceEntry] = []
    last_cycle: dict[int, tuple[int, int]] = {}
    for n, line in enumerate(lines[1:], start=FIRST_LINE):
        where = f"{path}: line {n}"
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(_FIELDS):
            if not line.strip():
                raise PimgptError(f"{where}: empty line")
            raise PimgptError(f"{where}: expected {len(_FIELDS)} fields ({HEADER}), "
                              f"found {len(fields)}")
        c_s, ch_s, cmd_s, bank_s, row_s, col_s = fields
        cmd = _BY_NAME.get(cmd_s)
        if cmd is None:
            raise PimgptError(f"{where}: unknown command {cmd_s!r} "
                              f"(known: {', '.join(_BY_NAME)})")
        cycle = _int(c_s, "cycle", where)
        channel = _int(ch_s, "channel", where)
        if cmd in ALL_BANK_CMDS:
            if bank_s != "*":
                raise PimgptError(f"{where}: {cmd.name} is an all-bank command: its bank must "
                                  f"be '*', not {bank_s!r}")
            bank = None
        elif cmd in CHANNEL_CMDS:
            if bank_s != "":
                raise PimgptError(f"{where}: {cmd.name} addresses no bank: its bank must be "
                                  f"empty, not {bank_s!r}")
            bank = None
        else:
            bank = _int(bank_s, "bank", where)
        row = None if row_s == "" else _int(row_s, "row", where)
        col = None if col_s == "" else _int(col_s, "column", where)
        e = TraceEntry(cycle, channel, cmd, bank, row, col)
        problem = _shape_error(e)
        if problem:
            raise PimgptError(f"{where}: {problem}")
        prev = last_cycle.get(channel)
        if prev is not None and cycle < prev[0]:
            raise PimgptError(f"{where}: cycle {cycle} on channel {channel} goes backwards "
                              f"(line {prev[1]} is at cycle {prev[0]})")
        last_cycle[channel] = (cycle, n)
        entries.append(e)
    return entries


# --- checking ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Violation:
    """A broken rule: ``entry`` (on ``line``; None: the end of the trace) against ``first``.

    ``rule`` is the rule's formula (``tRCD_MAC``, ``tCL+tBL-tCWL``), ``tFAW``, ``tREFI``,
    ``protocol`` or ``command bus``.
    """

    rule: str
    line: int | None
    entry: TraceEntry | None
    first_line: int | None = None
    first: TraceEntry | None = None
    distance: int | None = None
    required: int | None = None
    detail: str = ""
    end_cycle: int | None = None

    @property
    def message(self) -> str:
        """One line naming both commands and the rule."""
        head = (f"line {self.line} ({self.entry.describe()})" if self.entry is not None
                else f"end of trace (cycle {self.end_cycle})")
        if self.rule in ("protocol", "tREFI", "command bus"):
            return f"{head}: {self.detail}"
        assert self.first is not None
        tail = f" with {FAW.count - 1} activations between" if self.rule == FAW.term else ""
        return (f"{head} follows line {self.first_line} ({self.first.describe()}) by "
                f"{self.distance} cycles{tail}; {self.rule} requires {self.required}")

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        def ent(e: TraceEntry | None) -> dict[str, Any] | None:
            if e is None:
                return None
            return {"cycle": e.cycle, "channel": e.channel, "command": e.cmd.name,
                    "bank": "*" if e.cmd in ALL_BANK_CMDS else e.bank, "row": e.row,
                    "column": e.column}
        return {"rule": self.rule, "line": self.line, "entry": ent(self.entry),
                "first_line": self.first_line, "first": ent(self.first),
                "distance": self.distance, "required": self.required,
                "message": self.message}


_NONE = -1
_CLOSED = -1
_KIND = {c: RULE_CMDS.index(rule_cmd(c)) for c in DramCmd}
_ACT_KIND = _KIND[DramCmd.ACT]
_SCOPE_BANK, _SCOPE_GROUP, _SCOPE_CHANNEL = Scope.BANK, Scope.GROUP, Scope.CHANNEL


class _Channel:
    """Per-channel state: latest entry index per rule command and bank/group/channel, open
    rows, the activation window and the refresh count."""

    __slots__ = ("last_bank", "last_group", "last_all", "last_chan", "open_row", "open_line",
                 "uniform", "faw", "refs", "behind", "last_idx")

    def __init__(self, banks: int, groups: int) -> None:
        k = len(RULE_CMDS)
        self.last_bank = [[_NONE] * banks for _ in range(k)]  # single-bank instances
        self.last_group = [[_NONE] * groups for _ in range(k)]  # single-bank instances
        self.last_all = [_NONE] * k  # all-bank instances
        self.last_chan = [_NONE] * k  # any instance
        self.open_row = [_CLOSED] * banks
        self.open_line = [0] * banks
        self.uniform: int | None = _CLOSED  # row open in every bank (or _CLOSED), None: mixed
        self.faw: collections.deque[int] = collections.deque(maxlen=FAW.count)
        self.refs = 0
        self.behind = False
        self.last_idx = _NONE


def check_trace(entries: Sequence[TraceEntry], config: MachineConfig) -> list[Violation]:
    """Every timing and protocol violation of ``entries`` on ``config``, in trace order.

    For each command and each earlier command it conflicts with, the largest broken rule is
    reported. Operands out of the machine's range, or cycles going backwards within a channel,
    are a :class:`PimgptError` (bad input, not a violation).
    """
    geo = config.geometry
    nbanks, ngroups = geo.banks_per_channel, geo.bank_groups
    per_group = nbanks // ngroups
    group_of = [b // per_group for b in range(nbanks)]
    others = [[h for h in range(ngroups) if h != g] for g in range(ngroups)]
    # by second kind: (first kind, scope, cycles, rule name), largest first
    table: list[list[tuple[int, Scope, int, str]]] = [[] for _ in RULE_CMDS]
    for r in RULES:
        table[_KIND[r.second]].append((_KIND[r.first], r.scope, r.cycles(config), r.name))
    for rows in table:
        rows.sort(key=lambda x: -x[2])
    faw_need = FAW.cycles(config)
    trefi = REFRESH.interval(config)
    postponed = REFRESH.max_postponed
    chans = [_Channel(nbanks, ngroups) for _ in range(geo.channels)]
    cycles = [0] * len(entries)
    out: list[Violation] = []

    def line(i: int) -> int:
        return i + FIRST_LINE

    def protocol(i: int, detail: str) -> None:
        out.append(Violation("protocol", line(i), entries[i], detail=detail))

    for i, e in enumerate(entries):
        cycle, chn, cmd, bank, row, col = e
        if not (0 <= chn < geo.channels):
            raise PimgptError(f"line {line(i)}: channel {chn} is out of range for machine "
                              f"'{config.name}' ({geo.channels} channels)")
        if cycle < 0:
            raise PimgptError(f"line {line(i)}: cycle {cycle} is negative")
        problem = _shape_error(e)
        if problem:
            raise PimgptError(f"line {line(i)}: {problem}")
        _check_ranges(e, i, config)
        cycles[i] = cycle
        ch = chans[chn]
        prev = ch.last_idx
        if prev != _NONE:
            if cycle < cycles[prev]:
                raise PimgptError(f"line {line(i)}: cycle {cycle} on channel {chn} goes "
                                  f"backwards (line {line(prev)} is at cycle {cycles[prev]})")
            if cycle == cycles[prev]:
                out.append(Violation("command bus", line(i), e, detail=(
                    f"shares cycle {cycle} with line {line(prev)} ({entries[prev].describe()}); "
                    "one command per channel per cycle")))
        ch.last_idx = i
        kind = _KIND[cmd]
        single = bank is not None

        # timing rules: for each earlier command in scope, the largest broken rule
        worst: dict[int, tuple[int, str]] | None = None
        last_all = ch.last_all
        last_chan = ch.last_chan
        for fk, scope, need, name in table[kind]:
            if not single or scope is _SCOPE_CHANNEL:
                j = last_chan[fk]
            elif scope is _SCOPE_BANK:
                j = max(ch.last_bank[fk][bank], last_all[fk])
            elif scope is _SCOPE_GROUP:
                j = max(ch.last_group[fk][group_of[bank]], last_all[fk])
            else:
                lg = ch.last_group[fk]
                j = last_all[fk]
                for h in others[group_of[bank]]:
                    if lg[h] > j:
                        j = lg[h]
            if j != _NONE and cycle - cycles[j] < need:
                if worst is None:
                    worst = {}
                if j not in worst:  # rows are sorted largest first
                    worst[j] = (need, name)
        if worst:
            for j in sorted(worst):
                need, name = worst[j]
                out.append(Violation(name, line(i), e, line(j), entries[j], cycle - cycles[j],
                                     need))

        # four-activate window
        if kind == _ACT_KIND:
            faw = ch.faw
            if len(faw) == FAW.count and cycle - cycles[faw[0]] < faw_need:
                j = faw[0]
                out.append(Violation(FAW.term, line(i), e, line(j), entries[j],
                                     cycle - cycles[j], faw_need))
            faw.append(i)

        # bank-state protocol
        if cmd is DramCmd.ACT:
            if ch.open_row[bank] != _CLOSED:
                protocol(i, f"ACT to bank {bank}, which has row {ch.open_row[bank]} open "
                            f"(since line {ch.open_line[bank]})")
            ch.open_row[bank] = row
            ch.open_line[bank] = line(i)
            ch.uniform = None
        elif cmd is DramCmd.ACT16:
            b = _first_open(ch)
            if b is not None:
                protocol(i, f"ACT16 while bank {b} has row {ch.open_row[b]} open "
                            f"(since line {ch.open_line[b]})")
            ch.open_row = [row] * nbanks
            ch.open_line = [line(i)] * nbanks
            ch.uniform = row
        elif cmd is DramCmd.PRE:
            ch.open_row[bank] = _CLOSED
            ch.uniform = None
        elif cmd is DramCmd.PREA:
            ch.open_row = [_CLOSED] * nbanks
            ch.uniform = _CLOSED
        elif cmd in COLUMN_CMDS:
            if single:
                have = ch.open_row[bank]
                if have != row:
                    protocol(i, _column_problem(cmd.name, bank, row, have, ch.open_line[bank]))
            elif _uniform(ch) != row:
                for b in range(nbanks):
                    if ch.open_row[b] != row:
                        protocol(i, _column_problem(cmd.name, b, row, ch.open_row[b],
                                                    ch.open_line[b]))
                        break
        elif cmd is DramCmd.REF:
            b = _first_open(ch)
            if b is not None:
                protocol(i, f"REF while bank {b} has row {ch.open_row[b]} open "
                            f"(since line {ch.open_line[b]})")
            ch.refs += 1

        # refresh: report when a channel falls behind, again only after it has caught up
        required = cycle // trefi - postponed
        if ch.refs < required:
            if not ch.behind:
                ch.behind = True
                out.append(Violation(REFRESH.term, line(i), e, detail=_refresh_detail(
                    chn, ch.refs, cycle, required)))
        else:
            ch.behind = False

        # record the issue
        if single:
            ch.last_bank[kind][bank] = i
            ch.last_group[kind][group_of[bank]] = i
        elif cmd in ALL_BANK_CMDS:
            last_all[kind] = i
        last_chan[kind] = i

    if entries:
        end = max(cycles)
        required = end // trefi - postponed
        for chn, ch in enumerate(chans):
            if ch.refs < required:
                out.append(Violation(REFRESH.term, None, None, end_cycle=end,
                                     detail=_refresh_detail(chn, ch.refs, end, required)))
    return out


def _check_ranges(e: TraceEntry, i: int, config: MachineConfig) -> None:
    geo = config.geometry
    where = f"line {i + FIRST_LINE}"
    if e.bank is not None and not 0 <= e.bank < geo.banks_per_channel:
        raise PimgptError(f"{where}: bank {e.bank} is out of range for machine '{config.name}' "
                          f"({geo.banks_per_channel} banks per channel)")
    if e.row is not None and not 0 <= e.row < geo.rows:
        raise PimgptError(f"{where}: row {e.row} is out of range for machine '{config.name}' "
                          f"({geo.rows} rows per bank)")
    if e.column is not None:
        limit, what = ((geo.gb_cols, "global-buffer columns") if e.cmd is DramCmd.WRGB
                       else (geo.cols_per_row, "columns per row"))
        if not 0 <= e.column < limit:
            raise PimgptError(f"{where}: column {e.column} is out of range for machine "
                              f"'{config.name}' ({limit} {what})")


def _first_open(ch: _Channel) -> int | None:
    if ch.uniform == _CLOSED:
        return None
    for b, r in enumerate(ch.open_row):
        if r != _CLOSED:
            return b
    ch.uniform = _CLOSED
    return None


def _uniform(ch: _Channel) -> int | None:
    """The row open in every bank (``_CLOSED`` if all are closed), None when they differ."""
    if ch.uniform is None:
        rows = set(ch.open_row)
        ch.uniform = rows.pop() if len(rows) == 1 else None
    return ch.uniform


def _column_problem(name: str, bank: int, row: int, have: int, since: int) -> str:
    if have == _CLOSED:
        return f"{name} to bank {bank}, which is precharged (no row open)"
    return f"{name} to row {row} of bank {bank}, which has row {have} open (since line {since})"


def _refresh_detail(chn: int, refs: int, cycle: int, required: int) -> str:
    return (f"channel {chn} has issued {refs} REF by cycle {cycle}; {REFRESH.term} requires "
            f"at least {required} (floor({cycle} / {REFRESH.term}) - {REFRESH.max_postponed} "
            f"postponed)")
