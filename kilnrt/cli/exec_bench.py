"""trtexec's inference loop and reports for ``kilnrt exec``: per-run traces, the performance
summary, the per-layer profile, and the JSON files of ``--exportTimes``, ``--exportProfile``
and ``--exportLayerInfo`` in trtexec's formats.

Each stream (``--streams``) has its own execution context (and CUDA stream), driven by its
own thread. A run is traced as trtexec traces it: enqueue (host), H2D copies of the inputs
from host buffers, compute, D2H copies of the outputs, in ms since the loop began (CUDA
events on the GPU). ``--noDataTransfers`` leaves the copies out. On the CPU there is nothing
to copy: the H2D and D2H spans are empty and compute equals enqueue. Each run waits for the
one before it on its stream.
"""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

TRACE_KEYS = ("startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs",
              "startD2hMs", "endD2hMs")


@dataclass
class Trace:
    """One run, in ms since the loop began (trtexec's ``InferenceTrace``)."""
    enq: tuple[float, float]
    h2d: tuple[float, float]
    compute: tuple[float, float]
    d2h: tuple[float, float]

    @property
    def latency_ms(self) -> float:
        return (self.h2d[1] - self.h2d[0]) + (self.compute[1] - self.compute[0]) + (self.d2h[1] - self.d2h[0])

    def as_json(self) -> dict[str, float]:
        starts_ends = [*self.enq, *self.h2d, *self.compute, *self.d2h]
        out = dict(zip(TRACE_KEYS, starts_ends))
        out.update({"h2dMs": self.h2d[1] - self.h2d[0], "computeMs": self.compute[1] - self.compute[0],
                    "d2hMs": self.d2h[1] - self.d2h[0], "latencyMs": self.latency_ms})
        return out


class _Stream:
    """One execution context with its inputs and outputs bound, host copies where transfers run."""

    def __init__(self, engine, feeds: Mapping[str, np.ndarray], *, cuda_graph: bool, transfers: bool,
                 profiler: Any = None) -> None:
        import torch

        from kilnrt.network.dtypes import numpy_to_torch

        self.cuda = engine.device == "cuda"
        self.transfers = transfers and self.cuda
        self.context = engine.create_execution_context()
        self.context.use_cuda_graph = cuda_graph
        self.context.profiler = profiler
        self.stream = torch.cuda.Stream() if self.cuda else None
        device = torch.device(engine.device)
        self.host_in = {k: numpy_to_torch(np.ascontiguousarray(v)) for k, v in feeds.items()}
        if self.cuda:
            self.host_in = {k: v.pin_memory() for k, v in self.host_in.items()}
        self.dev_in = {k: v.to(device) for k, v in self.host_in.items()}
        first = self.context.run(self.dev_in)          # learns the output shapes (and warms up)
        self.dev_out = {k: torch.empty_like(v) for k, v in first.items()}
        self.host_out = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=self.cuda) for k, v in first.items()}
        for name, t in self.dev_in.items():
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t)
        for name, t in self.dev_out.items():
            self.context.set_tensor_address(name, t)

    def run(self, origin: "_Origin") -> Trace:
        if not self.cuda:
            t0 = origin.now()
            self.context.execute_async_v3(0)
            t1 = origin.now()
            return Trace((t0, t1), (t0, t0), (t0, t1), (t1, t1))
        import torch

        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        with torch.cuda.stream(self.stream):
            t0 = origin.now()
            events[0].record(self.stream)
            if self.transfers:
                for name, t in self.host_in.items():
                    self.dev_in[name].copy_(t, non_blocking=True)
            events[1].record(self.stream)
            self.context.execute_async_v3(self.stream.cuda_stream)
            events[2].record(self.stream)
            if self.transfers:
                for name, t in self.dev_out.items():
                    self.host_out[name].copy_(t, non_blocking=True)
            events[3].record(self.stream)
            t1 = origin.now()
        events[3].synchronize()
        at = [origin.event.elapsed_time(e) for e in events]
        return Trace((t0, t1), (at[0], at[1]), (at[1], at[2]), (at[2], at[3]))


class _Origin:
    """Time zero of the loop, on the host and (on CUDA) as an event."""

    def __init__(self, cuda: bool) -> None:
        self.event = None
        if cuda:
            import torch

            torch.cuda.synchronize()
            self.event = torch.cuda.Event(enable_timing=True)
            self.event.record()
            self.event.synchronize()
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return (time.perf_counter() - self.t0) * 1e3


@dataclass
class LoopResult:
    traces: list[Trace]          # timed runs of every stream, by start time
    warmups: int
    warmup_ms: float


def run_loop(engine, feeds: Mapping[str, np.ndarray], *, streams: int = 1, warmup_ms: float = 200.0,
             iterations: int = 10, duration_s: float = 3.0, cuda_graph: bool = False, transfers: bool = True,
             profiler: Any = None) -> LoopResult:
    """trtexec's loop: each stream warms up for ``warmup_ms``, then runs at least ``iterations``
    times and for at least ``duration_s``; ``profiler`` is attached to the first stream."""
    workers = [_Stream(engine, feeds, cuda_graph=cuda_graph, transfers=transfers,
                       profiler=profiler if i == 0 else None) for i in range(max(streams, 1))]
    origin = _Origin(engine.device == "cuda")
    results: list[tuple[int, list[Trace]]] = [(0, []) for _ in workers]
    errors: list[BaseException] = []

    def drive(k: int) -> None:
        try:
            w, warm, timed = workers[k], 0, []
            while origin.now() < warmup_ms:
                w.run(origin)
                warm += 1
            begin = origin.now()
            while len(timed) < max(iterations, 1) or origin.now() - begin < duration_s * 1e3:
                timed.append(w.run(origin))
            results[k] = (warm, timed)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    if len(workers) == 1:
        drive(0)
    else:
        threads = [threading.Thread(target=drive, args=(k,), name=f"kilnrt-exec-stream-{k}") for k in range(len(workers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    traces = sorted((t for _, ts in results for t in ts), key=lambda t: t.enq[0])
    return LoopResult(traces, sum(w for w, _ in results), warmup_ms)


# ----------------------------------------------------------------------------- reports
def percentile(values: Sequence[float], p: float) -> float:
    """trtexec's percentile of ``values``: drop the top ``(1 - p/100)`` share, take the largest left."""
    v = sorted(values)
    exclude = int((1 - p / 100) * len(v))
    return v[max(len(v) - 1 - exclude, 0)]


def _stats(values: Sequence[float], percentiles: Sequence[float]) -> str:
    text = (f"min = {min(values):.5g} ms, max = {max(values):.5g} ms, mean = {statistics.fmean(values):.5g} ms, "
            f"median = {statistics.median(values):.5g} ms")
    return text + "".join(f", percentile({p:g}%) = {percentile(values, p):.5g} ms" for p in percentiles)


def summary(loop: LoopResult, *, batch: int, percentiles: Sequence[float], device: str,
            avg_runs: int = 10) -> tuple[list[str], list[str], dict[str, float]]:
    """trtexec's report: (info lines, verbose trace-detail lines, numbers)."""
    tr = loop.traces
    wall_ms = max(t.d2h[1] for t in tr) - min(t.h2d[0] for t in tr)
    qps = len(tr) / (wall_ms / 1e3) if wall_ms > 0 else float("inf")
    compute = [t.compute[1] - t.compute[0] for t in tr]
    gpu = "GPU " if device == "cuda" else ""
    lines = [f"Warmup completed {loop.warmups} queries over {loop.warmup_ms:g} ms",
             f"Timing trace has {len(tr)} queries over {wall_ms / 1e3:.5g} s",
             "=== Performance summary ===",
             f"Throughput: {qps:.5g} qps",
             f"Latency: {_stats([t.latency_ms for t in tr], percentiles)}",
             f"Enqueue Time: {_stats([t.enq[1] - t.enq[0] for t in tr], percentiles)}",
             f"H2D Latency: {_stats([t.h2d[1] - t.h2d[0] for t in tr], percentiles)}",
             f"{gpu}Compute Time: {_stats(compute, percentiles)}",
             f"D2H Latency: {_stats([t.d2h[1] - t.d2h[0] for t in tr], percentiles)}",
             f"Total Host Walltime: {wall_ms / 1e3:.5g} s",
             f"Total {gpu}Compute Time: {sum(compute) / 1e3:.5g} s",
             f"Batch: {batch} items per query, {qps * batch:.5g} items/s"]
    details = ["=== Trace details ===", f"Trace averages of {avg_runs} runs:"]
    for k in range(0, len(tr) - avg_runs + 1, max(avg_runs, 1)):
        chunk = tr[k:k + avg_runs]
        details.append(f"Average on {avg_runs} runs - {gpu}latency: "
                       f"{statistics.fmean(t.compute[1] - t.compute[0] for t in chunk):.5g} ms - Host latency: "
                       f"{statistics.fmean(t.latency_ms for t in chunk):.5g} ms (enqueue "
                       f"{statistics.fmean(t.enq[1] - t.enq[0] for t in chunk):.5g} ms)")
    numbers = {"throughput_qps": qps, "queries": len(tr), "walltime_s": wall_ms / 1e3,
               "median_latency_ms": statistics.median(t.latency_ms for t in tr)}
    return lines, details, numbers


def profile_records(samples: Mapping[str, Sequence[float]]) -> list[dict[str, Any]]:
    """trtexec's ``--exportProfile`` list: ``{"count": N}``, then one record per layer."""
    count = max((len(v) for v in samples.values()), default=0)
    total = sum(sum(v) for v in samples.values()) or 1.0
    out: list[dict[str, Any]] = [{"count": count}]
    for name, v in samples.items():
        if v:
            out.append({"name": name, "timeMs": sum(v), "averageMs": sum(v) / count,
                        "medianMs": statistics.median(v), "percentage": sum(v) / total * 100})
    return out


def profile_lines(records: list[dict[str, Any]]) -> list[str]:
    """trtexec's ``--dumpProfile`` table."""
    rows = records[1:]
    width = max([len(r["name"]) for r in rows] + [5]) + 1
    total = sum(r["timeMs"] for r in rows)
    count = max(records[0]["count"], 1)
    lines = [f"=== Profile ({records[0]['count']} iterations ) ===",
             f"{'Layer':>{width}}   Time (ms)   Avg. Time (ms)   Median Time (ms)   Time %"]
    for r in rows:
        lines.append(f"{r['name']:>{width}}{r['timeMs']:12.2f}{r['averageMs']:17.4f}{r['medianMs']:19.4f}"
                     f"{r['percentage']:9.1f}")
    lines.append(f"{'Total':>{width}}{total:12.2f}{total / count:17.4f}{'':19}{100.0:9.1f}")
    return lines


# ----------------------------------------------------------------------------- layer information
_FORMAT_NAMES = {  # kilnrt dtype -> TensorRT's words in a linear / channels-last format description
    "FLOAT": ("Row major linear FP32", "Channel major FP32 format"),
    "HALF": ("Row major linear FP16 format", "Channel major FP16 format"),
    "BF16": ("Row major linear BFloat16 format", "Channel major BFloat16 format"),
    "INT8": ("Row major Int8 format", "Channel major Int8 format"),
    "UINT8": ("Row major linear UInt8 format", "Channel major UInt8 format"),
    "INT32": ("Row major linear Int32", "Row major linear Int32"),
    "INT64": ("Row major linear Int64 format", "Row major linear Int64 format"),
    "BOOL": ("Row major linear BOOL", "Row major linear BOOL"),
}


def _tensor(info: dict[str, Any]) -> dict[str, Any]:
    shape = info.get("shape")
    if shape is not None and not all(isinstance(d, int) for d in shape):
        shape = info.get("opt_shape") or [d if isinstance(d, int) else -1 for d in shape]
    linear, nhwc = _FORMAT_NAMES.get(info.get("dtype"), (f"Row major linear {info.get('dtype')} format",) * 2)
    return {"Name": info["name"], "Location": "Device", "Dimensions": shape,
            "Format/Datatype": nhwc if info.get("format") == "channels_last" else linear}


def layer_information(engine, verbosity: str = "layer_names_only") -> dict[str, Any]:
    """trtexec's ``--exportLayerInfo`` JSON: ``{"Layers": [...], "Bindings": [...]}``; with
    ``detailed`` each layer is an object (name, type, tensors with dimensions and formats,
    tactic, and the ONNX nodes in ``Metadata`` as TensorRT writes them)."""
    from kilnrt.engine.inspector import describe_engine

    data = describe_engine(engine)
    bindings = [t["name"] for t in data["io"]]
    if verbosity != "detailed":
        return {"Layers": [l["name"] for l in data["layers"]], "Bindings": bindings}
    layers = []
    for l in data["layers"]:
        kind = l["kind"].title().replace("_", "")
        layers.append({"Name": l["name"], "LayerType": kind, "ParameterType": kind,
                       "Inputs": [_tensor(t) for t in l["inputs"]], "Outputs": [_tensor(t) for t in l["outputs"]],
                       "TacticName": l["tactic"], "StreamId": 0, "Precision": l["precision"],
                       "Metadata": "\x1e".join(f"[ONNX Layer: {n}]" for n in l["origin"])})
    return {"Layers": layers, "Bindings": bindings}
