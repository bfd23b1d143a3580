#!/usr/bin/env python3
"""Train the small byte-level GPT-2 checkpoints shipped in ``mapping/data/``.

Usage (from the repository root; needs the ``[hf]`` extra: torch and transformers)::

    python3 tools/train_tiny.py tiny     [--minutes 6] [--steps N] [--out mapping/data/tiny]
    python3 tools/train_tiny.py awkward  --steps 14000 --stop-after 11817 --minutes 60 \
                                         --out tests/data/awkward

Both models are two-layer GPT-2s (``transformers.GPT2LMHeadModel``) trained with AdamW on a
byte-level corpus: token = UTF-8 byte value (0..255). The corpus is the Python standard library's
own top-level ``.py`` sources (``Path(sysconfig.get_paths()["stdlib"]).glob("*.py")``, sorted by
name, concatenated, truncated to the first 4 MiB), so anyone can regenerate it offline. The last
5% of the corpus is held out for a validation loss.

Shapes:

- ``tiny``:    n_embd 64, n_head 4, vocab 256, n_positions 128
- ``awkward``: n_embd 120, n_head 5 (d_head 24), vocab 997 (ids 256..996 never occur in the data,
  so the model learns to give them low logits), n_positions 256 -- a test fixture with sizes that
  are not multiples of 16 and a head count that is not a power of two. The shipped one was
  trained with the schedule of 14,000 steps and stopped after 11,817 (``--stop-after``).

Reproducibility: fixed seeds (``torch.manual_seed`` and a seeded ``torch.Generator`` for the
batch offsets), one torch thread, a step-based learning-rate schedule (linear warm-up, cosine
decay to 10% over ``--steps``). ``--minutes`` is a wall-time cap: if it runs out before
``--steps`` the run stops early (and is then not exactly reproducible; the number of steps done
is printed). The defaults for ``--steps`` fit in ~6 minutes on one CPU core.

Output: a Hugging Face directory with only ``config.json`` and ``model.safetensors`` (float32,
tied head). At the end the script prints the final training loss (mean of the last 50 steps), the
validation loss and a greedy sample from the prompt ``"def "``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

#: name -> (GPT2Config overrides, default steps, batch size, peak learning rate)
MODELS = {
    "tiny": (dict(n_embd=64, n_head=4, vocab_size=256, n_positions=128), 6000, 16, 4e-3),
    "awkward": (dict(n_embd=120, n_head=5, vocab_size=997, n_positions=256), 14000, 8, 3e-3),
}
CORPUS_BYTES = 4 * 1024 * 1024
SEED = 1234
NEWLINE = 10  # bos/eos token id: b"\n"


def corpus() -> bytes:
    """The first 4 MiB of the stdlib's top-level .py files, sorted by name and concatenated."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    data = bytearray()
    for f in files:
        data += f.read_bytes()
        if len(data) >= CORPUS_BYTES:
            break
    return bytes(data[:CORPUS_BYTES])


def make_config(name: str) -> GPT2Config:
    shape = MODELS[name][0]
    return GPT2Config(
        n_layer=2,
        n_ctx=shape["n_positions"],
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=NEWLINE,
        eos_token_id=NEWLINE,
        **shape,
    )


@torch.no_grad()
def greedy(model: GPT2LMHeadModel, prompt: bytes, n: int) -> bytes:
    ids = list(prompt)
    ctx = model.config.n_positions
    for _ in range(n):
        x = torch.tensor([ids[-ctx:]])
        logits = model(x).logits[0, -1]
        ids.append(int(torch.argmax(logits)))
    return bytes(i if i < 256 else ord("?") for i in ids)


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, data: torch.Tensor, ctx: int, n_batches: int = 8,
             batch: int = 32) -> float:
    """Mean loss over a fixed, evenly spaced set of windows of ``data``."""
    model.eval()
    starts = torch.linspace(0, len(data) - ctx - 1, n_batches * batch).long()
    total = 0.0
    for i in range(n_batches):
        s = starts[i * batch:(i + 1) * batch]
        x = torch.stack([data[j:j + ctx] for j in s.tolist()])
        total += float(model(x, labels=x).loss)
    model.train()
    return total / n_batches


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-time cap (default 6)")
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps (default per model)")
    ap.add_argument("--stop-after", type=int, default=None, metavar="N",
                    help="stop after N steps (the learning-rate schedule still spans --steps)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output directory (default mapping/data/<model>)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    _, default_steps, batch, peak_lr = MODELS[args.model]
    steps = args.steps or default_steps
    out = args.out or Path(__file__).resolve().parent.parent / "mapping" / "data" / args.model

    raw = corpus()
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    split = int(len(data) * 0.95)
    train, val = data[:split], data[split:]
    print(f"corpus: {len(raw)} bytes ({split} train, {len(raw) - split} validation)", flush=True)

    config = make_config(args.model)
    model = GPT2LMHeadModel(config)
    model.train()
    ctx = config.n_positions
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model}: {n_params} parameters, n_ctx {ctx}, batch {batch}, "
          f"{steps} steps, lr {peak_lr}", flush=True)

    decay, no_decay = [], []
    for pname, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=peak_lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 50)

    def lr_at(step: int) -> float:
        if step < warmup:
            return peak_lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return peak_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    gen = torch.Generator().manual_seed(SEED)
    deadline = time.monotonic() + args.minutes * 60
    t0 = time.monotonic()
    recent: list[float] = []
    done = 0
    for step in range(steps):
        if time.monotonic() > deadline:
            print(f"wall-time cap of {args.minutes} min reached after {step} steps", flush=True)
            break
        if args.stop_after is not None and step >= args.stop_after:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = torch.randint(0, len(train) - ctx, (batch,), generator=gen)
        x = torch.stack([train[j:j + ctx] for j in starts.tolist()])
        loss = model(x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(loss.item())
        recent = recent[-50:]
        done = step + 1
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {recent[-1]:.3f}  avg50 {sum(recent) / len(recent):.3f}"
                  f"  lr {lr_at(step):.2e}  {time.monotonic() - t0:6.0f}s", flush=True)

    train_loss = sum(recent) / len(recent)
    val_loss = evaluate(model, val, ctx)
    model.eval()
    print(f"final: {done} steps in {time.monotonic() - t0:.0f}s, train loss {train_loss:.3f} "
          f"nats/byte (mean of last {len(recent)} steps), validation loss {val_loss:.3f}",
          flush=True)
    sample = greedy(model, b"def ", 80)
    print("greedy sample from 'def ':")
    print(sample.decode("utf-8", errors="replace"))

    out.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    for f in out.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()
        else:
            f.chmod(0o644)  # safetensors may write 0600; the package data must be world-readable
    # Check (and if needed fix) the fields pimgpt reads from config.json.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(model_type="gpt2", activation_function="gelu_new", bos_token_id=NEWLINE,
               eos_token_id=NEWLINE, layer_norm_epsilon=1e-5, tie_word_embeddings=True)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    print(f"saved {out}: " + ", ".join(f"{f.name} ({f.stat().st_size} bytes)"
                                       for f in sorted(out.iterdir())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
