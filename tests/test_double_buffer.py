# amaranth: UnusedElaboratable=no
"""Global-buffer double-buffering (``geometry.gb_double_buffer``).

Checked: the option is validated and off by default (every preset keeps one in-order command
stream per channel); the compiler puts consecutive input chunks into alternate buffer halves and
the golden model follows the half-buffer chunking, so compiled programs stay bit-exact; on the
cycle simulator a WR_GB's WRGBs fill command-bus cycles among the MACs still reading the other
half, no earlier compute command moves, every rule holds (check-trace: 0 violations, also through
the CLI), the fast path equals the event engine on compiled models (the random-program
comparison is in tests/test_cycle.py); the RTL refuses such a machine with one error naming the
option.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pimgpt.cli import main
from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import PAPER, TINY, MachineConfig
from pimgpt.mapping.builtin import builtin_model
from pimgpt.mapping.compiler import compile_model
from pimgpt.sim.cycle import CycleSimulator
from pimgpt.sim.golden import GoldenGPT
from pimgpt.sim.machine import FunctionalMachine
from pimgpt.sim.trace import check_trace


def _db(config: MachineConfig, on: bool = True) -> MachineConfig:
    return config.replace(geometry=dataclasses.replace(config.geometry, gb_double_buffer=on))


def test_option_is_validated_and_off_by_default():
    for c in (PAPER, TINY):
        assert c.geometry.gb_double_buffer is False
        assert c.geometry.chunk_elems == c.geometry.gb_elems
    on = _db(PAPER)
    assert on.geometry.chunk_cols == PAPER.geometry.gb_cols // 2 and on.hash != PAPER.hash
    assert MachineConfig.from_dict(on.to_dict()) == on
    with pytest.raises(PimgptError, match="geometry.gb_double_buffer must be true or false, "
                                          "not 1"):
        dataclasses.replace(PAPER.geometry, gb_double_buffer=1)
    with pytest.raises(PimgptError, match=r"gb_bytes \(32\) must be at least "
                                          r"geometry.column_bytes \(32\) x 2"):
        dataclasses.replace(PAPER.geometry, gb_bytes=32, gb_double_buffer=True)


def test_compiler_alternates_halves_and_stays_bit_exact():
    config = _db(TINY)
    weights = builtin_model("tiny")
    binary, _ = compile_model(config, weights, 16)
    half = config.geometry.chunk_cols
    wr = [i for i in binary.code if i.op is Op.WR_GB and i.ch_mask == (1 << 2) - 1]
    assert {i.gb for i in wr} == {0, half} and all(i.n <= half for i in wr)
    assert all(a.gb != b.gb for a, b in zip(wr, wr[1:]))  # consecutive loads alternate
    machine = FunctionalMachine(config)
    machine.load(binary)
    gen = machine.generate([5, 6, 7], 5, keep_logits=True)
    tokens, logits = GoldenGPT(config, weights).generate([5, 6, 7], 5, keep_logits=True)
    assert gen.generated_ids == tokens
    for a, b in zip(gen.logits, logits):
        assert np.array_equal(np.asarray(a, np.float32).view(np.uint32),
                              np.asarray(b[:a.size], np.float32).view(np.uint32))


def test_data_in_fills_free_bus_cycles_without_moving_compute():
    """Chunk 0's MACs read half 0 over two rows; chunk 1's WR_GB into half 1 issues its WRGBs
    among them (before the last MAC), without moving any of them (compute first), and chunk
    1's MACs wait for their data. The whole takes fewer cycles than with one stream."""
    c = _db(TINY)
    half = c.geometry.chunk_cols
    cpr = c.geometry.cols_per_row
    first = [isa.make(Op.WR_GB, ch_mask=1, gb=0, n=half, vaddr=0),
             isa.make(Op.MAC_ABK, ch_mask=1, addr=0, n=half, gb=0),
             isa.make(Op.MAC_ABK, ch_mask=1, addr=cpr * c.geometry.mac_lanes, n=half, gb=0)]
    second = [isa.make(Op.WR_GB, ch_mask=1, gb=half, n=half, vaddr=256),
              isa.make(Op.MAC_ABK, ch_mask=1, addr=0, n=half, gb=half)]
    end = [isa.make(Op.END)]
    got = {}
    for on in (False, True):
        for name, code in (("first", first + end), ("both", first + second + end)):
            runs = []
            for fast in (True, False):
                sim = CycleSimulator(_db(TINY, on), fast=fast, trace=True)
                sim.load_code(code)
                steps = sim.run().cycles
                assert check_trace(sim.trace, _db(TINY, on)) == []
                runs.append(([(e.cycle, e.cmd.name) for e in sim.trace], steps))
            assert runs[0] == runs[1]  # fast path == event engine
            got[(on, name)] = runs[0]
    both = got[(True, "both")][0]
    alone = got[(True, "first")][0]
    wrgb = [t for t, n in both if n == "WRGB"][half:]  # the second load's
    macs = [t for t, n in both if n == "MAC16"]
    assert wrgb[0] < macs[2 * half - 1]  # the second load starts before chunk 0's last MAC
    assert [e for e in both if e[1] != "WRGB"][:len(alone) - half] == \
        [e for e in alone if e[1] != "WRGB"]  # no compute command of chunk 0 moved
    assert macs[2 * half] > wrgb[-1]  # chunk 1's MACs wait for their data
    assert got[(True, "both")][1] < got[(False, "both")][1]


def test_a_load_waits_for_the_macs_reading_its_half():
    c = _db(TINY)
    code = [isa.make(Op.WR_GB, ch_mask=1, gb=0, n=2, vaddr=0),
            isa.make(Op.MAC_ABK, ch_mask=1, addr=0, n=2, gb=0),
            isa.make(Op.WR_GB, ch_mask=1, gb=1, n=2, vaddr=64),  # overlaps column 1
            isa.make(Op.END)]
    sim = CycleSimulator(c, trace=True)
    sim.load_code(code)
    sim.run()
    got = [(e.cycle, e.cmd.name) for e in sim.trace]
    last_mac = max(t for t, n in got if n == "MAC16")
    assert [t for t, n in got if n == "WRGB"][2] > last_mac


@pytest.mark.parametrize("model, machine, positions", [("tiny", TINY, range(0, 24, 3)),
                                                       ("gpt2-small", PAPER, (5,))])
def test_compiled_model_fast_equals_event_and_trace_is_legal(model, machine, positions):
    config = _db(machine)
    binary, _ = compile_model(config, builtin_model(model), 24, with_image=False)
    runs = {}
    for fast in (True, False):
        sim = CycleSimulator(config, fast=fast, trace=True)
        sim.load(binary)
        runs[fast] = [sim.run({isa.REG_POS: p, isa.REG_TOKEN_IN: 1}).cycles for p in positions]
        sim.finish()
        assert check_trace(sim.trace, config) == []
        runs[(fast, "trace")] = len(sim.trace)
    assert runs[True] == runs[False] and runs[(True, "trace")] == runs[(False, "trace")]


def test_double_buffering_speeds_up_gpt2_small():
    cycles = {}
    for on in (False, True):
        config = _db(PAPER, on)
        binary, _ = compile_model(config, builtin_model("gpt2-small"), 64, with_image=False)
        sim = CycleSimulator(config)
        sim.load(binary)
        cycles[on] = sim.run({isa.REG_POS: 63, isa.REG_TOKEN_IN: 1}).cycles
    assert cycles[True] < cycles[False]


def test_cli_trace_with_double_buffering_checks_clean(tmp_path, capsys):
    cfg = tmp_path / "db.toml"
    cfg.write_text('base = "tiny"\n[geometry]\ngb_double_buffer = true\n')
    trace = tmp_path / "t.csv"
    assert main(["simulate", "--model", "tiny", "--config", str(cfg), "--timing-only",
                 "--prompt-ids", "1,2,3", "--tokens", "3", "--trace", str(trace)]) == 0
    capsys.readouterr()
    assert main(["check-trace", str(trace), "--config", str(cfg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["violation_count"] == 0 and out["commands"] > 0


def test_rtl_refuses_the_option():
    from pimgpt.gen.verilog import generate
    from pimgpt.hdl.sequencer import ChannelSequencer
    message = (r"machine 'tiny' has geometry.gb_double_buffer = true, which the RTL does not "
               r"implement: .*set geometry.gb_double_buffer = false to generate RTL$")
    config = _db(TINY)
    with pytest.raises(PimgptError, match=message):
        ChannelSequencer(config)
    with pytest.raises(PimgptError, match=message):
        generate(config, "bank_mac")
    ChannelSequencer(TINY)  # the default machine is fine
