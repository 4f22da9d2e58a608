"""ONNX's "light" model zoo (onnx/backend/test/data/light): every model builds, survives a
plan save/load, and reproduces its shipped output; the small ones also match onnxruntime
on fresh random inputs."""
from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.backend.test.runner import Runner

import kilnrt
from kilnrt.testing import assert_close, fresh_seed

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(p.stem for p in LIGHT.glob("*.onnx"))


def _data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    assert len(inputs) == 1, [vi.name for vi in inputs]
    return inputs[0]


def test_all_nine_light_models_are_present():
    assert len(MODELS) == 9, MODELS


@pytest.mark.parametrize("name", MODELS)
def test_light_model_matches_shipped_output(name: str, tmp_path: Path):
    model = onnx.load(str(LIGHT / f"{name}.onnx"))
    vi = _data_input(model)
    x = Runner.generate_dummy_data(vi, seed=0, name=name, random=False)
    expected = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"{name}_output_0.pb")))

    plan = tmp_path / f"{name}.plan"
    kilnrt.build(model).save(str(plan))   # vgg19 / alexnet plans are hundreds of MB: only on disk
    try:
        engine = kilnrt.load(str(plan))
        outputs = engine.run({vi.name: x})
    finally:
        os.remove(plan)
    assert list(outputs) == [o.name for o in model.graph.output]
    (actual,) = outputs.values()
    assert actual.dtype == expected.dtype
    assert_close(actual, expected, rtol=1e-3, atol=1e-4, name=name)
    del engine, outputs
    gc.collect()


@pytest.mark.parametrize("name", ["light_squeezenet", "light_shufflenet", "light_inception_v1"])
def test_light_model_matches_onnxruntime_on_random_input(name: str):
    ort = pytest.importorskip("onnxruntime")
    model = onnx.load(str(LIGHT / f"{name}.onnx"))
    vi = _data_input(model)
    seed = fresh_seed()
    shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)

    actual = kilnrt.build(model).run({vi.name: x})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, {vi.name: x})))
    assert_close(actual, expected, rtol=1e-3, atol=1e-4, seed=seed, name=name)
