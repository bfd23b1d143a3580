"""Testbench pieces shared by the cocotb benches: clock and reset, a valid/ready stream driver
and monitor with idle and backpressure patterns, and a scoreboard.

The structure is cocotb's usual one: a *driver* turns transactions into pin activity, a
*monitor* turns pin activity back into transactions, a *model* (the golden model imported from
the package) predicts what the monitor must see, and a *scoreboard* compares the two and reports
the first difference with its cycle. Signals follow Amaranth's flattened stream port names:
``<name>__valid``, ``<name>__ready``, ``<name>__payload``.

Inputs are driven on the falling clock edge and outputs sampled after the rising edge
(``ReadOnly``), so every value seen belongs to one cycle without races.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, Callable, Iterable

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge


async def start(dut: Any, reset_cycles: int = 2) -> None:
    """Start a 1 ns clock on ``dut.clk`` and hold ``dut.rst`` for ``reset_cycles`` cycles."""
    Clock(dut.clk, 1, unit="ns").start()
    dut.rst.value = 1
    for _ in range(reset_cycles):
        await FallingEdge(dut.clk)
    dut.rst.value = 0


class CycleCounter:
    """Counts rising edges after reset; ``now`` is the index of the last edge seen."""

    def __init__(self, dut: Any):
        self.now = -1
        cocotb.start_soon(self._run(dut))

    async def _run(self, dut: Any) -> None:
        while True:
            await RisingEdge(dut.clk)
            self.now += 1


class StreamDriver:
    """Drives ``<name>__valid``/``__payload`` from a queue of integers, holding each payload
    until ``__ready`` takes it; inserts idle cycles with probability ``idle``."""

    def __init__(self, dut: Any, name: str, rng: random.Random, idle: float = 0.0):
        self.valid = getattr(dut, f"{name}__valid")
        self.payload = getattr(dut, f"{name}__payload")
        self.ready = getattr(dut, f"{name}__ready")
        self.clk = dut.clk
        self.rng, self.idle = rng, idle
        self.queue: deque[int] = deque()
        self.sent = 0
        self.valid.value = 0
        cocotb.start_soon(self._run())

    def send(self, payloads: Iterable[int]) -> None:
        self.queue.extend(payloads)

    async def _run(self) -> None:
        while True:
            await FallingEdge(self.clk)
            if self.valid.value == 1 and self.ready.value == 1:
                # the rising edge before this falling edge transferred the payload
                self.queue.popleft()
                self.sent += 1
            if self.queue and self.rng.random() >= self.idle:
                self.payload.value = self.queue[0]
                self.valid.value = 1
            else:
                self.valid.value = 0


class StreamMonitor:
    """Collects ``(cycle, payload)`` of every transfer on an output stream and drives its
    ``__ready`` with backpressure probability ``stall``."""

    def __init__(self, dut: Any, name: str, counter: CycleCounter, rng: random.Random,
                 stall: float = 0.0, callback: Callable[[int, int], None] | None = None):
        self.valid = getattr(dut, f"{name}__valid")
        self.payload = getattr(dut, f"{name}__payload")
        self.ready = getattr(dut, f"{name}__ready")
        self.clk, self.counter = dut.clk, counter
        self.rng, self.stall = rng, stall
        self.seen: list[tuple[int, int]] = []
        self.callback = callback
        self.ready.value = 1
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            await FallingEdge(self.clk)
            self.ready.value = 0 if self.rng.random() < self.stall else 1
            await RisingEdge(self.clk)
            await ReadOnly()
            if self.valid.value == 1 and self.ready.value == 1:
                item = (self.counter.now, int(self.payload.value))
                self.seen.append(item)
                if self.callback:
                    self.callback(*item)


class Scoreboard:
    """Compares what a monitor saw with what the model expected, item by item."""

    def __init__(self, name: str, describe: Callable[[Any], str] = repr):
        self.name, self.describe = name, describe
        self.expected: deque[tuple[int, Any]] = deque()
        self.matched = 0

    def expect(self, cycle: int, value: Any) -> None:
        self.expected.append((cycle, value))

    def observe(self, cycle: int, value: Any) -> None:
        if not self.expected:
            raise AssertionError(f"{self.name}: unexpected {self.describe(value)} at cycle "
                                 f"{cycle}")
        want_cycle, want = self.expected.popleft()
        if want != value or (want_cycle is not None and want_cycle != cycle):
            raise AssertionError(
                f"{self.name}: item {self.matched}: expected {self.describe(want)} at cycle "
                f"{want_cycle}, saw {self.describe(value)} at cycle {cycle}")
        self.matched += 1

    def finish(self) -> None:
        if self.expected:
            cycle, want = self.expected[0]
            raise AssertionError(f"{self.name}: {len(self.expected)} expected item(s) never "
                                 f"came, the first {self.describe(want)} (cycle {cycle})")
