"""cocotb bench of the generated ``vector_unit`` block against the functional machine and the
vector issue rule.

Scenarios (one simulation, one reset): a *directed* one (every vector opcode on 0, 1, ``L``,
``L + 1`` and ``2L + 1`` elements, in place and with ``dst < a`` overlapping its source, the
supported overlaps of the unit's docstring), a *random* one (random ops on independent ranges,
``random_ops`` of tests/test_rtl_vector.py) and *chains* (interleaved in-place softmax / GELU /
LayerNorm chains, ``chain_ops`` there).

- Driver, host port: loads the scenario's region of vector memory word by word
  (``host_we``/``host_addr``/``host_wdata``; random garbage where no op reads, so that words an
  op must not touch are checked too) and reads it back after the run (``host_rdata``, one cycle
  after its address).
- Driver, ``i_op`` (a valid/ready stream of ``op_layout()`` payloads packed with Amaranth's
  layout): op ``k`` is presented once no op in flight conflicts with it through memory (as the
  controller's scoreboard does) and after an *idle gap*: the op's own ``gap`` plus, with
  probability ``PIMGPT_IDLE``, 1-12 more cycles with ``valid`` low; once presented it is held
  until ``ready`` (the unit's backpressure: the issue rule).
- Model: :class:`pimgpt.hdl.vector.VectorIssue` (the issue rule, the cycle simulator's too) for
  ``ready``, accept and ``done`` cycles; ``FunctionalMachine`` (via ``golden_sequence`` of
  tests/test_rtl_vector.py) for every result word and ``VARGMAX`` index.
- Monitor / scoreboard: in every cycle an op is presented, ``ready`` must equal the rule's
  verdict; ``busy`` must equal "an op is in flight that does not complete now"; every ``done``
  pulse must come in the cycle the rule predicts, in accept order, with the ``VARGMAX`` index on
  ``result``; each op takes exactly ``op_cycles`` from accept to ``done``; the memory read back
  equals the golden machine's bit for bit.

Environment: ``PIMGPT_CONFIG``, ``PIMGPT_SEED``, ``PIMGPT_OPS`` (random ops),
``PIMGPT_WORDS`` (words of vector memory the scenarios use), ``PIMGPT_IDLE`` (probability of an
extra idle gap before an op).
"""

from __future__ import annotations

import os
import random
from collections import deque

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from helpers.cocotb_bench import Scoreboard, start
from helpers.cocotb_runner import load_tb_config
from test_rtl_vector import (_ALL_OPS, _conflict, _pattern_words, chain_ops, golden_sequence,
                             random_ops)

from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.vector import VectorIssue, op_cycles, op_layout

U32, F32 = np.uint32, np.float32
FIELDS = ("opcode", "dst", "a", "b", "n", "bcast", "imm")


def pack_op(o: dict) -> int:
    """The ``i_op`` payload of op ``o`` as an integer (Amaranth's layout packs it)."""
    return op_layout().const({f: o[f] for f in FIELDS}).as_value().value


def describe(o: dict) -> str:
    return (f"{o['opcode'].name} dst={o['dst']} a={o['a']} b={o['b']} n={o['n']} "
            f"bcast={o['bcast']}")


def directed_ops(lanes: int, base: int) -> list[dict]:
    """Every opcode on several lengths, in place (``dst == a``) and shifted down over its
    source (``dst == a - 3``), back to back; operands inside [base, base + 200)."""
    out, rd = [], 0
    for i, op in enumerate(_ALL_OPS):
        for j, n in enumerate((0, 1, lanes, lanes + 1, 2 * lanes + 1)):
            if n == 0 and op is Op.VMAX:
                continue  # the functional machine writes NaN for an empty VMAX; the unit nothing
            a = base + 20 + 10 * ((i + j) % 12)
            for dst in (a, a - 3):
                if op is Op.VARGMAX:
                    rd = rd % 15 + 1
                out.append({"opcode": op, "n": n, "dst": dst, "a": a, "b": base + (i % 7),
                            "bcast": int(j % 2 == 1), "imm": 0x3FC00000 + i,
                            "rd": rd if op is Op.VARGMAX else 0, "gap": 0})
    return out


class VectorBench:
    def __init__(self, dut, config, rng: random.Random, idle: float):
        self.dut, self.config, self.rng, self.idle = dut, config, rng, idle
        self.lanes = config.asic.vector_lanes
        self.accepted = self.dones = 0

    async def host_write(self, addr: int, words: np.ndarray) -> None:
        dut = self.dut
        for i, w in enumerate(np.asarray(words, U32)):
            await FallingEdge(dut.clk)
            dut.host_addr.value = addr + i
            dut.host_wdata.value = int(w)
            dut.host_we.value = 1
        await FallingEdge(dut.clk)
        dut.host_we.value = 0

    async def host_read(self, addr: int, n: int) -> np.ndarray:
        dut, out = self.dut, []
        dut.host_we.value = 0
        for i in range(n + 1):
            await FallingEdge(dut.clk)
            if i < n:
                dut.host_addr.value = addr + i
            await ReadOnly()
            if i:
                out.append(int(dut.host_rdata.value))  # the word addressed a cycle before
        return np.array(out, U32)

    async def run_ops(self, name: str, ops: list[dict]) -> dict:
        """Issue ``ops`` (see the module docstring), checking ready / busy / done / result in
        every cycle; returns the accept and done cycles."""
        dut, rule = self.dut, VectorIssue(self.config.asic)
        board = Scoreboard(f"{name} done/result", repr)
        flight: deque = deque()  # (index, predicted done)
        accepts, dones = [], []
        k, cyc, cur = 0, 0, None
        present_from = self._gap(ops[0]) if ops else 0
        await FallingEdge(dut.clk)
        while k < len(ops) or flight or cur is not None:
            # driver (the falling edge in the middle of cycle cyc): ops completing in this
            # cycle no longer block a conflicting op
            live = [i for i, d in flight if d > cyc]
            if (cur is None and k < len(ops) and cyc >= present_from
                    and not any(_conflict(ops[k], ops[i]) for i in live)):
                cur = k
                dut.i_op__payload.value = pack_op(ops[k])
            dut.i_op__valid.value = int(cur is not None)
            await ReadOnly()
            # monitor
            if int(dut.done.value):
                if not flight:
                    raise AssertionError(f"{name}: done in cycle {cyc} with nothing in flight")
                i, _want = flight.popleft()
                result = int(dut.result.value) if ops[i]["opcode"] is Op.VARGMAX else None
                board.observe(cyc, (i, result))
                dones.append(cyc)
            if bool(int(dut.busy.value)) != bool(flight):
                raise AssertionError(f"{name}: busy {int(dut.busy.value)} in cycle {cyc} with "
                                     f"{len(flight)} op(s) in flight")
            if cur is not None:
                o = ops[cur]
                bounds = rule.bounds(o["opcode"], o["n"], cyc)
                want = max(bounds.values()) == cyc
                ready = bool(int(dut.i_op__ready.value))
                if ready != want:
                    raise AssertionError(f"{name}: op {cur} ({describe(o)}) in cycle {cyc}: "
                                         f"ready {int(ready)}, the issue rule {bounds}")
                if ready:
                    done = rule.accept(o["opcode"], o["n"], cyc)
                    assert done - cyc == op_cycles(self.config.asic, o["opcode"], o["n"])
                    board.expect(done, (cur, self.golden_result(cur)))
                    flight.append((cur, done))
                    accepts.append(cyc)
                    cur, k = None, k + 1
                    if k < len(ops):
                        present_from = cyc + 1 + self._gap(ops[k])
            await RisingEdge(dut.clk)
            await FallingEdge(dut.clk)
            cyc += 1
            if cyc > 200_000:
                raise AssertionError(f"{name}: no end after {cyc} cycles")
        dut.i_op__valid.value = 0
        board.finish()
        self.accepted += len(accepts)
        self.dones += len(dones)
        early = sum(a < d for a, d in zip(accepts[1:], dones))
        dut._log.info("%s: %d ops in %d cycles, %d accepted before the previous op's done",
                      name, len(ops), cyc, early)
        return {"accept": accepts, "done": dones, "cycles": cyc}

    def _gap(self, o: dict) -> int:
        extra = self.rng.randint(1, 12) if self.rng.random() < self.idle else 0
        return int(o.get("gap", 0)) + extra

    def golden_result(self, i: int):
        o = self._ops[i]
        return int(self._fm.regs[o["rd"]]) if o["opcode"] is Op.VARGMAX else None

    async def scenario(self, name: str, ops: list[dict], words: int) -> None:
        """Run ``ops`` on vector memory ``[0, words)`` (already loaded: ``self.mem``) and
        compare the memory read back with the functional machine's."""
        self._ops = ops
        self._fm = golden_sequence(self.config, ops, self.mem)
        await self.run_ops(name, ops)
        got = await self.host_read(0, words)
        want = self._fm.vmem[:words].view(U32)
        bad = np.flatnonzero(got != want)
        if bad.size:
            first = ", ".join(f"word {w}: 0x{got[w]:08X}, golden 0x{want[w]:08X}"
                              for w in bad[:8])
            raise AssertionError(f"{name}: {bad.size} word(s) differ from the functional "
                                 f"machine: {first}")
        self.mem = got.copy()


@cocotb.test()
async def ops_bit_exact_and_on_the_issue_rule(dut) -> None:
    config = load_tb_config()
    seed = int(os.environ["PIMGPT_SEED"])
    count = int(os.environ.get("PIMGPT_OPS", "60"))
    words = int(os.environ.get("PIMGPT_WORDS", "1024"))
    idle = float(os.environ.get("PIMGPT_IDLE", "0.3"))
    nrng = np.random.default_rng(seed)
    lanes = config.asic.vector_lanes
    dut.host_we.value = 0
    dut.host_addr.value = 0
    dut.host_wdata.value = 0
    dut.i_op__valid.value = 0
    dut.i_op__payload.value = 0
    await start(dut)
    bench = VectorBench(dut, config, random.Random(seed), idle)

    # garbage everywhere the scenarios may touch, ordinary numbers and every class
    bench.mem = _pattern_words(nrng, words)
    await bench.host_write(0, bench.mem)

    await bench.scenario("directed", directed_ops(lanes, words // 2), words)

    region = _pattern_words(nrng, words // 4)  # the random ops' operands
    await bench.host_write(0, region)
    bench.mem[:words // 4] = region
    await bench.scenario("random", random_ops(nrng, count, words, _ALL_OPS, 40), words)

    ops, loads = chain_ops(nrng, 3, 1, words // 4)
    for addr, x in loads:
        await bench.host_write(addr, x.view(U32))
        bench.mem[addr:addr + x.size] = x.view(U32)
    await bench.scenario("chains", ops, words)
    dut._log.info("vector_unit: %d ops accepted and done on the issue rule's cycles, memory "
                  "bit-exact (seed %d)", bench.accepted, seed)
