"""cocotb bench of the generated ``controller`` block: scalar and control programs against the
functional machine (register values) and the cycle simulator (cycle counts); MAC programs
against ``channel_op`` under random backpressure on the channel queues.

Test 1, ``scalar_programs_match_the_models``:

- Driver: per program, a reset-free run: the program written word by word through the
  instruction-memory port (``imem_we``/``imem_addr``/``imem_wdata``, ``isa.encode``), a random
  number of idle cycles, a one-cycle ``start``; the units are idle (``units_idle``,
  ``vec_idle``, ``mover_idle`` high), the queues' ``ready`` random (nothing is pushed into
  them by these programs: ``o_ch`` / ``o_asic`` must stay quiet).
- Model: a seeded random program (SLI, SADD, SMUL, SDIV, SMOD, NOP, SYNC, forward BGE skips
  and counted BLT loops, END) run on :class:`FunctionalMachine` (registers) and
  :class:`CycleSimulator` (the run's span), with the registers the previous program left.
- Monitor / scoreboard: ``running`` from the cycle after ``start`` until ``done``; ``done`` and
  no ``error``; no valid on any queue stream; after the run every scalar register read back
  through ``reg_addr`` / ``reg_rdata`` equals the functional machine's, and the ``cycles``
  counter equals the cycle simulator's span.

Test 2, ``mac_programs_under_queue_backpressure``: MAC_ABK / MAC_SBK (register-relative
operands) mixed with scalar ops and SYNC; each channel queue stream ``ch<c>`` is drained with
random ``ready`` (stall probability 0.2 / 0.5 / 0.8 per program) by a consumer busy 0-6 cycles
per op, ``units_idle`` following it (SYNC / END wait for it); every entry, channel by channel and
in order, must equal ``channel_op`` (registers at dispatch) with the instruction's ``gb`` and
``data = 0``; ``o_asic`` stays quiet; the run ends in ``done`` without ``error``. (Queue-full
stalls change the timing, so no cycle check here.)

Environment: ``PIMGPT_CONFIG``, ``PIMGPT_SEED``, ``PIMGPT_PROGRAMS``, ``PIMGPT_LENGTH``
(instructions per program, roughly).
"""

from __future__ import annotations

import os
import random

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly
from helpers.cocotb_bench import start
from helpers.cocotb_runner import load_tb_config

from pimgpt.hdl import isa
from pimgpt.hdl.controller import counter_map
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.mapping.pimbin import PimBinary
from pimgpt.sim.cycle import CycleSimulator
from pimgpt.sim.machine import FunctionalMachine

#: registers the programs use (r0 reads 0; the loop counters live in r13 and r14)
REGS = range(1, 13)


def random_scalar_program(rng: random.Random, length: int) -> list[isa.Instruction]:
    code: list[isa.Instruction] = []

    def straight(n: int) -> None:
        for _ in range(n):
            op = rng.choice([Op.SLI, Op.SADD, Op.SADD, Op.SMUL, Op.SDIV, Op.SMOD, Op.NOP])
            rd, rs, rt = rng.choice(REGS), rng.choice([0, *REGS]), rng.choice([0, *REGS])
            if op is Op.SLI:
                imm = rng.choice([rng.randint(-50, 50), rng.randint(-(1 << 31), (1 << 31) - 1)])
                code.append(isa.make(op, rd=rd, imm=imm))
            elif op is Op.SADD:
                code.append(isa.make(op, rd=rd, rs=rs, rt=rt, imm=rng.randint(-1000, 1000)))
            elif op is Op.SMUL:
                code.append(isa.make(op, rd=rd, rs=rs, imm=rng.randint(-70000, 70000)))
            elif op in (Op.SDIV, Op.SMOD):
                code.append(isa.make(op, rd=rd, rs=rs, imm=rng.choice([1, 2, 3, 7, 1000,
                                                                       rng.randint(1, 1 << 20)])))
            else:
                code.append(isa.make(op))

    while len(code) < length:
        r = rng.random()
        if r < 0.5:
            straight(rng.randint(1, 6))
        elif r < 0.7:  # a forward skip
            skip = rng.randint(1, 3)
            target = len(code) + 1 + skip
            code.append(isa.make(Op.BGE, rs=rng.choice([0, *REGS]), rt=rng.choice([0, *REGS]),
                                 imm=target))
            straight(skip)
        elif r < 0.9:  # a counted loop: r13 = 0 .. k - 1
            k = rng.randint(1, 5)
            code.append(isa.make(Op.SLI, rd=13, imm=0))
            code.append(isa.make(Op.SLI, rd=14, imm=k))
            top = len(code)
            straight(rng.randint(1, 4))
            code.append(isa.make(Op.SADD, rd=13, rs=13, rt=0, imm=1))
            code.append(isa.make(Op.BLT, rs=13, rt=14, imm=top))
        else:
            code.append(isa.make(Op.SYNC))
    code.append(isa.make(Op.END))
    return code


@cocotb.test()
async def scalar_programs_match_the_models(dut) -> None:
    config = load_tb_config()
    seed0 = int(os.environ["PIMGPT_SEED"])
    programs = int(os.environ.get("PIMGPT_PROGRAMS", "6"))
    length = int(os.environ.get("PIMGPT_LENGTH", "30"))
    nc = config.geometry.channels
    ctr = counter_map(config)
    for name in ("imem_we", "imem_addr", "imem_wdata", "start", "reg_we", "reg_addr",
                 "reg_wdata", "vec_release", "vec_result", "mover_rd_release",
                 "mover_wr_release", "unit_busy", "cmd_valid", "cmd_code", "ctr_addr"):
        getattr(dut, name).value = 0
    for name in ("vec_idle", "units_idle"):
        getattr(dut, name).value = 1
    dut.mover_idle.value = (1 << nc) - 1
    streams = [f"o_ch__{c}" if hasattr(dut, f"o_ch__{c}__valid") else f"ch{c}"
               for c in range(nc)] + ["o_asic"]
    streams = [s for s in streams if hasattr(dut, f"{s}__valid")]
    assert "o_asic" in streams, "the controller's queue ports are not where the bench looks"
    await start(dut)  # returns in the middle of cycle 0 (counted from reset, as asic_edge does)
    now = 0

    async def tick() -> None:  # to the middle of the next cycle
        nonlocal now
        await FallingEdge(dut.clk)
        now += 1

    fm_regs = [0] * isa.NUM_SREGS
    sim = CycleSimulator(config)
    fm = FunctionalMachine(config)
    total_cycles = 0
    for p in range(programs):
        seed = seed0 + p
        rng = random.Random(seed)
        code = random_scalar_program(rng, length)
        # models: the registers carry over from the previous program in both
        fm.load(PimBinary(config=config, code=code, constants=[], image=None))
        for i, v in enumerate(fm_regs):
            if i:
                fm.regs[i] = v
        fm.run()
        fm_regs = list(fm.regs)
        sim.load_code(code)

        # driver: the program into the instruction memory
        for addr, ins in enumerate(code):
            await tick()
            dut.imem_we.value = 1
            dut.imem_addr.value = addr
            dut.imem_wdata.value = isa.encode(ins)
        await tick()
        dut.imem_we.value = 0
        for _ in range(rng.randint(0, 5)):  # idle before start
            await tick()
        dut.start.value = 1
        # the first dispatch is in the cycle after start's: the cycle simulator starts there
        # (the ASIC clock's phase, asic_edge, counts from reset in both)
        want_cycles = sim.run(start=now + 1).cycles
        await tick()
        dut.start.value = 0
        cycles = 0
        while True:
            for s in streams:  # random backpressure on the (empty) queue streams
                getattr(dut, f"{s}__ready").value = rng.random() < 0.6
            await ReadOnly()
            for s in streams:
                if int(getattr(dut, f"{s}__valid").value):
                    raise AssertionError(f"seed {seed}: {s} valid in a scalar program")
            if int(dut.error.value):
                raise AssertionError(f"seed {seed}: error in cycle {cycles} of the run")
            if int(dut.done.value):
                break
            if not int(dut.running.value):
                raise AssertionError(f"seed {seed}: neither running nor done in cycle {cycles}")
            cycles += 1
            if cycles > 100_000:
                raise AssertionError(f"seed {seed}: no done after {cycles} cycles")
            await tick()
        await tick()
        # monitor: registers and the cycle counter
        dut.ctr_addr.value = ctr["cycles"]
        await ReadOnly()
        got_cycles = int(dut.ctr_data.value)
        if got_cycles != want_cycles:
            raise AssertionError(f"seed {seed}: cycles counter {got_cycles}, the cycle "
                                 f"simulator {want_cycles} ({len(code)} instructions)")
        for r in range(isa.NUM_SREGS):
            await tick()
            dut.reg_addr.value = r
            await ReadOnly()
            got = int(dut.reg_rdata.value)
            want = fm_regs[r] & 0xFFFFFFFF
            if got != want:
                raise AssertionError(f"seed {seed}: r{r} = {got:#x}, the functional machine "
                                     f"{want:#x}")
        await tick()
        total_cycles += got_cycles
        dut._log.info("seed %d: %d instructions, %d cycles, registers match", seed, len(code),
                      got_cycles)
    dut._log.info("controller: %d programs, %d run cycles, registers and cycle counts match",
                  programs, total_cycles)


def random_mac_program(rng: random.Random, config, length: int) -> list[isa.Instruction]:
    """Scalar instructions mixed with MAC_ABK / MAC_SBK (register-relative operands included:
    ``r15`` holds a column-aligned address offset, ``r14`` a bank) and SYNC, then END."""
    g = config.geometry
    lanes, banks = g.mac_lanes, g.banks
    code = [isa.make(Op.SLI, rd=15, imm=lanes * rng.randint(0, 8)),
            isa.make(Op.SLI, rd=14, imm=rng.randrange(banks))]
    while len(code) < length:
        r = rng.random()
        addr = lanes * rng.randint(0, 64)
        n, gb = rng.randint(1, 4), rng.randrange(g.gb_cols - 4)
        if r < 0.35:
            code.append(isa.make(Op.MAC_ABK, ch_mask=rng.randint(1, (1 << g.channels) - 1),
                                 addr=addr, addr_reg=rng.choice([0, 15]), n=n, gb=gb))
        elif r < 0.6:
            bank_reg = rng.choice([0, 0, 14])
            code.append(isa.make(Op.MAC_SBK, bank=0 if bank_reg else rng.randrange(banks),
                                 bank_reg=bank_reg, addr=addr, addr_reg=rng.choice([0, 15]),
                                 n=n, gb=gb))
        elif r < 0.9:
            op = rng.choice([Op.SADD, Op.SLI, Op.NOP])
            code.append(isa.make(op, rd=rng.choice(REGS), rs=rng.choice(REGS),
                                 imm=rng.randint(-9, 9)) if op is not Op.NOP else isa.make(op))
        else:
            code.append(isa.make(Op.SYNC))
    code.append(isa.make(Op.END))
    return code


def expected_channel_ops(code, config) -> list[list[dict]]:
    """Walk the program (scalar semantics of pimgpt.sim.scalar) and list, per channel, the
    ops the dispatcher must push: ``channel_op`` with the registers at dispatch, plus ``gb``."""
    from pimgpt.hdl.sequencer import channel_op
    from pimgpt.sim.scalar import SCALAR_EXEC, exec_scalar

    regs = [0] * isa.NUM_SREGS
    out: list[list[dict]] = [[] for _ in range(config.geometry.channels)]
    pc = 0
    while code[pc].op is not Op.END:
        ins = code[pc]
        nxt = None
        if ins.op in SCALAR_EXEC:
            nxt = exec_scalar(ins.op, dict(ins.args), regs)
        for c in range(config.geometry.channels):
            o = channel_op(ins, config, c, regs)
            if o is not None:
                out[c].append({**o, "gb": int(ins.args["gb"]), "data": 0})
        pc = pc + 1 if nxt is None else nxt
    return out


@cocotb.test()
async def mac_programs_under_queue_backpressure(dut) -> None:
    """MAC_ABK / MAC_SBK programs: each channel queue (``ch<c>``) drained with random ``ready``
    (backpressure) by a consumer that stays busy a random 0-6 cycles per op (``units_idle``
    follows it); every entry, in order, must be the dispatcher's ``channel_op`` with the
    registers at dispatch; the run must end with ``done`` and no ``error``."""
    from pimgpt.hdl.controller import channel_entry_layout

    config = load_tb_config()
    seed0 = int(os.environ["PIMGPT_SEED"]) + 1000
    programs = int(os.environ.get("PIMGPT_PROGRAMS", "6"))
    length = int(os.environ.get("PIMGPT_LENGTH", "30"))
    nc = config.geometry.channels
    lay = channel_entry_layout(config)
    op_off = lay["op"].offset
    op_lay = lay["op"].shape

    def unpack(v: int) -> dict:
        f = lambda off, w: (v >> off) & ((1 << w) - 1)  # noqa: E731
        d = {name: f(op_off + fl.offset, fl.width) for name, fl in op_lay}
        d["gb"] = f(lay["gb"].offset, lay["gb"].width)
        d["data"] = f(lay["data"].offset, 1)
        return d

    for name in ("imem_we", "imem_addr", "imem_wdata", "start", "reg_we", "reg_addr",
                 "reg_wdata", "vec_release", "vec_result", "mover_rd_release",
                 "mover_wr_release", "unit_busy", "cmd_valid", "cmd_code", "ctr_addr",
                 "o_asic__ready"):
        getattr(dut, name).value = 0
    dut.vec_idle.value = 1
    dut.units_idle.value = 1
    dut.mover_idle.value = (1 << nc) - 1
    await start(dut)
    total = stalls = 0
    for p in range(programs):
        seed = seed0 + p
        rng = random.Random(seed)
        code = random_mac_program(rng, config, length)
        want = expected_channel_ops(code, config)
        for addr, ins in enumerate(code):
            await FallingEdge(dut.clk)
            dut.imem_we.value = 1
            dut.imem_addr.value = addr
            dut.imem_wdata.value = isa.encode(ins)
        await FallingEdge(dut.clk)
        dut.imem_we.value = 0
        dut.start.value = 1
        await FallingEdge(dut.clk)
        dut.start.value = 0
        got: list[list[dict]] = [[] for _ in range(nc)]
        busy = [0] * nc
        pending = False  # some queue had an entry in the last cycle
        stall_p = rng.choice([0.2, 0.5, 0.8])
        cycles = 0
        while True:
            ready = [busy[c] == 0 and rng.random() >= stall_p for c in range(nc)]
            for c in range(nc):
                getattr(dut, f"ch{c}__ready").value = int(ready[c])
            dut.units_idle.value = int(not pending and not any(busy))
            dut.unit_busy.value = sum(1 << c for c in range(nc) if busy[c])
            await ReadOnly()
            if int(dut.error.value):
                raise AssertionError(f"seed {seed}: error in cycle {cycles}")
            if int(dut.o_asic__valid.value):
                raise AssertionError(f"seed {seed}: o_asic valid in a MAC-only program")
            pending = False
            for c in range(nc):
                if int(getattr(dut, f"ch{c}__valid").value):
                    pending = True
                    if ready[c]:
                        e = unpack(int(getattr(dut, f"ch{c}__payload").value))
                        k = len(got[c])
                        if k >= len(want[c]) or e != want[c][k]:
                            raise AssertionError(
                                f"seed {seed}: channel {c} entry {k} in cycle {cycles}: {e}, "
                                f"expected {want[c][k] if k < len(want[c]) else 'none'}")
                        got[c].append(e)
                        busy[c] = rng.randint(0, 6)
                    else:
                        stalls += 1
            if int(dut.done.value):
                break
            cycles += 1
            if cycles > 100_000:
                raise AssertionError(f"seed {seed}: no done after {cycles} cycles")
            await FallingEdge(dut.clk)
            busy = [max(0, b - 1) for b in busy]
        for c in range(nc):
            if len(got[c]) != len(want[c]):
                raise AssertionError(f"seed {seed}: channel {c} got {len(got[c])} of "
                                     f"{len(want[c])} entries")
        total += sum(map(len, got))
        await FallingEdge(dut.clk)
    dut._log.info("controller: %d channel entries over %d programs matched in order, %d "
                  "cycles an entry waited for ready", total, programs, stalls)
