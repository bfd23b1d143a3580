"""Generate ``docs/isa.md`` from the ISA definition in :mod:`pimgpt.hdl.isa`.

Opcode values, formats and bit fields are read from :mod:`pimgpt.hdl.isa`; this module adds only
what the layout cannot say: each opcode's semantics (the contract the functional simulator and
the RTL implement), which operands it reads, and a one-line meaning per field. A test checks
that the committed ``docs/isa.md`` equals :func:`render`.

Usage: ``python -m pimgpt.hdl.isa_doc`` prints the document; ``-o docs/isa.md`` writes it.
"""

from __future__ import annotations

from typing import Sequence

from pimgpt.errors import PimgptError
from pimgpt.fileio import doc_main
from pimgpt.hdl import isa
from pimgpt.hdl.isa import Opcode

_SCALAR_NOTE = ("Scalar arithmetic is 32-bit two's complement and wraps; a write to r0 is "
                "ignored. Every non-branching instruction continues at pc + 1.")
_VECTOR_NOTE = "See *Vector operands* above for D, A, B[i], N and the NaN rule."

#: Per opcode: the operands it reads (format field names; ``x_reg`` partners implied) and its
#: exact semantics. Markdown; notation as defined in the document's *Notation* section.
SEMANTICS: dict[Opcode, tuple[tuple[str, ...], str]] = {
    Opcode.NOP: ((), "Does nothing."),
    Opcode.END: ((), "Stops execution. The host then reads r3 (the greedy next token)."),
    Opcode.SYNC: ((), "Waits until every previously issued PIM and vector operation has "
                      "completed. Functionally a no-op: it only orders timing."),
    Opcode.SLI: (("rd", "imm"), "r[rd] ← imm."),
    Opcode.SADD: (("rd", "rs", "rt", "imm"), "r[rd] ← r[rs] + r[rt] + imm. " + _SCALAR_NOTE),
    Opcode.SMUL: (("rd", "rs", "imm"), "r[rd] ← r[rs] × imm (low 32 bits). " + _SCALAR_NOTE),
    Opcode.SDIV: (("rd", "rs", "imm"),
                  "r[rd] ← floor(r[rs] / imm), rounding toward −∞. imm must be > 0; otherwise "
                  "execution stops with an error. " + _SCALAR_NOTE),
    Opcode.SMOD: (("rd", "rs", "imm"),
                  "r[rd] ← r[rs] mod imm, the result in [0, imm) (so that "
                  "imm × floor(r[rs] / imm) + (r[rs] mod imm) = r[rs]). imm must be > 0; "
                  "otherwise execution stops with an error. " + _SCALAR_NOTE),
    Opcode.BLT: (("rs", "rt", "imm"),
                 "If r[rs] < r[rt] (signed), pc ← imm (an absolute instruction index), "
                 "else pc ← pc + 1."),
    Opcode.BGE: (("rs", "rt", "imm"),
                 "If r[rs] ≥ r[rt] (signed), pc ← imm (an absolute instruction index), "
                 "else pc ← pc + 1."),
    Opcode.WR_GB: (("ch_mask", "gb", "n", "vaddr"),
                   "N = eff(n), V = eff(vaddr). For every channel c selected by ch_mask, for "
                   "i = 0 … N−1 and l = 0 … L−1: GB[c][gb + i][l] ← BF16(VMEM[V + L·i + l]). "
                   "Error if gb + N > gb_cols."),
    Opcode.MAC_ABK: (("ch_mask", "addr", "gb", "n"),
                     "N = eff(n), A = eff(addr), which must be a multiple of L (an error "
                     "otherwise). For every channel c selected by ch_mask and every bank b of c, for i = 0 … N−1 in "
                     "order: acc[c,b] ← acc[c,b] + tree(p), where p[l] = bank(c,b)[A + L·i + l] "
                     "× GB[c][gb + i][l] for l = 0 … L−1. The products are binary32 (exact for "
                     "normal BF16 operands), `tree` is the balanced adder tree of "
                     "docs/numerics.md (lane 2k + lane 2k+1, level by level) and every addition "
                     "is rounded to binary32. The columns may run on into the following "
                     "row(s): the controller closes and opens rows as needed. "
                     "Error if gb + N > gb_cols."),
    Opcode.MAC_SBK: (("bank", "addr", "gb", "n"),
                     "As MAC_ABK, but only for the single bank G = eff(bank): channel "
                     "c = G div NB, bank b = G mod NB, with GB[c]. ch_mask is ignored."),
    Opcode.RD_MAC: (("ch_mask", "vaddr"),
                    "V = eff(vaddr). For the channels c selected by ch_mask in increasing "
                    "order, k = 0, 1, …: for every bank b of c, VMEM[V + k·NB + b] ← "
                    "BF16(acc[c,b]) widened to binary32; then each of those accumulators is "
                    "cleared to +0."),
    Opcode.WR_BANK: (("bank", "addr", "n", "vaddr"),
                     "G = eff(bank), A = eff(addr), N = eff(n), V = eff(vaddr). For i = 0 … "
                     "N−1: element A + i of bank G ← BF16(VMEM[V + i]). Element-granular "
                     "(masked writes): A need not be column-aligned."),
    Opcode.WR_ABK: (("ch_mask", "addr", "vaddr"),
                    "A = eff(addr), V = eff(vaddr). For the channels c selected by ch_mask in "
                    "increasing order, k = 0, 1, …: for every bank b of c, element A of bank b "
                    "← BF16(VMEM[V + k·NB + b]): one column burst carrying one BF16 value per "
                    "bank (masked write). Used to append one V-cache token to NB feature rows "
                    "at once; the layout in VMEM mirrors RD_MAC."),
    Opcode.RD_BANK: (("bank", "addr", "n", "vaddr"),
                     "G = eff(bank), A = eff(addr), N = eff(n), V = eff(vaddr). For i = 0 … "
                     "N−1: VMEM[V + i] ← element A + i of bank G, widened exactly to binary32."),
    Opcode.VADD: (("dst", "a", "b", "n", "bcast"),
                  "VMEM[D + i] ← A[i] + B[i] for i < N. " + _VECTOR_NOTE),
    Opcode.VSUB: (("dst", "a", "b", "n", "bcast"),
                  "VMEM[D + i] ← A[i] − B[i] for i < N. " + _VECTOR_NOTE),
    Opcode.VMUL: (("dst", "a", "b", "n", "bcast"),
                  "VMEM[D + i] ← A[i] × B[i] for i < N. " + _VECTOR_NOTE),
    Opcode.VADDI: (("dst", "a", "n", "imm"),
                   "VMEM[D + i] ← A[i] + imm for i < N. " + _VECTOR_NOTE),
    Opcode.VMULI: (("dst", "a", "n", "imm"),
                   "VMEM[D + i] ← A[i] × imm for i < N. " + _VECTOR_NOTE),
    Opcode.VSET: (("dst", "n", "imm"), "VMEM[D + i] ← imm for i < N. " + _VECTOR_NOTE),
    Opcode.VMOV: (("dst", "a", "n"), "VMEM[D + i] ← A[i] for i < N. " + _VECTOR_NOTE),
    Opcode.VSUM: (("dst", "a", "n"),
                  "VMEM[D] ← the lane-ordered sum of A[0 … N−1] (`vsum` in docs/numerics.md): "
                  "with Lv = vector_lanes, lane l adds elements l, l + Lv, l + 2·Lv, … in "
                  "order starting from +0, then the Lv lane sums are added by a balanced tree "
                  "(lane 2k + lane 2k+1, level by level). " + _VECTOR_NOTE),
    Opcode.VMAX: (("dst", "a", "n"),
                  "VMEM[D] ← the largest of A[0 … N−1]: the element VARGMAX picks (−0 and +0 "
                  "compare equal, the first wins); NaN if any element is NaN. " + _VECTOR_NOTE),
    Opcode.VEXP: (("dst", "a", "n"),
                  "VMEM[D + i] ← exp(A[i]) for i < N, computed as `vexp` in docs/numerics.md. "
                  + _VECTOR_NOTE),
    Opcode.VRECIP: (("dst", "a", "n"),
                    "VMEM[D + i] ← 1 / A[i] for i < N, computed as `vrecip` in "
                    "docs/numerics.md. " + _VECTOR_NOTE),
    Opcode.VRSQRT: (("dst", "a", "n"),
                    "VMEM[D + i] ← 1 / sqrt(A[i]) for i < N, computed as `vrsqrt` in "
                    "docs/numerics.md. " + _VECTOR_NOTE),
    Opcode.VGELU: (("dst", "a", "n"),
                   "VMEM[D + i] ← GELU(A[i]) for i < N (GPT-2's tanh form), computed as "
                   "`vgelu` in docs/numerics.md. " + _VECTOR_NOTE),
    Opcode.VARGMAX: (("rd", "a", "n"),
                     "r[rd] ← the index i (0-based, relative to A) of the first largest element "
                     "of A[0 … N−1]; NaN elements are ignored and −0 equals +0; 0 if every "
                     "element is NaN."),
}

#: One-line meaning of every operand field, keyed by (format, field).
FIELD_MEANING: dict[tuple[str, str], str] = {
    ("scalar", "rd"): "destination register",
    ("scalar", "rs"): "first source register",
    ("scalar", "rt"): "second source register",
    ("scalar", "imm"): "immediate (branch target for BLT/BGE)",
    ("pim", "ch_mask"): "channel mask: bit c selects channel c",
    ("pim", "bank"): "global bank index G: channel G div NB, bank G mod NB",
    ("pim", "bank_reg"): "register added to bank",
    ("pim", "addr"): "BF16 element address inside a bank",
    ("pim", "addr_reg"): "register added to addr",
    ("pim", "gb"): "first global-buffer column",
    ("pim", "n"): "count: columns (WR_GB, MAC_*) or elements (WR_BANK, RD_BANK)",
    ("pim", "n_reg"): "register added to n",
    ("pim", "vaddr"): "vector-memory word address",
    ("pim", "vaddr_reg"): "register added to vaddr",
    ("vector", "dst"): "destination word address",
    ("vector", "dst_reg"): "register added to dst",
    ("vector", "a"): "first operand word address",
    ("vector", "a_reg"): "register added to a",
    ("vector", "b"): "second operand word address (no register)",
    ("vector", "n"): "element count",
    ("vector", "n_reg"): "register added to n",
    ("vector", "bcast"): "1: operand b is the single word VMEM[b], broadcast",
    ("vector", "rd"): "VARGMAX result register",
    ("vector", "imm"): "binary32 bit pattern (VADDI, VMULI, VSET)",
}


def check_complete() -> None:
    """Raise if an opcode lacks semantics, an operand or field is unknown, or a field lacks a
    meaning (adding an opcode or field to the ISA means documenting it here)."""
    missing = [op.name for op in Opcode if op not in SEMANTICS]
    if missing:
        raise PimgptError(f"isa_doc: no semantics for opcode(s) {', '.join(missing)}")
    for op, (operands, _) in SEMANTICS.items():
        names = {f.name for f in isa.FIELDS[isa.format_of(op)]}
        bad = [o for o in operands if o not in names]
        if bad:
            raise PimgptError(f"isa_doc: {op.name} lists unknown operand(s) {', '.join(bad)}")
    fields = {(fmt, f.name) for fmt, specs in isa.FIELDS.items() for f in specs}
    undocumented = sorted(fields - set(FIELD_MEANING))
    if undocumented:
        raise PimgptError("isa_doc: no meaning for field(s) "
                          + ", ".join(f"{fmt}.{name}" for fmt, name in undocumented))
    stale = sorted(set(FIELD_MEANING) - fields)
    if stale:
        raise PimgptError("isa_doc: meaning given for unknown field(s) "
                          + ", ".join(f"{fmt}.{name}" for fmt, name in stale))


def _syntax(op: Opcode) -> str:
    names = {f.name for f in isa.FIELDS[isa.format_of(op)]}
    parts = [op.name]
    for operand in SEMANTICS[op][0]:
        value = "rN" if operand in ("rd", "rs", "rt") else "…"
        if op in (Opcode.BLT, Opcode.BGE) and operand == "imm":
            value = "label"
        parts.append(f"{operand}={value}" + ("[+rN]" if f"{operand}_reg" in names else ""))
    return " ".join(parts)


_NOTATION = """\
## Notation

- `r[i]`: the {nregs} scalar registers, {sbits}-bit two's complement. `r0` always reads 0 and
  writes to it are ignored.
- `eff(x) = x + r[x_reg]` for every operand `x` that has an `x_reg` partner; `N = eff(n)`.
- `pc`: index of the current instruction; execution starts at 0.
- `NB` = `geometry.banks_per_channel`; `L` = `geometry.mac_lanes`;
  `gb_cols` = global-buffer columns per channel; `vector_lanes` = `asic.vector_lanes`.
- A global bank index `G` addresses channel `G div NB`, bank `G mod NB` of that channel.
- Bank memory: each bank is an array of BF16 elements, addressed by element `A`. A *column* is
  `L` consecutive elements starting at a multiple of `L` (one MAC operand, one burst).
- `GB[c][j][l]`: BF16 lane `l` of column `j` of channel `c`'s global buffer.
- `acc[c,b]`: the binary32 MAC accumulator of bank `b` of channel `c` (+0 at reset).
- `VMEM[w]`: binary32 word `w` of the ASIC's vector memory.
- `BF16(x)`: binary32 rounded to BF16, nearest with ties to even, NaN → `0x7FC0`
  (docs/numerics.md); widening BF16 to binary32 is exact.
- `ch_mask` bit `c` (bit 0 = least significant) selects channel `c`.
- Counts are exact: `N = 0` does nothing; a count is never "minus one".
- An access outside a memory (bank elements, global-buffer columns, vector-memory words) is an
  error.

### Vector operands

For the vector instructions `N = eff(n)`, `D = eff(dst)`, `A[i] = VMEM[eff(a) + i]`, and
`B[i] = VMEM[b + i]`, or `VMEM[b]` for every `i` when `bcast = 1` (`b` has no register).
All reads of an instruction happen before any of its writes, so operands may overlap. Arithmetic
is IEEE 754 binary32 with round-to-nearest-even and subnormals kept; `imm` is the binary32 whose
bit pattern it holds; every NaN a vector instruction writes is the canonical `0x7FC00000`.
"""

_ASM = """\
## Assembly syntax

`pimgpt asm` and `pimgpt disasm` (module `pimgpt.mapping.asm`) read and write this text form;
disassembly always assembles back to the identical instruction words.

- One instruction per line: `OPNAME operand=value ...`. Opcode names are case-insensitive.
  Operand names are exactly the field names of the opcode's format (tables above); an omitted
  operand is 0. Spaces around `=` and `+` are allowed.
- Integers are decimal or `0x` hexadecimal, optionally negative (`-5`, `0xff`).
- Registers are written `rN` (`r0` … `r{maxreg}`): `rd=r3`, `addr_reg=r5`.
- Register-relative operands: every field `x` with an `x_reg` partner accepts `x=V+rN`
  (sets `x = V`, `x_reg = N`) or `x=rN` (`x = 0`): `addr=1024+r5`.
- The vector `imm` is binary32: a float literal (`0.125`, `1e-3`, `-0.0`, `inf`, `-inf`, `nan`;
  a decimal integer such as `2` means 2.0) or its raw bit pattern in hex (`0x3e000000`).
  Disassembly prints the shortest float that assembles to the same bits, else the hex bits
  (NaN payloads, `-nan`).
- Labels: `name:` on its own line or before an instruction; names match
  `[A-Za-z_.][A-Za-z0-9_.]*` and must not look like a register. A label's value is the index of
  the next instruction. The `imm` of BLT and BGE may be a label.
- Comments start with `;` or `#` and run to the end of the line.
- Disassembly writes one instruction per line with its pc as a trailing comment, an optional
  `;` header block, and a label `L<pc>:` before every branch target.

```
; scale VMEM[512 .. 512 + r6) by 0.125, 16 words per iteration (r6 a multiple of 16)
        SLI rd=r4 imm=0
loop:   VMULI dst=512+r4 a=512+r4 n=16 imm=0.125
        SADD rd=r4 rs=r4 imm=16
        BLT rs=r4 rt=r6 imm=loop    # back to loop while r4 < r6
        MAC_ABK ch_mask=0xff addr=1024+r1 gb=0 n=48
        RD_MAC ch_mask=0xff vaddr=0x100
        END
```

Errors name the source, the line and the problem (`prog.s:4: unknown opcode 'VADX'`).
"""


def render() -> str:
    """The complete ``docs/isa.md`` text."""
    check_complete()
    d = isa.describe()
    out = [
        "# PIM-GPT instruction set",
        "",
        "<!-- Generated by `python -m pimgpt.hdl.isa_doc -o docs/isa.md` from pimgpt/hdl/isa.py "
        "and pimgpt/hdl/isa_doc.py; do not edit. -->",
        "",
        f"ISA version {d['version']}, hash `{isa.ISA_HASH}` (SHA-256 of `isa.describe()`, "
        "written into every `.pimbin`).",
        "",
        f"An instruction is a {isa.WORD_BITS}-bit word ({isa.WORD_BYTES} bytes, little-endian in "
        f"a `.pimbin`): a {d['opcode_bits']}-bit opcode in bits [0, {d['opcode_bits']}) "
        "followed by the operands of the opcode's format. Bits above a format's last field are "
        "reserved and must be zero; the decoder rejects unknown opcodes and non-zero reserved "
        "bits.",
        "",
        f"Why {isa.WORD_BITS} bits: the widest format (pim, with its {isa.MAX_CHANNELS}-bit "
        f"channel mask for up to {isa.MAX_CHANNELS} channels) needs "
        f"{max(isa._FORMAT_WIDTH.values())} bits, and {isa.WORD_BITS} is the smallest multiple "
        "of 32 that holds it. Keeping 128-bit words would have meant narrowing other fields "
        "(bank address, bank number, buffer column or counts), and each of those widths is "
        "already a machine limit the parameter validation enforces (bank size, banks, buffer "
        "size, transfer length), so narrowing them would reject machines that are valid now; "
        "the wider word costs only instruction memory. ISA version 1 had 128-bit words and a "
        "16-bit mask; `.pimbin` files of that ISA (format version 1) are refused with a request "
        "to recompile.",
        "",
        "## Register conventions",
        "",
        f"- `r{isa.REG_POS}`: position of the token being processed, set by the host before "
        "each step.",
        f"- `r{isa.REG_TOKEN_IN}`: id of the token being processed, set by the host before each "
        "step.",
        f"- `r{isa.REG_TOKEN_OUT}`: the greedy next token id, read by the host after END.",
        "- `r0` reads 0; the other registers are free for the program.",
        "",
        _NOTATION.format(nregs=isa.NUM_SREGS, sbits=isa.SREG_BITS),
        "## Formats",
        "",
    ]
    for fmt, specs in isa.FIELDS.items():
        ops = ", ".join(op.name for op in Opcode if isa.format_of(op) == fmt)
        end = max(s.offset + s.width for s in specs)
        out += [f"### {fmt}", "", f"Used by {ops}.", "",
                "| bits | field | width | signed | meaning |",
                "|---|---|---|---|---|",
                f"| {d['opcode_bits'] - 1}:0 | opcode | {d['opcode_bits']} | no | "
                "opcode value |"]
        for s in specs:
            out.append(f"| {s.offset + s.width - 1}:{s.offset} | `{s.name}` | {s.width} | "
                       f"{'yes' if s.signed else 'no'} | {FIELD_MEANING[(fmt, s.name)]} |")
        out += [f"| {isa.WORD_BITS - 1}:{end} | reserved | {isa.WORD_BITS - end} | — | "
                "must be zero |", ""]
    out += ["## Opcodes", "", "| opcode | value | format |", "|---|---|---|"]
    out += [f"| [{op.name}](#{op.name.lower()}) | {op.value} (0x{op.value:02x}) | "
            f"{isa.format_of(op)} |" for op in Opcode]
    out += ["", "## Semantics", ""]
    for op in Opcode:
        operands, text = SEMANTICS[op]
        out += [f"### {op.name}", "",
                f"Opcode {op.value}, {isa.format_of(op)} format. `{_syntax(op)}`", "", text, ""]
    out.append(_ASM.format(maxreg=isa.NUM_SREGS - 1))
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the document, or write it with ``-o FILE``."""
    return doc_main(render, "python -m pimgpt.hdl.isa_doc", "Generate docs/isa.md from the ISA definition.", argv)

if __name__ == "__main__":
    raise SystemExit(main())
