"""Lower a GPT-2-family model into one PIM-GPT decode-step program plus its DRAM image.

The program processes one token: the host sets ``r1`` (position) and ``r2`` (token id), runs it
to ``END`` and reads the greedy next token from ``r3``; the logits stay in vector memory at
``meta["vmem"]["logits"]``. Prefill runs the same step once per prompt token. Position-dependent
work (KV append, attention over ``pos + 1`` tokens) uses register-relative operands and loops.

Per layer: LayerNorm -> fused QKV VMM -> K/V append -> q.K^T per head -> softmax -> score.V ->
output projection -> residual -> LayerNorm -> FFN1 -> GELU -> FFN2 -> residual; then the final
LayerNorm, the LM head and argmax. All VMMs run on every bank at once (``MAC_ABK`` to all
channels); all other work runs on the ASIC vector unit (docs/numerics.md gives the arithmetic).

With :attr:`CompileOptions.overlap` (the default) the same work is ordered so that channel and
vector-unit work overlap wherever the data allows (docs/mapping.md, "Overlap"): partial sums
alternate between two buffers, the next layer's parameters are fetched into a second buffer set
while the ASIC runs softmax, V is appended after the scores, each head group's softmax starts
as soon as its scores are in and GELU runs per global-buffer chunk. Results are bit-identical
either way; only the order of independent work changes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl.isa import Opcode as Op
from pimgpt.hdl.params import BF16_BYTES, MachineConfig
from pimgpt.mapping.layout import (DramAllocator, KPlacement, MatrixPlacement,
                                   VectorPlacement, VmemAllocator, VPlacement, ceil_div,
                                   round_up)
from pimgpt.mapping.model import GPTSpec, GPTWeights
from pimgpt.mapping.pimbin import PimBinary
from pimgpt.sim.numerics import F32, f32_to_bf16_bits

R0 = 0
R_POS, R_TOK, R_OUT = isa.REG_POS, isa.REG_TOKEN_IN, isa.REG_TOKEN_OUT
# scratch registers of the emitted code
R_LEN = 4  # pos + 1: tokens attended to
R_A, R_B, R_C, R_D = 5, 6, 7, 8
R_LOOP, R_N, R_T = 9, 10, 11
R_V, R_W = 12, 13
#: the parameters a layer reads before its attention (fetched a layer ahead in overlap mode)
EARLY_PARAMS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.bias")  # score.V in overlap mode: V append offset, last token chunk


def _f32_bits(x: float) -> int:
    return int(np.asarray(x, dtype=F32).view(np.uint32))


class Emitter:
    """Appends range-checked instructions; tiny helpers for loops."""

    def __init__(self) -> None:
        self.code: list[isa.Instruction] = []

    @property
    def pc(self) -> int:
        return len(self.code)

    def __call__(self, op: Op, **args: int) -> int:
        self.code.append(isa.make(op, **args))
        return self.pc - 1

    def patch(self, pc: int, **args: int) -> None:
        old = self.code[pc]
        self.code[pc] = isa.make(old.op, **{**old.args, **args})

    def sli(self, rd: int, value: int) -> None:
        self(Op.SLI, rd=rd, imm=value)

    def vec(self, op: Op, dst: int, a: int = 0, b: int = 0, n: int = 0, *, n_reg: int = 0,
            dst_reg: int = 0, a_reg: int = 0, bcast: int = 0, imm: float | None = None,
            rd: int = 0) -> None:
        self(op, dst=dst, a=a, b=b, n=n, n_reg=n_reg, dst_reg=dst_reg, a_reg=a_reg,
             bcast=bcast, imm=0 if imm is None else _f32_bits(imm), rd=rd)


@dataclass(frozen=True, kw_only=True)
class CompileOptions:
    """Choices the compiler leaves to the user (recorded in the binary's metadata)."""

    #: order independent work so that PIM channels and the vector unit overlap (see the module
    #: docstring); False gives the plain layer-by-layer order, the paper-faithful baseline
    overlap: bool = True
    # The paper's mapping techniques, each on by default; off gives the mapping without it, so
    # that its effect can be measured (docs/mapping.md, "Switching techniques off").
    #: weight segments back to back so they fill whole rows (off: each segment starts a row)
    row_fill: bool = True
    #: attention heads concatenated: a token's K heads side by side in its record, and as many
    #: q heads as the global buffer holds in one load for the scores (off: every K head in a
    #: row of its own, one q head per load)
    head_concat: bool = True
    #: the paper's KV layout: K row-major, V column-major (a row holds one feature over many
    #: tokens), so score.V is a MAC over tokens on the banks (off: V row-major like K, read to
    #: the ASIC, whose vector unit forms score.V in the MAC's order, bit-identical)
    kv_layout: bool = True

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class CompileReport:
    """What the compiler tells a user about the placement."""

    model: str
    machine: str
    params: int
    max_tokens: int
    instructions: int
    weight_bytes: int
    kv_bytes: int
    used_bytes: int
    capacity_bytes: int
    row_utilisation: float
    row_hit_bound: float
    vmem_words: int
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Compiler:
    """Plans the placement, fills the DRAM image and emits the decode-step program."""

    def __init__(self, config: MachineConfig, weights: GPTWeights, max_tokens: int | None = None,
                 with_image: bool = True, progress: Callable[[str], None] | None = None,
                 options: CompileOptions | None = None):
        self.cfg = config
        self.opts = options or CompileOptions()
        self.w = weights
        self.spec: GPTSpec = weights.spec
        self.with_image = with_image
        self.progress = progress or (lambda _msg: None)
        s, g = self.spec, config.geometry
        self.max_tokens = s.n_ctx if max_tokens is None else max_tokens
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) \
                or self.max_tokens <= 0:
            raise PimgptError(f"--max-tokens must be a positive integer, not {self.max_tokens!r}")
        if self.max_tokens > s.n_ctx:
            raise PimgptError(f"--max-tokens {self.max_tokens} exceeds the context of model "
                              f"{s.name} ({s.n_ctx} positions)")
        self.lanes = g.mac_lanes
        self.banks = g.banks
        self.nb = g.banks_per_channel
        self.nc = g.channels
        self.all_ch = (1 << self.nc) - 1
        # input chunk of the tiled VMMs (and the q heads of one load): the whole global buffer,
        # or half of it when the machine double-buffers it (chunks alternate halves)
        self.chunk = g.chunk_elems
        self.gb_half = 0  # the half the next chunk goes to (double-buffered machines)
        dhp = round_up(s.d_head, self.lanes)
        if dhp > self.chunk or dhp > g.row_elems:
            raise PimgptError(f"model {s.name}: a head of {s.d_head} values (padded {dhp}) "
                              f"does not fit a row ({g.row_elems}) and the global buffer "
                              f"({self.chunk}{' per half' if g.gb_double_buffer else ''}) of "
                              f"machine '{config.name}'")
        self.e = Emitter()
        self.dram = DramAllocator(config)
        self.vmem = VmemAllocator(config)

    # --- placement -------------------------------------------------------------------------

    def _plan(self) -> None:
        s, g = self.spec, self.cfg.geometry
        d, f, L = s.d_model, s.d_ff, s.n_layer
        align = 0 if self.opts.row_fill else g.row_elems
        mat = lambda name, d_in, d_out: MatrixPlacement(  # noqa: E731
            self.dram.alloc(name, "matrix", MatrixPlacement.size_for(
                d_in, d_out, self.banks, self.chunk, self.lanes, align), used=0),
            d_in, d_out, self.banks, self.chunk, self.lanes, align)
        self.mats: dict[str, MatrixPlacement] = {}
        self.mats["wte.weight"] = mat("wte.weight", d, s.vocab)
        if not s.tied_head:
            self.mats["lm_head.weight"] = mat("lm_head.weight", d, s.vocab)
        self.mats["wpe.weight"] = mat("wpe.weight", d, s.n_ctx)
        for i in range(L):
            p = f"h.{i}."
            self.mats[p + "attn.c_attn.weight"] = mat(p + "attn.c_attn.weight", d, 3 * d)
            self.mats[p + "attn.c_proj.weight"] = mat(p + "attn.c_proj.weight", d, d)
            self.mats[p + "mlp.c_fc.weight"] = mat(p + "mlp.c_fc.weight", d, f)
            self.mats[p + "mlp.c_proj.weight"] = mat(p + "mlp.c_proj.weight", f, d)
        for m in self.mats.values():  # real weights per bank, for the row-utilisation figure
            m.region.used = ceil_div(m.d_in * m.d_out, self.banks)
        # small vectors: each split into one column-aligned piece per channel (so a vector is
        # read by all channels at once), each vector in the next bank of every channel
        vec_names = [n for n, shp in s.tensor_shapes().items() if len(shp) == 1]
        per_bank = [0] * self.banks
        homes: dict[str, list[tuple[int, int, int, int]]] = {}
        for idx, name in enumerate(vec_names):
            length = s.tensor_shapes()[name][0]
            piece = round_up(ceil_div(length, self.nc), self.lanes)
            homes[name] = []
            for c, lo in enumerate(range(0, length, piece)):
                bank = c * self.nb + idx % self.nb
                n = min(piece, length - lo)
                homes[name].append((bank, per_bank[bank], lo, n))
                per_bank[bank] += round_up(n, self.lanes)
        vreg = self.dram.alloc("vectors", "vectors", max(per_bank),
                               used=ceil_div(sum(s.tensor_shapes()[n][0] for n in vec_names),
                                             self.banks))
        for name, pieces in homes.items():
            homes[name] = [(bank, vreg.start + off, lo, n) for bank, off, lo, n in pieces]
        self.vectors = VectorPlacement(vreg, homes)
        self.weights_top = self.dram.top
        # KV cache, reserved up front for max_tokens positions
        tokens_per_vrow = min(g.row_elems, g.gb_elems)
        concat = self.opts.head_concat
        ksize = KPlacement.size_for(self.max_tokens, s.n_head, s.d_head, self.banks,
                                    g.row_elems, self.lanes, concat)
        vsize = VPlacement.size_for(s.n_head, s.d_head, self.nc, self.nb, g.row_elems,
                                    tokens_per_vrow, self.max_tokens)
        # V row-major (kv_layout off): placed like K, for every token a block of `lanes`
        # tokens reads (the last block may run past the last position)
        vrow = not self.opts.kv_layout
        if vrow:
            vsize = KPlacement.size_for(round_up(self.max_tokens, self.lanes), s.n_head,
                                        s.d_head, self.banks, g.row_elems, self.lanes, concat)
        self.kp: list[KPlacement] = []
        self.vp: list[VPlacement] = []
        self.vkp: list[KPlacement] = []
        for i in range(L):
            kr = self.dram.alloc(f"h.{i}.k_cache", "k_cache", ksize,
                                 used=ceil_div(self.max_tokens, self.banks) * d)
            self.kp.append(KPlacement(kr, s.n_head, s.d_head, self.banks, g.row_elems,
                                      self.lanes, concat))
            vr = self.dram.alloc(f"h.{i}.v_cache", "v_cache", vsize,
                                 used=ceil_div(self.max_tokens * d, self.banks))
            if vrow:
                self.vkp.append(KPlacement(vr, s.n_head, s.d_head, self.banks, g.row_elems,
                                           self.lanes, concat))
            else:
                self.vp.append(VPlacement(vr, s.n_head, s.d_head, self.nc, self.nb, g.row_elems,
                                          tokens_per_vrow, self.max_tokens))
        if vrow and L:
            # BF16 rounding by a trip through a bank (the ASIC has no BF16 rounding of its
            # own): each head's probabilities (head h in bank h % banks) and the score.V sums
            self.mt_pad = round_up(self.max_tokens, self.lanes)
            self.p_rounds = ceil_div(s.n_head, self.banks)
            dp = s.n_head * self.kp[0].dhp
            self.v_scratch = self.dram.alloc("v_round", "scratch",
                                             self.p_rounds * self.mt_pad + dp, used=0)
        self.dram.check_capacity(f"model {s.name} with a {self.max_tokens}-token KV cache")

        # vector memory
        va = self.vmem.alloc
        pad_in = lambda n: round_up(n, self.chunk) + self.lanes  # noqa: E731  (zero tails)
        dpad = pad_in(d)
        self.v_x = va("x", d)
        self.v_ln = va("ln_out", dpad)
        # + banks_per_channel: the last head's last V burst may read past 3d (values unused)
        self.v_qkv = va("qkv", (self.mats["h.0.attn.c_attn.weight"].out_words + self.nb)
                        if L else 0)
        outs = [m.out_words for m in self.mats.values()]
        self.v_tmp = va("partial", max(outs))
        self.v_y = va("vmm_out", max(m.out_words for k, m in self.mats.items()
                                     if not k.startswith(("wte", "wpe", "lm_head"))) if L else 0)
        # a layer's biases and LayerNorm parameters, each in its own buffer so that all of
        # them are fetched at the start of the layer, ahead of the work that needs them
        self.v_params = {k: va(k, n) for k, n in (
            ("ln_1.weight", d), ("ln_1.bias", d), ("attn.c_attn.bias", 3 * d),
            ("attn.c_proj.bias", d), ("ln_2.weight", d), ("ln_2.bias", d),
            ("mlp.c_fc.bias", f), ("mlp.c_proj.bias", d))}
        self.v_s1 = va("scalar", 16)
        self.v_emb = va("emb_pos", d)
        self.v_qpad = va("q_padded", pad_in(s.n_head * round_up(s.d_head, self.lanes)))
        self.s_stride = round_up(ceil_div(self.max_tokens, self.banks) * self.banks, 16) + 16
        self.v_scores = va("scores", s.n_head * self.s_stride)
        self.v_head_scalars = va("head_scalars", s.n_head)
        fs = ceil_div(s.d_head, self.nb)
        rounds = ceil_div(s.n_head, self.nc)
        self.v_opad = va("attn_partial", rounds * fs * self.nc * self.nb)
        self.v_otmp = va("attn_partial_tmp", rounds * fs * self.nc * self.nb)
        self.v_o = va("attn_out", pad_in(d))
        self.v_act = va("ffn_act", pad_in(f))
        self.v_logits = va("logits", self.mats["wte.weight"].out_words)
        if vrow and L:
            dp = s.n_head * self.kp[0].dhp
            # a block of V rows, then their products; and the block's probabilities
            self.v_vrows = [(va("v_rows", self.lanes * dp), va("v_probs", s.n_head * self.lanes))]
            self.v_vacc = va("v_acc", dp)  # score.V of the current token chunk
            self.v_vround = va("v_rounded", dp)  # ... read back rounded to BF16
            self.v_vout = self.v_o if dp == d else va("v_out", dp)  # heads padded to columns
        self.vmem.check_capacity(f"model {s.name}", self.cfg.asic.vmem_words)
        # overlap: a second set of the buffers a layer needs first (layer i + 1's are fetched
        # during layer i's softmax) and a second partial-sum buffer for the layers' VMMs, each
        # only where vector memory allows
        self.param_sets = [self.v_params]
        self.tmps: list[tuple[int, int]] = [(self.v_tmp, max(outs))]
        if self.opts.overlap and L:
            words = {"ln_1.weight": d, "ln_1.bias": d, "attn.c_attn.bias": 3 * d}
            if self.vmem.fits(sum(round_up(n, 16) for n in words.values())):
                self.param_sets.append({**self.v_params,
                                        **{k: va(k + "#1", n) for k, n in words.items()}})
            layer_out = max(m.out_words for k, m in self.mats.items() if k.startswith("h."))
            if self.vmem.fits(layer_out):
                self.tmps.append((va("partial#1", layer_out), layer_out))
            if vrow:
                # V row-major: a second block buffer, so one block's V rows are read while
                # the vector unit works on the other's
                dp = s.n_head * self.kp[0].dhp
                if self.vmem.fits(round_up(self.lanes * dp, 16) + s.n_head * self.lanes):
                    self.v_vrows.append((va("v_rows#1", self.lanes * dp),
                                         va("v_probs#1", s.n_head * self.lanes)))

    # --- image -------------------------------------------------------------------------------

    def _fill_image(self) -> np.ndarray | None:
        if not self.with_image:
            return None
        image = np.zeros((self.banks, self.dram.top), np.uint16)
        for name, m in self.mats.items():
            self.progress(name)
            wt = self.w.tensor(name)
            # Conv1D weights are [in, out]; embeddings/head are [vocab, d] = [out, in] already
            if name.startswith(("wte", "wpe", "lm_head")):
                bits = f32_to_bf16_bits(np.asarray(wt, dtype=np.float32))
            else:
                bits = f32_to_bf16_bits(np.asarray(wt, dtype=np.float32).T)
            m.fill(image, bits)
            del wt, bits
        for name, pieces in self.vectors.homes.items():
            bits = f32_to_bf16_bits(self.w.f32(name))
            for bank, addr, lo, n in pieces:
                image[bank, addr:addr + n] = bits[lo:lo + n]
        return image

    # --- code ----------------------------------------------------------------------------------

    def _gb_base(self) -> int:
        """First global-buffer column for the next input chunk: 0, or on a double-buffered
        machine the two halves in turn, so a chunk is written while the previous one's MACs
        still read the other half."""
        g = self.cfg.geometry
        if not g.gb_double_buffer:
            return 0
        base = self.gb_half * g.chunk_cols
        self.gb_half ^= 1
        return base

    def _load_vector(self, name: str, vaddr: int) -> None:
        for bank, addr, lo, n in self.vectors.homes[name]:
            self.e(Op.RD_BANK, bank=bank, addr=addr, n=n, vaddr=vaddr + lo)

    def _prefetch(self, layer: int, part: str = "all") -> None:
        """Read layer ``layer``'s parameter vectors into its buffer set (after the last layer:
        the final LayerNorm's, into the ln_1 buffers). ``part``: "early" (what the layer needs
        before attention), "late" (the rest) or "all"."""
        params = self.param_sets[layer % len(self.param_sets)]
        if layer == self.spec.n_layer:
            if part != "late":
                self._load_vector("ln_f.weight", params["ln_1.weight"])
                self._load_vector("ln_f.bias", params["ln_1.bias"])
            return
        for name, vaddr in params.items():
            if part == "all" or (part == "early") == (name in EARLY_PARAMS):
                self._load_vector(f"h.{layer}.{name}", vaddr)

    def _vmm(self, name: str, x: int, y: int, bias: int | None,
             residual: int | None = None) -> MatrixPlacement:
        """y[0:d_out] = x @ W (+ bias), then residual[0:d_out] += y when ``residual`` is given:
        chunk by chunk, every group a row pass on all banks."""
        m, e = self.mats[name], self.e
        # partial sums alternate between buffers, so chunk k + 1's read-out need not wait for
        # the vector unit to finish adding chunk k's
        tmps = [a for a, words in self.tmps if words >= m.out_words]
        last = len(m.chunks) - 1
        # overlap: the last chunk's additions run group by group behind its read-outs, so only
        # the last group's are left when the last row pass ends
        per_group = self.opts.overlap
        for k, (lo, length, seg, _off) in enumerate(m.chunks):
            cols = seg // self.lanes
            gb = self._gb_base()
            e(Op.WR_GB, ch_mask=self.all_ch, gb=gb, n=cols, vaddr=x + lo)
            tmp = tmps[(k - 1) % len(tmps)]
            dst = y if k == 0 else tmp
            for grp in range(m.groups):
                e(Op.MAC_ABK, ch_mask=self.all_ch, addr=m.segment_addr(k, grp), n=cols, gb=gb)
                e(Op.RD_MAC, ch_mask=self.all_ch, vaddr=dst + grp * self.banks)
                if per_group and k == last:
                    o = grp * self.banks
                    self._vmm_tail(y + o, tmp + o if k else None,
                                   None if bias is None else bias + o,
                                   None if residual is None else residual + o,
                                   min(self.banks, m.d_out - o))
            if k and not (per_group and k == last):
                e.vec(Op.VADD, y, y, tmp, m.d_out)
        if not per_group:
            self._vmm_tail(y, None, bias, residual, m.d_out)
        return m

    def _vmm_tail(self, y: int, tmp: int | None, bias: int | None, residual: int | None,
                  n: int) -> None:
        """y += tmp; y += bias; residual += y (those given), over n words."""
        for a, b in ((y, tmp), (y, bias)):
            if b is not None:
                self.e.vec(Op.VADD, a, a, b, n)
        if residual is not None:
            self.e.vec(Op.VADD, residual, residual, y, n)

    def _layernorm(self, gamma: int, beta: int, src: int, dst: int) -> None:
        e, d = self.e, self.spec.d_model
        s = self.v_s1
        inv_n = 1.0 / d
        e.vec(Op.VSUM, s, src, n=d)
        e.vec(Op.VMULI, s, s, n=1, imm=inv_n)
        e.vec(Op.VSUB, dst, src, s, d, bcast=1)
        e.vec(Op.VMUL, self.v_o, dst, dst, d)  # v_o is free here: squares
        e.vec(Op.VSUM, s + 1, self.v_o, n=d)
        e.vec(Op.VMULI, s + 1, s + 1, n=1, imm=inv_n)
        e.vec(Op.VADDI, s + 1, s + 1, n=1, imm=self.spec.ln_eps)
        e.vec(Op.VRSQRT, s + 1, s + 1, n=1)
        e.vec(Op.VMUL, dst, dst, s + 1, d, bcast=1)
        e.vec(Op.VMUL, dst, dst, gamma, d)
        e.vec(Op.VADD, dst, dst, beta, d)

    def _embed(self) -> None:
        """x = wte[token] + wpe[pos], read from the matrices' placement (tied LM head)."""
        e = self.e
        for table, reg, dst in (("wte.weight", R_TOK, self.v_x), ("wpe.weight", R_POS,
                                                                    self.v_emb)):
            m = self.mats[table]
            e(Op.SMOD, rd=R_A, rs=reg, imm=self.banks)  # bank
            e(Op.SDIV, rd=R_B, rs=reg, imm=self.banks)  # group
            for k, (lo, length, seg, _off) in enumerate(m.chunks):
                e(Op.SMUL, rd=R_C, rs=R_B, imm=m.stride(k))
                e(Op.RD_BANK, bank=0, bank_reg=R_A, addr=m.segment_addr(k, 0), addr_reg=R_C,
                  n=length, vaddr=dst + lo)
        e.vec(Op.VADD, self.v_x, self.v_x, self.v_emb, self.spec.d_model)

    def _attention(self, layer: int, after_scores: Callable[[], None]) -> None:
        """One layer's attention; ``after_scores`` emits channel work that may run while the
        ASIC computes the last head group's softmax (called in overlap mode only)."""
        s, e = self.spec, self.e
        overlap = self.opts.overlap
        d, H, dh = s.d_model, s.n_head, s.d_head
        kp = self.kp[layer]
        vp = None if not self.opts.kv_layout else self.vp[layer]
        dhp = kp.dhp
        q, k, v = self.v_qkv, self.v_qkv + d, self.v_qkv + 2 * d

        # K append: token pos -> bank pos % banks, slot pos // banks
        e(Op.SMOD, rd=R_A, rs=R_POS, imm=self.banks)
        e(Op.SDIV, rd=R_B, rs=R_POS, imm=self.banks)
        self._slot_base(kp, R_B, R_C)  # R_C = slot base address (relative to region start)
        runs = self._k_runs(kp)
        for h0, nh in runs:
            e(Op.WR_BANK, bank=0, bank_reg=R_A, addr=kp.region.start + kp.head_offset(h0),
              addr_reg=R_C, n=nh * dh, vaddr=k + h0 * dh)
        vrow = not self.opts.kv_layout
        if vrow:
            # V row-major: K's record layout and slot, in bank vrow_bank(pos)
            vkp = self.vkp[layer]
            self._v_row_bank(R_POS, R_D)
            for h0, nh in runs:
                e(Op.WR_BANK, bank=0, bank_reg=R_D, addr=vkp.region.start + vkp.head_offset(h0),
                  addr_reg=R_C, n=nh * dh, vaddr=v + h0 * dh)

        if not overlap and not vrow:
            # V append: one element per feature, column-major rows; one burst per feature
            # slot: one value into each bank (overlap mode: inside score.V, see _score_v)
            self._v_offset(vp, R_A)
            for h in range(H):
                c, rnd = h % self.nc, h // self.nc
                for fslot in range(vp.feature_slots):
                    e(Op.WR_ABK, ch_mask=1 << c, addr=vp.row_addr(rnd, fslot, 0),
                      addr_reg=R_A, vaddr=v + h * dh + fslot * self.nb)

        # q with each head padded to whole columns (zero tails stay zero)
        qsrc = q
        if dh != dhp:
            for h in range(H):
                e.vec(Op.VMOV, self.v_qpad + h * dhp, q + h * dh, n=dh)
            qsrc = self.v_qpad
        # scores[h][t] = q_h . k_t,h for t in blocks of `banks` tokens, heads in GB loads
        e(Op.SDIV, rd=R_N, rs=R_POS, imm=self.banks)
        e(Op.SADD, rd=R_N, rs=R_N, imm=1)  # blocks
        # heads concatenated in one global-buffer load (off: one head per load and loop)
        hpg = self.chunk // dhp if self.opts.head_concat else 1
        cols = dhp // self.lanes
        groups = list(range(0, H, hpg))
        for h0 in groups:
            heads = range(h0, min(H, h0 + hpg))
            gb = self._gb_base()
            e(Op.WR_GB, ch_mask=self.all_ch, gb=gb, n=len(heads) * cols, vaddr=qsrc + h0 * dhp)
            e(Op.SLI, rd=R_LOOP, imm=0)
            top = e.pc
            self._slot_base(kp, R_LOOP, R_C)
            e(Op.SMUL, rd=R_D, rs=R_LOOP, imm=self.banks)
            for h in heads:
                e(Op.MAC_ABK, ch_mask=self.all_ch, addr=kp.region.start + kp.head_offset(h),
                  addr_reg=R_C, n=cols, gb=gb + (h - h0) * cols)
                e(Op.RD_MAC, ch_mask=self.all_ch, vaddr=self.v_scores + h * self.s_stride,
                  vaddr_reg=R_D)
            e(Op.SADD, rd=R_LOOP, rs=R_LOOP, imm=1)
            e(Op.BLT, rs=R_LOOP, rt=R_N, imm=top)
            if overlap:
                # this group's softmax runs while the channels compute the next group's
                # scores; after the last group, the channels fetch the next layer's
                # parameters during the softmax
                if h0 == groups[-1]:
                    after_scores()
                for r0 in range(h0 - h0 % self.nc, heads[-1] + 1, self.nc):
                    self._softmax(range(max(r0, h0), min(r0 + self.nc, heads[-1] + 1)))
        if not overlap:
            for r0 in range(0, H, self.nc):
                self._softmax(range(r0, min(H, r0 + self.nc)))
        if vrow:
            self._score_v_rows(layer)
        else:
            self._score_v(layer)

    def _softmax(self, heads: range) -> None:
        """Softmax over pos + 1 scores of each head, then zero the rest of the last column.

        Each step is emitted for every head before the next step, so the vector unit streams
        one head while the previous head's result is in its pipeline, and a score.V round can
        start while the next round's softmax runs.
        """
        e, dh = self.e, self.spec.d_head
        scale = 1.0 / math.sqrt(dh)
        rows = {h: self.v_scores + h * self.s_stride for h in heads}
        sc = {h: self.v_head_scalars + h for h in heads}
        steps = (
            lambda h: e.vec(Op.VMULI, rows[h], rows[h], n=0, n_reg=R_LEN, imm=scale),
            lambda h: e.vec(Op.VMAX, sc[h], rows[h], n=0, n_reg=R_LEN),
            lambda h: e.vec(Op.VSUB, rows[h], rows[h], sc[h], n=0, n_reg=R_LEN, bcast=1),
            lambda h: e.vec(Op.VEXP, rows[h], rows[h], n=0, n_reg=R_LEN),
            lambda h: e.vec(Op.VSUM, sc[h], rows[h], n=0, n_reg=R_LEN),
            lambda h: e.vec(Op.VRECIP, sc[h], sc[h], n=1),
            lambda h: e.vec(Op.VMUL, rows[h], rows[h], sc[h], n=0, n_reg=R_LEN, bcast=1),
            lambda h: e.vec(Op.VSET, rows[h], n=self.lanes, dst_reg=R_LEN, imm=0.0),
        )
        for step in steps:
            for h in heads:
                step(h)

    def _v_offset(self, vp: VPlacement, r_out: int) -> None:
        """r_out = offset of token pos's V values from their rows' (round, slot) address."""
        e = self.e
        e(Op.SDIV, rd=r_out, rs=R_POS, imm=vp.tokens_per_row)
        e(Op.SMUL, rd=r_out, rs=r_out, imm=self.cfg.geometry.row_elems)
        e(Op.SMOD, rd=R_B, rs=R_POS, imm=vp.tokens_per_row)
        e(Op.SADD, rd=r_out, rs=r_out, rt=R_B)

    def _score_v(self, layer: int) -> None:
        """score . V: per round every channel takes one head; token chunks of one row.

        In overlap mode the current token's V is appended here, each feature slot's burst just
        before the last token chunk's MACs read that row, so one activation serves both.
        """
        s, e = self.spec, self.e
        H, dh = s.n_head, s.d_head
        v = self.v_qkv + 2 * s.d_model
        vp = self.vp[layer]
        tpr = vp.tokens_per_row
        full_cols = tpr // self.lanes
        append = self.opts.overlap
        e(Op.SDIV, rd=R_N, rs=R_POS, imm=tpr)
        e(Op.SADD, rd=R_N, rs=R_N, imm=1)  # token chunks
        if append:
            self._v_offset(vp, R_V)
            e(Op.SADD, rd=R_W, rs=R_N, imm=-1)
        slots = self.nc * self.nb
        for rnd in range(vp.rounds):
            heads = [h for h in range(rnd * self.nc, min(H, (rnd + 1) * self.nc))]
            mask = (1 << len(heads)) - 1
            base = self.v_opad + rnd * vp.feature_slots * slots

            def chunk_body(dst: int) -> None:
                # R_T = chunk index; columns = min(full, ceil((len - R_T * tpr) / 16))
                e(Op.SMUL, rd=R_A, rs=R_T, imm=tpr)
                e(Op.SMUL, rd=R_B, rs=R_A, imm=-1)
                e(Op.SADD, rd=R_B, rs=R_B, rt=R_LEN, imm=self.lanes - 1)
                e(Op.SDIV, rd=R_B, rs=R_B, imm=self.lanes)
                e(Op.SLI, rd=R_C, imm=full_cols)
                skip = e(Op.BLT, rs=R_B, rt=R_C, imm=0)
                e(Op.SADD, rd=R_B, rs=R_C)
                e.patch(skip, imm=e.pc)
                for c, h in enumerate(heads):
                    e(Op.WR_GB, ch_mask=1 << c, gb=0, n=0, n_reg=R_B,
                      vaddr=self.v_scores + h * self.s_stride, vaddr_reg=R_A)
                e(Op.SMUL, rd=R_D, rs=R_T, imm=self.cfg.geometry.row_elems)
                for fslot in range(vp.feature_slots):
                    if append:
                        skip = e(Op.BLT, rs=R_T, rt=R_W, imm=0)  # not the last chunk
                        for c, h in enumerate(heads):
                            e(Op.WR_ABK, ch_mask=1 << c, addr=vp.row_addr(rnd, fslot, 0),
                              addr_reg=R_V, vaddr=v + h * dh + fslot * self.nb)
                        e.patch(skip, imm=e.pc)
                    e(Op.MAC_ABK, ch_mask=mask, addr=vp.row_addr(rnd, fslot, 0), addr_reg=R_D,
                      n=0, n_reg=R_B, gb=0)
                    e(Op.RD_MAC, ch_mask=mask, vaddr=dst + fslot * slots)

            e(Op.SLI, rd=R_T, imm=0)
            chunk_body(base)
            e(Op.SLI, rd=R_T, imm=1)
            exit_branch = e(Op.BGE, rs=R_T, rt=R_N, imm=0)
            top = e.pc
            chunk_body(self.v_otmp)
            e.vec(Op.VADD, base, base, self.v_otmp, vp.feature_slots * slots)
            e(Op.SADD, rd=R_T, rs=R_T, imm=1)
            e(Op.BLT, rs=R_T, rt=R_N, imm=top)
            e.patch(exit_branch, imm=e.pc)
            # gather the head outputs into o[h * dh + i]
            for c, h in enumerate(heads):
                for fslot in range(vp.feature_slots):
                    n = min(self.nb, dh - fslot * self.nb)
                    e.vec(Op.VMOV, self.v_o + h * dh + fslot * self.nb,
                          base + fslot * slots + c * self.nb, n=n)

    def _v_row_bank(self, r_t: int, r_out: int) -> None:
        """r_out = bank of token r_t's row-major V record: (t mod C) * NB + (t div C) mod NB,
        consecutive tokens in consecutive channels (so a block's reads use every channel);
        a bijection of t mod banks, so the slot is t div banks as for K. Uses R_T."""
        e = self.e
        e(Op.SMOD, rd=r_out, rs=r_t, imm=self.nc)
        e(Op.SMUL, rd=r_out, rs=r_out, imm=self.nb)
        e(Op.SDIV, rd=R_T, rs=r_t, imm=self.nc)
        e(Op.SMOD, rd=R_T, rs=R_T, imm=self.nb)
        e(Op.SADD, rd=r_out, rs=r_out, rt=R_T)

    def _v_block_banks(self, r_t0: int, r_out: int) -> list[int] | None:
        """For a block of ``lanes`` tokens from r_t0 (a multiple of lanes): emit r_out such
        that token r_t0 + l's bank is r_out + offsets[l], and return the offsets; None when
        the banks do not follow that form (each token's bank is then computed)."""
        e, nc, nb, lanes = self.e, self.nc, self.nb, self.lanes
        if self.banks % lanes:
            return None
        # u = t0 mod banks, a multiple of lanes; u + l < banks
        if lanes % nc == 0:  # u mod C = 0: bank = (l mod C) NB + l div C + u / C
            e(Op.SMOD, rd=r_out, rs=r_t0, imm=self.banks)
            e(Op.SDIV, rd=r_out, rs=r_out, imm=nc)
            return [(t % nc) * nb + t // nc for t in range(lanes)]
        if nc % lanes == 0:  # (u + l) mod C = u mod C + l: bank = l NB + bank(u)
            e(Op.SMOD, rd=R_D, rs=r_t0, imm=self.banks)
            self._v_row_bank(R_D, r_out)
            return [t * nb for t in range(lanes)]
        return None

    def _score_v_rows(self, layer: int) -> None:
        """score . V with V row-major (``kv_layout`` off): V rows read to the ASIC, whose vector
        unit forms each head's weighted sum in exactly the order of the MAC path, so the
        results are bit-identical (docs/numerics.md; GoldenGPT):

        - probabilities rounded to BF16 (the MAC path's WR_GB does that) by a trip through a
          bank: WR_BANK rounds, RD_BANK reads back exactly;
        - per block of ``lanes`` tokens (one MAC column): the products p[t] * V[t, :] (exact, as
          the MAC's), stored at slot bitreverse(t mod lanes) so that each level of the MAC's
          balanced adder tree (lane 2i + lane 2i+1) is ONE vector add of two halves;
        - the column sums accumulated from +0 in token order over a token chunk of
          min(row, buffer) elements (the MAC path's rows), the chunk's sum rounded to BF16 (the
          read-out, again through a bank), the chunks added in binary32 (the first copied).

        With two block buffers (overlap mode, where vector memory allows) the loop body is
        emitted twice, so one block's V rows are read while the other's are computed.
        """
        s, e, g = self.spec, self.e, self.cfg.geometry
        H = s.n_head
        kp = self.vkp[layer]
        dhp, lanes = kp.dhp, self.lanes
        dp = H * dhp
        acc = self.v_vacc
        tpc = min(g.row_elems, g.gb_elems)  # tokens per chunk (GoldenGPT.v_chunk)
        runs = self._k_runs(kp)
        bits = max(lanes.bit_length() - 1, 0)
        rev = [int(format(t, f"0{bits}b")[::-1], 2) if bits else 0 for t in range(lanes)]
        scr = self.v_scratch.start
        acc_bank, acc_addr = H % self.banks, scr + self.p_rounds * self.mt_pad

        # probabilities -> BF16 (in place)
        for op in (Op.WR_BANK, Op.RD_BANK):
            for h in range(H):
                e(op, bank=h % self.banks, addr=scr + (h // self.banks) * self.mt_pad, n=0,
                  n_reg=R_LEN, vaddr=self.v_scores + h * self.s_stride)

        def block(vb: int, stage: int) -> None:
            # the block's V records, token t of the block into slot rev[t]
            e(Op.SDIV, rd=R_B, rs=R_V, imm=self.banks)
            self._slot_base(kp, R_B, R_C)
            offsets = self._v_block_banks(R_V, R_A)
            for t in range(lanes):
                if offsets is None:
                    e(Op.SADD, rd=R_B, rs=R_V, imm=t)
                    self._v_row_bank(R_B, R_A)
                    e(Op.SDIV, rd=R_B, rs=R_B, imm=self.banks)
                    self._slot_base(kp, R_B, R_C)
                for h0, nh in runs:
                    e(Op.RD_BANK, bank=0 if offsets is None else offsets[t], bank_reg=R_A,
                      addr=kp.region.start + kp.head_offset(h0), addr_reg=R_C, n=nh * dhp,
                      vaddr=vb + rev[t] * dp + h0 * dhp)
            for h in range(H):
                e.vec(Op.VMOV, stage + h * lanes, self.v_scores + h * self.s_stride, n=lanes,
                      a_reg=R_V)
            for t in range(lanes):
                for h in range(H):
                    at = vb + rev[t] * dp + h * dhp
                    e.vec(Op.VMUL, at, at, stage + h * lanes + t, dhp, bcast=1)
            half = lanes // 2
            while half:
                e.vec(Op.VADD, vb, vb, vb + half * dp, half * dp)
                half //= 2
            e.vec(Op.VADD, acc, acc, vb, dp)
            e(Op.SADD, rd=R_V, rs=R_V, imm=lanes)

        # R_V: first token of the block; R_W: end of the current token chunk
        e(Op.SLI, rd=R_V, imm=0)
        e(Op.SLI, rd=R_W, imm=0)
        outer = e.pc
        e.vec(Op.VSET, acc, n=dp, imm=0.0)
        e(Op.SADD, rd=R_W, rs=R_W, imm=tpc)
        inner = e.pc
        exits = []
        for i, (vb, stage) in enumerate(self.v_vrows):
            block(vb, stage)
            exits.append(e(Op.BGE, rs=R_V, rt=R_LEN, imm=0))
            if i < len(self.v_vrows) - 1:
                exits.append(e(Op.BGE, rs=R_V, rt=R_W, imm=0))
        e(Op.BLT, rs=R_V, rt=R_W, imm=inner)
        for pc in exits:
            e.patch(pc, imm=e.pc)
        # the chunk's sums, read out as BF16; the first chunk's copied, the others added
        e(Op.WR_BANK, bank=acc_bank, addr=acc_addr, n=dp, vaddr=acc)
        e(Op.SLI, rd=R_C, imm=tpc)
        later = e(Op.BLT, rs=R_C, rt=R_W, imm=0)
        e(Op.RD_BANK, bank=acc_bank, addr=acc_addr, n=dp, vaddr=self.v_vout)
        skip = e(Op.BGE, rs=R0, rt=R0, imm=0)
        e.patch(later, imm=e.pc)
        e(Op.RD_BANK, bank=acc_bank, addr=acc_addr, n=dp, vaddr=self.v_vround)
        e.vec(Op.VADD, self.v_vout, self.v_vout, self.v_vround, dp)
        e.patch(skip, imm=e.pc)
        e(Op.BLT, rs=R_V, rt=R_LEN, imm=outer)
        if self.v_vout != self.v_o:
            for h in range(H):
                e.vec(Op.VMOV, self.v_o + h * s.d_head, self.v_vout + h * dhp, n=s.d_head)

    def _slot_base(self, kp: KPlacement, r_slot: int, r_out: int) -> None:
        """r_out = address of token slot r_slot's record, relative to the region start."""
        e, row = self.e, self.cfg.geometry.row_elems
        if kp.tokens_per_row:
            e(Op.SDIV, rd=r_out, rs=r_slot, imm=kp.tokens_per_row)
            e(Op.SMUL, rd=r_out, rs=r_out, imm=row)
            e(Op.SMOD, rd=R_T, rs=r_slot, imm=kp.tokens_per_row)
            e(Op.SMUL, rd=R_T, rs=R_T, imm=kp.n_head * kp.dhp)
            e(Op.SADD, rd=r_out, rs=r_out, rt=R_T)
        else:
            e(Op.SMUL, rd=r_out, rs=r_slot, imm=kp.rows_per_token * row)

    @staticmethod
    def _k_runs(kp: KPlacement) -> list[tuple[int, int]]:
        """Groups of consecutive heads whose K segments are contiguous (one write each)."""
        if kp.d_head != kp.dhp:
            return [(h, 1) for h in range(kp.n_head)]
        runs: list[tuple[int, int]] = []
        for h in range(kp.n_head):
            if runs and kp.head_offset(h) == kp.head_offset(runs[-1][0]) + runs[-1][1] * kp.dhp:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((h, 1))
        return runs

    def _emit(self) -> None:
        s, e = self.spec, self.e
        f = s.d_ff
        e(Op.SADD, rd=R_LEN, rs=R_POS, imm=1)
        self._embed()
        # With two buffer sets, the parameters layer i + 1 needs first are fetched during layer
        # i's softmax, and the rest at its start, while the ASIC computes its first LayerNorm:
        # both are times when the channels would otherwise wait for the ASIC.
        ahead = len(self.param_sets) > 1
        if ahead:
            self._prefetch(0, "early")
        for i in range(s.n_layer):
            p = f"h.{i}."
            P = self.param_sets[i % len(self.param_sets)]
            self._prefetch(i, "late" if ahead else "all")
            self._layernorm(P["ln_1.weight"], P["ln_1.bias"], self.v_x, self.v_ln)
            self._vmm(p + "attn.c_attn.weight", self.v_ln, self.v_qkv, P["attn.c_attn.bias"])
            self._attention(i, (lambda i=i: self._prefetch(i + 1, "early")) if ahead
                            else lambda: None)
            self._vmm(p + "attn.c_proj.weight", self.v_o, self.v_y, P["attn.c_proj.bias"],
                      residual=self.v_x)
            self._layernorm(P["ln_2.weight"], P["ln_2.bias"], self.v_x, self.v_ln)
            self._vmm(p + "mlp.c_fc.weight", self.v_ln, self.v_y, P["mlp.c_fc.bias"])
            if self.opts.overlap:
                # per input chunk of the next VMM, so its first chunk need not wait for all
                for lo, length, _seg, _off in self.mats[p + "mlp.c_proj.weight"].chunks:
                    e.vec(Op.VGELU, self.v_act + lo, self.v_y + lo, n=length)
            else:
                e.vec(Op.VGELU, self.v_act, self.v_y, n=f)
            self._vmm(p + "mlp.c_proj.weight", self.v_act, self.v_y, P["mlp.c_proj.bias"],
                      residual=self.v_x)
        if not ahead:
            self._prefetch(s.n_layer)
        P = self.param_sets[s.n_layer % len(self.param_sets)]
        self._layernorm(P["ln_1.weight"], P["ln_1.bias"], self.v_x, self.v_ln)
        head = "wte.weight" if s.tied_head else "lm_head.weight"
        self._vmm(head, self.v_ln, self.v_logits, None)
        e.vec(Op.VARGMAX, 0, self.v_logits, n=s.vocab, rd=R_OUT)
        e(Op.SYNC)
        e(Op.END)
        if e.pc > self.cfg.asic.imem_words:
            raise PimgptError(f"model {s.name} compiles to {e.pc} instructions, but the "
                              f"controller's instruction memory holds "
                              f"{self.cfg.asic.imem_words} (asic.imem_words)")

    # --- report ------------------------------------------------------------------------------

    def _row_hit_bound(self) -> float:
        """Row-buffer hit rate of the weight streams of one step (static addresses only)."""
        row = self.cfg.geometry.row_elems
        cols = acts = 0
        open_row = None
        for ins in self.e.code:
            if ins.op is Op.MAC_ABK and ins.args.get("addr_reg", 0) == 0:
                first = ins.addr // row
                last = (ins.addr + ins.n * self.lanes - 1) // row
                acts += (last - first + 1) - (1 if open_row == first else 0)
                open_row = last
                cols += ins.n
        return 1.0 - acts / cols if cols else 0.0

    def compile(self) -> tuple[PimBinary, CompileReport]:
        """Plan, fill the image, emit the code; return the binary and its report."""
        t0 = time.perf_counter()
        self._plan()
        self._emit()
        image = self._fill_image()
        s, g = self.spec, self.cfg.geometry
        wregions = [r for r in self.dram.regions if r.kind in ("matrix", "vectors")]
        kv = [r for r in self.dram.regions if r.kind in ("k_cache", "v_cache")]
        alloc = sum(round_up(r.size, g.row_elems) for r in wregions)
        used = sum(r.used for r in wregions)
        report = CompileReport(
            model=s.name, machine=self.cfg.name, params=s.param_count(),
            max_tokens=self.max_tokens, instructions=self.e.pc,
            weight_bytes=self.weights_top * g.banks * BF16_BYTES,
            kv_bytes=sum(round_up(r.size, g.row_elems) for r in kv) * g.banks * BF16_BYTES,
            used_bytes=self.dram.top * g.banks * BF16_BYTES, capacity_bytes=g.capacity_bytes,
            row_utilisation=used / alloc if alloc else 0.0,
            row_hit_bound=self._row_hit_bound(), vmem_words=self.vmem.top,
            seconds=time.perf_counter() - t0)
        symbols = []
        for r in self.dram.regions:
            entry = {"name": r.name, "kind": r.kind, "start": r.start, "size": r.size}
            if r.name in self.mats:
                m = self.mats[r.name]
                entry.update(d_in=m.d_in, d_out=m.d_out, groups=m.groups,
                             chunks=[list(c) for c in m.chunks])
            symbols.append(entry)
        for name, pieces in self.vectors.homes.items():
            for bank, addr, lo, n in pieces:
                symbols.append({"name": name, "kind": "vector", "bank": bank, "start": addr,
                                "size": n, "offset": lo})
        meta = {
            "model": {k: getattr(s, k) for k in ("name", "n_layer", "d_model", "n_head", "vocab",
                                                 "n_ctx", "d_ff", "ln_eps", "tied_head")},
            "max_tokens": self.max_tokens,
            "options": self.opts.to_dict(),
            "image_elems": self.dram.top,
            "vmem": {name: addr for name, (addr, _n) in self.vmem.buffers.items()},
            # without the wall time: the same inputs must give the same bytes
            "report": {k: v for k, v in report.to_dict().items() if k != "seconds"},
        }
        binary = PimBinary(config=self.cfg, code=list(self.e.code), meta=meta, symbols=symbols,
                           constants=[], image=image)
        return binary, report


def compile_model(config: MachineConfig, weights: GPTWeights, max_tokens: int | None = None,
                  with_image: bool = True, progress: Callable[[str], None] | None = None,
                  options: CompileOptions | None = None) -> tuple[PimBinary, CompileReport]:
    """Compile ``weights`` for ``config``; see :class:`Compiler`."""
    return Compiler(config, weights, max_tokens, with_image, progress, options).compile()
