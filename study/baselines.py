"""Baselines the PIM figures are compared with: CPU measured here, a GPU measured or estimated.

CPU: one decode step (one token in, logits out, greedy argmax) with a KV cache already holding
``position`` tokens, timed on this machine for the same seeded weights the PIM side runs:

* ``numpy``: :class:`pimgpt.sim.reference.Float32GPT` (plain numpy float32, BLAS products), the
  project's reference model, stepping through its KV-cache path;
* ``torch`` (when importable): the same float32 model written with torch ops, the weights shared
  with numpy (no copy), a preallocated KV cache, ``torch.inference_mode``.

The cache is filled with random values instead of running a prefill: a step's time does not
depend on the cached values, only on how many there are, and a 1,023-token prefill of GPT2-XL
would cost minutes on two cores. Each position is timed ``repeats`` times after a warm-up step;
the median is reported.

GPU: measured with torch (float16, batch 1, KV cache) when CUDA is available; otherwise an
*estimate* for the NVIDIA T4, the paper's GPU: a bandwidth roofline, every weight (float16) and
the step's KV cache read once at the T4's peak DRAM bandwidth. It is a lower bound on the T4's
time (real batch-1 decoding also pays kernel launches and does not reach peak bandwidth), so the
PIM speed-up computed against it is a lower bound on the speed-up over a real T4.

Energy of a baseline = its time per token x an assumed power (sources in :data:`SOURCES`).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Sequence

import numpy as np

from pimgpt.errors import PimgptError

#: NVIDIA T4: peak memory bandwidth and board power.
T4_BANDWIDTH_GBPS = 320.0
T4_POWER_W = 70.0
#: Intel Xeon Gold 6154 (the paper's CPU): thermal design power, cores.
XEON_6154_TDP_W, XEON_6154_CORES = 200.0, 18
#: AMD EPYC 9654 (4th gen "Genoa", CPU family 25 model 17): default TDP and cores.
EPYC_9654_TDP_W, EPYC_9654_CORES = 360.0, 96

SOURCES: dict[str, str] = {
    "t4": "NVIDIA T4 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/tesla-t4/): "
          "16 GB GDDR6, 320+ GB/s, 70 W max power",
    "xeon_6154": "Intel Xeon Gold 6154 product page (ark.intel.com, product 120495): 18 cores, "
                 "3.0 GHz, 200 W TDP",
    "epyc_9654": "AMD EPYC 9654 product page (amd.com, 4th Gen EPYC 9004 series): 96 cores, "
                 "360 W default TDP",
}


def cpu_description() -> dict[str, Any]:
    """What this machine's CPU is, as far as /proc/cpuinfo and lscpu-style fields tell."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                k, v = k.strip(), v.strip()
                if k in ("model name", "cpu family", "model", "vendor_id") and k not in info:
                    info[k] = v
                if k == "flags" and "flags" not in info:
                    info["flags"] = v
    except OSError:
        pass
    flags = info.get("flags", "").split()
    mem_gb = None
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "model_name": info.get("model name", platform.processor() or "unknown"),
        "vendor": info.get("vendor_id"), "family": info.get("cpu family"),
        "model": info.get("model"), "logical_cpus": os.cpu_count(),
        "avx512": "avx512f" in flags, "hypervisor": "hypervisor" in flags,
        "memory_gib": None if mem_gb is None else round(mem_gb, 1),
        "python": platform.python_version(), "numpy": np.__version__,
    }


def cpu_power(desc: dict[str, Any], threads: int) -> dict[str, Any]:
    """The assumed power of the CPU cores a baseline used, with its reasoning and source.

    Per-core share of the package TDP x threads used: the measurement uses ``threads`` cores of
    a many-core server part, so charging the whole socket would inflate the CPU's energy.
    """
    if desc.get("vendor") == "AuthenticAMD" and desc.get("family") == "25" and \
            desc.get("model") == "17":
        per_core = EPYC_9654_TDP_W / EPYC_9654_CORES
        basis = (f"CPU family 25 model 17 is AMD Zen 4 'Genoa' (EPYC 9004); the exact part is "
                 f"hidden by the hypervisor, so the flagship EPYC 9654 is assumed: "
                 f"{EPYC_9654_TDP_W:g} W / {EPYC_9654_CORES} cores = {per_core:.2f} W per core")
        source = SOURCES["epyc_9654"]
    else:
        per_core = XEON_6154_TDP_W / XEON_6154_CORES
        basis = (f"CPU not identified; assumed the paper's Xeon Gold 6154 per-core share: "
                 f"{XEON_6154_TDP_W:g} W / {XEON_6154_CORES} cores = {per_core:.2f} W per core")
        source = SOURCES["xeon_6154"]
    return {"watts": per_core * threads, "per_core_watts": per_core, "threads": threads,
            "basis": basis + f", x {threads} thread(s) used", "source": source,
            "label": "assumption"}


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-touch of the weights, BLAS thread start-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_numpy(model, positions: Sequence[int], repeats: int, seed: int = 0) -> list[dict]:
    """Seconds per decode step of a :class:`Float32GPT` at each position (KV cache of
    ``position`` random tokens)."""
    s = model.spec
    rng = np.random.default_rng(seed)
    out = []
    for pos in positions:
        base = [(rng.standard_normal((s.n_head, pos, s.d_head), dtype=np.float32),
                 rng.standard_normal((s.n_head, pos, s.d_head), dtype=np.float32))
                for _ in range(s.n_layer)]

        def step() -> int:
            cache = list(base)  # the step appends to a copy of the list, not to ``base``
            # the reference's KV-cache path (what its generate() uses)
            hidden = model.forward_cached([1], cache)[-1]
            return int(np.argmax(hidden @ model.head.T))
        out.append({"position": pos, "seconds": _median_time(step, repeats)})
    return out


class TorchGPT:
    """The float32 GPT step in torch, sharing the numpy model's weight arrays."""

    def __init__(self, model, max_tokens: int, device: str = "cpu", dtype=None) -> None:
        import torch
        self.torch = torch
        self.spec = s = model.spec
        self.dtype = dtype or torch.float32
        self.device = device
        t = lambda a: torch.from_numpy(a).to(device=device, dtype=self.dtype)  # noqa: E731
        self.w = {k: t(v) for k, v in model.w.items()}
        self.head = self.w["wte.weight" if s.tied_head else "lm_head.weight"]
        shape = (s.n_layer, 2, s.n_head, max_tokens, s.d_head)
        self.kv = torch.zeros(shape, dtype=self.dtype, device=device)

    def fill(self, pos: int, seed: int = 0) -> None:
        """Random cached keys and values for positions 0..pos-1."""
        g = self.torch.Generator(device=self.device).manual_seed(seed)
        self.kv[:, :, :, :pos].normal_(generator=g)

    def step(self, token: int, pos: int) -> int:
        """One decode step at ``pos``; the next token (greedy)."""
        torch, s, w = self.torch, self.spec, self.w
        F = torch.nn.functional
        d, nh, dh = s.d_model, s.n_head, s.d_head
        with torch.inference_mode():
            x = w["wte.weight"][token] + w["wpe.weight"][pos]
            for i in range(s.n_layer):
                p = f"h.{i}."
                h = F.layer_norm(x, (d,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], s.ln_eps)
                qkv = torch.addmv(w[p + "attn.c_attn.bias"], w[p + "attn.c_attn.weight"].T, h)
                q, k, v = qkv.view(3, nh, dh)
                self.kv[i, 0, :, pos] = k
                self.kv[i, 1, :, pos] = v
                K, V = self.kv[i, 0, :, :pos + 1], self.kv[i, 1, :, :pos + 1]
                att = torch.softmax((K @ q.unsqueeze(-1)).squeeze(-1) / dh ** 0.5, dim=-1)
                o = (att.unsqueeze(1) @ V).reshape(d)
                x = x + torch.addmv(w[p + "attn.c_proj.bias"], w[p + "attn.c_proj.weight"].T, o)
                h = F.layer_norm(x, (d,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], s.ln_eps)
                f = F.gelu(torch.addmv(w[p + "mlp.c_fc.bias"], w[p + "mlp.c_fc.weight"].T, h),
                           approximate="tanh")
                x = x + torch.addmv(w[p + "mlp.c_proj.bias"], w[p + "mlp.c_proj.weight"].T, f)
            x = F.layer_norm(x, (d,), w["ln_f.weight"], w["ln_f.bias"], s.ln_eps)
            return int(torch.argmax(self.head @ x))


def torch_available() -> bool:
    """Whether torch imports here."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def time_torch(model, positions: Sequence[int], repeats: int, device: str = "cpu",
               half: bool = False) -> list[dict]:
    """Seconds per decode step of :class:`TorchGPT` at each position."""
    import torch
    tg = TorchGPT(model, max(positions) + 1, device=device,
                  dtype=torch.float16 if half else torch.float32)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out = []
    for pos in positions:
        tg.fill(pos)

        def step() -> int:
            r = tg.step(1, pos)
            sync()
            return r
        out.append({"position": pos, "seconds": _median_time(step, repeats)})
    del tg
    return out


def t4_roofline(spec, positions: Sequence[int]) -> list[dict]:
    """Estimated T4 seconds per step: weights (fp16) plus KV cache read once at peak bandwidth."""
    weights = spec.param_count() * 2
    out = []
    for pos in positions:
        kv = 2 * spec.n_layer * (pos + 1) * spec.d_model * 2
        out.append({"position": pos, "seconds": (weights + kv) / (T4_BANDWIDTH_GBPS * 1e9)})
    return out


def gpu_device() -> str | None:
    """Name of the CUDA device torch sees, or None."""
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return None


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _measure_in_child(name: str, positions: Sequence[int], repeats: int, use_torch: bool,
                      threads: int, gpu: bool) -> dict[str, Any]:
    """Body of the measuring process: load the model, time numpy, torch and the GPU."""
    from pimgpt.mapping.builtin import builtin_model
    from pimgpt.sim.reference import Float32GPT

    f32 = Float32GPT(builtin_model(name))
    out: dict[str, Any] = {"numpy": time_numpy(f32, positions, repeats), "load": os.getloadavg()}
    if use_torch:
        import torch
        torch.set_num_threads(threads)
        out["torch"] = time_torch(f32, positions, repeats)
        out["torch_threads"] = torch.get_num_threads()
    if gpu:
        out["gpu"] = time_torch(f32, positions, repeats, "cuda", half=True)
    return out


def measure_cpu(name: str, positions: Sequence[int], repeats: int, use_torch: bool,
                threads: int, gpu: bool = False) -> dict[str, Any]:
    """Time one built-in model's decode step in a fresh process limited to ``threads`` threads.

    A fresh (spawned) process is the only way to set the BLAS thread count before numpy loads
    its library; it also hands the model's memory (6 GB for GPT2-XL) back when it ends.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: str(threads) for k in _THREAD_VARS})
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_measure_in_child, name, list(positions), repeats, use_torch,
                               threads, gpu).result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_positions(positions: Sequence[int], n_ctx: int) -> None:
    """Positions a model can take."""
    for p in positions:
        if not 0 <= p < n_ctx:
            raise PimgptError(f"position {p} outside the model's context 0..{n_ctx - 1}")
