"""Run an ONNX model through kilnrt and ONNX Runtime on the same seeded inputs; compare outputs.

    kilnrt compare model.onnx                     # build, then compare (rtol 1e-3, atol 1e-4)
    kilnrt compare model.onnx --plan model.plan --rtol 1e-2 --atol 1e-3 --seed 3

One PASSED/FAILED line per output, with the max absolute and relative errors and the
tolerance used; exit code 1 if any output fails.
"""
from __future__ import annotations

import argparse

from kilnrt.cli.args import (add_build_options, build_kwargs, console, engine_inputs, load_engine,
                             parse_shapes, require_file)
from kilnrt.errors import ErrorCode, KilnError

HELP = "compare kilnrt with ONNX Runtime on random inputs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    p.add_argument("--plan", metavar="PLAN", help="use this plan instead of building the model")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    add_build_options(p)


def onnxruntime_outputs(model: str, feeds: dict) -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        "kilnrt compare needs onnxruntime: pip install onnxruntime") from None
    try:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors
        raise KilnError(ErrorCode.INVALID_MODEL, f"ONNX Runtime could not run {model!r}: {exc}") from None


def main(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from kilnrt.testing import compare

    out = console()
    require_file(args.model, "ONNX model")
    engine = load_engine(args.plan, args) if args.plan else load_engine(args.model, **build_kwargs(args))
    feeds = engine_inputs(engine, args.seed, parse_shapes(args.shapes))
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
    out.print(f"inputs: {escape(shapes)} (random, seed {args.seed})")
    actual = engine.run(feeds)
    expected = onnxruntime_outputs(args.model, feeds)
    failed = 0
    for name, ref in expected.items():
        if name not in actual:
            out.print(f"[bold red]FAILED[/] | output {escape(repr(name))}: kilnrt did not produce it")
            failed += 1
            continue
        c = compare(actual[name], ref, args.rtol, args.atol, name=name, seed=args.seed)
        if c.ok and actual[name].dtype != ref.dtype:
            c.ok, c.problem = False, f"dtype {actual[name].dtype} differs from ONNX Runtime's {ref.dtype}"
        status = "[bold green]PASSED[/]" if c.ok else "[bold red]FAILED[/]"
        detail = c.problem or (f"max abs error {c.max_abs:.3g}, max rel error {c.max_rel:.3g}"
                               + ("" if c.ok else f", {c.mismatched} of {c.total} elements outside tolerance"))
        out.print(f"{status} | output {escape(repr(name))} {list(ref.shape)} {ref.dtype}: {escape(detail)} "
                  f"(rtol={args.rtol:g}, atol={args.atol:g})")
        failed += not c.ok
    total = len(expected)
    if failed:
        out.print(f"[bold red]FAILED[/]: {failed} of {total} output(s) differ from ONNX Runtime")
        return 1
    out.print(f"[bold green]PASSED[/]: all {total} output(s) match ONNX Runtime")
    return 0
