"""Run an ONNX model through kilnrt and ONNX Runtime on the same seeded inputs; compare outputs.

    kilnrt compare model.onnx                     # build, then compare (rtol 1e-3, atol 1e-4)
    kilnrt compare model.onnx --plan model.plan --rtol 1e-2 --atol 1e-3 --seed 3
    kilnrt compare model.onnx --fp16 --all-outputs --rtol 1e-2 --atol 1e-2   # layer by layer
    kilnrt compare model.onnx --fp16 --layer-precisions Mul_3:fp32           # with layers pinned

One PASSED/FAILED line per output (with --all-outputs: per ONNX tensor, in node order, and
the first tensor that diverges), with the max absolute and relative errors and the
tolerance used; exit code 1 if any fails.
"""
from __future__ import annotations

import argparse

from kilnrt.cli.args import (add_build_options, build_kwargs, console, engine_inputs, load_engine,
                             parse_shapes, require_file)
from kilnrt.errors import ErrorCode, KilnError

HELP = "compare kilnrt with ONNX Runtime on random inputs (outputs, or every layer)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    p.add_argument("--plan", metavar="PLAN", help="use this plan instead of building the model")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--all-outputs", action="store_true",
                   help="mark every intermediate tensor as an output, compare each with ONNX Runtime in node "
                        "order and name the first one that diverges")
    p.add_argument("--layer-precisions", metavar="SPEC|FILE",
                   help="pin layers to FP32 in an --fp16/--bf16 build: NODE:fp32[,NODE:fp32...] (trtexec's "
                        "--layerPrecisions; one '*' wildcard per name) or a file from kilnrt debug precision")
    add_build_options(p)


def onnxruntime_outputs(model: str, feeds: dict) -> dict:
    """ONNX Runtime's outputs of ``model`` on ``feeds`` (kept for callers of this module)."""
    from kilnrt.debugging.reference import onnxruntime_run

    return onnxruntime_run(model, feeds)


def reduced_precision(args: argparse.Namespace) -> str | None:
    if args.fp16 and args.bf16:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, "give --fp16 or --bf16, not both")
    return "fp16" if args.fp16 else "bf16" if args.bf16 else None


def build_for_compare(args: argparse.Namespace, network, keep=()):
    """Build ``network`` with the build options and the layers ``keep`` in FP32; FP16/BF16 on the
    CPU are emulated (see kilnrt.debugging.precision.build_reduced)."""
    from kilnrt.debugging.precision import build_reduced

    kwargs = build_kwargs(args)
    from kilnrt.device import resolve_device

    device = resolve_device(kwargs.pop("device", None))
    return build_reduced(network, reduced_precision(args), device=device, keep=keep, **kwargs)


def _status(ok: bool) -> str:
    return "[bold green]PASSED[/]" if ok else "[bold red]FAILED[/]"


def compare_outputs(args, engine, out) -> int:
    from rich.markup import escape

    from kilnrt.testing import compare

    feeds = engine_inputs(engine, args.seed, parse_shapes(args.shapes))
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
    out.print(f"inputs: {escape(shapes)} (random, seed {args.seed})")
    actual = engine.run(feeds)
    expected = onnxruntime_outputs(args.model, feeds)
    failed = 0
    for name, ref in expected.items():
        if name not in actual:
            out.print(f"{_status(False)} | output {escape(repr(name))}: kilnrt did not produce it")
            failed += 1
            continue
        c = compare(actual[name], ref, args.rtol, args.atol, name=name, seed=args.seed)
        if c.ok and actual[name].dtype != ref.dtype:
            c.ok, c.problem = False, f"dtype {actual[name].dtype} differs from ONNX Runtime's {ref.dtype}"
        detail = c.problem or (f"max abs error {c.max_abs:.3g}, max rel error {c.max_rel:.3g}"
                               + ("" if c.ok else f", {c.mismatched} of {c.total} elements outside tolerance"))
        out.print(f"{_status(c.ok)} | output {escape(repr(name))} {list(ref.shape)} {ref.dtype}: {escape(detail)} "
                  f"(rtol={args.rtol:g}, atol={args.atol:g})")
        failed += not c.ok
    total = len(expected)
    if failed:
        out.print(f"[bold red]FAILED[/]: {failed} of {total} output(s) differ from ONNX Runtime")
        return 1
    out.print(f"[bold green]PASSED[/]: all {total} output(s) match ONNX Runtime")
    return 0


def compare_all_outputs(args, network, keep, out) -> int:
    """``--all-outputs``: every ONNX tensor the network holds, in node order."""
    from rich.markup import escape

    from kilnrt.debugging.layerwise import compare_sites, describe, first_divergence, mark_all_outputs
    from kilnrt.debugging.reference import load_proto, onnxruntime_run

    proto = load_proto(args.model)
    marked, sites = mark_all_outputs(network, proto)
    engine = build_for_compare(args, marked, keep)
    feeds = engine_inputs(engine, args.seed, parse_shapes(args.shapes))
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
    out.print(f"inputs: {escape(shapes)} (random, seed {args.seed}); {sum(s.marked for s in sites)} of "
              f"{len(sites)} ONNX tensors marked as outputs")
    actual = engine.run(feeds)
    expected = onnxruntime_run(proto, feeds, [s.name for s in sites if s.marked])
    checks = compare_sites(sites, actual, expected, args.rtol, args.atol, seed=args.seed)
    for c in checks:
        where = f"tensor {escape(repr(c.site.name))} (node {escape(repr(c.site.node))}, {c.site.op})"
        if c.comparison is None:
            out.print(f"[dim]SKIPPED | {where}: {escape(describe(c))}[/]")
            continue
        out.print(f"{_status(c.ok)} | {where} {list(c.comparison.shape)}: {escape(describe(c))}")
    compared = [c for c in checks if c.comparison is not None]
    failed = [c for c in compared if not c.ok]
    first = first_divergence(checks)
    tolerance = f"(rtol={args.rtol:g}, atol={args.atol:g})"
    if first is None:
        out.print(f"[bold green]PASSED[/]: all {len(compared)} compared tensor(s) match ONNX Runtime {tolerance}")
        return 0
    out.print(f"[bold red]FAILED[/]: {len(failed)} of {len(compared)} compared tensor(s) differ from ONNX Runtime "
              f"{tolerance}; the first to diverge is tensor {escape(repr(first.site.name))}, output of node "
              f"{escape(repr(first.site.node))} ({first.site.op}): {escape(describe(first))}")
    return 1


def main(args: argparse.Namespace) -> int:
    import kilnrt
    from kilnrt.debugging.precision import fp32_layers, read_layer_precisions

    out = console()
    require_file(args.model, "ONNX model")
    constraints = read_layer_precisions(args.layer_precisions)
    if args.plan:
        for flag, given in (("--all-outputs", args.all_outputs), ("--layer-precisions", constraints)):
            if given:
                raise KilnError(ErrorCode.INVALID_ARGUMENT,
                                f"{flag} needs a build from the model (a plan keeps no intermediate tensors and its "
                                f"precisions are fixed); drop --plan")
        return compare_outputs(args, load_engine(args.plan, args), out)
    if constraints and reduced_precision(args) is None:
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        "--layer-precisions pins layers to FP32 in a reduced-precision build; add --fp16 or --bf16")
    network = kilnrt.to_network(args.model)
    keep, matched = fp32_layers(network, constraints)
    if matched:
        out.print(f"kept in FP32: {len(keep)} layer(s) from {len(matched)} name(s)")
    if args.all_outputs:
        return compare_all_outputs(args, network, keep, out)
    return compare_outputs(args, build_for_compare(args, network, keep), out)
