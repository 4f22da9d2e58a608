"""Show what a plan or an ONNX model is made of.

    kilnrt inspect model.plan            # engine layers: kind, tactic, precision, tensors, ONNX origin
    kilnrt inspect model.plan --profile  # plus measured per-layer times (runs the engine)
    kilnrt inspect model.onnx            # the imported network's layers, or what is unsupported
    kilnrt inspect model.onnx --json
    kilnrt inspect model.plan --html engine.html --profile     # an interactive graph, one file
    kilnrt inspect model.plan --html engine.html --layer-times profile.json   # kilnrt exec --exportProfile
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from kilnrt.cli.args import (add_shape_option, console, engine_inputs, is_plan, parse_shapes, plan_key,
                             require_file)
from kilnrt.errors import ErrorCode, ImportErrors, KilnError

HELP = "show the layers of a plan or an ONNX model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PLAN|MODEL.onnx", help="a plan file or an ONNX model")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--profile", type=int, nargs="?", const=10, default=0, metavar="N",
                   help="plans: run N times (default 10) on random inputs and show measured layer times")
    add_shape_option(p, help="input shapes for --profile runs with dynamic dims")
    p.add_argument("--html", metavar="OUT.html",
                   help="write the engine as a self-contained interactive graph (an ONNX model is built first)")
    p.add_argument("--layer-times", metavar="PROFILE.json",
                   help="per-layer times to show: the JSON of kilnrt exec --exportProfile (trtexec's format)")


def _profile(engine, runs: int, shapes) -> dict[str, float]:
    from kilnrt.engine.inspector import LayerTimer

    context = engine.create_execution_context()
    context.profiler = LayerTimer()
    feeds = engine_inputs(engine, 0, shapes)
    for _ in range(runs):
        context.run(feeds)
    return context.profiler.median_ms()


def _timings(engine, args: argparse.Namespace, out) -> tuple[dict[str, float] | None, str | None]:
    """Measured per-layer times (--profile runs, or a --layer-times file) and where they came from."""
    if args.layer_times:
        from kilnrt.cli.inspect_html import read_profile

        if args.profile:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, "give --profile or --layer-times, not both")
        times = read_profile(args.layer_times)
        names = {l.name for l in engine.layers}
        unknown = [n for n in times if n not in names]
        if unknown and len(unknown) == len(times):
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"--layer-times: none of the {len(times)} layers in {args.layer_times!r} is a layer of "
                            f"this engine (e.g. {unknown[0]!r}); was the profile made from another plan?")
        if unknown:
            out.print(f"[yellow]warning:[/] --layer-times: {len(unknown)} name(s) are not layers of this engine "
                      f"and were left out, e.g. {unknown[0]!r}", markup=True)
        return {n: t for n, t in times.items() if n in names}, f"from {args.layer_times}"
    if args.profile:
        return _profile(engine, args.profile, parse_shapes(args.shapes)), \
            f"median of {args.profile} profiled runs on {engine.device}"
    return None, None


def write_html(engine, args: argparse.Namespace, out) -> int:
    from pathlib import Path

    from kilnrt.cli.inspect_html import render_html

    timings, source = _timings(engine, args, out)
    target = Path(args.html)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_html(engine, timings, times_source=source), encoding="utf-8")
    out.print(f"wrote {target} ({target.stat().st_size // 1024} KiB): {len(engine.layers)} layers"
              + (f", layer times {source}" if timings else ", no measured layer times (add --profile)"))
    return 0


def inspect_plan(args: argparse.Namespace) -> int:
    import kilnrt
    from kilnrt.engine.inspector import describe_engine, layer_table, summary_table

    engine = kilnrt.load(args.path, key=plan_key(args))
    if args.html:
        return write_html(engine, args, console())
    timings, _ = _timings(engine, args, console())
    if args.json:
        print(json.dumps(describe_engine(engine, timings), indent=2, default=str))
        return 0
    out = console()
    out.print(summary_table(engine))
    out.print(layer_table(engine, timings))
    return 0


def _problems(exc: KilnError) -> list[dict[str, Any]]:
    errors = exc.errors if isinstance(exc, ImportErrors) else [exc]
    return [{"code": e.code, "op": e.op, "node": e.node, "opset": e.opset, "message": e.message} for e in errors]


def network_layers(network) -> list[dict[str, Any]]:
    from kilnrt.network.layers import LayerKind

    def tensor(t):
        return None if t is None else {"name": t.name, "shape": None if t.shape is None else list(t.shape),
                                       "dtype": t.dtype.name if t.dtype else None}

    return [{"index": i, "name": l.name, "kind": l.kind.name, "inputs": [tensor(t) for t in l.inputs if t is not None],
             "outputs": [tensor(t) for t in l.outputs], "origin": list(l.origin)}
            for i, l in enumerate(network.layers) if l.kind != LayerKind.CONSTANT]


def inspect_model(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from kilnrt.onnx.parser import check_model, load_model, model_opset, parse_proto

    proto, model_dir = load_model(args.path)
    problems = [p for e in check_model(proto) for p in _problems(e)]
    network = None
    if not problems:
        try:
            network = parse_proto(proto, model_dir=model_dir)
        except KilnError as exc:  # an importer's check on values or shapes
            problems = _problems(exc)
    out = console()
    if problems:
        if args.json:
            print(json.dumps({"model": args.path, "opset": model_opset(proto), "supported": False,
                              "unsupported": problems}, indent=2))
            return 1
        table = Table(title=f"{args.path}: {len(problems)} unsupported node(s) / attribute(s) (opset "
                            f"{model_opset(proto)})")
        for col in ("op", "node", "code", "why"):
            table.add_column(col)
        for p in problems:
            table.add_row(p["op"] or "", escape(p["node"] or ""), p["code"], escape(p["message"]))
        out.print(table)
        return 1
    layers = network_layers(network)
    if args.json:
        print(json.dumps({"model": args.path, "opset": network.opset, "supported": True,
                          "inputs": [{"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape)}
                                     for t in network.inputs],
                          "outputs": [{"name": t.name, "dtype": t.dtype.name if t.dtype else None,
                                       "shape": None if t.shape is None else list(t.shape)} for t in network.outputs],
                          "layers": layers}, indent=2))
        return 0
    from kilnrt.engine.inspector import format_shape

    fmt = lambda t: f"{escape(t['name'])} {format_shape(t['shape'])} {t['dtype'] or ''}"  # noqa: E731
    table = Table(title=f"{args.path}: opset {network.opset}, {len(proto.graph.node)} ONNX nodes -> "
                        f"{len(layers)} layers (+{len(network.layers) - len(layers)} constants)")
    for col in ("#", "layer", "kind", "inputs", "outputs", "from ONNX node"):
        table.add_column(col)
    for l in layers:
        table.add_row(str(l["index"]), escape(l["name"]), l["kind"].lower(), "\n".join(fmt(t) for t in l["inputs"]),
                      "\n".join(fmt(t) for t in l["outputs"]), escape(" + ".join(l["origin"])))
    out.print(table)
    return 0


def main(args: argparse.Namespace) -> int:
    require_file(args.path, "plan or model")
    if args.html and not is_plan(args.path):
        from kilnrt.cli.args import load_engine

        out = console()
        out.print(f"building {args.path} with default options for the report (give a plan to show its own build)")
        return write_html(load_engine(args.path, args), args, out)
    return inspect_plan(args) if is_plan(args.path) else inspect_model(args)
