"""The machine description: presets, validation messages, TOML loading, ns -> cycles."""

import dataclasses

import pytest

from pimgpt.errors import PimgptError
from pimgpt.hdl.params import (PAPER, PRESETS, TINY, Geometry, MachineConfig, load_config,
                               ns_to_cycles, preset, resolve_config)


def test_paper_preset_is_the_papers_organisation():
    g = PAPER.geometry
    assert (g.channels, g.banks_per_channel, g.banks) == (8, 16, 128)
    assert (g.row_bytes, g.row_elems, g.cols_per_row, g.mac_lanes) == (2048, 1024, 64, 16)
    assert g.gb_bytes == 2048 and g.capacity_bytes == 4 * 2**30
    assert PAPER.clocks.asic_mhz == 1000.0 and PAPER.clocks.tck_ns == 0.5
    # AiM GDDR6 preset cycles at tCK 0.5 ns (reference/pim-gpt-paper-notes.md 2.3)
    t = PAPER.timing
    cyc = {n: t.cycles(n, PAPER.clocks.dram_mhz) for n in ("tRCD_RD", "tRCD_MAC", "tRP",
                                                           "tRAS", "tRC", "tFAW", "tCL")}
    assert cyc == {"tRCD_RD": 36, "tRCD_MAC": 56, "tRP": 32, "tRAS": 54, "tRC": 89,
                   "tFAW": 42, "tCL": 50}


def test_ns_to_cycles_rounds_up_and_is_exact_on_multiples():
    assert ns_to_cycles(0.5, 2000) == 1
    assert ns_to_cycles(44.5, 2000) == 89
    assert ns_to_cycles(44.6, 2000) == 90
    assert ns_to_cycles(1.0, 1000) == 1
    assert ns_to_cycles(0, 1000) == 0


def test_presets_have_distinct_hashes_and_names_do_not_change_them():
    hashes = {c.hash for c in PRESETS.values()}
    assert len(hashes) == len(PRESETS)
    assert PAPER.replace(name="renamed").hash == PAPER.hash
    assert PAPER.replace(asic=dataclasses.replace(PAPER.asic, vmem_words=1024)).hash != PAPER.hash


@pytest.mark.parametrize("change, message", [
    (dict(channels=0), "geometry.channels must be positive, not 0"),
    (dict(banks_per_channel=12), "geometry.banks_per_channel must be a power of two, not 12"),
    (dict(rows=1000), "geometry.rows must be a power of two, not 1000"),
    (dict(row_bytes=-2), "geometry.row_bytes must be positive, not -2"),
    (dict(mac_lanes=8), "geometry.column_bytes (32) must equal geometry.mac_lanes (8)"),
    (dict(bank_groups=32), "geometry.banks_per_channel (16) must be a multiple of "
                           "geometry.bank_groups (32)"),
    (dict(channels=2.5), "geometry.channels must be an integer, not 2.5"),
])
def test_geometry_validation_messages(change, message):
    with pytest.raises(PimgptError) as exc:
        dataclasses.replace(PAPER.geometry, **change)
    assert message in str(exc.value)


@pytest.mark.parametrize("change, message", [
    (dict(tRAS=10.0), "timing.tRAS (10.0 ns) must be at least timing.tRCD_RD (18.0 ns)"),
    (dict(tRC=25.0), "timing.tRC (25.0 ns) must be at least timing.tRAS (27.0 ns)"),
    (dict(tRP=-1.0), "timing.tRP must be positive, not -1.0"),
    (dict(tRC=40.0), "timing.tRC (40.0 ns) must be at least tRAS + tRP (27.0 + 16.0 ns)"),
])
def test_timing_validation_messages(change, message):
    with pytest.raises(PimgptError) as exc:
        dataclasses.replace(PAPER.timing, **change)
    assert message in str(exc.value)


def test_isa_limits_are_enforced():
    assert PAPER.replace(geometry=dataclasses.replace(PAPER.geometry, channels=32)) \
        .geometry.banks == 512
    with pytest.raises(PimgptError, match="geometry.channels = 64 exceeds the ISA's limit of 32"):
        PAPER.replace(geometry=dataclasses.replace(PAPER.geometry, channels=64))


def test_unknown_preset():
    with pytest.raises(PimgptError, match=r"unknown preset 'huge' \(known: gddr6, paper, tiny\)"):
        preset("huge")


def test_toml_from_a_base_preset(tmp_path):
    f = tmp_path / "wide.toml"
    f.write_text('base = "paper"\nname = "wide"\n[geometry]\nchannels = 16\n'
                 '[clocks]\nasic_mhz = 100.0\n')
    cfg = load_config(f)
    assert cfg.name == "wide" and cfg.geometry.channels == 16 and cfg.clocks.asic_mhz == 100.0
    assert cfg.timing == PAPER.timing
    assert resolve_config(None, f) == cfg


def test_toml_round_trip_of_a_full_description(tmp_path):
    lines = []
    for group, values in TINY.to_dict().items():
        if group == "name":
            continue
        lines.append(f"[{group}]")
        # TOML spells booleans true/false
        lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}"
                  for k, v in values.items()]
    f = tmp_path / "tiny_copy.toml"
    f.write_text("\n".join(lines) + "\n")
    assert load_config(f).hash == TINY.hash


@pytest.mark.parametrize("text, message", [
    ('base = "paper"\n[geometry]\nchanels = 4\n', "unknown key(s) in [geometry]: chanels"),
    ('base = "paper"\n[memory]\nx = 1\n', "unknown section(s) memory"),
    ('[geometry]\nchannels = 4\n', "missing key(s) in [geometry]"),
    ('base = "paper"\n[timing]\ntRAS = 5.0\n', "timing.tRAS (5.0 ns) must be at least"),
    ('base = "nope"\n', "unknown preset 'nope'"),
    ('base = "paper"\n[geometry\n', "not valid TOML"),
])
def test_toml_errors(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(PimgptError) as exc:
        load_config(f)
    assert message in str(exc.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(PimgptError, match="config file not found"):
        load_config(tmp_path / "none.toml")


def test_preset_and_config_together_is_an_error(tmp_path):
    with pytest.raises(PimgptError, match="either --preset or --config"):
        resolve_config("paper", tmp_path / "x.toml")


def test_dataclasses_are_frozen_and_keyword_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PAPER.geometry.channels = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        Geometry(8, 4, 16, 16384, 2048, 32, 16, 2048)  # type: ignore[misc]
    assert isinstance(MachineConfig.from_dict(PAPER.to_dict()), MachineConfig)
