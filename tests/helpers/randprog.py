"""Seeded random programs that are legal by construction (for differential timing tests)."""

from __future__ import annotations

import dataclasses
import random

from pimgpt.hdl import isa
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import TINY, MachineConfig

VECTOR_OPS = (Op.VADD, Op.VSUB, Op.VMUL, Op.VADDI, Op.VMULI, Op.VSET, Op.VMOV, Op.VSUM,
              Op.VMAX, Op.VEXP, Op.VRECIP, Op.VRSQRT, Op.VGELU)


def random_config(rng: random.Random) -> MachineConfig:
    """A small machine with randomly scaled timings, clocks and bank organisation."""
    t = TINY.timing
    scale = rng.choice([0.5, 1.0, 1.5, 2.0])
    timing = dataclasses.replace(t, **{f.name: round(getattr(t, f.name) * scale * 2) / 2
                                       for f in dataclasses.fields(t)})
    geometry = dataclasses.replace(TINY.geometry, channels=rng.choice([1, 2, 4]),
                                   bank_groups=rng.choice([1, 2, 4]),
                                   rows=rng.choice([64, 128]))
    clocks = dataclasses.replace(TINY.clocks, dram_mhz=rng.choice([1000.0, 2000.0]),
                                 asic_mhz=rng.choice([100.0, 500.0, 1000.0]))
    return TINY.replace(name="random", timing=timing, geometry=geometry, clocks=clocks)


def random_program(rng: random.Random, config: MachineConfig, length: int = 60
                   ) -> list[isa.Instruction]:
    """Random PIM and vector instructions within the machine's memories, then END."""
    g = config.geometry
    lanes, nb, banks = g.mac_lanes, g.banks_per_channel, g.banks
    bank_cols = g.bank_elems // lanes
    vmem = config.asic.vmem_words
    all_mask = (1 << g.channels) - 1
    code: list[isa.Instruction] = []
    for _ in range(length):
        kind = rng.random()
        mask = rng.randint(1, all_mask)
        if kind < 0.3:
            n = rng.randint(1, 3 * g.cols_per_row)
            gb = rng.randint(0, g.gb_cols - 1)
            n = min(n, g.gb_cols - gb)
            col = rng.randint(0, bank_cols - n)
            if rng.random() < 0.8:
                code.append(isa.make(Op.MAC_ABK, ch_mask=mask, addr=col * lanes, n=n, gb=gb))
            else:
                code.append(isa.make(Op.MAC_SBK, bank=rng.randrange(banks), addr=col * lanes,
                                     n=n, gb=gb))
        elif kind < 0.45:
            gb = rng.randint(0, g.gb_cols - 1)
            n = rng.randint(1, g.gb_cols - gb)
            code.append(isa.make(Op.WR_GB, ch_mask=mask, gb=gb, n=n,
                                 vaddr=rng.randrange(vmem - n * lanes)))
        elif kind < 0.6:
            code.append(isa.make(Op.RD_MAC, ch_mask=mask,
                                 vaddr=rng.randrange(vmem - g.channels * nb)))
        elif kind < 0.7:
            n = rng.randint(1, 3 * g.row_elems // 2)
            op = rng.choice([Op.WR_BANK, Op.RD_BANK])
            code.append(isa.make(op, bank=rng.randrange(banks),
                                 addr=rng.randrange(g.bank_elems - n), n=n,
                                 vaddr=rng.randrange(vmem - n)))
        elif kind < 0.75:
            code.append(isa.make(Op.WR_ABK, ch_mask=mask, addr=rng.randrange(g.bank_elems),
                                 vaddr=rng.randrange(vmem - g.channels * nb)))
        elif kind < 0.78:
            code.append(isa.make(Op.SYNC))
        else:
            op = rng.choice(VECTOR_OPS)
            n = rng.randint(1, 300)
            code.append(isa.make(op, dst=rng.randrange(vmem - n), a=rng.randrange(vmem - n),
                                 b=rng.randrange(vmem - n), n=n, bcast=rng.randint(0, 1)))
    code.append(isa.make(Op.END))
    return code


def random_rtl_program(rng: random.Random, config: MachineConfig, length: int = 40
                       ) -> list[isa.Instruction]:
    """Random instructions the generated top executes exactly as the functional machine: moves
    of at most a global buffer's worth of elements (the movers' staging buffers), vector ops
    whose destination does not start inside their source, VARGMAX into r5; then END."""
    g = config.geometry
    lanes, nb, banks = g.mac_lanes, g.banks_per_channel, g.banks
    bank_cols = g.bank_elems // lanes
    vmem = config.asic.vmem_words
    all_mask = (1 << g.channels) - 1
    code: list[isa.Instruction] = []
    for _ in range(length):
        kind = rng.random()
        mask = rng.randint(1, all_mask)
        if kind < 0.3:
            gb = rng.randint(0, g.gb_cols - 1)
            n = min(rng.randint(1, 3 * g.cols_per_row), g.gb_cols - gb)
            col = rng.randint(0, bank_cols - n)
            if rng.random() < 0.8:
                code.append(isa.make(Op.MAC_ABK, ch_mask=mask, addr=col * lanes, n=n, gb=gb))
            else:
                code.append(isa.make(Op.MAC_SBK, bank=rng.randrange(banks), addr=col * lanes,
                                     n=n, gb=gb))
        elif kind < 0.42:
            gb = rng.randint(0, g.gb_cols - 1)
            n = rng.randint(1, g.gb_cols - gb)
            code.append(isa.make(Op.WR_GB, ch_mask=mask, gb=gb, n=n,
                                 vaddr=rng.randrange(vmem - n * lanes)))
        elif kind < 0.55:
            code.append(isa.make(Op.RD_MAC, ch_mask=mask,
                                 vaddr=rng.randrange(vmem - g.channels * nb)))
        elif kind < 0.66:
            n = rng.randint(1, (g.gb_cols - 1) * lanes)
            op = rng.choice([Op.WR_BANK, Op.RD_BANK])
            code.append(isa.make(op, bank=rng.randrange(banks),
                                 addr=rng.randrange(g.bank_elems - n), n=n,
                                 vaddr=rng.randrange(vmem - n)))
        elif kind < 0.72:
            code.append(isa.make(Op.WR_ABK, ch_mask=mask, addr=rng.randrange(g.bank_elems),
                                 vaddr=rng.randrange(vmem - g.channels * nb)))
        elif kind < 0.75:
            code.append(isa.make(Op.SYNC))
        else:
            op = rng.choice(VECTOR_OPS + (Op.VARGMAX,))
            n = rng.randint(1, 100)
            a = rng.randrange(vmem - n)
            if op is Op.VARGMAX:
                code.append(isa.make(op, rd=5, a=a, n=n))
                continue
            dst = rng.randrange(vmem - n)
            if a < dst < a + n:
                dst = a  # in place instead of a destination inside the source
            code.append(isa.make(op, dst=dst, a=a, b=rng.randrange(vmem - n), n=n,
                                 bcast=rng.randint(0, 1)))
    code.append(isa.make(Op.END))
    return code
