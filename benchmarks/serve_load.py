"""Load test of ``kilnrt serve``: throughput and p50/p90/p99 latency by concurrency, over HTTP and
gRPC, with and without dynamic batching, driven by tritonclient's async API; and the correctness
check of many concurrent clients (issue: 64 clients x 1,000 requests, 0 errors, every result right).

    python benchmarks/serve_load.py                                  # examples/digits.onnx on the CPU
    python benchmarks/serve_load.py --backend triton --concurrency 1,8,64 --seconds 3
    python benchmarks/serve_load.py --check-clients 64 --check-requests 1000 --no-load
    python benchmarks/serve_load.py --model resnet50 --device cuda --precision fp16 --backend triton \\
        --engine-baseline --instances 4 --client-processes 8         # the GPU check (torchvision needed)
    python benchmarks/serve_load.py ... --shared-memory system       # inputs in registered shared memory
    python benchmarks/serve_load.py --chart-only benchmarks/results/2026-12-01-cpu-serve-load.json

How it measures.  The model (an ONNX file, a plan, or ``resnet50``: torchvision's ResNet-50 with
seeded random weights, exported here) is built once in this process and saved as a plan, so the
server runs exactly the engine whose outputs are the reference: a pool of 64 seeded random
requests is run through ``engine.run`` first.  Then ``kilnrt serve`` starts on free loopback
ports (once with dynamic batching and once with ``--no-dynamic-batching``) and, for each protocol
and each concurrency C, C clients (each its own tritonclient ``aio`` client with one request in
flight) send requests back to back: ``--warmup`` seconds unmeasured, then ``--seconds`` measured.
Every answer is compared with its reference (relative L2 error below 1e-4 for fp32, 1e-2 for
fp16/bf16); an answer that differs counts in ``wrong``, an exception in ``errors``.  The clients
share this machine's CPU with the server (``--client-processes`` spreads them over processes).

Results: ``benchmarks/results/<date>-<device>-serve-load.json`` (written after every row;
``--resume`` keeps rows already there) and a chart beside it (``.png``).  The file is
``{"date", "gpu", "torch", "triton", "kilnrt_commit", "set": "serve-load", "machine", "notes",
"rows"}`` as benchmarks/README's format asks; the rows' fields:

=====================  ==============================================================================
``kind``               ``"load"`` (a concurrency level), ``"check"`` (the many-clients correctness
                       check) or ``"engine"`` (the engine's own throughput, ``--engine-baseline``)
``model``, ``family``  the served model, ``"serve"``
``batch``, ``seq``     items per request (the engine row: the batch it ran), ``seq`` null
``precision``          fp32 / fp16 / bf16 (what the plan was built with)
``profile``            ``{"min", "opt", "max"}`` of the plan's first input
``backend``            ``triton`` (PyTriton) or ``kserve`` (KServe's model server)
``device``             ``cpu`` or ``cuda``
``protocol``           ``http`` or ``grpc`` (null for the engine row)
``dynamic_batching``   whether the server batched requests together
``instances``          execution contexts serving the model (on Triton: backend processes)
``max_queue_delay_us`` how long the dynamic batcher let a request wait for others
``client_processes``   processes the clients were spread over (on the server's machine)
``shared_memory``      ``"system"``: the inputs sat in a system shared-memory region registered with
                       Triton and requests named their offsets (``--shared-memory system``; clients on
                       the server's machine); null: the inputs travelled in the requests
``concurrency``        clients, each with one request in flight
``requests``           answers received in the measured window (a check: all requests sent)
``errors``, ``wrong``  requests that raised; answers that did not match the reference
``seconds``            length of the measured window
``throughput_rps``     answers per second; ``items_per_s``: the same times ``batch``
``p50_ms`` … ``p99_ms``  latency percentiles of one request as its client saw it, and ``mean_ms``
``engine_batch_mean``  items per engine run on the server (from its metrics); > ``batch`` when the
                       dynamic batcher stacked requests
``server_us``          Triton only: per request, microseconds inside the server (``request``), waiting
                       in its queue (``queue``) and in the model's input, execute and output steps
                       (``compute_input``, ``compute_infer``, ``compute_output``; a batch's time counts
                       once for each request in it), from Triton's ``nv_inference_*`` metrics
``vs_no_batching``     ``throughput_rps`` over the same protocol's and concurrency's without batching
``vs_engine``          ``items_per_s`` over the engine row's (the GPU bar: >= 0.8 at concurrency 64)
``error_examples``     up to three error messages
``notes``              anything a reader must know about this row
=====================  ==============================================================================
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import re
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
DIGITS = ROOT / "examples" / "digits.onnx"
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
POOL = 64                       # distinct requests, each with its reference answer
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 2e-2}


# ----------------------------------------------------------------------------- the model
def export_resnet50(folder: Path) -> Path:
    """torchvision's ResNet-50, seeded random weights, batch dim dynamic (no download)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    path = folder / "resnet50.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)
    return path


def build_plan(args, folder: Path):
    """(plan path, engine, name): the engine the server will run, built or loaded here."""
    from kilnrt.serve.config import ModelSettings
    from kilnrt.serve.models import load_engine

    source = Path(args.model) if args.model != "resnet50" else export_resnet50(folder)
    name = args.name or source.stem.replace(".", "_")
    settings = ModelSettings(name, source, max_batch=args.max_batch, device=args.device, precision=args.precision,
                             preferred_batch_sizes=tuple(args.preferred_batch_sizes))
    start = time.perf_counter()
    engine = load_engine(settings, timing_cache_dir=Path(args.timing_cache_dir))
    print(f"{name}: engine from {source} in {time.perf_counter() - start:.1f} s", flush=True)
    plan = folder / f"{name}.plan"
    engine.save(str(plan))
    return plan, engine, name


def request_pool(engine, batch: int, seed: int, precision: str):
    """POOL seeded random requests of ``batch`` items, and engine.run's answer to each."""
    rng = np.random.default_rng(seed)
    inputs = [t for t in engine.io if t.mode == "input"]
    pool, refs = [], []
    for _ in range(POOL):
        feeds = {}
        for t in inputs:
            shape = [batch if i == 0 else d for i, d in enumerate(t.shape)]
            if any(d < 0 for d in shape):
                raise SystemExit(f"input {t.name!r} has a dynamic dim other than the batch: {list(t.shape)}")
            dtype = t.dtype.numpy
            if np.issubdtype(dtype, np.floating):
                feeds[t.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[t.name] = rng.integers(0, 100, shape).astype(dtype)
        pool.append(feeds)
        refs.append({k: np.asarray(v, dtype=np.float64) for k, v in engine.run(feeds).items()})
    return pool, refs


def engine_baseline(engine, batch: int, pool, seconds: float) -> dict:
    """The engine's own throughput at ``batch`` items per run, host arrays in and out."""
    feeds = {k: np.concatenate([p[k] for p in pool])[:batch] for k in pool[0]}
    while next(iter(feeds.values())).shape[0] < batch:
        feeds = {k: np.concatenate([v, v])[:batch] for k, v in feeds.items()}
    for _ in range(5):
        engine.run(feeds)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.run(feeds)
        runs += 1
    elapsed = time.perf_counter() - start
    return {"requests": runs, "seconds": round(elapsed, 3), "throughput_rps": round(runs / elapsed, 1),
            "items_per_s": round(runs * batch / elapsed, 1)}


# ----------------------------------------------------------------------------- clients
_POOL: list = []
_REFS: list = []
_TOL = 1e-4
_TOKEN: str | None = None          # the server's access token (Triton's shared-memory API asks for it)


def _init_worker(pool, refs, tol, token=None):
    global _POOL, _REFS, _TOL, _TOKEN
    _POOL, _REFS, _TOL, _TOKEN = pool, refs, tol, token


def _modules(protocol: str):
    if protocol == "http":
        import tritonclient.http as sync
        import tritonclient.http.aio as aio
    else:
        import tritonclient.grpc as sync
        import tritonclient.grpc.aio as aio
    return sync, aio


def _infer_input(sync, name, value):
    """tritonclient's InferInput for ``value`` (its data not yet set)."""
    from tritonclient.utils import np_to_triton_dtype

    return sync.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))


def _make_inputs(sync, feeds):
    out = []
    for name, value in feeds.items():
        inp = _infer_input(sync, name, value)
        inp.set_data_from_numpy(value)
        out.append(inp)
    return out


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    diff = np.linalg.norm(np.asarray(got, np.float64) - ref)
    return float(diff / max(np.linalg.norm(ref), 1e-30))


async def _client_loop(aio, url, model, inputs, first, stop_at, window, count, out):
    """One client: requests back to back until ``stop_at`` (or ``count`` of them); latencies of
    those that started inside ``window`` go to ``out``."""
    client = aio.InferenceServerClient(url)
    try:
        i = first
        sent = 0
        while (count is None and time.monotonic() < stop_at) or (count is not None and sent < count):
            k = i % POOL
            i += 1
            sent += 1
            t0 = time.monotonic()
            try:
                result = await client.infer(model, inputs[k])
            except Exception as exc:  # noqa: BLE001 -- counted and reported
                if window[0] <= t0 < window[1]:
                    out["errors"] += 1
                    if len(out["error_examples"]) < 3:
                        out["error_examples"].append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            t1 = time.monotonic()
            if not window[0] <= t0 < window[1]:
                continue
            out["latencies"].append(t1 - t0)
            if t1 <= window[1]:
                out["done_in_window"] += 1
            if any(_rel_err(result.as_numpy(n), ref) > _TOL for n, ref in _REFS[k].items()):
                out["wrong"] += 1
    finally:
        await client.close()


def _shared_memory_inputs(protocol, sync, url, stack: contextlib.ExitStack):
    """The pool's inputs placed once in a system shared-memory region registered with the server
    (Triton's shared-memory extension): requests then name an offset instead of carrying bytes."""
    import tritonclient.utils.shared_memory as shm

    name = f"kilnrt-load-{os.getpid()}"
    size = sum(v.nbytes for feeds in _POOL for v in feeds.values())
    region = shm.create_shared_memory_region(name, "/" + name, size)
    stack.callback(shm.destroy_shared_memory_region, region)
    client = sync.InferenceServerClient(url)
    stack.callback(client.close)
    # Triton's header for a restricted API: its name, prefixed over gRPC by the restricted protocol's
    header = "triton-access-token" if protocol == "http" else "triton-grpc-protocol-triton-access-token"
    headers = {header: _TOKEN} if _TOKEN else None
    client.register_system_shared_memory(name, "/" + name, size, headers=headers)
    stack.callback(client.unregister_system_shared_memory, name, headers=headers)
    inputs, offset = [], 0
    for feeds in _POOL:
        row = []
        for key, value in feeds.items():
            shm.set_shared_memory_region(region, [np.ascontiguousarray(value)], offset=offset)
            inp = _infer_input(sync, key, value)
            inp.set_shared_memory(name, value.nbytes, offset=offset)
            row.append(inp)
            offset += value.nbytes
        inputs.append(row)
    return inputs


async def _drive_async(protocol, url, model, clients, first_client, start_at, warmup, seconds, count, shared_memory):
    sync, aio = _modules(protocol)
    with contextlib.ExitStack() as stack:
        inputs = (_shared_memory_inputs(protocol, sync, url, stack) if shared_memory == "system"
                  else [_make_inputs(sync, feeds) for feeds in _POOL])
        return await _drive_clients(aio, url, model, inputs, clients, first_client, start_at, warmup, seconds, count)


async def _drive_clients(aio, url, model, inputs, clients, first_client, start_at, warmup, seconds, count):
    out = {"latencies": [], "done_in_window": 0, "errors": 0, "wrong": 0, "error_examples": []}
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    if count is None:
        window = (start_at + warmup, start_at + warmup + seconds)
        stop_at = window[1]
    else:
        window, stop_at = (0.0, float("inf")), None
    await asyncio.gather(*(_client_loop(aio, url, model, inputs, 7 * (first_client + c), stop_at, window, count, out)
                           for c in range(clients)))
    out["finished_at"] = time.monotonic()
    return out


def drive(protocol, url, model, clients, first_client, start_at, warmup, seconds, count=None, shared_memory=None):
    """``clients`` async clients in this process (a worker's task)."""
    return asyncio.run(_drive_async(protocol, url, model, clients, first_client, start_at, warmup, seconds, count,
                                    shared_memory))


def run_level(executor, processes, protocol, url, model, concurrency, warmup, seconds, count=None,
              shared_memory=None) -> dict:
    """Drive the server with ``concurrency`` clients split over ``processes``; merged statistics."""
    shares = [concurrency // processes + (1 if p < concurrency % processes else 0) for p in range(processes)]
    shares = [s for s in shares if s]
    start_at = time.monotonic() + (1.0 if executor else 0.05)
    begin = time.monotonic()
    if executor is None:
        parts = [drive(protocol, url, model, concurrency, 0, start_at, warmup, seconds, count, shared_memory)]
    else:
        firsts = np.cumsum([0, *shares[:-1]])
        futures = [executor.submit(drive, protocol, url, model, s, int(f), start_at, warmup, seconds, count,
                                   shared_memory) for s, f in zip(shares, firsts)]
        parts = [f.result() for f in futures]
    lat = np.array(sorted(x for p in parts for x in p["latencies"])) * 1e3
    out = {"errors": sum(p["errors"] for p in parts), "wrong": sum(p["wrong"] for p in parts),
           "error_examples": [e for p in parts for e in p["error_examples"]][:3]}
    if count is None:
        done = sum(p["done_in_window"] for p in parts)
        out.update(requests=done, seconds=seconds, throughput_rps=round(done / seconds, 1))
    else:
        elapsed = max(p["finished_at"] for p in parts) - max(start_at, begin)
        out.update(requests=concurrency * count, seconds=round(elapsed, 2),
                   throughput_rps=round(concurrency * count / elapsed, 1))
    if len(lat):
        out.update(p50_ms=round(float(np.percentile(lat, 50)), 3), p90_ms=round(float(np.percentile(lat, 90)), 3),
                   p99_ms=round(float(np.percentile(lat, 99)), 3), mean_ms=round(float(lat.mean()), 3))
    else:
        out.update(p50_ms=None, p90_ms=None, p99_ms=None, mean_ms=None)
    return out


# ----------------------------------------------------------------------------- the server's metrics
# per backend: the counters read before and after a level (items and engine runs first)
COUNTERS = {
    "kserve": ("kilnrt_engine_batch_size_sum", "kilnrt_engine_batch_size_count"),
    "triton": ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success",
               "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
               "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
               "nv_inference_compute_output_duration_us"),
}


def server_counters(server, model: str, backend: str) -> dict[str, float] | None:
    """The backend's counters for ``model`` so far, from the server's Prometheus metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    totals = {}
    for name in COUNTERS[backend]:
        pattern = re.compile(rf'^{name}\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} ([0-9.e+]+)$', re.M)
        totals[name] = sum(float(v) for v in pattern.findall(text))
    return totals


def server_side(before: dict | None, after: dict | None, backend: str) -> dict:
    """What the server's counters say of a level: items per engine run, and on Triton where a
    request's time went inside the server (per successful request, in microseconds: Triton
    counts a batch's compute time once for each request in it)."""
    if not before or not after:
        return {"engine_batch_mean": None}
    d = {k: after[k] - before[k] for k in after}
    items, runs = d[COUNTERS[backend][0]], d[COUNTERS[backend][1]]
    out = {"engine_batch_mean": round(items / runs, 2) if runs > 0 else None}
    done = d.get("nv_inference_request_success", 0)
    if backend == "triton" and done > 0:
        out["server_us"] = {k: round(d[f"nv_inference_{k}_duration_us"] / done, 1)
                            for k in ("request", "queue", "compute_input", "compute_infer", "compute_output")}
    return out


# ----------------------------------------------------------------------------- results
def write_results(path: Path, header: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**header, "rows": rows}, indent=1) + "\n")
    os.replace(tmp, path)


# the fields that make two rows different set-ups, rather than two concurrency levels of one
SETUP = ("model", "batch", "backend", "protocol", "shared_memory", "instances", "dynamic_batching", "max_queue_delay_us",
         "client_processes")


def setup_of(row: dict, without: tuple[str, ...] = ()) -> tuple:
    return tuple(row.get(f) for f in SETUP if f not in without)


def row_key(row: dict) -> tuple:
    return (row["kind"], *setup_of(row), row.get("concurrency"))


def add_ratios(rows: list[dict]) -> None:
    def same_level(r):          # the same set-up and level, batching or not
        return (*setup_of(r, without=("dynamic_batching", "max_queue_delay_us")), r["concurrency"])

    plain = {same_level(r): r["throughput_rps"] for r in rows if r["kind"] == "load" and not r["dynamic_batching"]}
    engine = {(r["model"], r["batch"]): r["items_per_s"] for r in rows if r["kind"] == "engine"}
    for r in rows:
        if r["kind"] != "load":
            continue
        base = plain.get(same_level(r))
        r["vs_no_batching"] = round(r["throughput_rps"] / base, 3) if base else None
        best = max((v for (m, _), v in engine.items() if m == r["model"]), default=None)
        r["vs_engine"] = round(r["items_per_s"] / best, 3) if best else None


def chart(path: Path) -> Path:
    """Throughput and p50/p99 latency by concurrency, one line per backend, protocol and batching."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    rows = [r for r in data["rows"] if r["kind"] == "load"]
    series: dict[tuple, list[dict]] = {}
    for r in rows:
        series.setdefault(setup_of(r), []).append(r)
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, rs in sorted(series.items(), key=lambda kv: str(kv[0])):
        r0 = rs[0]
        rs = sorted(rs, key=lambda r: r["concurrency"])
        c = [r["concurrency"] for r in rs]
        batching = r0["dynamic_batching"]
        parts = [f"{r0['backend']} {r0['protocol']}", f"{r0.get('instances')} inst."]
        if r0.get("client_processes"):
            parts.append(f"{r0['client_processes']} client procs")
        if r0.get("shared_memory"):
            parts.append("inputs in shared memory")
        parts.append(f"batching ({r0['max_queue_delay_us']} us)" if batching and r0.get("max_queue_delay_us")
                     else "batching" if batching else "no batching")
        label = ", ".join(parts)
        style = "-" if batching else "--"
        line, = ax_t.plot(c, [r["items_per_s"] for r in rs], style, marker="o", label=label)
        ax_l.plot(c, [r["p99_ms"] for r in rs], style, marker="o", color=line.get_color(), label=f"{label}, p99")
        ax_l.plot(c, [r["p50_ms"] for r in rs], style, marker=".", color=line.get_color(), alpha=0.45)
    for r in data["rows"]:
        if r["kind"] == "engine":
            ax_t.axhline(r["items_per_s"], color="grey", lw=1, ls=":", label=f"engine alone, batch {r['batch']}")
    from matplotlib.ticker import FuncFormatter

    levels = sorted({r["concurrency"] for r in rows})
    for ax in (ax_t, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3)
    ax_t.set_ylabel("items / s")
    ax_l.set_ylabel("latency, ms (p99 large marker, p50 small)")
    ax_l.set_yscale("log")
    ax_t.legend(fontsize=7)
    ax_l.legend(fontsize=7)
    models = sorted({r["model"] for r in rows})
    fig.suptitle(f"kilnrt serve, {', '.join(models)} on {data['gpu']} ({data['date']})"
                 + ("; CPU: the mechanism, not the speed" if data["gpu"] == "cpu" else ""), fontsize=10)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def header(args, device_name: str) -> dict:
    import torch

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from benchmarks.measure import code_commit

    commit = code_commit()   # KILNRT_COMMIT where the caller knows it better (the GPU machine's copy lags)
    return {"date": args.date, "gpu": device_name, "torch": torch.__version__, "triton": triton_version,
            "kilnrt_commit": commit, "set": "serve-load",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "notes": args.notes}


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DIGITS), help="ONNX file, plan, or 'resnet50' (default: digits.onnx)")
    p.add_argument("--name", help="the served model's name (default: the file's stem)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--backend", choices=("auto", "triton", "kserve"), default="auto")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    p.add_argument("--batching", choices=("both", "on", "off"), default="both",
                   help="dynamic batching on, off, or both (default)")
    p.add_argument("--batch", type=int, default=1, help="items per request (default 1)")
    p.add_argument("--max-batch", type=int, default=64, help="largest engine batch (default 64)")
    p.add_argument("--preferred-batch-sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    p.add_argument("--max-queue-delay-us", type=int, default=500)
    p.add_argument("--instances", type=int, default=2, help="execution contexts per model (default 2)")
    p.add_argument("--seconds", type=float, default=4.0, help="measured window per level (default 4)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before it (default 1)")
    p.add_argument("--client-processes", type=int, default=1, help="processes the clients are spread over")
    p.add_argument("--shared-memory", choices=("none", "system"), default="none",
                   help="system: inputs in a system shared-memory region registered with Triton, not in the "
                        "requests (clients on the server's machine; Triton only)")
    p.add_argument("--check-clients", type=int, default=0, help="the correctness check: this many clients ...")
    p.add_argument("--check-requests", type=int, default=1000, help="... each sending this many requests")
    p.add_argument("--no-load", action="store_true", help="skip the concurrency sweep")
    p.add_argument("--engine-baseline", action="store_true", help="also time the engine alone at max batch")
    p.add_argument("--timing-cache-dir", default=str(Path.home() / ".cache" / "kilnrt" / "serve"))
    p.add_argument("--out", help="results JSON (default benchmarks/results/<date>-<device>-serve-load.json)")
    p.add_argument("--resume", action="store_true", help="keep rows already in --out and skip them")
    p.add_argument("--date", default=datetime.date.today().isoformat())
    p.add_argument("--notes", default="")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chart-only", metavar="JSON", help="only draw the chart of a results file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.chart_only:
        print(chart(Path(args.chart_only)))
        return 0
    from kilnrt.serve.launch import running_server
    from kilnrt.serve.server import choose_backend

    backend, why = choose_backend(args.backend)
    print(f"server: {backend} ({why})", flush=True)
    shared_memory = None if args.shared_memory == "none" else args.shared_memory
    if shared_memory and backend != "triton":
        raise SystemExit(f"--shared-memory {shared_memory}: only Triton has the shared-memory extension "
                         f"(the server here is {backend})")
    device_name = "cpu"
    if args.device == "cuda":
        import torch
        device_name = torch.cuda.get_device_name().replace(" ", "_")
    out = Path(args.out) if args.out else RESULTS / f"{args.date}-{device_name}-serve-load.json"
    rows: list[dict] = json.loads(out.read_text())["rows"] if args.resume and out.exists() else []
    done = {row_key(r) for r in rows}
    head = header(args, device_name)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    print(f"seed {seed}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="kilnrt-serve-load-"))
    plan, engine, name = build_plan(args, folder)
    pool, refs = request_pool(engine, args.batch, seed, args.precision)
    tol = TOLERANCE[args.precision]
    profile = engine.profiles[0][next(t.name for t in engine.io if t.mode == "input")] if engine.profiles else None
    base = {"model": name, "family": "serve", "batch": args.batch, "seq": None, "precision": args.precision,
            "profile": {"min": list(profile[0]), "opt": list(profile[1]), "max": list(profile[2])} if profile else None,
            "backend": backend, "device": args.device, "instances": args.instances, "shared_memory": shared_memory,
            "max_queue_delay_us": args.max_queue_delay_us, "client_processes": max(1, args.client_processes)}

    def record(row: dict) -> None:
        rows.append(row)
        add_ratios(rows)
        write_results(out, head, rows)

    if args.engine_baseline:
        eng_batch = args.max_batch
        row = {**base, "kind": "engine", "batch": eng_batch, "backend": None, "protocol": None, "shared_memory": None,
               "dynamic_batching": None, "concurrency": None, "instances": 1, "max_queue_delay_us": None,
               "client_processes": None,
               "notes": "engine.run on host numpy arrays, back to back, in one thread, no server"}
        if row_key(row) not in done:
            row.update(engine_baseline(engine, eng_batch, pool, args.seconds))
            print(f"engine alone, batch {eng_batch}: {row['items_per_s']:.0f} items/s", flush=True)
            record(row)
    del engine
    if args.device == "cuda":
        import torch
        torch.cuda.empty_cache()

    protocols = [p for p in args.protocols.split(",") if p]
    levels = [int(c) for c in args.concurrency.split(",") if c]
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.batching]
    if args.no_load:
        modes = (True,) if args.check_clients else ()
    processes = max(1, args.client_processes)
    token = secrets.token_urlsafe(16) if shared_memory else None
    # spawned, not forked: a fork would inherit this process's CUDA state (the engine ran here), and its
    # captured graphs would be torn down at the children's exit against a CUDA they cannot use
    executor = (ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_init_worker, initargs=(pool, refs, tol, token))
                if processes > 1 else None)
    _init_worker(pool, refs, tol, token)
    serve_args = ["--model", f"{name}={plan}", "--backend", backend, "--instances", str(args.instances),
                  "--max-queue-delay-us", str(args.max_queue_delay_us), "--device", args.device,
                  "--max-batch", str(args.max_batch)]
    env = {"KILNRT_SERVE_ACCESS_TOKEN": token} if token else None
    if args.preferred_batch_sizes:
        serve_args += ["--preferred-batch-sizes", ",".join(map(str, args.preferred_batch_sizes))]
    try:
        with contextlib.ExitStack() as stack:
            # both servers run at once and each level is measured on one right after the other, so
            # that a change in the machine's load between them is as small as it can be
            servers = {batching: stack.enter_context(running_server(
                serve_args + ([] if batching else ["--no-dynamic-batching"]), models=[name], timeout_s=600, env=env))
                for batching in modes}
            for protocol in protocols:
                for concurrency in (levels if not args.no_load else []):
                    for batching, server in servers.items():
                        row = {**base, "kind": "load", "protocol": protocol, "dynamic_batching": batching,
                               "concurrency": concurrency}
                        if row_key(row) in done:
                            continue
                        url = server.http_url if protocol == "http" else server.grpc_url
                        before = server_counters(server, name, backend)
                        row.update(run_level(executor, processes, protocol, url, name, concurrency,
                                             args.warmup, args.seconds, shared_memory=shared_memory))
                        after = server_counters(server, name, backend)
                        row["items_per_s"] = round(row["throughput_rps"] * args.batch, 1)
                        row.update(server_side(before, after, backend))
                        record(row)
                        print(f"{protocol:4} batching {'on ' if batching else 'off'} c={concurrency:3}: "
                              f"{row['throughput_rps']:8.1f} req/s  p50 {row['p50_ms']} p90 {row['p90_ms']} "
                              f"p99 {row['p99_ms']} ms  batch {row['engine_batch_mean']}  errors {row['errors']} "
                              f"wrong {row['wrong']}" + (f"  server us {row['server_us']}" if "server_us" in row
                                                         else ""), flush=True)
                if args.check_clients:
                    batching, server = next(iter(servers.items()))
                    row = {**base, "kind": "check", "protocol": protocol, "dynamic_batching": batching,
                           "concurrency": args.check_clients}
                    if row_key(row) in done:
                        continue
                    url = server.http_url if protocol == "http" else server.grpc_url
                    row.update(run_level(executor, processes, protocol, url, name, args.check_clients, 0.0, 0.0,
                                         count=args.check_requests, shared_memory=shared_memory))
                    row["items_per_s"] = round(row["throughput_rps"] * args.batch, 1)
                    row["notes"] = (f"{args.check_clients} clients x {args.check_requests} requests, every "
                                    f"answer compared with engine.run's (relative L2 error < {tol})")
                    record(row)
                    print(f"check {protocol}: {row['requests']} requests in {row['seconds']} s, errors "
                          f"{row['errors']}, wrong {row['wrong']}", flush=True)
    finally:
        if executor is not None:
            executor.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"results: {out}")
    try:
        print(f"chart: {chart(out)}")
    except ImportError:
        print("no chart: matplotlib is not installed (pip install matplotlib; then --chart-only)")
    bad = sum(r.get("errors", 0) + r.get("wrong", 0) for r in rows if r["kind"] != "engine")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
