"""trtexec's common flags: build and/or load a plan, then benchmark it.

    kilnrt exec --onnx=model.onnx --saveEngine=model.plan --fp16 --shapes=input:8x3x224x224
    kilnrt exec --loadEngine=model.plan --iterations=100 --warmUp=200 --duration=3

Accepted: --onnx --saveEngine --loadEngine --fp16 --bf16 --best --int8 --calib --noTF32 --shapes
--minShapes --optShapes --maxShapes --iterations --warmUp (ms) --duration (s)
--timingCacheFile --builderOptimizationLevel --memPoolSize --workspace --device
--skipInference --dumpLayerInfo --dumpProfile --exportTimes --exportProfile --verbose, and
(without effect) --explicitBatch --useCudaGraph --noDataTransfers --separateProfileRun
--useSpinWait --threads --profilingVerbosity --stronglyTyped --avgRuns.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from kilnrt.cli.args import (console, engine_inputs, load_engine, parse_shapes, plan_key, profiles_from,
                             require_file)
from kilnrt.errors import ErrorCode, KilnError

HELP = "trtexec-compatible flags (build, load, benchmark)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", metavar="MODEL", help="build from this ONNX model")
    p.add_argument("--saveEngine", metavar="PLAN", help="save the built plan")
    p.add_argument("--loadEngine", metavar="PLAN", help="load this plan instead of building")
    for flag in ("--fp16", "--bf16", "--int8", "--best", "--noTF32", "--skipInference", "--dumpLayerInfo",
                 "--dumpProfile", "--explicitBatch", "--useCudaGraph", "--noDataTransfers",
                 "--separateProfileRun", "--useSpinWait", "--threads", "--stronglyTyped"):
        p.add_argument(flag, action="store_true")
    for flag in ("--shapes", "--minShapes", "--optShapes", "--maxShapes"):
        p.add_argument(flag, action="append", metavar="NAME:AxB..")
    p.add_argument("--iterations", type=int, default=10, help="run at least N inferences (default 10)")
    p.add_argument("--warmUp", type=float, default=200.0, help="warm up for MS milliseconds (default 200)")
    p.add_argument("--duration", type=float, default=3.0, help="run for at least S seconds (default 3)")
    p.add_argument("--avgRuns", type=int, default=10)
    p.add_argument("--timingCacheFile", metavar="PATH")
    p.add_argument("--calib", metavar="PATH", help="INT8 calibration: a cache (TRT-...), a .npz of inputs, or a "
                                                   "folder of .npz/.npy batches")
    p.add_argument("--builderOptimizationLevel", type=int, default=3)
    p.add_argument("--memPoolSize", metavar="POOL:SIZE", help="e.g. workspace:1024M (K/M/G suffixes; MiB default)")
    p.add_argument("--workspace", type=float, metavar="MIB", help="(old) workspace size in MiB")
    p.add_argument("--device", default=None, help="cpu, cuda or a GPU index (default: cuda when available)")
    p.add_argument("--profilingVerbosity", default="layer_names_only")
    p.add_argument("--exportTimes", metavar="FILE", help="write per-run latencies as JSON")
    p.add_argument("--exportProfile", metavar="FILE", help="write per-layer times as JSON")


def _device(value: str | None) -> str:
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value in ("cpu", "cuda"):
        return value
    if value.isdigit():
        return "cuda"
    raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--device={value!r}; use cpu, cuda or a GPU index")


def _workspace(args: argparse.Namespace) -> int | None:
    if args.memPoolSize:
        for item in args.memPoolSize.split(","):
            pool, _, size = item.partition(":")
            if pool.strip().lower() != "workspace":
                continue
            unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
            try:
                mult = unit.get(size[-1].upper(), None)
                return int(float(size[:-1] if mult else size) * (mult or 1 << 20))
            except (ValueError, IndexError):
                raise KilnError(ErrorCode.INVALID_ARGUMENT,
                                f"--memPoolSize: cannot read {item!r}; write e.g. workspace:1024M") from None
    return int(args.workspace * (1 << 20)) if args.workspace else None


def _int8(args: argparse.Namespace) -> dict:
    """trtexec's --int8 [--calib=PATH]: without --calib the model must carry Q/DQ nodes (kilnrt has
    no placeholder ranges; trtexec's make its accuracy meaningless)."""
    from kilnrt.cli.args import int8_kwargs

    ns = argparse.Namespace(int8=args.int8, calib=args.calib, calib_method="entropy", calib_cache=None,
                            accuracy_budget=None)
    return int8_kwargs(ns, args.onnx)


def main(args: argparse.Namespace) -> int:
    import kilnrt
    from kilnrt.cli.bench import benchmark

    out = console()
    command = " ".join(["kilnrt", "exec", *sys.argv[2:]]) if sys.argv[1:2] == ["exec"] else "kilnrt exec"
    out.print(f"&&&& RUNNING {command}")
    if not args.onnx and not args.loadEngine:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, "give --onnx=MODEL to build, or --loadEngine=PLAN to load")
    shapes = parse_shapes(args.shapes)
    if args.best and not args.int8:
        out.print("[I] --best: FP16 and BF16 allowed; INT8 needs --int8 with --calib (or Q/DQ in the model)")
    if args.onnx:
        require_file(args.onnx, "ONNX model")
        profile = profiles_from(shapes, parse_shapes(args.minShapes, "--minShapes"),
                                parse_shapes(args.optShapes, "--optShapes"),
                                parse_shapes(args.maxShapes, "--maxShapes"))
        t0 = time.perf_counter()
        engine = kilnrt.build(args.onnx, fp16=args.fp16 or args.best, bf16=args.bf16 or args.best,
                              tf32=not args.noTF32, profiles=profile, device=_device(args.device),
                              optimization_level=args.builderOptimizationLevel, timing_cache=args.timingCacheFile,
                              workspace=_workspace(args), verbose=args.verbose, **_int8(args))
        out.print(f"[I] Engine built in {time.perf_counter() - t0:.3f} sec.")
        if args.saveEngine:
            engine.save(args.saveEngine, key=plan_key(args))
            out.print(f"[I] Engine saved to {args.saveEngine}")
    else:
        t0 = time.perf_counter()
        engine = load_engine(args.loadEngine, args)
        out.print(f"[I] Engine loaded in {time.perf_counter() - t0:.3f} sec.")
    if args.dumpLayerInfo:
        from kilnrt.engine.inspector import layer_table

        out.print(layer_table(engine))
    if args.skipInference:
        out.print(f"&&&& PASSED {command}")
        return 0
    feeds = engine_inputs(engine, 0, {k: v for k, v in shapes.items() if k in engine.input_names})
    out.print("[I] Inputs: " + ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items()))
    s = benchmark(engine, feeds, iterations=args.iterations, warmup_ms=args.warmUp, duration_s=args.duration)
    out.print("[I] === Performance summary ===")
    out.print(f"[I] Throughput: {s['throughput_qps']:.4f} qps")
    out.print(f"[I] Latency: min = {s['min_ms']:.5f} ms, max = {s['max_ms']:.5f} ms, mean = {s['mean_ms']:.5f} ms, "
              f"median = {s['median_ms']:.5f} ms, percentile(90%) = {s['p90_ms']:.5f} ms, "
              f"percentile(95%) = {s['p95_ms']:.5f} ms, percentile(99%) = {s['p99_ms']:.5f} ms")
    out.print(f"[I] Total Host Walltime: {s['total_s']:.5f} s ({s['iterations']} iterations, batch {s['batch']}: "
              f"{s['throughput_items_per_s']:.2f} items/s)")
    if args.exportTimes:
        with open(args.exportTimes, "w") as f:
            json.dump(s, f, indent=2)
    if args.dumpProfile or args.exportProfile:
        from kilnrt.cli.inspect import _profile
        from kilnrt.engine.inspector import layer_table

        timings = _profile(engine, max(args.avgRuns, 1), {k: v.shape for k, v in feeds.items()})
        if args.dumpProfile:
            out.print(layer_table(engine, timings, title="per-layer profile (median ms)"))
        if args.exportProfile:
            with open(args.exportProfile, "w") as f:
                json.dump([{"name": k, "averageMs": v} for k, v in timings.items()], f, indent=2)
    out.print(f"&&&& PASSED {command}")
    return 0
