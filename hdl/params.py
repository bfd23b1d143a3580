"""The machine description: geometry, clocks, DRAM timings and ASIC resources.

Every other part of pimgpt (compiler, simulators, RTL, reports) reads its parameters from a
:class:`MachineConfig` built here. Each group is a frozen, keyword-only dataclass validated on
construction; variants come from ``dataclasses.replace`` (or :meth:`MachineConfig.replace`).

DRAM timings are kept in nanoseconds under their JEDEC names. :func:`ns_to_cycles` is the only
place where a duration becomes a cycle count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pimgpt.errors import PimgptError

#: Bytes per stored value. The PIM side holds BF16 everywhere (weights, KV cache, global buffer).
BF16_BYTES = 2
#: Bytes per ASIC vector-memory word. The ASIC computes in IEEE binary32 (docs/numerics.md).
FP32_BYTES = 4


def ns_to_cycles(ns: float, clock_mhz: float) -> int:
    """Cycles of a ``clock_mhz`` clock needed to cover ``ns`` nanoseconds (rounded up).

    The single ns-to-cycles conversion of the project. A small tolerance keeps values that are
    exact multiples of the period (0.5 ns at 2 GHz, say) from rounding up through float error.
    """
    if ns <= 0:
        return 0
    return math.ceil(ns * clock_mhz / 1000.0 - 1e-9)


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def _check_positive(group: str, obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PimgptError(f"{group}.{name} must be a number, not {value!r}")
        if not math.isfinite(value):
            raise PimgptError(f"{group}.{name} must be finite, not {value!r}")
        if value <= 0:
            raise PimgptError(f"{group}.{name} must be positive, not {value!r}")


def _check_int(group: str, obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise PimgptError(f"{group}.{name} must be an integer, not {value!r}")


def _check_pow2(group: str, obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not _is_pow2(value):
            raise PimgptError(f"{group}.{name} must be a power of two, not {value}")


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """How the PIM memory is organised, and what each bank's MAC unit consumes per command."""

    channels: int
    bank_groups: int  # per channel
    banks_per_channel: int
    rows: int  # per bank
    row_bytes: int  # DRAM page size
    column_bytes: int  # one column access (burst): the MAC operand width
    mac_lanes: int  # BF16 multipliers per bank MAC unit
    gb_bytes: int  # global buffer (SRAM) per channel
    #: Global-buffer double-buffering: the buffer is used as two halves, and a channel writes
    #: the next input chunk into one half (WRGB commands, a data-in command stream) in free
    #: command-bus cycles while its MACs still read the other half (the compute stream). Input
    #: chunks are then half a buffer. The cycle simulator models it; the RTL sequencer does
    #: not (generating RTL for such a machine is an error).
    gb_double_buffer: bool = False

    def __post_init__(self) -> None:
        names = ("channels", "bank_groups", "banks_per_channel", "rows", "row_bytes",
                 "column_bytes", "mac_lanes", "gb_bytes")
        if not isinstance(self.gb_double_buffer, bool):
            raise PimgptError(f"geometry.gb_double_buffer must be true or false, not "
                              f"{self.gb_double_buffer!r}")
        _check_int("geometry", self, names)
        _check_positive("geometry", self, names)
        _check_pow2("geometry", self, names[1:])
        if self.banks_per_channel % self.bank_groups:
            raise PimgptError(
                f"geometry.banks_per_channel ({self.banks_per_channel}) must be a multiple of "
                f"geometry.bank_groups ({self.bank_groups})")
        if self.column_bytes != self.mac_lanes * BF16_BYTES:
            raise PimgptError(
                f"geometry.column_bytes ({self.column_bytes}) must equal geometry.mac_lanes "
                f"({self.mac_lanes}) x {BF16_BYTES} bytes per BF16 value")
        if self.row_bytes < self.column_bytes:
            raise PimgptError(
                f"geometry.row_bytes ({self.row_bytes}) must be at least geometry.column_bytes "
                f"({self.column_bytes})")
        if self.gb_bytes < self.column_bytes * (2 if self.gb_double_buffer else 1):
            raise PimgptError(
                f"geometry.gb_bytes ({self.gb_bytes}) must be at least geometry.column_bytes "
                f"({self.column_bytes})"
                + (" x 2 (two halves: geometry.gb_double_buffer)" if self.gb_double_buffer
                   else ""))

    @property
    def banks(self) -> int:
        """Banks in the whole machine (channels x banks per channel)."""
        return self.channels * self.banks_per_channel

    @property
    def row_elems(self) -> int:
        """BF16 values per DRAM row."""
        return self.row_bytes // BF16_BYTES

    @property
    def cols_per_row(self) -> int:
        """Column accesses per row."""
        return self.row_bytes // self.column_bytes

    @property
    def gb_elems(self) -> int:
        """BF16 values the global buffer holds."""
        return self.gb_bytes // BF16_BYTES

    @property
    def gb_cols(self) -> int:
        """Column-sized slots in the global buffer."""
        return self.gb_bytes // self.column_bytes

    @property
    def chunk_cols(self) -> int:
        """Global-buffer columns one input chunk may use: the whole buffer, or one half of it
        with ``gb_double_buffer`` (chunk k in half k mod 2)."""
        return self.gb_cols // 2 if self.gb_double_buffer else self.gb_cols

    @property
    def chunk_elems(self) -> int:
        """BF16 values of one input chunk (the tiling of every weight VMM; GoldenGPT too)."""
        return self.chunk_cols * self.mac_lanes

    @property
    def bank_elems(self) -> int:
        """BF16 values one bank holds."""
        return self.rows * self.row_elems

    @property
    def capacity_bytes(self) -> int:
        """PIM capacity of the whole machine."""
        return self.banks * self.rows * self.row_bytes


@dataclass(frozen=True, kw_only=True)
class Clocks:
    """Clock rates. ``dram_mhz`` is the command clock that DRAM timings are counted in."""

    dram_mhz: float
    asic_mhz: float
    io_gbps_per_pin: float  # ASIC <-> PIM data rate per pin
    io_pins_per_channel: int

    def __post_init__(self) -> None:
        _check_positive("clocks", self, ("dram_mhz", "asic_mhz", "io_gbps_per_pin",
                                         "io_pins_per_channel"))
        _check_int("clocks", self, ("io_pins_per_channel",))

    @property
    def tck_ns(self) -> float:
        """DRAM command-clock period in ns."""
        return 1000.0 / self.dram_mhz

    @property
    def channel_gbytes_per_s(self) -> float:
        """External bandwidth of one channel in GB/s."""
        return self.io_gbps_per_pin * self.io_pins_per_channel / 8.0


@dataclass(frozen=True, kw_only=True)
class Timing:
    """DRAM timing parameters in ns, with JEDEC names (MAC variants follow SK hynix AiM).

    ``tRCD_MAC`` is ACT to the first MAC command; ``tCL_REG`` is the latency of reading the MAC
    result registers (latches, not the array); ``tCWL_GB`` the latency of writing the global buffer.
    """

    tRCD_RD: float
    tRCD_WR: float
    tRCD_MAC: float
    tRP: float
    tRAS: float
    tRC: float
    tCCD_S: float
    tCCD_L: float
    tRRD_S: float
    tRRD_L: float
    tFAW: float
    tWR: float
    tRTP: float
    tWTR_S: float
    tWTR_L: float
    tCL: float
    tCWL: float
    tCL_REG: float
    tCWL_GB: float
    tBL: float  # data-bus occupancy of one burst
    tRFC: float
    tRFCpb: float
    tREFI: float

    def __post_init__(self) -> None:
        names = tuple(f.name for f in dataclasses.fields(self))
        _check_positive("timing", self, names)
        for short, long_ in (("tRCD_RD", "tRAS"), ("tRCD_WR", "tRAS"), ("tRAS", "tRC"),
                             ("tCCD_S", "tCCD_L"), ("tRRD_S", "tRRD_L"), ("tWTR_S", "tWTR_L"),
                             ("tRFC", "tREFI"), ("tRFCpb", "tRFC")):
            if getattr(self, short) > getattr(self, long_):
                raise PimgptError(
                    f"timing.{long_} ({getattr(self, long_)} ns) must be at least "
                    f"timing.{short} ({getattr(self, short)} ns)")
        if self.tRC < self.tRAS + self.tRP:
            raise PimgptError(
                f"timing.tRC ({self.tRC} ns) must be at least tRAS + tRP "
                f"({self.tRAS} + {self.tRP} ns)")
        if self.tFAW < self.tRRD_S:
            raise PimgptError(
                f"timing.tFAW ({self.tFAW} ns) must be at least timing.tRRD_S ({self.tRRD_S} ns)")

    def cycles(self, name: str, clock_mhz: float) -> int:
        """One timing parameter in cycles of ``clock_mhz``."""
        return ns_to_cycles(getattr(self, name), clock_mhz)


#: Values of ``Asic.data_path``.
DATA_PATHS = ("mover", "ideal")


@dataclass(frozen=True, kw_only=True)
class Asic:
    """ASIC resources: the vector unit, its SRAM, and how long its work takes (ASIC cycles).

    Every vector operation streams one beat (``vector_lanes`` elements) per cycle through
    pipelined units: the binary32 adder/multiplier pipeline is ``vec_latency`` deep; exp,
    reciprocal, rsqrt and GELU are unrolled docs/numerics.md sequences whose extra depth is
    ``*_cycles`` (their dependent multiply/add steps). Reductions add a lane tree.
    """

    vector_lanes: int  # fp32 lanes of the vector unit; also fixes the reduction order
    vmem_words: int  # fp32 words of vector memory
    imem_words: int  # instruction memory (isa.WORD_BITS-bit words) of the controller
    issue_cycles: int = 1  # controller cycles to fetch, decode and dispatch one instruction
    vec_latency: int = 4  # adder/multiplier pipeline depth
    exp_cycles: int = 24  # vexp: 12 dependent multiplies and 12 adds
    recip_cycles: int = 13  # vrecip: 9 multiplies, 4 adds
    rsqrt_cycles: int = 14  # vrsqrt: 10 multiplies, 4 adds
    gelu_cycles: int = 49  # vgelu: 7 multiplies, 5 adds, then exp and reciprocal
    queue_depth: int = 4  # entries of each channel queue and of the ASIC queue (controller)
    #: How data moves between vector memory and the channels. ``"mover"``: each channel's data
    #: mover stages writes and drains reads through the vector memory's row ports, ordered with
    #: the vector ops (the RTL, hdl/top.py). ``"ideal"``: every channel reads and writes vector
    #: memory directly at its I/O rate, at no ASIC-side cost and in no order with vector work,
    #: as the paper's evaluation assumes; a what-if for the simulator, which the RTL refuses.
    data_path: str = "mover"

    def __post_init__(self) -> None:
        names = tuple(f.name for f in dataclasses.fields(self) if f.name != "data_path")
        _check_int("asic", self, names)
        _check_positive("asic", self, names)
        _check_pow2("asic", self, ("vector_lanes",))
        if self.data_path not in DATA_PATHS:
            raise PimgptError(f"asic.data_path must be one of {', '.join(DATA_PATHS)}, not "
                              f"{self.data_path!r}")


@dataclass(frozen=True, kw_only=True)
class MachineConfig:
    """One PIM-GPT machine: the single source every part of pimgpt reads."""

    name: str = "custom"
    geometry: Geometry
    clocks: Clocks
    timing: Timing
    asic: Asic
    _hash: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from pimgpt.hdl import isa  # the ISA's field widths bound what a machine may be

        g = self.geometry
        limits = (
            ("geometry.channels", g.channels, isa.MAX_CHANNELS),
            ("geometry.banks (channels x banks_per_channel)", g.banks, isa.MAX_BANKS),
            ("bank elements (rows x row_bytes / 2)", g.bank_elems, isa.MAX_BANK_ADDR),
            ("geometry.gb_bytes / column_bytes", g.gb_cols, isa.MAX_GB_COLS),
            ("asic.vmem_words", self.asic.vmem_words, isa.MAX_VMEM_WORDS),
        )
        for what, value, limit in limits:
            if value > limit:
                raise PimgptError(f"{what} = {value} exceeds the ISA's limit of {limit}")
        blob = json.dumps(self.to_dict(include_name=False), sort_keys=True).encode()
        object.__setattr__(self, "_hash", hashlib.sha256(blob).hexdigest())

    @property
    def hash(self) -> str:
        """SHA-256 of the configuration (its name excluded), written into every ``.pimbin``."""
        return self._hash

    def replace(self, **changes: Any) -> "MachineConfig":
        """A copy with top-level fields replaced (use ``dataclasses.replace`` on groups)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self, include_name: bool = True) -> dict[str, Any]:
        """Plain nested dict, the form ``--json`` and TOML files use."""
        out: dict[str, Any] = {"name": self.name} if include_name else {}
        for group in ("geometry", "clocks", "timing", "asic"):
            out[group] = dataclasses.asdict(getattr(self, group))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "MachineConfig":
        """Build from a nested dict; unknown or missing keys are errors naming them."""
        groups = {"geometry": Geometry, "clocks": Clocks, "timing": Timing, "asic": Asic}
        unknown = sorted(set(data) - set(groups) - {"name"})
        if unknown:
            raise PimgptError(f"{where}: unknown section(s) {', '.join(unknown)}")
        built: dict[str, Any] = {}
        for group, klass in groups.items():
            if group not in data:
                raise PimgptError(f"{where}: missing section [{group}]")
            values = data[group]
            if not isinstance(values, dict):
                raise PimgptError(f"{where}: [{group}] must be a table")
            known = {f.name for f in dataclasses.fields(klass)}
            extra = sorted(set(values) - known)
            if extra:
                raise PimgptError(f"{where}: unknown key(s) in [{group}]: {', '.join(extra)}")
            required = {f.name for f in dataclasses.fields(klass)
                        if f.default is dataclasses.MISSING}
            missing = sorted(required - set(values))
            if missing:
                raise PimgptError(f"{where}: missing key(s) in [{group}]: {', '.join(missing)}")
            try:
                built[group] = klass(**values)
            except PimgptError as exc:
                raise PimgptError(f"{where}: {exc}") from None
        return cls(name=str(data.get("name", "custom")), **built)


# --- presets -------------------------------------------------------------------------------------

#: SK hynix AiM GDDR6 timing set (public AiM simulator preset "GDDR6_AiM_timing"), whose cycle
#: counts are of a 2 GHz command clock (tCK = 0.5 ns); see reference/pim-gpt-paper-notes.md 2.3.
#: The MAC row-to-column delay includes the 10 ns offset that preset adds for MAC.
AIM_GDDR6_TIMING = Timing(
    tRCD_RD=18.0, tRCD_WR=14.0, tRCD_MAC=28.0, tRP=16.0, tRAS=27.0, tRC=44.5,
    tCCD_S=1.0, tCCD_L=1.0, tRRD_S=5.5, tRRD_L=5.5, tFAW=21.0, tWR=16.5, tRTP=6.0,
    tWTR_S=4.5, tWTR_L=5.5, tCL=25.0, tCWL=3.0, tCL_REG=1.0, tCWL_GB=1.0, tBL=1.0,
    tRFC=105.0, tRFCpb=52.5, tREFI=1666.5,
)

#: A generic (non-PIM) GDDR6 timing set: Ramulator 2's "GDDR6_2000_1350mV_double" preset, cycles
#: of a 1 GHz command clock as that simulator uses them. MAC delays set equal to the read ones.
GENERIC_GDDR6_TIMING = Timing(
    tRCD_RD=26.0, tRCD_WR=16.0, tRCD_MAC=26.0, tRP=26.0, tRAS=53.0, tRC=79.0,
    tCCD_S=4.0, tCCD_L=6.0, tRRD_S=7.0, tRRD_L=7.0, tFAW=28.0, tWR=26.0, tRTP=4.0,
    tWTR_S=9.0, tWTR_L=11.0, tCL=24.0, tCWL=6.0, tCL_REG=1.0, tCWL_GB=1.0, tBL=8.0,
    tRFC=210.0, tRFCpb=105.0, tREFI=3333.0,
)

PAPER = MachineConfig(
    name="paper",
    geometry=Geometry(channels=8, bank_groups=4, banks_per_channel=16, rows=16384,
                      row_bytes=2048, column_bytes=32, mac_lanes=16, gb_bytes=2048),
    clocks=Clocks(dram_mhz=2000.0, asic_mhz=1000.0, io_gbps_per_pin=16.0, io_pins_per_channel=16),
    timing=AIM_GDDR6_TIMING,
    # The paper does not size its ASIC. With 16 binary32 lanes softmax and LayerNorm took about
    # a quarter of a GPT2-small token at 1 GHz; 64 lanes bring the ASIC-only share of a GPT2-XL
    # token to ~2.4 % (bench/paper_checks.py has the current figures).
    asic=Asic(vector_lanes=64, vmem_words=262144, imem_words=131072),
)

#: Small enough to simulate as RTL: 2 channels x 4 banks, 256-byte rows, 8 Mi BF16 per machine.
TINY = MachineConfig(
    name="tiny",
    geometry=Geometry(channels=2, bank_groups=2, banks_per_channel=4, rows=2048,
                      row_bytes=256, column_bytes=32, mac_lanes=16, gb_bytes=256),
    clocks=Clocks(dram_mhz=2000.0, asic_mhz=1000.0, io_gbps_per_pin=16.0, io_pins_per_channel=16),
    timing=AIM_GDDR6_TIMING,
    # 4,096 instruction words hold the tiny GPT's 1,125 with room to spare; Yosys takes time
    # quadratic in a memory's initialised words to read the generated Verilog (16,384: 5 min)
    asic=Asic(vector_lanes=4, vmem_words=16384, imem_words=4096),
)

#: The paper's organisation on a generic GDDR6 timing set and 1 GHz command clock.
GDDR6 = PAPER.replace(name="gddr6", timing=GENERIC_GDDR6_TIMING,
                      clocks=dataclasses.replace(PAPER.clocks, dram_mhz=1000.0))

PRESETS: dict[str, MachineConfig] = {"paper": PAPER, "tiny": TINY, "gddr6": GDDR6}


def preset(name: str) -> MachineConfig:
    """A named preset; unknown names are an error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise PimgptError(
            f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})") from None


def load_config(path: str | Path) -> MachineConfig:
    """Load a TOML machine description.

    The file may start from a preset (``base = "paper"``) and override single keys in
    ``[geometry]``, ``[clocks]``, ``[timing]`` and ``[asic]``; without ``base`` every key is needed.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PimgptError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise PimgptError(f"{path}: not valid TOML (not UTF-8 text)") from None
    except OSError as exc:
        raise PimgptError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PimgptError(f"{path}: not valid TOML: {exc}") from None
    base_name = data.pop("base", None)
    if base_name is not None:
        if not isinstance(base_name, str):
            raise PimgptError(f"{path}: 'base' must be a preset name string")
        merged = preset(base_name).to_dict()
        del merged["name"]  # a derived machine is named by its file unless it says otherwise
        for group, values in data.items():
            if group == "name":
                merged["name"] = values
            elif group in merged and isinstance(values, dict) and isinstance(merged[group], dict):
                merged[group] = {**merged[group], **values}
            else:
                merged[group] = values
        data = merged
    data.setdefault("name", path.stem)
    return MachineConfig.from_dict(data, where=str(path))


def resolve_config(preset_name: str | None = None, config_file: str | Path | None = None,
                   default: str = "paper") -> MachineConfig:
    """The configuration a CLI command was asked for: ``--config FILE`` beats ``--preset NAME``."""
    if config_file is not None and preset_name is not None:
        raise PimgptError("give either --preset or --config, not both")
    if config_file is not None:
        return load_config(config_file)
    return preset(preset_name or default)
