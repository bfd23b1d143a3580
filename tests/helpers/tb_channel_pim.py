"""cocotb bench of the generated ``channel_pim`` block against the channel model built from the
functional machine's semantics and ``pimgpt.sim.numerics`` (``ChannelModel`` of
tests/test_rtl_channel.py: ``mac_accumulate``, ``readout``, the memory semantics).

- Driver, host port: preloads the rows the stream uses (random BF16 patterns, some specials)
  column by column through the backdoor port (``host__en``/``we``/``bank``/``col``/``wdata``),
  and reads them back at the end (``host__rdata`` with ``host__rvalid`` the next cycle).
- Driver, ``i_cmd`` (a command strobe, ``cmd_layout`` payload, with ``i_data``): a seeded random
  command stream, legal for the row state it builds (ACT, ACT16, PRE, PREA, REF, RD, WR, WR16,
  MAC, MAC16, WRGB, RDMAC on three rows), with *idle patterns*: between commands ``valid`` stays
  low for a gap drawn from ``PIMGPT_GAPS`` (back to back, short gaps, long idle stretches).
  ``PIMGPT_BAD`` > 0 mixes in commands drawn without regard to the state (protocol errors).
- Model: ``ChannelModel`` predicts every read-out (``o_rd`` after ``RD``, ``o_mac`` after
  ``RDMAC``), its cycle (the command's cycle plus ``read_latency``, the cycle simulator's),
  the error count after every command and the final arrays.
- Monitor / scoreboard: every ``o_rd`` / ``o_mac`` strobe against the model, value bit for bit
  and cycle for cycle, and no strobe the model does not predict; ``error_count`` after every
  command; the preloaded rows read back equal the model's memory.

The block has no output backpressure (``o_rd`` / ``o_mac`` are strobes without ``ready``, as the
controller takes them), so idle gaps are the only stream pattern on its side.

Environment: ``PIMGPT_CONFIG``, ``PIMGPT_SEED``, ``PIMGPT_CMDS`` (commands per stream),
``PIMGPT_GAPS`` (comma-separated gap choices), ``PIMGPT_BAD`` (fraction of unconstrained
commands).
"""

from __future__ import annotations

import os
import random

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly
from helpers.cocotb_bench import Scoreboard, start
from helpers.cocotb_runner import load_tb_config
from test_rtl_channel import (ChannelModel, _pack_lanes, _unpack_lanes, cmd_bits, data_bits,
                              random_bf16)

from pimgpt.hdl.channel import GEN_ARRAY_ROWS
from pimgpt.hdl.timing import ALL_BANK_CMDS, DramCmd

C = DramCmd
U16 = np.uint16


def random_stream(rng: random.Random, nrng: np.random.Generator, config, n: int,
                  gaps: list[int], rows: list[int], array_rows: int, p_bad: float = 0.0):
    """``n`` commands ``(cycle, fields)``, legal for the row state they build on ``rows``,
    ``valid`` low for a gap from ``gaps`` before each; a fraction ``p_bad`` drawn without
    regard to the state."""
    g = config.geometry
    nb, lanes, cpr, gbc = g.banks_per_channel, g.mac_lanes, g.cols_per_row, g.gb_cols
    open_: list[int | None] = [None] * nb
    t, out = 0, []
    for _ in range(n):
        t += rng.choice(gaps)
        opened = [b for b in range(nb) if open_[b] is not None]
        closed = [b for b in range(nb) if open_[b] is None]
        same = len(opened) == nb and len(set(open_)) == 1
        kinds = [C.WRGB, C.RDMAC]
        if closed:
            kinds += [C.ACT] * 2
        if not opened:
            kinds += [C.ACT16] * 4 + [C.REF]
        if opened:
            kinds += [C.PRE, C.PREA, C.RD, C.RD, C.WR] + [C.MAC] * 3
        if same:
            kinds += [C.MAC16] * 10 + [C.WR16] * 2 + [C.RDMAC] * 2
        kind = rng.choice(kinds)
        bank = rng.choice(opened if kind in (C.RD, C.WR, C.MAC, C.PRE) else
                          closed if kind is C.ACT else range(nb))
        row = rng.choice(rows)
        if kind in (C.RD, C.WR, C.MAC):
            row = open_[bank]
        elif kind in (C.MAC16, C.WR16):
            row = open_[0]
        col = rng.randrange(cpr)
        all_banks = kind in ALL_BANK_CMDS
        if rng.random() < p_bad:
            kind = rng.choice(list(C) + [12, 15])
            bank, row, col = rng.randrange(nb), rng.randrange(array_rows), rng.randrange(cpr)
            all_banks = rng.random() < 0.5 if rng.random() < 0.2 else (
                isinstance(kind, C) and kind in ALL_BANK_CMDS)
        mask = rng.choice([(1 << lanes) - 1, rng.randrange(1 << lanes), 1 << rng.randrange(lanes)])
        fields = dict(cmd=kind, bank=bank, row=row, col=col, all_banks=all_banks,
                      column=random_bf16(nrng, lanes), banks=random_bf16(nrng, nb), mask=mask,
                      gb=rng.randrange(gbc))
        # follow the state as the block does (an illegal command changes nothing)
        if isinstance(kind, C) and all_banks == (kind in ALL_BANK_CMDS):
            if kind is C.ACT and open_[bank] is None:
                open_[bank] = row
            elif kind is C.ACT16 and not opened:
                open_ = [row] * nb
            elif kind is C.PRE:
                open_[bank] = None
            elif kind is C.PREA:
                open_ = [None] * nb
        out.append((t, fields))
        t += 1
    return out


@cocotb.test()
async def random_commands_match_the_model(dut) -> None:
    config = load_tb_config()
    g = config.geometry
    nb, lanes, cpr = g.banks_per_channel, g.mac_lanes, g.cols_per_row
    array_rows = min(g.rows, GEN_ARRAY_ROWS)
    seed = int(os.environ["PIMGPT_SEED"])
    n = int(os.environ.get("PIMGPT_CMDS", "400"))
    gaps = [int(x) for x in os.environ.get("PIMGPT_GAPS", "0,0,0,0,1,2,3,9").split(",")]
    p_bad = float(os.environ.get("PIMGPT_BAD", "0"))
    rng, nrng = random.Random(seed), np.random.default_rng(seed)

    rows = sorted(rng.sample(range(array_rows), 3))
    image = np.zeros((nb, array_rows * cpr, lanes), U16)
    for r in rows:
        image[:, r * cpr:(r + 1) * cpr] = random_bf16(nrng, nb * cpr * lanes, 0.03).reshape(
            nb, cpr, lanes)
    stream = random_stream(rng, nrng, config, n, gaps, rows, array_rows, p_bad)

    # model: every read-out and the error count after every command
    model = ChannelModel(config, image, array_rows=array_rows)
    rd_board = Scoreboard(f"o_rd (seed {seed})", repr)
    mac_board = Scoreboard(f"o_mac (seed {seed})", repr)
    errors_after: dict[int, int] = {}
    for t, c in stream:
        got = model.step(t, **c)
        if got is not None:
            (rd_board if got[0] == "rd" else mac_board).expect(got[1], tuple(int(v) for v in
                                                                           got[2]))
        errors_after[t + 1] = model.errors
    end = stream[-1][0] + max(model.rd_latency, model.rdmac_latency) + 2

    for name in ("i_cmd__valid", "i_cmd__payload", "i_data", "host__en", "host__we",
                 "host__bank", "host__col", "host__wdata"):
        getattr(dut, name).value = 0
    await start(dut)

    # driver: preload the rows through the host port
    for r in rows:
        for b in range(nb):
            for c in range(cpr):
                await FallingEdge(dut.clk)
                dut.host__en.value = 1
                dut.host__we.value = 1
                dut.host__bank.value = b
                dut.host__col.value = r * cpr + c
                dut.host__wdata.value = _pack_lanes(image[b, r * cpr + c])
    await FallingEdge(dut.clk)
    dut.host__en.value = 0
    dut.host__we.value = 0
    assert int(dut.error_count.value) == 0

    # the stream: cycle t of the stream is the cycle after this falling edge's
    steps = {t: c for t, c in stream}
    strobes = {"rd": 0, "mac": 0}
    for t in range(end):
        await FallingEdge(dut.clk)
        c = steps.get(t)
        if c is not None:
            dut.i_cmd__payload.value = cmd_bits(config, c["cmd"], c["bank"], c["row"], c["col"],
                                                c["all_banks"])
            dut.i_data.value = data_bits(config, c["column"], c["banks"], c["mask"], c["gb"])
        dut.i_cmd__valid.value = int(c is not None)
        await ReadOnly()
        # monitor
        if int(dut.o_rd__valid.value):
            rd_board.observe(t, tuple(int(v) for v in _unpack_lanes(
                int(dut.o_rd__payload.value), lanes)))
            strobes["rd"] += 1
        if int(dut.o_mac__valid.value):
            mac_board.observe(t, tuple(int(v) for v in _unpack_lanes(
                int(dut.o_mac__payload.value), nb)))
            strobes["mac"] += 1
        if t in errors_after and int(dut.error_count.value) != errors_after[t]:
            # the count after the command of cycle t - 1
            raise AssertionError(f"seed {seed}: error_count {int(dut.error_count.value)} in "
                                 f"cycle {t}, the model says {errors_after[t]} (command "
                                 f"{steps.get(t - 1)})")
    await FallingEdge(dut.clk)
    dut.i_cmd__valid.value = 0
    rd_board.finish()
    mac_board.finish()

    # read the rows back through the host port (rdata the cycle after the address)
    addrs = [(b, r * cpr + c) for r in rows for b in range(nb) for c in range(cpr)]
    back = []
    for i in range(len(addrs) + 1):
        await FallingEdge(dut.clk)
        if i < len(addrs):
            dut.host__en.value = 1
            dut.host__bank.value, dut.host__col.value = addrs[i]
        else:
            dut.host__en.value = 0
        await ReadOnly()
        if i:
            assert int(dut.host__rvalid.value) == 1
            back.append(_unpack_lanes(int(dut.host__rdata.value), lanes))
    for (b, w), got in zip(addrs, back):
        want = model.mem[b, w]
        if not np.array_equal(got, want):
            raise AssertionError(f"seed {seed}: bank {b} word {w} reads back "
                                 f"{[hex(v) for v in got]}, the model has "
                                 f"{[hex(v) for v in want]}")
    kinds = {c["cmd"] for _, c in stream}
    dut._log.info("channel_pim: %d commands (%s) over %d cycles, %d o_rd and %d o_mac strobes "
                  "matched, %d protocol errors (seed %d)", len(stream),
                  ", ".join(sorted(k.name if isinstance(k, C) else str(k) for k in kinds)),
                  end, strobes["rd"], strobes["mac"], model.errors, seed)
