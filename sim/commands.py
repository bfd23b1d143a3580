"""The ``pimgpt`` subcommands of the simulators (CLI glue only)."""

from __future__ import annotations

import argparse

from pimgpt.cli import print_json
from pimgpt.errors import PimgptError
from pimgpt.hdl.params import resolve_config


def cmd_check_trace(args: argparse.Namespace) -> int:
    """Check a DRAM command trace; exit 0 when clean, 1 with violations (2: bad input)."""
    from pimgpt.sim.trace import check_trace, read_trace_csv

    if args.max is not None and args.max < 0:
        raise PimgptError(f"--max must be >= 0, not {args.max}")
    config = resolve_config(args.preset, args.config)
    entries = read_trace_csv(args.trace)
    try:
        violations = check_trace(entries, config)
    except PimgptError as exc:
        raise PimgptError(f"{args.trace}: {exc}") from None
    shown = violations if args.max is None else violations[:args.max]
    channels = len({e.channel for e in entries})
    end = max((e.cycle for e in entries), default=0)
    if args.json:
        print_json({"trace": str(args.trace), "machine": config.name, "commands": len(entries),
                    "channels": channels, "end_cycle": end, "violation_count": len(violations),
                    "violations": [v.to_dict() for v in shown], "ok": not violations})
    else:
        for v in shown:
            print(v.message)
        more = f" (showing {len(shown)})" if len(shown) < len(violations) else ""
        verdict = f"{len(violations)} violation{'s' * (len(violations) != 1)}{more}" \
            if violations else "no violations"
        print(f"{args.trace}: {len(entries)} commands on {channels} channel"
              f"{'s' * (channels != 1)} to cycle {end} on machine '{config.name}': {verdict}")
    return 1 if violations else 0


def _output_path(flag: str, path: str | None) -> None:
    """Fail before any work when ``path`` cannot be written."""
    if path is None:
        return
    import os
    from pathlib import Path

    from pimgpt.fileio import check_output_path
    try:
        check_output_path(path)
    except PimgptError as exc:
        raise PimgptError(f"{flag}: {exc}") from None
    directory = Path(path).parent if str(Path(path).parent) else Path(".")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PimgptError(f"{flag}: cannot write into directory {directory}")


def cmd_simulate(args: argparse.Namespace) -> int:
    """Time greedy generation on the cycle simulator and print the report."""
    import os
    from pathlib import Path

    from pimgpt.mapping.commands import (_check_positive, _config, _progress, _spec_from_meta,
                                         load_model, resolve_prompt)
    from pimgpt.mapping.tokenizer import get_tokenizer
    from pimgpt.sim.report import simulate_generation

    _check_positive("--tokens", args.tokens, allow_zero=True)
    _check_positive("--max-tokens", args.max_tokens)
    _output_path("--trace", args.trace)
    _output_path("--timeline", args.timeline)
    if args.trace and args.timeline and \
            Path(args.trace).resolve() == Path(args.timeline).resolve():
        raise PimgptError("--trace and --timeline name the same file")
    weights = binary = None
    if args.checkpoint and args.checkpoint.endswith(".pimbin"):
        if args.model:
            raise PimgptError("give either a .pimbin or --model NAME, not both")
        if args.max_tokens is not None:
            raise PimgptError("--max-tokens applies when compiling, not to a .pimbin")
        from pimgpt.mapping.pimbin import read_pimbin
        binary = read_pimbin(args.checkpoint,
                             _config(args) if args.preset or args.config else None)
        config = binary.config
        spec = _spec_from_meta(binary.meta, args.checkpoint)
        if binary.image is None and not args.timing_only:
            raise PimgptError(f"{args.checkpoint} has no DRAM image (compiled with "
                              f"--layout-only): simulate it with --timing-only")
    else:
        from pimgpt.mapping.builtin import DEFAULT_MODEL
        config = _config(args)
        weights = load_model(args.checkpoint, args.model, DEFAULT_MODEL)
        spec = weights.spec

    prompt_ids, tokenizer, needed = resolve_prompt(args, spec, binary)
    if binary is None:
        from pimgpt.mapping.compiler import compile_model
        from pimgpt.mapping.commands import compile_options
        max_tokens = args.max_tokens or needed
        if max_tokens < needed:
            raise PimgptError(f"--max-tokens {max_tokens} is less than prompt plus --tokens "
                              f"({needed})")
        names = list(weights.names())
        with _progress(len(names), "placing", not args.json) as bar:
            binary, _ = compile_model(config, weights, max_tokens,
                                      with_image=not args.timing_only,
                                      progress=lambda _n: bar.update(1),
                                      options=compile_options(args))

    steps = len(prompt_ids) + max(args.tokens - 1, 0)
    with _progress(steps, "simulate", not args.json) as bar:
        report = simulate_generation(config, binary, prompt_ids, args.tokens,
                                     timing_only=args.timing_only, trace=bool(args.trace),
                                     timeline=bool(args.timeline), fast=not args.event_engine,
                                     progress=lambda _pos: bar.update(1))

    written: list[str] = []
    try:
        if args.trace:
            from pimgpt.sim.trace import write_trace_csv
            assert report.trace is not None
            write_trace_csv(args.trace, report.trace)
            written.append(args.trace)
        if args.timeline:
            from pimgpt.sim.timeline import write_timeline
            assert report.intervals is not None
            n_events = write_timeline(args.timeline, report.intervals, config)
    except BaseException:
        for path in written:  # all outputs or none
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        raise

    out = report.to_dict()
    if tokenizer is None:
        try:
            tokenizer = get_tokenizer(spec)
        except PimgptError:
            tokenizer = None
    if tokenizer is not None:
        out["prompt_text"] = tokenizer.decode(report.prompt_ids)
        if report.generated_ids is not None:
            out["generated_text"] = tokenizer.decode(report.generated_ids)
    if args.trace:
        out["trace"] = {"path": args.trace, "commands": len(report.trace or [])}
    if args.timeline:
        out["timeline"] = {"path": args.timeline, "events": n_events}
    if args.json:
        print_json(out)
        return 0
    print(report.format_text())
    if "generated_text" in out:
        print(f"generated text: {out['generated_text']!r}")
    if args.trace:
        print(f"trace: {len(report.trace or []):,} DRAM commands -> {args.trace}")
    if args.timeline:
        print(f"timeline: {n_events:,} busy intervals -> {args.timeline} "
              f"(open in https://ui.perfetto.dev)")
    return 0
