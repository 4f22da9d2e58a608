"""GPU kernels of kilnrt and of torch.compile for one model, side by side.

    python benchmarks/kernel_trace.py bert --batch 1
    python benchmarks/kernel_trace.py vit_b_16 --batch 64 --no-compile

Runs each forward pass once outside a CUDA graph under ``torch.profiler`` and lists its
GPU kernels: how many, their summed device time, and the largest by total time.  The
difference between the summed kernel time and the CUDA-graph replay time is what gaps
between kernels cost; the kernel lists show where one side beats the other.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kilnrt  # noqa: E402
from run import export_onnx, forward, make_model, make_peer, time_graph  # noqa: E402


def kernels(fn) -> list[tuple[str, float]]:
    """(name, device ms) of every GPU kernel that one call of ``fn`` launches."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out.append((e.name, e.device_time_total / 1e3))
    return out


def summarize(label: str, ks: list[tuple[str, float]], replay_ms: float, top: int) -> None:
    total = sum(ms for _, ms in ks)
    print(f"\n== {label}: {len(ks)} kernels, {total:.3f} ms summed, {replay_ms:.3f} ms graph replay "
          f"({replay_ms - total:+.3f} ms gaps)")
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for n, ms in ks:
        by_name[n[:90]].append(ms)
    for n, v in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"  {sum(v):8.3f} ms {len(v):4d}x {sum(v) / len(v) * 1e3:8.1f} us  {n}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    model32, inputs, is_cnn = make_model(args.model, args.batch, args.seq)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        export_onnx(model32.cpu(), {k: v.cpu() for k, v in inputs.items()}, is_cnn, path)
        model32.cuda()
        t0 = time.perf_counter()
        engine = kilnrt.build(path, device="cuda", fp16=True)
        build_s = time.perf_counter() - t0
    feeds = {k: v.contiguous() for k, v in inputs.items() if k in engine.input_names}
    program = engine.program
    print(f"{args.model} batch {args.batch}: {len(engine.layers)} engine layers, built in {build_s:.1f} s")
    for l in engine.layers[:40]:
        print(f"   {l.kind.value:18} {l.tactic:40} {l.name[:60]}")
    summarize("kilnrt", kernels(lambda: program.execute(feeds)), time_graph(lambda: program.execute(feeds)), args.top)
    if args.no_compile:
        return 0
    model, inputs_p = make_peer(args.model, args.batch, args.seq, torch.float16, model32, inputs)
    with torch.no_grad():
        compiled = torch.compile(model, mode="max-autotune-no-cudagraphs")
        fn = lambda: forward(compiled, inputs_p, is_cnn)  # noqa: E731
        fn()
        summarize("torch.compile max-autotune", kernels(fn), time_graph(fn), args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
