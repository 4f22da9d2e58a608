"""Dynamic-shape engines against static ones, same ONNX file, same GPU, same run.

    python benchmarks/dynamic.py --model bert --layers 12      # BERT-base: batch 1-64, seq 8-512
    python benchmarks/dynamic.py --model resnet50              # batch 1-64

The model is exported once with ``torch.onnx.export(dynamo=True)`` and dynamic dims.  One
engine is built with the dynamic profile; for each test shape (the profile's opt shape and
three others) one static engine is built from the same file with a single-shape profile.
Both are timed through the public call, as a user calls them: inputs and outputs bound once
with ``set_tensor_address``, then ``execute_async_v3(stream)`` timed with CUDA events (median
of ``--iters`` calls after a warm-up), plus the host time per call without a sync.  The
dynamic engine's CUDA-graph captures are counted, and the first call at each new shape is
timed.  Outputs are checked against the FP32 PyTorch model first.

Writes one JSON (the results format of BENCHMARKS.md, ``profile`` set on dynamic rows) after
every row, so that a run stopped by its time limit keeps what it measured; ``--resume`` skips
rows already in the file.
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

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")

import kilnrt  # noqa: E402
from measure import event_median_ms, public_call, rel_l2, results_header  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# model -> (profile min, opt, max, the three other test shapes); shapes are (batch,) or (batch, seq)
PROFILES = {
    "bert": ((1, 8), (8, 128), (64, 512), [(1, 8), (32, 256), (64, 512)]),
    "resnet50": ((1,), (16,), (64,), [(1,), (4,), (64,)]),
}


def make_model(name: str, layers: int):
    torch.manual_seed(0)
    if name == "bert":
        from transformers import BertConfig, BertModel

        cfg = BertConfig(num_hidden_layers=layers, attn_implementation="eager")
        model = BertModel(cfg).eval()

        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return Wrap(model).eval()
    import torchvision

    return torchvision.models.resnet50().eval()


def make_inputs(name: str, shape: tuple, device: str = "cuda") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(hash(shape) & 0xFFFF)
    if name == "bert":
        batch, seq = shape
        ids = torch.randint(0, 30522, (batch, seq), generator=g)
        lengths = torch.randint(max(1, seq // 2), seq + 1, (batch,), generator=g)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).to(torch.int64)
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    return {"x": torch.randn((shape[0], 3, 224, 224), generator=g).to(device)}


def export(name: str, model, path: str) -> None:
    lo, opt, hi, _ = PROFILES[name]
    example = make_inputs(name, opt, "cpu")
    batch = torch.export.Dim("batch", min=lo[0], max=hi[0])
    if name == "bert":
        seq = torch.export.Dim("seq", min=lo[1], max=hi[1])
        dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    else:
        dyn = {"x": {0: batch}}
    torch.onnx.export(model, tuple(example.values()), path, dynamo=True, input_names=list(example),
                      output_names=["y"], dynamic_shapes=dyn, verbose=False)


def full_shapes(name: str, shape: tuple) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in make_inputs(name, shape, "meta").items()}


def build(path: str, name: str, profile: tuple, cache: str, *extra: tuple,
          tactic_buckets=("min",)) -> tuple[kilnrt.Engine, float]:
    """An engine for ``profile`` (min, opt, max), plus one profile per shape in ``extra`` (that
    shape tuned on its own), with tactics tuned again at ``tactic_buckets``."""
    profiles = []
    for prof in (profile,) + tuple((s, s, s) for s in extra):
        lo, opt, hi = (full_shapes(name, s) for s in prof)
        profiles.append({k: [lo[k], opt[k], hi[k]] for k in opt})
    t0 = time.perf_counter()
    engine = kilnrt.build(path, device="cuda", fp16=True, timing_cache=cache, profiles=profiles,
                          tactic_buckets=tactic_buckets)
    return engine, time.perf_counter() - t0


def tactic_summary(engine) -> dict[str, int]:
    out: dict[str, int] = {}
    for l in engine.layers:
        out[l.tactic] = out.get(l.tactic, 0) + 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(PROFILES), default="bert")
    ap.add_argument("--layers", type=int, default=12, help="BERT encoder layers")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--shapes", default="", help="only these test shapes, e.g. 8x128,1x8 (default: all)")
    ap.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/<date>-<gpu>-dynamic-<model>.json)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--bucket", action="store_true",
                    help="also measure what tactic buckets buy: the dynamic engine without them (opt's tactics "
                         "for every shape), and one with a second profile for the min shape")
    args = ap.parse_args(argv)

    gpu = torch.cuda.get_device_name().replace(" ", "_")
    stamp = datetime.date.today().isoformat()
    path = args.out or os.path.join(RESULTS, f"{stamp}-{gpu}-dynamic-{args.model}.json")
    rows: list[dict] = []
    if args.resume and os.path.exists(path):
        rows = json.load(open(path))["rows"]
    done = {(r["model"], tuple(r["shape"]), json.dumps(r["profile"])) for r in rows if "kilnrt_ms" in r}
    header = results_header("dynamic", torch.cuda.get_device_name(), stamp)

    def save() -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump({**header, "rows": rows}, f, indent=1, default=str)
        os.replace(path + ".tmp", path)

    lo, opt, hi, others = PROFILES[args.model]
    shapes = [opt] + others
    if args.shapes:
        shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]
    label = f"bert-{args.layers}l" if args.model == "bert" else args.model
    model = make_model(args.model, args.layers)
    tmp = tempfile.mkdtemp()
    onnx_path = os.path.join(tmp, f"{args.model}.onnx")
    t0 = time.perf_counter()
    export(args.model, model, onnx_path)
    print(f"export {time.perf_counter() - t0:.1f} s", flush=True)
    model = model.cuda()
    cache = os.path.join(tmp, "timing.cache")
    dyn, dyn_build_s = build(onnx_path, args.model, (lo, opt, hi), cache)
    print(f"dynamic build {dyn_build_s:.1f} s; host shape layers {len(dyn.program.shapes.layers)}; "
          f"device steps {len(dyn.program.steps)}", flush=True)
    dyn_profile = {"min": lo, "opt": opt, "max": hi}
    buckets = dyn.build_info.get("tactic_buckets") or {}
    print(f"tactic buckets: {buckets.get('layers')} layers keep another tactic at {buckets.get('shapes', [])[1:]}, "
          f"tuned in {buckets.get('seconds')} s", flush=True)
    kinds = ("dynamic", "static")
    extra = {}
    if args.bucket:
        extra["opt-only"] = build(onnx_path, args.model, (lo, opt, hi), cache, tactic_buckets=())
        extra["bucket"] = build(onnx_path, args.model, (lo, opt, hi), cache, lo, tactic_buckets=())
        kinds = ("dynamic", "opt-only", "bucket", "static")
    for shape in shapes:
        feeds = make_inputs(args.model, shape)
        with torch.no_grad():
            ref = model(*feeds.values()).float()
        for kind in kinds:
            profile = {"dynamic": {**dyn_profile, "tactic_buckets": ["min"]},
                       "opt-only": {**dyn_profile, "tactic_buckets": []},
                       "bucket": {**dyn_profile, "tactic_buckets": [], "buckets": [lo]}}.get(kind, "static")
            if (label, shape, json.dumps(profile, default=list)) in done:
                continue
            row = {"model": label, "family": "transformer" if args.model == "bert" else "cnn",
                   "batch": shape[0], "seq": shape[1] if len(shape) > 1 else None, "shape": list(shape),
                   "precision": "fp16", "profile": profile}
            rows.append(row)
            try:
                if kind == "dynamic":
                    engine, row["build_s"] = dyn, round(dyn_build_s, 1)
                elif kind in extra:
                    engine, row["build_s"] = extra[kind][0], round(extra[kind][1], 1)
                else:
                    engine, b = build(onnx_path, args.model, (shape, shape, shape), cache)
                    row["build_s"] = round(b, 1)
                r = public_call(engine, feeds, args.iters)
                out = r["outputs"][engine.output_names[0]]
                row.update(kilnrt_ms=round(r["ms"], 4), host_us=round(r["host_us"], 1),
                           first_call_ms=round(r["first_call_ms"], 1), graph_captures=r["captures"],
                           eager_runs=r["eager_runs"], graph_fallback=r["fallback"], relerr=rel_l2(out.float(), ref),
                           engine_layers=len(engine.layers), host_shape_layers=len(engine.program.shapes.layers),
                           tactics=tactic_summary(engine),
                           tactic_bucket=engine.program.bucket_of({k: tuple(v.shape) for k, v in feeds.items()})
                           if engine.program.bucket_of else 0,
                           bucket_layers=sum(1 for l in engine.layers if l.bucket_tactics))
                t0 = time.perf_counter()
                res = engine.run(feeds)
                torch.cuda.synchronize()
                row["kilnrt_run_first_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
                row["kilnrt_run_ms"] = round(event_median_ms(lambda: engine.run(feeds), 30), 4)
                del res
            except Exception as exc:  # noqa: BLE001 - keep the row, say why
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"{label} {shape} {kind}: " + ", ".join(f"{k}={row.get(k)}" for k in
                  ("kilnrt_ms", "kilnrt_run_ms", "host_us", "first_call_ms", "graph_captures", "eager_runs", "graph_fallback",
                   "relerr", "build_s", "error")), flush=True)
            save()
            if kind == "static":
                del engine
                torch.cuda.empty_cache()
    def kind_of(r) -> str:
        p = r["profile"]
        if p == "static":
            return "static"
        return "bucket" if "buckets" in p else "dynamic" if p.get("tactic_buckets", ["min"]) else "opt-only"

    print("\n| model | shape | dynamic ms | static ms | ratio | opt-only tactics ms | min-shape profile ms "
          "| captures | first call ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        at = {kind_of(r): r for r in rows if tuple(r["shape"]) == shape and r.get("kilnrt_ms")}
        d, s = at.get("dynamic", {}), at.get("static", {})
        ratio = d.get("kilnrt_ms") / s["kilnrt_ms"] if d.get("kilnrt_ms") and s.get("kilnrt_ms") else None
        print(f"| {label} | {'x'.join(map(str, shape))} | {d.get('kilnrt_ms')} | {s.get('kilnrt_ms')} | "
              f"{ratio and round(ratio, 3)} | {at.get('opt-only', {}).get('kilnrt_ms')} | "
              f"{at.get('bucket', {}).get('kilnrt_ms')} | {d.get('graph_captures')} | {d.get('first_call_ms')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
