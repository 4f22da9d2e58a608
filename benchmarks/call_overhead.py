"""The cost of kilnrt's public calls: GPU and host time per call, against the outer graph.

    python benchmarks/call_overhead.py                 # ResNet-50 and BERT-base at batch 1
    python benchmarks/call_overhead.py --models resnet50

For each model: ``execute_async_v3`` on buffers bound once (GPU ms per call between CUDA
events; host us per call without a sync), ``engine.run`` with device tensors (the same two),
and the program replayed inside an outer CUDA graph (the lower bound).  Bars (issue: call
overhead): host time <= 15 us per execute_async_v3, <= 30 us per engine.run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
warnings.filterwarnings("ignore")

import kilnrt  # noqa: E402
from measure import kilnrt_times, results_header  # noqa: E402
from run import export_onnx, make_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,bert")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--out", default=None)
    p.add_argument("--host-profile", action="store_true",
                   help="also print where engine.run's host time goes (cProfile of 2000 calls)")
    args = p.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        model, inputs, is_cnn = make_model(name, 1, 128)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{name}.onnx")
            export_onnx(model.cpu(), {k: v.cpu() for k, v in inputs.items()}, is_cnn, path)
            engine = kilnrt.build(path, device="cuda", fp16=True)
        feeds = {k: v for k, v in inputs.items() if k in engine.input_names}
        row = {"model": name, "batch": 1, "seq": None if is_cnn else 128, "precision": "fp16", "profile": "static"}
        row.update(kilnrt_times(engine, feeds, args.iters))
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.host_profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            for _ in range(2000):
                engine.run(feeds)
            prof.disable()
            torch.cuda.synchronize()
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    gpu = torch.cuda.get_device_name()
    out = args.out or os.path.join(HERE, "results", f"{datetime.date.today().isoformat()}-{gpu.replace(' ', '_')}"
                                                     "-call-overhead.json")
    with open(out, "w") as f:
        json.dump({**results_header("call overhead", gpu), "rows": rows}, f, indent=1)
    print(f"{'model':10} {'execute_async_v3 ms':>20} {'host us':>8} {'engine.run ms':>14} {'host us':>8} "
          f"{'outer graph ms':>15}")
    for r in rows:
        print(f"{r['model']:10} {r['kilnrt_ms']:20.4f} {r['host_us']:8.1f} {r['kilnrt_run_ms']:14.4f} "
              f"{r['run_host_us']:8.1f} {r['kilnrt_graph_ms']:15.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
