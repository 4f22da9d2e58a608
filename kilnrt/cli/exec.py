"""trtexec's flags: build and/or load a plan, then benchmark it as trtexec does.

    kilnrt exec --onnx=model.onnx --saveEngine=model.plan --fp16 --shapes=input:8x3x224x224
    kilnrt exec --deploy=deploy.prototxt --model=net.caffemodel --output=prob
    kilnrt exec --loadEngine=model.plan --iterations=100 --warmUp=200 --duration=3 --useCudaGraph \\
                --exportTimes=times.json --exportProfile=profile.json --separateProfileRun

The output starts with ``&&&& RUNNING kilnrt.trtexec [kilnrt vX] # <command line>`` and ends
with ``&&&& PASSED ...`` (or ``&&&& FAILED ...``), trtexec's grammar. Units are trtexec's:
--warmUp in ms, --duration in s, --workspace and --memPoolSize in MiB (suffixes B/K/M/G).
A flag kilnrt accepts but cannot honour warns once and says what was done instead; the
table of every flag is in docs/cli.md.
"""
from __future__ import annotations

import argparse
import json
import time

from kilnrt.cli.args import (console, engine_inputs, is_plan, load_engine, parse_mem_pools, parse_shapes, plan_key,
                             profiles_from, require_file)
from kilnrt.errors import ErrorCode, KilnError

HELP = "trtexec-compatible flags (build, load, benchmark)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and build (trtexec's names)")
    g.add_argument("--onnx", metavar="MODEL", help="build from this ONNX model")
    g.add_argument("--deploy", metavar="PROTOTXT", help="build from this Caffe deploy.prototxt (with --model)")
    g.add_argument("--model", metavar="CAFFEMODEL", help="the Caffe weights (.caffemodel) for --deploy")
    g.add_argument("--output", action="append", metavar="BLOB", help="a Caffe output blob (repeat, or join with ,)")
    g.add_argument("--saveEngine", metavar="PLAN", help="save the built plan")
    g.add_argument("--loadEngine", metavar="PLAN", help="load this plan instead of building (a plan, not ONNX)")
    for flag in ("--fp16", "--bf16", "--int8", "--fp8", "--best", "--noTF32", "--stronglyTyped", "--explicitBatch",
                 "--refit"):
        g.add_argument(flag, action="store_true")
    for flag in ("--shapes", "--minShapes", "--optShapes", "--maxShapes"):
        g.add_argument(flag, action="append", metavar="NAME:AxB..")
    g.add_argument("--calib", metavar="PATH", help="INT8 calibration: a cache (TRT-...), a .npz of inputs, or a "
                                                   "folder of .npz/.npy batches")
    g.add_argument("--timingCacheFile", metavar="PATH")
    g.add_argument("--builderOptimizationLevel", type=int, default=3)
    g.add_argument("--memPoolSize", metavar="POOL:SIZE", help="e.g. workspace:1024M (MiB without a suffix; B/K/M/G)")
    g.add_argument("--workspace", metavar="MIB", help="(old) workspace size in MiB")
    g.add_argument("--precisionConstraints", choices=("none", "obey", "prefer"), default="none")
    g.add_argument("--layerPrecisions", action="append", metavar="LAYER:fp32,..")
    g.add_argument("--layerOutputTypes", action="append", metavar="LAYER:fp32,..")
    g.add_argument("--profilingVerbosity", choices=("layer_names_only", "detailed", "none"),
                   default="layer_names_only")
    g.add_argument("--device", default=None, help="cpu, cuda or a GPU index (default: cuda when available)")
    i = p.add_argument_group("inference (trtexec's names and units)")
    i.add_argument("--iterations", type=int, default=10, help="run at least N inferences (default 10)")
    i.add_argument("--warmUp", type=float, default=200.0, help="warm up for N milliseconds (default 200)")
    i.add_argument("--duration", type=float, default=3.0, help="run for at least N seconds (default 3)")
    i.add_argument("--streams", "--infStreams", dest="streams", type=int, default=1,
                   help="N execution contexts running concurrently (default 1)")
    i.add_argument("--threads", action="store_true", help="one host thread per stream")
    i.add_argument("--useCudaGraph", action="store_true", help="replay each run as a CUDA graph")
    i.add_argument("--noDataTransfers", action="store_true", help="no host/device copies of inputs and outputs")
    i.add_argument("--useSpinWait", action="store_true")
    i.add_argument("--separateProfileRun", action="store_true",
                   help="profile layers in a second run, not in the timed one")
    i.add_argument("--skipInference", action="store_true")
    r = p.add_argument_group("reporting (trtexec's names and formats)")
    r.add_argument("--avgRuns", type=int, default=10, help="--verbose trace details averaged over N runs")
    r.add_argument("--percentile", default="90,95,99", metavar="P1,P2,..", help="latency percentiles (default 90,95,99)")
    r.add_argument("--dumpLayerInfo", action="store_true")
    r.add_argument("--dumpProfile", action="store_true")
    r.add_argument("--exportTimes", metavar="FILE", help="per-run timing trace as JSON")
    r.add_argument("--exportProfile", metavar="FILE", help="per-layer times as JSON")
    r.add_argument("--exportLayerInfo", metavar="FILE", help="the engine's layers as JSON")


_warned: set[str] = set()


def warn_once(out, key: str, text: str) -> None:
    """A ``[W]`` line, printed once per command."""
    if key not in _warned:
        _warned.add(key)
        out.print(f"[W] {text}", markup=False)


def _device(value: str | None) -> str:
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value in ("cpu", "cuda"):
        return value
    if value.isdigit():
        return "cuda"
    raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--device={value!r}; use cpu, cuda or a GPU index")


def workspace_bytes(args: argparse.Namespace, out) -> int | None:
    """--memPoolSize (and the old --workspace) in trtexec's units; pools kilnrt has no use for warn."""
    from kilnrt.cli.args import parse_size_mib

    pools = parse_mem_pools(args.memPoolSize, "--memPoolSize") if args.memPoolSize else {}
    for pool in pools:
        if pool != "workspace":
            warn_once(out, f"pool:{pool}", f"--memPoolSize={pool}:...: kilnrt has no {pool} pool (no DLA, no tactic "
                                           "shared-memory limit); ignored")
    if args.workspace is not None:
        pools.setdefault("workspace", parse_size_mib(args.workspace, "--workspace"))
    return pools.get("workspace")


def _percentiles(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
        if not values or any(not 0 <= p <= 100 for p in values):
            raise ValueError
        return values
    except ValueError:
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        f"--percentile={text!r}; write numbers in [0, 100] joined by commas, e.g. 90,95,99") from None


def _int8(args: argparse.Namespace, model) -> dict:
    """trtexec's --int8 [--calib=PATH]: without --calib the model must carry Q/DQ nodes (kilnrt has
    no placeholder ranges; trtexec's make its accuracy meaningless).  ``model``: the ONNX path or
    the parsed Caffe network."""
    from kilnrt.cli.args import int8_kwargs

    ns = argparse.Namespace(int8=args.int8, fp8=args.fp8, calib=args.calib, calib_method="entropy",
                            calib_cache=None, accuracy_budget=None)
    return int8_kwargs(ns, model)


def _constraints(args: argparse.Namespace, out) -> dict[str, str]:
    from kilnrt.debugging.precision import parse_layer_precisions

    precisions = parse_layer_precisions(args.layerPrecisions)
    outputs = parse_layer_precisions(args.layerOutputTypes)
    if not precisions and not outputs:
        return {}
    if args.precisionConstraints == "none":
        warn_once(out, "constraints", "--layerPrecisions/--layerOutputTypes take effect only with "
                                      "--precisionConstraints=obey or prefer (as in trtexec); ignored")
        return {}
    extra = [n for n in outputs if n not in precisions]
    if extra:
        warn_once(out, "outputs", "kilnrt keeps a layer's compute and outputs in FP32 together: "
                                  f"{', '.join(extra)} (from --layerOutputTypes) kept in FP32 entirely")
    return {**precisions, **outputs}


def _source(args: argparse.Namespace):
    """The model to build: the --onnx path, or the Network of --deploy/--model/--output (Caffe)."""
    if args.deploy is None:
        if args.model or args.output:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, "--model and --output are Caffe flags; give --deploy too")
        require_file(args.onnx, "ONNX model")
        return args.onnx
    if args.onnx:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, "give --onnx or --deploy (Caffe), not both")
    from kilnrt.caffe import parse

    require_file(args.deploy, "Caffe deploy.prototxt")
    if args.model:
        require_file(args.model, "Caffe model")
    outputs = [o for flag in args.output or () for o in flag.split(",") if o] or None
    return parse(args.deploy, args.model, outputs)


def build(args: argparse.Namespace, shapes, device: str, out):
    """The engine from --onnx (or Caffe's --deploy), with trtexec's build flags."""
    import kilnrt
    model = _source(args)
    if args.stronglyTyped and (args.fp16 or args.bf16 or args.int8 or args.fp8 or args.best):
        raise KilnError(ErrorCode.INVALID_ARGUMENT, "--stronglyTyped takes the types from the model; drop "
                                                    "--fp16/--bf16/--int8/--fp8/--best (as trtexec requires)")
    if args.best and not (args.int8 or args.fp8):
        out.print("[I] --best: FP16 and BF16 allowed; INT8/FP8 need --int8/--fp8 with --calib (kilnrt has no "
                  "placeholder ranges), or Q/DQ in the model")
    profile = profiles_from(shapes, parse_shapes(args.minShapes, "--minShapes"),
                            parse_shapes(args.optShapes, "--optShapes"), parse_shapes(args.maxShapes, "--maxShapes"))
    common = dict(tf32=not args.noTF32, profiles=profile, device=device, refit=args.refit,
                  optimization_level=args.builderOptimizationLevel, timing_cache=args.timingCacheFile,
                  workspace=workspace_bytes(args, out), verbose=args.verbose)
    constraints = _constraints(args, out)
    precision = "fp16" if args.fp16 or args.best else "bf16" if args.bf16 else None
    if constraints and precision is None:
        warn_once(out, "noreduced", "--layerPrecisions without --fp16/--bf16: every layer is FP32 already")
    t0 = time.perf_counter()
    if constraints and (device != "cuda" or args.int8 or args.fp8):
        # the CPU runs FP16/BF16 builds in FP32: the mixed-precision network shows what FP16 does
        # to the layers that are not kept (docs/debugging.md); pins do not combine with 8-bit
        # builds yet (kilnrt.build refuses them), so those keep this path too
        from kilnrt.debugging.precision import build_reduced, fp32_layers

        network = kilnrt.to_network(model)
        if args.refit and isinstance(model, str):   # an --onnx path (a Caffe source is a Network)
            from kilnrt.api import keep_onnx_for_refit

            keep_onnx_for_refit(network, model)
        keep, _ = fp32_layers(network, constraints)
        if precision is not None:
            out.print(f"[I] {len(keep)} layer(s) kept in FP32 (inputs and outputs too), the others in "
                      f"{precision.upper()}")
        engine = build_reduced(network, precision, keep=keep, **_int8(args, network), **common)
    else:   # on the GPU: the named layers pinned before the optimizer, as kilnrt build does
        engine = kilnrt.build(model, fp16=args.fp16 or args.best, bf16=args.bf16 or args.best,
                              layer_precisions=constraints or None, **_int8(args, model), **common)
        pinned = engine.build_info.get("layer_precisions")
        if pinned and pinned["lowered"]:
            out.print(f"[I] {len(pinned['fp32_layers'])} layer(s) kept in FP32 (inputs and outputs too), the "
                      f"others in {pinned['lowered']}")
    out.print(f"[I] Engine built in {time.perf_counter() - t0:.3f} sec.")
    if args.saveEngine:
        engine.save(args.saveEngine, key=plan_key(args))
        out.print(f"[I] Engine saved to {args.saveEngine}")
    return engine


def load(args: argparse.Namespace):
    require_file(args.loadEngine, "--loadEngine")
    if not is_plan(args.loadEngine):
        onnx_like = str(args.loadEngine).endswith(".onnx")
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        f"--loadEngine={args.loadEngine} is {'an ONNX model' if onnx_like else 'not a kilnrt plan'}; "
                        f"--loadEngine loads plans only. Build it with --onnx={args.loadEngine} "
                        "(add --saveEngine=PLAN to keep the plan)")
    return load_engine(args.loadEngine, args)


def check_inference_flags(args: argparse.Namespace, device: str, out) -> None:
    if args.duration < 0:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--duration={args.duration:g}: kilnrt does not run until "
                                                    "stopped; give the seconds to run (default 3)")
    if args.streams < 1:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--streams={args.streams}; give 1 or more")
    if device == "cpu" and args.useCudaGraph:
        warn_once(out, "graph", "--useCudaGraph: a CPU engine has no CUDA graphs; ran without")
    if args.useSpinWait:
        warn_once(out, "spin", "--useSpinWait: kilnrt waits on its CUDA events through PyTorch (no spin-wait "
                               "choice); ran with the default wait")
    if args.streams > 1 and not args.threads:
        warn_once(out, "threads", f"--streams={args.streams} without --threads: kilnrt drives each stream from "
                                  "its own thread anyway (as --threads)")
    if args.useCudaGraph and device == "cuda" and (args.dumpProfile or args.exportProfile) \
            and not args.separateProfileRun:
        warn_once(out, "graphprofile", "per-layer profiling runs each layer on its own, without the CUDA graph: "
                                       "the first stream's timed runs were not graph replays (add "
                                       "--separateProfileRun to profile in a second run)")
    if device == "cpu" and args.noDataTransfers:
        out.print("[I] --noDataTransfers: a CPU engine reads and writes host memory; there are no transfers")


def inference(args: argparse.Namespace, engine, shapes, out) -> None:
    from kilnrt.cli.args import batch_size
    from kilnrt.cli.exec_bench import profile_lines, profile_records, run_loop, summary
    from kilnrt.engine.inspector import LayerTimer

    device = engine.device
    check_inference_flags(args, device, out)
    feeds = engine_inputs(engine, 0, {k: v for k, v in shapes.items() if k in engine.input_names})
    out.print("[I] Inputs: " + ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items()))
    profiling = bool(args.dumpProfile or args.exportProfile)
    timer = LayerTimer() if profiling and not args.separateProfileRun else None
    loop_args = dict(streams=args.streams, warmup_ms=args.warmUp, iterations=args.iterations,
                     duration_s=args.duration, cuda_graph=args.useCudaGraph and device == "cuda",
                     transfers=not args.noDataTransfers)
    loop = run_loop(engine, feeds, profiler=timer, **loop_args)
    lines, details, _ = summary(loop, batch=batch_size(feeds), percentiles=_percentiles(args.percentile),
                                device=device, avg_runs=max(args.avgRuns, 1))
    for line in lines[:2]:
        out.print(f"[I] {line}")
    if args.verbose:
        for line in details:
            out.print(f"[V] {line}")
    for line in lines[2:]:
        out.print(f"[I] {line}")
    if args.exportTimes:
        with open(args.exportTimes, "w") as f:
            json.dump([t.as_json() for t in loop.traces], f, indent=2)
        out.print(f"[I] Timing trace ({len(loop.traces)} runs) written to {args.exportTimes}")
    if profiling:
        if timer is None:   # --separateProfileRun: a second loop with the profiler, no CUDA graph
            timer = LayerTimer()
            run_loop(engine, feeds, profiler=timer, **{**loop_args, "streams": 1, "warmup_ms": 0.0})
        records = profile_records(timer.samples)
        if args.dumpProfile:
            for line in profile_lines(records):
                out.print(f"[I] {line}", markup=False)
        if args.exportProfile:
            with open(args.exportProfile, "w") as f:
                json.dump(records, f, indent=2)
            out.print(f"[I] Profile written to {args.exportProfile}")


def layer_info(args: argparse.Namespace, engine, out) -> None:
    from kilnrt.cli.exec_bench import layer_information

    if args.dumpLayerInfo:
        from kilnrt.engine.inspector import layer_table

        out.print(layer_table(engine))
    if args.exportLayerInfo:
        if args.profilingVerbosity == "none":
            warn_once(out, "verbosity", "--profilingVerbosity=none: the layer information still names the layers")
        with open(args.exportLayerInfo, "w") as f:
            json.dump(layer_information(engine, args.profilingVerbosity), f, indent=2)
        out.print(f"[I] Layer information written to {args.exportLayerInfo}")


def test_name() -> str:
    import kilnrt

    return f"kilnrt.trtexec [kilnrt v{kilnrt.__version__}]"


def main(args: argparse.Namespace) -> int:
    out = console()
    _warned.clear()
    command = " ".join(getattr(args, "argv", None) or ["kilnrt", "exec"])
    out.print(f"&&&& RUNNING {test_name()} # {command}", markup=False)
    try:
        if not args.onnx and not args.deploy and not args.loadEngine:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, "give --onnx=MODEL (or Caffe's --deploy=PROTOTXT) to build, "
                                                        "or --loadEngine=PLAN to load")
        shapes = parse_shapes(args.shapes)
        device = _device(args.device)
        if args.onnx or args.deploy:
            engine = build(args, shapes, device, out)
        else:
            t0 = time.perf_counter()
            engine = load(args)
            out.print(f"[I] Engine loaded in {time.perf_counter() - t0:.3f} sec.")
        layer_info(args, engine, out)
        if not args.skipInference:
            inference(args, engine, shapes, out)
    except (KilnError, OSError):
        out.print(f"&&&& FAILED {test_name()} # {command}", markup=False)
        raise
    out.print(f"&&&& PASSED {test_name()} # {command}", markup=False)
    return 0
