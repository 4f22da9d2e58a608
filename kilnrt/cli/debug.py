"""Find why a reduced-precision build misses a tolerance (in the spirit of Polygraphy's ``debug``).

    kilnrt debug precision model.onnx --rtol 1e-2 --atol 1e-2 --save fp32_layers.json
    kilnrt debug precision model.onnx --precision bf16 --shapes input:8x3x224x224

``precision`` searches for a small set of ONNX nodes that must stay in FP32 for an FP16 (or
BF16) build to match ONNX Runtime within the tolerance on seeded random inputs: it checks
that the FP32 build passes and the reduced one fails, then binary-searches, one culprit at
a time, the shortest prefix of the network (in layer order) whose pinning passes, and
finally drops any culprit the others pass without. It prints every build it tried and the
nodes kept, as trtexec's ``--layerPrecisions`` value; ``--save`` writes them as a JSON file
that ``kilnrt compare --layer-precisions FILE`` reads.
"""
from __future__ import annotations

import argparse
import json

from kilnrt.cli.args import console, engine_inputs, parse_shapes, require_file
from kilnrt.errors import ErrorCode, KilnError

HELP = "precision debugging: which layers must stay FP32 for an FP16/BF16 build to pass"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tool", choices=("precision",), help="precision: find the layers to keep in FP32")
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    p.add_argument("--precision", choices=("fp16", "bf16"), default="fp16", help="the reduced precision (default fp16)")
    p.add_argument("--rtol", type=float, default=1e-2, help="relative tolerance (default 1e-2)")
    p.add_argument("--atol", type=float, default=1e-2, help="absolute tolerance (default 1e-2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--shapes", action="append", metavar="NAME:AxBx..",
                   help="static shapes for dynamic inputs, e.g. input:1x3x224x224")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="the device to build for (default: cuda when available)")
    p.add_argument("--save", metavar="FILE.json", help="write the nodes kept in FP32 as layer precision constraints")


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


def main(args: argparse.Namespace) -> int:
    return debug_precision(args)
