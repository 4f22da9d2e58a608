"""Per-layer profile of a kilnrt engine on the GPU: where the time goes.

    python benchmarks/layer_profile.py resnet50 --batch 256
    python benchmarks/layer_profile.py bert --batch 32

Prints the time per layer kind and tactic, and the slowest layers (each layer timed with
a device sync around it, so the total is higher than a CUDA-graph replay).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kilnrt  # noqa: E402
from run import export_onnx, make_model  # noqa: E402


class Profiler:
    def __init__(self) -> None:
        self.times: dict[str, list[float]] = collections.defaultdict(list)

    def report_layer_time(self, name: str, ms: float) -> None:
        self.times[name].append(ms)


def layer_medians(engine, feeds, runs: int = 5) -> dict[str, float]:
    """Each layer's median ms over ``runs`` profiled runs (a device sync around each layer)."""
    ctx = engine.create_execution_context()
    prof = Profiler()
    ctx.profiler = prof
    for _ in range(runs):
        ctx.run(feeds)
    return {n: sorted(v)[len(v) // 2] for n, v in prof.times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--fp32", action="store_true")
    args = p.parse_args(argv)
    model, inputs, is_cnn = make_model(args.model, args.batch, args.seq)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        export_onnx(model.cpu(), {k: v.cpu() for k, v in inputs.items()}, is_cnn, path)
        engine = kilnrt.build(path, device="cuda", fp16=not args.fp32)
    feeds = {k: v for k, v in inputs.items() if k in engine.input_names}
    by_layer = layer_medians(engine, feeds)
    kinds: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    for l in engine.layers:
        key = f"{l.kind.value:16} {l.tactic}"
        kinds[key] += by_layer.get(l.name, 0.0)
        counts[key] += 1
    total = sum(by_layer.values())
    print(f"{args.model} batch {args.batch}: {len(engine.layers)} layers, {total:.3f} ms with per-layer syncs")
    for key, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {key:60} {counts[key]:4d} layers {ms:9.3f} ms {100 * ms / total:5.1f}%")
    print("slowest layers:")
    shapes = engine.tensors
    for name, ms in sorted(by_layer.items(), key=lambda kv: -kv[1])[: args.top]:
        layer = next(l for l in engine.layers if l.name == name)
        ins = [shapes.get(n, {}).get("opt_shape") if n else None for n in layer.inputs[:2]]
        print(f"  {ms:8.3f} ms {layer.kind.value:14} {layer.tactic:34} {name[:50]} {ins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
