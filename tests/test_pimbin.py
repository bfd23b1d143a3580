"""The .pimbin container: round trips, determinism, and every way a file can be wrong."""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl.isa import Opcode
from pimgpt.hdl.params import PAPER, TINY
from pimgpt.mapping import pimbin
from pimgpt.mapping.pimbin import PimBinary, read_header, read_pimbin, write_pimbin

ENTRY = struct.Struct("<4sIQQII")


def _program() -> list[isa.Instruction]:
    return [
        isa.make(Opcode.SLI, rd=4, imm=-7),
        isa.make(Opcode.MAC_ABK, ch_mask=0b11, addr=1024, addr_reg=1, gb=2, n=48, n_reg=5),
        isa.make(Opcode.WR_GB, ch_mask=0x80000001, gb=1, n=2, vaddr=8),  # channel 31
        isa.make(Opcode.RD_MAC, ch_mask=3, vaddr=256, vaddr_reg=4),
        isa.make(Opcode.VMULI, dst=1, a=2, n=16, imm=0x3E000000),
        isa.make(Opcode.BLT, rs=4, rt=6, imm=1),
        isa.make(Opcode.END),
    ]


def _image(n_elems: int = 300, banks: int = TINY.geometry.banks) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 1 << 16, size=(banks, n_elems), dtype=np.uint16)


def _binary(image: np.ndarray | None = None) -> PimBinary:
    return PimBinary(
        config=TINY,
        code=_program(),
        meta={"model": {"name": "toy", "d": 64}, "options": {"max_tokens": 8},
              "report": {"banks_used": np.int64(8), "fill": 0.25, "text": "é ✓"}},
        symbols=[{"name": "wte.weight", "region": "weights", "placement": [0, 1, 2]},
                 {"name": "h.0.ln_1.weight", "region": "vmem", "vaddr": 64}],
        constants=[(0, np.array([1.0, -0.0, np.inf], np.float32)),
                   (100, np.array([0x7FC00001, 0xFF800000, 1], np.uint32).view(np.float32)),
                   (200, np.zeros(0, np.float32))],
        image=image,
    )


def _sections(path: Path) -> dict[str, tuple[int, int, int, int, int]]:
    """tag -> (table entry offset, flags, offset, length, crc)."""
    data = path.read_bytes()
    (count,) = struct.unpack_from("<I", data, 76)
    out = {}
    for i in range(count):
        pos = 80 + i * ENTRY.size
        tag, flags, off, length, crc, _ = ENTRY.unpack_from(data, pos)
        out[tag.decode()] = (pos, flags, off, length, crc)
    return out


def _replace_section(path: Path, tag: str, blob: bytes) -> None:
    """Overwrite a section's bytes in place (same length) and fix its CRC."""
    data = bytearray(path.read_bytes())
    pos, flags, off, length, _ = _sections(path)[tag]
    assert len(blob) == length
    data[off:off + length] = blob
    ENTRY.pack_into(data, pos, tag.encode(), flags, off, length, zlib.crc32(blob), 0)
    path.write_bytes(bytes(data))


def _patch(path: Path, offset: int, blob: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + len(blob)] = blob
    path.write_bytes(bytes(data))


def _assert_same(a: PimBinary, b: PimBinary) -> None:
    assert b.config == a.config and b.config.hash == a.config.hash
    assert b.code == a.code
    assert b.meta == json.loads(json.dumps(a.meta, default=lambda o: o.item()))
    assert b.symbols == a.symbols
    assert [v for v, _ in b.constants] == [v for v, _ in a.constants]
    for (_, x), (_, y) in zip(a.constants, b.constants):
        assert y.dtype == np.float32
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32))  # NaN payloads too
    if a.image is None:
        assert b.image is None
    else:
        assert b.image.dtype == np.uint16 and b.image.shape == a.image.shape
        assert np.array_equal(np.asarray(b.image), a.image)


@pytest.mark.parametrize("with_image", [False, True])
def test_round_trip_every_section(tmp_path, with_image):
    binary = _binary(_image() if with_image else None)
    path = tmp_path / "prog.pimbin"
    write_pimbin(path, binary)
    back = read_pimbin(path)
    _assert_same(binary, back)
    assert back.meta["report"]["text"] == "é ✓"
    assert read_pimbin(path, TINY).code == binary.code

    header = read_header(path)
    assert header.version == pimbin.FORMAT_VERSION
    assert header.isa_hash == isa.ISA_HASH and header.config_hash == TINY.hash
    tags = [s.tag for s in header.sections]
    assert tags == ["META", "CODE", "SYMS", "CNST"] + (["IMAG"] if with_image else [])
    for s in header.sections:
        assert s.offset % 64 == 0
        assert s.flags == (0 if s.tag == "IMAG" else pimbin.FLAG_CRC)
    assert header.file_size == path.stat().st_size
    assert path.read_bytes()[:8] == pimbin.MAGIC


def test_image_is_memory_mapped_read_only(tmp_path):
    path = tmp_path / "prog.pimbin"
    write_pimbin(path, _binary(_image()))
    image = read_pimbin(path).image
    assert isinstance(image, np.memmap)
    with pytest.raises(ValueError):
        image[0, 0] = 1


def test_empty_program_and_empty_image(tmp_path):
    path = tmp_path / "empty.pimbin"
    binary = PimBinary(config=PAPER, code=[],
                       image=np.zeros((PAPER.geometry.banks, 0), np.uint16))
    write_pimbin(path, binary)
    back = read_pimbin(path, PAPER)
    _assert_same(binary, back)
    assert back.meta == {} and back.symbols == [] and back.constants == []


def test_image_written_in_chunks_and_from_non_contiguous_arrays(tmp_path, monkeypatch):
    monkeypatch.setattr(pimbin, "_IMAGE_CHUNK_ELEMS", 7)
    full = _image(600)
    strided = full[:, ::2]  # not contiguous
    fortran = np.asfortranarray(_image(45))
    for i, image in enumerate((strided, fortran)):
        path = tmp_path / f"img{i}.pimbin"
        write_pimbin(path, _binary(image))
        assert np.array_equal(read_pimbin(path).image, image)


def test_output_is_deterministic(tmp_path):
    a, b = tmp_path / "a.pimbin", tmp_path / "b.pimbin"
    write_pimbin(a, _binary(_image()))
    reordered = _binary(_image())
    reordered.meta = dict(reversed(list(reordered.meta.items())))  # key order must not matter
    write_pimbin(b, reordered)
    assert a.read_bytes() == b.read_bytes()
    write_pimbin(b, read_pimbin(a))  # rewriting what was read changes nothing
    assert a.read_bytes() == b.read_bytes()


# --- bad files ----------------------------------------------------------------------------------

@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.pimbin"
    write_pimbin(path, _binary(_image()))
    return path


def test_missing_file(tmp_path):
    with pytest.raises(PimgptError, match=r"^binary file not found: .*nope\.pimbin$"):
        read_pimbin(tmp_path / "nope.pimbin")


def test_directory_is_not_a_pimbin(tmp_path):
    with pytest.raises(PimgptError, match=r"is a directory, not a \.pimbin$"):
        read_pimbin(tmp_path)


@pytest.mark.parametrize("content", [b"", b"PIM", b"hello, this is plain text\n" * 10])
def test_bad_magic(tmp_path, content):
    path = tmp_path / "text.pimbin"
    path.write_bytes(content)
    with pytest.raises(PimgptError, match=r"text\.pimbin is not a \.pimbin file \(bad magic"):
        read_pimbin(path)


@pytest.mark.parametrize("version", [1, 3])
def test_unsupported_version(good, version):
    # version 1: the 16-byte instruction words of ISA version 1 (16-channel mask)
    assert pimbin.FORMAT_VERSION == 2
    _patch(good, 8, struct.pack("<I", version))
    with pytest.raises(PimgptError, match=rf"^\S*good\.pimbin has \.pimbin format version "
                                          rf"{version}; this pimgpt reads version 2 only "
                                          rf"\(recompile it\)$"):
        read_pimbin(good)
    with pytest.raises(PimgptError, match=rf"format version {version}"):
        read_header(good)


def test_a_version_1_file_gives_one_clear_error(tmp_path, capsys):
    """A whole version-1 file (16-byte words, old ISA hash): the version is named first, on one
    line, by the CLI too."""
    from pimgpt.cli import main
    path = tmp_path / "old.pimbin"
    write_pimbin(path, _binary())
    _patch(path, 8, struct.pack("<I", 1))
    _patch(path, 12, bytes(32))
    assert main(["disasm", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "format version 1; this pimgpt reads version 2 only" in err


def test_isa_hash_mismatch(good):
    _patch(good, 12, bytes.fromhex("1234abcd" * 8))
    with pytest.raises(PimgptError, match=rf"good\.pimbin was built for a different ISA "
                                          rf"\(hash 1234abcd…, this pimgpt has "
                                          rf"{isa.ISA_HASH[:8]}…\); recompile it$"):
        read_pimbin(good)


def test_embedded_config_inconsistent_with_header(good):
    _patch(good, 44, bytes.fromhex(PAPER.hash))
    with pytest.raises(PimgptError, match=r"good\.pimbin is corrupt: its embedded machine "
                                          r"config .* does not match the header"):
        read_pimbin(good)


def test_compiled_for_another_machine(good):
    with pytest.raises(PimgptError, match=rf"good\.pimbin was compiled for machine 'tiny' "
                                          rf"\(config {TINY.hash[:8]}…\), not 'paper' "
                                          rf"\({PAPER.hash[:8]}…\)$"):
        read_pimbin(good, PAPER)
    renamed = TINY.replace(name="my-tiny")  # the name is not part of the hash
    assert read_pimbin(good, renamed).config.name == "tiny"


@pytest.mark.parametrize("keep", [60, 80, 200, 300, -1])
def test_truncated(good, keep):
    data = good.read_bytes()
    good.write_bytes(data[:keep])
    with pytest.raises(PimgptError, match=r"good\.pimbin is truncated"):
        read_pimbin(good)


def test_truncated_inside_a_small_section(tmp_path):
    path = tmp_path / "small.pimbin"
    write_pimbin(path, _binary())
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(PimgptError, match=r"is truncated: section CNST ends at byte \d+, the "
                                          r"file has \d+ bytes$"):
        read_pimbin(path)


@pytest.mark.parametrize("tag", ["META", "CODE", "SYMS", "CNST"])
def test_crc_mismatch_names_the_section(good, tag):
    _, _, off, length, _ = _sections(good)[tag]
    data = bytearray(good.read_bytes())
    data[off + length // 2] ^= 0x40
    good.write_bytes(bytes(data))
    with pytest.raises(PimgptError, match=rf"good\.pimbin is corrupt: section {tag} fails its "
                                          rf"CRC-32 check$"):
        read_pimbin(good)


@pytest.mark.parametrize("tag", ["META", "SYMS"])
def test_malformed_json(good, tag):
    length = _sections(good)[tag][3]
    _replace_section(good, tag, b"{" * length)
    with pytest.raises(PimgptError, match=rf"good\.pimbin: section {tag} is not valid JSON"):
        read_pimbin(good)


def test_json_of_the_wrong_kind(good):
    length = _sections(good)["SYMS"][3]
    _replace_section(good, "SYMS", b"{}".ljust(length))
    with pytest.raises(PimgptError, match=r"section SYMS must hold a JSON array"):
        read_pimbin(good)


def test_bad_instruction_word(good):
    length = _sections(good)["CODE"][3]
    _replace_section(good, "CODE", b"\x3f" + b"\0" * (length - 1))
    with pytest.raises(PimgptError, match=r"good\.pimbin: section CODE: invalid instruction "
                                          r"word 0x0+3f: unknown opcode 63$"):
        read_pimbin(good)


def test_malformed_constants(good):
    length = _sections(good)["CNST"][3]
    _replace_section(good, "CNST", struct.pack("<I", 1000).ljust(length, b"\0"))
    with pytest.raises(PimgptError, match=r"good\.pimbin: section CNST is malformed$"):
        read_pimbin(good)


def test_image_with_another_bank_count(good):
    off = _sections(good)["IMAG"][2]
    _patch(good, off, struct.pack("<I", 16))
    with pytest.raises(PimgptError, match=r"good\.pimbin: DRAM image has 16 banks but machine "
                                          r"'tiny' has 8$"):
        read_pimbin(good)


def test_image_length_inconsistent(good):
    off = _sections(good)["IMAG"][2]
    _patch(good, off + 4, struct.pack("<Q", 299))
    with pytest.raises(PimgptError, match=r"section IMAG is malformed"):
        read_pimbin(good)


# --- bad input to the writer, and atomicity -------------------------------------------------------

@pytest.mark.parametrize(("change", "message"), [
    ({"image": np.zeros((TINY.geometry.banks + 1, 4), np.uint16)},
     r"DRAM image has 9 bank rows but machine 'tiny' has 8 banks"),
    ({"image": np.zeros((TINY.geometry.banks, 4), np.float32)},
     r"DRAM image must be a 2-D uint16 array .* not 2-D float32 array"),
    ({"image": np.zeros((TINY.geometry.banks, TINY.geometry.bank_elems + 1), np.uint16)},
     r"DRAM image has 262145 elements per bank but a bank of machine 'tiny' holds 262144"),
    ({"constants": [(0, np.zeros(3, np.float64))]},
     r"constant at vector address 0 must be a 1-D float32 array, not 1-D float64"),
    ({"constants": [(TINY.asic.vmem_words - 1, np.zeros(2, np.float32))]},
     r"constant at vector address 16383 \(2 words\) lies outside vector memory"),
    ({"meta": {"x": {1, 2}}}, r"cannot store meta in a \.pimbin: set is not JSON-serialisable"),
    ({"meta": {"x": float("nan")}}, r"cannot store meta in a \.pimbin: Out of range float"),
    ({"symbols": ({"name": "x"},)}, r"PimBinary\.symbols must be a list, not tuple"),
])
def test_writer_rejects_bad_input_and_leaves_no_file(tmp_path, change, message):
    binary = dataclasses.replace(_binary(), **change)
    with pytest.raises(PimgptError, match=message):
        write_pimbin(tmp_path / "out.pimbin", binary)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def explode(fh, image):
        fh.write(b"partial image data")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pimbin, "_write_image", explode)
    out = tmp_path / "out.pimbin"
    with pytest.raises(OSError, match="No space left"):
        write_pimbin(out, _binary(_image()))
    assert list(tmp_path.iterdir()) == []

    out.write_bytes(b"previous contents")  # an existing file survives a failed rewrite intact
    with pytest.raises(OSError):
        write_pimbin(out, _binary(_image()))
    assert list(tmp_path.iterdir()) == [out]
    assert out.read_bytes() == b"previous contents"


def test_output_directory_must_exist(tmp_path):
    with pytest.raises(PimgptError, match="output directory does not exist"):
        write_pimbin(tmp_path / "missing" / "out.pimbin", _binary())
