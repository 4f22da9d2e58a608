"""How every benchmark times kilnrt, as BENCHMARKS.md defines it.

- the public call (the headline): inputs and outputs bound once with ``set_tensor_address``,
  then ``context.execute_async_v3(stream)``: GPU ms per call between CUDA events, and the
  host time per call without a sync;
- ``engine.run`` with device tensors: the same two figures;
- the outer graph: the engine's program replayed inside a CUDA graph of the benchmark's own
  (a lower bound, never the headline).
"""
from __future__ import annotations

import datetime
import os
import signal
import statistics
import subprocess
import time

import torch

from kilnrt.builder.timing import event_median_ms, time_cuda_graph


def host_us_per_call(call, n: int = 20) -> float:
    """Host microseconds per ``call()``, ``n`` calls back to back without a sync (the median of
    15 rounds, each after a sync; few enough calls that the GPU's launch queue never fills and
    blocks the host)."""
    rounds = []
    for _ in range(15):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        rounds.append((time.perf_counter() - t0) / n * 1e6)
    torch.cuda.synchronize()
    return statistics.median(rounds)


def host_us_idle(call, n: int = 50) -> float:
    """Host microseconds of one ``call()`` on an idle GPU (the median of ``n``, each after a
    sync).  :func:`host_us_per_call`'s figure for calls back to back differs between models
    with the same inputs and outputs (2026-12-02, H200: ``engine.run`` 23 µs for ResNet-50, 54
    µs for ConvNeXt-T), more than kilnrt's work per call does.  A guess, not checked yet: the
    GPU holds back-to-back launches of a graph of many kernels (each takes entries of the
    launch queue).  Both figures are recorded, so that the next run tells the two apart."""
    samples = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(samples)


def bind(engine, feeds: dict[str, torch.Tensor]):
    """A context with ``feeds`` and freshly allocated outputs bound by address: (ctx, outputs)."""
    ctx = engine.create_execution_context()
    ctx.set_optimization_profile_async(engine.profile_containing({k: tuple(v.shape) for k, v in feeds.items()}), 0)
    for k, v in feeds.items():
        ctx.set_input_shape(k, tuple(v.shape))
        ctx.set_tensor_address(k, v)
    outs = {}
    for name in engine.output_names:
        outs[name] = torch.empty(ctx.get_tensor_shape(name), dtype=engine.get_tensor_dtype(name).torch, device="cuda")
        ctx.set_tensor_address(name, outs[name])
    return ctx, outs


def public_call(engine, feeds: dict[str, torch.Tensor], iters: int) -> dict:
    """execute_async_v3 on buffers bound once: GPU ms per call (events), host us per call, the
    first call's time (shape program and capture), the context's graph counters."""
    ctx, outs = bind(engine, feeds)
    stream = torch.cuda.current_stream()
    t0 = time.perf_counter()
    ctx.execute_async_v3(stream.cuda_stream)      # first call: host shape program + capture
    torch.cuda.synchronize()
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(10):
        ctx.execute_async_v3(stream.cuda_stream)
    torch.cuda.synchronize()
    ms = event_median_ms(lambda: ctx.execute_async_v3(stream.cuda_stream), iters)
    host_us = host_us_per_call(lambda: ctx.execute_async_v3(stream.cuda_stream))
    idle_us = host_us_idle(lambda: ctx.execute_async_v3(stream.cuda_stream))
    stats = ctx.graph_stats
    return {"ms": ms, "host_us": host_us, "host_us_idle": idle_us, "first_call_ms": first_ms,
            "captures": None if stats is None else stats.captures,
            "eager_runs": None if stats is None else stats.eager_runs,
            "fallback": None if stats is None else stats.fallback_reason, "outputs": outs, "ctx": ctx}


def run_call(engine, feeds: dict[str, torch.Tensor], iters: int) -> dict:
    """engine.run with device tensors: GPU ms per call (events), host us per call."""
    for _ in range(10):
        engine.run(feeds)
    ms = event_median_ms(lambda: engine.run(feeds), iters)
    return {"ms": ms, "host_us": host_us_per_call(lambda: engine.run(feeds)),
            "host_us_idle": host_us_idle(lambda: engine.run(feeds))}


def outer_graph_ms(engine, feeds: dict[str, torch.Tensor], iters: int) -> float:
    """The engine's program replayed inside an outer CUDA graph: the lower bound."""
    program = engine.program
    static = {k: v.contiguous() for k, v in feeds.items()}
    return time_cuda_graph(lambda: program.execute(static), iters, warmup=10)


def kilnrt_times(engine, feeds: dict[str, torch.Tensor], iters: int = 100) -> dict:
    """The kilnrt fields of a results row: kilnrt_ms (the public call), kilnrt_run_ms,
    kilnrt_graph_ms, host_us (per execute_async_v3, calls back to back), run_host_us (per
    engine.run, the same), and both on an idle GPU (``*_idle``: one call after a sync)."""
    pub = public_call(engine, feeds, iters)
    run = run_call(engine, feeds, iters)
    return {"kilnrt_ms": round(pub["ms"], 4), "host_us": round(pub["host_us"], 1),
            "host_us_idle": round(pub["host_us_idle"], 1),
            "kilnrt_run_ms": round(run["ms"], 4), "run_host_us": round(run["host_us"], 1),
            "run_host_us_idle": round(run["host_us_idle"], 1),
            "kilnrt_graph_ms": round(outer_graph_ms(engine, feeds, iters), 4),
            "first_call_ms": round(pub["first_call_ms"], 1), "graph_captures": pub["captures"],
            "graph_fallback": pub["fallback"] or None}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class Stopped(BaseException):
    """SIGTERM arrived (``timeout``, a scheduler): a run writes what it measured, then ends.  A
    BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way (inductor's
    autotuner has some) takes it for one failed kernel and goes on."""


def _raise_stopped(signum, frame):
    raise Stopped(f"stopped by signal {signal.Signals(signum).name}")


def stop_on_sigterm():
    """Make SIGTERM raise :class:`Stopped`; returns the previous handler (restore it after)."""
    return signal.signal(signal.SIGTERM, _raise_stopped)


def results_header(set_name: str, gpu: str, date: str | None = None) -> dict:
    """The fields a results file starts with (BENCHMARKS.md): its date, the GPU, torch's and
    Triton's versions, the commit of the code that ran and the set; add ``"rows"``."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"date": date or datetime.date.today().isoformat(), "gpu": gpu, "torch": torch.__version__,
            "triton": triton_version, "kilnrt_commit": code_commit(), "set": set_name}


def code_commit() -> str | None:
    """The commit of the code that runs: ``KILNRT_COMMIT`` where the caller knows it better
    (a copy of the working tree whose git metadata lags, as on the GPU machine), else git's
    HEAD, marked ``+changes`` when tracked code (``kilnrt/``, ``benchmarks/*.py``) differs from it."""
    if os.environ.get("KILNRT_COMMIT"):
        return os.environ["KILNRT_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=here).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or None
    root = os.path.dirname(here)
    if commit and git("status", "--porcelain", "--untracked-files=no", "--", os.path.join(root, "kilnrt"),
                      os.path.join(root, "benchmarks", "*.py")):   # the code, not results files
        commit += "+changes"
    return commit

