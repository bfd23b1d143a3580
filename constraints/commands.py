"""``pimgpt constraints``: write the SDC files and the prototype board's LPF."""

from __future__ import annotations

import argparse
from pathlib import Path

from pimgpt.errors import PimgptError
from pimgpt.fileio import write_text_atomic
from pimgpt.hdl.params import MachineConfig, resolve_config


def constraint_files(config: MachineConfig) -> dict[str, str]:
    """File name -> text of every constraint file for ``config``."""
    from pimgpt.constraints.board import LPF_NAME, prototype_lpf
    from pimgpt.constraints.sdc import DOMAINS, sdc

    files = {f"{config.name}-{domain}.sdc": sdc(config, domain) for domain in DOMAINS}
    files[LPF_NAME] = prototype_lpf()
    return files


def cmd_constraints(args: argparse.Namespace) -> int:
    config = resolve_config(args.preset, args.config)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise PimgptError(f"output path exists and is not a directory: {out}")
    if not out.exists():
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise PimgptError(f"parent of the output directory does not exist: {out.parent}")
    files = constraint_files(config)  # everything computed before anything is written
    out.mkdir(exist_ok=True)
    for name, text in files.items():
        write_text_atomic(out / name, text)
        print(out / name)
    return 0
