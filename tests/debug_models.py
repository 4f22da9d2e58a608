"""Small ONNX models that break in FP16, for the precision-debugging tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inits, name) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def overflow_between_layers(seed: int = 0) -> onnx.ModelProto:
    """x @ W -> * 1e5 (past FP16's 65504) -> * 1e-5 -> + b -> Relu: the tensor 'scaled' overflows."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(1e5, np.float32), "big"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "small")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="MatMul_0"),
             helper.make_node("Mul", ["h", "big"], ["scaled"], name="Mul_big"),
             helper.make_node("Mul", ["scaled", "small"], ["back"], name="Mul_small"),
             helper.make_node("Add", ["back", "b"], ["sum"], name="Add_3"),
             helper.make_node("Relu", ["sum"], ["y"], name="Relu_4")]
    return _model(nodes, inits, "overflow_between_layers")


def overflow_inside_a_node(seed: int = 0) -> onnx.ModelProto:
    """x @ W -> * 20 -> ReduceL2 -> divide: ReduceL2 squares values near 300 (9e4 > 65504)
    although its output (a norm near 1000) and every tensor between nodes fit FP16."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array(20.0, np.float32), "scale")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="MatMul_0"),
             helper.make_node("Mul", ["h", "scale"], ["scaled"], name="Scale_1"),
             helper.make_node("ReduceL2", ["scaled"], ["norm"], name="ReduceL2_2", keepdims=1, axes=[1]),
             helper.make_node("Div", ["scaled", "norm"], ["y"], name="Div_3")]
    return _model(nodes, inits, "overflow_inside_a_node")
