"""The ``pimgpt`` command line: every bad input is one ``pimgpt: error:`` line, exit status 2 and
no output file (nor a ``*.part`` temporary) left behind; the happy paths produce what they say.

Commands run in-process through :func:`pimgpt.cli.main` (fast); one test runs the real
``python -m pimgpt`` to check the process's exit status and stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from helpers.ckpt import random_arrays, write_hf_checkpoint

from pimgpt.cli import main
from pimgpt.hdl import isa
from pimgpt.hdl.params import PRESETS
from pimgpt.mapping.builtin import BUILTIN_SPECS, DEFAULT_MODEL
from pimgpt.mapping.model import GPTSpec, GPTWeights
from pimgpt.mapping.pimbin import read_pimbin, write_pimbin

# d_model not a multiple of 16, 3 heads of 20 (not a whole column), an odd vocabulary
AWKWARD = GPTSpec(name="awkward", n_layer=1, d_model=60, n_head=3, vocab=997, n_ctx=64)
# a vocabulary too small for byte-level text
SMALL_VOCAB = GPTSpec(name="small", n_layer=1, d_model=32, n_head=2, vocab=100, n_ctx=32)
TINY_CTX = BUILTIN_SPECS["tiny"].n_ctx  # 128


# --- helpers -------------------------------------------------------------------------------------

def _argv(args: tuple) -> list[str]:
    return [str(a) for a in args]


def ok(capsys: pytest.CaptureFixture, *args: object) -> str:
    """Run a command that must succeed; returns its stdout."""
    rc = main(_argv(args))
    out, err = capsys.readouterr()
    assert rc == 0, f"exit {rc}: {err}"
    return out


def ok_json(capsys: pytest.CaptureFixture, *args: object) -> dict:
    return json.loads(ok(capsys, *args))


def fail(capsys: pytest.CaptureFixture, *args: object) -> str:
    """Run a command that must fail: exit 2, nothing on stdout, exactly one
    ``pimgpt: error: ...`` line on stderr. Returns the message after the prefix."""
    rc = main(_argv(args))
    out, err = capsys.readouterr()
    assert rc == 2, f"exit {rc}\nstdout: {out}\nstderr: {err}"
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("pimgpt: error: "), lines[0]
    return lines[0][len("pimgpt: error: "):]


def part_files(directory: Path) -> list[str]:
    """Atomic-write temporaries (hidden ``.NAME.XXXX.part`` files) anywhere under directory."""
    return [os.path.join(root, f) for root, _dirs, files in os.walk(directory)
            for f in files if f.endswith(".part")]


def assert_nothing_written(directory: Path, *outputs: Path) -> None:
    for out in outputs:
        assert not Path(out).exists(), f"{out} was left behind"
    assert part_files(directory) == []


def compile_tiny(capsys: pytest.CaptureFixture, out: Path, *extra: object) -> Path:
    ok(capsys, "compile", "--model", "tiny", "--preset", "tiny", "-o", out, *extra)
    return out


def patch_bytes(path: Path, offset: int, blob: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + len(blob)] = blob
    path.write_bytes(bytes(data))


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def awkward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face GPT-2 checkpoint of an awkward shape (never modified: copy it first)."""
    return write_hf_checkpoint(tmp_path_factory.mktemp("ckpt") / "awkward", AWKWARD,
                               random_arrays(AWKWARD, 3))


@pytest.fixture(scope="module")
def small_vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf_checkpoint(tmp_path_factory.mktemp("ckpt") / "small", SMALL_VOCAB,
                               random_arrays(SMALL_VOCAB, 4))


@pytest.fixture
def awkward_copy(awkward_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(awkward_dir, tmp_path / "ckpt"))


@pytest.fixture
def tiny_pimbin(capsys: pytest.CaptureFixture, tmp_path: Path) -> Path:
    """The tiny model compiled for the tiny machine, in this test's own directory."""
    return compile_tiny(capsys, tmp_path / "tiny.pimbin")


# --- compile: bad input --------------------------------------------------------------------------

def _truncate(ckpt: Path) -> None:
    st = ckpt / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[:len(data) // 2])


def _corrupt_header(ckpt: Path) -> None:
    # the JSON header starts right after the 8-byte length: make it invalid UTF-8 / JSON
    patch_bytes(ckpt / "model.safetensors", 8, b"\xff\xfe{garbage")


def _rewrite(mutate: Callable[[dict], None]) -> Callable[[Path], None]:
    def go(ckpt: Path) -> None:
        arrays = random_arrays(AWKWARD, 3)
        mutate(arrays)
        write_hf_checkpoint(ckpt, AWKWARD, arrays)
    return go


def _wrong_shape(arrays: dict) -> None:
    arrays["h.0.attn.c_proj.weight"] = np.zeros((60, 61), np.float32)


def _missing_tensor(arrays: dict) -> None:
    del arrays["h.0.mlp.c_fc.bias"]


def _llama(ckpt: Path) -> None:
    (ckpt / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 60,
        "intermediate_size": 160, "num_attention_heads": 3, "num_hidden_layers": 1,
        "num_key_value_heads": 3, "vocab_size": 997, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6, "hidden_act": "silu"}))


def _no_weights(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()


@pytest.mark.parametrize("damage, expected", [
    (_truncate, ["model.safetensors", "truncated safetensors file"]),
    (_corrupt_header, ["model.safetensors", "corrupt safetensors header"]),
    (_rewrite(_wrong_shape),
     ["tensor h.0.attn.c_proj.weight has shape (60, 61), expected (60, 60)"]),
    (_rewrite(_missing_tensor), ["missing tensor(s) h.0.mlp.c_fc.bias"]),
    (_llama, ["unsupported architecture 'llama'", "config.json"]),
    (_no_weights, ["no model.safetensors", "config.json and model.safetensors"]),
], ids=["truncated", "corrupt-header", "wrong-shape", "missing-tensor", "llama", "no-weights"])
def test_compile_rejects_a_bad_checkpoint(capsys, tmp_path, awkward_copy, damage, expected):
    damage(awkward_copy)
    out = tmp_path / "out.pimbin"
    msg = fail(capsys, "compile", awkward_copy, "--preset", "tiny", "-o", out)
    for text in expected:
        assert text in msg
    assert_nothing_written(tmp_path, out)


def test_compile_missing_checkpoint_path(capsys, tmp_path):
    out = tmp_path / "out.pimbin"
    missing = tmp_path / "no-such-model"
    assert fail(capsys, "compile", missing, "-o", out) == f"checkpoint not found: {missing}"
    assert_nothing_written(tmp_path, out)


def test_compile_directory_without_checkpoint_files(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out.pimbin"
    msg = fail(capsys, "compile", empty, "-o", out)
    assert msg.startswith(f"{empty}: no config.json or model.safetensors")
    assert_nothing_written(tmp_path, out)


def test_compile_model_larger_than_pim_memory_fails_before_reading_weights(
        capsys, tmp_path, monkeypatch):
    def no_reads(self, name):
        raise AssertionError(f"weight {name} was read before the capacity check")
    monkeypatch.setattr(GPTWeights, "tensor", no_reads)
    out = tmp_path / "big.pimbin"
    t0 = time.perf_counter()
    msg = fail(capsys, "compile", "--model", "gpt2-small", "--preset", "tiny", "-o", out)
    assert time.perf_counter() - t0 < 5.0
    assert "model gpt2-small" in msg
    assert "MiB of PIM memory" in msg
    assert "machine 'tiny' has 4.0 MiB" in msg
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("args, expected", [
    (["--max-tokens", "0"], "--max-tokens must be positive, not 0"),
    (["--max-tokens", "-3"], "--max-tokens must be positive, not -3"),
    (["--max-tokens", str(TINY_CTX + 1)],
     f"--max-tokens {TINY_CTX + 1} exceeds the context of model tiny ({TINY_CTX} positions)"),
    (["--preset", "huge"], "unknown preset 'huge' (known: gddr6, paper, tiny)"),
])
def test_compile_rejects_bad_options(capsys, tmp_path, args, expected):
    out = tmp_path / "out.pimbin"
    preset = [] if "--preset" in args else ["--preset", "tiny"]
    msg = fail(capsys, "compile", "--model", "tiny", *preset, *args, "-o", out)
    assert msg == expected
    assert_nothing_written(tmp_path, out)


def test_compile_unknown_model_lists_the_known_ones(capsys, tmp_path):
    out = tmp_path / "out.pimbin"
    msg = fail(capsys, "compile", "--model", "gpt5", "-o", out)
    assert msg.startswith("unknown model 'gpt5' (known: ")
    for name in BUILTIN_SPECS:
        assert name in msg
    assert_nothing_written(tmp_path, out)


def test_compile_needs_exactly_one_source(capsys, tmp_path, awkward_dir):
    out = tmp_path / "out.pimbin"
    assert fail(capsys, "compile", awkward_dir, "--model", "tiny", "-o", out) == \
        "give either a CHECKPOINT or --model NAME, not both"
    assert fail(capsys, "compile", "-o", out).startswith("nothing to compile")
    assert_nothing_written(tmp_path, out)


def test_compile_output_must_end_in_pimbin(capsys, tmp_path):
    out = tmp_path / "out.bin"
    msg = fail(capsys, "compile", "--model", "tiny", "--preset", "tiny", "-o", out)
    assert msg == f"output file must end in .pimbin, not {str(out)!r}"
    assert_nothing_written(tmp_path, out)


def test_compile_output_directory_missing(capsys, tmp_path):
    out = tmp_path / "no-such-dir" / "out.pimbin"
    msg = fail(capsys, "compile", "--model", "tiny", "--preset", "tiny", "-o", out)
    assert msg == f"output directory does not exist: {out.parent}"
    assert_nothing_written(tmp_path, out)
    assert not out.parent.exists()


def test_failed_compile_keeps_an_existing_output_intact(capsys, tmp_path):
    out = tmp_path / "out.pimbin"
    out.write_bytes(b"previous contents")
    msg = fail(capsys, "compile", "--model", "gpt2-small", "--preset", "tiny", "-o", out)
    assert "PIM memory" in msg
    assert out.read_bytes() == b"previous contents"
    assert part_files(tmp_path) == []


# --- compile / config: machine description files -------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ('base = "tiny"\n[timing\ntRAS = 30.0\n', ["not valid TOML", "line 2"]),
    ('base = "tiny"\n[timing]\ntRASS = 30.0\n', ["unknown key(s) in [timing]: tRASS"]),
    ('base = "tiny"\n[timingz]\ntRAS = 30.0\n', ["unknown section(s) timingz"]),
    ('base = "tiny"\n[timing]\ntRAS = 10.0\n',
     ["timing.tRAS (10.0 ns) must be at least timing.tRCD_RD (18.0 ns)"]),
    ('base = "tiny"\n[timing]\ntRAS = "long"\n', ["timing.tRAS must be a number"]),
    ('base = "tiny"\n[geometry]\nchannels = 0\n', ["geometry.channels must be positive"]),
    ('[geometry]\nchannels = 2\n', ["missing key(s) in [geometry]:", "rows"]),
], ids=["bad-toml", "unknown-key", "unknown-section", "tRAS<tRCD", "not-a-number",
        "zero-channels", "missing-keys"])
def test_compile_rejects_a_bad_config_file(capsys, tmp_path, text, expected):
    cfg = write_toml(tmp_path / "machine.toml", text)
    out = tmp_path / "out.pimbin"
    msg = fail(capsys, "compile", "--model", "tiny", "--config", cfg, "-o", out)
    for part in expected:
        assert part in msg
    assert_nothing_written(tmp_path, out)
    # config show reports the very same problem
    assert fail(capsys, "config", "show", "--config", cfg) == msg


def test_compile_config_file_missing(capsys, tmp_path):
    out = tmp_path / "out.pimbin"
    cfg = tmp_path / "nope.toml"
    assert fail(capsys, "compile", "--model", "tiny", "--config", cfg, "-o", out) == \
        f"config file not found: {cfg}"
    assert_nothing_written(tmp_path, out)


def test_preset_and_config_are_exclusive(capsys, tmp_path):
    cfg = write_toml(tmp_path / "m.toml", 'base = "tiny"\n')
    out = tmp_path / "out.pimbin"
    assert fail(capsys, "compile", "--model", "tiny", "--preset", "tiny", "--config", cfg,
                "-o", out) == "give either --preset or --config, not both"
    assert_nothing_written(tmp_path, out)


def test_config_file_that_is_not_utf8(capsys, tmp_path):
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes(b'base = "tiny"\n# caf\xe9\n')
    out = tmp_path / "out.pimbin"
    msg = fail(capsys, "compile", "--model", "tiny", "--config", cfg, "-o", out)
    assert str(cfg) in msg
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_timing_is_rejected_naming_the_key(capsys, tmp_path, value):
    # tRC, tRFC and tREFI must stay >= tRAS (and each other) for inf to reach the finiteness check
    extra = "tRC = inf\ntRFC = inf\ntREFI = inf\n" if value == "inf" else ""
    cfg = write_toml(tmp_path / "m.toml", f'base = "tiny"\n[timing]\ntRAS = {value}\n{extra}')
    assert "timing.tR" in fail(capsys, "config", "show", "--config", cfg)
    out = tmp_path / "out.pimbin"
    assert "timing.tR" in fail(capsys, "compile", "--model", "tiny", "--config", cfg, "-o", out)
    assert_nothing_written(tmp_path, out)


# --- run: bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--prompt-ids", "1,two,3"], "--prompt-ids must be comma-separated integers, not '1,two,3'"),
    (["--prompt-ids", "1.5"], "--prompt-ids must be comma-separated integers, not '1.5'"),
    (["--prompt-ids", " , "], "--prompt-ids is empty"),
    (["--prompt-ids", "1,256"], "prompt token id 256 is outside the vocabulary of tiny (0..255)"),
    (["--prompt-ids", "-1"], "prompt token id -1 is outside the vocabulary of tiny (0..255)"),
    (["--prompt-ids", "1", "--tokens", "-1"], "--tokens must be >= 0, not -1"),
    (["--prompt", ""], "--prompt encodes to no tokens"),
    (["--prompt-ids", "1,2,3", "--tokens", "200"],
     f"prompt (3 tokens) plus --tokens 200 is 203 positions, more than the context of tiny "
     f"({TINY_CTX})"),
    (["--prompt-ids", "1", "--tokens", "4", "--max-tokens", "0"],
     "--max-tokens must be positive, not 0"),
    (["--model", "nope"], None),
])
def test_run_rejects_bad_input(capsys, tmp_path, args, expected):
    model = [] if "--model" in args else ["--model", "tiny"]
    msg = fail(capsys, "run", *model, "--preset", "tiny", *args)
    if expected is None:
        assert msg.startswith("unknown model 'nope'")
    else:
        assert msg == expected
    assert part_files(tmp_path) == []


def test_run_pimbin_with_too_little_kv_space(capsys, tmp_path):
    small = compile_tiny(capsys, tmp_path / "kv8.pimbin", "--max-tokens", "8")
    msg = fail(capsys, "run", small, "--prompt-ids", "1,2,3", "--tokens", "8")
    assert "reserved KV space for 8" in msg
    assert "--max-tokens" in msg
    # within the reservation it runs
    out = json.loads(ok(capsys, "run", small, "--prompt-ids", "1,2,3", "--tokens", "5", "--json"))
    assert len(out["generated_ids"]) == 5


def test_kv_reservation_rule_is_the_same_for_a_pimbin_and_a_direct_run(capsys, tmp_path):
    """``run --max-tokens 8`` and ``run`` of a binary compiled with ``--max-tokens 8`` must
    accept and reject the same prompt + tokens."""
    small = compile_tiny(capsys, tmp_path / "kv8.pimbin", "--max-tokens", "8")
    for tokens in (5, 6, 7):
        direct = main(["run", "--model", "tiny", "--preset", "tiny", "--max-tokens", "8",
                       "--prompt-ids", "1,2,3", "--tokens", str(tokens)])
        _, direct_err = capsys.readouterr()
        binary = main(["run", str(small), "--prompt-ids", "1,2,3", "--tokens", str(tokens)])
        _, binary_err = capsys.readouterr()
        assert direct == binary, (f"--tokens {tokens}: direct run exit {direct} "
                                  f"({direct_err.strip()}), .pimbin run exit {binary} "
                                  f"({binary_err.strip()})")


def test_run_check_needs_weights(capsys, tiny_pimbin):
    assert fail(capsys, "run", tiny_pimbin, "--check", "--prompt-ids", "1") == \
        "--check needs the model weights: give a checkpoint or --model instead of a .pimbin"


def test_run_pimbin_and_model_are_exclusive(capsys, tiny_pimbin):
    assert fail(capsys, "run", tiny_pimbin, "--model", "tiny") == \
        "give either a .pimbin or --model NAME, not both"


def test_run_missing_pimbin(capsys, tmp_path):
    missing = tmp_path / "gone.pimbin"
    assert fail(capsys, "run", missing, "--prompt-ids", "1") == \
        f"binary file not found: {missing}"


@pytest.mark.parametrize("prompt", [["--prompt", "hi"], []], ids=["--prompt", "default"])
def test_text_prompt_needs_a_byte_sized_vocabulary(capsys, small_vocab_dir, prompt):
    msg = fail(capsys, "run", small_vocab_dir, "--preset", "tiny", *prompt)
    assert "100-token vocabulary" in msg
    assert "--prompt-ids" in msg
    # with ids it runs
    out = json.loads(ok(capsys, "run", small_vocab_dir, "--preset", "tiny", "--prompt-ids",
                        "1,99", "--tokens", "2", "--json"))
    assert out["prompt_ids"] == [1, 99]
    assert len(out["generated_ids"]) == 2
    assert "generated_text" not in out


def test_run_pimbin_without_a_model(capsys, tmp_path):
    """A program from ``pimgpt asm`` has no model: running it is an error, not a traceback."""
    src = tmp_path / "prog.s"
    src.write_text("SLI rd=r4 imm=1\nEND\n")
    prog = tmp_path / "prog.pimbin"
    ok(capsys, "asm", src, "--preset", "tiny", "-o", prog)
    msg = fail(capsys, "run", prog, "--prompt-ids", "1")
    assert str(prog) in msg or "model" in msg


def test_pimbin_with_incomplete_model_metadata(capsys, tmp_path):
    """A .pimbin whose model description lacks a field (an older or foreign writer): run and
    disasm report it in one line instead of a KeyError/TypeError traceback."""
    good = compile_tiny(capsys, tmp_path / "good.pimbin", "--layout-only")
    binary = read_pimbin(good)
    del binary.meta["model"]["n_head"]
    bad = tmp_path / "bad.pimbin"
    write_pimbin(bad, binary)
    assert "n_head" in fail(capsys, "run", bad, "--prompt-ids", "1")
    assert "n_head" in fail(capsys, "disasm", bad)


def test_run_layout_only_pimbin(capsys, tmp_path):
    lo = compile_tiny(capsys, tmp_path / "lo.pimbin", "--layout-only")
    assert "--layout-only" in fail(capsys, "run", lo, "--prompt-ids", "1")


# --- .pimbin damage, through run and disasm ------------------------------------------------------

def _bad_magic(p: Path) -> None:
    patch_bytes(p, 0, b"NOTAPIMB")


def _bad_version(p: Path) -> None:
    patch_bytes(p, 8, (99).to_bytes(4, "little"))


def _bad_isa(p: Path) -> None:
    patch_bytes(p, 12, bytes(b ^ 0xFF for b in bytes.fromhex(isa.ISA_HASH)))


def _truncated(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[:len(data) // 2])


def _tiny_header(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:40])


@pytest.mark.parametrize("damage, expected", [
    (_bad_magic, "is not a .pimbin file (bad magic number)"),
    (_bad_version, "has .pimbin format version 99; this pimgpt reads version 2 only"),
    (_bad_isa, "was built for a different ISA"),
    (_truncated, "is truncated"),
    (_tiny_header, "is truncated"),
], ids=["magic", "version", "isa-hash", "truncated", "truncated-header"])
def test_damaged_pimbin(capsys, tmp_path, tiny_pimbin, damage, expected):
    damage(tiny_pimbin)
    for argv in (["run", tiny_pimbin, "--prompt-ids", "1,2", "--tokens", "1"],
                 ["disasm", tiny_pimbin, "-o", tmp_path / "out.s"]):
        msg = fail(capsys, *argv)
        assert msg.startswith(str(tiny_pimbin))
        assert expected in msg
    assert_nothing_written(tmp_path, tmp_path / "out.s")


def test_pimbin_for_another_machine(capsys, tiny_pimbin):
    msg = fail(capsys, "run", tiny_pimbin, "--preset", "paper", "--prompt-ids", "1")
    assert msg.startswith(f"{tiny_pimbin} was compiled for machine 'tiny'")
    assert "not 'paper'" in msg
    # with the matching preset (or none) it runs
    ok(capsys, "run", tiny_pimbin, "--preset", "tiny", "--prompt-ids", "1", "--tokens", "1")


def test_disasm_output_directory_missing(capsys, tmp_path, tiny_pimbin):
    out = tmp_path / "nowhere" / "x.s"
    assert fail(capsys, "disasm", tiny_pimbin, "-o", out) == \
        f"output directory does not exist: {out.parent}"
    assert_nothing_written(tmp_path, out)


# --- asm: bad input ------------------------------------------------------------------------------

def test_asm_missing_source(capsys, tmp_path):
    out = tmp_path / "out.pimbin"
    src = tmp_path / "missing.s"
    assert fail(capsys, "asm", src, "-o", out) == f"assembly file not found: {src}"
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("text, expected", [
    ("SLI rd=r4 imm=0\nSLI rd=r4 imm=\nEND\n", ":2: malformed operand 'imm='"),
    ("SLI rd=r4 imm=0\n\nFROB rd=r1\nEND\n", ":3: unknown opcode 'FROB'"),
    ("BLT rs=r1 rt=r2 imm=nowhere\nEND\n", ":1: undefined label 'nowhere'"),
], ids=["syntax", "opcode", "label"])
def test_asm_errors_name_file_and_line(capsys, tmp_path, text, expected):
    src = tmp_path / "prog.s"
    src.write_text(text)
    out = tmp_path / "out.pimbin"
    msg = fail(capsys, "asm", src, "-o", out)
    assert msg.startswith(f"{src}{expected}"), msg
    assert_nothing_written(tmp_path, out)


def test_asm_output_must_end_in_pimbin(capsys, tmp_path):
    src = tmp_path / "prog.s"
    src.write_text("END\n")
    out = tmp_path / "prog.bin"
    assert fail(capsys, "asm", src, "-o", out).startswith("output file must end in .pimbin")
    assert_nothing_written(tmp_path, out)


# --- output files --------------------------------------------------------------------------------

def test_output_path_that_is_a_directory(capsys, tmp_path):
    out = tmp_path / "taken.pimbin"
    out.mkdir()
    msg = fail(capsys, "compile", "--model", "tiny", "--preset", "tiny", "-o", out)
    assert str(out) in msg
    assert out.is_dir() and list(out.iterdir()) == []
    assert part_files(tmp_path) == []


def test_missing_output_directory_is_reported_before_compiling(capsys, tmp_path, monkeypatch):
    """A typo in -o must not cost a whole compile (minutes and GBs for a large model)."""
    def no_reads(self, name):
        raise AssertionError(f"weight {name} was read before the output path was checked")
    monkeypatch.setattr(GPTWeights, "tensor", no_reads)
    out = tmp_path / "typo" / "out.pimbin"
    assert "output directory does not exist" in fail(
        capsys, "compile", "--model", "tiny", "--preset", "tiny", "-o", out)


def test_output_files_get_ordinary_permissions(capsys, tmp_path, tiny_pimbin):
    """Atomic writes must not leave mkstemp's 0600: outputs follow the umask like any file."""
    old = os.umask(0o022)
    try:
        out = compile_tiny(capsys, tmp_path / "perm.pimbin")
        ok(capsys, "disasm", out, "-o", tmp_path / "perm.s")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "perm.s").stat().st_mode) == 0o644


# --- happy paths ---------------------------------------------------------------------------------

def test_run_json_default_model(capsys):
    out = ok_json(capsys, "run", "--json", "--tokens", "3")
    assert out["model"] == DEFAULT_MODEL
    assert out["prompt_ids"] == list(b"def ")
    assert out["prompt_text"] == "def "
    assert len(out["generated_ids"]) == 3
    assert all(0 <= t < 256 for t in out["generated_ids"])
    assert out["steps"] == len(out["prompt_ids"]) + 2
    assert out["instructions_per_step"] > 0


def test_run_text_output(capsys):
    text = ok(capsys, "run", "--preset", "tiny", "--prompt", "Hi", "--tokens", "2")
    assert "prompt ids:    72,105" in text
    assert "generated ids: " in text


def test_run_check_is_golden_bit_exact(capsys):
    out = ok_json(capsys, "run", "--check", "--json", "--tokens", "4")
    check = out["check"]
    assert check["golden_bit_exact"] is True
    assert check["golden_tokens"] == out["generated_ids"]
    assert len(out["generated_ids"]) == 4
    assert 0.0 <= check["reference_top1_agreement"] <= 1.0


def test_compiled_pimbin_runs_like_the_direct_model(capsys, tmp_path):
    out = tmp_path / "x.pimbin"
    report = ok_json(capsys, "compile", "--model", "tiny", "--preset", "tiny", "-o", out,
                     "--json")
    assert report["output"] == str(out) and report["max_tokens"] == TINY_CTX
    from_file = ok_json(capsys, "run", out, "--prompt-ids", "1,2,3", "--tokens", "4", "--json")
    direct = ok_json(capsys, "run", "--model", "tiny", "--preset", "tiny", "--prompt-ids",
                     "1,2,3", "--tokens", "4", "--json")
    assert from_file["prompt_ids"] == direct["prompt_ids"] == [1, 2, 3]
    assert len(direct["generated_ids"]) == 4
    assert from_file["generated_ids"] == direct["generated_ids"]
    assert from_file["machine"] == "tiny"


def test_checkpoint_disasm_asm_round_trip(capsys, tmp_path, awkward_dir):
    binary = tmp_path / "awk.pimbin"
    text = ok(capsys, "compile", awkward_dir, "--preset", "tiny", "-o", binary)
    assert f"-> {binary}" in text
    listing = tmp_path / "awk.s"
    ok(capsys, "disasm", binary, "-o", listing)
    assert ok(capsys, "disasm", binary) == listing.read_text()
    head = listing.read_text().splitlines()[:2]
    assert "machine 'tiny'" in head[0]
    assert "d_model 60, 3 heads, vocab 997" in head[1]
    again = tmp_path / "again.pimbin"
    ok(capsys, "asm", listing, "--preset", "tiny", "-o", again)
    original = read_pimbin(binary).code
    assert len(original) > 100
    assert read_pimbin(again).code == original
    # and the checkpoint's .pimbin runs
    out = ok_json(capsys, "run", binary, "--prompt-ids", "5,996", "--tokens", "3", "--json")
    assert len(out["generated_ids"]) == 3 and all(0 <= t < 997 for t in out["generated_ids"])


def test_compile_is_byte_identical_across_runs(capsys, tmp_path, awkward_dir):
    for source in (["--model", "tiny"], [awkward_dir]):
        a, b = tmp_path / "a.pimbin", tmp_path / "b.pimbin"
        ok(capsys, "compile", *source, "--preset", "tiny", "-o", a)
        ok(capsys, "compile", *source, "--preset", "tiny", "-o", b)
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_show(capsys, name):
    out = ok_json(capsys, "config", "show", "--preset", name, "--json")
    assert out["name"] == name
    assert out["geometry"]["channels"] == PRESETS[name].geometry.channels > 0
    assert out["hash"] == PRESETS[name].hash
    assert out["derived"]["banks"] == PRESETS[name].geometry.banks
    text = ok(capsys, "config", "show", "--preset", name)
    assert f"# machine '{name}'" in text and "[timing]" in text


def test_config_show_from_file(capsys, tmp_path):
    cfg = write_toml(tmp_path / "mine.toml", 'base = "tiny"\n[timing]\ntRAS = 28.0\n')
    out = ok_json(capsys, "config", "show", "--config", cfg, "--json")
    assert out["timing"]["tRAS"] == 28.0
    assert out["geometry"] == PRESETS["tiny"].to_dict()["geometry"]
    assert out["hash"] != PRESETS["tiny"].hash


def test_models_json(capsys):
    out = ok_json(capsys, "models", "--json")
    assert out["default"] == "tiny"
    assert len(out["models"]) == 9
    assert [m["name"] for m in out["models"]] == list(BUILTIN_SPECS)
    tiny = next(m for m in out["models"] if m["name"] == "tiny")
    assert (tiny["vocab"], tiny["ctx"]) == (256, TINY_CTX)
    assert "(default)" in ok(capsys, "models")


@pytest.mark.parametrize("argv, options", [
    ([], ["run", "compile", "models", "config", "asm", "disasm", "--version"]),
    (["run"], ["--prompt", "--prompt-ids", "--tokens", "--max-tokens", "--check", "--json",
               "--model", "--preset", "--config", "CHECKPOINT"]),
    (["compile"], ["--output", "--max-tokens", "--layout-only", "--json", "--model",
                   "--preset", "--config", "CHECKPOINT"]),
    (["models"], ["--json"]),
    (["config"], ["show"]),
    (["config", "show"], ["--preset", "--config", "--json"]),
    (["asm"], ["FILE.s", "--output", "--preset", "--config"]),
    (["disasm"], ["FILE.pimbin", "--output"]),
], ids=["pimgpt", "run", "compile", "models", "config", "config-show", "asm", "disasm"])
def test_help(capsys, argv, options):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pimgpt")
    for opt in options:
        assert opt in out, f"{opt} missing from 'pimgpt {' '.join(argv)} --help'"


def test_argparse_errors_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["compile", "--model", "tiny"])  # -o is required
    assert exc.value.code == 2
    assert "-o/--output" in capsys.readouterr().err


def test_real_process_exit_status_and_stderr(tmp_path):
    missing = tmp_path / "missing"
    out = tmp_path / "out.pimbin"
    proc = subprocess.run([sys.executable, "-m", "pimgpt", "compile", str(missing), "-o",
                           str(out)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"pimgpt: error: checkpoint not found: {missing}\n"
    assert_nothing_written(tmp_path, out)
    proc = subprocess.run([sys.executable, "-m", "pimgpt", "run", "--prompt-ids", "1,2",
                           "--tokens", "2", "--json", "--preset", "tiny"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal
    assert json.loads(proc.stdout)["prompt_ids"] == [1, 2]


def test_no_overlap_compiles_the_plain_order(tmp_path, capsys):
    """--no-overlap is recorded in the binary and gives a different (longer-running) program
    with the same results: the step takes more cycles on the simulator."""
    outs = {}
    for flag in ([], ["--no-overlap"]):
        path = tmp_path / f"m{len(flag)}.pimbin"
        assert main(["compile", "--model", DEFAULT_MODEL, "--max-tokens", "16", "-o", str(path),
                     *flag]) == 0
        outs[bool(flag)] = read_pimbin(path)
    capsys.readouterr()
    default = {"overlap": True, "row_fill": True, "head_concat": True, "kv_layout": True}
    assert outs[False].meta["options"] == default
    assert outs[True].meta["options"] == {**default, "overlap": False}
    assert outs[False].code != outs[True].code
    assert np.array_equal(outs[False].image, outs[True].image)
    for flag in ([], ["--no-overlap"]):
        assert main(["simulate", "--model", DEFAULT_MODEL, "--prompt-ids", "1,2", "--tokens", "2",
                     "--json", *flag]) == 0
        outs[("sim", bool(flag))] = json.loads(capsys.readouterr().out)
    assert outs[("sim", False)]["generated_ids"] == outs[("sim", True)]["generated_ids"]
    assert outs[("sim", False)]["total_cycles"] < outs[("sim", True)]["total_cycles"]


@pytest.mark.parametrize("flag,option", [("--no-row-fill", "row_fill"),
                                         ("--no-head-concat", "head_concat"),
                                         ("--no-kv-layout", "kv_layout")])
def test_mapping_switches_are_recorded(tmp_path, capsys, flag, option):
    path = tmp_path / "m.pimbin"
    assert main(["compile", "--model", DEFAULT_MODEL, "--max-tokens", "16", "-o", str(path),
                 flag]) == 0
    capsys.readouterr()
    options = read_pimbin(path).meta["options"]
    assert options[option] is False
    assert all(v is True for k, v in options.items() if k != option)
