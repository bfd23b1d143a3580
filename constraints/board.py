"""The FPGA prototype's clock and pin constraints: Radiona ULX3S with an LFE5U-85F (the device
``pimgpt synth --target ecp5`` reports on), from the board description in amaranth-boards.

The prototype shell (:class:`PrototypeShell`) is what the board sees of a prototype: the 25 MHz
oscillator as the clock, the PWR button as reset, the eight LEDs as status (LED 7 a heartbeat
that shows the clock runs) and the FTDI UART as the host link. Amaranth's ECP5 platform turns
those resource requests into the LPF (pin sites, I/O standards, clock frequency).
"""

from __future__ import annotations

from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Module, Signal
from amaranth.lib import io

#: The board and where its description comes from.
BOARD = "ULX3S-85F"
LPF_NAME = "ulx3s_85f.lpf"
#: Heartbeat LED period in clock cycles (~1.3 Hz at 25 MHz).
HEARTBEAT_BITS = 24


class PrototypeShell(Elaboratable):
    """Requests the prototype's board resources and drives what it owns (heartbeat LED,
    status LEDs from ``status``, UART lines looped to ``host_rx``/``host_tx``)."""

    def __init__(self) -> None:
        self.status = Signal(7)  # LEDs 0..6, for the core behind the shell
        self.host_rx = Signal()
        self.host_tx = Signal(init=1)  # UART idle level

    def elaborate(self, platform) -> Module:
        m = Module()

        def buffer(name: str, direction: str, port) -> io.Buffer:
            m.submodules[name] = b = io.Buffer(direction, port)
            return b

        # the board clock drives the sync domain (requested here, with its 25 MHz constraint,
        # rather than by the platform's default-clock fallback)
        clk = buffer("clk25", "i", platform.request("clk25", 0, dir="-"))
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(clk.i)
        leds = [buffer(f"led{i}", "o", platform.request("led", i, dir="-")) for i in range(8)]
        uart = platform.request("uart", 0, dir={"rx": "-", "tx": "-", "rts": "-", "dtr": "-"})
        rx, tx = buffer("uart_rx", "i", uart.rx), buffer("uart_tx", "o", uart.tx)
        reset = buffer("reset", "i", platform.request("button_pwr", 0, dir="-"))
        beat = Signal(HEARTBEAT_BITS)
        m.d.sync += beat.eq(beat + 1)
        m.d.comb += [leds[i].o.eq(self.status[i]) for i in range(7)]
        m.d.comb += [leds[7].o.eq(beat[-1] & ~reset.i), self.host_rx.eq(rx.i),
                     tx.o.eq(self.host_tx)]
        return m


def prototype_lpf() -> str:
    """The LPF of the prototype shell on the ULX3S-85F (deterministic)."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    plan = ULX3S_85F_Platform(toolchain="Trellis").prepare(PrototypeShell(), name="prototype")
    text = plan.files["prototype.lpf"]
    return text if isinstance(text, str) else text.decode()
