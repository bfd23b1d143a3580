"""Energy model: the breakdown adds up, scales linearly, validates input, matches docs/energy.md."""

import dataclasses
import math
import re
from pathlib import Path

import pytest

from pimgpt.errors import PimgptError
from pimgpt.sim.energy import (ASIC_KINDS, ASIC_OP_KIND, COMPONENTS, SCALE_45_TO_28,
                               EnergyBreakdown, EnergyModel, Events, energy)

DOC = Path(__file__).resolve().parents[1] / "docs" / "energy.md"
MODEL = EnergyModel.paper_default()


def _events(**changes) -> Events:
    """Every count non-zero, so each component has something to scale."""
    base = dict(channels=8, seconds=2e-4, act=1600, pre=1600, rd=48, wr=100, wr16=30,
                mac=96000, gb_write=700, mac_readout=120, ref=96, io_bits=300_000,
                asic_ops={k: 1000 + i for i, k in enumerate(ASIC_KINDS)}, vmem_words=50_000)
    base.update(changes)
    return Events(**base)


# --- the breakdown --------------------------------------------------------------------------------

def test_breakdown_adds_up_to_its_total():
    br = energy(_events(), MODEL)
    d = br.to_dict()
    assert list(d) == [*COMPONENTS, "total"]
    assert d["total"] == pytest.approx(math.fsum(d[c] for c in COMPONENTS), rel=1e-15)
    assert br.total == d["total"]
    assert all(v > 0 for v in d.values())


def test_components_are_the_documented_formulas():
    e = _events()
    br = energy(e, MODEL)
    pj = 1e-12
    assert br.dram_activate == pytest.approx((e.act * MODEL.act_pj + e.pre * MODEL.pre_pj) * pj)
    assert br.dram_column == pytest.approx(
        (e.rd * MODEL.rd_pj + (e.wr + e.wr16 * 16) * MODEL.wr_pj) * pj)
    assert br.dram_mac == pytest.approx(e.mac * MODEL.mac_pj * pj)
    assert br.dram_background == pytest.approx(MODEL.background_mw_per_channel * 1e-3 * 8 * 2e-4)
    assert br.asic_compute == pytest.approx(
        sum(n * MODEL.asic_pj[k] for k, n in e.asic_ops.items()) * pj)
    assert br.asic_leakage == pytest.approx(MODEL.asic_leakage_mw * 1e-3 * 2e-4)


# (Events field, the one component it drives)
_LINEAR = [
    ("act", "dram_activate"), ("pre", "dram_activate"), ("rd", "dram_column"),
    ("wr", "dram_column"), ("wr16", "dram_column"), ("mac", "dram_mac"),
    ("gb_write", "global_buffer"), ("mac_readout", "mac_readout"), ("ref", "refresh"),
    ("io_bits", "io"), ("vmem_words", "asic_sram"), ("channels", "dram_background"),
]


@pytest.mark.parametrize("name, component", _LINEAR)
def test_each_component_scales_linearly_with_its_count(name, component):
    model = MODEL.replace(pre_pj=3.0)  # the default prices PRE at 0 (inside act_pj)
    zero = {n: 0 for n, _ in _LINEAR if n != "channels"}
    base = energy(_events(**{**zero, "asic_ops": {}, "seconds": 1e-4, name: 5}), model)
    for k in (0, 1, 3, 1000):
        if name == "channels" and k == 0:
            continue
        br = energy(_events(**{**zero, "asic_ops": {}, "seconds": 1e-4, name: 5 * k}), model)
        for c in COMPONENTS:
            if c == component:
                assert getattr(br, c) == pytest.approx(k * getattr(base, c), rel=1e-12)
            else:  # nothing else moves (background and leakage depend on seconds only)
                assert getattr(br, c) == getattr(base, c)
    assert getattr(base, component) > 0


@pytest.mark.parametrize("kind", ASIC_KINDS)
def test_asic_compute_scales_linearly_per_kind(kind):
    one = energy(_events(asic_ops={kind: 7}), MODEL)
    many = energy(_events(asic_ops={kind: 7000}), MODEL)
    assert many.asic_compute == pytest.approx(1000 * one.asic_compute, rel=1e-12)
    assert one.asic_compute == pytest.approx(7 * MODEL.asic_pj[kind] * 1e-12)
    assert {c: getattr(many, c) for c in COMPONENTS if c != "asic_compute"} == \
           {c: getattr(one, c) for c in COMPONENTS if c != "asic_compute"}


def test_background_and_leakage_scale_with_seconds():
    a = energy(Events(channels=8, seconds=1e-3), MODEL)
    b = energy(Events(channels=8, seconds=4e-3), MODEL)
    assert b.dram_background == pytest.approx(4 * a.dram_background)
    assert b.asic_leakage == pytest.approx(4 * a.asic_leakage)


def test_zero_events_cost_only_background_and_leakage():
    br = energy(Events(channels=8, seconds=1e-3), MODEL)
    for c in COMPONENTS:
        if c not in ("dram_background", "asic_leakage"):
            assert getattr(br, c) == 0.0, c
    assert br.dram_background == pytest.approx(0.264 * 8 * 1e-3)  # 264 mW x 8 channels x 1 ms
    assert br.asic_leakage == pytest.approx(0.740 * 1e-3)
    assert br.total == pytest.approx(br.dram_background + br.asic_leakage)
    assert energy(Events(channels=8), MODEL).total == 0.0


def test_per_token_divides_every_component():
    br = energy(_events(), MODEL)
    per = br.per_token(4)
    assert isinstance(per, EnergyBreakdown)
    for c in COMPONENTS:
        assert getattr(per, c) == pytest.approx(getattr(br, c) / 4)
    assert per.total == pytest.approx(br.total / 4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(PimgptError, match="token count must be a positive integer"):
            br.per_token(bad)


# --- validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["act", "pre", "rd", "wr", "mac", "gb_write", "mac_readout",
                                  "wr16", "ref", "io_bits", "vmem_words"])
def test_negative_count_is_an_error_naming_the_field(name):
    with pytest.raises(PimgptError, match=rf"events\.{name} must not be negative"):
        _events(**{name: -1})


@pytest.mark.parametrize("value", [1.5, "3", None, True])
def test_non_integer_count_is_an_error(value):
    with pytest.raises(PimgptError, match=r"events\.mac must be an integer count"):
        _events(mac=value)


def test_bad_event_fields_name_themselves():
    with pytest.raises(PimgptError, match=r"events\.seconds must not be negative"):
        _events(seconds=-1e-6)
    with pytest.raises(PimgptError, match=r"events\.seconds must be finite"):
        _events(seconds=float("nan"))
    with pytest.raises(PimgptError, match=r"events\.channels must be at least 1"):
        _events(channels=0)
    with pytest.raises(PimgptError, match=r"events\.asic_ops\['exp'\] must not be negative"):
        _events(asic_ops={"exp": -3})
    with pytest.raises(PimgptError, match=r"events\.asic_ops must be a mapping"):
        _events(asic_ops=[("exp", 3)])


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(EnergyModel)
                                  if f.name != "asic_pj"])
def test_negative_energy_is_an_error_naming_the_field(name):
    with pytest.raises(PimgptError, match=rf"energy model\.{name} must not be negative"):
        MODEL.replace(**{name: -0.1})


def test_bad_model_values_name_themselves():
    with pytest.raises(PimgptError, match=r"energy model\.asic_pj\['gelu'\] must not be negative"):
        MODEL.replace(asic_pj={"gelu": -1.0})
    with pytest.raises(PimgptError, match=r"energy model\.rd_pj must be finite"):
        MODEL.replace(rd_pj=float("inf"))
    with pytest.raises(PimgptError, match=r"energy model\.rd_pj must be a number"):
        MODEL.replace(rd_pj="548")
    with pytest.raises(PimgptError, match="unknown energy constant.*act_nj"):
        MODEL.replace(act_nj=1.0)


def test_unknown_asic_kind_is_an_error_listing_the_known_ones():
    with pytest.raises(PimgptError, match=r"kind\(s\) 'tanh' with no energy.*known: add"):
        energy(_events(asic_ops={"tanh": 1}), MODEL)


def test_energy_checks_its_argument_types():
    with pytest.raises(PimgptError, match="events must be an Events"):
        energy({"act": 1}, MODEL)
    with pytest.raises(PimgptError, match="model must be an EnergyModel"):
        energy(_events(), {"act_pj": 1})


# --- the model ------------------------------------------------------------------------------------

def test_models_are_frozen_and_replace_merges_asic_energies():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODEL.act_pj = 1.0
    with pytest.raises(TypeError):
        MODEL.asic_pj["exp"] = 1.0
    m = MODEL.replace(act_pj=716.0, asic_pj={"exp": 10.0})
    assert m.act_pj == 716.0 and m.asic_pj["exp"] == 10.0
    assert m.asic_pj["mul"] == MODEL.asic_pj["mul"]
    assert MODEL.act_pj == 2950.0 and MODEL.asic_pj["exp"] == 36.0  # the original is untouched
    assert EnergyModel.paper_default() == MODEL
    assert hash(EnergyModel.paper_default()) == hash(MODEL) and hash(_events()) == hash(_events())
    assert m.to_dict()["asic_pj"]["exp"] == 10.0


def test_every_opcode_kind_has_an_energy():
    assert set(ASIC_OP_KIND.values()) <= set(ASIC_KINDS)
    assert set(MODEL.asic_pj) == set(ASIC_KINDS)


def test_derived_constants_follow_from_their_sources():
    """The arithmetic of docs/energy.md, from the raw source numbers, to the rounding shown."""
    add, mul = 0.9 * SCALE_45_TO_28, 3.7 * SCALE_45_TO_28  # Horowitz 45 nm, scaled
    hp45 = 1.018 * 0.81 - 0.3107 * 0.9 + 0.1539  # Stillmaker & Baas energy factors at 0.9 V
    hp32 = 0.8367 * 0.81 - 0.4341 * 0.9 + 0.1701
    assert round(hp32 / hp45, 2) == SCALE_45_TO_28
    exp, recip = 12 * mul + 12 * add, 9 * mul + 4 * add
    expected = {
        "act_pj": 132.6 / 2 * 44.5, "rd_pj": 876.3 / 2 * 1.25, "wr_pj": 1106.3 / 2 * 1.25,
        "mac_pj": 3 * 876.3 / 2 * 1.0 / 16, "mac_readout_pj": 876.3 / 2 * 1.25,
        "background_mw_per_channel": 527.5 / 2,
        "ref_pj": 1.35 * (286 - 61) * 126 * 0.66, "gb_write_pj": 0.0397 * 256,
        "vmem_word_pj": 10 / 2 * SCALE_45_TO_28, "asic_leakage_mw": 5.75335 * 128,
        "asic_pj.add": add, "asic_pj.mul": mul, "asic_pj.exp": exp, "asic_pj.recip": recip,
        "asic_pj.rsqrt": 10 * mul + 4 * add, "asic_pj.gelu": 7 * mul + 5 * add + exp + recip,
    }
    for name, raw in expected.items():
        assert MODEL.value(name) == pytest.approx(raw, rel=0.02), name


# --- docs/energy.md -------------------------------------------------------------------------------

def _tables(text: str) -> dict[tuple[str, str], list[list[str]]]:
    """Markdown tables by their first two header cells: rows of stripped cells, no separator."""
    tables: dict[tuple[str, str], list[list[str]]] = {}
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            rows = [[c.strip() for c in row.strip().strip("|").split("|")] for row in block]
            tables[tuple(rows[0][:2])] = [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
            block = []
    return tables


def _number(cell: str) -> float:
    return float(cell.replace(",", "").replace("*", ""))


def test_every_constant_has_a_documented_value_unit_and_source():
    table = _tables(DOC.read_text())[("Constant", "Value")]
    names = [re.fullmatch(r"`([\w.]+)`", row[0]).group(1) for row in table]
    assert sorted(names) == sorted(MODEL.constant_names())
    assert len(names) == len(set(names))
    for (_, value, unit, source, how), name in zip(table, names):
        assert value and unit and source and how, name
        assert _number(value) == pytest.approx(MODEL.value(name), rel=1e-12), name


def test_every_source_tag_used_is_defined():
    text = DOC.read_text()
    used = set(re.findall(r"\[([A-Za-z0-9-]+)\]", "\n".join(
        " | ".join(r) for r in _tables(text)[("Constant", "Value")])))
    defined = set(re.findall(r"^\* \*\*\[([A-Za-z0-9-]+)\]\*\*", text, flags=re.M))
    assert used and used <= defined


def test_worked_example_matches_the_model():
    ch, banks = 8, 16
    ops = dict(add=139_008, sub=37_632, mul=94_464, sum=56_832, max=18_432, argmax=50_257,
               exp=18_432, recip=144, rsqrt=25, gelu=36_864)
    ev = Events(channels=ch, seconds=140e-6, act=950 * banks * ch, pre=950 * banks * ch, rd=48,
                wr=576, wr16=576, mac=60_000 * banks * ch, gb_write=4_700 * ch,
                mac_readout=1_100 * ch, ref=84 * ch,
                io_bits=(37_600 + 8_800 + 576 + 576 + 48) * 256,
                asic_ops=ops, vmem_words=1_284_963)
    br = energy(ev, MODEL)
    text = DOC.read_text()
    tables = _tables(text)
    events_doc = {row[0].strip("`"): row[1] for row in tables[("Event", "Count")]}
    for name in ("act", "pre", "mac", "rd", "wr", "wr16", "ref", "io_bits", "vmem_words"):
        assert _number(events_doc[name]) == getattr(ev, name), name
    for row in tables[("Component", "uJ")]:
        name = row[0].strip("`*")
        got = br.total if name == "total" else getattr(br, name)
        assert _number(row[1]) == pytest.approx(got * 1e6, abs=0.05), name
    total = re.search(r"\*\*Total: ([\d.]+) mJ/token\.\*\*", text)
    assert total and float(total.group(1)) == pytest.approx(br.per_token(1).total * 1e3, abs=0.005)
