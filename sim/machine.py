"""Functional model of the PIM-GPT machine: executes a program instruction by instruction.

State: the bank arrays (BF16 values, kept as binary32), per-channel global buffers, per-bank
MAC accumulators, the ASIC vector memory and scalar registers. Semantics are those of
docs/isa.md; all arithmetic goes through :mod:`pimgpt.sim.numerics`. No timing is modelled
here (that is the cycle simulator's job); ``Result.cycles`` is ``None``.

Device API shared with the other backends: ``load(binary) -> run(max_steps) -> Result``; and
:meth:`FunctionalMachine.generate` drives the compiled decode step token by token.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import MachineConfig
from pimgpt.mapping.pimbin import PimBinary
from pimgpt.sim import numerics as nm
from pimgpt.sim.scalar import SCALAR_EXEC, exec_scalar, set_reg

#: Largest bank array allocated for a binary that carries no DRAM image (asm programs).
_MAX_BLANK_ELEMS = 1 << 28


@dataclass
class Result:
    """Outcome of one ``run``: outputs the host reads, cycles (timing backends) and counters."""

    outputs: dict[str, object]
    cycles: int | None
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class Generation:
    """Tokens of one greedy generation (plus the logits of each step when kept)."""

    prompt_ids: list[int]
    generated_ids: list[int]
    logits: list[np.ndarray] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    cycles: list[int] = field(default_factory=list)  # per run, on timed devices


def check_generation(meta: dict, prompt_ids: Sequence[int], n_tokens: int) -> tuple[list[int], int]:
    """Validate a generation request against a compiled program's metadata; return the prompt
    and the number of decode steps (one per prompt token, then one per generated token but the
    last)."""
    model = meta.get("model")
    if not isinstance(model, dict):
        raise PimgptError("this program is not a compiled GPT (no model metadata), so it cannot "
                          "generate tokens")
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise PimgptError("the prompt is empty: give at least one token")
    bad = [t for t in prompt if not 0 <= t < model["vocab"]]
    if bad:
        raise PimgptError(f"prompt token id {bad[0]} is outside the vocabulary "
                          f"(0..{model['vocab'] - 1})")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
        raise PimgptError(f"--tokens must be an integer >= 0, not {n_tokens!r}")
    limit = int(meta.get("max_tokens", model.get("n_ctx", 0)))
    total = len(prompt) + max(n_tokens - 1, 0)
    if total > limit:
        raise PimgptError(f"prompt ({len(prompt)}) plus {n_tokens} generated tokens needs "
                          f"{len(prompt) + n_tokens} positions, but the program reserved KV "
                          f"space for {limit} (compile with a larger --max-tokens, up to "
                          f"the model's context {model.get('n_ctx')})")
    return prompt, total


class FunctionalMachine:
    """Bit-exact, untimed execution of PIM-GPT programs."""

    def __init__(self, config: MachineConfig):
        self.cfg = config
        g = config.geometry
        self.lanes = g.mac_lanes
        self.nb = g.banks_per_channel
        self.nc = g.channels
        self.vlanes = config.asic.vector_lanes
        self.code: list[tuple[Op, dict[str, int]]] = []
        self.meta: dict = {}
        # Bank arrays lanes first, banks last: lm[l, c, g] is lane l of column c of global bank
        # g, so the products and every adder-tree level of an all-bank MAC run over long
        # contiguous blocks (the cost of bit-exact emulation is all in those steps).
        self.lm = np.zeros((self.lanes, 0, g.banks), np.float32)
        self._pristine: np.ndarray | None = None
        self._fused: dict[int, tuple[int, int, int, int, int]] = {}
        self._op = Op.NOP
        self._handler_table = self._handlers()
        self.reset()

    # --- device API ----------------------------------------------------------------------------

    def load(self, binary: PimBinary) -> None:
        """Take a program and its DRAM image (checked against this machine's configuration)."""
        binary.require_machine(self.cfg)
        g = self.cfg.geometry
        self.code = [(ins.op, {f.name: int(ins.args.get(f.name, 0))
                               for f in isa.FIELDS[isa.format_of(ins.op)]})
                     for ins in binary.code]
        self.meta = dict(binary.meta)
        if binary.image is not None:
            img = np.asarray(binary.image)
            cols = -(-img.shape[1] // self.lanes)
            lm = np.zeros((self.lanes, cols, g.banks), np.float32)
            for lo in range(0, cols, 1 << 16):  # in slices: the image may be a large memmap
                hi = min(cols, lo + (1 << 16))
                part = np.zeros((g.banks, (hi - lo) * self.lanes), np.uint16)
                src = img[:, lo * self.lanes:hi * self.lanes]
                part[:, :src.shape[1]] = src
                lm[:, lo:hi, :] = nm.bf16_bits_to_f32(
                    part.reshape(g.banks, hi - lo, self.lanes)).transpose(2, 1, 0)
            self._pristine = lm
        else:
            elems = int(self.meta.get("image_elems", g.bank_elems))
            if "model" in self.meta:
                raise PimgptError("this .pimbin has no DRAM image (compiled with "
                                  "--layout-only); recompile it without that option to run it")
            if elems * g.banks > _MAX_BLANK_ELEMS:
                raise PimgptError(f"machine '{self.cfg.name}' is too large to simulate blank "
                                  f"banks functionally ({elems * g.banks} elements)")
            self._pristine = np.zeros((self.lanes, -(-elems // self.lanes), g.banks),
                                      np.float32)
        self.constants = [(int(a), np.asarray(v, np.float32)) for a, v in binary.constants]
        self._fused = self._find_vmm_runs()
        self.reset()

    def reset(self) -> None:
        """Power-on state: the loaded image, zero buffers, accumulators and registers."""
        g = self.cfg.geometry
        if self._pristine is not None:
            self.lm = self._pristine.copy()
        self.gb = np.zeros((self.nc, g.gb_elems), np.float32)
        self.acc = np.zeros((self.nc, self.nb), np.float32)
        self.vmem = np.zeros(self.cfg.asic.vmem_words, np.float32)
        for addr, values in getattr(self, "constants", []):
            self.vmem[addr:addr + values.size] = values
        self.regs = [0] * isa.NUM_SREGS
        self.counters: Counter[str] = Counter()

    def set_reg(self, index: int, value: int) -> None:
        set_reg(self.regs, index, value)

    def run(self, max_steps: int = 50_000_000) -> Result:
        """Execute from pc 0 until END; errors name the pc and the problem."""
        pc, steps, code = 0, 0, self.code
        handlers = self._handler_table
        fused = self._fused
        while True:
            if pc >= len(code):
                raise PimgptError(f"pc {pc} ran past the end of the program without END")
            op, a = code[pc]
            steps += 1
            if steps > max_steps:
                raise PimgptError(f"program did not reach END within {max_steps} instructions")
            self.counters[op.name] += 1
            self._op = op
            if op is Op.END:
                break
            run = fused.get(pc)
            if run is not None:
                steps += 2 * run[0] - 1
                try:
                    self._run_vmm(*run)
                except PimgptError as exc:
                    raise PimgptError(f"pc {pc} (MAC_ABK): {exc}") from None
                pc += 2 * run[0]
                continue
            try:
                nxt = handlers[op](a)
            except PimgptError as exc:
                raise PimgptError(f"pc {pc} ({op.name}): {exc}") from None
            pc = pc + 1 if nxt is None else nxt
        return Result(outputs={"token": self.regs[isa.REG_TOKEN_OUT], "regs": list(self.regs)},
                      cycles=None, counters=dict(self.counters))

    def read_vmem(self, addr: int, n: int) -> np.ndarray:
        """A copy of vector-memory words ``addr .. addr + n - 1`` (binary32)."""
        return self.vmem[addr:addr + n].copy()

    def generate(self, prompt_ids: Sequence[int], n_tokens: int, keep_logits: bool = False,
                 on_step: Callable[[int], None] | None = None) -> Generation:
        """Greedy generation: one decode step per prompt token, then per generated token
        (:func:`pimgpt.sim.device.generate` on this machine)."""
        from pimgpt.sim.device import generate

        return generate(self, self.meta, prompt_ids, n_tokens, keep_logits, on_step)

    # --- instruction semantics ---------------------------------------------------------------

    def _handlers(self) -> dict[Op, Callable[[dict[str, int]], int | None]]:
        return {
            Op.NOP: lambda a: None, Op.SYNC: lambda a: None,
            **{op: (lambda a, op=op: exec_scalar(op, a, self.regs)) for op in SCALAR_EXEC},
            Op.WR_GB: self._wr_gb, Op.MAC_ABK: self._mac_abk, Op.MAC_SBK: self._mac_sbk,
            Op.RD_MAC: self._rd_mac, Op.WR_BANK: self._wr_bank, Op.RD_BANK: self._rd_bank,
            Op.WR_ABK: self._wr_abk,
            Op.VADD: self._vbin, Op.VSUB: self._vbin, Op.VMUL: self._vbin,
            Op.VADDI: self._vimm, Op.VMULI: self._vimm, Op.VSET: self._vset,
            Op.VMOV: self._vmov, Op.VSUM: self._vred, Op.VMAX: self._vred,
            Op.VEXP: self._vfun, Op.VRECIP: self._vfun, Op.VRSQRT: self._vfun,
            Op.VGELU: self._vfun, Op.VARGMAX: self._vargmax,
        }

    # PIM ------------------------------------------------------------------------------------

    def _eff(self, a: dict[str, int], name: str) -> int:
        return a[name] + self.regs[a[name + "_reg"]]

    def _channels(self, mask: int) -> list[int]:
        chans = [c for c in range(self.nc) if mask >> c & 1]
        if mask >> self.nc:
            raise PimgptError(f"channel mask 0x{mask:x} names channels this machine lacks "
                              f"({self.nc} channels)")
        return chans

    def _vspan(self, start: int, n: int) -> slice:
        if start < 0 or n < 0 or start + n > self.vmem.size:
            raise PimgptError(f"vector memory words {start}..{start + n - 1} are outside "
                              f"0..{self.vmem.size - 1}")
        return slice(start, start + n)

    def _bspan(self, start: int, n: int) -> slice:
        size = self.lm.shape[1] * self.lanes
        if start < 0 or n < 0 or start + n > size:
            raise PimgptError(f"bank elements {start}..{start + n - 1} are outside the bank "
                              f"(0..{size - 1})")
        return slice(start, start + n)

    def _gspan(self, col: int, ncols: int) -> slice:
        if col + ncols > self.gb.shape[1] // self.lanes:
            raise PimgptError(f"global-buffer columns {col}..{col + ncols - 1} exceed its "
                              f"{self.gb.shape[1] // self.lanes} columns")
        return slice(col * self.lanes, (col + ncols) * self.lanes)

    def _bank(self, a: dict[str, int]) -> int:
        g = self._eff(a, "bank")
        if not 0 <= g < self.lm.shape[2]:
            raise PimgptError(f"bank {g} does not exist (0..{self.lm.shape[2] - 1})")
        return g

    def _wr_gb(self, a: dict[str, int]) -> None:
        n = self._eff(a, "n")
        src = nm.round_bf16(self.vmem[self._vspan(self._eff(a, "vaddr"), n * self.lanes)])
        cols = self._gspan(a["gb"], n)
        for c in self._channels(a["ch_mask"]):
            self.gb[c, cols] = src
        self.counters["gb_columns"] += n

    def _mac(self, chans: list[int], bank_sel: slice | int, a: dict[str, int]) -> None:
        addr, n = self._eff(a, "addr"), self._eff(a, "n")
        if addr % self.lanes:
            raise PimgptError(f"MAC address {addr} is not column-aligned "
                              f"(a multiple of {self.lanes})")
        self._bspan(addr, n * self.lanes)
        self._gspan(a["gb"], n)
        c0 = addr // self.lanes
        rows = self.lm[:, c0:c0 + n, :].reshape(self.lanes, n, self.nc, self.nb)
        sel = slice(bank_sel, bank_sel + 1) if isinstance(bank_sel, int) else bank_sel
        rows = (rows if len(chans) == self.nc else rows[:, :, chans])[:, :, :, sel]
        gbv = self._gb_lanes(chans, a["gb"], n)[:, :, :, None]  # (lanes, n, chans, 1)
        acc = self.acc[chans][:, sel]
        new = nm.mac_accumulate(acc, rows, gbv, lane_axis=0, col_axis=0)
        rows_idx = np.asarray(chans)[:, None]
        self.acc[rows_idx, np.arange(self.nb)[sel][None, :]] = new
        self.counters["mac_columns"] += n * rows.shape[2] * rows.shape[3]

    def _gb_lanes(self, chans: list[int], col: int, n: int) -> np.ndarray:
        """Global-buffer columns col..col+n-1 of ``chans``, lanes first: (lanes, n, chans)."""
        g = self.gb.reshape(self.nc, -1, self.lanes)[chans, col:col + n]
        return g.transpose(2, 1, 0)

    def _mac_abk(self, a: dict[str, int]) -> None:
        self._mac(self._channels(a["ch_mask"]), slice(None), a)

    def _mac_sbk(self, a: dict[str, int]) -> None:
        g = self._bank(a)
        self._mac([g // self.nb], g % self.nb, a)

    def _rd_mac(self, a: dict[str, int]) -> None:
        chans = self._channels(a["ch_mask"])
        dst = self._vspan(self._eff(a, "vaddr"), len(chans) * self.nb)
        self.vmem[dst] = nm.readout(self.acc[chans]).reshape(-1)
        self.acc[chans] = 0.0

    def _elems(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(lane, column) indices of bank elements start..start+n-1."""
        self._bspan(start, n)
        idx = np.arange(start, start + n)
        return idx % self.lanes, idx // self.lanes

    def _wr_bank(self, a: dict[str, int]) -> None:
        n = self._eff(a, "n")
        src = self.vmem[self._vspan(self._eff(a, "vaddr"), n)]
        lanes, cols = self._elems(self._eff(a, "addr"), n)
        self.lm[lanes, cols, self._bank(a)] = nm.round_bf16(src)
        self.counters["bank_writes"] += n

    def _wr_abk(self, a: dict[str, int]) -> None:
        chans = self._channels(a["ch_mask"])
        src = self.vmem[self._vspan(self._eff(a, "vaddr"), len(chans) * self.nb)]
        lane, col = self._elems(self._eff(a, "addr"), 1)
        banks = (np.asarray(chans)[:, None] * self.nb + np.arange(self.nb)).reshape(-1)
        self.lm[lane[0], col[0], banks] = nm.round_bf16(src)
        self.counters["bank_writes"] += src.size

    def _rd_bank(self, a: dict[str, int]) -> None:
        n = self._eff(a, "n")
        lanes, cols = self._elems(self._eff(a, "addr"), n)
        src = self.lm[lanes, cols, self._bank(a)]
        self.vmem[self._vspan(self._eff(a, "vaddr"), n)] = src
        self.counters["bank_reads"] += n

    # A weight VMM is a run of (MAC_ABK, RD_MAC) pairs over consecutive segments with the same
    # global-buffer columns; executing a run at once gives identical results (each pair starts
    # from the accumulator the previous RD_MAC cleared) with far less interpreter overhead.

    def _find_vmm_runs(self) -> dict[int, tuple[int, int, int, int, int]]:
        runs: dict[int, tuple[int, int, int, int, int]] = {}
        code, allch, nbt = self.code, (1 << self.nc) - 1, self.nc * self.nb
        pc = 0
        while pc + 1 < len(code):
            groups = 0
            while pc + 2 * groups + 1 < len(code):
                (op1, m), (op2, r) = code[pc + 2 * groups], code[pc + 2 * groups + 1]
                if not (op1 is Op.MAC_ABK and op2 is Op.RD_MAC and m["ch_mask"] == allch
                        and r["ch_mask"] == allch and not (m["addr_reg"] or m["n_reg"]
                                                           or r["vaddr_reg"])):
                    break
                if groups:
                    m0, r0 = code[pc][1], code[pc + 1][1]
                    if (m["n"] != m0["n"] or m["gb"] != m0["gb"]
                            or m["addr"] != m0["addr"] + groups * m0["n"] * self.lanes
                            or r["vaddr"] != r0["vaddr"] + groups * nbt):
                        break
                groups += 1
            if groups >= 2:
                m0, r0 = code[pc][1], code[pc + 1][1]
                runs[pc] = (groups, m0["addr"], m0["n"], m0["gb"], r0["vaddr"])
                pc += 2 * groups
            else:
                pc += 1
        return runs

    def _run_vmm(self, groups: int, addr: int, n: int, gb: int, vaddr: int) -> None:
        if addr % self.lanes:
            raise PimgptError(f"MAC address {addr} is not column-aligned")
        self._bspan(addr, groups * n * self.lanes)
        cols = self._gspan(gb, n)
        nbt = self.nc * self.nb
        dst = self._vspan(vaddr, groups * nbt)
        buf = self.gb[:, cols]
        if (buf.view(np.uint32) == buf[0].view(np.uint32)).all():  # broadcast input: usual case
            gbv = buf[0].reshape(n, self.lanes).T[:, None, :, None]  # (lanes, 1, n, 1)
        else:
            gbv = self._gb_lanes(list(range(self.nc)), gb, n)  # (lanes, n, channels)
            gbv = np.repeat(gbv, self.nb, axis=2)[:, None]  # (lanes, 1, n, banks)
        c0 = addr // self.lanes
        block = max(1, (1 << 19) // (self.lanes * nbt * n))  # ~2 MB of products a block
        out = np.empty((groups, nbt), np.float32)
        for g0 in range(0, groups, block):
            gn = min(block, groups - g0)
            rows = self.lm[:, c0 + g0 * n:c0 + (g0 + gn) * n, :].reshape(
                self.lanes, gn, n, nbt)
            acc = np.zeros((gn, nbt), np.float32)
            if g0 == 0:
                acc[0] = self.acc.reshape(-1)
            out[g0:g0 + gn] = nm.readout(nm.mac_accumulate(acc, rows, gbv, lane_axis=0,
                                                           col_axis=1))
        self.vmem[dst] = out.reshape(-1)
        self.acc[:] = 0.0
        self.counters["MAC_ABK"] += groups - 1
        self.counters["RD_MAC"] += groups
        self.counters["mac_columns"] += groups * n * nbt

    # vector unit ----------------------------------------------------------------------------

    def _operands(self, a: dict[str, int]) -> tuple[slice, int]:
        n = a["n"] + self.regs[a["n_reg"]]
        return self._vspan(a["dst"] + self.regs[a["dst_reg"]], n), n

    def _src(self, a: dict[str, int], n: int) -> np.ndarray:
        return self.vmem[self._vspan(a["a"] + self.regs[a["a_reg"]], n)]

    def _imm(self, a: dict[str, int]) -> np.float32:
        return np.asarray(a["imm"], np.uint32).view(np.float32)[()]

    _BIN = {Op.VADD: "add", Op.VSUB: "sub", Op.VMUL: "mul"}
    _IMM = {Op.VADDI: "add", Op.VMULI: "mul"}
    _FUN = {Op.VEXP: nm.vexp, Op.VRECIP: nm.vrecip, Op.VRSQRT: nm.vrsqrt, Op.VGELU: nm.vgelu}

    def _vbin(self, a: dict[str, int]) -> None:
        dst, n = self._operands(a)
        b = self.vmem[self._vspan(a["b"], 1)][0] if a["bcast"] else \
            self.vmem[self._vspan(a["b"], n)]
        self.vmem[dst] = nm.binop(self._BIN[self._op], self._src(a, n), b)

    def _vimm(self, a: dict[str, int]) -> None:
        dst, n = self._operands(a)
        self.vmem[dst] = nm.binop(self._IMM[self._op], self._src(a, n), self._imm(a))

    def _vset(self, a: dict[str, int]) -> None:
        dst, _n = self._operands(a)
        self.vmem[dst] = self._imm(a)

    def _vmov(self, a: dict[str, int]) -> None:
        dst, n = self._operands(a)
        self.vmem[dst] = self._src(a, n)

    def _vred(self, a: dict[str, int]) -> None:
        x = self._src(a, a["n"] + self.regs[a["n_reg"]])
        d = self._vspan(a["dst"] + self.regs[a["dst_reg"]], 1)
        self.vmem[d] = nm.vsum(x, self.vlanes) if self._op is Op.VSUM else nm.vmax(x)

    def _vfun(self, a: dict[str, int]) -> None:
        dst, n = self._operands(a)
        self.vmem[dst] = self._FUN[self._op](self._src(a, n))

    def _vargmax(self, a: dict[str, int]) -> None:
        self.set_reg(a["rd"], nm.vargmax(self._src(a, a["n"] + self.regs[a["n_reg"]])))
