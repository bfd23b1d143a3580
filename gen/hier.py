"""The module hierarchy of a generated Verilog file, for synthesis one module at a time.

Amaranth writes one Verilog module per *instance* (``\\top.ch0.mac0``, ``\\top.ch0.mac1``, ...):
the netlist is specialised per instance (a constant input is folded into the child, an unused
output is not a port), so every module is what that instance really needs. A design too large
for one Yosys run (the WebAssembly Yosys has a 4 GiB address space) is synthesised in parts:
:func:`plan` cuts the hierarchy into *units*, each either a subtree small enough to synthesise
flattened, or the own logic of a larger module (its submodules left as black boxes and cut in
turn). :func:`canonical_ids` recognises modules that are identical up to the names of their
numbered wires (``\\y$47``), so each distinct unit is synthesised once and its figures counted
once per instance.

Only the regular text Yosys's ``write_verilog`` produces is parsed here: a ``module ... (ports);``
header, two-space indented items (declarations, ``assign``, ``always``, ``initial``, cell
instances ``  TYPE NAME (`` ... ``  );``), ``endmodule``.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["VModule", "Unit", "parse_modules", "instance_counts", "subtree_bytes",
           "canonical_ids", "plan", "unit_text", "blackbox_stub"]

_HEADER = re.compile(r"^module (\S+) ?\(([^;]*)\);$", re.M)
_INSTANCE = re.compile(r"^  (\S+) +(\S+) +\($")
_PORT = re.compile(r"^  (input|output|inout) (?:reg |wire )?(?:\[(\d+):(\d+)\] )?(\S+) ?;$")
# Identifiers whose names carry no meaning: Yosys's and Amaranth's numbered names (``\$12``,
# ``\y$47``, ``\$auto$verilog_backend.cc:2355:dump_module$89``, ``_0_``). Two copies of one
# design differ in these numbers only.
_TOKEN = re.compile(r"\\\S+|[A-Za-z_][A-Za-z0-9_$]*")
_NUMBERED = re.compile(r"(?:\\\S*\$\d+|_\d+_)$")


@dataclass
class VModule:
    """One module of the file: its name (as written, escaped names with their backslash), its
    text (header to ``endmodule``, with the attribute lines before the header), its items and
    its cell instances of other modules of the file (``(type, instance name)``)."""

    name: str
    text: str
    ports: list[tuple[str, str, int]] = field(default_factory=list)  # (direction, name, width)
    items: list[str] = field(default_factory=list)
    children: list[tuple[str, str]] = field(default_factory=list)


def parse_modules(text: str) -> dict[str, VModule]:
    """The modules of a Yosys-written Verilog ``text``, in file order."""
    heads = list(_HEADER.finditer(text))
    mods: dict[str, VModule] = {}
    prev_end = 0
    for head in heads:
        end = text.find("\nendmodule\n", head.end())
        if end < 0:
            raise ValueError(f"no endmodule after module {head.group(1)}")
        # the attribute lines just above the header belong to the module
        start = head.start()
        before = text[prev_end:start]
        attrs = re.search(r"(?:^\(\*[^\n]*\*\)\n)*\Z", before, re.M)
        start -= len(attrs.group(0)) if attrs else 0
        mods[head.group(1)] = VModule(head.group(1), text[start:end + len("\nendmodule\n")])
        prev_end = end + len("\nendmodule\n")
    names = set(mods)
    for mod in mods.values():
        head = _HEADER.search(mod.text)
        assert head is not None
        body = mod.text[head.end() + 1:-len("endmodule\n")]
        pending: list[str] = []  # attribute lines, which go with the next item
        for line in body.splitlines():
            if line.startswith("  (*") or line.startswith("  // "):
                pending.append(line)
                continue
            indent = len(line) - len(line.lstrip(" "))
            stripped = line.strip()
            if indent == 2 and not stripped.startswith(("end", ");")):
                mod.items.append("\n".join(pending + [line]))
                pending = []
                inst = _INSTANCE.match(line)
                if inst and inst.group(1) in names:
                    mod.children.append((inst.group(1), inst.group(2)))
                port = _PORT.match(line)
                if port:
                    width = int(port.group(2)) - int(port.group(3)) + 1 if port.group(2) else 1
                    mod.ports.append((port.group(1), port.group(4), width))
            elif mod.items:
                mod.items[-1] += "\n" + "\n".join(pending + [line])
                pending = []
            elif stripped:
                raise ValueError(f"{mod.name}: unexpected line before the first item: {line!r}")
    return mods


def instance_counts(mods: dict[str, VModule], top: str) -> Counter[str]:
    """How many instances of each module the hierarchy under ``top`` holds (``top``: 1)."""
    counts: Counter[str] = Counter({top: 1})
    order = _topological(mods, top)
    for name in order:  # parents before children
        for child, _ in mods[name].children:
            counts[child] += counts[name]
    return counts


def _topological(mods: dict[str, VModule], top: str) -> list[str]:
    """The modules under ``top``, every parent before its children."""
    seen: set[str] = set()
    post: list[str] = []
    stack: list[tuple[str, int]] = [(top, 0)]
    on_path: set[str] = set()
    while stack:
        name, i = stack.pop()
        if i == 0:
            if name in seen:
                continue
            on_path.add(name)
        children = mods[name].children
        if i < len(children):
            stack.append((name, i + 1))
            child = children[i][0]
            if child in on_path:
                raise ValueError(f"module {child} instantiates itself")
            if child not in seen:
                stack.append((child, 0))
        else:
            on_path.discard(name)
            seen.add(name)
            post.append(name)
    return post[::-1]


def subtree_bytes(mods: dict[str, VModule], name: str,
                  _memo: dict[str, int] | None = None) -> int:
    """Verilog text size of ``name`` and every module under it (each instance counted)."""
    memo = {} if _memo is None else _memo
    for mod in reversed(_topological(mods, name)):  # children first
        if mod not in memo:
            memo[mod] = len(mods[mod].text) + sum(memo[c] for c, _ in mods[mod].children)
    return memo[name]


def _strip(token: str) -> str:
    return "_N_" if token.startswith("_") else re.sub(r"\$\d+$", "$", token)


def canonical_ids(mods: dict[str, VModule], rounds: int = 3) -> dict[str, str]:
    """An id per module such that modules with equal ids are the same hardware.

    Equal ids mean equal texts after (1) renaming the module itself, (2) replacing each
    instantiated module's name by that module's id and (3) renaming the numbered identifiers
    (:data:`_NUMBERED`) one to one, in order of first use, with the items (top-level statements,
    whose order does not matter in Verilog) sorted by a renaming-invariant key. The key comes
    from a few rounds of colour refinement (each numbered identifier's colour: its name without
    the number, then refined by the items it occurs in and where), so that copies of one module
    sort alike. Where the key leaves a tie the original order decides: two copies may then get
    different ids (a missed sharing costs a redundant synthesis, never a wrong count), but
    different modules never get the same id.
    """
    ids: dict[str, str] = {}
    intern: dict[object, int] = {}

    def num(key: object) -> int:
        return intern.setdefault(key, len(intern))

    for top in mods:  # every module, children before parents
        for name in reversed(_topological(mods, top)):
            if name in ids:
                continue
            mod = mods[name]
            child_ids = {t: ids[t] for t, _ in mod.children}
            templates: list[str] = []
            occurrences: list[list[str]] = []
            for item in mod.items:
                toks: list[str] = []

                def sub(m: re.Match, toks: list[str] = toks) -> str:
                    tok = m.group(0)
                    if tok in child_ids:
                        return "\\#" + child_ids[tok]
                    if tok == name:
                        return "\\#self"
                    if _NUMBERED.search(tok):
                        toks.append(tok)
                        return "\x00"
                    return tok
                templates.append(_TOKEN.sub(sub, item))
                occurrences.append(toks)
            label = {t: num(("tok", _strip(t))) for toks in occurrences for t in toks}
            tnum = [num(("tpl", t)) for t in templates]
            item_key: list[int] = []
            for _ in range(rounds):
                item_key = [num((tnum[i], tuple(label[t] for t in toks)))
                            for i, toks in enumerate(occurrences)]
                ctx: dict[str, list[tuple[int, int]]] = {t: [] for t in label}
                for i, toks in enumerate(occurrences):
                    for pos, t in enumerate(toks):
                        ctx[t].append((item_key[i], pos))
                label = {t: num((label[t], tuple(sorted(c)))) for t, c in ctx.items()}
            item_key = [num((tnum[i], tuple(label[t] for t in toks)))
                        for i, toks in enumerate(occurrences)]
            order = sorted(range(len(templates)), key=lambda i: (item_key[i], i))
            rename: dict[str, str] = {}
            parts = []
            for i in order:
                pieces = templates[i].split("\x00")
                out = [pieces[0]]
                for t, rest in zip(occurrences[i], pieces[1:]):
                    out.append(rename.setdefault(t, f"\\#{len(rename)}"))
                    out.append(rest)
                parts.append("".join(out))
            ports = ",".join(sorted(f"{d} {p} {w}" for d, p, w in mod.ports))
            digest = hashlib.sha256(("\n".join(parts) + "\n" + ports).encode()).hexdigest()
            ids[name] = digest[:20]
    return ids


@dataclass(frozen=True)
class Unit:
    """One synthesis of the plan: ``module``'s whole subtree flattened (``flat``), or its own
    logic with the subtrees of its small children (``inlined``) flattened into it and its other
    children as black boxes; ``count`` instances of it in the design; ``key`` the same for units
    that are the same hardware; ``size`` the bytes of Verilog synthesised."""

    module: str
    flat: bool
    count: int
    key: tuple[str, bool]
    size: int
    inlined: tuple[str, ...] = ()


def plan(mods: dict[str, VModule], top: str, max_bytes: int, inline_bytes: int = 0,
         ids: dict[str, str] | None = None) -> list[Unit]:
    """Cut the hierarchy under ``top`` into units of about ``max_bytes`` of Verilog at most.

    A module whose subtree fits is one flattened unit. A larger one is cut: a unit of its own
    logic, into which the subtrees of children of at most ``inline_bytes`` are flattened (a
    cut module's many small wiring modules need no synthesis each), plus the plan of each
    larger child. Units with the same key (the same hardware) are merged, their counts added,
    the first one met standing for all; the list is in hierarchy order, parents first.
    """
    ids = canonical_ids(mods) if ids is None else ids
    sizes: dict[str, int] = {}
    subtree_bytes(mods, top, sizes)
    counts: Counter[str] = Counter()  # instances of each module reached by a cut
    units: dict[tuple[str, bool], Unit] = {}
    for name in _topological(mods, top):
        n = 1 if name == top else counts[name]
        if n == 0:
            continue  # inside a flattened or inlined subtree
        flat = sizes[name] <= max_bytes or not mods[name].children
        key = (ids[name], flat)
        if key in units:
            u = units[key]
            units[key] = Unit(u.module, u.flat, u.count + n, u.key, u.size, u.inlined)
        elif flat:
            units[key] = Unit(name, True, n, key, sizes[name])
        else:
            small = tuple(dict.fromkeys(c for c, _ in mods[name].children
                                        if sizes[c] <= inline_bytes))
            size = len(mods[name].text) + sum(
                sizes[c] * sum(1 for t, _ in mods[name].children if t == c) for c in small)
            units[key] = Unit(name, False, n, key, size, small)
        if not flat:
            for child, _ in mods[name].children:
                if sizes[child] > inline_bytes:
                    counts[child] += n
    return list(units.values())


def blackbox_stub(mod: VModule) -> str:
    """A ``(* blackbox *)`` module with ``mod``'s name and ports, and nothing inside."""
    head = _HEADER.search(mod.text)
    assert head is not None
    lines = ["(* blackbox *)", head.group(0)]
    for direction, port, width in mod.ports:
        rng = f"[{width - 1}:0] " if width > 1 else ""
        lines.append(f"  {direction} {rng}{port} ;")  # the space ends an escaped name
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def unit_text(mods: dict[str, VModule], unit: Unit, top_name: str = "unit") -> str:
    """The Verilog of ``unit``, its top module renamed ``top_name``: the whole subtree of a
    flattened unit; else the module, the subtrees of its inlined children and a black-box stub
    per distinct other child module."""
    mod = mods[unit.module]
    head = _HEADER.search(mod.text)
    assert head is not None
    renamed = (mod.text[:head.start()] + f"module {top_name}({head.group(2)});"
               + mod.text[head.end():])
    if unit.flat:
        below = [n for n in _topological(mods, unit.module) if n != unit.module]
        return renamed + "".join(mods[n].text for n in below)
    below = list(dict.fromkeys(n for c in unit.inlined for n in _topological(mods, c)))
    stubs = dict.fromkeys(t for t, _ in mod.children if t not in unit.inlined)
    return (renamed + "".join(mods[n].text for n in below)
            + "".join(blackbox_stub(mods[t]) for t in stubs))
