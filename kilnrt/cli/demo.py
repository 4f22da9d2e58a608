"""The README's first command: build the bundled digits CNN, check it, time it.

    kilnrt demo
    kilnrt demo --device cuda --iterations 50

Builds ``examples/digits.onnx`` (a small CNN trained on scikit-learn's 8x8 digits), runs
it on the held-out images in ``examples/digits_test.npz``, and prints accuracy, latency
and throughput next to ONNX Runtime's (when it is installed), the plan's path and the
build time.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from kilnrt.cli.args import console, engine_runner, latency_summary, time_runs
from kilnrt.errors import ErrorCode, KilnError

HELP = "build and run the bundled digits model, next to ONNX Runtime"


def examples_dir() -> Path:
    import kilnrt

    return Path(kilnrt.__file__).resolve().parents[1] / "examples"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="MODEL.onnx", help="default: examples/digits.onnx of the repository")
    p.add_argument("--data", metavar="DATA.npz", help="arrays images [N,1,8,8] and labels [N] "
                                                      "(default: digits_test.npz next to the model)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when a GPU is visible, else cpu")
    p.add_argument("--fp16", action="store_true", help="allow FP16 layers")
    p.add_argument("--iterations", type=int, default=20, metavar="N", help="timed runs per engine (default 20)")
    p.add_argument("-o", "--output", metavar="PLAN", help="where to save the plan (default: a temp folder)")


def _inputs(args: argparse.Namespace) -> tuple[Path, np.ndarray, np.ndarray]:
    model = Path(args.model) if args.model else examples_dir() / "digits.onnx"
    data = Path(args.data) if args.data else model.with_name("digits_test.npz")
    for path, what in ((model, "model"), (data, "test data")):
        if not path.is_file():
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"the demo's {what} {str(path)!r} was not found (kilnrt installed without its "
                            "repository's examples/ folder?); pass --model and --data")
    with np.load(data) as arrays:
        if "images" not in arrays or "labels" not in arrays:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{str(data)!r} needs arrays 'images' and 'labels'")
        images, labels = arrays["images"].astype(np.float32), arrays["labels"]
    return model, images, labels


def main(args: argparse.Namespace) -> int:
    import kilnrt
    from rich.table import Table

    out = console()
    model, images, labels = _inputs(args)
    n = len(images)
    input_name = kilnrt.to_network(str(model)).get_input(0).name
    plan = Path(args.output) if args.output else Path(tempfile.gettempdir()) / "kilnrt-demo" / "digits.plan"
    plan.parent.mkdir(parents=True, exist_ok=True)
    from kilnrt.device import resolve_device

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    with out.status(f"building {model.name} for {device}", spinner="dots"):
        engine = kilnrt.build(str(model), fp16=args.fp16, device=device,
                              profiles={input_name: ((1,) + images.shape[1:], images.shape, images.shape)})
    build_s = time.perf_counter() - t0
    engine.save(plan)
    engine = kilnrt.load(plan)
    feeds = {input_name: images}

    rows = []
    logits = next(iter(engine.run(feeds).values()))
    run, sync = engine_runner(engine, feeds)
    s = latency_summary(time_runs(run, iterations=args.iterations, warmup=3, sync=sync), n)
    rows.append((f"kilnrt ({device})", float((logits.argmax(1) == labels).mean()), s))
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        ref = session.run(None, feeds)[0]
        s = latency_summary(time_runs(lambda: session.run(None, feeds), iterations=args.iterations, warmup=3), n)
        rows.append(("ONNX Runtime (cpu)", float((ref.argmax(1) == labels).mean()), s))

    table = Table(title=f"digits: {n} held-out 8x8 images, batch {n}")
    for col in ("engine", "accuracy", "latency (median)", "latency (p90)", "throughput"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    for name, acc, s in rows:
        table.add_row(name, f"{acc:.2%}", f"{s['median_ms']:.3f} ms", f"{s['p90_ms']:.3f} ms",
                      f"{s['throughput_items_per_s']:,.0f} images/s")
    out.print(table)
    out.print(f"plan: {plan} ({plan.stat().st_size / 1024:.1f} KiB), built in {build_s:.2f} s")
    if ort is None:
        out.print("(install onnxruntime to compare with ONNX Runtime)")
    if device == "cpu":
        import torch

        why = "--device cpu was asked for" if torch.cuda.is_available() else "no GPU here"
        out.print(f"This ran on kilnrt's CPU backend ({why}): the reference path that runs and checks every engine "
                  "without a GPU, not a fast one (ONNX Runtime is the faster CPU runtime). With an NVIDIA GPU, "
                  "kilnrt demo builds a CUDA engine.")
    return 0
