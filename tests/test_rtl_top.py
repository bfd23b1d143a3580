"""The whole machine as RTL (hdl/top.py) under Amaranth's simulator, against the golden models.

Every program runs on one elaborated :class:`PimGptTop` (a ``tiny`` variant with a smaller
vector and instruction memory; elaborating the top is the slow part): its memories are loaded
directly (``ctx.set`` on the memory data), ``start`` is pulsed and the run ends at ``done``.
Values (vector memory, scalar registers, bank contents) must equal :class:`FunctionalMachine`'s
bit for bit; the cycle count (the ``cycles`` counter) and every DRAM command the sequencers
issue (cycle, channel, command, row, column) must equal :class:`CycleSimulator`'s for the run
started in the same cycle. Directed programs plus seeded random legal programs (differential
testing: a failure names the seed and the first differing command).
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator

from helpers.randprog import random_rtl_program

from pimgpt.hdl import isa
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.isa import make
from pimgpt.hdl.params import preset
from pimgpt.hdl.timing import (ALL_BANK_CMDS, CHANNEL_CMDS, COLUMN_OPERAND_CMDS,
                               ROW_OPERAND_CMDS, DramCmd)
from pimgpt.hdl.top import PimGptTop
from pimgpt.mapping.pimbin import PimBinary
from pimgpt.sim.cycle import CycleSimulator
from pimgpt.sim.machine import FunctionalMachine
from pimgpt.sim import numerics as nm

TINY = preset("tiny")
ROWS = 16  # rows of every bank (the whole bank is modelled)
CFG = dataclasses.replace(TINY, name="tiny-rtl-top", asic=dataclasses.replace(
    TINY.asic, vmem_words=1024, imem_words=256),
    geometry=dataclasses.replace(TINY.geometry, rows=ROWS))
G = CFG.geometry
ELEMS = ROWS * G.row_elems  # bank elements the RTL holds


class Rtl:
    """One elaborated top; programs run one after another in one simulation, the design reset
    (its clock domain's reset) before each. (``Simulator.reset`` would re-run every earlier
    testbench too.)"""

    def __init__(self) -> None:
        self.top = PimGptTop(CFG, array_rows=ROWS)
        self.cd = ClockDomain("sync")
        wrapper = Module()
        wrapper.domains.sync = self.cd
        wrapper.submodules.top = self.top
        self.sim = Simulator(wrapper)
        self.sim.add_clock(1e-9, domain="sync")
        self.jobs: list = []

    def run_all(self) -> None:
        """Run every queued job (``(args, result dict)``) in one simulation."""
        jobs = self.jobs

        async def bench(ctx):
            for args, out in jobs:
                ctx.set(self.cd.rst, 1)
                await ctx.tick()
                ctx.set(self.cd.rst, 0)
                await self._bench(ctx, out, *args)

        self.sim.add_testbench(bench)
        self.sim.run()

    async def _bench(self, ctx, out, code, vmem0, image, regs, max_cycles=20000):
        top = self.top
        L = CFG.asic.vector_lanes
        lanes = G.mac_lanes
        words = [isa.encode(i) for i in code]
        vbits = vmem0.view(np.uint32)
        cols = image.reshape(G.banks, -1, lanes)

        if True:
            for a, w in enumerate(words):
                ctx.set(top.controller.imem_data[a], w)
            for k in range(L):
                bank = top.vector.banks[k]
                for r in range(CFG.asic.vmem_words // L):
                    ctx.set(bank[r], int(vbits[r * L + k]))
            for gbank in range(G.banks):
                data = top.channels[gbank // G.banks_per_channel].bank_data[
                    gbank % G.banks_per_channel]
                for col in range(cols.shape[1]):
                    ctx.set(data[col], [int(x) for x in cols[gbank, col]])
            # the global buffers start empty, as the functional machine's (memories keep their
            # contents across the design reset between programs)
            for ch in top.channels:
                for col in range(G.gb_cols):
                    ctx.set(ch.gb_data[col], [0] * lanes)
            for r, v in regs.items():
                ctx.set(top.reg_addr, r)
                ctx.set(top.reg_wdata, v & 0xFFFFFFFF)
                ctx.set(top.reg_we, 1)
                await ctx.tick()
            ctx.set(top.reg_we, 0)
            ctx.set(top.start, 1)
            await ctx.tick()
            ctx.set(top.start, 0)
            # cycles since reset: the first dispatch is the cycle after start
            out["start"] = len(regs) + 1
            n = 0
            cmds = []
            while not ctx.get(top.done):
                assert not ctx.get(top.error), f"error raised after {n} cycles"
                for c, seq in enumerate(top.sequencers):
                    if ctx.get(seq.o_cmd.valid):
                        p = ctx.get(seq.o_cmd.payload)
                        cmds.append(_entry(out["start"] + n, c, p))
                await ctx.tick()
                n += 1
                assert n < max_cycles, "no END"
            out["wall"] = n
            out["trace"] = cmds
            out["counters"] = {}
            for name, addr in top.counters.items():
                ctx.set(top.ctr_addr, addr)
                out["counters"][name] = ctx.get(top.ctr_data)
            regs_out = []
            for r in range(isa.NUM_SREGS):
                ctx.set(top.reg_addr, r)
                v = ctx.get(top.reg_rdata)
                regs_out.append(v - (1 << 32) if v >> 31 else v)
            out["regs"] = regs_out
            vm = np.zeros(CFG.asic.vmem_words, np.uint32)
            for k in range(L):
                bank = top.vector.banks[k]
                for r in range(CFG.asic.vmem_words // L):
                    vm[r * L + k] = ctx.get(bank[r])
            out["vmem"] = vm.view(np.float32)
            img = np.zeros_like(cols)
            for gbank in range(G.banks):
                data = top.channels[gbank // G.banks_per_channel].bank_data[
                    gbank % G.banks_per_channel]
                for col in range(cols.shape[1]):
                    img[gbank, col] = [int(x) for x in ctx.get(data[col])]
            out["image"] = img.reshape(G.banks, -1)
            assert not ctx.get(top.error)


def _entry(cycle: int, channel: int, p) -> tuple:
    """A sequencer command as the simulator's trace fields (None where it carries none)."""
    cmd = DramCmd(p.cmd)
    return (cycle, channel, cmd,
            None if cmd in ALL_BANK_CMDS or cmd in CHANNEL_CMDS else int(p.bank),
            int(p.row) if cmd in ROW_OPERAND_CMDS else None,
            int(p.col) if cmd in COLUMN_OPERAND_CMDS else None)


PROGRAMS = {}  # test name -> (program, regs); filled below, run together by the fixture


@pytest.fixture(scope="module")
def rtl() -> dict:
    """Every program of this module on the RTL in one simulation: name -> (inputs, outputs)."""
    r = Rtl()
    results = {}
    for name, (code, regs) in PROGRAMS.items():
        rng = np.random.default_rng(len(code))
        vmem0 = rng.standard_normal(CFG.asic.vmem_words).astype(np.float32)
        image = nm.f32_to_bf16_bits(rng.standard_normal((G.banks, G.bank_elems))
                                    .astype(np.float32))
        out: dict = {}
        r.jobs.append(((code, vmem0, image, regs), out))
        results[name] = ((code, vmem0, image, regs), out)
    r.run_all()
    return results


def golden(code, vmem0, image, regs):
    fm = FunctionalMachine(CFG)
    fm.load(PimBinary(config=CFG, code=list(code), constants=[(0, vmem0)], image=image))
    for r, v in regs.items():
        fm.set_reg(r, v)
    fm.run()
    cs = CycleSimulator(CFG, trace=True)
    cs.load_code(code)
    timing = cs.run(dict(regs), start=len(regs) + 1)  # the RTL's first dispatch cycle
    return fm, timing, cs.trace


def check(rtl: dict, name: str) -> dict:
    """The RTL's run of program ``name`` against the models: values must be equal; returns the
    RTL's outputs plus the simulator's cycles and counters for the caller's timing checks."""
    (code, vmem0, image, regs), out = rtl[name]
    assert "regs" in out, "the RTL run did not finish"
    fm, timing, trace = golden(code, vmem0, image, regs)
    assert out["regs"] == fm.regs
    np.testing.assert_array_equal(out["vmem"].view(np.uint32), fm.vmem.view(np.uint32))
    lm = fm.lm  # (lanes, cols, banks)
    want = nm.f32_to_bf16_bits(lm.transpose(2, 1, 0).reshape(G.banks, -1))
    np.testing.assert_array_equal(out["image"], want[:, :out["image"].shape[1]])
    out["sim_cycles"] = timing.cycles
    out["sim_counters"] = dict(timing.counters)
    out["sim_trace"] = [tuple(e) for e in trace]
    return out


# --- programs ------------------------------------------------------------------------------------

def scalar_loop() -> list:
    """Sum 0..9 and a product by a loop; SDIV/SMOD of negatives; BGE not taken / taken."""
    return [
        make(Op.SLI, rd=4, imm=0),  # i
        make(Op.SLI, rd=5, imm=10),  # limit
        make(Op.SLI, rd=6, imm=0),  # sum
        make(Op.SADD, rd=6, rs=6, rt=4, imm=0),  # 3: sum += i
        make(Op.SADD, rd=4, rs=4, imm=1),
        make(Op.BLT, rs=4, rt=5, imm=3),
        make(Op.SLI, rd=7, imm=-17),
        make(Op.SDIV, rd=8, rs=7, imm=5),
        make(Op.SMOD, rd=9, rs=7, imm=5),
        make(Op.SMUL, rd=10, rs=7, imm=-123456789),
        make(Op.BGE, rs=7, rt=4, imm=12),  # not taken
        make(Op.SADD, rd=11, rs=1, rt=2, imm=3),
        make(Op.BGE, rs=4, rt=5, imm=14),  # taken
        make(Op.SLI, rd=12, imm=99),  # skipped
        make(Op.NOP),
        make(Op.END),
    ]


def test_scalar_loop_and_branches(rtl: dict) -> None:
    out = check(rtl, "scalar")
    assert out["regs"][6] == 45 and out["regs"][8] == -4 and out["regs"][9] == 3
    assert out["counters"]["instructions"] == out["sim_counters"]["instructions"]
    assert out["counters"]["cycles"] == out["sim_cycles"]


def vmm_program() -> list:
    """y = W x for two column groups: WR_GB, then (MAC_ABK, RD_MAC) pairs, a partial sum added
    by the vector unit, SYNC, a MAC_SBK on one bank, END."""
    lanes, nbt = G.mac_lanes, G.banks
    return [
        make(Op.WR_GB, ch_mask=3, gb=0, n=4, vaddr=3),
        make(Op.MAC_ABK, ch_mask=3, addr=0, n=4, gb=0),
        make(Op.RD_MAC, ch_mask=3, vaddr=200),
        make(Op.MAC_ABK, ch_mask=3, addr=4 * lanes, n=4, gb=0),
        make(Op.RD_MAC, ch_mask=3, vaddr=200 + nbt),
        make(Op.VADD, dst=300, a=200, b=200 + nbt, n=nbt),
        make(Op.SYNC),
        make(Op.SLI, rd=4, imm=5),
        make(Op.WR_GB, ch_mask=2, gb=2, n=1, vaddr=101),
        make(Op.MAC_SBK, bank=1, bank_reg=4, addr=G.row_elems + 2 * lanes, n=1, gb=2),
        make(Op.RD_MAC, ch_mask=2, vaddr=401),
        make(Op.END),
    ]


def test_vmm(rtl: dict) -> None:
    report(check(rtl, "vmm"), "vmm")


def vector_program() -> list:
    """A softmax-like sequence with register-relative operands, a reduction, VARGMAX."""
    return [
        make(Op.SLI, rd=4, imm=16),
        make(Op.VMAX, dst=500, a=10, n=30),
        make(Op.VSUB, dst=520, a=10, b=500, n=30, bcast=1),
        make(Op.VEXP, dst=520, a=520, n=30),
        make(Op.VSUM, dst=501, a=520, n=30),
        make(Op.VRECIP, dst=502, a=501, n=1),
        make(Op.VMUL, dst=560, dst_reg=4, a=520, b=502, n=30, bcast=1),
        make(Op.VMULI, dst=600, a=10, n=7, imm=0x40000000),
        make(Op.VADDI, dst=610, a=600, n=7, imm=0x3F800000),
        make(Op.VSET, dst=620, n=5, imm=0xC0000000),
        make(Op.VMOV, dst=630, a=3, a_reg=4, n=9),
        make(Op.VRSQRT, dst=640, a=10, n=8),
        make(Op.VGELU, dst=650, a=10, n=8),
        make(Op.VARGMAX, rd=isa.REG_TOKEN_OUT, a=10, n=30),
        make(Op.END),
    ]


def test_vector_sequence(rtl: dict) -> None:
    report(check(rtl, "vector"), "vector")


def bank_program() -> list:
    """RD_BANK (unaligned), WR_BANK (partial columns), WR_ABK, then a MAC over what was written."""
    lanes = G.mac_lanes
    return [
        make(Op.RD_BANK, bank=6, addr=G.row_elems * 2 + 5, n=40, vaddr=700),
        make(Op.VMULI, dst=700, a=700, n=40, imm=0x40000000),
        make(Op.WR_BANK, bank=3, addr=7, n=30, vaddr=700),
        make(Op.WR_ABK, ch_mask=3, addr=3 * lanes + 2, vaddr=800),
        make(Op.SLI, rd=5, imm=32),
        make(Op.RD_BANK, bank=3, addr=0, n=48, n_reg=5 - 5, vaddr=750),
        make(Op.SYNC),
        make(Op.END),
    ]


def test_bank_moves(rtl: dict) -> None:
    report(check(rtl, "bank"), "bank")


def report(out: dict, name: str = "") -> None:
    """The RTL's run equals the simulator's: every DRAM command (cycle, channel, command, bank,
    row, column), the command counts, the instructions and the cycle count."""
    ctr, sim = out["counters"], out["sim_counters"]
    print(f"{name}: rtl cycles {ctr['cycles']} sim {out['sim_cycles']}")
    # (the simulator books a channel's commands instruction by instruction: order by cycle)
    got, want = out["trace"], sorted(out["sim_trace"], key=lambda e: (e[0], e[1]))
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"{name}: command {i} differs: RTL {g}, simulator {w}"
    assert len(got) == len(want), f"{name}: RTL issued {len(got)} commands, simulator {len(want)}"
    for key, value in ctr.items():
        if key.startswith("cmd_"):
            assert value == sim.get(key[4:], 0), key
    assert ctr["instructions"] == sim["instructions"]
    assert ctr["cycles"] == out["sim_cycles"], name


PROGRAMS.update({
    "scalar": (scalar_loop(), {1: 7, 2: -3}),
    "vmm": (vmm_program(), {}),
    "vector": (vector_program(), {}),
    "bank": (bank_program(), {}),
})

#: Seeds of the random differential programs (each a legal program of ~40 instructions).
SEEDS = range(6)
PROGRAMS.update({f"seed{seed}": (random_rtl_program(random.Random(seed), CFG), {})
                 for seed in SEEDS})


@pytest.mark.parametrize("seed", SEEDS)
def test_random_program_equals_the_models(rtl: dict, seed: int) -> None:
    """Differential test: a seeded random legal program (PIM moves, MACs, vector ops, SYNC)."""
    report(check(rtl, f"seed{seed}"), f"seed {seed}")
