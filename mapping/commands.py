"""The ``pimgpt`` subcommands that compile, run and inspect programs (CLI glue only)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pimgpt.cli import print_json
from pimgpt.errors import PimgptError
from pimgpt.hdl.params import MachineConfig, ns_to_cycles, resolve_config
from pimgpt.mapping.model import GPTSpec, GPTWeights

DEFAULT_PROMPT = "def "


def _config(args: argparse.Namespace) -> MachineConfig:
    return resolve_config(getattr(args, "preset", None), getattr(args, "config", None))


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr for interactive use; silent when piped or with --json."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False,
                disable=not enabled or not sys.stderr.isatty())


def load_model(checkpoint: str | None, model: str | None, default: str | None = None
               ) -> GPTWeights:
    """Weights from a checkpoint path or a built-in name (``default`` when neither is given)."""
    from pimgpt.mapping import builtin
    if checkpoint and model:
        raise PimgptError("give either a CHECKPOINT or --model NAME, not both")
    if checkpoint:
        from pimgpt.mapping.checkpoint import load_checkpoint
        return load_checkpoint(checkpoint)
    name = model or default
    if not name:
        raise PimgptError("nothing to compile: give a CHECKPOINT or --model NAME "
                          "(see 'pimgpt models')")
    return builtin.builtin_model(name)


def compile_options(args: argparse.Namespace):
    """The :class:`~pimgpt.mapping.compiler.CompileOptions` the command line asks for."""
    from pimgpt.mapping.compiler import CompileOptions
    return CompileOptions(overlap=not getattr(args, "no_overlap", False),
                          row_fill=not getattr(args, "no_row_fill", False),
                          head_concat=not getattr(args, "no_head_concat", False),
                          kv_layout=not getattr(args, "no_kv_layout", False))


def _check_positive(name: str, value: int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise PimgptError(f"{name} must be {'>= 0' if allow_zero else 'positive'}, not {value}")


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise PimgptError(f"--prompt-ids must be comma-separated integers, not {text!r}") \
            from None
    if not ids:
        raise PimgptError("--prompt-ids is empty")
    return ids


def resolve_prompt(args: argparse.Namespace, spec: GPTSpec, binary: Any = None
                   ) -> tuple[list[int], Any, int]:
    """The prompt of ``run``/``simulate`` (ids, or text through the model's tokenizer), checked
    against the vocabulary, the context and a .pimbin's KV space; returns the ids, the tokenizer
    (None with --prompt-ids) and the positions needed (prompt plus --tokens)."""
    from pimgpt.mapping.tokenizer import get_tokenizer

    tokenizer = None
    if args.prompt_ids is not None:
        prompt_ids = _parse_ids(args.prompt_ids)
    else:
        tokenizer = get_tokenizer(spec)
        prompt_ids = tokenizer.encode(args.prompt if args.prompt is not None else DEFAULT_PROMPT)
        if not prompt_ids:
            raise PimgptError("--prompt encodes to no tokens")
    bad = [t for t in prompt_ids if not 0 <= t < spec.vocab]
    if bad:
        raise PimgptError(f"prompt token id {bad[0]} is outside the vocabulary of "
                          f"{spec.name} (0..{spec.vocab - 1})")
    needed = len(prompt_ids) + args.tokens
    if needed > spec.n_ctx:
        raise PimgptError(f"prompt ({len(prompt_ids)} tokens) plus --tokens {args.tokens} is "
                          f"{needed} positions, more than the context of {spec.name} "
                          f"({spec.n_ctx})")
    if binary is not None and needed > int(binary.meta.get("max_tokens", spec.n_ctx)):
        raise PimgptError(f"prompt ({len(prompt_ids)} tokens) plus --tokens {args.tokens} is "
                          f"{needed} positions, but {args.checkpoint} reserved KV space for "
                          f"{binary.meta['max_tokens']} (compile it with a larger --max-tokens, "
                          f"up to the model's context {spec.n_ctx})")
    return prompt_ids, tokenizer, needed


def _spec_from_meta(meta: dict[str, Any], path: str) -> GPTSpec:
    model = meta.get("model")
    if not isinstance(model, dict):
        raise PimgptError(f"{path} holds no compiled GPT model (no model metadata: it was not "
                          f"made by 'pimgpt compile'), so it cannot generate tokens")
    try:
        return GPTSpec(**model)
    except TypeError as exc:
        raise PimgptError(f"{path}: corrupt model metadata ({exc})") from None


# --- run -----------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from pimgpt.mapping.tokenizer import get_tokenizer
    from pimgpt.sim.machine import FunctionalMachine

    _check_positive("--tokens", args.tokens, allow_zero=True)
    _check_positive("--max-tokens", args.max_tokens)
    weights = None
    binary = None
    if args.checkpoint and args.checkpoint.endswith(".pimbin"):
        if args.model:
            raise PimgptError("give either a .pimbin or --model NAME, not both")
        if args.check:
            raise PimgptError("--check needs the model weights: give a checkpoint or --model "
                              "instead of a .pimbin")
        from pimgpt.mapping.pimbin import read_pimbin
        cfg_given = args.preset or args.config
        binary = read_pimbin(args.checkpoint, _config(args) if cfg_given else None)
        config = binary.config
        spec = _spec_from_meta(binary.meta, args.checkpoint)
    else:
        from pimgpt.mapping.builtin import DEFAULT_MODEL
        config = _config(args)
        weights = load_model(args.checkpoint, args.model, DEFAULT_MODEL)
        spec = weights.spec

    text_mode = args.prompt is not None or args.prompt_ids is None
    prompt_ids, tokenizer, needed = resolve_prompt(args, spec, binary)
    t0 = time.perf_counter()
    compile_s = 0.0
    if binary is None:
        from pimgpt.mapping.compiler import compile_model
        max_tokens = args.max_tokens or needed
        if max_tokens < needed:
            raise PimgptError(f"--max-tokens {max_tokens} is less than prompt plus --tokens "
                              f"({needed})")
        binary, _report = compile_model(config, weights, max_tokens,
                                        options=compile_options(args))
        compile_s = time.perf_counter() - t0
    machine = FunctionalMachine(config)
    machine.load(binary)
    steps = len(prompt_ids) + max(args.tokens - 1, 0)
    t1 = time.perf_counter()
    with _progress(steps, "decode", not args.json) as bar:
        gen = machine.generate(prompt_ids, args.tokens, keep_logits=args.check,
                               on_step=lambda _pos: bar.update(1))
    run_s = time.perf_counter() - t1
    timing = None
    if not args.no_timing and gen.generated_ids is not None:
        from pimgpt.sim.report import simulate_generation
        # the same token sequence the machine consumed, one decode step per position
        fed = (gen.prompt_ids + gen.generated_ids)[:steps]
        timing = simulate_generation(config, binary, fed, 1, timing_only=True)

    result: dict[str, Any] = {
        "model": spec.name, "machine": config.name, "prompt_ids": gen.prompt_ids,
        "generated_ids": gen.generated_ids, "steps": steps,
        "instructions_per_step": len(binary.code),
        "compile_seconds": round(compile_s, 4), "run_seconds": round(run_s, 4),
        "counters": gen.counters,
    }
    if tokenizer is None and text_mode is False:
        try:
            tokenizer = get_tokenizer(spec)
        except PimgptError:
            tokenizer = None
    if tokenizer is not None:
        result["prompt_text"] = tokenizer.decode(gen.prompt_ids)
        result["generated_text"] = tokenizer.decode(gen.generated_ids)
    if timing is not None:
        result["timing"] = {
            "latency_us_per_token": timing.latency_us, "tokens_per_second":
            timing.tokens_per_second, "energy_mj_per_token": timing.energy_per_token_mj,
            "row_hit_rate": timing.row_hit_rate, "time_shares": timing.time_shares,
            "cycles": timing.total_cycles}
    if args.check:
        result["check"] = _check(config, weights, gen)
    if args.json:
        print_json(result)
    else:
        _print_run(result)
    if args.check and not result["check"]["golden_bit_exact"]:
        return 1
    return 0


def _check(config: MachineConfig, weights: GPTWeights, gen: Any) -> dict[str, Any]:
    """Golden model (must be bit-exact) and float32 reference (top-1 agreement) on this run."""
    from pimgpt.sim.golden import GoldenGPT
    from pimgpt.sim.reference import Float32GPT

    golden = GoldenGPT(config, weights)
    g_tokens, g_logits = golden.generate(gen.prompt_ids, len(gen.generated_ids),
                                         keep_logits=True)
    exact = g_tokens == gen.generated_ids and all(
        np.array_equal(a.view(np.uint32), b[:a.size].view(np.uint32))
        for a, b in zip(gen.logits, g_logits))
    seq = (gen.prompt_ids + gen.generated_ids)[:len(gen.logits)]
    ref = Float32GPT(weights).forward(seq)
    pim = np.stack(gen.logits)
    agree = float(np.mean(ref.argmax(axis=1) == pim.argmax(axis=1)))
    return {"golden_tokens": g_tokens, "golden_bit_exact": bool(exact),
            "reference_top1_agreement": agree,
            "reference_max_abs_logit_error": float(np.max(np.abs(ref - pim)))}


def _print_run(r: dict[str, Any]) -> None:
    print(f"model {r['model']} on machine '{r['machine']}' "
          f"({r['instructions_per_step']} instructions per decode step)")
    print(f"prompt ids:    {','.join(map(str, r['prompt_ids']))}")
    if "prompt_text" in r:
        print(f"prompt text:   {r['prompt_text']!r}")
    print(f"generated ids: {','.join(map(str, r['generated_ids']))}")
    if "generated_text" in r:
        print(f"generated:     {r['generated_text']!r}")
    c = r["counters"]
    print(f"{r['steps']} steps in {r['run_seconds']:.3f} s (compile {r['compile_seconds']:.3f} s); "
          f"{c.get('mac_columns', 0):,} bank MAC columns, {c.get('gb_columns', 0):,} global-"
          f"buffer columns, {c.get('bank_writes', 0):,} KV values written")
    if "timing" in r:
        t = r["timing"]
        shares = ", ".join(f"{k} {v:.0%}" for k, v in t["time_shares"].items())
        print(f"simulated:     {t['latency_us_per_token']:.2f} us/token "
              f"({t['tokens_per_second']:,.0f} tokens/s), {t['energy_mj_per_token']:.4f} "
              f"mJ/token, row hits {t['row_hit_rate']:.1%}; busy: {shares} "
              f"(details: pimgpt simulate)")
    if "check" in r:
        k = r["check"]
        print(f"golden model:  {'bit-exact' if k['golden_bit_exact'] else 'MISMATCH'} "
              f"(tokens {','.join(map(str, k['golden_tokens']))})")
        print(f"float32 reference: top-1 agreement {k['reference_top1_agreement']:.1%}, "
              f"max |logit error| {k['reference_max_abs_logit_error']:.3g}")


# --- compile -------------------------------------------------------------------------------------

def cmd_compile(args: argparse.Namespace) -> int:
    from pimgpt.mapping.compiler import compile_model
    from pimgpt.mapping.pimbin import write_pimbin

    _check_positive("--max-tokens", args.max_tokens)
    if not args.output.endswith(".pimbin"):
        raise PimgptError(f"output file must end in .pimbin, not {args.output!r}")
    from pimgpt.fileio import check_output_path
    check_output_path(args.output)
    config = _config(args)
    weights = load_model(args.checkpoint, args.model)
    names = list(weights.names())
    with _progress(len(names), "placing", not args.json) as bar:
        binary, report = compile_model(config, weights, args.max_tokens,
                                       with_image=not args.layout_only,
                                       progress=lambda _n: bar.update(1),
                                       options=compile_options(args))
        t0 = time.perf_counter()
        write_pimbin(args.output, binary)
    out = report.to_dict()
    out["output"] = args.output
    out["write_seconds"] = round(time.perf_counter() - t0, 3)
    if args.json:
        print_json(out)
        return 0
    mib = 2 ** 20
    print(f"compiled {report.model} ({report.params:,} parameters) for machine "
          f"'{report.machine}' -> {args.output}")
    print(f"  program:        {report.instructions:,} instructions per decode step, "
          f"KV space for {report.max_tokens} tokens")
    print(f"  PIM memory:     {report.used_bytes / mib:.1f} of {report.capacity_bytes / mib:.1f} "
          f"MiB ({report.used_bytes / report.capacity_bytes:.1%}): weights "
          f"{report.weight_bytes / mib:.1f} MiB, KV cache {report.kv_bytes / mib:.1f} MiB")
    print(f"  row use:        {report.row_utilisation:.1%} of allocated weight rows hold data")
    print(f"  row-hit bound:  {report.row_hit_bound:.2%} (weight streams: one ACT per row)")
    print(f"  vector memory:  {report.vmem_words:,} of {config.asic.vmem_words:,} words")
    print(f"  time:           {report.seconds:.2f} s compile, {out['write_seconds']:.2f} s write")
    return 0


# --- models / config -----------------------------------------------------------------------------

def cmd_models(args: argparse.Namespace) -> int:
    from pimgpt.mapping.builtin import DEFAULT_MODEL, list_models
    models = list_models()
    if args.json:
        print_json({"default": DEFAULT_MODEL, "models": models})
        return 0
    print(f"{'name':<13}{'layers':>7}{'d_model':>8}{'heads':>6}{'d_head':>7}{'vocab':>7}"
          f"{'ctx':>6}{'params':>15}")
    for m in models:
        mark = "  (default)" if m["name"] == DEFAULT_MODEL else ""
        print(f"{m['name']:<13}{m['layers']:>7}{m['d_model']:>8}{m['heads']:>6}{m['d_head']:>7}"
              f"{m['vocab']:>7}{m['ctx']:>6}{m['params']:>15,}{mark}")
    print("\nBuilt-in models carry seeded random weights (timing work, tests); compile a real "
          "checkpoint by giving its path.")
    return 0


def config_summary(config: MachineConfig) -> dict[str, Any]:
    """The configuration plus the derived figures users ask about."""
    g, c = config.geometry, config.clocks
    derived = {
        "banks": g.banks, "row_elems": g.row_elems, "cols_per_row": g.cols_per_row,
        "gb_elems": g.gb_elems, "capacity_bytes": g.capacity_bytes, "tck_ns": c.tck_ns,
        "timing_cycles": {name: ns_to_cycles(value, c.dram_mhz)
                          for name, value in config.to_dict()["timing"].items()},
    }
    return {**config.to_dict(), "hash": config.hash, "derived": derived}


def cmd_config_show(args: argparse.Namespace) -> int:
    config = _config(args)
    summary = config_summary(config)
    if args.json:
        print_json(summary)
        return 0
    print(f"# machine '{config.name}'  (config hash {config.hash[:16]})")
    cycles = summary["derived"]["timing_cycles"]
    for group in ("geometry", "clocks", "timing", "asic"):
        print(f"\n[{group}]")
        for key, value in summary[group].items():
            note = f"  # {cycles[key]} cycles at {config.clocks.dram_mhz:g} MHz" \
                if group == "timing" else ""
            print(f"{key} = {value}{note}")
    d = summary["derived"]
    print(f"\n# derived: {d['banks']} banks, {d['row_elems']} BF16 per row "
          f"({d['cols_per_row']} columns), global buffer {d['gb_elems']} BF16, capacity "
          f"{d['capacity_bytes'] / 2**30:.2f} GiB, tCK {d['tck_ns']:g} ns")
    return 0


# --- asm / disasm --------------------------------------------------------------------------------

def cmd_asm(args: argparse.Namespace) -> int:
    from pimgpt.mapping.asm import assemble
    from pimgpt.mapping.pimbin import PimBinary, write_pimbin

    if not args.output.endswith(".pimbin"):
        raise PimgptError(f"output file must end in .pimbin, not {args.output!r}")
    path = Path(args.source)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PimgptError(f"assembly file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PimgptError(f"cannot read {path}: {exc}") from None
    config = _config(args)
    code = assemble(text, str(path))
    write_pimbin(args.output, PimBinary(config=config, code=code,
                                        meta={"source": path.name}))
    print(f"assembled {len(code)} instructions for machine '{config.name}' -> {args.output}")
    return 0


def cmd_disasm(args: argparse.Namespace) -> int:
    from pimgpt.mapping.asm import disassemble
    from pimgpt.mapping.pimbin import read_pimbin

    binary = read_pimbin(args.binary)
    meta = binary.meta
    lines = [f"{Path(args.binary).name}: {len(binary.code)} instructions for machine "
             f"'{binary.config.name}' (config {binary.config.hash[:16]})"]
    if "model" in meta:
        m = _spec_from_meta(meta, args.binary).__dict__
        lines.append(f"model {m['name']}: {m['n_layer']} layers, d_model {m['d_model']}, "
                     f"{m['n_head']} heads, vocab {m['vocab']}; KV space for "
                     f"{meta.get('max_tokens')} tokens")
    lines.append("image: " + ("none (layout only)" if binary.image is None else
                              f"{binary.image.shape[1]} BF16 values per bank"))
    text = disassemble(binary.code, header="\n".join(lines))
    if args.output:
        from pimgpt.fileio import write_text_atomic
        write_text_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0
