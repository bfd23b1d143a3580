"""Measure the GPU baseline on a machine with CUDA, for a study run elsewhere.

``pimgpt study`` measures a GPU itself when CUDA is present. When the study runs on a machine
without one, this module, run on a GPU machine with pimgpt installed, writes the same
measurement to a JSON file that ``pimgpt study --gpu-results FILE`` shows beside the T4
estimate (labelled with the device it was measured on)::

    python -m pimgpt.study.gpu -o gpu.json                  # the 8 models, positions 0/511/1023
    python -m pimgpt.study.gpu -o gpu.json --models gpt2-small --positions 0,1023

Method: :func:`pimgpt.study.baselines.time_torch` on ``cuda`` in float16, batch 1, KV cache,
median of ``--repeats`` after a warm-up, CUDA synchronised after each step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from pimgpt.errors import PimgptError

FORMAT = "pimgpt-gpu-baseline-1"


def measure(models: Sequence[str], positions: Sequence[int], repeats: int) -> dict[str, Any]:
    """Seconds per decode step of each model on the CUDA device."""
    import torch

    from pimgpt.mapping.builtin import builtin_model
    from pimgpt.sim.reference import Float32GPT
    from pimgpt.study.baselines import time_torch
    if not torch.cuda.is_available():
        raise PimgptError("no CUDA device visible to torch")
    out: dict[str, Any] = {"format": FORMAT, "device": torch.cuda.get_device_name(0),
                           "torch": torch.__version__, "dtype": "float16", "batch": 1,
                           "repeats": repeats, "models": {}}
    for m in models:
        f32 = Float32GPT(builtin_model(m))
        out["models"][m] = time_torch(f32, positions, repeats, "cuda", half=True)
        del f32
    return out


def load(path: str | Path) -> dict[str, Any]:
    """A GPU measurement file, checked."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PimgptError(f"GPU results file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PimgptError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PimgptError(f"{path}: not a GPU baseline file (format {FORMAT!r}; write one with "
                          f"python -m pimgpt.study.gpu)")
    models = data.get("models")
    if not isinstance(models, dict) or not isinstance(data.get("device"), str):
        raise PimgptError(f"{path}: needs 'device' and 'models'")
    for m, rows in models.items():
        if not isinstance(rows, list) or not rows or not all(
                isinstance(r, dict) and isinstance(r.get("position"), int) and
                isinstance(r.get("seconds"), (int, float)) and r["seconds"] > 0 for r in rows):
            raise PimgptError(f"{path}: model {m!r} needs a list of {{position, seconds > 0}}")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    from pimgpt.fileio import write_text_atomic
    from pimgpt.study.run import MODELS
    p = argparse.ArgumentParser(prog="python -m pimgpt.study.gpu",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("--models", default=",".join(MODELS), metavar="A,B,...")
    p.add_argument("--positions", default="0,511,1023", metavar="P,Q,...")
    p.add_argument("--repeats", type=int, default=5, metavar="N")
    args = p.parse_args(argv)
    try:
        positions = [int(x) for x in args.positions.split(",")]
        data = measure([m for m in args.models.split(",") if m], positions, args.repeats)
        write_text_atomic(args.output, json.dumps(data, indent=2, sort_keys=True) + "\n")
    except ValueError:
        print(f"{p.prog}: error: --positions must be comma-separated integers", file=sys.stderr)
        return 2
    except PimgptError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
