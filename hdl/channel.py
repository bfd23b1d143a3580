"""The PIM side of one channel: bank arrays with row buffers, one MAC unit per bank, the global
buffer and the MAC-register read-out path (a behavioural model for simulation and lint).

Golden model: the PIM semantics of :class:`pimgpt.sim.machine.FunctionalMachine` (bank memory,
global buffer, ``mac_accumulate`` / ``readout`` of :mod:`pimgpt.sim.numerics`, RD_MAC clears
the accumulators) with the read-data timing of :class:`pimgpt.sim.cycle.CycleSimulator`.

Commands
--------
The block consumes the DRAM command strobe the channel sequencer emits
(:func:`pimgpt.hdl.sequencer.cmd_layout`), one command per cycle, and acts on each in the cycle
it is presented, in command order:

- ``ACT`` / ``ACT16`` open ``row`` in one bank / every bank; ``PRE`` / ``PREA`` close one bank /
  every bank (closing a closed bank is allowed, as in DRAM); ``REF`` needs every bank closed and
  changes no data.
- ``RD`` / ``WR`` / ``MAC`` address column ``col`` of ``row`` in ``bank``, ``MAC16`` / ``WR16``
  in every bank; the bank(s) must be open on ``row``.
- ``WRGB`` writes global-buffer column ``col``; ``RDMAC`` reads the bank accumulators as BF16
  (``bf16(acc)``, bank 0 first) and clears them to +0, as ``FunctionalMachine._rd_mac`` does.
  A MAC issued before an RDMAC is in its read-out; one issued after it starts the new sum.

What a command needs beyond ``cmd_layout`` comes on ``i_data`` in the same cycle
(:func:`data_layout`): the write data of WRGB (``column``, all lanes), WR (``column``, the lanes
set in ``mask``, so a WR_BANK that covers part of a column leaves the rest as it was) and WR16
(bank ``b`` writes ``banks[b]`` into the lanes set in ``mask``: one lane, WR_ABK's
``addr % mac_lanes``); and the global-buffer column ``gb_col`` a MAC / MAC16 multiplies by (the
ISA's ``gb + i`` for the ``i``-th column of a MAC_ABK / MAC_SBK run, which need not be the
column in the row). A write is in the array (or buffer) from the next cycle on.

Cycle correspondence (read data)
--------------------------------
A command presented in cycle ``t`` (``i_cmd.valid`` high during ``t``) is the command the cycle
simulator issues at cycle ``t``. The simulator counts a read as delivered ``tCL + tBL`` cycles
after its RD (``CycleSimulator.rd_latency``) and ``tCL_REG + tBL`` after an RDMAC
(``rdmac_latency``), each term converted by ``ns_to_cycles``. Here:

- an RD in cycle ``t`` puts its column on ``o_rd`` (``valid`` high for one cycle) in cycle
  ``t + rd_latency``;
- an RDMAC in cycle ``t`` puts the ``banks_per_channel`` read-outs on ``o_mac`` in cycle
  ``t + rdmac_latency``.

The values are those at the command (an RD reads the array in cycle ``t``; an RDMAC sees every
MAC presented before ``t``), whatever is written later; the delay is a data-path delay line.

Protocol errors
---------------
A command the row-buffer state does not allow is not executed (no state, data, accumulator or
output changes): ACT/ACT16 to an open bank or to a row beyond the modelled ones (``array_rows``),
a column command to a closed bank or to one open on another row (MAC16/WR16: any bank), a column
index outside the row or outside the global buffer (WRGB's ``col``, a MAC's ``gb_col``), REF
with a bank open, an ``all_banks`` flag that disagrees with the command, an unknown command code.
A host access in a command cycle or beyond the modelled rows is dropped (the command goes
ahead). Each raises ``error`` (sticky until reset) and adds one to ``error_count`` (saturating;
a bad command and a bad host access in one cycle add two). DRAM timing is not checked here
(:mod:`pimgpt.sim.trace` checks command traces against the rules). Reset clears the row state,
the accumulators, the read-out pipelines and the error flag and count; the arrays and the global
buffer keep their contents, as memories do.

Sizes
-----
Every bank is a memory of ``rows * cols_per_row`` words of one column (``mac_lanes`` BF16);
word ``row * cols_per_row + col`` holds column ``col`` of row ``row``, lane ``l`` the bank
element ``(row * cols_per_row + col) * mac_lanes + l``: the element-column index of the
functional machine's bank arrays (``lm[l, c, bank]``). The arrays of one channel may hold at most
:data:`MAX_SIM_ARRAY_BYTES`; ``tiny`` fits, ``paper`` does not. ``array_rows`` models only the
first rows of every bank (an ACT beyond them is a protocol error); the command and host ports
keep the full geometry's widths. Generated Verilog uses that (:data:`GEN_ARRAY_ROWS`): Amaranth
writes a memory's initial contents bit by bit, so the full ``tiny`` arrays (16 Mi bits) take
minutes to convert.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory, MemoryData
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from pimgpt.errors import PimgptError
from pimgpt.hdl.fp import BFLOAT16
from pimgpt.hdl.mac import BankMac, beat_layout
from pimgpt.hdl.params import MachineConfig
from pimgpt.hdl.sequencer import cmd_layout
from pimgpt.hdl.timing import ALL_BANK_CMDS, COLUMN_CMDS, DATA_LATENCY, DramCmd, terms_cycles

__all__ = ["MAX_SIM_ARRAY_BYTES", "GEN_ARRAY_ROWS", "ERROR_COUNT_BITS", "read_latency",
           "column_layout", "data_layout", "host_signature", "ChannelPim"]

#: Largest bank-array size of one channel (banks x rows x row_bytes) the behavioural model
#: builds: 4 MiB, twice the ``tiny`` preset's 2 MiB. Beyond that the simulator's and the
#: Verilog's memories become impractically large; simulate a variant with fewer rows.
MAX_SIM_ARRAY_BYTES = 1 << 22

#: Rows per bank the generated Verilog models (``pimgpt verilog``, gen/verilog.py's BLOCKS):
#: Amaranth writes a memory's initial contents word by word, and the full ``tiny`` arrays (4 x
#: 16384 words of 256 bits per channel) make the Verilog huge and slow to convert, lint and
#: build. 256 rows (2048 words per bank) hold the built-in tiny GPT compiled for ``tiny`` (its
#: weights and KV space fill 142 rows), so the system test runs the generated top itself; the
#: RTL device (tests/helpers/rtl_device.py) refuses an image that does not fit.
GEN_ARRAY_ROWS = 256

#: Width of the saturating protocol-error counter.
ERROR_COUNT_BITS = 16


def read_latency(cmd: DramCmd, config: MachineConfig) -> int:
    """Cycles from a read-type command (RD, RDMAC) to the cycle its data is delivered: the
    command's data latency (:data:`~pimgpt.hdl.timing.DATA_LATENCY`) plus the burst ``tBL``,
    the cycle simulator's ``rd_latency`` / ``rdmac_latency``."""
    if cmd not in (DramCmd.RD, DramCmd.RDMAC):
        raise PimgptError(f"{cmd.name} delivers no read data")
    return terms_cycles((DATA_LATENCY[cmd], "tBL"), config)


def column_layout(config: MachineConfig) -> data.ArrayLayout:
    """One column (burst): ``mac_lanes`` BF16 bit patterns, lane ``l`` is element ``l``; the
    operand layout of :class:`~pimgpt.hdl.mac.BankMac`."""
    return beat_layout(config.geometry.mac_lanes)["w"].shape


def _readout_layout(config: MachineConfig) -> data.ArrayLayout:
    return data.ArrayLayout(unsigned(BFLOAT16.width), config.geometry.banks_per_channel)


def data_layout(config: MachineConfig) -> data.StructLayout:
    """What accompanies a command beyond ``cmd_layout``: ``column`` (write data of WRGB: the
    global-buffer column; of WR: the bank column), ``banks`` (WR16: one BF16 value per bank,
    bank 0 first), ``mask`` (WR and WR16: lane ``l`` is written when bit ``l`` is set; WRGB
    ignores it) and ``gb_col`` (MAC, MAC16: the global-buffer column of the operand ``x``)."""
    g = config.geometry
    return data.StructLayout({
        "column": column_layout(config),
        "banks": _readout_layout(config),
        "mask": unsigned(g.mac_lanes),
        "gb_col": unsigned(_bits(g.gb_cols)),
    })


def _strobe(layout) -> wiring.Signature:
    # A valid strobe rather than a stream: DRAM data and command buses cannot stall (and a
    # stream's constant ``ready`` could not be a port of the generated module).
    return wiring.Signature({"valid": Out(1), "payload": Out(layout)})


def _bits(n: int) -> int:
    return max(ceil_log2(n), 1)


def host_signature(config: MachineConfig) -> wiring.Signature:
    """The backdoor port (from the host's side): one bank column per cycle, no DRAM protocol.

    ``en`` starts an access of bank ``bank``, element-column ``col`` (``row * cols_per_row +
    column``, the memory word); ``we`` makes it a write of ``wdata`` (all lanes). A read's word
    is on ``rdata`` with ``rvalid`` in the next cycle. An access in a cycle with a command is a
    protocol error and is dropped.
    """
    g = config.geometry
    return wiring.Signature({
        "en": Out(1),
        "we": Out(1),
        "bank": Out(_bits(g.banks_per_channel)),
        "col": Out(_bits(g.rows * g.cols_per_row)),
        "wdata": Out(column_layout(config)),
        "rdata": In(column_layout(config)),
        "rvalid": In(1),
    })


def _delay(m: Module, name: str, valid, payload, cycles: int, layout):
    """``(valid, payload)`` presented in cycle ``s`` appears on the returned pair in cycle
    ``s + cycles``. The strobe goes through a resettable shift register; the data, when
    ``cycles >= 2``, through a ring buffer (a memory written every cycle and read ``cycles - 1``
    entries behind), so that a long latency costs one memory, not ``cycles`` wide registers."""
    if cycles == 0:
        return valid, payload
    vs = valid
    for i in range(cycles):
        nxt = Signal(name=f"{name}_v{i + 1}")
        m.d.sync += nxt.eq(vs)
        vs = nxt
    if cycles == 1:
        out = Signal(layout, name=f"{name}_d1")
        m.d.sync += out.eq(payload)
        return vs, out
    depth = 1 << ceil_log2(cycles)
    ring = m.submodules[f"{name}_ring"] = Memory(shape=layout, depth=depth, init=[])
    ptr = Signal(range(depth), name=f"{name}_ptr")
    m.d.sync += ptr.eq(ptr + 1)  # wraps: depth is a power of two
    wp = ring.write_port()
    rp = ring.read_port()  # not transparent: every entry read was written >= 1 cycle earlier
    # the entry written in cycle s (at ptr(s)) is addressed in cycle s + cycles - 1 and on the
    # read data in s + cycles; it is overwritten in s + depth >= s + cycles
    m.d.comb += [wp.addr.eq(ptr), wp.data.eq(payload), wp.en.eq(1),
                 rp.addr.eq((ptr - (cycles - 1))[:exact_log2(depth)])]
    return vs, rp.data


class ChannelPim(wiring.Component):
    """The PIM side of one channel (module docstring: commands, cycle correspondence, errors).

    Parameters
    ----------
    config : MachineConfig
        Geometry sizes every memory and port; the timing gives the read latencies.
    array_rows : int or None
        Rows of every bank the arrays hold (a power of two, default ``geometry.rows``): rows
        ``0 .. array_rows - 1``; ACT to a higher row is a protocol error.
    mac_pipeline : int
        Register stages inside each :class:`~pimgpt.hdl.mac.BankMac` (0, 1 or 2); invisible at
        the ports (the read-out is taken ``1 + mac_pipeline`` cycles after the RDMAC, so that
        must not exceed ``rdmac_latency``).

    Attributes
    ----------
    i_cmd : In(Signature({"valid": Out(1), "payload": Out(cmd_layout(config))}))
        the DRAM command strobe (connects to the sequencer's ``o_cmd``).
    i_data : In(data_layout(config))
        the command's write data (WRGB, WR, WR16) or global-buffer column (MAC, MAC16), in
        the command's cycle.
    o_rd : Out(Signature({"valid": Out(1), "payload": Out(column_layout(config))}))
        an RD's column, ``rd_latency`` cycles after the RD.
    o_mac : Out(Signature({"valid": Out(1), "payload": Out(ArrayLayout(16, banks_per_channel))}))
        an RDMAC's read-outs ``bf16(acc)``, bank 0 first, ``rdmac_latency`` cycles after it.
    host : In(host_signature(config))
        the backdoor to the bank arrays (an address beyond ``array_rows`` is a protocol error).
    error : Out(1)
        a protocol error has happened since reset.
    error_count : Out(ERROR_COUNT_BITS)
        protocol errors since reset (saturating).
    rd_latency, rdmac_latency : int
        :func:`read_latency` of RD and RDMAC.
    bank_data : tuple[MemoryData, ...]
        each bank's array (``bank_data[b][word]``), for testbenches to load and inspect directly.
    gb_data : MemoryData
        the global buffer, ``gb_cols`` columns.
    """

    def __init__(self, config: MachineConfig, *, array_rows: int | None = None,
                 mac_pipeline: int = 0):
        if not isinstance(config, MachineConfig):
            raise TypeError(f"config must be a MachineConfig, not {config!r}")
        g = config.geometry
        if array_rows is None:
            array_rows = g.rows
        if (type(array_rows) is not int or not 0 < array_rows <= g.rows
                or array_rows & (array_rows - 1)):
            raise PimgptError(f"array_rows must be a power of two from 1 to geometry.rows "
                              f"({g.rows}), not {array_rows!r}")
        size = g.banks_per_channel * array_rows * g.row_bytes
        if size > MAX_SIM_ARRAY_BYTES:
            raise PimgptError(
                f"machine '{config.name}': one channel's bank arrays ({g.banks_per_channel} banks "
                f"x {array_rows} rows x {g.row_bytes} bytes = {size} bytes) exceed the channel "
                f"model's simulation limit of {MAX_SIM_ARRAY_BYTES} bytes; model fewer rows "
                f"(array_rows=) or use a variant with fewer (dataclasses.replace on the geometry)")
        self.array_rows = array_rows
        if type(mac_pipeline) is not int or mac_pipeline not in (0, 1, 2):
            raise PimgptError(f"mac_pipeline must be 0, 1 or 2 stages, not {mac_pipeline!r}")
        self._config = config
        self.mac_pipeline = mac_pipeline
        self.rd_latency = read_latency(DramCmd.RD, config)
        self.rdmac_latency = read_latency(DramCmd.RDMAC, config)
        # the bank read data is there one cycle after the command, a MAC beat's effect on the
        # accumulator 1 + mac_pipeline cycles after that
        if self.rd_latency < 1 or self.rdmac_latency < 1 + mac_pipeline:
            raise PimgptError(
                f"read latencies (RD {self.rd_latency}, RDMAC {self.rdmac_latency} cycles) are "
                f"too short for mac_pipeline={mac_pipeline}")
        col = column_layout(config)
        self.bank_data = tuple(
            MemoryData(shape=col, depth=array_rows * g.cols_per_row, init=[])
            for _ in range(g.banks_per_channel))
        self.gb_data = MemoryData(shape=col, depth=g.gb_cols, init=[])
        super().__init__({
            "i_cmd": In(_strobe(cmd_layout(config))),
            "i_data": In(data_layout(config)),
            "o_rd": Out(_strobe(col)),
            "o_mac": Out(_strobe(_readout_layout(config))),
            "host": In(host_signature(config)),
            "error": Out(1),
            "error_count": Out(ERROR_COUNT_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        g = self._config.geometry
        nb, lanes = g.banks_per_channel, g.mac_lanes
        cbits = exact_log2(g.cols_per_row)
        gbits = exact_log2(g.gb_cols)
        row_bits = exact_log2(self.array_rows)
        word_bits = row_bits + cbits  # address bits of the modelled array
        cmd = self.i_cmd.payload
        valid = self.i_cmd.valid
        wd = self.i_data
        host = self.host

        # --- row-buffer state and the protocol check (combinational, in the command cycle) --
        is_open = Signal(nb, name="open")
        open_row = Array(Signal(len(cmd.row), name=f"open_row{b}") for b in range(nb))
        on_row = Signal(nb)  # bank b is open on the command's row
        m.d.comb += on_row.eq(Cat(is_open[b] & (open_row[b] == cmd.row) for b in range(nb)))

        col_in_row = Signal()  # column commands: col addresses a column of the row
        col_in_gb = Signal()
        gb_in_gb = Signal()  # MAC: gb_col addresses a column of the buffer
        row_in_array = Signal()  # ACT: the row is one the model holds (array_rows)
        m.d.comb += [col_in_row.eq(cmd.col[cbits:] == 0), col_in_gb.eq(cmd.col[gbits:] == 0),
                     gb_in_gb.eq(wd.gb_col[gbits:] == 0), row_in_array.eq(cmd.row[row_bits:] == 0)]

        bad = Signal()
        is_all = Signal()
        known = Signal()
        with m.Switch(cmd.cmd):
            for c in DramCmd:
                with m.Case(c):
                    m.d.comb += [known.eq(1), is_all.eq(c in ALL_BANK_CMDS)]
                    if c is DramCmd.ACT:
                        m.d.comb += bad.eq(is_open.bit_select(cmd.bank, 1) | ~row_in_array)
                    elif c is DramCmd.ACT16:
                        m.d.comb += bad.eq(is_open.any() | ~row_in_array)
                    elif c is DramCmd.REF:
                        m.d.comb += bad.eq(is_open.any())
                    elif c in (DramCmd.RD, DramCmd.WR):
                        m.d.comb += bad.eq(~on_row.bit_select(cmd.bank, 1) | ~col_in_row)
                    elif c is DramCmd.MAC:
                        m.d.comb += bad.eq(~on_row.bit_select(cmd.bank, 1) | ~col_in_row
                                           | ~gb_in_gb)
                    elif c is DramCmd.MAC16:
                        m.d.comb += bad.eq(~on_row.all() | ~col_in_row | ~gb_in_gb)
                    elif c is DramCmd.WR16:
                        m.d.comb += bad.eq(~on_row.all() | ~col_in_row)
                    elif c is DramCmd.WRGB:
                        m.d.comb += bad.eq(~col_in_gb)
                    else:
                        assert c not in COLUMN_CMDS  # PRE, PREA, RDMAC: always allowed
            with m.Default():  # the codes DramCmd leaves unused
                # every signal of the switch assigned here too: Yosys writes one case statement
                # per signal, and only those assigned in this branch get a default arm
                m.d.comb += [known.eq(0), is_all.eq(0), bad.eq(0)]
        # a host access must come in a cycle without a command and address the modelled array
        # (the command goes ahead; the host access is the one dropped)
        host_bad = Signal()
        cmd_bad = Signal()
        m.d.comb += [host_bad.eq(host.en & (valid | (host.col[word_bits:] != 0))),
                     cmd_bad.eq(valid & (bad | ~known | (cmd.all_banks != is_all)))]
        ok = Signal()  # the command executes
        m.d.comb += ok.eq(valid & ~cmd_bad)

        def doing(c: DramCmd):
            return ok & (cmd.cmd == c)

        with m.If(cmd_bad | host_bad):
            m.d.sync += self.error.eq(1)
            total = Signal(ERROR_COUNT_BITS + 1)
            m.d.comb += total.eq(self.error_count + cmd_bad + host_bad)
            m.d.sync += self.error_count.eq(Mux(total[-1], ~0, total))  # saturate

        for b in range(nb):
            with m.If(doing(DramCmd.ACT16) | doing(DramCmd.ACT) & (cmd.bank == b)):
                m.d.sync += [is_open[b].eq(1), open_row[b].eq(cmd.row)]
            with m.If(doing(DramCmd.PREA) | doing(DramCmd.PRE) & (cmd.bank == b)):
                m.d.sync += is_open[b].eq(0)

        # --- global buffer ------------------------------------------------------------------
        gb = m.submodules.gb = Memory(data=self.gb_data)
        gb_w = gb.write_port()
        gb_r = gb.read_port()
        mac_any = doing(DramCmd.MAC) | doing(DramCmd.MAC16)
        m.d.comb += [gb_w.addr.eq(cmd.col), gb_w.data.eq(wd.column),
                     gb_w.en.eq(doing(DramCmd.WRGB)),
                     gb_r.addr.eq(wd.gb_col), gb_r.en.eq(mac_any)]

        # --- banks: arrays, MAC units -------------------------------------------------------
        word = Signal(word_bits)  # the command's column as an array word
        m.d.comb += word.eq(Cat(cmd.col[:cbits], cmd.row[:row_bits]))
        host_go = host.en & ~host_bad
        host_rd = host_go & ~host.we
        rd_data = []
        # what the bank read data of the next cycle is for (the read ports hold otherwise)
        beat_v = Signal(nb)
        rd_v, rd_bank = Signal(), Signal.like(cmd.bank)
        host_rv, host_bank = Signal(), Signal.like(host.bank)
        clear_v = Signal()
        m.d.sync += [rd_v.eq(doing(DramCmd.RD)), rd_bank.eq(cmd.bank),
                     host_rv.eq(host_rd), host_bank.eq(host.bank),
                     clear_v.eq(doing(DramCmd.RDMAC))]
        readouts = []
        for b in range(nb):
            mem = m.submodules[f"bank{b}"] = Memory(data=self.bank_data[b])
            w = mem.write_port(granularity=1)  # one enable per lane (WR masks, WR16)
            r = mem.read_port()
            here = cmd.bank == b
            hsel = host_go & (host.bank == b)
            with m.If(hsel):
                m.d.comb += [w.addr.eq(host.col[:word_bits]), w.data.eq(host.wdata),
                             w.en.eq(Mux(host.we, (1 << lanes) - 1, 0)),
                             r.addr.eq(host.col[:word_bits]), r.en.eq(~host.we)]
            with m.Else():
                m.d.comb += [w.addr.eq(word), r.addr.eq(word),
                             r.en.eq(doing(DramCmd.MAC16)
                                     | (doing(DramCmd.MAC) | doing(DramCmd.RD)) & here)]
                with m.If(doing(DramCmd.WR16)):
                    m.d.comb += [w.data.eq(wd.banks[b].replicate(lanes)),
                                 w.en.eq(wd.mask)]
                with m.Else():
                    m.d.comb += [w.data.eq(wd.column),
                                 w.en.eq(Mux(doing(DramCmd.WR) & here, wd.mask, 0))]
            m.d.sync += beat_v[b].eq(doing(DramCmd.MAC16) | doing(DramCmd.MAC) & here)
            rd_data.append(r.data.as_value())

            mac = m.submodules[f"mac{b}"] = BankMac(self._config, pipeline=self.mac_pipeline)
            m.d.comb += [mac.i_beat.valid.eq(beat_v[b]), mac.i_beat.payload.w.eq(r.data),
                         mac.i_beat.payload.x.eq(gb_r.data), mac.clear.eq(clear_v)]
            readouts.append(mac.readout)

        bank_rd = Array(rd_data)
        m.d.comb += [host.rdata.eq(bank_rd[host_bank]), host.rvalid.eq(host_rv)]

        # --- read-out paths -----------------------------------------------------------------
        # RD: the column is on the read port one cycle after the command.
        col = column_layout(self._config)
        rd_col = Signal(col)
        m.d.comb += rd_col.eq(bank_rd[rd_bank])
        v, d = _delay(m, "rd", rd_v, rd_col, self.rd_latency - 1, col)
        m.d.comb += [self.o_rd.valid.eq(v), self.o_rd.payload.eq(d)]

        # RDMAC: the clear reaches the MAC units one cycle after the command, in order with the
        # beats; the accumulators it reads are the BankMac outputs mac_pipeline cycles later,
        # just before the clear takes effect.
        sample = clear_v
        for i in range(self.mac_pipeline):
            nxt = Signal(name=f"rdmac_s{i + 1}")
            m.d.sync += nxt.eq(sample)
            sample = nxt
        ro_layout = _readout_layout(self._config)
        ro = Signal(ro_layout)
        m.d.comb += ro.eq(Cat(readouts))
        v, d = _delay(m, "rdmac", sample, ro, self.rdmac_latency - 1 - self.mac_pipeline,
                      ro_layout)
        m.d.comb += [self.o_mac.valid.eq(v), self.o_mac.payload.eq(d)]
        return m
