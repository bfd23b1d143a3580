"""The ISA encoding: encode/decode against the Amaranth layout itself, range checks, the hash."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa, isa_doc
from pimgpt.hdl.isa import Opcode

OPS = list(Opcode)


def _range(spec: isa.FieldSpec) -> tuple[int, int]:
    if spec.signed:
        return -(1 << (spec.width - 1)), (1 << (spec.width - 1)) - 1
    return 0, (1 << spec.width) - 1


def _format_end(fmt: str) -> int:
    return max(s.offset + s.width for s in isa.FIELDS[fmt])


@st.composite
def instructions(draw: st.DrawFn) -> tuple[Opcode, dict[str, int]]:
    """A random opcode with random in-range values for a random subset of its operands."""
    op = draw(st.sampled_from(OPS))
    fields = {}
    for spec in isa.FIELDS[isa.format_of(op)]:
        lo, hi = _range(spec)
        if draw(st.booleans()):
            fields[spec.name] = draw(st.one_of(st.sampled_from([lo, hi, 0]),
                                               st.integers(lo, hi)))
    return op, fields


@settings(max_examples=500, deadline=None)
@given(instructions())
def test_encode_matches_amaranth_layout_and_decode_inverts(case):
    op, fields = case
    fmt = isa.format_of(op)
    instr = isa.make(op, **fields)
    word = isa.encode(instr)
    assert 0 <= word < 1 << isa.WORD_BITS
    assert word == isa.Instr.const({"opcode": op, "body": {fmt: fields}}).as_bits()
    back = isa.decode(word)
    assert back == instr
    assert back.op is op
    assert set(back.args) == {s.name for s in isa.FIELDS[fmt]}
    assert isa.decode_program(isa.encode_program([instr, instr])) == [instr, instr]


def test_field_specs_come_from_the_layout():
    layout = isa.Instr.as_shape()
    body = layout["body"].offset
    for fmt, specs in isa.FIELDS.items():
        shape = isa.Body.as_shape()[fmt].shape.as_shape()
        assert [s.name for s in specs] == [name for name, _ in shape]
        for s in specs:
            assert s.offset == body + shape[s.name].offset
            assert s.width == shape[s.name].width


@pytest.mark.parametrize("opval", sorted(set(range(64)) - {op.value for op in Opcode}))
def test_decode_rejects_unknown_opcode(opval):
    with pytest.raises(PimgptError, match=rf"unknown opcode {opval}$"):
        isa.decode(opval)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(OPS), st.data())
def test_decode_rejects_nonzero_reserved_bits(op, data):
    bit = data.draw(st.integers(_format_end(isa.format_of(op)), isa.WORD_BITS - 1))
    with pytest.raises(PimgptError, match=rf"reserved bits of a {op.name} instruction"):
        isa.decode(op.value | (1 << bit))


def test_decode_program_rejects_partial_word():
    with pytest.raises(PimgptError, match="not a multiple of 20"):
        isa.decode_program(b"\0" * 21)
    with pytest.raises(PimgptError, match="not a multiple of 20"):
        isa.decode_program(b"\0" * 16)  # one ISA-1 (128-bit) word


def test_word_holds_a_32_channel_mask():
    assert isa.MAX_CHANNELS == 32 and isa.WORD_BITS == 160 and isa.WORD_BYTES == 20
    assert isa.Instr.as_shape().size <= isa.WORD_BITS
    instr = isa.make(Opcode.MAC_ABK, ch_mask=0xFFFFFFFF, addr=(1 << 28) - 16, gb=1023, n=64)
    word = isa.encode(instr)
    assert word.bit_length() <= isa.WORD_BITS and isa.decode(word) == instr
    assert isa.decode(word).ch_mask == 0xFFFFFFFF
    with pytest.raises(PimgptError, match=r"ch_mask=4294967296 is out of range"):
        isa.make(Opcode.WR_GB, ch_mask=1 << 32)


@pytest.mark.parametrize(("op", "args", "message"), [
    (Opcode.SLI, {"imm": 1 << 31}, r"SLI: operand imm=2147483648 is out of range "
                                   r"\[-2147483648, 2147483647\]"),
    (Opcode.SLI, {"imm": -(1 << 31) - 1}, r"SLI: operand imm=-2147483649 is out of range"),
    (Opcode.SADD, {"rd": 16}, r"SADD: operand rd=16 is out of range \[0, 15\]"),
    (Opcode.VADD, {"n": -1}, r"VADD: operand n=-1 is out of range \[0, 65535\]"),
    (Opcode.VSET, {"imm": 1 << 32}, r"VSET: operand imm=4294967296 is out of range"),
    (Opcode.MAC_ABK, {"addr": 1 << 28}, r"MAC_ABK: operand addr=268435456 is out of range"),
    (Opcode.VADD, {"bcast": 2}, r"VADD: operand bcast=2 is out of range \[0, 1\]"),
])
def test_make_rejects_out_of_range(op, args, message):
    with pytest.raises(PimgptError, match=message):
        isa.make(op, **args)


def test_make_rejects_unknown_operands():
    with pytest.raises(PimgptError, match=r"^VADD: unknown operand\(s\) ch_mask, foo "
                                          r"\(the vector format has dst, .*imm\)$"):
        isa.make(Opcode.VADD, foo=1, ch_mask=3)
    with pytest.raises(PimgptError, match=r"SLI: unknown operand\(s\) addr"):
        isa.make(Opcode.SLI, addr=0)


def test_instructions_compare_with_absent_operands_as_zero():
    assert isa.make(Opcode.SLI, rd=1) == isa.make(Opcode.SLI, rd=1, imm=0, rs=0)
    assert hash(isa.make(Opcode.SLI, rd=1)) == hash(isa.make(Opcode.SLI, rd=1, imm=0))
    assert isa.make(Opcode.SLI, rd=1) != isa.make(Opcode.SLI, rd=2)
    assert isa.make(Opcode.NOP) != isa.make(Opcode.END)


def test_isa_hash_is_stable_across_processes():
    script = "from pimgpt.hdl import isa; print(isa.ISA_HASH)"
    hashes = set()
    for seed in ("0", "12345"):  # str hashing differs per seed; the ISA hash must not
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True, env=env)
        hashes.add(out.stdout.strip())
    assert hashes == {isa.ISA_HASH}
    assert len(bytes.fromhex(isa.ISA_HASH)) == 32


def test_isa_doc_requires_semantics_for_every_opcode(monkeypatch):
    isa_doc.check_complete()
    monkeypatch.delitem(isa_doc.SEMANTICS, Opcode.VGELU)
    with pytest.raises(PimgptError, match="no semantics for opcode.*VGELU"):
        isa_doc.render()


def test_isa_doc_rejects_unknown_operand_and_undocumented_field(monkeypatch):
    monkeypatch.setitem(isa_doc.SEMANTICS, Opcode.SLI, (("rd", "addr"), "x"))
    with pytest.raises(PimgptError, match="SLI lists unknown operand.*addr"):
        isa_doc.check_complete()
    monkeypatch.undo()
    monkeypatch.delitem(isa_doc.FIELD_MEANING, ("pim", "gb"))
    with pytest.raises(PimgptError, match=r"no meaning for field.*pim\.gb"):
        isa_doc.check_complete()
