"""cocotb side of the RTL device (:class:`helpers.rtl_device.RtlDevice`): a request server.

The simulation runs the generated ``top`` inside the harness of :mod:`helpers.rtl_device`
(which adds a cycle counter, the DRAM command trace and a combinational peek into vector
memory). This test connects to the pytest process over the Unix socket named by
``PIMGPT_SOCKET`` and serves its requests one at a time; while it waits for one, simulated time
stands still (the simulator is blocked inside this coroutine).

Timing conventions
------------------
The clock (1 ns) runs from the start. Every request is handled in the low phase of a cycle:
inputs set there are sampled by the rising edge that ends the cycle (``cycle`` is the harness's
counter, 0 in the first cycle after reset). Reads (scalar registers, counters, vector memory)
are combinational and take 1 ps each inside the low phase, so a host read costs no DRAM cycle
unless a low phase fills up (``_PEEKS_PER_PHASE``). Loads happen with ``rst`` held high: no
sequencer issues commands (an idle one would refresh and collide with the DRAM backdoor), the
vector unit's clock enable is high every cycle, and memories keep what is written.

A run: the queued register writes, one per cycle, ``start`` with the last one (alone when
there are none); the first instruction is dispatched in the next cycle ``t0``. The host turnaround
is therefore fixed: with ``end`` the cycle the previous run finished in (``done`` is seen in
``end + 1``; ``end = -1`` after reset) and ``n`` register writes, ``t0 = end + 1 + max(n, 1)``,
as long as the reads between runs fit in one low phase (they do for a token, the counters and
the logits).
"""

from __future__ import annotations

import os
import traceback
from multiprocessing.connection import Client

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer

from pimgpt.hdl import isa

#: combinational reads per low phase (1 ps each; the phase is 500 ps)
_PEEKS_PER_PHASE = 400
_MASK32 = (1 << 32) - 1


class SystemBench:
    """Drives the harness's host ports (see the module docstring for the timing)."""

    def __init__(self, dut, lanes: int):
        self.dut, self.lanes = dut, lanes
        self.used = 0  # peeks done in the current low phase
        self.end = -1  # cycle the last run finished in (-1 after reset)
        self.runs: list[dict] = []
        for name in ("start", "imem_we", "reg_we", "vmem_we", "dram_en", "dram_we",
                     "imem_addr", "imem_wdata", "reg_addr", "reg_wdata", "vmem_addr",
                     "vmem_wdata", "dram_bank", "dram_col", "dram_wdata", "ctr_addr",
                     "peek_row"):
            getattr(dut, name).value = 0
        dut.rst.value = 1
        self.in_reset = True
        Clock(dut.clk, 1, unit="ns").start(start_high=False)

    @property
    def cycle(self) -> int:
        return int(self.dut.cycle.value)

    async def next_cycle(self) -> None:
        await FallingEdge(self.dut.clk)
        self.used = 0

    async def _peek(self) -> None:
        if self.used >= _PEEKS_PER_PHASE:
            await self.next_cycle()
        await Timer(1, unit="ps")
        self.used += 1

    # --- loads (under reset) ---------------------------------------------------------------------

    async def _hold_reset(self) -> None:
        if not self.in_reset:
            self.dut.rst.value = 1
            self.in_reset = True
            await self.next_cycle()

    async def do_load_imem(self, words: list[int]) -> None:
        await self._hold_reset()
        d = self.dut
        for addr, word in enumerate(words):
            d.imem_addr.value, d.imem_wdata.value, d.imem_we.value = addr, word, 1
            await self.next_cycle()
        d.imem_we.value = 0

    async def do_load_dram(self, bank: int, first_col: int, columns: list[int]) -> None:
        await self._hold_reset()
        d = self.dut
        d.dram_bank.value, d.dram_en.value, d.dram_we.value = bank, 1, 1
        for i, col in enumerate(columns):
            d.dram_col.value, d.dram_wdata.value = first_col + i, col
            await self.next_cycle()
        d.dram_en.value = d.dram_we.value = 0

    async def do_load_vmem(self, addr: int, words: list[int]) -> None:
        await self._hold_reset()
        d = self.dut
        d.vmem_we.value = 1
        for i, w in enumerate(words):
            d.vmem_addr.value, d.vmem_wdata.value = addr + i, w
            await self.next_cycle()
        d.vmem_we.value = 0

    async def do_reset(self) -> None:
        """Reset pulse; returns in the low phase of cycle 0 (the first whose edge does not
        reset)."""
        self.dut.rst.value = 1
        await self.next_cycle()
        self.dut.rst.value = 0
        self.in_reset = False
        assert self.cycle == 0, self.cycle
        self.end = -1

    # --- runs ------------------------------------------------------------------------------------

    async def do_run(self, writes: list[tuple[int, int]], counters: dict[str, int],
                     max_cycles: int) -> dict:
        d = self.dut
        assert not self.in_reset, "run before reset"
        n = max(len(writes), 1)
        for i in range(n):
            if writes:
                reg, value = writes[i]
                d.reg_we.value, d.reg_addr.value, d.reg_wdata.value = 1, reg, value & _MASK32
            if i == n - 1:
                d.start.value = 1
                t0 = self.cycle + 1
            await self.next_cycle()
        d.reg_we.value = d.start.value = 0
        # done (or error) rises at the edge that ends the finishing cycle
        got = await First(RisingEdge(d.done), RisingEdge(d.error), Timer(max_cycles, unit="ns"))
        await self.next_cycle()
        end = self.cycle - 1
        if not int(d.done.value):
            why = "raised error" if int(d.error.value) else f"did not finish in {max_cycles} cycles"
            raise RuntimeError(f"run starting at cycle {t0} {why} (cycle {end}; {got!r})")
        if int(d.error.value):
            raise RuntimeError(f"run starting at cycle {t0} ended with error set")
        self.end = end
        ctr = {}
        for name, addr in counters.items():
            d.ctr_addr.value = addr
            await self._peek()
            ctr[name] = int(d.ctr_data.value)
        regs = []
        for r in range(isa.NUM_SREGS):
            d.reg_addr.value = r
            await self._peek()
            v = int(d.reg_rdata.value)
            regs.append(v - (1 << 32) if v >> 31 else v)
        run = {"t0": t0, "end": end, "counters": ctr, "regs": regs}
        self.runs.append(run)
        return run

    async def do_read_vmem(self, addr: int, n: int) -> np.ndarray:
        L = self.lanes
        out = np.zeros(n, np.uint32)
        if n <= 0:
            return out.view(np.float32)
        first, last = addr // L, (addr + n - 1) // L
        d = self.dut
        for row in range(first, last + 1):
            d.peek_row.value = row
            await self._peek()
            word = int(d.peek_data.value)
            for k in range(L):
                a = row * L + k
                if addr <= a < addr + n:
                    out[a - addr] = (word >> (32 * k)) & _MASK32
        return out.view(np.float32)

    async def do_cycle(self) -> int:
        return self.cycle


@cocotb.test()
async def serve(dut) -> None:
    """Serve the pytest process's requests until it says ``quit`` or hangs up."""
    conn = Client(os.environ["PIMGPT_SOCKET"], family="AF_UNIX")
    bench = SystemBench(dut, int(os.environ["PIMGPT_VECTOR_LANES"]))
    await bench.next_cycle()
    try:
        while True:
            try:
                cmd, args = conn.recv()
            except EOFError:
                break
            if cmd == "quit":
                conn.send(("ok", None))
                break
            try:
                result = await getattr(bench, f"do_{cmd}")(*args)
            except Exception:  # reported to the pytest side, which raises it
                conn.send(("error", traceback.format_exc()))
            else:
                conn.send(("ok", result))
    finally:
        conn.close()
