"""Energy model: event counts from a simulation x per-event energies -> joules by component.

PIM-GPT's own energy constants are not public (reference/pim-gpt-paper-notes.md 0, 6, 8), so every
constant of :meth:`EnergyModel.paper_default` comes from a named public source, with its unit and
derivation here and in docs/energy.md (the two must agree; tests/test_energy.py checks it):

* DRAM/PIM core (ACT, column read/write, bank MAC, MAC read-out, background, DQ I/O): the SK hynix
  GDDR6-AiM power model of the CENT artifact (Gu et al., "PIM Is All You Need", ASPLOS 2025),
  ``Yufeng98/CENT`` file ``cent_simulation/cent_power_calculator.py`` (commit 863bd7d): per-channel
  powers ``DRAM_POWER`` in mW times the command durations that file uses (tRC = 44.5 ns,
  tBL = 1.25 ns, tCCD_L = 1.0 ns), and ``DQ_ENERGY`` in pJ/bit.
* Refresh: the GDDR6 IDD set of DRAMsim3 (``hplp/DRAMsim3`` ``configs/GDDR6_8Gb_x16.ini``) through
  DRAMsim3's own ``ref_energy_inc`` formula.
* SRAM arrays: CACTI 28 nm outputs tabulated in ``Dongyunkam/DRAM_info`` README section 5.2 (global
  buffer write, vector-memory leakage) and Horowitz's 45 nm 8 kB access as PMC8934428 Table 3
  quotes it (vector-memory access).
* ASIC arithmetic: Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm, 0.9 V): fp32 add
  0.9 pJ, fp32 mul 3.7 pJ; scaled to 28 nm by 0.65, the Stillmaker & Baas (Integration 58, 2017)
  energy factor from HP45 to HP32 at 0.9 V (the nearest tabulated node; it over- rather than
  underestimates 28 nm). exp, reciprocal, rsqrt and GELU are costed as the fp32 adds and multiplies
  of the exact sequences in :mod:`pimgpt.sim.numerics`.

Derived values are rounded to the precision their inputs support (2-3 significant figures).

Events are counted machine-wide: :class:`Events` holds what the cycle simulator produces,
:func:`energy` turns them into an :class:`EnergyBreakdown` in joules.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from pimgpt.errors import PimgptError

#: ASIC vector-unit operation kinds that carry an energy per element.
ASIC_KINDS: tuple[str, ...] = ("add", "sub", "mul", "sum", "max", "argmax", "exp", "recip",
                               "rsqrt", "gelu")

#: Which kind each vector opcode counts as (per element). VSET and VMOV do no arithmetic: they cost
#: only their vector-memory words (``Events.vmem_words``).
ASIC_OP_KIND: Mapping[str, str] = MappingProxyType({
    "VADD": "add", "VADDI": "add", "VSUB": "sub", "VMUL": "mul", "VMULI": "mul",
    "VSUM": "sum", "VMAX": "max", "VARGMAX": "argmax", "VEXP": "exp", "VRECIP": "recip",
    "VRSQRT": "rsqrt", "VGELU": "gelu",
})

#: Energy factor from Horowitz's 45 nm / 0.9 V figures to 28 nm / 0.9 V (dimensionless):
#: Stillmaker & Baas 2017, Table 5 energy polynomials, E_HP32(0.9 V) / E_HP45(0.9 V)
#: = 0.4571 / 0.6989 = 0.654, rounded to 0.65. 28 nm itself is not tabulated; 32 nm is the
#: nearest node at or above it, so the factor errs on the high-energy side.
SCALE_45_TO_28 = 0.65

_PJ = 1e-12  # joules per picojoule
_MW = 1e-3  # watts per milliwatt


def _check_number(where: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PimgptError(f"{where}.{name} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise PimgptError(f"{where}.{name} must be finite, not {value!r}")
    if value < 0:
        raise PimgptError(f"{where}.{name} must not be negative, not {value!r}")


def _check_count(where: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PimgptError(f"{where}.{name} must be an integer count, not {value!r}")
    if value < 0:
        raise PimgptError(f"{where}.{name} must not be negative, not {value!r}")


def _frozen_mapping(where: str, name: str, value: Any, check) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PimgptError(f"{where}.{name} must be a mapping of kind -> value, not {value!r}")
    out: dict[str, Any] = {}
    for kind, v in value.items():
        if not isinstance(kind, str) or not kind:
            raise PimgptError(f"{where}.{name} keys must be non-empty strings, not {kind!r}")
        check(where, f"{name}[{kind!r}]", v)
        out[kind] = v
    return MappingProxyType(out)


@dataclass(frozen=True, kw_only=True)
class EnergyModel:
    """Energy per event. ``*_pj`` in picojoules, ``*_mw`` in milliwatts.

    DRAM counts are per bank (an all-bank ACT16 is 16 activations) and per 32-byte column.
    """

    act_pj: float  # per bank activated: the ACT + PRE pair
    pre_pj: float  # per bank precharged, when not already included in act_pj
    rd_pj: float  # per 32-byte column read inside the array (no I/O)
    wr_pj: float  # per 32-byte column write inside the array (no I/O)
    mac_pj: float  # per bank per MAC column: 16 BF16 MACs including the column read
    gb_write_pj: float  # per 32-byte global-buffer column write (SRAM only; no I/O)
    mac_readout_pj: float  # per RDMAC burst (16 banks' MAC registers; no I/O)
    ref_pj: float  # per all-bank refresh of one channel
    background_mw_per_channel: float  # standby power of one channel, always on
    io_pj_per_bit: float  # ASIC <-> PIM interface (DQ), per bit moved
    asic_pj: Mapping[str, float]  # per element, by operation kind (ASIC_KINDS)
    vmem_word_pj: float  # per 32-bit vector-memory word read or written
    asic_leakage_mw: float  # ASIC static power, always on

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name == "asic_pj":
                object.__setattr__(self, "asic_pj", _frozen_mapping(
                    "energy model", "asic_pj", self.asic_pj, _check_number))
            else:
                _check_number("energy model", f.name, getattr(self, f.name))

    def __hash__(self) -> int:  # asic_pj is a read-only mapping; hash its items
        return hash(tuple((f.name, tuple(sorted(getattr(self, f.name).items()))
                           if f.name == "asic_pj" else getattr(self, f.name))
                          for f in dataclasses.fields(self)))

    @classmethod
    def paper_default(cls) -> "EnergyModel":
        """Public-source constants for a GDDR6-AiM-like PIM and a 28 nm ASIC (docs/energy.md)."""
        add = 0.59  # pJ: Horowitz fp32 add 0.9 pJ (45 nm) x 0.65 = 0.585
        mul = 2.4  # pJ: Horowitz fp32 mul 3.7 pJ (45 nm) x 0.65 = 2.405
        return cls(
            # CENT cent_power_calculator.py: DRAM_POWER["ACT"] = 132.6 / 2 mW per channel,
            # charged over tRC = 44.5 ns per bank activated: 66.3 mW x 44.5 ns = 2950 pJ.
            act_pj=2950.0,
            # Included in act_pj (CENT charges the ACT power over tRC, which spans ACT and PRE).
            pre_pj=0.0,
            # CENT: DRAM_POWER["RD"] = 876.3 / 2 mW x tBL 1.25 ns = 548 pJ per column read.
            rd_pj=548.0,
            # CENT: DRAM_POWER["WR"] = 1106.3 / 2 mW x tBL 1.25 ns = 691 pJ per column write.
            wr_pj=691.0,
            # CENT: "PIM" energy = 3 x DRAM_POWER["RD"] x tCCD_L 1.0 ns per MAC16 (16 banks)
            # = 1314 pJ; per bank 1314 / 16 = 82 pJ.
            mac_pj=82.0,
            # CACTI 28 nm, 4 KiB SRAM, 512-bit port: write 0.0397 pJ/bit (Dongyunkam/DRAM_info
            # README 5.2) x 256 bits = 10 pJ. DRAM-process logic penalty not included.
            gb_write_pj=10.0,
            # CENT counts RDMAC16 as one column read (DRAM_POWER["RD"] x tBL) = 548 pJ.
            mac_readout_pj=548.0,
            # DRAMsim3 GDDR6_8Gb_x16.ini (hplp/DRAMsim3): VDD 1.35 V, IDD5AB 286 mA, IDD3N 61 mA,
            # tRFC 126 x tCK 0.66 ns; ref_energy_inc = VDD (IDD5AB - IDD3N) tRFC = 25 nJ.
            ref_pj=25000.0,
            # CENT: DRAM_POWER["ACT_STBY"] = 527.5 / 2 mW per channel (active standby; the
            # precharged standby, 366.3 / 2 = 183 mW, is the lower bound).
            background_mw_per_channel=264.0,
            # CENT: DQ_ENERGY = 5.5 pJ/bit.
            io_pj_per_bit=5.5,
            asic_pj={
                "add": add,
                "sub": add,  # a subtract is an add
                "mul": mul,
                "sum": add,  # one lane-accumulator add per element
                "max": add,  # compare = subtraction (PMC8934428 Table 3, note a)
                "argmax": add,  # one compare per element
                # Operation counts of the sequences in sim/numerics.py (muxes, exponent and sign
                # handling not counted):
                "exp": 36.0,  # 12 mul + 12 add-class (2 clamp, rint, 2 reduce, 7 Horner) = 35.9
                "recip": 24.0,  # 9 mul + 4 add (seed, 3 Newton steps, 2^-e scaling) = 24.0
                "rsqrt": 26.0,  # 10 mul + 4 add (integer seed as an add, 3 Newton steps) = 26.4
                "gelu": 80.0,  # 7 mul + 5 add + exp + recip = 79.6
            },
            # PMC8934428 Table 3: E_m = 5 pJ per 32-bit load, half of Horowitz's 8 kB cache
            # 64-bit access (45 nm); x 0.65 = 3.25 pJ. Assumes the 1 MiB vector memory is built
            # of ~8 KiB sub-arrays of which one is accessed per word.
            vmem_word_pj=3.3,
            # CACTI 28 nm 8 KiB SRAM leakage 5.75 mW (Dongyunkam/DRAM_info README 5.2) x 128 for
            # the 1 MiB vector memory = 736 mW. SRAM only; controller/datapath leakage unknown.
            asic_leakage_mw=740.0,
        )

    def replace(self, **changes: Any) -> "EnergyModel":
        """A copy with constants replaced; ``asic_pj`` entries are merged into the existing ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise PimgptError(f"unknown energy constant(s): {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))})")
        if "asic_pj" in changes:
            new = changes["asic_pj"]
            if not isinstance(new, Mapping):
                raise PimgptError(f"energy model.asic_pj must be a mapping of kind -> value, "
                                  f"not {new!r}")
            changes["asic_pj"] = {**self.asic_pj, **new}
        return dataclasses.replace(self, **changes)

    def constant_names(self) -> list[str]:
        """Every constant by name: the scalar fields and ``asic_pj.<kind>`` for each kind."""
        names: list[str] = []
        for f in dataclasses.fields(self):
            if f.name == "asic_pj":
                names.extend(f"asic_pj.{kind}" for kind in self.asic_pj)
            else:
                names.append(f.name)
        return names

    def value(self, name: str) -> float:
        """The constant called ``name`` (as :meth:`constant_names` spells it)."""
        if name.startswith("asic_pj."):
            kind = name[len("asic_pj."):]
            if kind in self.asic_pj:
                return float(self.asic_pj[kind])
        elif name != "asic_pj" and name in {f.name for f in dataclasses.fields(self)}:
            return float(getattr(self, name))
        raise PimgptError(f"unknown energy constant {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (``asic_pj`` as a nested dict), the form JSON reports use."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["asic_pj"] = dict(self.asic_pj)
        return out


_COUNT_FIELDS = ("act", "pre", "rd", "wr", "mac", "gb_write", "mac_readout", "wr16", "ref",
                 "io_bits", "vmem_words")


@dataclass(frozen=True, kw_only=True)
class Events:
    """Event counts of one run, machine-wide (all channels together)."""

    channels: int  # channels powered (background power is per channel)
    seconds: float = 0.0  # elapsed time: background and leakage accrue over it
    act: int = 0  # bank activations (an all-bank ACT16 counts banks_per_channel)
    pre: int = 0  # bank precharges (same counting)
    rd: int = 0  # 32-byte column reads from a bank
    wr: int = 0  # 32-byte column writes into one bank
    mac: int = 0  # bank-column MACs (a MAC16 on one channel counts banks_per_channel)
    gb_write: int = 0  # 32-byte global-buffer column writes
    mac_readout: int = 0  # RDMAC bursts (one reads a channel's 16 MAC registers)
    wr16: int = 0  # all-bank write bursts: each writes one column into every bank of a channel
    ref: int = 0  # all-bank refreshes (per channel)
    io_bits: int = 0  # bits over the ASIC <-> PIM interface, both directions
    asic_ops: Mapping[str, int] = field(default_factory=dict)  # elements processed, by kind
    vmem_words: int = 0  # vector-memory words read plus written
    banks_per_channel: int = 16  # banks one wr16 burst writes

    def __post_init__(self) -> None:
        for name in _COUNT_FIELDS:
            _check_count("events", name, getattr(self, name))
        _check_count("events", "channels", self.channels)
        if self.channels < 1:
            raise PimgptError(f"events.channels must be at least 1, not {self.channels}")
        _check_count("events", "banks_per_channel", self.banks_per_channel)
        if self.banks_per_channel < 1:
            raise PimgptError(
                f"events.banks_per_channel must be at least 1, not {self.banks_per_channel}")
        _check_number("events", "seconds", self.seconds)
        object.__setattr__(self, "asic_ops", _frozen_mapping(
            "events", "asic_ops", self.asic_ops, _check_count))

    def __hash__(self) -> int:  # asic_ops is a read-only mapping; hash its items
        return hash(tuple((f.name, tuple(sorted(getattr(self, f.name).items()))
                           if f.name == "asic_ops" else getattr(self, f.name))
                          for f in dataclasses.fields(self)))


#: Components of :class:`EnergyBreakdown`, in report order.
COMPONENTS: tuple[str, ...] = (
    "dram_activate", "dram_column", "dram_mac", "global_buffer", "mac_readout", "refresh",
    "dram_background", "io", "asic_compute", "asic_sram", "asic_leakage")


@dataclass(frozen=True, kw_only=True)
class EnergyBreakdown:
    """Energy by component, in joules."""

    dram_activate: float  # ACT (+ PRE)
    dram_column: float  # column reads and writes inside the arrays (rd, wr, wr16)
    dram_mac: float  # bank MAC units including their column reads
    global_buffer: float  # global-buffer writes
    mac_readout: float  # RDMAC bursts
    refresh: float
    dram_background: float  # standby power x channels x time
    io: float  # ASIC <-> PIM interface
    asic_compute: float  # vector-unit arithmetic
    asic_sram: float  # vector-memory accesses
    asic_leakage: float

    @property
    def total(self) -> float:
        """Sum of all components, in joules."""
        return math.fsum(getattr(self, name) for name in COMPONENTS)

    def to_dict(self) -> dict[str, float]:
        """Components and ``total``, in joules."""
        out = {name: getattr(self, name) for name in COMPONENTS}
        out["total"] = self.total
        return out

    def per_token(self, n: int) -> "EnergyBreakdown":
        """The breakdown divided by ``n`` generated tokens."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise PimgptError(f"per_token: the token count must be a positive integer, not {n!r}")
        return EnergyBreakdown(**{name: getattr(self, name) / n for name in COMPONENTS})


def energy(events: Events, model: EnergyModel) -> EnergyBreakdown:
    """Joules by component for ``events`` priced with ``model``."""
    if not isinstance(events, Events):
        raise PimgptError(f"energy: events must be an Events, not {type(events).__name__}")
    if not isinstance(model, EnergyModel):
        raise PimgptError(f"energy: model must be an EnergyModel, not {type(model).__name__}")
    missing = sorted(k for k in events.asic_ops if k not in model.asic_pj)
    if missing:
        raise PimgptError(
            f"events.asic_ops has kind(s) {', '.join(map(repr, missing))} with no energy in the "
            f"model (known: {', '.join(sorted(model.asic_pj))})")
    e, m = events, model
    asic = math.fsum(count * m.asic_pj[kind] for kind, count in e.asic_ops.items())
    return EnergyBreakdown(
        dram_activate=(e.act * m.act_pj + e.pre * m.pre_pj) * _PJ,
        dram_column=(e.rd * m.rd_pj + (e.wr + e.wr16 * e.banks_per_channel) * m.wr_pj) * _PJ,
        dram_mac=e.mac * m.mac_pj * _PJ,
        global_buffer=e.gb_write * m.gb_write_pj * _PJ,
        mac_readout=e.mac_readout * m.mac_readout_pj * _PJ,
        refresh=e.ref * m.ref_pj * _PJ,
        dram_background=m.background_mw_per_channel * _MW * e.channels * e.seconds,
        io=e.io_bits * m.io_pj_per_bit * _PJ,
        asic_compute=asic * _PJ,
        asic_sram=e.vmem_words * m.vmem_word_pj * _PJ,
        asic_leakage=m.asic_leakage_mw * _MW * e.seconds,
    )
