"""ONNX import paths: external-data files, symbolic input dims, old and new opsets."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import kilnrt


def _gemm_model(rng) -> onnx.ModelProto:
    w = numpy_helper.from_array(rng.normal(size=(64, 32)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(32,)).astype(np.float32), "b")
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_external_data_file_is_loaded_from_the_models_folder(tmp_path):
    rng = np.random.default_rng()
    model = _gemm_model(rng)
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    engine = kilnrt.build(str(path))
    x = rng.normal(size=(5, 64)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(engine.run({"x": x})["y"], ref, rtol=1e-4, atol=1e-4)


def test_symbolic_batch_dim_is_kept_and_any_batch_runs():
    rng = np.random.default_rng()
    model = _gemm_model(rng)
    engine = kilnrt.build(model)
    assert engine.get_tensor_shape("x") == (-1, 64)
    assert engine.get_tensor_shape("y") == (-1, 32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = rng.normal(size=(n, 64)).astype(np.float32)
        np.testing.assert_allclose(engine.run({"x": x})["y"], sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
