"""The ``.pimbin`` file: one compiled program, its machine, its tensors and its DRAM image.

A ``.pimbin`` holds everything a machine model (or the host driver of real hardware) needs to
run a compiled GPT: the instruction stream, the machine description it was compiled for, the
vector-memory constants to preload, the symbol table and the BF16 contents of every bank.
The full specification, with examples, is ``docs/pimbin.md``; in short (all integers
little-endian)::

    offset  size       field
    0       8          magic  b"\\x89PIMGPT\\n"
    8       4          u32 format version (FORMAT_VERSION = 2)
    12      32         ISA hash (raw SHA-256 bytes of pimgpt.hdl.isa.ISA_HASH)
    44      32         config hash (raw SHA-256 bytes of MachineConfig.hash)
    76      4          u32 section count S
    80      32 * S     section table, one entry per section:
                         4s tag, u32 flags, u64 offset, u64 length, u32 crc32, u32 reserved (0)
    ...                sections, each starting at a multiple of 64 bytes (zero padding between)

Section flags: bit 0 set means ``crc32`` holds the CRC-32 (zlib) of the section's bytes and the
reader checks it. Every section but ``IMAG`` carries one; the image can be gigabytes, so it is
memory-mapped instead of read. Sections, in file order:

``META``  UTF-8 JSON object ``{"config": MachineConfig.to_dict(), "meta": PimBinary.meta}``.
``CODE``  :func:`pimgpt.hdl.isa.encode_program`: 20-byte (``isa.WORD_BYTES``) instruction words.
``SYMS``  UTF-8 JSON array: :attr:`PimBinary.symbols`.
``CNST``  u32 count, then per constant: u32 vmem word address, u32 n, n binary32 values.
``IMAG``  u32 banks, u64 n_elems, then banks x n_elems uint16 BF16 bit patterns, row-major
          (bank g's element addresses 0 .. n_elems-1); absent for a layout-only binary.

JSON is written with sorted keys and no whitespace, so the same :class:`PimBinary` always gives
the same bytes. Readers skip sections with unknown tags (their CRC is still checked).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pimgpt.errors import PimgptError
from pimgpt.fileio import atomic_output
from pimgpt.hdl import isa
from pimgpt.hdl.isa import Instruction
from pimgpt.hdl.params import MachineConfig

MAGIC = b"\x89PIMGPT\n"  # the high byte and the newline catch 7-bit and text-mode transfers
#: 2: 20-byte instruction words (ISA version 2, 32-bit channel mask); 1: 16-byte words.
#: A file of another version is refused with one error asking to recompile it.
FORMAT_VERSION = 2
ALIGN = 64
FLAG_CRC = 1

_HEADER = struct.Struct("<8sI32s32sI")
_ENTRY = struct.Struct("<4sIQQII")
_CNST_HEAD = struct.Struct("<I")
_CNST_ENTRY = struct.Struct("<II")
_IMAG_HEAD = struct.Struct("<IQ")
_MAX_SECTIONS = 256  # far above what any writer emits; bounds the table read of a corrupt file
_IMAGE_CHUNK_ELEMS = 1 << 23  # 16 MiB per write: no giant temporary for a multi-GB image

TAG_META, TAG_CODE, TAG_SYMS, TAG_CNST, TAG_IMAG = b"META", b"CODE", b"SYMS", b"CNST", b"IMAG"
_REQUIRED = (TAG_META, TAG_CODE, TAG_SYMS, TAG_CNST)


@dataclass
class PimBinary:
    """A compiled program with everything needed to run it on one machine."""

    config: MachineConfig
    code: list[Instruction]
    #: JSON-able: model spec, compile options, layout report.
    meta: dict = field(default_factory=dict)
    #: JSON-able: one entry per tensor (name, region, placement).
    symbols: list[dict] = field(default_factory=list)
    #: (vector-memory word address, float32 array) preloaded into the ASIC's vector memory.
    constants: list[tuple[int, np.ndarray]] = field(default_factory=list)
    #: uint16 BF16 bit patterns, shape (config.geometry.banks, n_elems); None = layout only.
    image: np.ndarray | None = None

    def require_machine(self, config: MachineConfig) -> None:
        """Refuse to run on ``config`` unless the program was compiled for it (same hash)."""
        if self.config.hash != config.hash:
            raise PimgptError(f"program was compiled for machine '{self.config.name}', not "
                              f"'{config.name}'")


@dataclass(frozen=True)
class Section:
    """One entry of the section table."""

    tag: str
    flags: int
    offset: int
    length: int
    crc32: int


@dataclass(frozen=True)
class Header:
    """The fixed header and section table of a ``.pimbin`` (what ``pimgpt disasm`` shows)."""

    version: int
    isa_hash: str  # hex
    config_hash: str  # hex
    sections: tuple[Section, ...]
    file_size: int


# --- writing -------------------------------------------------------------------------------------

def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays creep into reports; store them as the plain values they hold
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _json_bytes(obj: Any, what: str) -> bytes:
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise PimgptError(f"cannot store {what} in a .pimbin: {exc}") from None
    return text.encode("utf-8")


def _constants_bytes(constants: list[tuple[int, np.ndarray]], config: MachineConfig) -> bytes:
    parts = [_CNST_HEAD.pack(len(constants))]
    for vaddr, values in constants:
        arr = np.asarray(values)
        if arr.dtype != np.float32 or arr.ndim != 1:
            raise PimgptError(f"constant at vector address {vaddr} must be a 1-D float32 array, "
                              f"not {arr.ndim}-D {arr.dtype}")
        vaddr = int(vaddr)
        if vaddr < 0 or vaddr + arr.size > config.asic.vmem_words:
            raise PimgptError(f"constant at vector address {vaddr} ({arr.size} words) lies "
                              f"outside vector memory (asic.vmem_words = "
                              f"{config.asic.vmem_words})")
        parts.append(_CNST_ENTRY.pack(vaddr, arr.size))
        parts.append(arr.astype("<f4", copy=False).tobytes())
    return b"".join(parts)


def _check_image(image: np.ndarray, config: MachineConfig) -> None:
    g = config.geometry
    if not isinstance(image, np.ndarray) or image.dtype != np.uint16 or image.ndim != 2:
        what = (f"{image.ndim}-D {image.dtype} array" if isinstance(image, np.ndarray)
                else type(image).__name__)
        raise PimgptError(f"DRAM image must be a 2-D uint16 array (banks, elements), not {what}")
    if image.shape[0] != g.banks:
        raise PimgptError(f"DRAM image has {image.shape[0]} bank rows but machine "
                          f"'{config.name}' has {g.banks} banks")
    if image.shape[1] > g.bank_elems:
        raise PimgptError(f"DRAM image has {image.shape[1]} elements per bank but a bank of "
                          f"machine '{config.name}' holds {g.bank_elems}")


def _write_image(fh: BinaryIO, image: np.ndarray) -> None:
    """Stream the image bank by bank, in bounded chunks (never one huge bytes object)."""
    for row in image:
        for start in range(0, row.shape[0], _IMAGE_CHUNK_ELEMS):
            chunk = np.ascontiguousarray(row[start:start + _IMAGE_CHUNK_ELEMS], dtype="<u2")
            fh.write(memoryview(chunk).cast("B"))


def _pad(pos: int) -> int:
    return -pos % ALIGN


def write_pimbin(path: str | Path, binary: PimBinary) -> None:
    """Write ``binary`` to ``path`` atomically (a failed write leaves no file behind).

    Every input is validated before the file is opened; the same binary gives the same bytes.
    """
    config = binary.config
    if not isinstance(binary.meta, dict):
        raise PimgptError(f"PimBinary.meta must be a dict, not {type(binary.meta).__name__}")
    if not isinstance(binary.symbols, list):
        raise PimgptError(
            f"PimBinary.symbols must be a list, not {type(binary.symbols).__name__}")
    small = [
        (TAG_META, _json_bytes({"config": config.to_dict(), "meta": binary.meta}, "meta")),
        (TAG_CODE, isa.encode_program(binary.code)),
        (TAG_SYMS, _json_bytes(binary.symbols, "symbols")),
        (TAG_CNST, _constants_bytes(binary.constants, config)),
    ]
    image = binary.image
    if image is not None:
        _check_image(image, config)

    count = len(small) + (image is not None)
    pos = _HEADER.size + count * _ENTRY.size
    entries = []
    for tag, blob in small:
        pos += _pad(pos)
        entries.append(_ENTRY.pack(tag, FLAG_CRC, pos, len(blob), zlib.crc32(blob), 0))
        pos += len(blob)
    if image is not None:
        pos += _pad(pos)
        length = _IMAG_HEAD.size + image.size * 2
        entries.append(_ENTRY.pack(TAG_IMAG, 0, pos, length, 0, 0))

    header = _HEADER.pack(MAGIC, FORMAT_VERSION, bytes.fromhex(isa.ISA_HASH),
                          bytes.fromhex(config.hash), count)
    with atomic_output(path) as fh:
        written = fh.write(header + b"".join(entries))
        for _, blob in small:
            written += fh.write(b"\0" * _pad(written))
            written += fh.write(blob)
        if image is not None:
            fh.write(b"\0" * _pad(written))
            fh.write(_IMAG_HEAD.pack(image.shape[0], image.shape[1]))
            _write_image(fh, image)


# --- reading -------------------------------------------------------------------------------------

def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise PimgptError(f"binary file not found: {path}") from None
    except IsADirectoryError:
        raise PimgptError(f"{path} is a directory, not a .pimbin") from None
    except OSError as exc:
        raise PimgptError(f"cannot read {path}: {exc.strerror}") from None


def _read_header(fh: BinaryIO, path: Path) -> Header:
    size = os.fstat(fh.fileno()).st_size
    head = fh.read(_HEADER.size)
    if len(head) < len(MAGIC) or head[:len(MAGIC)] != MAGIC:
        raise PimgptError(f"{path} is not a .pimbin file (bad magic number)")
    if len(head) < _HEADER.size:
        raise PimgptError(f"{path} is truncated ({size} bytes, shorter than the header)")
    _, version, isa_raw, cfg_raw, count = _HEADER.unpack(head)
    if version != FORMAT_VERSION:
        raise PimgptError(f"{path} has .pimbin format version {version}; this pimgpt reads "
                          f"version {FORMAT_VERSION} only (recompile it)")
    if isa_raw.hex() != isa.ISA_HASH:
        raise PimgptError(f"{path} was built for a different ISA (hash {isa_raw.hex()[:8]}…, "
                          f"this pimgpt has {isa.ISA_HASH[:8]}…); recompile it")
    if count > _MAX_SECTIONS:
        raise PimgptError(f"{path} is corrupt: section table claims {count} sections")
    table = fh.read(count * _ENTRY.size)
    if len(table) < count * _ENTRY.size:
        raise PimgptError(f"{path} is truncated ({size} bytes, shorter than its section table)")
    sections = []
    for i in range(count):
        raw_tag, flags, offset, length, crc, _ = _ENTRY.unpack_from(table, i * _ENTRY.size)
        tag = raw_tag.decode("ascii", errors="replace")
        if offset + length > size:
            raise PimgptError(f"{path} is truncated: section {tag} ends at byte "
                              f"{offset + length}, the file has {size} bytes")
        if any(s.tag == tag for s in sections):
            raise PimgptError(f"{path} is corrupt: section {tag} appears twice")
        sections.append(Section(tag, flags, offset, length, crc))
    return Header(version, isa_raw.hex(), cfg_raw.hex(), tuple(sections), size)


def read_header(path: str | Path) -> Header:
    """The header and section table of a ``.pimbin``, checked (magic, version, ISA, sizes)."""
    path = Path(path)
    with _open(path) as fh:
        return _read_header(fh, path)


def _read_section(fh: BinaryIO, path: Path, sec: Section) -> bytes:
    fh.seek(sec.offset)
    blob = fh.read(sec.length)
    if len(blob) != sec.length:  # the file shrank under us
        raise PimgptError(f"{path} is truncated: section {sec.tag} is incomplete")
    if sec.flags & FLAG_CRC and zlib.crc32(blob) != sec.crc32:
        raise PimgptError(f"{path} is corrupt: section {sec.tag} fails its CRC-32 check")
    return blob


def _parse_json(blob: bytes, path: Path, tag: str, kind: type) -> Any:
    try:
        value = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PimgptError(f"{path}: section {tag} is not valid JSON ({exc})") from None
    if not isinstance(value, kind):
        raise PimgptError(f"{path}: section {tag} must hold a JSON "
                          f"{'object' if kind is dict else 'array'}")
    return value


def _parse_constants(blob: bytes, path: Path, config: MachineConfig
                     ) -> list[tuple[int, np.ndarray]]:
    bad = PimgptError(f"{path}: section CNST is malformed")
    if len(blob) < _CNST_HEAD.size:
        raise bad
    (count,), pos = _CNST_HEAD.unpack_from(blob), _CNST_HEAD.size
    out = []
    for _ in range(count):
        if pos + _CNST_ENTRY.size > len(blob):
            raise bad
        vaddr, n = _CNST_ENTRY.unpack_from(blob, pos)
        pos += _CNST_ENTRY.size
        if pos + 4 * n > len(blob):
            raise bad
        if vaddr + n > config.asic.vmem_words:
            raise PimgptError(f"{path}: constant at vector address {vaddr} ({n} words) lies "
                              f"outside vector memory ({config.asic.vmem_words} words)")
        values = np.frombuffer(blob, dtype="<f4", count=n, offset=pos).astype(np.float32)
        out.append((vaddr, values))
        pos += 4 * n
    if pos != len(blob):
        raise bad
    return out


def _map_image(path: Path, fh: BinaryIO, sec: Section, config: MachineConfig) -> np.ndarray:
    if sec.length < _IMAG_HEAD.size:
        raise PimgptError(f"{path}: section IMAG is malformed")
    fh.seek(sec.offset)
    banks, n_elems = _IMAG_HEAD.unpack(fh.read(_IMAG_HEAD.size))
    g = config.geometry
    if banks != g.banks:
        raise PimgptError(f"{path}: DRAM image has {banks} banks but machine '{config.name}' "
                          f"has {g.banks}")
    if n_elems > g.bank_elems:
        raise PimgptError(f"{path}: DRAM image has {n_elems} elements per bank but a bank of "
                          f"machine '{config.name}' holds {g.bank_elems}")
    if sec.length != _IMAG_HEAD.size + 2 * banks * n_elems:
        raise PimgptError(f"{path}: section IMAG is malformed ({sec.length} bytes for "
                          f"{banks} x {n_elems} elements)")
    if n_elems == 0:  # mmap cannot map zero bytes
        return np.zeros((banks, 0), dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=sec.offset + _IMAG_HEAD.size,
                     shape=(banks, n_elems))


def read_pimbin(path: str | Path, config: MachineConfig | None = None) -> PimBinary:
    """Read and validate a ``.pimbin``; the image is memory-mapped read-only, not loaded.

    With ``config`` given, the binary must have been compiled for that machine (same
    :attr:`MachineConfig.hash`). The returned config is the one embedded in the file.
    """
    path = Path(path)
    with _open(path) as fh:
        header = _read_header(fh, path)
        by_tag = {s.tag: s for s in header.sections}
        for tag in _REQUIRED:
            if tag.decode() not in by_tag:
                raise PimgptError(f"{path} is corrupt: it has no {tag.decode()} section")
        blobs = {s.tag: _read_section(fh, path, s) for s in header.sections
                 if s.tag != TAG_IMAG.decode()}

        meta = _parse_json(blobs["META"], path, "META", dict)
        if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("meta"), dict):
            raise PimgptError(f"{path}: section META lacks its 'config' and 'meta' objects")
        embedded = MachineConfig.from_dict(meta["config"], where=f"{path}: embedded config")
        if embedded.hash != header.config_hash:
            raise PimgptError(f"{path} is corrupt: its embedded machine config (hash "
                              f"{embedded.hash[:8]}…) does not match the header's "
                              f"({header.config_hash[:8]}…)")
        if config is not None and config.hash != embedded.hash:
            raise PimgptError(f"{path} was compiled for machine '{embedded.name}' (config "
                              f"{embedded.hash[:8]}…), not '{config.name}' "
                              f"({config.hash[:8]}…)")
        try:
            code = isa.decode_program(blobs["CODE"])
        except PimgptError as exc:
            raise PimgptError(f"{path}: section CODE: {exc}") from None
        symbols = _parse_json(blobs["SYMS"], path, "SYMS", list)
        constants = _parse_constants(blobs["CNST"], path, embedded)
        image = None
        if "IMAG" in by_tag:
            image = _map_image(path, fh, by_tag["IMAG"], embedded)
    return PimBinary(config=embedded, code=code, meta=meta["meta"], symbols=symbols,
                     constants=constants, image=image)
