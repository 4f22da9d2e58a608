"""The CPU model zoo: ~60 small architectures — CNNs, ViTs, BERT-style encoders,
GQA/rotary decoders, encoder-decoders, speech encoders, CLIP, detection and segmentation
heads — each exported from PyTorch three ways (dynamo static, dynamo with dynamic
batch/sequence, TorchScript exporter at opset 17 with ``dynamic_axes``), and image models
that take any size twice more with dynamic height and width (``*_hw``). Every file is
built by kilnrt on the CPU and must match ONNX Runtime (graph optimizations off) to a
relative L2 error of 1e-3 on every output, at the export shape for static files and at
two shapes of one optimization profile for dynamic ones.

The models live in ``tests/zoo/models.py``; the files and ``tests/data/zoo/manifest.json``
are made by ``python scripts/export_zoo.py`` (seeded, needs ``transformers``; this test
needs only onnxruntime). Exports that failed are recorded in the manifest and skipped
here. Cases that fail today are listed in ``KNOWN_FAILURES`` with the first line of their
error, and run as strict xfails: fixing one makes its test fail until it is removed.
Regenerating the exports: run the script, then this test, and update ``KNOWN_FAILURES``.
About 70 s on 2 cores.
"""
from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest

import kilnrt
from zoo.inputs import concrete_shape, make_feeds, rel_l2

ort = pytest.importorskip("onnxruntime")

ZOO = Path(__file__).parent / "data" / "zoo"
MANIFEST = json.loads((ZOO / "manifest.json").read_text()) if (ZOO / "manifest.json").exists() else {"models": []}
RTOL_L2 = 1e-3

pytestmark = pytest.mark.slow

# test id -> first line of the error kilnrt gives today (strict xfail).
KNOWN_FAILURES: dict[str, str] = {
}


def profile_for(entry: dict, info: dict) -> dict | None:
    """{input: (min, opt, max)} spanning the variant's two test shapes (opt = max)."""
    if not info["dynamic_dims"]:
        return None
    profile = {}
    for spec in info.get("inputs", entry["inputs"]):
        a, b = (concrete_shape(spec["shape"], dims) for dims in info["shapes"])
        lo = tuple(min(x, y) for x, y in zip(a, b))
        hi = tuple(max(x, y) for x, y in zip(a, b))
        profile[spec["name"]] = (lo, hi, hi)
    return profile


def run_case(entry: dict, variant: str) -> None:
    """Build the variant's file with kilnrt and compare it with ONNX Runtime at its shapes."""
    info = entry["variants"][variant]
    path = str(ZOO / info["file"])
    engine = kilnrt.build(path, device="cpu", profiles=profile_for(entry, info))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs()]
    for k, dims in enumerate(info["shapes"]):
        feeds = make_feeds(info.get("inputs", entry["inputs"]), dims, seed=1000 + k)
        expected = dict(zip(out_names, session.run(None, feeds)))
        actual = engine.run(feeds)
        assert sorted(actual) == sorted(expected), f"outputs {sorted(actual)} != {sorted(expected)}"
        where = ",".join(f"{d}={v}" for d, v in dims.items())
        for name, exp in expected.items():
            got = np.asarray(actual[name])
            assert got.shape == exp.shape, f"shape mismatch: {name} {got.shape} != {exp.shape} at {where}"
            err = rel_l2(got, exp)
            assert err <= RTOL_L2, f"numerical mismatch: {name} rel L2 {err:.3g} > {RTOL_L2} at {where}"
    del engine, session
    gc.collect()


def _cases():
    for entry in MANIFEST["models"]:
        for variant, info in entry["variants"].items():
            case_id = f"{entry['name']}.{variant}"
            marks = []
            problem = info.get("error") or info.get("ort_error")
            if problem:
                marks.append(pytest.mark.skip(reason=f"export failed: {problem}"))
            elif case_id in KNOWN_FAILURES:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[case_id]))
            yield pytest.param(entry, variant, id=case_id, marks=marks)


CASES = list(_cases())


def test_manifest_covers_the_zoo():
    assert len(MANIFEST["models"]) >= 40, "run scripts/export_zoo.py"
    assert not set(KNOWN_FAILURES) - {c.id for c in CASES}, "KNOWN_FAILURES names unknown cases"


@pytest.mark.parametrize("entry,variant", CASES)
def test_zoo_matches_onnxruntime(entry: dict, variant: str):
    run_case(entry, variant)
