"""The DRAM command set of a PIM-GPT channel and THE table of timing rules between its commands.

The cycle simulator, the trace checker (:mod:`pimgpt.sim.trace`) and the RTL sequencer all read
:data:`RULES`, :data:`FAW` and :data:`REFRESH` from here; ``docs/timing.md`` is generated from this
module (``python -m pimgpt.hdl.timing -o docs/timing.md``).

Conventions (also stated in the generated document):

- A rule bounds ``second.cycle - first.cycle`` for two commands of the *same channel* (channels
  are independent), in DRAM command-clock cycles (``clocks.dram_mhz``). Its distance is the sum
  of the named :class:`~pimgpt.hdl.params.Timing` fields, each converted by
  :func:`~pimgpt.hdl.params.ns_to_cycles` separately, a leading ``-`` subtracting; floored at 0.
- Rules name single-bank commands. An all-bank command acts as its single-bank form issued to
  every bank of the channel (:data:`SINGLE_BANK_FORM`: an ACT16 is an ACT of every bank, PREA a
  PRE, MAC16 a MAC, WR16 a WR); REF acts on every bank. :func:`rule_cmd` gives the form a command
  is matched as.
- Scopes say which pairs a rule covers; :attr:`Scope.GROUP` includes the same bank. Every
  applicable rule must hold, so the largest binds: for ACT to the same bank, the BANK rule tRC
  dominates the GROUP rule tRRD_L.
- Data-bus commands put one burst (tBL) on the channel's data bus a fixed latency after issue
  (:data:`DATA_LATENCY`); the rules keep bursts in command order and apart.
- At most one command per channel per cycle (one command bus).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from amaranth.lib import enum

from pimgpt.errors import PimgptError
from pimgpt.fileio import doc_main
from pimgpt.hdl.params import PAPER, MachineConfig, Timing, ns_to_cycles


class DramCmd(enum.Enum, shape=4):
    """Commands the ASIC issues to one PIM channel."""

    ACT = 0  # activate a row of one bank
    ACT16 = 1  # activate the same row in every bank of the channel
    PRE = 2  # precharge (close) one bank
    PREA = 3  # precharge every bank
    RD = 4  # read one column (burst) of one bank's open row
    WR = 5  # write one column of one bank's open row
    MAC = 6  # one bank: one column of its open row times one global-buffer column
    MAC16 = 7  # MAC in every bank (same row, same column)
    WRGB = 8  # write one global-buffer column over the data bus
    RDMAC = 9  # read the channel's bank MAC result registers (one burst)
    WR16 = 10  # one burst writing one BF16 value into the same column of every bank
    REF = 11  # all-bank refresh


#: Commands that act on every bank of the channel (trace bank field ``*``).
ALL_BANK_CMDS: frozenset[DramCmd] = frozenset(
    {DramCmd.ACT16, DramCmd.PREA, DramCmd.MAC16, DramCmd.WR16, DramCmd.REF})
#: Commands addressed to one bank (trace bank field: the bank number).
SINGLE_BANK_CMDS: frozenset[DramCmd] = frozenset(
    {DramCmd.ACT, DramCmd.PRE, DramCmd.RD, DramCmd.WR, DramCmd.MAC})
#: Commands of the channel logic that address no bank (trace bank field empty).
CHANNEL_CMDS: frozenset[DramCmd] = frozenset({DramCmd.WRGB, DramCmd.RDMAC})
#: Row commands: open, close or refresh rows.
ROW_CMDS: frozenset[DramCmd] = frozenset(
    {DramCmd.ACT, DramCmd.ACT16, DramCmd.PRE, DramCmd.PREA, DramCmd.REF})
#: Column commands: access one column of the open row (they carry row and column; the bank
#: must be open on that row).
COLUMN_CMDS: frozenset[DramCmd] = frozenset(
    {DramCmd.RD, DramCmd.WR, DramCmd.MAC, DramCmd.MAC16, DramCmd.WR16})
#: Commands that carry a row (ACTs open it; column commands name the row they expect open).
ROW_OPERAND_CMDS: frozenset[DramCmd] = frozenset({DramCmd.ACT, DramCmd.ACT16}) | COLUMN_CMDS
#: Commands that carry a column: a bank column (column commands) or a global-buffer one (WRGB).
COLUMN_OPERAND_CMDS: frozenset[DramCmd] = COLUMN_CMDS | {DramCmd.WRGB}
#: Commands that move one burst over the channel's data bus.
DATA_BUS_CMDS: frozenset[DramCmd] = frozenset(
    {DramCmd.RD, DramCmd.WR, DramCmd.WRGB, DramCmd.RDMAC, DramCmd.WR16})
#: Data-bus commands whose burst flows from the channel to the ASIC, and the other way.
READ_TYPE_CMDS: frozenset[DramCmd] = frozenset({DramCmd.RD, DramCmd.RDMAC})
WRITE_TYPE_CMDS: frozenset[DramCmd] = frozenset({DramCmd.WR, DramCmd.WRGB, DramCmd.WR16})

#: The single-bank command each all-bank command is matched as (applied to every bank).
SINGLE_BANK_FORM: dict[DramCmd, DramCmd] = {
    DramCmd.ACT16: DramCmd.ACT, DramCmd.PREA: DramCmd.PRE,
    DramCmd.MAC16: DramCmd.MAC, DramCmd.WR16: DramCmd.WR,
}
#: Commands that rules name (the others are matched through :data:`SINGLE_BANK_FORM`).
RULE_CMDS: tuple[DramCmd, ...] = tuple(c for c in DramCmd if c not in SINGLE_BANK_FORM)

#: Timing field giving the delay from issue to the command's burst on the data bus.
DATA_LATENCY: dict[DramCmd, str] = {
    DramCmd.RD: "tCL", DramCmd.RDMAC: "tCL_REG",
    DramCmd.WR: "tCWL", DramCmd.WR16: "tCWL", DramCmd.WRGB: "tCWL_GB",
}


def rule_cmd(cmd: DramCmd) -> DramCmd:
    """The command ``cmd`` is matched as in :data:`RULES` (all-bank forms map to single-bank)."""
    return SINGLE_BANK_FORM.get(cmd, cmd)


class Scope(enum.Enum, shape=2):
    """Which pairs of commands of one channel a rule covers.

    A bank's group is ``bank // (banks_per_channel // bank_groups)``; an all-bank command is in
    every bank, so with an all-bank command every scope applies.
    """

    BANK = 0  # the same bank
    GROUP = 1  # the same bank group, the same bank included
    OTHER_GROUP = 2  # different bank groups
    CHANNEL = 3  # any two commands of the channel


def bank_group(bank: int, config: MachineConfig) -> int:
    """The bank group of ``bank`` (a bank index within its channel)."""
    g = config.geometry
    return bank // (g.banks_per_channel // g.bank_groups)


@dataclass(frozen=True)
class Rule:
    """``second`` may issue no earlier than ``sum(terms)`` cycles after ``first``, in ``scope``."""

    first: DramCmd
    second: DramCmd
    scope: Scope
    terms: tuple[str, ...]
    why: str = ""

    @property
    def name(self) -> str:
        """The distance as a formula, e.g. ``tCWL+tBL+tWR`` (how violations name the rule)."""
        return "".join(t if t.startswith("-") or i == 0 else "+" + t
                       for i, t in enumerate(self.terms))

    def cycles(self, config: MachineConfig) -> int:
        """Minimum distance in command-clock cycles of ``config`` (each term rounded up)."""
        return terms_cycles(self.terms, config)


def terms_cycles(terms: Sequence[str], config: MachineConfig) -> int:
    """Sum of signed timing terms, each converted to cycles separately, floored at 0."""
    total = 0
    for term in terms:
        name = term.removeprefix("-")
        value = ns_to_cycles(getattr(config.timing, name), config.clocks.dram_mhz)
        total += -value if term.startswith("-") else value
    return max(total, 0)


@dataclass(frozen=True)
class WindowRule:
    """At most ``count`` commands matched as ``cmd`` in any window of ``term`` (per channel):
    the ``count + 1``-th must be at least ``term`` cycles after the first of the previous
    ``count``. An ACT16 counts as one activation, as AiM's all-bank activate does."""

    cmd: DramCmd
    count: int
    term: str

    def cycles(self, config: MachineConfig) -> int:
        return terms_cycles((self.term,), config)


@dataclass(frozen=True)
class RefreshRule:
    """All-bank refresh: on every channel the REFs issued by cycle ``t`` (inclusive) must be at
    least ``floor(t / term) - max_postponed``; checked at every command of the channel and, for
    every channel of the machine, at the last cycle of the trace."""

    cmd: DramCmd
    max_postponed: int
    term: str

    def interval(self, config: MachineConfig) -> int:
        """The refresh interval in cycles."""
        return max(terms_cycles((self.term,), config), 1)

    def required(self, cycle: int, config: MachineConfig) -> int:
        """REFs a channel must have issued by ``cycle``."""
        return max(cycle // self.interval(config) - self.max_postponed, 0)


def _rules() -> tuple[Rule, ...]:
    C = DramCmd
    S = Scope
    out: list[Rule] = [
        Rule(C.ACT, C.ACT, S.BANK, ("tRC",), "row cycle"),
        Rule(C.ACT, C.ACT, S.GROUP, ("tRRD_L",), "activate to activate, same group"),
        Rule(C.ACT, C.ACT, S.OTHER_GROUP, ("tRRD_S",), "activate to activate, other group"),
        Rule(C.ACT, C.PRE, S.BANK, ("tRAS",), "row restore before precharge"),
        Rule(C.PRE, C.ACT, S.BANK, ("tRP",), "precharge"),
        Rule(C.ACT, C.RD, S.BANK, ("tRCD_RD",), "row to column (read)"),
        Rule(C.ACT, C.WR, S.BANK, ("tRCD_WR",), "row to column (write)"),
        Rule(C.ACT, C.MAC, S.BANK, ("tRCD_MAC",), "row to column (MAC)"),
        Rule(C.RD, C.PRE, S.BANK, ("tRTP",), "read to precharge"),
        Rule(C.MAC, C.PRE, S.BANK, ("tRTP",), "MAC reads like RD"),
        Rule(C.WR, C.PRE, S.BANK, ("tCWL", "tBL", "tWR"), "write recovery"),
    ]
    column = (C.RD, C.WR, C.MAC)
    for a in column:
        for b in column:
            out.append(Rule(a, b, S.GROUP, ("tCCD_L",), "column to column, same group"))
            out.append(Rule(a, b, S.OTHER_GROUP, ("tCCD_S",), "column to column, other group"))
    for b in (C.RD, C.MAC):
        out.append(Rule(C.WR, b, S.GROUP, ("tCWL", "tBL", "tWTR_L"),
                        "write to read turnaround, same group"))
        out.append(Rule(C.WR, b, S.OTHER_GROUP, ("tCWL", "tBL", "tWTR_S"),
                        "write to read turnaround, other group"))
    bus = (C.RD, C.WR, C.WRGB, C.RDMAC)
    for a in bus:
        for b in bus:
            out.append(Rule(a, b, S.CHANNEL, ("tBL",), "one burst at a time on the data bus"))
    for a in bus:
        for b in bus:
            la, lb = DATA_LATENCY[a], DATA_LATENCY[b]
            if la != lb:
                out.append(Rule(a, b, S.CHANNEL, (la, "tBL", "-" + lb),
                                "data-bus bursts in command order"))
    out += [
        Rule(C.WRGB, C.MAC, S.CHANNEL, ("tCWL_GB", "tBL"), "buffer data has arrived"),
        Rule(C.MAC, C.RDMAC, S.CHANNEL, ("tCCD_L",), "accumulators settle"),
        Rule(C.RDMAC, C.MAC, S.CHANNEL, ("tCL_REG",), "registers read before reuse"),
        Rule(C.PRE, C.REF, S.BANK, ("tRP",), "banks precharged before refresh"),
    ]
    for b in RULE_CMDS:
        out.append(Rule(C.REF, b, S.CHANNEL, ("tRFC",), "refresh cycle"))
    return tuple(out)


#: THE timing-rule table: minimum command-to-command distances within one channel.
RULES: tuple[Rule, ...] = _rules()
#: Four-activate window: at most 4 ACT/ACT16 in any tFAW (an ACT16 is one activation).
FAW = WindowRule(DramCmd.ACT, 4, "tFAW")
#: Refresh: at most 8 all-bank REFs postponed, tREFI apart on average.
REFRESH = RefreshRule(DramCmd.REF, 8, "tREFI")


def _check_rules() -> None:
    """Guard the table's invariants (run at import): a broken edit fails loudly."""
    fields = {f.name for f in dataclasses.fields(Timing)}
    seen: set[tuple] = set()
    for r in RULES:
        for term in r.terms:
            if term.removeprefix("-") not in fields:
                raise PimgptError(f"timing rule {r}: unknown timing field {term!r}")
        for cmd in (r.first, r.second):
            if cmd not in RULE_CMDS:
                raise PimgptError(f"timing rule {r}: name {rule_cmd(cmd).name}, not {cmd.name}")
            if r.scope != Scope.CHANNEL and cmd in CHANNEL_CMDS:
                raise PimgptError(f"timing rule {r}: {cmd.name} has no bank; use CHANNEL scope")
        key = (r.first, r.second, r.scope, r.terms)
        if key in seen:
            raise PimgptError(f"timing rule {r} appears twice")
        seen.add(key)


_check_rules()


def rules_for(second: DramCmd) -> tuple[Rule, ...]:
    """Every rule that constrains issuing ``second`` (an all-bank command included)."""
    target = rule_cmd(second)
    return tuple(r for r in RULES if r.second == target)


# --- documentation -------------------------------------------------------------------------------

def table_markdown(config: MachineConfig = PAPER) -> str:
    """The rule table as Markdown, with each distance in cycles of ``config``."""
    lines = [
        f"| first | second | scope | minimum distance | cycles ({config.name}) | why |",
        "|---|---|---|---|--:|---|",
    ]
    for r in RULES:
        lines.append(f"| {r.first.name} | {r.second.name} | {r.scope.name} | `{r.name}` | "
                     f"{r.cycles(config)} | {r.why} |")
    return "\n".join(lines) + "\n"


def render_doc(config: MachineConfig = PAPER) -> str:
    """The whole of ``docs/timing.md``."""
    C = DramCmd
    g = config.geometry

    def names(cmds: frozenset[DramCmd]) -> str:
        return ", ".join(c.name for c in DramCmd if c in cmds)

    mhz = config.clocks.dram_mhz
    lat = ", ".join(f"{c.name} `{t}`" for c, t in DATA_LATENCY.items())
    single = ", ".join(f"{a.name} = {b.name}" for a, b in SINGLE_BANK_FORM.items())
    return f"""# DRAM commands and timing rules

<!-- Generated by `python -m pimgpt.hdl.timing -o docs/timing.md` from pimgpt/hdl/timing.py; do not edit. -->

The ASIC drives each PIM channel with the commands below. `pimgpt/hdl/timing.py` declares them
(`DramCmd`, 4 bits) and the one table of timing rules between them (`RULES`, plus `FAW` and
`REFRESH`), which the cycle simulator, the trace checker (`pimgpt check-trace`) and the RTL
sequencer all read. Cycles below are of the `{config.name}` preset's {mhz:g} MHz command clock.

## Commands

| command | code | acts on | operands | meaning |
|---|--:|---|---|---|
| ACT | {C.ACT.value} | one bank | bank, row | open a row |
| ACT16 | {C.ACT16.value} | every bank | row | open the same row in every bank |
| PRE | {C.PRE.value} | one bank | bank | close the bank's row |
| PREA | {C.PREA.value} | every bank | | close every bank |
| RD | {C.RD.value} | one bank | bank, row, column | read one column (burst) of the open row |
| WR | {C.WR.value} | one bank | bank, row, column | write one column of the open row |
| MAC | {C.MAC.value} | one bank | bank, row, column | one column of the open row times one global-buffer column, into the bank's accumulator |
| MAC16 | {C.MAC16.value} | every bank | row, column | MAC in every bank |
| WRGB | {C.WRGB.value} | channel | column | write one global-buffer column over the data bus |
| RDMAC | {C.RDMAC.value} | channel | | read the bank MAC result registers (one burst) |
| WR16 | {C.WR16.value} | every bank | row, column | one burst writing one BF16 value into the same column of every bank |
| REF | {C.REF.value} | every bank | | all-bank refresh |

- All-bank: {names(ALL_BANK_CMDS)}. Row commands: {names(ROW_CMDS)}.
  Column commands (to the open row): {names(COLUMN_CMDS)}.
  Data-bus commands: {names(DATA_BUS_CMDS)} (read-type {names(READ_TYPE_CMDS)};
  write-type {names(WRITE_TYPE_CMDS)}).
- Column commands carry the row they expect open; a MAC's global-buffer column is not part of
  the DRAM command stream's timing and is not recorded.

## Conventions

- A rule bounds `second.cycle - first.cycle` for two commands of the **same channel**; channels
  are independent. The distance is the sum of the named timing parameters (`[timing]`, ns, JEDEC
  names), **each converted to cycles separately** by `ns_to_cycles` (rounded up), a `-` term
  subtracted, the sum floored at 0.
- Rules name single-bank commands. An all-bank command is matched as its single-bank form
  issued to **every bank**: {single}. REF acts on every bank. An ACT16 is thus
  an ACT of every bank for every rule, a WR16 a WR of every bank.
- Scopes: `BANK` the same bank; `GROUP` the same bank group, **the same bank included**;
  `OTHER_GROUP` a different bank group; `CHANNEL` any two commands of the channel. The group of
  bank `b` is `b // (banks_per_channel // bank_groups)`
  ({g.banks_per_channel // g.bank_groups} banks per group on `{config.name}`). With an all-bank
  command on either side every scope applies. Every applicable rule must hold, so the largest binds: ACT to the same bank is bound
  by `tRC` (BANK), which dominates `tRRD_L` (GROUP).
- Only the latest earlier command of each kind in scope matters (cycles never decrease within a
  channel).
- Data bus: each data-bus command puts one burst of `tBL` on the channel's data bus a fixed
  latency after issue ({lat}). Bursts are kept apart (`tBL` between any two data-bus commands)
  and **in command order** (`lat(first) + tBL - lat(second)`; read-to-write turnaround is one
  case of it). WR16 is a WR for the data bus too.
- One command bus: at most one command per channel per cycle.

## Timing rules

{table_markdown(config)}
## Window and refresh

- **tFAW**: at most {FAW.count} activations in any `{FAW.term}` window per channel: an ACT or
  ACT16 must be at least `{FAW.term}` ({FAW.cycles(config)} cycles) after the activation
  {FAW.count} activations before it. An **ACT16 counts as one activation**, as AiM's all-bank
  activate does.
- **Refresh** (all-bank REF, every `{REFRESH.term}` = {REFRESH.interval(config)} cycles on
  average, at most {REFRESH.max_postponed} postponed): on every channel the number of REFs issued
  by cycle `t` (inclusive) must be at least `floor(t / {REFRESH.term}) - {REFRESH.max_postponed}`.
  It is checked at every command of the channel and, for every channel of the machine, at the
  last cycle of the trace. Per-bank refresh (`tRFCpb`) is not used.

## Protocol

- ACT/ACT16 only to precharged banks; PRE/PREA close (a PRE to a closed bank is allowed).
- RD, WR, MAC, MAC16 and WR16 only to open banks, and only to the row each has open.
- REF only when every bank of the channel is precharged; banks stay precharged.

## Trace files

`pimgpt check-trace TRACE.csv` checks a command trace (written by the cycle simulator) against
all of the above for a machine (`--preset`/`--config`). A trace is CSV with the header
`cycle,channel,command,bank,row,column`, one command per line; `bank` is `*` for all-bank
commands and empty for WRGB and RDMAC; `row`/`column` are empty where the command has none (WRGB's
column is a global-buffer column). Cycles never decrease within a channel; lines are numbered
from 1 (the header), and violations name both commands by line, cycle and the rule, e.g.

```
line 17 (cycle 140, ch 0, MAC16 bank * row 5 col 3) follows line 12 (cycle 120, ch 0, ACT16 bank * row 5) by 20 cycles; tRCD_MAC requires 56
```
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Print the document, or write it with ``-o FILE``."""
    return doc_main(render_doc, "python -m pimgpt.hdl.timing", "Generate docs/timing.md from the rule table.", argv)

if __name__ == "__main__":
    raise SystemExit(main())
