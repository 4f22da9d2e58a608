"""Where ``engine.run``'s host time goes, part by part, on its replay path (GPU tensors of a
shape set that has run before).

    python benchmarks/call_parts.py                 # BERT-base, batch 1, sequence 128, FP16

Each part is timed as ``benchmarks/measure.py``'s ``host_us_per_call`` times a call: host
microseconds per call, 20 calls back to back without a sync, median of 15 rounds.  Besides
the whole call (``engine.run``, ``ctx.run``) it times the replay key, the cache lookup, the
input copy (one multi-tensor copy, and one ``copy_`` per input for comparison), the graph
launch, and ways to hand the caller its own outputs (a clone each; fresh tensors and one
multi-tensor copy).  Prints one line per part; nothing is written.
"""
from __future__ import annotations

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
from kilnrt.engine.context import _replay_key  # noqa: E402
from kilnrt.engine.cudagraph import current_raw_stream  # noqa: E402
from measure import host_us_per_call  # noqa: E402
from run import export_onnx, make_model  # noqa: E402


def main() -> int:
    model, inputs, is_cnn = make_model("bert", 1, 128)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bert.onnx")
        export_onnx(model.cpu(), {k: v.cpu() for k, v in inputs.items()}, is_cnn, path)
        engine = kilnrt.build(path, device="cuda", fp16=True)
    feeds = {k: v for k, v in inputs.items() if k in engine.input_names}
    for _ in range(20):
        engine.run(feeds)
    ctx = engine._contexts.default
    key = _replay_key(feeds)
    rep = ctx._replays.get(key)
    if rep is None:
        print("engine.run did not take its replay path")
        return 1
    values, outs, stream = list(feeds.values()), [v for _, v in rep.outputs], current_raw_stream()
    parts = {
        "engine.run": lambda: engine.run(feeds),
        "ctx.run": lambda: ctx.run(feeds),
        "_replay_key": lambda: _replay_key(feeds),
        "_replays.get": lambda: ctx._replays.get(key),
        "foreach_copy_ (inputs)": lambda: torch._foreach_copy_(rep.inputs, values, non_blocking=True),
        "copy_ per input": lambda: [d.copy_(s, non_blocking=True) for d, s in zip(rep.inputs, values)],
        "launch": lambda: rep.launch(stream),
        "clone outputs": lambda: [v.clone() for v in outs],
        "empty_like outputs": lambda: [torch.empty_like(v) for v in outs],
        "empty_like + foreach_copy": lambda: torch._foreach_copy_([torch.empty_like(v) for v in outs], outs),
    }
    print(f"BERT-base b1 s128 FP16, {torch.cuda.get_device_name()}: {len(feeds)} inputs, {len(outs)} outputs")
    for name, fn in parts.items():
        for _ in range(5):
            fn()
        print(f"{name:28} {host_us_per_call(fn):7.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
