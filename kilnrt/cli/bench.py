"""Measure a plan's latency and throughput, as trtexec reports them.

    kilnrt bench model.plan --iterations 200 --warmup 20
    kilnrt bench model.plan --shapes input:32x3x224x224 --json
    kilnrt bench model.plan --plot latency.png     # histogram, percentiles, per-run and per-layer charts
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from kilnrt.cli.args import (add_shape_option, batch_size, console, engine_inputs, engine_runner,
                             latency_summary, load_engine, parse_shapes, time_runs)

HELP = "measure latency and throughput of a plan"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", metavar="PLAN", help="a plan file (or an ONNX model, built with defaults)")
    p.add_argument("--iterations", "-n", type=int, default=100, metavar="N", help="timed runs (default 100)")
    p.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed runs first (default 10)")
    p.add_argument("--duration", type=float, default=0.0, metavar="S", help="also run for at least S seconds")
    add_shape_option(p, help="input shapes for dynamic dims, e.g. input:32x3x224x224")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--plot", metavar="OUT.png",
                   help="draw the timed runs (latency histogram with p50/p90/p95/p99, latency per run) and the "
                        "slowest layers of separate profiled runs (needs matplotlib)")
    p.add_argument("--plot-layers", type=int, default=10, metavar="N",
                   help="profiled runs for --plot's per-layer chart (default 10; 0: no layer chart)")


def benchmark(engine, feeds, *, iterations: int, warmup: int = 0, warmup_ms: float = 0.0,
              duration_s: float = 0.0, samples_out: list | None = None) -> dict[str, Any]:
    """trtexec's summary of the timed runs (their latencies appended to ``samples_out`` if given)."""
    run, sync = engine_runner(engine, feeds)
    samples = time_runs(run, iterations=iterations, warmup=warmup, warmup_ms=warmup_ms,
                        duration_s=duration_s, sync=sync)
    if samples_out is not None:
        samples_out.extend(samples)
    summary = latency_summary(samples, batch_size(feeds))
    summary.update({"engine": engine.name, "device": engine.device_name,
                    "shapes": {k: list(v.shape) for k, v in feeds.items()}})
    return summary


def summary_table(s: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"{s['engine']} on {s['device']}: {s['iterations']} runs, batch {s['batch']}")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for key, label in (("min_ms", "min"), ("mean_ms", "mean"), ("median_ms", "median"), ("p90_ms", "p90"),
                       ("p95_ms", "p95"), ("p99_ms", "p99"), ("max_ms", "max")):
        table.add_row(f"latency {label}", f"{s[key]:.4f} ms")
    table.add_row("throughput", f"{s['throughput_qps']:.2f} inferences/s")
    table.add_row("throughput (items)", f"{s['throughput_items_per_s']:.2f} items/s")
    return table


def layer_times(engine, feeds, runs: int) -> dict[str, float]:
    """Median per-layer times (ms) of ``runs`` profiled runs, apart from the timed ones (a
    profiler adds a sync per layer, so the two are not mixed, as trtexec's --separateProfileRun)."""
    from kilnrt.engine.inspector import LayerTimer

    context = engine.create_execution_context()
    context.profiler = LayerTimer()
    for _ in range(runs):
        context.run(feeds)
    return context.profiler.median_ms()


def plot(engine, feeds, summary: dict[str, Any], samples: list[float], args: argparse.Namespace, out) -> None:
    from kilnrt.cli.plots import plot_latency

    layers = layer_times(engine, feeds, args.plot_layers) if args.plot_layers > 0 else None
    shapes = ", ".join(f"{k}{v}" for k, v in summary["shapes"].items())
    path = plot_latency(samples, args.plot, layer_ms=layers,
                        title=f"{engine.name} on {engine.device_name}: {shapes}, median {summary['median_ms']:.4f} ms")
    if not args.json:
        out.print(f"chart written to {path}" + (f" (layers: median of {args.plot_layers} profiled runs)"
                                                if layers else ""))


def main(args: argparse.Namespace) -> int:
    if args.plot:
        from kilnrt.cli.plots import _pyplot

        _pyplot()   # no matplotlib: say so before the runs
    engine = load_engine(args.plan, args)
    feeds = engine_inputs(engine, args.seed, parse_shapes(args.shapes))
    samples: list[float] = []
    summary = benchmark(engine, feeds, iterations=args.iterations, warmup=args.warmup, duration_s=args.duration,
                        samples_out=samples)
    out = console()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        out.print(summary_table(summary))
    if args.plot:
        plot(engine, feeds, summary, samples, args, out)
    return 0
