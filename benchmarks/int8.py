"""INT8 and FP8 against FP16, same ONNX file, same GPU, same run: BERT-base at 32x128 or ResNet-50
at batch 256 (and any shape given), calibrated on random batches (random weights, so accuracy
here is the output error against the FP32 PyTorch model, not a task metric).

    python benchmarks/int8.py --model bert --layers 12 --shape 32x128 --precisions fp16,int8,fp8
    python benchmarks/int8.py --model resnet50 --shape 256

Times ``engine.run`` on device tensors (CUDA events, median of ``--iters``), and lists the
tactics the INT8 engine chose for its INT8 layers.  Writes one JSON in BENCHMARKS.md's results
format.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import warnings
from collections import Counter

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

import kilnrt  # noqa: E402
from dynamic import event_median_ms, export, make_inputs, make_model  # noqa: E402
from measure import results_header  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timed(engine, feeds, iters: int) -> float:
    for _ in range(5):
        engine.run(feeds)
    torch.cuda.synchronize()
    return event_median_ms(lambda: engine.run(feeds), iters)


def layer_times(engine, feeds) -> dict[str, float]:
    """Median ms per (layer kind, tactic), summed over layers; printed, largest first."""
    from layer_profile import layer_medians

    per_layer = layer_medians(engine, feeds)
    kinds: Counter = Counter()
    for layer in engine.layers:
        kinds[f"{layer.kind.value} {layer.tactic}"] += per_layer.get(layer.name, 0.0)
    for key, ms in kinds.most_common(12):
        print(f"    {key:70} {ms:8.3f} ms")
    return {k: round(v, 4) for k, v in kinds.most_common()}


def rel_l2(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("bert", "resnet50"), default="bert")
    ap.add_argument("--layers", type=int, default=12, help="BERT's layers")
    ap.add_argument("--shape", default=None, help="BATCHxSEQ for BERT (32x128), BATCH for ResNet-50 (256)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--precisions", default="fp16,int8", help="comma-separated: fp16, int8, fp8 (each +FP16)")
    ap.add_argument("--profile", action="store_true", help="also print each build's time per layer kind and tactic "
                                                           "(per-layer syncs: the total exceeds the run time)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    name = args.model
    shape = tuple(int(d) for d in (args.shape or {"bert": "32x128", "resnet50": "256"}[name]).split("x"))
    model = make_model(name, args.layers)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, f"{name}.onnx")
    export(name, model, path)
    feeds = make_inputs(name, shape)
    with torch.no_grad():
        ref = model.cuda()(*feeds.values())
    profile = {k: tuple(v.shape) for k, v in feeds.items()}
    g = torch.Generator().manual_seed(1)
    if name == "bert":
        calib = [{"input_ids": torch.randint(0, 30522, shape, generator=g).numpy(),
                  "attention_mask": torch.ones(shape, dtype=torch.int64).numpy()} for _ in range(3)]
        label = f"bert-{args.layers}l"
    else:
        calib = [{"x": torch.randn((shape[0], 3, 224, 224), generator=g).numpy()} for _ in range(2)]
        label = name
    rows = []
    modes = {"fp16": ("fp16", {}),
             "int8": ("int8+fp16", {"int8": True, "calibration": calib, "calibration_method": "minmax"}),
             "fp8": ("fp8+fp16", {"fp8": True, "calibration": calib})}
    for precision, kw in (modes[p] for p in args.precisions.split(",")):
        t0 = time.perf_counter()
        engine = kilnrt.build(path, device="cuda", fp16=True, profiles=profile, **kw)
        build_s = time.perf_counter() - t0
        out = engine.run(feeds)["y"]
        ms = timed(engine, feeds, args.iters)
        int8_tactics = Counter(l.tactic for l in engine.layers if l.precision is not None
                               and l.precision.name in ("INT8", "FP8"))
        row = {"model": label, "family": "transformer" if name == "bert" else "cnn", "batch": shape[0],
               "seq": shape[1] if len(shape) > 1 else None, "precision": precision, "build_s": round(build_s, 1),
               "kilnrt_run_ms": round(ms, 4), "items_per_s": round(shape[0] * 1000.0 / ms, 1),
               "relerr": rel_l2(out, ref), "engine_layers": len(engine.layers),
               "int8_tactics": dict(int8_tactics), "int8": engine.build_info.get("int8")}
        if args.profile:
            row["profile_ms"] = layer_times(engine, feeds)
        rows.append(row)
        print(f"{precision}: {ms:.4f} ms, relerr {row['relerr']:.3g}, build {build_s:.1f} s, int8 tactics {dict(int8_tactics)}",
              flush=True)
    base = next((r for r in rows if r["precision"] == "fp16"), None)
    for row in rows:
        if base is not None and row is not base:
            row["speedup_vs_fp16"] = round(base["kilnrt_run_ms"] / row["kilnrt_run_ms"], 3)
            print(f"{row['precision']} / fp16 speed-up: {row['speedup_vs_fp16']}x")
    stamp = datetime.date.today().isoformat()
    gpu = torch.cuda.get_device_name()
    out = args.out or os.path.join(RESULTS, f"{stamp}-{gpu.replace(' ', '_')}-int8-{name}.json")
    with open(out, "w") as f:
        json.dump({**results_header("int8", gpu, stamp), "rows": rows}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
