# amaranth: UnusedElaboratable=no
"""The channel PIM block RTL (hdl/channel.py) against the functional machine and the cycle
simulator, bit for bit and cycle for cycle.

- Differential with both simulators: seeded random PIM programs (tests/helpers/seqprog.py) on a
  16-row variant of ``tiny``; ``CycleSimulator(trace=True)`` gives channel 0's command trace,
  which drives the block at the simulator's cycles (write data from the program's vector-memory
  sources); every RD_MAC and RD_BANK value must equal ``FunctionalMachine``'s, delivered
  ``rdmac_latency`` / ``rd_latency`` cycles after its command, and the final bank arrays must
  equal the machine's.
- Random command streams, legal and illegal, issued back to back or with gaps, against a Python
  model of the channel written from ``pimgpt.sim.numerics`` (``mac_accumulate``, ``readout``) and
  the machine's memory semantics: every read-out's value and cycle, the error count each cycle.
- Directed: MAC over a whole row; RDMAC clear-and-restart (an RDMAC right after a MAC, MACs
  right after an RDMAC, two RDMACs); WR then RD of one column (masked lanes) and RD then WR;
  each protocol error; the backdoor port; MAC pipelines 1 and 2; sizes and ports.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator
from helpers.seqprog import random_program

from pimgpt.errors import PimgptError
from pimgpt.hdl.channel import (MAX_SIM_ARRAY_BYTES, ChannelPim, column_layout, data_layout,
                                read_latency)
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import MachineConfig, preset
from pimgpt.hdl.sequencer import ChannelSequencer, channel_op, cmd_layout
from pimgpt.hdl.timing import ALL_BANK_CMDS, DramCmd
from pimgpt.mapping.pimbin import PimBinary
from pimgpt.sim import numerics as nm
from pimgpt.sim.cycle import CycleSimulator
from pimgpt.sim.machine import FunctionalMachine

C = DramCmd
F32, U16 = np.float32, np.uint16
TINY = preset("tiny")
#: tiny with 16 rows per bank (128 columns per bank array: quick to load) and a global buffer
#: of two rows (16 columns), so that the column field is a bit wider than a row needs
SMALL = TINY.replace(name="tiny-16rows", geometry=dataclasses.replace(
    TINY.geometry, rows=16, gb_bytes=2 * TINY.geometry.row_bytes))
G = SMALL.geometry
NB, LANES, CPR, GBC = G.banks_per_channel, G.mac_lanes, G.cols_per_row, G.gb_cols
WORDS = G.rows * CPR
#: a global buffer of half a row (WRGB can name a column beyond it) and a 2-cycle RDMAC
#: latency (with mac_pipeline=1 the read-out leaves the MAC units straight for the output)
ODD = SMALL.replace(name="tiny-16rows-odd",
                    geometry=dataclasses.replace(G, gb_bytes=G.row_bytes // 2),
                    timing=dataclasses.replace(SMALL.timing, tCL_REG=0.4, tBL=0.4))
#: The simulator builds (config, array_rows, mac_pipeline), three in all: each costs seconds.
MAIN = (SMALL, None, 0)
PART = (SMALL, 8, 2)  # arrays of 8 rows, a 2-stage MAC pipeline
ODD_BUILD = (ODD, None, 1)


# --- bit packing ---------------------------------------------------------------------------------

def _pack_struct(layout, **fields: int) -> int:
    return sum(int(v) << layout[name].offset for name, v in fields.items())


def _pack_lanes(values, width: int = 16) -> int:
    return sum(int(v) << (width * i) for i, v in enumerate(values))


def _unpack_lanes(word: int, n: int, width: int = 16) -> np.ndarray:
    return np.array([(word >> (width * i)) & ((1 << width) - 1) for i in range(n)], U16)


def cmd_bits(config: MachineConfig, cmd: C | int, bank: int = 0, row: int = 0, col: int = 0,
             all_banks: bool | None = None) -> int:
    """A ``cmd_layout`` word; ``cmd`` may be a raw code; ``all_banks`` defaults to the flag
    the command should carry."""
    code = cmd.value if isinstance(cmd, C) else cmd
    if all_banks is None:
        all_banks = isinstance(cmd, C) and cmd in ALL_BANK_CMDS
    return _pack_struct(cmd_layout(config), cmd=code, all_banks=int(all_banks), bank=bank,
                        row=row, col=col)


def data_bits(config: MachineConfig, column=(), banks=(), mask: int = 0, gb: int = 0) -> int:
    """A ``data_layout`` word: write data and mask, or a MAC's global-buffer column."""
    return _pack_struct(data_layout(config), column=_pack_lanes(column),
                        banks=_pack_lanes(banks), mask=mask, gb_col=gb)


def bf16_bits(x) -> np.ndarray:
    return np.asarray(nm.f32_to_bf16_bits(np.asarray(x, F32)), U16).reshape(-1)


def grid_bits(x) -> np.ndarray:
    """The BF16 patterns of binary32 values on the BF16 grid, exactly (NaN payloads kept)."""
    u = np.ascontiguousarray(x, F32).view(np.uint32).reshape(-1)
    assert not (u & np.uint32(0xFFFF)).any(), "values off the BF16 grid"
    return (u >> np.uint32(16)).astype(U16)


def random_bf16(rng: np.random.Generator, n: int, p_other: float = 0.01) -> np.ndarray:
    """Moderate normal numbers (so that sums stay finite and mean something) but for a
    fraction ``p_other`` of any bit pattern or special value (zeros, Inf, NaN, subnormal,
    extreme normals)."""
    sign = rng.integers(0, 2, n).astype(U16) << U16(15)
    frac = rng.integers(0, 128, n).astype(U16)
    out = sign | (rng.integers(118, 136, n).astype(U16) << U16(7)) | frac
    specials = np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x7F7F, 0x0080], U16)
    other = np.where(rng.random(n) < 0.5, rng.integers(0, 1 << 16, n).astype(U16),
                     rng.choice(specials, n))
    return np.where(rng.random(n) < p_other, other, out).astype(U16)


# --- the testbench -------------------------------------------------------------------------------

@dataclasses.dataclass
class Step:
    """What a cycle presents: a command (``cmd_bits``) with its ``data_bits``, a host access."""

    cmd: int | None = None
    data: int = 0
    host: dict | None = None  # en implied; we, bank, col, wdata (lanes)


@dataclasses.dataclass
class Trace:
    rd: list[tuple[int, tuple[int, ...]]]  # (cycle, lanes) of each o_rd strobe
    mac: list[tuple[int, tuple[int, ...]]]  # (cycle, read-outs) of each o_mac strobe
    host: list[tuple[int, tuple[int, ...]]]  # (cycle, lanes) of each host.rvalid
    error_count: list[int]  # error_count in every cycle
    error: list[int]
    arrays: np.ndarray  # final bank arrays (banks, words, lanes)
    gb: np.ndarray  # final global buffer (gb_cols, lanes)


class _Bench:
    """One simulator per channel build, reused: elaborating four MAC units costs seconds, a
    run milliseconds. ``sim.reset()`` restores signals and memories and restarts the one
    testbench, which runs whatever job was set last."""

    def __init__(self, dut: ChannelPim):
        self.dut = dut
        self.job = None
        self.used = False
        self.sim = Simulator(dut)
        self.sim.add_clock(1e-8)
        self.sim.add_testbench(self._bench)

    async def _bench(self, ctx) -> None:
        await self.job(ctx)

    def run(self, job) -> None:
        self.job = job
        if self.used:  # (a reset before the first run would drop the first testbench unrun)
            self.sim.reset()
        self.used = True
        self.sim.run()


_BENCHES: dict[tuple, _Bench] = {}


def bench_for(config: MachineConfig, array_rows: int | None = None,
              mac_pipeline: int = 0) -> _Bench:
    key = (config, array_rows, mac_pipeline)
    if key not in _BENCHES:
        _BENCHES[key] = _Bench(ChannelPim(config, array_rows=array_rows,
                                          mac_pipeline=mac_pipeline))
    return _BENCHES[key]


def run_channel(bench: _Bench, steps: dict[int, Step], cycles: int,
                image: np.ndarray | None = None) -> Trace:
    """From reset: preload ``image`` ((banks, words, lanes) BF16 patterns) into the arrays,
    present ``steps[t]`` in cycle ``t`` for ``cycles`` cycles and record the outputs of every
    cycle, then the final arrays and global buffer."""
    dut = bench.dut
    cfg = dut._config
    nb, lanes = cfg.geometry.banks_per_channel, cfg.geometry.mac_lanes
    words = dut.bank_data[0].depth
    out = Trace([], [], [], [], [], np.zeros((nb, words, lanes), U16),
                np.zeros((cfg.geometry.gb_cols, lanes), U16))

    async def job(ctx):
        if image is not None:
            for b in range(nb):
                for w in range(words):
                    if image[b, w].any():
                        ctx.set(dut.bank_data[b][w], [int(v) for v in image[b, w]])
        cmd_on = host_on = False
        for t in range(cycles):
            st = steps.get(t)
            want_cmd = st is not None and st.cmd is not None
            if want_cmd:
                ctx.set(dut.i_cmd.payload.as_value(), st.cmd)
                ctx.set(dut.i_data.as_value(), st.data)
            if want_cmd != cmd_on:
                ctx.set(dut.i_cmd.valid, want_cmd)
                cmd_on = want_cmd
            want_host = st is not None and st.host is not None
            if want_host:
                h = st.host
                ctx.set(dut.host.we, h.get("we", 0))
                ctx.set(dut.host.bank, h["bank"])
                ctx.set(dut.host.col, h["col"])
                ctx.set(dut.host.wdata.as_value(), _pack_lanes(h.get("wdata", ())))
            if want_host != host_on:
                ctx.set(dut.host.en, want_host)
                host_on = want_host
            if ctx.get(dut.o_rd.valid):
                out.rd.append((t, tuple(_unpack_lanes(ctx.get(dut.o_rd.payload.as_value()),
                                                      lanes))))
            if ctx.get(dut.o_mac.valid):
                out.mac.append((t, tuple(_unpack_lanes(ctx.get(dut.o_mac.payload.as_value()),
                                                       nb))))
            if ctx.get(dut.host.rvalid):
                out.host.append((t, tuple(_unpack_lanes(ctx.get(dut.host.rdata.as_value()),
                                                        lanes))))
            out.error_count.append(ctx.get(dut.error_count))
            out.error.append(ctx.get(dut.error))
            await ctx.tick()
        # inputs back to idle: the next job starts from reset with nothing presented
        ctx.set(dut.i_cmd.valid, 0)
        ctx.set(dut.host.en, 0)
        for b in range(nb):
            for w in range(words):
                out.arrays[b, w] = _unpack_lanes(ctx.get(dut.bank_data[b][w]).as_bits(), lanes)
        for c in range(cfg.geometry.gb_cols):
            out.gb[c] = _unpack_lanes(ctx.get(dut.gb_data[c]).as_bits(), lanes)

    bench.run(job)
    return out


# --- the Python model ----------------------------------------------------------------------------

class ChannelModel:
    """What one channel does with each command (hdl/channel.py's docstring), from the
    functional machine's semantics and ``pimgpt.sim.numerics``; BF16 kept as bit patterns."""

    def __init__(self, config: MachineConfig, image: np.ndarray | None = None,
                 array_rows: int | None = None):
        g = config.geometry
        self.cfg = config
        self.rows = array_rows or g.rows
        words = self.rows * g.cols_per_row
        self.mem = (np.zeros((g.banks_per_channel, words, g.mac_lanes), U16) if image is None
                    else image.copy())
        self.gb = np.zeros((g.gb_cols, g.mac_lanes), U16)
        self.acc = np.zeros(g.banks_per_channel, F32)
        self.open: list[int | None] = [None] * g.banks_per_channel
        self.errors = 0
        self.rd_latency = read_latency(C.RD, config)
        self.rdmac_latency = read_latency(C.RDMAC, config)

    def step(self, t: int, cmd: C | int, bank: int = 0, row: int = 0, col: int = 0,
             all_banks: bool | None = None, column=None, banks=None, mask: int = 0,
             gb: int = 0) -> tuple[str, int, np.ndarray] | None:
        """Apply one command presented in cycle ``t``; returns a read-out ``(kind, cycle,
        values)`` or None. A protocol error counts and does nothing."""
        g = self.cfg.geometry
        nb, cpr = g.banks_per_channel, g.cols_per_row
        if not isinstance(cmd, C) or all_banks != (cmd in ALL_BANK_CMDS):
            self.errors += 1
            return None
        every = range(nb)
        if cmd is C.ACT:
            bad = self.open[bank] is not None or row >= self.rows
        elif cmd is C.ACT16:
            bad = any(r is not None for r in self.open) or row >= self.rows
        elif cmd is C.REF:
            bad = any(r is not None for r in self.open)
        elif cmd in (C.RD, C.WR, C.MAC):
            bad = self.open[bank] != row or col >= cpr or cmd is C.MAC and gb >= g.gb_cols
        elif cmd in (C.MAC16, C.WR16):
            bad = (any(self.open[b] != row for b in every) or col >= cpr
                   or cmd is C.MAC16 and gb >= g.gb_cols)
        elif cmd is C.WRGB:
            bad = col >= g.gb_cols
        else:
            bad = False
        if bad:
            self.errors += 1
            return None
        word = row * cpr + col
        if cmd is C.ACT:
            self.open[bank] = row
        elif cmd is C.ACT16:
            self.open = [row] * nb
        elif cmd is C.PRE:
            self.open[bank] = None
        elif cmd is C.PREA:
            self.open = [None] * nb
        elif cmd is C.WRGB:
            self.gb[col] = column
        elif cmd in (C.MAC, C.MAC16):
            sel = slice(bank, bank + 1) if cmd is C.MAC else slice(None)
            w = nm.bf16_bits_to_f32(self.mem[sel, word])[:, None, :]  # (banks, 1 col, lanes)
            x = nm.bf16_bits_to_f32(self.gb[gb])[None, :]
            self.acc[sel] = nm.mac_accumulate(self.acc[sel], w, x)
        elif cmd is C.RDMAC:
            out = bf16_bits(nm.readout(self.acc))
            self.acc[:] = 0.0
            return ("mac", t + self.rdmac_latency, out)
        elif cmd is C.RD:
            return ("rd", t + self.rd_latency, self.mem[bank, word].copy())
        elif cmd in (C.WR, C.WR16):
            lanes = [lane for lane in range(g.mac_lanes) if mask >> lane & 1]
            for b in (every if cmd is C.WR16 else (bank,)):
                for lane in lanes:
                    self.mem[b, word, lane] = banks[b] if cmd is C.WR16 else column[lane]
        return None


# --- the model against the functional machine's vocabulary ---------------------------------------

def test_latencies_are_the_cycle_simulators() -> None:
    for cfg in (TINY, SMALL, preset("paper"), preset("gddr6")):
        sim = CycleSimulator(cfg)
        assert read_latency(C.RD, cfg) == sim.rd_latency
        assert read_latency(C.RDMAC, cfg) == sim.rdmac_latency
    dut = ChannelPim(SMALL)
    assert (dut.rd_latency, dut.rdmac_latency) == (read_latency(C.RD, SMALL),
                                                   read_latency(C.RDMAC, SMALL))
    with pytest.raises(PimgptError, match="no read data"):
        read_latency(C.WR, SMALL)


def _program_steps(config: MachineConfig, code, vmem: np.ndarray, trace):
    """Channel 0's commands of ``trace`` as testbench steps, each with the data the program
    gives it (write data from its vector-memory sources ``vmem``, a MAC's global-buffer column),
    and the program's reads in command order: ``("rd", lanes covered, vaddr of lane 0)`` /
    ``("mac", None, vaddr)``."""
    g = config.geometry
    lanes, nb = g.mac_lanes, g.banks_per_channel
    side: list[tuple[C, dict]] = []  # per write or MAC command, in program order
    reads: list[tuple[str, slice | None, int]] = []
    for ins in code:
        op = channel_op(ins, config, 0)
        if op is None:
            continue
        kind, a = Op(op["op"]), ins.args
        if kind is Op.WR_GB:
            src = vmem[a["vaddr"]:a["vaddr"] + op["n"] * lanes]
            for i in range(op["n"]):
                side.append((C.WRGB, {"column": bf16_bits(src[i * lanes:(i + 1) * lanes])}))
        elif kind in (Op.MAC_ABK, Op.MAC_SBK):
            cmd = C.MAC16 if kind is Op.MAC_ABK else C.MAC
            side += [(cmd, {"gb": a["gb"] + i}) for i in range(op["n"])]
        elif kind is Op.WR_ABK:
            side.append((C.WR16, {"banks": bf16_bits(vmem[a["vaddr"]:a["vaddr"] + nb]),
                                  "mask": 1 << a["addr"] % lanes}))
        elif kind is Op.RD_MAC:
            reads.append(("mac", None, a["vaddr"]))
        elif kind in (Op.WR_BANK, Op.RD_BANK):
            addr, n = a["addr"], a["n"]
            for c in range(addr // lanes, (addr + n - 1) // lanes + 1):
                lo, hi = max(addr, c * lanes), min(addr + n, (c + 1) * lanes)
                covered = slice(lo - c * lanes, hi - c * lanes)
                if kind is Op.WR_BANK:
                    column = np.zeros(lanes, U16)
                    column[covered] = bf16_bits(vmem[a["vaddr"] + lo - addr:
                                                     a["vaddr"] + hi - addr])
                    mask = sum(1 << lane for lane in range(covered.start, covered.stop))
                    side.append((C.WR, {"column": column, "mask": mask}))
                else:
                    reads.append(("rd", covered, a["vaddr"] + lo - addr - covered.start))
    steps: dict[int, Step] = {}
    si = 0
    for e in trace:
        extra = {}
        if e.cmd in (C.WRGB, C.WR, C.WR16, C.MAC, C.MAC16):
            want, extra = side[si]
            assert want is e.cmd, (want, e)
            si += 1
        steps[e.cycle] = Step(cmd_bits(config, e.cmd, e.bank or 0, e.row or 0, e.column or 0),
                              data_bits(config, **extra))
    assert si == len(side)
    return steps, reads


@pytest.mark.parametrize("seed,n_ops", [(1, 50), (9, 36)])
def test_matches_functional_machine_at_cycle_simulator_cycles(seed: int, n_ops: int) -> None:
    cfg = SMALL
    g = cfg.geometry
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    code = random_program(cfg, rng, n_ops, big_gap=0.0, idle_refi=False)
    # the program's sources: random vector memory (random_program keeps every instruction's
    # words apart, so sources are never overwritten and results never reused)
    vwords = cfg.asic.vmem_words
    # (binary32 values off the BF16 grid: writes round them as the machine does)
    vmem0 = (nrng.normal(0, 1, vwords) * 2.0 ** nrng.integers(-8, 9, vwords)).astype(F32)
    image = random_bf16(nrng, g.banks * g.bank_elems).reshape(g.banks, g.bank_elems)

    fm = FunctionalMachine(cfg)
    fm.load(PimBinary(config=cfg, code=code, constants=[(0, vmem0)], image=image))
    fm.run()

    cs = CycleSimulator(cfg, fast=False, trace=True)
    cs.load_code(code)
    cs.run()
    trace = sorted((e for e in cs.trace if e.channel == 0), key=lambda e: e.cycle)
    steps, reads = _program_steps(cfg, code, vmem0, trace)
    commands = trace
    assert {C.RD, C.RDMAC, C.MAC16, C.MAC, C.WR, C.WR16, C.WRGB} <= {e.cmd for e in trace}
    assert seed != 1 or C.REF in {e.cmd for e in trace}  # a refresh in between

    img0 = image[:NB].reshape(NB, WORDS, LANES)
    end = trace[-1].cycle + max(cs.rd_latency, cs.rdmac_latency) + 2
    out = run_channel(bench_for(cfg), steps, end, image=img0)

    # every read-out at the cycle the simulator counts it delivered, with the machine's value
    want_rd = [e.cycle + cs.rd_latency for e in commands if e.cmd is C.RD]
    want_mac = [e.cycle + cs.rdmac_latency for e in commands if e.cmd is C.RDMAC]
    assert [t for t, _ in out.rd] == want_rd
    assert [t for t, _ in out.mac] == want_mac
    rd_iter, mac_iter = iter(out.rd), iter(out.mac)
    for kind, covered, vaddr in reads:
        if kind == "mac":
            _, got = next(mac_iter)
            assert np.array_equal(np.array(got, U16), grid_bits(fm.vmem[vaddr:vaddr + NB]))
        else:
            _, got = next(rd_iter)
            n = covered.stop - covered.start
            want = bf16_bits(fm.vmem[vaddr + covered.start:vaddr + covered.start + n])
            assert np.array_equal(np.array(got, U16)[covered], want)
    assert out.error_count[-1] == 0
    # the arrays end as the machine's (lanes-first lm[l, c, bank] of channel 0)
    lm = grid_bits(fm.lm[:, :WORDS, :NB].transpose(2, 1, 0)).reshape(NB, WORDS, LANES)
    assert np.array_equal(out.arrays, lm)


# --- random command streams against the model ----------------------------------------------------

def _random_stream(rng: random.Random, nrng: np.random.Generator, n: int, p_bad: float,
                   gaps: tuple[int, ...], array_rows: int):
    """``n`` commands, mostly legal for the row state they build, with idle gaps from
    ``gaps``; a fraction ``p_bad`` is drawn without regard to the state (often illegal)."""
    open_: list[int | None] = [None] * NB
    rows = rng.sample(range(array_rows), min(3, array_rows))
    t = 0
    out = []
    for _ in range(n):
        t += rng.choice(gaps)
        opened = [b for b in range(NB) if open_[b] is not None]
        closed = [b for b in range(NB) if open_[b] is None]
        same = len(opened) == NB and len(set(open_)) == 1
        kinds = [C.WRGB, C.RDMAC]
        if closed:
            kinds += [C.ACT] * 2
        if not opened:
            kinds += [C.ACT16] * 4 + [C.REF]
        if opened:
            kinds += [C.PRE, C.PREA, C.RD, C.WR] + [C.MAC] * 3
        if same:
            kinds += [C.MAC16] * 10 + [C.WR16] * 2 + [C.RDMAC] * 2
        kind = rng.choice(kinds)
        bank = rng.choice(opened if kind in (C.RD, C.WR, C.MAC, C.PRE) else
                          closed if kind is C.ACT else range(NB))
        row = rng.choice(rows)
        col = rng.randrange(CPR)
        if kind in (C.RD, C.WR, C.MAC, C.MAC16, C.WR16):
            row = open_[bank] if kind in (C.RD, C.WR, C.MAC) else open_[0]
        all_banks = None
        if rng.random() < p_bad:
            kind = rng.choice(list(C) + [12, 15])
            bank, row, col = rng.randrange(NB), rng.randrange(G.rows), rng.randrange(CPR)
            if rng.random() < 0.2:
                all_banks = rng.random() < 0.5
        column = random_bf16(nrng, LANES)
        banks = random_bf16(nrng, NB)
        mask = rng.choice([(1 << LANES) - 1, rng.randrange(1 << LANES), 1 << rng.randrange(LANES)])
        if all_banks is None:
            all_banks = isinstance(kind, C) and kind in ALL_BANK_CMDS
        # follow the state as the block will (an illegal command changes nothing)
        if isinstance(kind, C) and all_banks == (kind in ALL_BANK_CMDS):
            if kind is C.ACT and open_[bank] is None and row < array_rows:
                open_[bank] = row
            elif kind is C.ACT16 and not opened and row < array_rows:
                open_ = [row] * NB
            elif kind is C.PRE:
                open_[bank] = None
            elif kind is C.PREA:
                open_ = [None] * NB
        out.append((t, dict(cmd=kind, bank=bank, row=row, col=col, all_banks=all_banks,
                            column=column, banks=banks, mask=mask, gb=rng.randrange(GBC))))
        t += 1
    return out


def _check_stream(stream, image, build=MAIN) -> Trace:
    """Run ``stream`` ((cycle, command fields) pairs) on ``build`` from ``image`` and check
    every read-out, its cycle, the error count of every cycle and the final memories against
    :class:`ChannelModel`."""
    config, array_rows, _ = build
    model = ChannelModel(config, image, array_rows=array_rows)
    steps, want_rd, want_mac, errors_before = {}, [], [], []
    for t, c in stream:
        steps[t] = Step(cmd_bits(config, c["cmd"], c["bank"], c["row"], c["col"], c["all_banks"]),
                        data_bits(config, c["column"], c["banks"], c["mask"], c["gb"]))
        got = model.step(t, **c)
        if got is not None:
            (want_rd if got[0] == "rd" else want_mac).append((got[1], tuple(got[2])))
        errors_before.append((t + 1, model.errors))
    end = stream[-1][0] + max(model.rd_latency, model.rdmac_latency) + 2
    out = run_channel(bench_for(*build), steps, end, image=image)
    assert out.rd == want_rd
    assert out.mac == want_mac
    for t, count in errors_before:
        assert out.error_count[t] == count, f"cycle {t}"
        assert out.error[t] == (count > 0)
    assert np.array_equal(out.arrays, model.mem)
    assert np.array_equal(out.gb, model.gb)
    return out


@pytest.mark.parametrize("seed,n,p_bad,gaps", [
    (11, 700, 0.0, (0,)),  # back to back, all legal
    (12, 500, 0.06, (0, 0, 0, 1, 2, 7)),  # gaps, some illegal
])
def test_random_streams_bit_exact(seed, n, p_bad, gaps) -> None:
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    image = random_bf16(nrng, NB * WORDS * LANES).reshape(NB, WORDS, LANES)
    stream = _random_stream(rng, nrng, n, p_bad, gaps, G.rows)
    kinds = {c["cmd"] for _, c in stream}
    assert {C.MAC16, C.MAC, C.RDMAC, C.RD, C.WR, C.WR16, C.WRGB, C.ACT16, C.ACT} <= kinds
    out = _check_stream(stream, image)
    assert len(out.mac) >= 20 and len(out.rd) >= 20
    assert (out.error_count[-1] > 0) == (p_bad > 0)


# --- directed ------------------------------------------------------------------------------------

def _cmd(cmd, bank=0, row=0, col=0, **data):
    return dict(cmd=cmd, bank=bank, row=row, col=col, all_banks=cmd in ALL_BANK_CMDS,
                column=data.get("column", np.zeros(LANES, U16)),
                banks=data.get("banks", np.zeros(NB, U16)), mask=data.get("mask", 0),
                gb=data.get("gb", 0))


def _seq(*cmds, start: int = 0):
    return [(start + i, c) for i, c in enumerate(cmds)]


@pytest.mark.parametrize("build", [MAIN, PART, ODD_BUILD],
                         ids=["p0-ring", "p2-register", "p1-direct"])
def test_mac_over_a_whole_row(build) -> None:
    """ACT16, WRGB of every buffer column, MAC16 over every column of the row, RDMAC: the
    read-out is the machine's whole-row ``mac_accumulate`` (one call over all columns), at
    RDMAC + rdmac_latency, whatever the MAC pipeline and the read-out delay (a ring buffer,
    one register, none)."""
    config, array_rows, _ = build
    gbc = config.geometry.gb_cols
    words = (array_rows or G.rows) * CPR
    nrng = np.random.default_rng(5)
    image = random_bf16(nrng, NB * words * LANES).reshape(NB, words, LANES)
    gbv = random_bf16(nrng, gbc * LANES).reshape(gbc, LANES)
    row = 6
    cmds = [_cmd(C.ACT16, row=row)]
    cmds += [_cmd(C.WRGB, col=c, column=gbv[c]) for c in range(gbc)]
    cmds += [_cmd(C.MAC16, row=row, col=c, gb=c % gbc) for c in range(CPR)]
    cmds += [_cmd(C.RDMAC)]
    out = _check_stream(_seq(*cmds), image, build)
    rows = nm.bf16_bits_to_f32(image[:, row * CPR:(row + 1) * CPR])  # (banks, cols, lanes)
    x = nm.bf16_bits_to_f32(gbv[np.arange(CPR) % gbc])
    want = nm.readout(nm.mac_accumulate(np.zeros(NB, F32), rows, x))
    t_rdmac = len(cmds) - 1
    assert out.mac == [(t_rdmac + read_latency(C.RDMAC, config), tuple(bf16_bits(want)))]


def test_rdmac_clears_and_restarts() -> None:
    """An RDMAC right after a MAC includes it; MACs right after an RDMAC start from +0 (in
    one bank only: MAC); a second RDMAC at once reads +0."""
    nrng = np.random.default_rng(6)
    image = random_bf16(nrng, NB * WORDS * LANES).reshape(NB, WORDS, LANES)
    gbv = random_bf16(nrng, GBC * LANES).reshape(GBC, LANES)
    cmds = [_cmd(C.ACT16, row=2)] + [_cmd(C.WRGB, col=c, column=gbv[c]) for c in range(3)]
    cmds += [_cmd(C.MAC16, row=2, col=c, gb=c) for c in range(3)]
    # single-bank MACs with buffer columns other than the row's
    cmds += [_cmd(C.RDMAC), _cmd(C.MAC, bank=1, row=2, col=4, gb=2),
             _cmd(C.MAC, bank=1, row=2, col=5, gb=0), _cmd(C.RDMAC), _cmd(C.RDMAC)]
    out = _check_stream(_seq(*cmds), image)
    w = nm.bf16_bits_to_f32(image)  # (banks, words, lanes)
    x = nm.bf16_bits_to_f32(gbv)
    first = nm.mac_accumulate(np.zeros(NB, F32), w[:, 2 * CPR:2 * CPR + 3], x[:3])
    second = np.zeros(NB, F32)
    second[1:2] = nm.mac_accumulate(np.zeros(1, F32), w[1:2, 2 * CPR + 4:2 * CPR + 6],
                                    x[[2, 0]])
    assert [v for _, v in out.mac] == [tuple(bf16_bits(nm.readout(first))),
                                       tuple(bf16_bits(nm.readout(second))), (0,) * NB]


def test_wr_then_rd_and_rd_then_wr() -> None:
    """A masked WR then an RD of the same column in the next cycle reads the merged column; an
    RD followed at once by a WR of its column reads the old data; WR16 writes one lane of
    every bank."""
    nrng = np.random.default_rng(7)
    image = random_bf16(nrng, NB * WORDS * LANES).reshape(NB, WORDS, LANES)
    new = random_bf16(nrng, LANES)
    mask = 0b1010_0000_1111_0001
    vals = random_bf16(nrng, NB)
    cmds = [_cmd(C.ACT, bank=3, row=9), _cmd(C.WR, bank=3, row=9, col=5, column=new, mask=mask),
            _cmd(C.RD, bank=3, row=9, col=5), _cmd(C.RD, bank=3, row=9, col=6),
            _cmd(C.WR, bank=3, row=9, col=6, column=new, mask=0xFFFF),
            _cmd(C.RD, bank=3, row=9, col=6), _cmd(C.PRE, bank=3),
            _cmd(C.ACT16, row=4), _cmd(C.WR16, row=4, col=2, banks=vals, mask=1 << 11),
            _cmd(C.RD, bank=2, row=4, col=2)]
    out = _check_stream(_seq(*cmds), image)
    merged = image[3, 9 * CPR + 5].copy()
    for lane in range(LANES):
        if mask >> lane & 1:
            merged[lane] = new[lane]
    lane11 = image[2, 4 * CPR + 2].copy()
    lane11[11] = vals[2]
    lat = read_latency(C.RD, SMALL)
    assert out.rd == [(2 + lat, tuple(merged)), (3 + lat, tuple(image[3, 9 * CPR + 6])),
                      (5 + lat, tuple(new)), (9 + lat, tuple(lane11))]


@pytest.mark.parametrize("case", [
    "rd_closed", "mac_wrong_row", "act_open", "act16_one_open", "mac16_one_closed",
    "wr16_wrong_row", "ref_open", "col_outside_row", "wrgb_outside_buffer", "bad_all_banks",
    "unknown_code", "act_beyond_array",
])
def test_protocol_errors(case: str) -> None:
    """Each illegal command raises ``error``, counts once and changes nothing: the legal
    commands around it give the results they would give without it."""
    # the column field is the wider of a row's and the buffer's: with SMALL's wider buffer a
    # column command can name a column outside the row, with ODD's narrower one WRGB a column
    # outside the buffer; PART's arrays hold rows 0..7
    build = {"wrgb_outside_buffer": ODD_BUILD, "act_beyond_array": PART}.get(case, MAIN)
    array_rows = build[1]
    nrng = np.random.default_rng(8)
    words = (array_rows or G.rows) * CPR
    image = random_bf16(nrng, NB * words * LANES).reshape(NB, words, LANES)
    ok = [_cmd(C.ACT, bank=0, row=3), _cmd(C.RD, bank=0, row=3, col=1)]
    bad = {
        "rd_closed": _cmd(C.RD, bank=1, row=3, col=1),
        "mac_wrong_row": _cmd(C.MAC, bank=0, row=4, col=1),
        "act_open": _cmd(C.ACT, bank=0, row=5),
        "act16_one_open": _cmd(C.ACT16, row=3),
        "mac16_one_closed": _cmd(C.MAC16, row=3, col=0),
        "wr16_wrong_row": _cmd(C.WR16, row=3, col=0, banks=np.ones(NB, U16), mask=1),
        "ref_open": _cmd(C.REF),
        "col_outside_row": _cmd(C.WR, bank=0, row=3, col=CPR, column=np.ones(LANES, U16),
                                mask=0xFFFF),
        "wrgb_outside_buffer": _cmd(C.WRGB, col=ODD.geometry.gb_cols,
                                    column=np.ones(LANES, U16)),
        "bad_all_banks": dict(_cmd(C.RD, bank=0, row=3, col=1), all_banks=True),
        "unknown_code": dict(_cmd(C.RD, bank=0, row=3, col=1), cmd=13),
        "act_beyond_array": _cmd(C.ACT, bank=2, row=8),
    }[case]
    stream = _seq(*ok, bad, _cmd(C.RD, bank=0, row=3, col=1), _cmd(C.MAC, bank=0, row=3, col=1),
                  _cmd(C.RDMAC))
    out = _check_stream(stream, image, build)
    assert out.error_count[2] == 0 and out.error_count[3] == 1 and out.error_count[-1] == 1
    assert out.error[3] == 1 and out.error[-1] == 1
    assert len(out.rd) == 2 and out.rd[0][1] == out.rd[1][1]


def test_host_port() -> None:
    """Backdoor writes and reads (read data the next cycle), visible to RD; an access in a
    command cycle or beyond the modelled rows is an error and is dropped."""
    a, b = tuple(range(1, LANES + 1)), tuple(range(100, 100 + LANES))
    steps = {
        0: Step(host={"we": 1, "bank": 2, "col": 13, "wdata": a}),
        1: Step(host={"bank": 2, "col": 13}),
        2: Step(cmd=cmd_bits(SMALL, C.ACT, 2, 1), host={"we": 1, "bank": 2, "col": 13,
                                                       "wdata": b}),  # clash: dropped
        3: Step(cmd=cmd_bits(SMALL, C.RD, 2, 1, 5)),  # element-column 13 = row 1, column 5
        4: Step(host={"we": 1, "bank": 0, "col": 8 * CPR, "wdata": b}),  # beyond the array
        5: Step(host={"bank": 2, "col": 13}),
    }
    lat = read_latency(C.RD, SMALL)
    out = run_channel(bench_for(*PART), steps, 4 + lat)  # arrays of 8 of the 16 rows
    assert out.host == [(2, a), (6, a)]
    assert out.rd == [(3 + lat, a)]
    assert out.error_count[3] == 1 and out.error_count[5] == 2
    assert not out.arrays[0].any()


# --- construction, sizes, ports ------------------------------------------------------------------

def test_sizes_and_arguments() -> None:
    ChannelPim(TINY)  # the tiny preset's full arrays fit the limit
    g = TINY.geometry
    assert g.banks_per_channel * g.rows * g.row_bytes <= MAX_SIM_ARRAY_BYTES
    with pytest.raises(PimgptError, match="simulation limit"):
        ChannelPim(preset("paper"))
    small_paper = ChannelPim(preset("paper"), array_rows=16)
    assert small_paper.bank_data[0].depth == 16 * preset("paper").geometry.cols_per_row
    for bad in (0, 3, 2 * g.rows, 4.0, True):
        with pytest.raises(PimgptError, match="array_rows"):
            ChannelPim(TINY, array_rows=bad)
    for bad in (3, -1, "1"):
        with pytest.raises(PimgptError, match="mac_pipeline"):
            ChannelPim(SMALL, mac_pipeline=bad)
    with pytest.raises(TypeError):
        ChannelPim("tiny")
    assert read_latency(C.RDMAC, ODD) == 2
    ChannelPim(ODD, mac_pipeline=1)
    with pytest.raises(PimgptError, match="too short"):
        ChannelPim(ODD, mac_pipeline=2)


def test_ports_and_sequencer_connection() -> None:
    """The command input is the sequencer's command output (wiring.connect accepts the pair);
    widths follow the geometry."""
    dut = ChannelPim(SMALL)
    seq = ChannelSequencer(SMALL)
    m = Module()
    m.submodules.seq, m.submodules.pim = seq, dut
    wiring.connect(m, seq.o_cmd, dut.i_cmd)
    sig = dut.signature.members
    assert sig["i_cmd"].signature.members["payload"].shape == cmd_layout(SMALL)
    assert sig["o_rd"].signature.members["payload"].shape == column_layout(SMALL)
    assert sig["o_mac"].signature.members["payload"].shape.length == NB
    assert sig["host"].signature.members["col"].shape == (WORDS - 1).bit_length()
    assert dut.gb_data.depth == GBC and len(dut.bank_data) == NB
