"""Generic synthesis in parts (gen/hier.py, gen/synth.py ``synth_generic``).

A design too large for one WebAssembly Yosys run (the ``tiny`` top) is synthesised one distinct
module at a time and the figures are summed over the instances. Checked here on the 2-lane bank
MAC, whose Verilog has the same shape as the top's (one module per instance, numbered wire
names): parsing, the recognition of identical modules, a plan that covers every instance exactly
once, the summing (with stand-in figures, then with real Yosys runs through ``pimgpt synth``),
and memories kept as memories.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from pimgpt.cli import main
from pimgpt.gen import hier
from pimgpt.gen import synth as gsynth
from pimgpt.gen import verilog as gverilog
from pimgpt.hdl.params import preset

TINY = preset("tiny")
NARROW = dataclasses.replace(
    TINY, name="tiny-2lane",
    geometry=dataclasses.replace(TINY.geometry, mac_lanes=2, column_bytes=4))


@pytest.fixture(scope="module")
def mac_text() -> str:
    return gverilog.generate(NARROW, "bank_mac")[0]


@pytest.fixture(scope="module")
def mods(mac_text: str) -> dict[str, hier.VModule]:
    return hier.parse_modules(mac_text)


def covered(mods: dict[str, hier.VModule], units: list[hier.Unit], top: str) -> Counter:
    """Instances of each module that the units synthesise (flattened subtrees, cut modules'
    own logic and their inlined subtrees), each unit times its count."""
    out: Counter = Counter()
    for unit in units:
        roots = [unit.module] if unit.flat else list(unit.inlined)
        sub: Counter = Counter()
        for root in roots:
            n = sum(1 for t, _ in mods[unit.module].children if t == root) if not unit.flat \
                else 1
            for name, k in hier.instance_counts(mods, root).items():
                sub[name] += k * n
        if not unit.flat:
            sub[unit.module] += 1
        for name, k in sub.items():
            out[name] += k * unit.count
    return out


def shapes(mods: dict[str, hier.VModule], ids: dict[str, str]) -> Counter:
    """Instances per distinct id (what a plan must cover, whichever copy stands for it)."""
    out: Counter = Counter()
    for name, k in hier.instance_counts(mods, "bank_mac").items():
        out[ids[name]] += k
    return out


# --- parsing and identity ------------------------------------------------------------------------

def test_parse(mac_text: str, mods: dict[str, hier.VModule]) -> None:
    assert len(mods) == len(re.findall(r"^module ", mac_text, re.M)) == 22
    # everything after the banner, less a blank line between modules, is in some module
    assert sum(len(m.text) + 1 for m in mods.values()) - 1 == \
        len(mac_text) - mac_text.index("(* ")
    top = mods["bank_mac"]
    assert {"\\bank_mac.mul0", "\\bank_mac.mul1", "\\bank_mac.add1_0",
            "\\bank_mac.acc_add"} <= {t for t, _ in top.children}
    assert ("input", "i_beat__payload", 64) in top.ports
    counts = hier.instance_counts(mods, "bank_mac")
    assert counts["bank_mac"] == 1 and set(counts) == set(mods)  # every module used once


def test_identical_modules_share_an_id(mods: dict[str, hier.VModule]) -> None:
    ids = hier.canonical_ids(mods)
    # two products, and the two adders (the tree's and the accumulator's): the same hardware
    # under other names and wire numbers
    assert ids["\\bank_mac.mul0"] == ids["\\bank_mac.mul1"]
    assert ids["\\bank_mac.add1_0"] == ids["\\bank_mac.acc_add"]
    assert len({ids["\\bank_mac.mul0"], ids["\\bank_mac.add1_0"], ids["bank_mac"]}) == 3
    assert len(set(ids.values())) == 12


def test_ids_see_every_difference(mac_text: str) -> None:
    base = hier.canonical_ids(hier.parse_modules(mac_text))
    # renumbering a module's numbered wires (consistently) keeps its id ...
    name = "\\bank_mac.acc_add"
    mods = hier.parse_modules(mac_text)
    old = mods[name].text
    new = re.sub(r"\\\S+", lambda m: m.group(0) if m.group(0) in mods else re.sub(
        r"\$(\d+)$", lambda n: f"${int(n.group(1)) + 1000}", m.group(0)), old)
    assert new != old
    assert hier.canonical_ids(hier.parse_modules(mac_text.replace(old, new)))[name] == base[name]
    # ... swapping two of its wires where they are used, or changing a constant, does not
    mods = hier.parse_modules(mac_text)
    unpack = next(n for n in mods if n.startswith(name + ".unpack"))
    text = mods[unpack].text
    wires = sorted(set(re.findall(r"\\\$\d+ ", text)))
    uses = text.split(";", 20)[-1]  # beyond the first declarations
    swapped = uses.replace(wires[0], "\0").replace(wires[1], wires[0]).replace("\0", wires[1])
    assert swapped != uses
    changed = hier.canonical_ids(hier.parse_modules(
        mac_text.replace(text, text.replace(uses, swapped))))
    assert changed[unpack] != base[unpack] and changed[name] != base[name]
    const = re.search(r"8'h[0-9a-f]+", text).group(0)
    changed = hier.canonical_ids(hier.parse_modules(
        mac_text.replace(text, text.replace(const, "8'h5a", 1))))
    assert changed[unpack] != base[unpack]


# --- the plan ------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_bytes, inline_bytes", [(10**9, 0), (40_000, 0), (40_000, 3_000),
                                                     (1, 0), (1, 10**9)])
def test_plan_covers_every_instance_once(mods: dict[str, hier.VModule], max_bytes: int,
                                         inline_bytes: int) -> None:
    ids = hier.canonical_ids(mods)
    units = hier.plan(mods, "bank_mac", max_bytes, inline_bytes, ids)
    got: Counter = Counter()
    for name, k in covered(mods, units, "bank_mac").items():
        got[ids[name]] += k
    assert got == shapes(mods, ids)
    assert len({u.key for u in units}) == len(units)  # each distinct unit once
    if max_bytes >= hier.subtree_bytes(mods, "bank_mac"):
        assert units == [hier.Unit("bank_mac", True, 1, (ids["bank_mac"], True),
                                   hier.subtree_bytes(mods, "bank_mac"))]
    if max_bytes == 40_000 and inline_bytes == 0:
        # cut at the floating-point units: the MAC's own logic, one product (x2), one adder
        # (x2: tree and accumulator), the read-out rounding
        assert sorted((u.flat, u.count) for u in units) == [(False, 1), (True, 1), (True, 2),
                                                            (True, 2)]


def test_unit_text_is_self_contained(mods: dict[str, hier.VModule]) -> None:
    units = hier.plan(mods, "bank_mac", 40_000, 3_000)
    own = next(u for u in units if not u.flat)
    text = hier.unit_text(mods, own)
    assert text.count("(* blackbox *)") == len({t for t, _ in mods["bank_mac"].children
                                                if t not in own.inlined})
    assert re.findall(r"^module (\S+) ?\(", text, re.M)[0] == "unit"
    flat = next(u for u in units if u.flat)
    text = hier.unit_text(mods, flat)
    assert "blackbox" not in text
    assert len(re.findall(r"^module ", text, re.M)) == len(hier.instance_counts(mods,
                                                                                flat.module))


# --- summing -------------------------------------------------------------------------------------

def test_figures_summed_over_instances(mac_text: str, mods: dict[str, hier.VModule],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in per-unit figures (from the unit's text) summed as the instance counts say."""
    def fake_run(text, work, blackboxes, timeout):
        n = len(re.findall(r"^module ", text, re.M)) - text.count("(* blackbox *)")
        return {"cells_by_type": {"$_AND_": n, "$_DFF_P_": 1}, "ffs": 1, "lut4_equiv": 10 * n,
                "memories": [{"name": "m", "width": 2, "depth": 4, "bits": 8, "read_ports": 1,
                              "write_ports": 1}],
                "seconds": 0.0}

    monkeypatch.setattr(gsynth, "_generic_run", fake_run)
    lines = []
    r = gsynth.synth_generic(mac_text, "bank_mac", max_bytes=40_000, inline_bytes=3_000,
                             progress=lines.append)
    units = hier.plan(mods, "bank_mac", 40_000, 3_000)
    instances = sum(u.count for u in units)
    # every module instance is one $_AND_ in exactly one unit
    assert r["cells_by_type"] == {"$_AND_": len(mods), "$_DFF_P_": instances}
    assert r["cells"] == len(mods) + instances
    assert r["ffs"] == instances and r["lut4_equiv"] == 10 * len(mods)
    assert r["memories"] == instances and r["memory_bits"] == 8 * instances
    assert r["memory_list"] == [{"name": "m", "width": 2, "depth": 4, "bits": 8,
                                 "read_ports": 1, "write_ports": 1, "count": instances}]
    assert [u["instances"] for u in r["units"]] == [u.count for u in units]
    assert r["method"] == (f"summed over {len(units)} per-module syntheses ({instances} unit "
                           f"instances of 22 modules, 0.1 MB of Verilog)")
    assert len(lines) == 1 + len(units) and lines[1].startswith(f"[1/{len(units)}] bank_mac ")
    # small enough: one flattened synthesis
    r = gsynth.synth_generic(mac_text, "bank_mac", max_bytes=10**9)
    assert r["method"] == "flattened, one synthesis" and r["cells_by_type"]["$_AND_"] == 22


def test_synth_generic_per_module_through_the_cli(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Real Yosys runs, one per distinct unit, summed (~20 s)."""
    cfg = tmp_path / "narrow.toml"
    cfg.write_text('base = "tiny"\n[geometry]\ncolumn_bytes = 4\nmac_lanes = 2\n')
    monkeypatch.setattr(gsynth, "GENERIC_MAX_BYTES", 40_000)
    monkeypatch.setattr(gsynth, "GENERIC_INLINE_BYTES", 3_000)
    assert main(["synth", "--config", str(cfg), "--target", "generic", "--block", "bank_mac",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    (r,) = json.loads(out)["results"]
    # the MAC's own logic with its small wiring modules and read-out rounding inlined, one
    # product (x2), one adder (x2: the tree's and the accumulator's)
    assert r["method"].startswith("summed over 3 per-module syntheses (5 unit instances")
    assert "[3/3] " in err
    assert r["ffs"] == 32  # the accumulator
    assert r["memories"] == r["memory_bits"] == 0 and r["memory_list"] == []
    assert r["luts"] is None and r["dsps"] is None and r["fmax_mhz"] is None
    units = r["units"]
    assert [(u["flattened"], u["instances"]) for u in units] == [(False, 1), (True, 2),
                                                                 (True, 2)]
    for key in ("cells", "ffs", "lut4_equiv"):
        assert r[key] == sum(u[key] * u["instances"] for u in units), key
    assert r["cells"] == sum(r["cells_by_type"].values())
    # flattened, the 2-lane MAC has 5027 cells and 2649 LUT4 (yosys 0.70): the cuts at the
    # floating-point units cost little
    assert 4500 < r["cells"] < 5400 and 2400 < r["lut4_equiv"] < 2900
    assert all(t.startswith("$_") for t in r["cells_by_type"])


class _Ram(wiring.Component):
    def __init__(self):
        super().__init__({"addr": In(6), "wdata": In(12), "we": In(1), "rdata": Out(12)})

    def elaborate(self, platform):
        m = Module()
        mem = m.submodules.mem = memory.Memory(shape=12, depth=64, init=[])
        wr, rd = mem.write_port(), mem.read_port()
        m.d.comb += [wr.addr.eq(self.addr), wr.data.eq(self.wdata), wr.en.eq(self.we),
                     rd.addr.eq(self.addr), self.rdata.eq(rd.data)]
        return m


def test_generic_keeps_memories() -> None:
    from amaranth.back import verilog

    text = verilog.convert(_Ram(), name="ram", emit_src=False)
    r = gsynth.synth_generic(text, "ram")
    assert r["memory_list"] == [{"name": "mem", "width": 12, "depth": 64, "bits": 768,
                                 "read_ports": 1, "write_ports": 1, "count": 1}]
    assert r["memories"] == 1 and r["memory_bits"] == 768
    assert r["cells_by_type"]["$mem_v2"] == 1
    assert r["ffs"] < 64  # not 768 flip-flops
