"""The headline benchmark: kilnrt vs torch eager and torch.compile, same GPU, same run.

    python benchmarks/run.py                              # all headline rows
    python benchmarks/run.py --models resnet50 --batches 1,256
    python benchmarks/run.py --models bert --no-compile   # skip torch.compile (fast check)
    python benchmarks/run.py --dynamic bert               # the dynamic set: benchmarks/dynamic.py

The peers are timed the same way: the forward pass captured in a CUDA graph, then the
median of >= 50 replays timed with CUDA events after a warm-up.  kilnrt is timed through its
public call (``execute_async_v3`` on bound buffers; ``kilnrt_ms``), with ``engine.run`` and the
outer-graph replay beside it (``benchmarks/measure.py``).  kilnrt's outputs are
checked against the fp32 PyTorch model first (relative L2 error < 1e-2 for fp16).
Writes JSON to benchmarks/results/ after every row and prints the table last.  Stopped by
SIGTERM (``timeout``, a scheduler), it writes what it measured so far first, the row it was in
included (say, kilnrt and eager without the torch.compile peer), marked with an ``error``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import tempfile
import time
import warnings

import onnx
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

import kilnrt  # noqa: E402
from kilnrt.builder.timing import time_cuda_graph  # noqa: E402
from kilnrt.engine.inspector import layout_summary  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import Stopped, kilnrt_times, rel_l2, stop_on_sigterm  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GFLOP_PER_IMAGE = {"resnet50": 8.2, "mobilenet_v2": 0.6, "efficientnet_b0": 0.8, "vit_b_16": 35.1,
                   "convnext_tiny": 9.0}
# torchvision image models: (constructor name, channels_last for the eager peer, default batches,
# re-estimate BatchNorm statistics: where freshly initialized ones make activations vanish)
IMAGE_MODELS = {"resnet50": ("resnet50", True, [1, 256], False),
                "mobilenet_v2": ("mobilenet_v2", True, [1, 256], True),
                "efficientnet_b0": ("efficientnet_b0", True, [1, 256], True),
                "convnext_tiny": ("convnext_tiny", True, [1, 128], False),
                "vit_b_16": ("vit_b_16", False, [1, 64], False)}


def time_graph(fn, iters: int = 100) -> float:
    """Median ms of replays of ``fn`` captured in a CUDA graph (the same for every peer)."""
    return time_cuda_graph(fn, iters, warmup=10)


def _bert_config(attention: str):
    """BERT-base's config; ``attention``: "eager" (exports to plain ONNX ops) or "sdpa"."""
    from transformers import BertConfig

    config = BertConfig()
    config._attn_implementation = attention
    return config


def _healthy(model: torch.nn.Module, recalibrate: bool) -> torch.nn.Module:
    """Random weights whose activations keep a sane scale, so FP16 is meaningful: BatchNorm
    statistics are re-estimated on random images (freshly initialized running stats make some
    networks' activations vanish below FP16's range: MobileNetV2's logits are ~1e-9), and
    all-zero layers (ViT's head) get small random weights. Eval mode on return."""
    torch.manual_seed(1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)] if recalibrate else []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.detach().any():
            torch.nn.init.normal_(m.weight, std=0.02)
    if bns:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the passes below
        model.train()
        with torch.no_grad():
            for _ in range(4):
                model(torch.randn(16, 3, 224, 224, device="cuda"))
    return model.eval()


def make_model(name: str, batch: int, seq: int):
    """(fp32 model on GPU, example inputs dict, input names, is_cnn)."""
    torch.manual_seed(0)
    if name in IMAGE_MODELS:
        import torchvision

        model = _healthy(getattr(torchvision.models, IMAGE_MODELS[name][0])().cuda(), IMAGE_MODELS[name][3])
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        return model, {"input": x}, True
    if name == "bert":
        from transformers import BertModel

        model = BertModel(_bert_config("eager"), add_pooling_layer=True).eval().cuda()
        ids = torch.randint(0, 30522, (batch, seq), device="cuda")
        lengths = torch.randint(seq // 2, seq + 1, (batch,))
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).to(torch.int64).cuda()
        types = torch.randint(0, 2, (batch, seq), device="cuda")
        return model, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, False
    raise ValueError(name)


def make_peer(name, batch, seq, dtype, model32, inputs):
    """The PyTorch peer at ``dtype`` with ``model32``'s weights: channels_last for CNNs,
    BERT with its SDPA attention.  Returns (model, inputs)."""
    if name in IMAGE_MODELS:
        model = make_model(name, batch, seq)[0].to(dtype)
        model.load_state_dict(model32.state_dict())
        layout = torch.channels_last if IMAGE_MODELS[name][1] else torch.contiguous_format
        model = model.to(dtype).to(memory_format=layout)
        return model, {"input": inputs["input"].to(dtype).contiguous(memory_format=layout)}
    from transformers import BertModel

    model = BertModel(_bert_config("sdpa"), add_pooling_layer=True).eval().cuda().to(dtype)
    model.load_state_dict(model32.state_dict())
    return model, inputs


def forward(model, inputs, is_cnn):
    if is_cnn:
        return model(inputs["input"])
    return model(**inputs).last_hidden_state


def export_onnx(model, inputs, is_cnn, path):
    names = list(inputs)
    args = tuple(inputs[n] for n in names)
    outputs = ["output"] if is_cnn else ["last_hidden_state", "pooler_output"]

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *a):
            if is_cnn:
                return self.m(a[0])
            out = self.m(**dict(zip(names, a)))
            return out.last_hidden_state, out.pooler_output

    torch.onnx.export(Wrap(model), args, path, input_names=names, output_names=outputs,
                      opset_version=17, dynamo=False, do_constant_folding=True)


def bench_row(row, name, batch, seq, precision, use_compile, iters, cache_path, log):
    """Measures one row into ``row`` as it goes, so that a row stopped halfway keeps its numbers."""
    row.update({"seq": seq if name == "bert" else None, "precision": precision,
                "gpu": torch.cuda.get_device_name(), "torch": torch.__version__})
    import triton

    row["triton"] = triton.__version__
    model32, inputs, is_cnn = make_model(name, batch, seq)
    with torch.no_grad():
        ref = forward(model32, inputs, is_cnn).float()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]

    # kilnrt: export -> build (cold and warm timing cache) -> save -> load -> check -> time
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, f"{name}.onnx")
        export_onnx(model32.cpu(), {k: v.cpu() for k, v in inputs.items()}, is_cnn, onnx_path)
        model32.cuda()
        t0 = time.perf_counter()
        engine = kilnrt.build(onnx_path, device="cuda", fp16=precision == "fp16", bf16=precision == "bf16",
                              timing_cache=cache_path)
        row["build_s"] = round(time.perf_counter() - t0, 2)
        row["onnx_nodes"] = len(onnx.load(onnx_path).graph.node)
        row["network_layers"] = sum(1 for l in kilnrt.to_network(onnx_path).layers  # imported, before the optimizer
                                    if l.kind != kilnrt.LayerKind.CONSTANT)
        t0 = time.perf_counter()
        kilnrt.build(onnx_path, device="cuda", fp16=precision == "fp16", bf16=precision == "bf16",
                     timing_cache=cache_path)
        row["build_warm_cache_s"] = round(time.perf_counter() - t0, 2)
        plan_path = os.path.join(tmp, f"{name}.plan")
        engine.save(plan_path)
        row["plan_bytes"] = os.path.getsize(plan_path)
        t0 = time.perf_counter()
        engine = kilnrt.load(plan_path)
        row["load_s"] = round(time.perf_counter() - t0, 3)
    row["engine_layers"] = len(engine.layers)
    row["tactics"] = sorted({l.tactic for l in engine.layers})
    layout = layout_summary(engine)   # NHWC end to end: conversions only where the input is read
    row["layout_formats"] = layout["formats"]
    row["layout_changes"] = [c["layer"] for c in layout["changes"]]
    row["concat_elimination"] = engine.build_info.get("concat_elimination")
    torch.cuda.reset_peak_memory_stats()
    feeds = {k: v for k, v in inputs.items() if k in engine.input_names}
    out = engine.run(feeds)
    first = out[engine.output_names[0]]
    row["rel_l2_vs_fp32"] = rel_l2(first.float(), ref)
    row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    limit = 1e-3 if precision == "fp32" else 1e-2
    row["correct"] = row["rel_l2_vs_fp32"] < limit
    row.update(kilnrt_times(engine, {k: v.contiguous() for k, v in feeds.items()}, iters))
    log(f"  kilnrt: {row['kilnrt_ms']:.3f} ms (public call; outer graph {row['kilnrt_graph_ms']:.3f} ms), "
        f"rel L2 {row['rel_l2_vs_fp32']:.2e}, build {row['build_s']} s")

    # torch eager, same precision, channels_last for CNNs, CUDA graph replay
    model, inputs_p = make_peer(name, batch, seq, dtype, model32, inputs)
    with torch.no_grad():
        # the peer's own error at this precision, for scale: random weights can amplify rounding
        row["torch_eager_rel_l2_vs_fp32"] = rel_l2(forward(model, inputs_p, is_cnn).float(), ref)
        row["torch_eager_ms"] = time_graph(lambda: forward(model, inputs_p, is_cnn), iters)
        log(f"  torch eager: {row['torch_eager_ms']:.3f} ms")
        if use_compile:
            compiled = torch.compile(model, mode="max-autotune-no-cudagraphs")
            t0 = time.perf_counter()
            forward(compiled, inputs_p, is_cnn)
            torch.cuda.synchronize()
            row["torch_compile_s"] = round(time.perf_counter() - t0, 1)
            row["torch_compile_ms"] = time_graph(lambda: forward(compiled, inputs_p, is_cnn), iters)
            log(f"  torch.compile: {row['torch_compile_ms']:.3f} ms (compile {row['torch_compile_s']} s)")
    peers = [row[k] for k in ("torch_eager_ms", "torch_compile_ms") if row.get(k)]
    row["speedup_vs_best_peer"] = round(min(peers) / row["kilnrt_ms"], 3)
    row["speedup_vs_eager"] = round(row["torch_eager_ms"] / row["kilnrt_ms"], 3)
    if row.get("torch_compile_ms"):
        row["speedup_vs_compile"] = round(row["torch_compile_ms"] / row["kilnrt_ms"], 3)
    items = batch
    row["kilnrt_items_per_s"] = round(items / row["kilnrt_ms"] * 1e3, 1)
    if name in GFLOP_PER_IMAGE:
        row["kilnrt_tflops"] = round(GFLOP_PER_IMAGE[name] * batch / row["kilnrt_ms"], 1)
    del model, model32
    torch.cuda.empty_cache()


def write_results(path: str, stamp: str, rows: list[dict]) -> None:
    """The results JSON, replaced whole (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"date": stamp, "gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    os.replace(path + ".tmp", path)


def print_table(rows: list[dict]) -> None:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    print(f"{'model':10} {'shape':>10} {'prec':5} {'eager ms':>9} {'compile ms':>10} {'kilnrt ms':>9} {'vs best':>8} "
          f"{'relL2':>8} {'eager relL2':>11} {'build s':>7}")
    for r in rows:
        shape = f"{r['batch']}x{r['seq']}" if r.get("seq") else str(r["batch"])
        if "kilnrt_ms" not in r:
            print(f"{r['model']:10} {shape:>10} ERROR {r.get('error', '')[:80]}")
            continue
        best = f"{r['speedup_vs_best_peer']:.2f}x" if "speedup_vs_best_peer" in r else "-"
        print(f"{r['model']:10} {shape:>10} {r['precision']:5} {fmt(r.get('torch_eager_ms'), '9.3f'):>9} "
              f"{fmt(r.get('torch_compile_ms'), '.3f'):>10} {r['kilnrt_ms']:9.3f} {best:>8} "
              f"{r['rel_l2_vs_fp32']:8.1e} {fmt(r.get('torch_eager_rel_l2_vs_fp32'), '11.1e'):>11} {r['build_s']:7.1f}"
              + (f"  ({r['error']})" if "error" in r else ""))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--dynamic"]:   # dynamic-profile engines against static ones (benchmarks/dynamic.py)
        from dynamic import main as dynamic_main

        rest = argv[1:]
        return dynamic_main((["--model", rest[0]] + rest[1:]) if rest and not rest[0].startswith("-") else rest)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,bert",
                   help="comma list of: bert, " + ", ".join(IMAGE_MODELS) + " (the wider set)")
    p.add_argument("--batches", default=None, help="comma list; default resnet50: 1,256; bert: 1,32")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--out", default=None)
    p.add_argument("--timing-cache", default=os.path.join(tempfile.gettempdir(), "kilnrt-bench.timing"))
    args = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rows: list[dict] = []
    log = lambda m: print(m, flush=True)  # noqa: E731
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    out = args.out or os.path.join(RESULTS, f"{stamp}-{gpu}-{args.models.replace(',', '+')}.json")
    previous = stop_on_sigterm()
    stopped = False
    try:
        for name in args.models.split(","):
            batches = ([int(b) for b in args.batches.split(",")] if args.batches
                       else IMAGE_MODELS.get(name, (0, 0, [1, 32], 0))[2])
            for b in batches:
                if stopped:
                    break
                row = {"model": name, "batch": b}
                rows.append(row)
                try:
                    log(f"{name} batch {b} {args.precision}")
                    bench_row(row, name, b, args.seq, args.precision, not args.no_compile, args.iters,
                              args.timing_cache, log)
                except Stopped as exc:
                    row["error"] = f"{exc} before this row finished"
                    stopped = True
                except Exception as exc:  # noqa: BLE001 - report and go on with the other rows
                    import traceback

                    traceback.print_exc()
                    row["error"] = f"{type(exc).__name__}: {exc}"
                write_results(out, stamp, rows)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"\nresults: {out}\n")
    print_table(rows)
    return 124 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
