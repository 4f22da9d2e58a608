"""The GPU zoo: kilnrt against torch eager and torch.compile on models nobody tuned for.

    python benchmarks/zoo.py                                   # every model, batch 1 and throughput
    python benchmarks/zoo.py --models swin_t,gpt2 --batches 1
    python benchmarks/zoo.py --peers eager,default             # skip max-autotune (slow to compile)
    python benchmarks/zoo.py --out benchmarks/results/X.json --resume   # go on with a stopped run

The models are in ``benchmarks/zoo_models.py``.  For each (model, batch) row: the FP32 model's
output is the reference; the model is exported with PyTorch's default ONNX exporter (the
TorchScript one where that fails, recorded in ``exporter``); kilnrt builds it in FP16 with
the default options and is timed through the public call (``benchmarks/measure.py``); then
the peers at FP16, each replayed from a CUDA graph: eager (``channels_last`` for CNNs),
``torch.compile`` default mode, and ``max-autotune-no-cudagraphs``, with their compile times.

Writes the results JSON of BENCHMARKS.md after every row (and on SIGTERM, the row it was in,
marked with an ``error``); ``--resume`` skips the rows already measured in ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
warnings.filterwarnings("ignore")

import kilnrt  # noqa: E402
from kilnrt.builder.timing import time_cuda_graph  # noqa: E402
from measure import Stopped, kilnrt_times, rel_l2, stop_on_sigterm  # noqa: E402
from zoo_models import ZOO  # noqa: E402

RESULTS = os.path.join(HERE, "results")
PEERS = ("eager", "default", "max")


def first_output(out):
    if isinstance(out, dict):
        out = list(out.values())
    return out[0] if isinstance(out, (tuple, list)) else out


def export_onnx(model: torch.nn.Module, inputs: dict[str, torch.Tensor], path: str) -> str:
    """Export with PyTorch's default exporter; the TorchScript exporter (opset 17) where it fails.
    Returns which one wrote the file."""
    args = tuple(inputs.values())
    names = list(inputs)
    try:
        torch.onnx.export(model, args, path, input_names=names, dynamo=True, optimize=True, verbose=False)
        return "dynamo"
    except Exception as exc:  # noqa: BLE001 - recorded; the older exporter gets its chance
        print(f"  dynamo export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
              "TorchScript exporter", flush=True)
    torch.onnx.export(model, args, path, input_names=names, opset_version=17, dynamo=False,
                      do_constant_folding=True)
    return "torchscript"


def peer_inputs(inputs: dict[str, torch.Tensor], cnn: bool) -> tuple:
    out = []
    for v in inputs.values():
        if v.is_floating_point():
            v = v.half()
            if cnn and v.dim() == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out.append(v)
    return tuple(out)


def bench_row(row: dict, name: str, batch: int, peers: tuple[str, ...], iters: int, cache: str, log) -> None:
    entry = ZOO[name]
    row.update(family=entry.family, seq=entry.seq, precision="fp16", profile="static",
               gpu=torch.cuda.get_device_name(), torch=torch.__version__)
    model32, inputs = entry.make(batch)
    with torch.no_grad():
        ref = first_output(model32(*inputs.values())).float()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{name}.onnx")
        t0 = time.perf_counter()
        with torch.no_grad():
            row["exporter"] = export_onnx(model32, inputs, path)
        row["export_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        engine = kilnrt.build(path, device="cuda", fp16=True, timing_cache=cache)
        row["build_s"] = round(time.perf_counter() - t0, 2)
    row["engine_layers"] = len(engine.layers)
    feeds = {k: inputs[k].contiguous() for k in engine.input_names}
    out = engine.run(feeds)
    row["relerr"] = rel_l2(out[engine.output_names[0]].float(), ref)
    row.update(kilnrt_times(engine, feeds, iters))
    log(f"  kilnrt {row['kilnrt_ms']:.3f} ms (run {row['kilnrt_run_ms']:.3f}, graph {row['kilnrt_graph_ms']:.3f}, "
        f"host {row['host_us']:.0f} us), relerr {row['relerr']:.1e}, build {row['build_s']} s")
    del engine
    torch.cuda.empty_cache()

    model = model32.half()
    if entry.cnn:
        model = model.to(memory_format=torch.channels_last)
    args = peer_inputs(inputs, entry.cnn)
    with torch.no_grad():
        row["eager_relerr"] = rel_l2(first_output(model(*args)).float(), ref)
        # FP16's bar: 1e-2, or no worse than eager FP16's own error (random weights can amplify rounding)
        row["correct"] = row["relerr"] < 1e-2 or row["relerr"] <= 1.5 * row["eager_relerr"]
        if "eager" in peers:
            row["torch_eager_ms"] = round(time_cuda_graph(lambda: model(*args), iters, warmup=10), 4)
            log(f"  eager {row['torch_eager_ms']:.3f} ms")
        for peer, mode, key in (("default", "default", "torch_compile_default_ms"),
                                ("max", "max-autotune-no-cudagraphs", "torch_compile_ms")):
            if peer not in peers:
                continue
            torch._dynamo.reset()
            compiled = torch.compile(model, mode=mode)
            t0 = time.perf_counter()
            compiled(*args)
            torch.cuda.synchronize()
            row[key.replace("_ms", "_s")] = round(time.perf_counter() - t0, 1)
            row[key] = round(time_cuda_graph(lambda: compiled(*args), iters, warmup=10), 4)
            log(f"  torch.compile {mode}: {row[key]:.3f} ms (compile {row[key.replace('_ms', '_s')]} s)")
    row["compile_s"] = row.get("torch_compile_s")
    for key, peer in (("speedup_vs_eager", "torch_eager_ms"), ("speedup_vs_compile", "torch_compile_ms"),
                      ("speedup_vs_compile_default", "torch_compile_default_ms")):
        if row.get(peer):
            row[key] = round(row[peer] / row["kilnrt_ms"], 3)
    model = model32 = None  # noqa: F841 - frees the GPU memory before the next row
    torch.cuda.empty_cache()


def load_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f).get("rows", [])


def write_results(path: str, rows: list[dict]) -> None:
    import triton

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip() or None
    doc = {"date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": triton.__version__, "kilnrt_commit": commit, "set": "zoo", "rows": rows}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(path + ".tmp", path)


def print_table(rows: list[dict]) -> None:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    print(f"{'model':20} {'batch':>5} {'eager':>8} {'default':>8} {'max-at':>8} {'kilnrt':>8} {'run':>8} "
          f"{'host us':>7} {'vs max':>6} {'relerr':>8} {'build s':>7}")
    for r in rows:
        if "kilnrt_ms" not in r:
            print(f"{r['model']:20} {r['batch']:>5} ERROR {r.get('error', '')[:90]}")
            continue
        print(f"{r['model']:20} {r['batch']:>5} {fmt(r.get('torch_eager_ms'), '8.3f')} "
              f"{fmt(r.get('torch_compile_default_ms'), '8.3f')} {fmt(r.get('torch_compile_ms'), '8.3f')} "
              f"{r['kilnrt_ms']:8.3f} {fmt(r.get('kilnrt_run_ms'), '8.3f')} {fmt(r.get('host_us'), '7.0f')} "
              f"{fmt(r.get('speedup_vs_compile'), '6.2f')} {r['relerr']:8.1e} {r['build_s']:7.1f}"
              + (f"  ({r['error'][:60]})" if "error" in r else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(ZOO), help="comma list of: " + ", ".join(ZOO))
    p.add_argument("--batches", default="both", choices=["1", "throughput", "both"])
    p.add_argument("--peers", default=",".join(PEERS), help="comma list of: " + ", ".join(PEERS))
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true", help="skip the rows --out already holds without an error")
    p.add_argument("--timing-cache", default=os.path.join(tempfile.gettempdir(), "kilnrt-zoo.timing"))
    args = p.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        p.error(f"unknown model(s) {unknown}; the zoo has: {', '.join(ZOO)}")
    peers = tuple(x for x in args.peers.split(",") if x)
    if set(peers) - set(PEERS):
        p.error(f"--peers takes {', '.join(PEERS)}")
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    out = args.out or os.path.join(RESULTS, f"{datetime.date.today().isoformat()}-{gpu}-zoo.json")
    rows = load_rows(out) if args.resume else []
    done = {(r["model"], r["batch"]) for r in rows if "error" not in r}
    rows = [r for r in rows if "error" not in r]
    log = lambda m: print(m, flush=True)  # noqa: E731
    previous = stop_on_sigterm()
    stopped = False
    try:
        for name in names:
            entry = ZOO[name]
            batches = {"1": entry.batches[:1], "throughput": entry.batches[1:], "both": entry.batches}[args.batches]
            for batch in batches:
                if stopped or (name, batch) in done:
                    continue
                row = {"model": name, "batch": batch}
                rows.append(row)
                log(f"{name} batch {batch}")
                try:
                    bench_row(row, name, batch, peers, args.iters, args.timing_cache, log)
                except Stopped as exc:
                    row["error"] = f"{exc} before this row finished"
                    stopped = True
                except Exception as exc:  # noqa: BLE001 - report it and go on with the other rows
                    traceback.print_exc()
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                torch.cuda.empty_cache()
                write_results(out, rows)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"\nresults: {out}\n")
    print_table(rows)
    return 124 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
