"""Atomic output files: a failed command leaves no partial file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

from pimgpt.errors import PimgptError


def check_output_path(path: str | Path) -> None:
    """Fail early (before any work) if ``path`` cannot be an output file."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise PimgptError(f"output directory does not exist: {directory}")
    if path.is_dir():
        raise PimgptError(f"output path is a directory: {path}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; rename it over ``path`` only
    when the ``with`` block succeeds, delete it otherwise."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    check_output_path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    except OSError as exc:
        raise PimgptError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask
        with os.fdopen(fd, "wb") as fh:
            yield fh
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise PimgptError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_output(path) as fh:
        fh.write(text.encode())


def doc_main(render: "Callable[[], str]", prog: str, description: str,
             argv: "Sequence[str] | None" = None) -> int:
    """Command line of a generated document: print ``render()``, or write it with ``-o FILE``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    args = parser.parse_args(argv)
    try:
        text = render()
        if args.output:
            write_text_atomic(args.output, text)
        else:
            sys.stdout.write(text)
    except PimgptError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
