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


def test_model_local_functions_are_expanded_nested_too():
    """FunctionProtos (export_modules_as_functions, onnxscript): inlined as onnxruntime does."""
    inner = helper.make_function("custom", "ScaledTanh", ["x"], ["y"],
                                 [helper.make_node("Constant", [], ["a"], value_float=0.5),
                                  helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Mul", ["t", "a"], ["y"])],
                                 [helper.make_opsetid("", 18)], [])
    outer = helper.make_function("custom", "Block", ["x", "w"], ["y"],
                                 [helper.make_node("MatMul", ["x", "w"], ["m"]),
                                  helper.make_node("ScaledTanh", ["m"], ["t"], domain="custom"),
                                  helper.make_node("Add", ["x", "t"], ["y"])],
                                 [helper.make_opsetid("", 18), helper.make_opsetid("custom", 1)], [])
    rng = np.random.default_rng()
    w = rng.standard_normal((6, 6)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Block", ["x", "w"], ["h"], domain="custom"),
                               helper.make_node("Block", ["h", "w"], ["y"], domain="custom")], "fn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, functions=[inner, outer], ir_version=9,
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("custom", 1)])
    x = rng.standard_normal((3, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    engine = kilnrt.build(model, profiles={"x": [(1, 6), (3, 6), (8, 6)]})
    np.testing.assert_allclose(engine.run({"x": x})["y"], want, rtol=1e-5, atol=1e-6)


def test_an_input_that_is_also_an_output_is_returned_under_a_new_name_and_said(caplog):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "io",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    with caplog.at_level("WARNING", logger="kilnrt.onnx"):
        engine = kilnrt.build(model)
    assert "ONNX output 'x' is also a graph input" in caplog.text and "returns this output as 'x_0'" in caplog.text
    x = np.random.default_rng().standard_normal((2, 3)).astype(np.float32)
    out = engine.run({"x": x})
    np.testing.assert_array_equal(out["x_0"], x)
