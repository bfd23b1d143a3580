"""One device API over every model of the machine: ``load -> run -> Result``.

A *device* takes a compiled program (:meth:`load`), lets the host set registers
(:meth:`set_reg`) and read vector memory (:meth:`read_vmem`), and runs the program to ``END``
(:meth:`run`), returning a :class:`~pimgpt.sim.machine.Result` with the host-visible
``outputs`` (the generated token, the registers), the ``cycles`` the run took (``None`` on the
untimed functional model) and ``counters``. Backends:

- ``functional``: :class:`~pimgpt.sim.machine.FunctionalMachine`, values only;
- ``cycle``: :class:`CycleMachine`, the functional machine's values with the cycle simulator's
  timing of the same runs;
- ``rtl``: the generated Verilog of the whole machine under cocotb (the tests' backend).

:func:`generate` is the host's decode loop on any device, so one test body checks every
backend (tests/test_system.py).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from pimgpt.hdl import isa
from pimgpt.hdl.params import MachineConfig
from pimgpt.mapping.pimbin import PimBinary
from pimgpt.sim.machine import FunctionalMachine, Generation, Result, check_generation


class Device(Protocol):
    """What the host needs of a machine model."""

    cfg: MachineConfig

    def load(self, binary: PimBinary) -> None: ...

    def reset(self) -> None: ...

    def set_reg(self, index: int, value: int) -> None: ...

    def run(self) -> Result: ...

    def read_vmem(self, addr: int, n: int) -> np.ndarray: ...


class CycleMachine:
    """The functional machine's values with the cycle simulator's timing of each run.

    Both models execute the same program from the same registers; ``Result.cycles`` is the
    run's length in DRAM command-clock cycles and ``counters`` the timing counters (command
    counts, row hits, ...). The simulator's state carries over between runs as the machine's
    does (open rows, refresh phase), so a generation's step times are those of one continuous
    run of the hardware.
    """

    def __init__(self, config: MachineConfig, *, fast: bool = True):
        from pimgpt.sim.cycle import CycleSimulator

        self.cfg = config
        self.values = FunctionalMachine(config)
        self.timing = CycleSimulator(config, fast=fast)
        self.binary: PimBinary | None = None

    def load(self, binary: PimBinary) -> None:
        self.values.load(binary)
        self.timing.load(binary)
        self.binary = binary

    def reset(self) -> None:
        """Power-on state of both models (the simulator's clock back at cycle 0)."""
        from pimgpt.sim.cycle import CycleSimulator

        self.values.reset()
        self.timing = CycleSimulator(self.cfg, fast=self.timing.fast)
        if self.binary is not None:
            self.timing.load(self.binary)

    def set_reg(self, index: int, value: int) -> None:
        self.values.set_reg(index, value)
        self.timing.regs[index] = self.values.regs[index]

    def run(self) -> Result:
        res = self.values.run()
        step = self.timing.run()
        return Result(outputs=res.outputs, cycles=step.cycles, counters=dict(step.counters))

    def read_vmem(self, addr: int, n: int) -> np.ndarray:
        return self.values.read_vmem(addr, n)


#: Backends this module provides (the RTL one lives with the cocotb tests).
BACKENDS: dict[str, Callable[[MachineConfig], Device]] = {
    "functional": FunctionalMachine,
    "cycle": CycleMachine,
}


def generate(device: Device, meta: dict, prompt_ids: Sequence[int], n_tokens: int,
             keep_logits: bool = False, on_step: Callable[[int], None] | None = None
             ) -> Generation:
    """Greedy generation on ``device`` (loaded with the program whose metadata is ``meta``):
    one run per prompt token, then one per generated token. ``Generation.cycles`` holds each
    run's cycles on timed devices."""
    prompt, total = check_generation(meta, prompt_ids, n_tokens)
    vocab = int(meta["model"]["vocab"])
    logits_at = int(meta["vmem"]["logits"])
    device.reset()
    out = Generation(prompt, [])
    token = prompt[0]
    for pos in range(total):
        if pos < len(prompt):
            token = prompt[pos]
        device.set_reg(isa.REG_POS, pos)
        device.set_reg(isa.REG_TOKEN_IN, token)
        res = device.run()
        if res.cycles is not None:
            out.cycles.append(res.cycles)
        if keep_logits:
            out.logits.append(device.read_vmem(logits_at, vocab))
        token = int(res.outputs["token"])
        if pos >= len(prompt) - 1 and len(out.generated_ids) < n_tokens:
            out.generated_ids.append(token)
        if on_step:
            on_step(pos)
    out.counters = dict(res.counters) if total else {}
    return out
