"""Shape and type inference: symbolic dims propagate by name, static dims are ints, and
dims that depend on data (or on shape inputs known only at run time) are -1."""
from __future__ import annotations

import numpy as np
import pytest
import sympy
from onnx import TensorProto, helper, numpy_helper

import kilnrt
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.infer import concrete_shapes
from kilnrt.network.layers import (ActivationParams, ActivationType, ConcatenationParams, ConstantParams,
                                   ElementWiseOperation, ElementWiseParams, LayerKind, MatrixMultiplyParams,
                                   ReduceOperation, ReduceParams, ShapeParams, ShuffleParams)
from models import make_model, nonzero_model, small_cnn_model


def onnx_shapes(nodes, inputs, outputs, inits=(), opset=17) -> Network:
    return kilnrt.to_network(make_model(nodes, inputs, outputs, inits, opset=opset))


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def test_symbolic_batch_through_a_cnn():
    net = kilnrt.to_network(small_cnn_model("batch"))
    shapes = {l.name: l.outputs[0].shape for l in net.layers if l.kind != LayerKind.CONSTANT}
    assert shapes["Conv_0"] == ("batch", 4, 6, 6)
    assert shapes["MaxPool_2"] == ("batch", 4, 2, 2)
    assert shapes["Flatten_3"] == ("batch", 16)
    assert net.outputs[0].shape == ("batch", 5)
    assert net.outputs[0].dtype == DataType.FLOAT


def test_static_dims_are_ints():
    net = kilnrt.to_network(small_cnn_model(3))
    for layer in net.layers:
        for t in layer.outputs:
            assert all(type(d) is int and d >= 0 for d in t.shape), (t.name, t.shape)
    assert net.outputs[0].shape == (3, 5)


def test_two_symbols_stay_apart():
    """x: [batch, seq, 8] -> reshape to [batch, seq, 2, 4] through Shape/Gather/Concat (as
    exporters write it) -> transpose: the symbols follow their dims."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
             helper.make_node("Gather", ["s", "i1"], ["q"], axis=0),
             helper.make_node("Concat", ["b", "q", "tail"], ["dims"], axis=0),
             helper.make_node("Reshape", ["x", "dims"], ["r"]),
             helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("ReduceSum", ["m", "axes"], ["z"], keepdims=0)]
    inits = [np.array([0], np.int64), np.array([1], np.int64), np.array([2, 4], np.int64),
             np.ones((8, 3), np.float32), np.array([1], np.int64)]
    inits = [numpy_helper.from_array(a, n) for a, n in zip(inits, ["i0", "i1", "tail", "w", "axes"])]
    net = onnx_shapes(nodes, [vi("x", ["batch", "seq", 8])], [vi("y", None), vi("z", None)], inits)
    y, z = net.outputs
    assert y.shape == ("batch", 2, "seq", 4)
    assert z.shape == ("batch", 3)
    assert net.tensors["s"].shape == (3,) and net.tensors["s"].dtype == DataType.INT64


def test_arithmetic_on_a_symbol_is_an_expression():
    """concat([x, x], axis 0) has 2 * batch rows: an expression over the symbol."""
    net = Network("concat")
    x = net.add_input("x", DataType.FLOAT, ("batch", 3))
    both = net.add_layer(LayerKind.CONCATENATION, ConcatenationParams(0), [x, x]).outputs[0]
    wide = net.add_layer(LayerKind.CONCATENATION, ConcatenationParams(1), [x, x]).outputs[0]
    net.mark_output(both)
    net.mark_output(wide)
    assert both.shape == ("2*batch", 3)
    assert wide.shape == ("batch", 6)
    assert both.symbolic_shape[0] == 2 * sympy.Symbol("batch", integer=True, positive=True)


def test_network_api_inference_and_dtypes():
    net = Network("api")
    x = net.add_input("x", DataType.FLOAT, ("n", 4))
    w = net.add_layer(LayerKind.CONSTANT, ConstantParams(np.ones((4, 5), np.float32)), []).outputs[0]
    mm = net.add_layer(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(), [x, w]).outputs[0]
    act = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [mm]).outputs[0]
    red = net.add_layer(LayerKind.REDUCE, ReduceParams(ReduceOperation.SUM, (1,), False), [act]).outputs[0]
    cmp = net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.GREATER), [red, red]).outputs[0]
    shp = net.add_layer(LayerKind.SHAPE, ShapeParams(), [act]).outputs[0]
    net.mark_output(cmp)
    assert mm.shape == ("n", 5) and mm.dtype == DataType.FLOAT
    assert red.shape == ("n",)
    assert cmp.shape == ("n",) and cmp.dtype == DataType.BOOL
    assert shp.shape == (2,) and shp.dtype == DataType.INT64


def test_inference_is_redone_when_an_input_changes():
    net = Network("change")
    x = net.add_input("x", DataType.FLOAT, (2, 3))
    y = net.add_layer(LayerKind.SHUFFLE, ShuffleParams(reshape_dims=(-1,)), [x]).outputs[0]
    net.mark_output(y)
    assert y.shape == (6,)
    x.shape = (4, 5)
    assert y.shape == (20,)
    x.shape = ("b", 5)
    assert y.shape == ("5*b",)


def test_concrete_shapes_for_given_input_shapes():
    net = kilnrt.to_network(small_cnn_model("batch"))
    shapes = concrete_shapes(net, {"x": (7, 2, 6, 6)})
    assert shapes["y"] == ((7, 5), DataType.FLOAT)
    assert shapes["c"] == ((7, 4, 6, 6), DataType.FLOAT)


def test_reshape_to_runtime_dims_has_known_rank_and_unknown_dims():
    """Reshape(x, shape) where ``shape`` is a graph input: its length (2) is known, its values
    are not, so the output is [-1, -1] until run time."""
    net = onnx_shapes([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                      [vi("x", [2, 6]), vi("shape", [2], TensorProto.INT64)], [vi("y", None)])
    assert net.outputs[0].shape == (-1, -1)
    assert net.outputs[0].dtype == DataType.FLOAT
    engine = kilnrt.build(net)
    assert engine.get_tensor_shape("y") == (-1, -1)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    assert engine.run({"x": x, "shape": np.array([3, 4], np.int64)})["y"].shape == (3, 4)


def test_data_dependent_output_dims_are_minus_one():
    net = kilnrt.to_network(nonzero_model())
    (y,) = net.outputs
    assert y.dtype == DataType.INT64
    assert len(y.shape) == 2 and y.shape[1] == -1        # (the row count, 2, could be known too)
    engine = kilnrt.build(net)
    assert engine.get_tensor_shape("y")[1] == -1
    ctx = engine.create_execution_context()
    ctx.set_input_shape("x", (4, 5))
    assert ctx.get_tensor_shape("y")[1] == -1            # known only after a run
    x = np.array([[1, -1, 2, 0, 3]] * 4, np.float32)
    out = np.zeros((2, 20), np.int64)
    ctx.set_tensor_address("x", x)
    ctx.set_tensor_address("y", out)
    ctx.execute_async_v3(0)
    assert ctx.get_tensor_shape("y") == (2, 12)
