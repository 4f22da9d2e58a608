"""Where the time goes: kilnrt's per-layer profile next to the peer's kernels, by op family.

    python benchmarks/layer_compare.py swin_t                        # a zoo model, batch 1, vs torch.compile
    python benchmarks/layer_compare.py regnet_y_1_6gf --peer default --batch 128
    python benchmarks/layer_compare.py --onnx m.onnx --module mypkg.models:make --device cpu

Both sides run under ``torch.profiler`` and are measured the same way: the device time of
every kernel they launch (on the CPU: of every top-level ``aten::`` op), averaged over a few
calls.  kilnrt's kernels are mapped back to engine layers: the engine runs with a layer
profiler (``ExecutionContext.profiler``) whose ``begin_layer`` opens a
``torch.profiler.record_function`` range named after the layer, closed by its
``report_layer_time`` (kilnrt syncs after each layer under a profiler, so the kernels' times
are not changed by it; only the gaps between them grow).  Each layer counts in the op family
of its kind (:data:`KIND_FAMILY`); the peer's kernels, and kilnrt's too as a second view,
count in the family their name says (:func:`kernel_family`).

The table gives per family: kilnrt's ms by layer kind, its layers and kernels, kilnrt's ms by
kernel name, the peer's ms and kernels, and the ratio kilnrt / peer (above 1: kilnrt is
slower there).  Below it the slowest kilnrt layers and the peer's largest kernels.  Both
sides' CUDA-graph replay times (wall times on the CPU) stand beside the kernel sums: the
difference is what gaps between kernels cost.

The JSON goes to ``benchmarks/results/<date>-<gpu>-layers-<model>-b<batch>.json``.  A zoo
model (``benchmarks/zoo_models.py``) is exported to ONNX as ``benchmarks/zoo.py`` does; any
other model is ``--onnx FILE`` with ``--module pkg.mod:make``, where ``make(batch)`` returns
``(torch module, {input name: tensor})`` as the zoo's entries do.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import importlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable

import torch

import kilnrt
from kilnrt.network.layers import LayerKind

HERE = os.path.dirname(os.path.abspath(__file__))

RESULTS = os.path.join(HERE, "results")
CONV, MATMUL, ATTENTION, NORM = "convolution", "matmul", "attention", "normalization"
POINTWISE, REDUCTION, DATA, OTHER = "pointwise", "pooling/reduction", "data movement", "other"
FAMILIES = (CONV, MATMUL, ATTENTION, NORM, POINTWISE, REDUCTION, DATA, OTHER)

# Every layer kind's op family.  Softmax counts as attention (in these models it is
# attention's); a squeeze-excitation gate as pooling/reduction (its pool dominates); a cast
# as data movement (a reformat, as the peer's copy kernels are).
KIND_FAMILY: dict[LayerKind, str] = {
    **dict.fromkeys([LayerKind.CONVOLUTION, LayerKind.DECONVOLUTION, LayerKind.QUANTIZED_CONVOLUTION], CONV),
    **dict.fromkeys([LayerKind.MATRIX_MULTIPLY, LayerKind.QUANTIZED_MATRIX_MULTIPLY, LayerKind.EINSUM,
                     LayerKind.RNN], MATMUL),
    **dict.fromkeys([LayerKind.ATTENTION, LayerKind.SOFTMAX], ATTENTION),
    **dict.fromkeys([LayerKind.NORMALIZATION, LayerKind.LRN], NORM),
    **dict.fromkeys([LayerKind.ACTIVATION, LayerKind.ELEMENTWISE, LayerKind.UNARY, LayerKind.POINTWISE,
                     LayerKind.SCALE, LayerKind.SELECT, LayerKind.QUANTIZE, LayerKind.DEQUANTIZE], POINTWISE),
    **dict.fromkeys([LayerKind.POOLING, LayerKind.REDUCE, LayerKind.SQUEEZE_EXCITATION, LayerKind.TOPK,
                     LayerKind.CUMULATIVE], REDUCTION),
    **dict.fromkeys([LayerKind.CAST, LayerKind.CONCATENATION, LayerKind.EXPAND, LayerKind.GATHER,
                     LayerKind.SCATTER, LayerKind.SHUFFLE, LayerKind.SLICE, LayerKind.PADDING, LayerKind.RESIZE,
                     LayerKind.GRID_SAMPLE, LayerKind.TILE, LayerKind.SQUEEZE, LayerKind.UNSQUEEZE, LayerKind.VIEW,
                     LayerKind.IDENTITY, LayerKind.REVERSE_SEQUENCE, LayerKind.ONE_HOT, LayerKind.FILL], DATA),
    **dict.fromkeys([LayerKind.CONDITIONAL, LayerKind.CONSTANT, LayerKind.LOOP, LayerKind.NMS,
                     LayerKind.NON_ZERO, LayerKind.PLUGIN, LayerKind.SHAPE], OTHER),
}


def layer_family(kind: LayerKind) -> str:
    """The op family of an engine layer of this kind."""
    if kind not in KIND_FAMILY:
        raise KeyError(f"layer kind {kind!r} has no op family in layer_compare.KIND_FAMILY; add it")
    return KIND_FAMILY[kind]


# Inductor's generated kernels: triton_{poi,red,per,tem,for}_fused_<aten ops>_<n>.
_INDUCTOR = re.compile(r"triton_(poi|red|per|tem|for)_(?:fused_?)?(.*?)(?:_\d+)*$")
# aten ops that only move data; an inductor pointwise kernel made of nothing else is a copy
_MOVES = sorted("""clone _unsafe_view view permute transpose cat copy _to_copy constant_pad_nd
    slice select index gather scatter expand repeat stack split roll reshape squeeze unsqueeze
    as_strided t unbind flip embedding narrow convert_element_type lift_fresh index_put""".split(), key=len, reverse=True)
# (family, pattern) in order, over the lower-cased name; the first match wins
_RULES: list[tuple[str, re.Pattern]] = [(f, re.compile(p)) for f, p in [
    (ATTENTION, r"flash|fmha|attention|attn|sdpa|softmax"),
    (DATA, r"upsample|interpolat|resize|grid_sampl|nchwtonhwc|nhwctonchw"),
    (CONV, r"conv(?!ert)|fprop|dgrad|wgrad|winograd|depthwise|_add_partials"),
    (MATMUL, r"gemm|gemv|xmma|cutlass|cublas|nvjet|matmul|splitkreduce|linear|einsum|s16816|s1688|wgmma|"
             r"(^|[^a-z])(add|b|baddb|_int_|_scaled_)?mm([^a-z]|$)"),
    (NORM, r"norm(?!al)|(^|[^a-z])rms|welford|bn_fw"),
    (REDUCTION, r"pool|reduce|reduction|mean|sum|amax|amin|argmax|argmin|topk|prod|_spatial_partial|"
                r"_spatial_finish|_se_gate|aten::(any|all|max|min|std|var)$"),
    (DATA, r"copy|memcpy|memset|transpose|permute|concat|contiguous|embedding|reformat|layout|reshape|flatten|"
           r"as_strided|unbind|(^|[^a-z])(cat|clone|index|gather|scatter|pad|view|slice|narrow|expand|repeat|"
           r"split|chunk|stack|squeeze|unsqueeze|select|roll|flip|fill|zero_)|aten::(t|to)$"),
    (POINTWISE, r"elementwise|pointwise|functor|quantize|relu|gelu|silu|sigmoid|tanh|swish|mish|erf|exp|log|sqrt|clamp|"
                r"where|softplus|dropout|aten::(add|sub|mul|div|pow|neg|abs|maximum|minimum|eq|ne|lt|le|gt|ge|"
                r"isnan|round|floor|ceil|sign|reciprocal|bitwise_\w+|logical_\w+)_?$"),
]]


def _inductor_family(kind: str, ops: str) -> str:
    if kind == "tem":   # a template: a GEMM, a convolution or flex attention with its epilogue
        return ATTENTION if "attention" in ops else CONV if "conv" in ops else MATMUL
    if "softmax" in ops or "attention" in ops:
        return ATTENTION
    if re.search(r"norm(?!al)|welford", ops) or (kind in ("red", "per") and ("rsqrt" in ops or "var_mean" in ops)):
        return NORM   # also LayerNorm/RMSNorm written out: a reduction with an inverse root
    if "pool" in ops or kind in ("red", "per"):
        return REDUCTION
    rest = ops
    for op in _MOVES:
        rest = rest.replace(op, "")
    if re.search(r"[a-z]", ops) and not re.sub(r"[_\d]", "", rest):
        return DATA
    return POINTWISE


def kernel_family(name: str) -> str:
    """The op family of a GPU kernel (cuDNN, cuBLAS, CUTLASS, PyTorch's, Inductor's or kilnrt's
    Triton kernels) or of a CPU ``aten::`` op, from its name."""
    low = name.lower()
    m = _INDUCTOR.search(low)
    if m:
        return _inductor_family(m.group(1), m.group(2))
    for family, pattern in _RULES:
        if pattern.search(low):
            return family
    return OTHER


# ----------------------------------------------------------------------------- profiling
@dataclasses.dataclass
class Kernel:
    name: str
    ms: float
    layer: str | None   # the kilnrt layer whose range launched it; None outside layers (and for the peer)


class LayerRanges:
    """A kilnrt layer profiler (``context.profiler``): one ``record_function`` range per layer."""

    def __init__(self) -> None:
        self._open: Any = None

    def begin_layer(self, name: str) -> None:
        self._open = torch.profiler.record_function(name)
        self._open.__enter__()

    def report_layer_time(self, name: str, ms: float) -> None:
        self._open.__exit__(None, None, None)
        self._open = None


def _enclosing(event: Any, names: set[str]) -> str | None:
    while event is not None:
        if event.name in names:
            return event.name
        event = event.cpu_parent
    return None


def _is_cuda(event: Any) -> bool:
    return event.device_type == torch.autograd.DeviceType.CUDA


def kernels_of(events: list, device: str, layer_names: set[str] = frozenset()) -> list[Kernel]:
    """The kernels in profiler ``events``, each with the layer range it ran in.

    CUDA: every device kernel and copy (not the ranges' GPU annotations), its device time; its
    layer through the op that launched it (``linked_correlation_id``), else the layer range
    that contains its start (kilnrt syncs after each layer, so its kernels end inside it).
    CPU: every ``aten::`` op not inside another, its CPU time."""
    cpu = [e for e in events if not _is_cuda(e)]
    out = []
    if device == "cuda":
        # torch 2.13's events link a kernel to the op that launched it; 2.11's do not keep
        # that link (no attribute): then the layer ranges alone place the kernels
        launchers = {e.id: e for e in cpu if getattr(e, "linked_correlation_id", 0) == 0}
        ranges = sorted((e.time_range.start, e.time_range.end, e.name) for e in cpu if e.name in layer_names)
        for e in events:
            if not _is_cuda(e) or e.is_user_annotation:
                continue
            layer = _enclosing(launchers.get(getattr(e, "linked_correlation_id", None)), layer_names)
            if layer is None:
                layer = next((n for s, t, n in ranges if s <= e.time_range.start <= t), None)
            out.append(Kernel(e.name, (e.time_range.end - e.time_range.start) / 1e3, layer))
        return out
    for e in cpu:
        if not e.name.startswith("aten::"):
            continue
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            out.append(Kernel(e.name, e.cpu_time_total / 1e3, _enclosing(e, layer_names)))
    return out


def profile(fn: Callable[[], Any], device: str, calls: int,
            layer_names: set[str] = frozenset()) -> tuple[list[Kernel], float]:
    """The kernels of ``calls`` calls of ``fn`` (after a warm-up call), and the wall ms of those
    calls: their kernels ran one after another inside it."""
    fn()
    sync(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        wall = (time.perf_counter() - t0) * 1e3
    return kernels_of(list(prof.events()), device, layer_names), wall


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_ms(fn: Callable[[], Any], device: str, iters: int) -> float:
    """One call's time: the median of CUDA-graph replays on the GPU; on the CPU the fastest wall
    time (the CPU backend is for testing, on shared cores)."""
    if device == "cuda":
        from kilnrt.builder.timing import time_cuda_graph

        return time_cuda_graph(fn, iters, warmup=10)
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return min(samples)


# ----------------------------------------------------------------------------- the comparison
def compare(engine, feeds: dict[str, torch.Tensor], peer: Callable[[], Any], device: str,
            calls: int = 3, iters: int = 50) -> dict:
    """kilnrt's layers and the peer's kernels, by family; ms are per call."""
    ctx = engine.create_execution_context()
    ctx.profiler = LayerRanges()
    layers = {l.name: l for l in engine.layers}
    mine, mine_wall = profile(lambda: ctx.run(feeds), device, calls, set(layers))
    theirs, theirs_wall = profile(peer, device, calls)
    program = engine.program
    per_layer: dict[str, list[Kernel]] = collections.defaultdict(list)
    for k in mine:
        per_layer[k.layer].append(k)
    fam = {f: dict(family=f, kilnrt_ms=0.0, kilnrt_layers=0, kilnrt_kernels=0.0, kilnrt_by_kernel_ms=0.0,
                   peer_ms=0.0, peer_kernels=0.0) for f in FAMILIES}
    rows = []
    for l in engine.layers:
        ks = per_layer.get(l.name, [])
        f = layer_family(l.kind)
        ms = sum(k.ms for k in ks) / calls
        fam[f]["kilnrt_ms"] += ms
        fam[f]["kilnrt_layers"] += 1
        fam[f]["kilnrt_kernels"] += len(ks) / calls
        rows.append(dict(name=l.name, kind=l.kind.value, family=f, tactic=l.tactic, origin=list(l.origin),
                         ms=round(ms, 5), kernels=len(ks) / calls,
                         kernel_names=sorted({k.name[:120] for k in ks})))
    outside = per_layer.get(None, [])
    for k in outside:   # not in any layer's range (input copies, shape values): by kernel name
        f = fam[kernel_family(k.name)]
        f["kilnrt_ms"] += k.ms / calls
        f["kilnrt_kernels"] += 1 / calls
    for k in mine:
        fam[kernel_family(k.name)]["kilnrt_by_kernel_ms"] += k.ms / calls
    peer_kernels: dict[str, list[float]] = collections.defaultdict(list)
    for k in theirs:
        f = fam[kernel_family(k.name)]
        f["peer_ms"] += k.ms / calls
        f["peer_kernels"] += 1 / calls
        peer_kernels[k.name].append(k.ms)
    for f in fam.values():
        for key in ("kilnrt_ms", "kilnrt_by_kernel_ms", "peer_ms", "kilnrt_kernels", "peer_kernels"):
            f[key] = round(f[key], 5)
        # of the rounded times, to three significant digits (a family far faster on one side has
        # a ratio far below 0.001)
        f["ratio"] = float(f"{f['kilnrt_ms'] / f['peer_ms']:.3g}") if f["peer_ms"] > 0 else None
    return {
        "device": device, "calls": calls,
        "kilnrt": {"kernel_ms": round(sum(k.ms for k in mine) / calls, 5),
                   "run_ms": round(run_ms(lambda: program.execute(feeds), device, iters), 5),
                   "profiled_ms": round(mine_wall / calls, 5),
                   "kernels": len(mine) / calls,
                   "outside_layers_ms": round(sum(k.ms for k in outside) / calls, 5),
                   "layers": sorted(rows, key=lambda r: -r["ms"])},
        "peer": {"kernel_ms": round(sum(k.ms for k in theirs) / calls, 5),
                 "run_ms": round(run_ms(peer, device, iters), 5),
                 "profiled_ms": round(theirs_wall / calls, 5),
                 "kernels": len(theirs) / calls,
                 "by_kernel": sorted(({"name": n[:200], "family": kernel_family(n), "per_call": len(v) / calls,
                                       "ms": round(sum(v) / calls, 5)} for n, v in peer_kernels.items()),
                                     key=lambda r: -r["ms"])},
        "families": [f for f in fam.values() if f["kilnrt_ms"] or f["kilnrt_by_kernel_ms"] or f["peer_ms"]
                     or f["kilnrt_layers"]],
    }


def format_table(result: dict, top: int = 12) -> str:
    k, p = result["kilnrt"], result["peer"]
    lines = [f"{'family':18} {'kilnrt ms':>10} {'layers':>6} {'kernels':>7} {'by name':>9} "
             f"{'peer ms':>9} {'kernels':>7} {'ratio':>6}"]
    for f in result["families"]:
        ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}"
        lines.append(f"{f['family']:18} {f['kilnrt_ms']:10.4f} {f['kilnrt_layers']:6d} {f['kilnrt_kernels']:7.0f} "
                     f"{f['kilnrt_by_kernel_ms']:9.4f} {f['peer_ms']:9.4f} {f['peer_kernels']:7.0f} {ratio:>6}")
    replay = "CUDA-graph replay" if result["device"] == "cuda" else "wall time"
    lines.append(f"{'kernels in total':18} {k['kernel_ms']:10.4f} {'':6} {k['kernels']:7.0f} {'':9} "
                 f"{p['kernel_ms']:9.4f} {p['kernels']:7.0f}")
    lines.append(f"{replay:18} {k['run_ms']:10.4f} {'':6} {'':7} {'':9} {p['run_ms']:9.4f}")
    lines.append(f"{'profiled call':18} {k['profiled_ms']:10.4f} {'':6} {'':7} {'':9} {p['profiled_ms']:9.4f}")
    if k["outside_layers_ms"]:
        lines.append(f"(kilnrt kernels outside any layer, counted by name: {k['outside_layers_ms']:.4f} ms)")
    lines.append("ratio: kilnrt ms / peer ms (above 1: kilnrt slower); 'by name': kilnrt's kernels by "
                 "kernel name, as the peer's are counted")
    lines.append("\nslowest kilnrt layers (ms per call):")
    for r in k["layers"][:top]:
        origin = " + ".join(r["origin"])
        lines.append(f"  {r['ms']:9.4f} {r['kernels']:3.0f}k {r['family']:17} {r['kind']:16} {r['tactic'][:34]:34} "
                     f"{origin[:60]}")
    lines.append("\nlargest peer kernels (ms per call):")
    for r in p["by_kernel"][:top]:
        lines.append(f"  {r['ms']:9.4f} {r['per_call']:3.0f}x {r['family']:17} {r['name'][:100]}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- models
def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def first_output(out):
    if isinstance(out, dict):
        out = list(out.values())
    return out[0] if isinstance(out, (tuple, list)) else out


def load_factory(spec: str) -> Callable[[int], tuple]:
    """``pkg.module:function`` -> the function (``make(batch) -> (module, {name: tensor})``)."""
    module, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise SystemExit(f"--module takes pkg.module:function, got {spec!r}")
    fn = getattr(importlib.import_module(module), attr, None)
    if fn is None:
        raise SystemExit(f"--module: {module} has no {attr!r}")
    return fn


def make_peer(model: torch.nn.Module, args: tuple, peer: str) -> Callable[[], Any]:
    if peer == "eager":
        return lambda: model(*args)
    mode = {"default": "default", "max": "max-autotune-no-cudagraphs"}[peer]
    torch._dynamo.reset()
    compiled = torch.compile(model, mode=mode)
    return lambda: compiled(*args)


def peer_args(inputs: dict[str, torch.Tensor], half: bool, channels_last: bool) -> tuple:
    out = []
    for v in inputs.values():
        if half and v.is_floating_point():
            v = v.half()
        if channels_last and v.dim() == 4:
            v = v.contiguous(memory_format=torch.channels_last)
        out.append(v)
    return tuple(out)


def measure(model32: torch.nn.Module, inputs: dict[str, torch.Tensor], onnx_path: str, device: str, peer: str,
            fp16: bool, channels_last: bool, calls: int, iters: int, timing_cache: str | None = None,
            log=print) -> dict:
    """Build ``onnx_path``, check both sides against the FP32 model, and compare them."""
    with torch.no_grad():
        ref = first_output(model32(*inputs.values())).float()
    t0 = time.perf_counter()
    engine = kilnrt.build(onnx_path, device=device, fp16=fp16, timing_cache=timing_cache)
    log(f"built in {time.perf_counter() - t0:.1f} s: {len(engine.layers)} layers")
    feeds = {k: inputs[k].contiguous() for k in engine.input_names}
    relerr = rel_l2(first_output(engine.run(feeds)[engine.output_names[0]]).float().cpu(), ref.cpu())
    model = model32.half() if fp16 else model32
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    args = peer_args(inputs, fp16, channels_last)
    with torch.no_grad():
        peer_relerr = rel_l2(first_output(model(*args)).float().cpu(), ref.cpu())
        fn = make_peer(model, args, peer)
        result = compare(engine, feeds, fn, device, calls, iters)
    bar = 1e-2 if fp16 else 1e-3
    result.update(relerr=relerr, peer_relerr=peer_relerr, engine_layers=len(engine.layers),
                  correct=relerr < bar or relerr <= 1.5 * peer_relerr)
    return result


def write_json(path: str, meta: dict, result: dict) -> None:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    spec = importlib.util.spec_from_file_location("kilnrt_bench_measure", os.path.join(HERE, "measure.py"))
    measure_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure_module)
    doc = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "triton": triton_version,
           "kilnrt_commit": measure_module.code_commit(), "set": "layers", **meta, **result}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", help="a zoo model (benchmarks/zoo_models.py); or --onnx and --module")
    p.add_argument("--onnx", help="an ONNX file to build (with --module for the peer)")
    p.add_argument("--module", help="pkg.module:make, make(batch) -> (torch module, {input name: tensor})")
    p.add_argument("--name", help="the model's name in the output (default: the zoo name or the ONNX file's)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--peer", choices=["eager", "default", "max"],
                   help="torch eager, torch.compile default mode or max-autotune-no-cudagraphs "
                        "(default: max on cuda, eager on cpu)")
    p.add_argument("--fp32", action="store_true", help="FP32 on the GPU (the CPU always runs FP32)")
    p.add_argument("--channels-last", action="store_true", help="the peer runs channels_last (zoo CNNs always do)")
    p.add_argument("--calls", type=int, default=3, help="calls profiled per side")
    p.add_argument("--iters", type=int, default=50, help="calls timed per side")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--timing-cache", default=None)
    p.add_argument("--out", help="the JSON's path (default: benchmarks/results/<date>-<gpu>-layers-<model>-b<batch>.json)")
    args = p.parse_args(argv)
    if (args.model is None) == (args.onnx is None):
        p.error("give a zoo model or --onnx (with --module), not both")
    if args.onnx and not args.module:
        p.error("--onnx needs --module: the PyTorch model the peer runs")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu")
    peer = args.peer or ("max" if args.device == "cuda" else "eager")
    if args.device == "cpu" and peer != "eager":
        p.error("on the CPU the peer is torch eager (--peer eager)")
    fp16 = args.device == "cuda" and not args.fp32
    channels_last = args.channels_last
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            sys.path.insert(0, HERE)   # only here: tests/ has a package of that name
            from zoo import export_onnx
            from zoo_models import ZOO

            if args.model not in ZOO:
                p.error(f"unknown model {args.model!r}; the zoo has: {', '.join(ZOO)}")
            if args.device != "cuda":
                p.error("zoo models are made on the GPU; on the CPU use --onnx and --module")
            entry = ZOO[args.model]
            model32, inputs = entry.make(args.batch)
            channels_last = channels_last or entry.cnn
            onnx_path = os.path.join(tmp, f"{args.model}.onnx")
            with torch.no_grad():
                export_onnx(model32, inputs, onnx_path)
        else:
            model32, inputs = load_factory(args.module)(args.batch)
            model32 = model32.to(args.device).eval()
            inputs = {k: v.to(args.device) for k, v in inputs.items()}
            onnx_path = args.onnx
        name = args.name or args.model or os.path.splitext(os.path.basename(args.onnx))[0]
        result = measure(model32, inputs, onnx_path, args.device, peer, fp16, channels_last, args.calls, args.iters,
                         args.timing_cache)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    meta = {"gpu": gpu, "model": name, "batch": args.batch, "precision": "fp16" if fp16 else "fp32"}
    result["peer"]["mode"] = peer
    out = args.out or os.path.join(
        RESULTS, f"{datetime.date.today().isoformat()}-{gpu.replace(' ', '_')}-layers-{name}-b{args.batch}.json")
    write_json(out, meta, result)
    print(f"\n{name} batch {args.batch}, {meta['precision']}, {gpu}: kilnrt vs {peer}; relerr {result['relerr']:.1e} "
          f"(peer {result['peer_relerr']:.1e})" + ("" if result["correct"] else "  WRONG: kilnrt's output is off"))
    print(format_table(result, args.top))
    print(f"\nresults: {out}")
    return 0 if result["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
