"""Assembly text: exact round trips, error messages, and the generated docs/isa.md."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa, isa_doc
from pimgpt.hdl.isa import Opcode
from pimgpt.mapping.asm import assemble, disassemble, format_f32

DOCS = Path(__file__).resolve().parents[1] / "docs" / "isa.md"

HAND = """\
; a decode-step fragment: labels, a loop, register-relative operands, float immediates
start:                                  # label on its own line
        SLI rd=r4 imm=0
        sli rd = r6 imm=0x40            ; lowercase opcode, spaces around '='
loop:   MAC_ABK ch_mask=0xff addr=1024+r4 gb=3 n=r5 vaddr=0
        MAC_SBK bank=2+r1 addr=r4 n=16
        RD_MAC ch_mask=0x3 vaddr=64+r2
        WR_BANK bank=r3 addr=17 n=1 vaddr=0x10+r4
        SADD rd=r4 rs=r4 imm=16
        BLT rs=r4 rt=r6 imm=loop
        BGE rs=r4 rt=r0 imm=end
        BGE rs=r0 rt=r0 imm=-1          # a numeric target
        VSET dst=0 n=1 imm=nan
        VSET dst=1 n=1 imm=-inf
        VSET dst=2 n=1 imm=inf
        VSET dst=3 n=1 imm=-0.0
        VSET dst=4 n=1 imm=1e-45        ; smallest subnormal
        VSET dst=5 n=1 imm=1.1754942e-38
        VADDI dst=6 a=6 n=1 imm=0.1
        VMULI dst=7+r1 a=7+r1 n=8+r2 imm=0x3e000000
        VMULI dst=8 a=8 n=1 imm=2
        VADD dst=9 a=10 b=11 n=4 bcast=1
        VARGMAX rd=r3 a=r7 n=50257
end:    END
tail:
"""


def test_hand_written_program_assembles_as_specified():
    code = assemble(HAND, "hand.s")
    f32 = {i: code[i].args["imm"] for i in range(10, 19)}
    assert code[0] == isa.make(Opcode.SLI, rd=4)
    assert code[1] == isa.make(Opcode.SLI, rd=6, imm=0x40)
    assert code[2] == isa.make(Opcode.MAC_ABK, ch_mask=0xFF, addr=1024, addr_reg=4, gb=3,
                               n_reg=5)
    assert code[3] == isa.make(Opcode.MAC_SBK, bank=2, bank_reg=1, addr_reg=4, n=16)
    assert code[4] == isa.make(Opcode.RD_MAC, ch_mask=3, vaddr=64, vaddr_reg=2)
    assert code[5] == isa.make(Opcode.WR_BANK, bank_reg=3, addr=17, n=1, vaddr=16, vaddr_reg=4)
    assert code[7] == isa.make(Opcode.BLT, rs=4, rt=6, imm=2)  # loop:
    assert code[8] == isa.make(Opcode.BGE, rs=4, imm=len(code) - 1)  # end:
    assert code[9].imm == -1
    assert f32[10] == 0x7FC00000 and f32[11] == 0xFF800000 and f32[12] == 0x7F800000
    assert f32[13] == 0x80000000 and f32[14] == 1 and f32[15] == 0x007FFFFF
    assert f32[16] == int(np.float32(0.1).view(np.uint32))
    assert code[17] == isa.make(Opcode.VMULI, dst=7, dst_reg=1, a=7, a_reg=1, n=8, n_reg=2,
                                imm=0x3E000000)
    assert code[18].imm == 0x40000000  # a decimal integer is a float literal: 2.0
    assert code[19] == isa.make(Opcode.VADD, dst=9, a=10, b=11, n=4, bcast=1)
    assert code[20] == isa.make(Opcode.VARGMAX, rd=3, a_reg=7, n=50257)
    assert code[21].op is Opcode.END and len(code) == 22


def test_hand_written_program_round_trips():
    code = assemble(HAND)
    text = disassemble(code, header="hand-written\n\ntest program")
    assert assemble(text) == code
    assert disassemble(assemble(text), header="hand-written\n\ntest program") == text
    lines = text.splitlines()
    assert lines[:3] == ["; hand-written", ";", "; test program"]
    assert "L2:" in lines and "L21:" in lines  # branch targets labelled, numeric ones not
    assert not any(line.startswith("L-1") for line in lines)
    body = [line for line in lines if line.startswith("    ")]
    assert [int(line.rsplit(";", 1)[1]) for line in body] == list(range(len(code)))
    assert "BLT rs=r4 rt=r6 imm=L2" in text and "imm=-1 " in text
    assert "MAC_ABK ch_mask=0xff addr=1024+r4 gb=3 n=r5" in text
    for literal in ("imm=nan", "imm=-inf", "imm=inf", "imm=-0.0", "imm=1e-45", "imm=0.1",
                    "imm=0.125", "imm=2.0"):
        assert literal in text


def test_label_at_end_and_branch_past_the_program():
    code = assemble("BLT rs=r1 rt=r2 imm=done\nNOP\ndone:\n")
    assert code[0].imm == 2
    text = disassemble(code)
    assert text.rstrip().endswith("L2:")
    assert assemble(text) == code


def test_empty_program():
    assert assemble("") == []
    assert assemble("; only a comment\n\nlabel:\n") == []
    assert disassemble([]) == ""
    assert assemble(disassemble([], header="x")) == []


@pytest.mark.parametrize(("bits", "text"), [
    (0x7FC00000, "nan"), (0x7F800000, "inf"), (0xFF800000, "-inf"), (0x80000000, "-0.0"),
    (0, "0.0"), (1, "1e-45"), (0x3E000000, "0.125"), (0x3F800000, "1.0"),
    (0x7F7FFFFF, "3.4028235e+38"),
    (0x7FC00001, "0x7fc00001"), (0xFFC00000, "0xffc00000"), (0x7F800001, "0x7f800001"),
])
def test_float_immediate_formatting(bits, text):
    assert format_f32(bits) == text
    assert assemble(f"VSET imm={text}")[0].imm == bits


_BRANCH_TARGETS = st.integers(-3, 40)


@st.composite
def programs(draw: st.DrawFn) -> list[isa.Instruction]:
    """Random valid programs: every opcode, every field anywhere in its range."""
    n = draw(st.integers(0, 30))
    code = []
    for _ in range(n):
        op = draw(st.sampled_from(list(Opcode)))
        args = {}
        for spec in isa.FIELDS[isa.format_of(op)]:
            if spec.signed:
                lo, hi = -(1 << (spec.width - 1)), (1 << (spec.width - 1)) - 1
            else:
                lo, hi = 0, (1 << spec.width) - 1
            if op in (Opcode.BLT, Opcode.BGE) and spec.name == "imm":
                args["imm"] = draw(st.one_of(_BRANCH_TARGETS, st.integers(lo, hi)))
            elif draw(st.booleans()):
                args[spec.name] = draw(st.one_of(st.sampled_from([0, hi, lo]),
                                                 st.integers(lo, hi)))
        code.append(isa.make(op, **args))
    return code


@settings(max_examples=200, deadline=None)
@given(programs(), st.one_of(st.none(), st.text(max_size=40)))
def test_random_programs_round_trip(code, header):
    text = disassemble(code, header=header)
    back = assemble(text, "random.s")
    assert back == code
    assert isa.encode_program(back) == isa.encode_program(code)
    assert disassemble(back, header=header) == text


@settings(max_examples=300, deadline=None)
@given(st.integers(0, (1 << 32) - 1))
def test_every_binary32_immediate_round_trips(bits):
    code = [isa.make(Opcode.VADDI, dst=1, a=2, n=3, imm=bits)]
    assert assemble(disassemble(code)) == code


@pytest.mark.parametrize(("text", "message"), [
    ("NOP\nVADX dst=1", r"^prog\.s:2: unknown opcode 'VADX'$"),
    ("VADD ch_mask=1", r"^prog\.s:1: VADD has no operand 'ch_mask' \(its operands: dst, "
                       r"dst_reg, a, .*imm\)$"),
    ("\n\nVADD n=70000", r"^prog\.s:3: VADD: operand n=70000 is out of range \[0, 65535\]$"),
    ("SLI imm=0x100000000", r"^prog\.s:1: SLI: operand imm=4294967296 is out of range"),
    ("SLI rd=r16", r"^prog\.s:1: bad register 'r16' for rd \(expected r0\.\.r15\)$"),
    ("SLI rd=3", r"^prog\.s:1: bad register '3' for rd"),
    ("MAC_ABK addr=5+r99", r"^prog\.s:1: bad register 'r99' for addr_reg"),
    ("MAC_ABK addr=5+x", r"^prog\.s:1: bad register 'x' for addr_reg"),
    ("NOP\nBLT rs=r1 imm=nowhere\nEND", r"^prog\.s:2: undefined label 'nowhere'$"),
    ("a:\nNOP\na: NOP", r"^prog\.s:3: duplicate label 'a' \(first defined at line 1\)$"),
    ("r5: NOP", r"^prog\.s:1: label 'r5' looks like a register"),
    ("SLI rd", r"^prog\.s:1: malformed operand 'rd' \(expected name=value\)$"),
    ("SLI rd=", r"^prog\.s:1: malformed operand 'rd=' \(expected name=value\)$"),
    ("SLI rd=r1, imm=2", r"^prog\.s:1: bad register 'r1,' for rd"),
    ("1abc NOP", r"^prog\.s:1: malformed token '1abc'"),
    ("loop:NOP", r"^prog\.s:1: malformed token 'loop:NOP'"),
    ("SLI imm=12abc", r"^prog\.s:1: bad value '12abc' for imm \(expected a decimal or 0x "
                      r"integer\)$"),
    ("VSET imm=1e39", r"^prog\.s:1: imm=1e39 is out of binary32 range$"),
    ("VSET imm=one", r"^prog\.s:1: bad value 'one' for imm \(expected a float literal or 0x "
                     r"raw bits\)$"),
    ("VADD b=1+r3", r"^prog\.s:1: operand b cannot be register-relative"),
    ("SLI rd=r1 rd=r2", r"^prog\.s:1: operand rd is given twice$"),
    ("MAC_ABK addr=5+r1 addr_reg=r2", r"^prog\.s:1: operand addr_reg is given twice$"),
    ("BLT imm=1.5", r"^prog\.s:1: bad branch target '1\.5'"),
    ("SLI imm=loop", r"^prog\.s:1: bad value 'loop' for imm"),  # labels only as branch targets
])
def test_errors_name_line_and_problem(text, message):
    with pytest.raises(PimgptError, match=message):
        assemble(text, "prog.s")


def test_default_source_name():
    with pytest.raises(PimgptError, match=r"^<asm>:1: unknown opcode 'FOO'$"):
        assemble("FOO")


def test_docs_isa_md_is_up_to_date():
    assert DOCS.read_text() == isa_doc.render(), (
        "docs/isa.md is stale: run python -m pimgpt.hdl.isa_doc -o docs/isa.md")


def test_docs_example_assembles_and_documents_every_opcode():
    text = isa_doc.render()
    example = re.search(r"```\n(.*?)```", text, re.S).group(1)
    code = assemble(example, "docs/isa.md")
    assert assemble(disassemble(code)) == code
    assert isa.ISA_HASH in text
    for op in Opcode:
        assert f"### {op.name}\n" in text
        assert f"| [{op.name}](#{op.name.lower()}) | {op.value} " in text
    for fmt, specs in isa.FIELDS.items():
        for s in specs:
            assert f"| {s.offset + s.width - 1}:{s.offset} | `{s.name}` | {s.width} |" in text
