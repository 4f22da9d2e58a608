"""Many execution contexts on many streams at once, every output checked.

    python benchmarks/stress.py                           # 64 contexts, 8 streams, 100,000 runs
    python benchmarks/stress.py --runs 2000 --device cpu  # a quick check of the script itself

One engine (the bundled digits CNN, or ``--onnx`` with a dynamic first dim) is built with a
batch profile.  A set of cases (inputs of several batch sizes, fresh random values) gets its
reference outputs from one context, one run at a time.  Then ``--threads`` threads share
``--contexts`` contexts, each thread with a stream of its own; each run picks a context and a
case, binds the case's input and the context's output buffer, and calls ``execute_async_v3``
on the thread's stream (every fourth run goes through ``context.run`` instead; ``--calls``
runs only one of the two).  The output is compared with the case's reference on that stream,
and the comparison is counted there, so nothing waits for it.  The counts are read once at
the end.

A wrong output is one whose largest difference from the reference is above ``--atol`` plus
``--rtol`` times the reference's largest magnitude.  The same kernels at the same shape
should give identical bits, so ``identical`` counts those too.  The bar (issue: reliability):
0 wrong outputs and 0 exceptions; a run that raises is counted and its thread goes on.
``worst_abs_diff`` says how far the worst output was off (``worst_is_nan``: an output had
NaN where the reference had none).  Writes one JSON
(BENCHMARKS.md's results format).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import threading
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import kilnrt  # noqa: E402
from measure import results_header  # noqa: E402

DIGITS = os.path.join(ROOT, "examples", "digits.onnx")


def make_cases(engine, batches: list[int], per_batch: int, device: str, seed: int) -> list[dict]:
    """Inputs of each batch size, random values from ``seed``, on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    name = engine.input_names[0]
    tail = tuple(engine.get_tensor_shape(name))[1:]
    cases = []
    for b in batches:
        for _ in range(per_batch):
            x = torch.randn((b, *tail), generator=gen).to(device)
            cases.append({"batch": b, "feeds": {name: x}})
    return cases


def reference(engine, cases: list[dict]) -> None:
    """Each case's outputs from one context, one run at a time (the single-threaded reference)."""
    ctx = engine.create_execution_context()
    for case in cases:
        out = ctx.run(case["feeds"])
        case["ref"] = {k: v.clone() for k, v in out.items()}
        case["scale"] = {k: float(v.abs().max()) for k, v in out.items()}


def worker(engine, contexts: list, cases: list[dict], runs: int, stream, tolerance: tuple[float, float],
           seed: int, counters: dict, errors: list, lock: threading.Lock, calls: str = "both") -> None:
    """``runs`` runs over ``contexts`` (this thread's), checked on ``stream`` without a wait."""
    rng = np.random.default_rng(seed)
    atol, rtol = tolerance
    out_name = engine.output_names[0]
    in_name = engine.input_names[0]
    device = cases[0]["feeds"][in_name].device
    done = 0
    with torch.cuda.stream(stream) if stream is not None else _nothing():
        # made on this thread's stream, which every use below is ordered on
        wrong = torch.zeros((), dtype=torch.int64, device=device)
        identical = torch.zeros((), dtype=torch.int64, device=device)
        worst = torch.zeros((), dtype=torch.float64, device=device)   # largest difference from the reference
        buffers = [torch.empty_like(max(cases, key=lambda c: c["batch"])["ref"][out_name]) for _ in contexts]
        for r in range(runs):
            k = int(rng.integers(len(contexts)))
            ctx, case = contexts[k], cases[int(rng.integers(len(cases)))]
            ref = case["ref"][out_name]
            try:
                if calls == "run" or (calls == "both" and r % 4 == 3):
                    got = ctx.run(case["feeds"])[out_name]
                else:
                    x = case["feeds"][in_name]
                    got = buffers[k][: case["batch"]]
                    ctx.set_input_shape(in_name, tuple(x.shape))
                    ctx.set_tensor_address(in_name, x)
                    ctx.set_tensor_address(out_name, got)
                    ctx.execute_async_v3(stream.cuda_stream if stream is not None else 0)
            except Exception as exc:  # noqa: BLE001 - counted and reported: the bar is none
                with lock:
                    errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                continue
            diff = (got.float() - ref.float()).abs().max()
            bound = atol + rtol * case["scale"][out_name]
            wrong += ~(diff <= bound)   # a NaN output is wrong too
            identical += diff == 0
            worst = torch.maximum(worst, diff.double())   # NaN stays NaN
            done += 1
    if stream is not None:
        stream.synchronize()
    with lock:
        counters["runs"] += done
        counters["wrong"] += int(wrong)
        counters["identical"] += int(identical)
        w = float(worst)
        counters["worst"] = math.nan if math.isnan(w) or math.isnan(counters["worst"]) else max(counters["worst"], w)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--onnx", default=DIGITS, help="a model whose first input has a dynamic first dim")
    p.add_argument("--contexts", type=int, default=64)
    p.add_argument("--threads", type=int, default=8, help="threads, each with a stream of its own")
    p.add_argument("--runs", type=int, default=100_000, help="runs in all")
    p.add_argument("--batches", default="1,3,8,17,32")
    p.add_argument("--cases-per-batch", type=int, default=4)
    p.add_argument("--calls", choices=("both", "v3", "run"), default="both",
                   help="execute_async_v3 with every fourth run through context.run (both), or only one")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=2112)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    network = kilnrt.to_network(args.onnx)
    name = network.inputs[0].name
    tail = tuple(network.inputs[0].shape)[1:]
    profile = {name: [(min(batches), *tail), (max(batches), *tail), (max(batches), *tail)]}
    t0 = time.perf_counter()
    engine = kilnrt.build(args.onnx, device=args.device, fp16=args.fp16, profiles=profile)
    build_s = time.perf_counter() - t0
    cases = make_cases(engine, batches, args.cases_per_batch, args.device, args.seed)
    reference(engine, cases)
    cpu = kilnrt.build(args.onnx, device="cpu")   # the reference itself, against the CPU backend
    ref_err = max(float((case["ref"][engine.output_names[0]].double().cpu()
                         - torch.as_tensor(cpu.run({name: case["feeds"][name].cpu().numpy()})[engine.output_names[0]])
                         .double()).abs().max()) for case in cases)
    contexts = [engine.create_execution_context() for _ in range(args.contexts)]
    streams = [torch.cuda.Stream() if args.device == "cuda" else None for _ in range(args.threads)]
    counters, errors, lock = {"runs": 0, "wrong": 0, "identical": 0, "worst": 0.0}, [], threading.Lock()
    per_thread = [contexts[i::args.threads] for i in range(args.threads)]
    threads = [threading.Thread(target=worker, args=(engine, per_thread[i], cases, args.runs // args.threads,
                                                     streams[i], (args.atol, args.rtol), args.seed + 1 + i,
                                                     counters, errors, lock, args.calls))
               for i in range(args.threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    captures = sum((c.graph_stats.captures if c.graph_stats else 0) for c in contexts)
    row = {"model": os.path.basename(args.onnx), "precision": "fp16" if args.fp16 else "fp32",
           "profile": {"min": min(batches), "opt": max(batches), "max": max(batches)}, "batches": batches,
           "contexts": args.contexts, "threads": args.threads, "streams": args.threads if args.device == "cuda" else 0,
           "calls": args.calls, "runs": counters["runs"], "wrong": counters["wrong"],
           "identical": counters["identical"],
           "worst_abs_diff": None if math.isnan(counters["worst"]) else counters["worst"],
           "worst_is_nan": math.isnan(counters["worst"]), "atol": args.atol, "rtol": args.rtol,
           "exceptions": len(errors), "first_exceptions": errors[:5], "seconds": round(seconds, 2),
           "runs_per_s": round(counters["runs"] / seconds, 1), "graph_captures": captures,
           "build_s": round(build_s, 2), "reference_vs_cpu_max_abs": ref_err,
           "peak_gpu_bytes": torch.cuda.max_memory_allocated() if args.device == "cuda" else None}
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    out = args.out or os.path.join(HERE, "results", f"{datetime.date.today().isoformat()}-"
                                                    f"{gpu.replace(' ', '_')}-stress.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump({**results_header("stress", gpu), "rows": [row]}, f, indent=1)
    print(json.dumps(row, indent=1))
    ok = row["wrong"] == 0 and not errors and row["runs"] == args.runs // args.threads * args.threads
    print(f"{'PASSED' if ok else 'FAILED'}: {row['runs']} runs on {args.contexts} contexts and {args.threads} "
          f"threads, {row['wrong']} wrong, {len(errors)} exceptions, {seconds:.1f} s; results: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
