"""Build an engine from an ONNX model and save it as a plan file.

    kilnrt build model.onnx -o model.plan --fp16 --shapes input:8x3x224x224
    kilnrt build model.onnx --fp16 --layerPrecisions=Conv_3:fp32,/head/*:fp32   # or a debug precision file
    kilnrt build model.onnx --min-shapes input:1x3x224x224 --opt-shapes input:8x3x224x224 \\
                            --max-shapes input:32x3x224x224 --timing-cache model.cache
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from kilnrt.cli.args import add_build_options, build_kwargs, console, plan_key, require_file

HELP = "build a plan file from an ONNX model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    p.add_argument("-o", "--output", metavar="PLAN", help="where to write the plan (default: MODEL.plan)")
    p.add_argument("--portable", action="store_true", help="a plan that loads on any GPU of its kind")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_build_options(p)
    g = p.add_argument_group("layer precisions (trtexec's flags)")
    g.add_argument("--layerPrecisions", "--layer-precisions", dest="layer_precisions", action="append",
                   metavar="LAYER:fp32,..|FILE.json",
                   help="layers (or ONNX nodes; one '*' wildcard per name) to keep in FP32 in an --fp16/--bf16 "
                        "build, or the file of kilnrt debug precision --save")
    g.add_argument("--precisionConstraints", "--precision-constraints", dest="precision_constraints",
                   choices=("obey", "prefer", "none"), default=None,
                   help="obey (the default with --layerPrecisions) and prefer both keep every named layer in "
                        "FP32 (kilnrt never overrides a constraint); none ignores --layerPrecisions, as trtexec")


def layer_precisions(args: argparse.Namespace, out) -> dict[str, str] | None:
    """--layerPrecisions (specs or files) as one table, or None where there is none or
    --precisionConstraints=none says to ignore it (with a warning)."""
    from kilnrt.debugging.precision import read_layer_precisions

    specs = getattr(args, "layer_precisions", None) or []
    table: dict[str, str] = {}
    for spec in specs:
        for name, word in read_layer_precisions(spec).items():
            table.pop(name, None)
            table[name] = word
    if getattr(args, "precision_constraints", None) == "none":
        if table:
            out.print("[yellow]warning:[/] --layerPrecisions is ignored with --precisionConstraints=none (as in "
                      "trtexec); every layer runs in the build's precision")
        return None
    return table or None


def build(args: argparse.Namespace, out=None):
    """Parse and build with progress; returns (engine, parse seconds, build seconds)."""
    import kilnrt

    out = out or console()
    require_file(args.model, "ONNX model")
    t0 = time.perf_counter()
    with out.status(f"parsing {args.model}", spinner="dots"):
        network = kilnrt.to_network(os.fspath(args.model))
    t1 = time.perf_counter()
    kwargs = build_kwargs(args)
    if kwargs.get("refit"):
        from kilnrt.api import keep_onnx_for_refit

        keep_onnx_for_refit(network, os.fspath(args.model))
    constraints = layer_precisions(args, out)
    if constraints:
        kwargs["layer_precisions"] = constraints
    progress = not getattr(args, "no_progress", False) and console(stderr=True).is_terminal
    engine = kilnrt.build(network, portable=getattr(args, "portable", False), progress=progress, **kwargs)
    return engine, network, t1 - t0, time.perf_counter() - t1


def main(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from kilnrt.engine.inspector import (buckets_text, format_bytes, int8_text, layout_summary, layout_text,
                                         shapes_summary, shapes_text)

    out = console()
    engine, network, parse_s, build_s = build(args, out)
    plan = Path(args.output) if args.output else Path(args.model).with_suffix(".plan")
    plan.parent.mkdir(parents=True, exist_ok=True)
    data = engine.serialize(key=plan_key(args))
    plan.write_bytes(data)
    table = Table(title=f"built {plan}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("plan", f"{plan} ({format_bytes(len(data))})")
    table.add_row("device", f"{engine.device} ({engine.device_name})")
    table.add_row("time", f"parse {parse_s:.2f} s, build {build_s:.2f} s")
    table.add_row("layers", f"{len(network.layers)} network layers -> {len(engine.layers)} engine layers")
    for t in engine.io:
        table.add_row(t.mode, f"{t.name} {t.dtype.name} {list(t.symbolic or t.shape)}")
    for k, prof in enumerate(engine.profiles):
        for name, (lo, opt, hi) in prof.items():
            table.add_row(f"profile {k}", f"{name}: min {list(lo)} opt {list(opt)} max {list(hi)}")
    if any(not isinstance(d, int) or d < 0 for t in engine.io for d in (t.symbolic or t.shape)):
        table.add_row("shapes", shapes_text(shapes_summary(engine)))
    for k, sub in enumerate(engine.profile_engines or [engine]):
        if buckets_text(sub.build_info):
            table.add_row(f"tactic buckets{f' (profile {k})' if engine.profile_engines else ''}",
                          buckets_text(sub.build_info))
    pinned = engine.build_info.get("layer_precisions")
    if pinned:
        how = f"the others in {pinned['lowered']}" if pinned["lowered"] else \
            "every layer runs in FP32 (no --fp16/--bf16, or the CPU, which runs FP16/BF16 builds in FP32)"
        table.add_row("layer precisions", f"{len(pinned['fp32_layers'])} layer(s) kept in FP32 "
                                          f"({escape(', '.join(pinned['constraints']))}); {how}")
    if int8_text(engine.build_info):
        table.add_row("INT8", int8_text(engine.build_info))
    if engine.memory is not None:
        table.add_row("activations", f"{format_bytes(engine.memory.arena_bytes)} "
                                     f"(without reuse: {format_bytes(engine.memory.naive_bytes)})")
    table.add_row("weights", format_bytes(engine.weights_bytes))
    layout = layout_summary(engine)
    if set(layout["formats"]) - {"unknown"}:   # a GPU build: its tactics' formats were recorded
        table.add_row("4-D layouts", layout_text(layout))
    cache = engine.build_info.get("timing_cache")
    if cache:
        table.add_row("timing cache", f"{args.timing_cache}: {cache['hits']} hits, {cache['misses']} misses")
    out.print(table)
    return 0
