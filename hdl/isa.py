"""The PIM-GPT instruction set, declared once.

Opcodes are an ``amaranth.lib.enum.Enum`` and the instruction word is an ``amaranth.lib.data``
struct: an opcode plus a union of three formats (scalar/control, PIM, vector). The RTL decoder
uses :data:`Instr` as a signal shape; the compiler and the simulators encode and decode with
:func:`encode` / :func:`decode`, which read field offsets and widths from that same layout
(checked against ``Instr.const(...)`` by a property test). ``docs/isa.md`` is generated from this
module (``python -m pimgpt.hdl.isa_doc``) and gives every instruction's exact semantics.

Operands written ``x`` / ``x_reg`` pairs are *register-relative*: the effective value is
``x + r[x_reg]``, where scalar register ``r0`` always reads 0. That is how one compiled decode
step serves every token position (the host sets ``r1`` to the position before each step).
"""



import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

from pimgpt.errors import PimgptError

#: Bump on any change to opcodes, formats or semantics; it is part of :data:`ISA_HASH`.
#: Version 2: 32-bit channel mask and 160-bit instruction words (version 1: 16 and 128).
ISA_VERSION = 2

#: Width of one encoded instruction in bits and bytes (little-endian in ``.pimbin``).
#:
#: The widest format (PIM: opcode + 32-bit channel mask + operands) needs 138 bits. 160 is the
#: smallest multiple of 32 bits that holds it. The alternative, keeping 128-bit words by
#: narrowing other fields, would have cost machines that are valid today: the 10 bits missing
#: would have to come out of the bank address (28 bits, banks of up to 512 MiB: a 2-channel
#: machine that holds GPT2-XL needs ~100 MiB banks, 26 bits), the bank number (12 bits: 32
#: channels x 128 banks), the global-buffer column (10 bits) or the counts (16 bits; a WR_GB
#: of a whole 2 KiB buffer is 64 columns, a RD_BANK of a GPT-3 XL FFN vector 8,192 elements),
#: each of which the parameter validation already uses as a machine limit. A wider word costs
#: instruction memory only (25 % more code bytes) and leaves 22 reserved bits for later
#: operands.
WORD_BITS = 160
WORD_BYTES = WORD_BITS // 8

#: Scalar register file of the ASIC controller (32-bit, two's complement; r0 reads as zero).
NUM_SREGS = 16
SREG_BITS = 32

#: Register conventions shared by the compiler and the host driver (documented in docs/isa.md).
REG_POS = 1  # position of the token being processed (set by the host)
REG_TOKEN_IN = 2  # id of the token being processed (set by the host)
REG_TOKEN_OUT = 3  # greedy next-token id (read by the host after END)

_REG = unsigned(4)
_VADDR_BITS = 18
_BANK_ADDR_BITS = 28
_BANK_BITS = 12
_GB_BITS = 10
_COUNT_BITS = 16
_CHMASK_BITS = 32  # up to 32 channels (the study's channel sweep goes 2..32)

MAX_CHANNELS = _CHMASK_BITS
MAX_BANKS = 1 << _BANK_BITS
MAX_BANK_ADDR = 1 << _BANK_ADDR_BITS
MAX_GB_COLS = 1 << _GB_BITS
MAX_VMEM_WORDS = 1 << _VADDR_BITS
MAX_COUNT = (1 << _COUNT_BITS) - 1


class Opcode(enum.Enum, shape=6):
    """Every command the ASIC controller executes."""

    # control and scalar
    NOP = 0
    END = 1
    SYNC = 2
    SLI = 3
    SADD = 4
    SMUL = 5
    SDIV = 6
    SMOD = 7
    BLT = 8
    BGE = 9
    # PIM: global buffer, bank MACs, bank reads and writes
    WR_GB = 16
    MAC_ABK = 17
    MAC_SBK = 18
    RD_MAC = 19
    WR_BANK = 20
    RD_BANK = 21
    WR_ABK = 22
    # ASIC vector unit (binary32)
    VADD = 32
    VSUB = 33
    VMUL = 34
    VADDI = 35
    VMULI = 36
    VSET = 37
    VMOV = 38
    VSUM = 39
    VMAX = 40
    VEXP = 41
    VRECIP = 42
    VRSQRT = 43
    VGELU = 44
    VARGMAX = 45


class ScalarFormat(data.Struct):
    """Control and scalar-register instructions."""

    rd: _REG
    rs: _REG
    rt: _REG
    imm: signed(32)


class PimFormat(data.Struct):
    """Instructions that move data to, from or within the PIM channels."""

    ch_mask: unsigned(_CHMASK_BITS)  # bit c selects channel c
    bank: unsigned(_BANK_BITS)  # global bank index: channel * banks_per_channel + bank
    bank_reg: _REG
    addr: unsigned(_BANK_ADDR_BITS)  # BF16 element address inside a bank
    addr_reg: _REG
    gb: unsigned(_GB_BITS)  # first global-buffer column
    n: unsigned(_COUNT_BITS)  # columns (WR_GB, MAC_*) or elements (WR_BANK, RD_BANK)
    n_reg: _REG
    vaddr: unsigned(_VADDR_BITS)  # vector-memory word address
    vaddr_reg: _REG


class VectorFormat(data.Struct):
    """ASIC vector-unit instructions on binary32 vector memory."""

    dst: unsigned(_VADDR_BITS)
    dst_reg: _REG
    a: unsigned(_VADDR_BITS)
    a_reg: _REG
    b: unsigned(_VADDR_BITS)
    n: unsigned(_COUNT_BITS)
    n_reg: _REG
    bcast: unsigned(1)  # operand b is the single word at b, broadcast
    rd: _REG  # VARGMAX result register
    imm: unsigned(32)  # binary32 bit pattern (VADDI, VMULI, VSET)


class Body(data.Union):
    """The per-format operands of an instruction."""

    scalar: ScalarFormat
    pim: PimFormat
    vector: VectorFormat


class Instr(data.Struct):
    """One instruction word (padded to :data:`WORD_BITS` when stored)."""

    opcode: Opcode
    body: Body


SCALAR_OPS = frozenset({Opcode.NOP, Opcode.END, Opcode.SYNC, Opcode.SLI, Opcode.SADD,
                        Opcode.SMUL, Opcode.SDIV, Opcode.SMOD, Opcode.BLT, Opcode.BGE})
PIM_OPS = frozenset({Opcode.WR_GB, Opcode.MAC_ABK, Opcode.MAC_SBK, Opcode.RD_MAC,
                     Opcode.WR_BANK, Opcode.RD_BANK, Opcode.WR_ABK})
VECTOR_OPS = frozenset(op for op in Opcode if op not in SCALAR_OPS | PIM_OPS)


def format_of(op: Opcode) -> str:
    """Name of the body format (``scalar``, ``pim`` or ``vector``) an opcode uses."""
    if op in SCALAR_OPS:
        return "scalar"
    if op in PIM_OPS:
        return "pim"
    return "vector"


@dataclass(frozen=True)
class FieldSpec:
    """Where one operand sits in the instruction word."""

    name: str
    offset: int  # bit offset in the instruction word
    width: int
    signed: bool


def _field_specs() -> dict[str, tuple[FieldSpec, ...]]:
    layout = Instr.as_shape()
    body_offset = layout["body"].offset
    out: dict[str, tuple[FieldSpec, ...]] = {}
    for fmt, fmt_field in Body.as_shape():
        specs = []
        for name, fld in fmt_field.shape.as_shape():
            specs.append(FieldSpec(name, body_offset + fld.offset, fld.width,
                                   bool(getattr(fld.shape, "signed", False))))
        out[fmt] = tuple(specs)
    return out


#: Operand fields of each format, derived from the Amaranth layout (never written twice).
FIELDS: dict[str, tuple[FieldSpec, ...]] = _field_specs()
_OPCODE_WIDTH = Instr.as_shape()["opcode"].width
_OPCODES_BY_VALUE = {op.value: op for op in Opcode}
_FORMAT_WIDTH = {fmt: Instr.as_shape()["body"].offset + Body.as_shape()[fmt].shape.as_shape().size
                 for fmt in FIELDS}
assert Instr.as_shape().size <= WORD_BITS
_HEX = WORD_BITS // 4  # hex digits of a whole word (error messages)


@dataclass(frozen=True)
class Instruction:
    """A decoded instruction: opcode plus the operands of its format (absent ones are 0)."""

    op: Opcode
    args: Mapping[str, int]

    def __getattr__(self, name: str) -> int:
        try:
            return self.args[name]
        except KeyError:
            raise AttributeError(name) from None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Instruction) and self.op == other.op
                and _full(self.op, self.args) == _full(other.op, other.args))

    def __hash__(self) -> int:
        return hash((self.op, tuple(sorted(_full(self.op, self.args).items()))))


def _full(op: Opcode, args: Mapping[str, int]) -> dict[str, int]:
    return {f.name: int(args.get(f.name, 0)) for f in FIELDS[format_of(op)]}


def make(op: Opcode, **args: int) -> Instruction:
    """Build an instruction, checking every operand against its field's range."""
    fmt = format_of(op)
    names = {f.name for f in FIELDS[fmt]}
    unknown = sorted(set(args) - names)
    if unknown:
        raise PimgptError(f"{op.name}: unknown operand(s) {', '.join(unknown)} "
                          f"(the {fmt} format has {', '.join(f.name for f in FIELDS[fmt])})")
    for spec in FIELDS[fmt]:
        if spec.name in args:
            _check_range(op, spec, int(args[spec.name]))
    return Instruction(op, _full(op, args))


def _check_range(op: Opcode, spec: FieldSpec, value: int) -> None:
    if spec.signed:
        lo, hi = -(1 << (spec.width - 1)), (1 << (spec.width - 1)) - 1
    else:
        lo, hi = 0, (1 << spec.width) - 1
    if not lo <= value <= hi:
        raise PimgptError(f"{op.name}: operand {spec.name}={value} is out of range "
                          f"[{lo}, {hi}]")


def encode(instr: Instruction) -> int:
    """The instruction word as an integer (bit 0 = least significant bit of the opcode)."""
    word = instr.op.value
    for spec in FIELDS[format_of(instr.op)]:
        value = int(instr.args.get(spec.name, 0))
        word |= (value & ((1 << spec.width) - 1)) << spec.offset
    return word


def decode(word: int) -> Instruction:
    """Inverse of :func:`encode`; unknown opcodes and non-zero unused bits are errors."""
    opval = word & ((1 << _OPCODE_WIDTH) - 1)
    op = _OPCODES_BY_VALUE.get(opval)
    if op is None:
        raise PimgptError(f"invalid instruction word 0x{word:0{_HEX}x}: unknown opcode {opval}")
    fmt = format_of(op)
    if word >> _FORMAT_WIDTH[fmt]:
        raise PimgptError(f"invalid instruction word 0x{word:0{_HEX}x}: reserved bits of a "
                          f"{op.name} instruction are not zero")
    args = {}
    for spec in FIELDS[fmt]:
        value = (word >> spec.offset) & ((1 << spec.width) - 1)
        if spec.signed and value >> (spec.width - 1):
            value -= 1 << spec.width
        args[spec.name] = value
    return Instruction(op, args)


def encode_program(program: Iterable[Instruction]) -> bytes:
    """Instruction words, little-endian, :data:`WORD_BYTES` each."""
    return b"".join(encode(i).to_bytes(WORD_BYTES, "little") for i in program)


def decode_program(blob: bytes) -> list[Instruction]:
    """Inverse of :func:`encode_program`."""
    if len(blob) % WORD_BYTES:
        raise PimgptError(f"code section is {len(blob)} bytes, not a multiple of {WORD_BYTES}")
    return [decode(int.from_bytes(blob[i:i + WORD_BYTES], "little"))
            for i in range(0, len(blob), WORD_BYTES)]


def describe() -> dict[str, Any]:
    """Machine-readable description of the ISA (what :data:`ISA_HASH` covers)."""
    return {
        "version": ISA_VERSION,
        "word_bits": WORD_BITS,
        "opcode_bits": _OPCODE_WIDTH,
        "opcodes": {op.name: op.value for op in Opcode},
        "formats": {op.name: format_of(op) for op in Opcode},
        "fields": {fmt: [[f.name, f.offset, f.width, f.signed] for f in specs]
                   for fmt, specs in FIELDS.items()},
        "registers": {"count": NUM_SREGS, "bits": SREG_BITS, "pos": REG_POS,
                      "token_in": REG_TOKEN_IN, "token_out": REG_TOKEN_OUT},
    }


#: SHA-256 of :func:`describe`; written into every ``.pimbin`` and Verilog manifest.
ISA_HASH = hashlib.sha256(json.dumps(describe(), sort_keys=True).encode()).hexdigest()
