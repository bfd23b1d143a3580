"""Golden GPT: the model's arithmetic written directly from docs/numerics.md, no ISA involved.

It computes what the compiled program must compute, bit for bit, given the machine's numeric
parameters (MAC lanes, global-buffer chunk, row length, vector lanes): every VMM as BF16 MAC
streams over global-buffer-sized input chunks whose BF16 read-outs the ASIC adds in binary32,
attention scores and score.V likewise, and LayerNorm, softmax and GELU as the numerics module
defines them. The compiled ``.pimbin`` run on the functional machine must give the same logits
bit for bit and so the same tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from pimgpt.errors import PimgptError
from pimgpt.hdl.params import MachineConfig
from pimgpt.mapping.model import GPTWeights
from pimgpt.sim import numerics as nm

F32 = nm.F32


class GoldenGPT:
    """Bit-exact reference of the PIM-GPT computation for one model on one machine."""

    def __init__(self, config: MachineConfig, weights: GPTWeights):
        self.cfg = config
        self.spec = s = weights.spec
        g = config.geometry
        self.lanes = g.mac_lanes
        self.chunk = g.chunk_elems  # VMM input chunk: the buffer, or half of a double buffer
        self.v_chunk = min(g.row_elems, g.gb_elems)  # tokens per V row (compiler's layout)
        self.vlanes = config.asic.vector_lanes
        rb = lambda name: nm.round_bf16(weights.f32(name))  # noqa: E731
        self.wte = rb("wte.weight")
        self.wpe = rb("wpe.weight")
        self.head = self.wte if s.tied_head else rb("lm_head.weight")
        self.layers = []
        for i in range(s.n_layer):
            p = f"h.{i}."
            self.layers.append({k: (rb(p + k).T.copy() if k.endswith("weight") and "ln" not in k
                                    else rb(p + k)) for k in (
                "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")})
        self.lnf = (rb("ln_f.weight"), rb("ln_f.bias"))
        self.reset()

    def reset(self) -> None:
        self.k_cache: list[list[np.ndarray]] = [[] for _ in range(self.spec.n_layer)]
        self.v_cache: list[list[np.ndarray]] = [[] for _ in range(self.spec.n_layer)]

    def vmm(self, x: np.ndarray, wt: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """x @ W with ``wt`` = W transposed ([d_out, d_in], BF16 values): chunked MAC streams."""
        chunk = chunk or self.chunk
        xb = nm.round_bf16(x)
        y = None
        for lo in range(0, xb.shape[0], chunk):
            part = nm.readout(nm.mac_dot(xb[lo:lo + chunk], wt[:, lo:lo + chunk], self.lanes))
            y = part if y is None else nm.binop("add", y, part)
        return y

    def _ln(self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
        return nm.layernorm(x, gamma, beta, self.spec.ln_eps, self.vlanes)

    def step(self, token: int, pos: int) -> np.ndarray:
        """Process one token at ``pos`` (positions must arrive in order); return the logits."""
        s = self.spec
        if s.n_layer and pos != len(self.k_cache[0]):
            raise PimgptError(f"golden model got position {pos}, expected "
                              f"{len(self.k_cache[0])}")
        d, H, dh = s.d_model, s.n_head, s.d_head
        scale = F32(1.0 / math.sqrt(dh))
        x = nm.binop("add", self.wte[token], self.wpe[pos])
        for i, L in enumerate(self.layers):
            h = self._ln(x, L["ln_1.weight"], L["ln_1.bias"])
            qkv = nm.binop("add", self.vmm(h, L["attn.c_attn.weight"]), L["attn.c_attn.bias"])
            q, k, v = qkv[:d], qkv[d:2 * d], qkv[2 * d:3 * d]
            self.k_cache[i].append(nm.round_bf16(k))
            self.v_cache[i].append(nm.round_bf16(v))
            K = np.stack(self.k_cache[i])  # (T, d)
            V = np.stack(self.v_cache[i])
            o = np.zeros(d, F32)
            for hh in range(H):
                sl = slice(hh * dh, (hh + 1) * dh)
                scores = nm.readout(nm.mac_dot(nm.round_bf16(q[sl]), K[:, sl], self.lanes))
                p = nm.round_bf16(nm.softmax(nm.binop("mul", scores, scale), self.vlanes))
                o[sl] = self.vmm(p, V[:, sl].T.copy(), self.v_chunk)
            a = nm.binop("add", self.vmm(o, L["attn.c_proj.weight"]), L["attn.c_proj.bias"])
            x = nm.binop("add", x, a)
            h = self._ln(x, L["ln_2.weight"], L["ln_2.bias"])
            f = nm.binop("add", self.vmm(h, L["mlp.c_fc.weight"]), L["mlp.c_fc.bias"])
            f = nm.binop("add", self.vmm(nm.vgelu(f), L["mlp.c_proj.weight"]),
                         L["mlp.c_proj.bias"])
            x = nm.binop("add", x, f)
        h = self._ln(x, *self.lnf)
        return self.vmm(h, self.head)

    def generate(self, prompt_ids: Sequence[int], n_tokens: int,
                 keep_logits: bool = False) -> tuple[list[int], list[np.ndarray]]:
        """Greedy tokens (and per-step logits) exactly as the machine produces them."""
        self.reset()
        prompt = [int(t) for t in prompt_ids]
        total = len(prompt) + max(n_tokens - 1, 0)
        out: list[int] = []
        logits_list: list[np.ndarray] = []
        token = prompt[0]
        for pos in range(total):
            if pos < len(prompt):
                token = prompt[pos]
            logits = self.step(token, pos)
            if keep_logits:
                logits_list.append(logits)
            token = nm.vargmax(logits)
            if pos >= len(prompt) - 1 and len(out) < n_tokens:
                out.append(token)
        return out, logits_list
