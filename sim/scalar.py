"""Scalar and control instructions (docs/isa.md), shared by every execution backend.

Registers are 32-bit two's complement and ``r0`` reads as zero. Control flow never depends on
vector or PIM data (only ``VARGMAX`` writes a register, and programs read it after ``END``), so
the functional machine and the cycle simulator walk the same instruction sequence.
"""

from __future__ import annotations

from pimgpt.errors import PimgptError
from pimgpt.hdl.isa import Opcode as Op

SCALAR_EXEC = frozenset({Op.SLI, Op.SADD, Op.SMUL, Op.SDIV, Op.SMOD, Op.BLT, Op.BGE})


def wrap32(value: int) -> int:
    """``value`` as a 32-bit two's-complement integer."""
    return ((value + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def set_reg(regs: list[int], index: int, value: int) -> None:
    """Write a register (writes to r0 are ignored)."""
    if index:
        regs[index] = wrap32(int(value))


def exec_scalar(op: Op, a: dict[str, int], regs: list[int]) -> int | None:
    """Execute one scalar/branch instruction; return the branch target, or None to fall through."""
    if op is Op.SLI:
        set_reg(regs, a["rd"], a["imm"])
    elif op is Op.SADD:
        set_reg(regs, a["rd"], regs[a["rs"]] + regs[a["rt"]] + a["imm"])
    elif op is Op.SMUL:
        set_reg(regs, a["rd"], regs[a["rs"]] * a["imm"])
    elif op is Op.SDIV or op is Op.SMOD:
        if a["imm"] <= 0:
            raise PimgptError(f"{op.name} by {a['imm']} (the divisor must be positive)")
        q, r = divmod(regs[a["rs"]], a["imm"])
        set_reg(regs, a["rd"], q if op is Op.SDIV else r)
    elif op is Op.BLT:
        return a["imm"] if regs[a["rs"]] < regs[a["rt"]] else None
    elif op is Op.BGE:
        return a["imm"] if regs[a["rs"]] >= regs[a["rt"]] else None
    else:  # pragma: no cover - callers dispatch only SCALAR_EXEC here
        raise ValueError(op)
    return None
