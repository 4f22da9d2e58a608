"""Find why a build goes wrong (in the spirit of Polygraphy's ``debug``).

    kilnrt debug precision model.onnx --rtol 1e-2 --atol 1e-2 --save fp32_layers.json
    kilnrt debug precision model.onnx --precision bf16 --shapes input:8x3x224x224
    kilnrt debug reduce model.onnx -o reduced.onnx                 # kilnrt vs ONNX Runtime mismatch
    kilnrt debug reduce model.onnx -o reduced.onnx --check error   # a build (or run) error

``precision`` searches for a small set of ONNX nodes that must stay in FP32 for an FP16 (or
BF16) build to match ONNX Runtime within the tolerance on seeded random inputs: it checks
that the FP32 build passes and the reduced one fails, then binary-searches, one culprit at
a time, the shortest prefix of the network (in layer order) whose pinning passes, and
finally drops any culprit the others pass without. It prints every build it tried and the
nodes kept, as trtexec's ``--layerPrecisions`` value; ``--save`` writes them as a JSON file
that ``kilnrt compare --layer-precisions FILE`` reads.

``reduce`` shrinks a model that fails (kilnrt's outputs differ from ONNX Runtime's beyond the
tolerance, or, with ``--check error``, building or running raises) to a small subgraph that
still fails, and writes it as ONNX with the values its inputs had in the whole model
(``-o reduced.onnx``, and ``reduced.npz`` beside it); see kilnrt/debugging/reduce.py.
"""
from __future__ import annotations

import argparse
import json

from kilnrt.cli.args import console, engine_inputs, parse_shapes, require_file
from kilnrt.errors import ErrorCode, KilnError

HELP = "debugging: the layers an FP16/BF16 build must keep in FP32; the smallest failing subgraph"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tool", choices=("precision", "reduce"),
                   help="precision: find the layers to keep in FP32; reduce: shrink a failing model")
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                   help="the build's precision (precision: the reduced one, default fp16; reduce: default fp32)")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance (default 1e-2; reduce: 1e-3)")
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance (default 1e-2; reduce: 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--shapes", action="append", metavar="NAME:AxBx..",
                   help="static shapes for dynamic inputs, e.g. input:1x3x224x224")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="the device to build for (default: cuda when available)")
    p.add_argument("--save", metavar="FILE.json", help="write the nodes kept in FP32 as layer precision constraints")
    r = p.add_argument_group("reduce")
    r.add_argument("-o", "--output", metavar="REDUCED.onnx", help="where to write the reduced model (default: "
                                                                   "MODEL.reduced.onnx)")
    r.add_argument("--check", choices=("mismatch", "error"), default="mismatch",
                   help="what failing means: mismatch (kilnrt vs ONNX Runtime beyond the tolerance; default) or "
                        "error (building or running raises the error the whole model raises)")
    r.add_argument("--error-contains", metavar="TEXT", help="--check error: the error's message must hold TEXT")
    r.add_argument("--no-prune", action="store_true",
                   help="stop after bisecting (skip trying to drop each remaining node)")


def _device(value: str | None) -> str:
    if value is not None:
        return value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _worst(actual: dict, expected: dict, rtol: float, atol: float) -> tuple[bool, str]:
    """Whether every output is within tolerance, and the worst output's errors."""
    from kilnrt.debugging.layerwise import TensorCheck, TensorSite, describe
    from kilnrt.testing import compare

    ok, worst, text = True, -1.0, ""
    for name, ref in expected.items():
        if name not in actual:
            return False, f"output {name!r}: kilnrt did not produce it"
        c = compare(actual[name], ref, rtol, atol, name=name)
        badness = float("inf") if c.problem else c.mismatched / max(c.total, 1)
        if not c.ok and badness > worst:
            worst, text = badness, f"output {name!r}: " + describe(TensorCheck(TensorSite(name, "", "", True), c))
        ok &= c.ok
    if ok:
        name, ref = next(iter(expected.items()))
        c = compare(actual[name], ref, rtol, atol, name=name)
        text = f"output {name!r}: max abs error {c.max_abs:.3g}, max rel error {c.max_rel:.3g}"
    return ok, text


def debug_precision(args: argparse.Namespace) -> int:
    from rich.markup import escape

    if args.precision == "fp32":
        raise KilnError(ErrorCode.INVALID_ARGUMENT, "debug precision searches an FP16 or BF16 build; give "
                                                    "--precision fp16 or bf16 (default fp16)")
    args.precision = args.precision or "fp16"
    args.rtol = 1e-2 if args.rtol is None else args.rtol
    args.atol = 1e-2 if args.atol is None else args.atol

    import kilnrt
    from kilnrt.debugging.precision import (build_reduced, find_fp32_layers, format_layer_precisions, layers_of,
                                            node_order)
    from kilnrt.debugging.reference import onnxruntime_run

    out = console()
    require_file(args.model, "ONNX model")
    network = kilnrt.to_network(args.model)
    shapes = parse_shapes(args.shapes)
    profile = shapes or None
    device = _device(args.device)
    units = node_order(network)
    if not units:
        raise KilnError(ErrorCode.INVALID_MODEL, f"{args.model!r} has no computing layers to search")
    probe = build_reduced(network, None, device=device, profiles=profile)
    feeds = engine_inputs(probe, args.seed, shapes)
    expected = onnxruntime_run(args.model, feeds)
    out.print(f"{args.model}: {len(units)} ONNX nodes; {args.precision.upper()} build on {device}, compared with "
              f"ONNX Runtime on seeded inputs (seed {args.seed}, rtol={args.rtol:g}, atol={args.atol:g})")
    step = [0]

    def passes(pinned: frozenset) -> bool:
        engine = build_reduced(network, args.precision, device=device, keep=layers_of(network, pinned),
                               profiles=profile)
        ok, detail = _worst(engine.run(feeds), expected, args.rtol, args.atol)
        step[0] += 1
        status = "[bold green]PASSED[/]" if ok else "[bold red]FAILED[/]"
        if not pinned or len(pinned) == len(units):
            which = "every node" if pinned else "none"
        else:
            which = ", ".join(u for u in units if u in pinned) if len(pinned) <= 4 else f"{len(pinned)} nodes"
        out.print(f"[{step[0]}] {status} | FP32: {escape(which)} | {escape(detail)}")
        return ok

    result = find_fp32_layers(units, passes)
    if not result.nodes:
        out.print(f"[bold green]PASSED[/]: the {args.precision.upper()} build meets the tolerance with no layer "
                  f"kept in FP32 ({result.evaluations} builds)")
        constraints = ""
    else:
        constraints = format_layer_precisions(result.nodes)
        out.print(f"[bold]{len(result.nodes)} of {len(units)} node(s) must stay in FP32[/] ({result.evaluations} "
                  f"builds): {escape(', '.join(result.nodes))}")
        out.print(f"  kilnrt compare {escape(args.model)} --{args.precision} --layer-precisions "
                  f"{escape(args.save or repr(constraints))}")
        out.print(f"  kilnrt exec --onnx={escape(args.model)} --{args.precision} --precisionConstraints=obey "
                  f"--layerPrecisions={escape(repr(constraints))}")
    if args.save:
        with open(args.save, "w") as f:
            json.dump({"model": str(args.model), "precision": args.precision, "device": device,
                       "rtol": args.rtol, "atol": args.atol, "seed": args.seed,
                       "layer_precisions": {n: "fp32" for n in result.nodes},
                       "trtexec": f"--precisionConstraints=obey --layerPrecisions={constraints}" if constraints else "",
                       "builds": result.evaluations}, f, indent=2)
        out.print(f"written to {escape(args.save)}")
    return 0


def debug_reduce(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import onnx
    from rich.markup import escape

    import kilnrt
    from kilnrt.debugging.precision import build_reduced
    from kilnrt.debugging.reduce import Reference, error_check, error_signature, mismatch_check, reduce_model
    from kilnrt.debugging.reference import load_proto
    from kilnrt.testing import seeded_inputs

    out = console()
    require_file(args.model, "ONNX model")
    proto = load_proto(args.model)
    if not len(proto.graph.node):
        raise KilnError(ErrorCode.INVALID_MODEL, f"{args.model!r} has no nodes to reduce")
    device = _device(args.device)
    precision = None if args.precision in (None, "fp32") else args.precision
    rtol = 1e-3 if args.rtol is None else args.rtol
    atol = 1e-4 if args.atol is None else args.atol

    def build(model):
        return build_reduced(kilnrt.to_network(model), precision, device=device)

    feeds = dict(seeded_inputs(proto, args.seed, parse_shapes(args.shapes) or None))
    reference = Reference.run(proto, feeds)
    if args.check == "mismatch":
        fails = mismatch_check(build, rtol, atol)
        what = f"kilnrt ({(precision or 'fp32').upper()}, {device}) differs from ONNX Runtime beyond rtol={rtol:g}, " \
               f"atol={atol:g}"
    else:
        try:
            build(proto).run(feeds)
        except Exception as exc:  # noqa: BLE001 - the error to reduce
            signature = error_signature(exc)
            out.print(f"the whole model raises {escape(signature)}: {escape(str(exc).splitlines()[0])}")
        else:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"debug reduce --check error: {args.model!r} builds and "
                                                        "runs without an error; nothing to reduce (--check mismatch "
                                                        "looks for wrong results)")
        fails = error_check(build, signature, args.error_contains)
        what = f"building or running raises {signature}" + (
            f" with {args.error_contains!r}" if args.error_contains else "")
    out.print(f"{escape(str(args.model))}: {len(proto.graph.node)} nodes; a subgraph fails when {escape(what)} "
              f"(seed {args.seed})")
    result = reduce_model(reference, fails, prune=not args.no_prune, report=lambda line: out.print(escape(line)))
    target = Path(args.output) if args.output else Path(args.model).with_suffix(".reduced.onnx")
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(result.model, str(target))
    np.savez(target.with_suffix(".npz"), **result.feeds)
    nodes = [proto.graph.node[i] for i in result.nodes]
    names = ", ".join(f"{n.name or '?'} ({n.op_type})" for n in nodes[:8]) + (", ..." if len(nodes) > 8 else "")
    out.print(f"[bold]reduced to {len(nodes)} of {len(proto.graph.node)} node(s)[/] ({result.checks} checks): "
              f"{escape(names)}")
    out.print(f"written to {escape(str(target))} (inputs {', '.join(result.feeds) or 'none'}; their values from "
              f"the whole model's run in {escape(str(target.with_suffix('.npz')))})")
    return 0


def main(args: argparse.Namespace) -> int:
    return debug_reduce(args) if args.tool == "reduce" else debug_precision(args)
