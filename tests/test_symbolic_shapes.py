"""Symbolic shapes: the shape rules give expressions over the input dims, the profile's ranges
resolve what they decide, and a rule that breaks inside a range is a build-time error."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import sympy
import torch
from onnx import TensorProto, helper, numpy_helper

import kilnrt
from kilnrt.errors import ShapeError
from kilnrt.network import symbolic as S
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.layers import (ConvolutionParams, LayerKind, PaddingMode, PoolingParams, PoolingType,
                                   ShapeParams, ShuffleParams)

RNG = np.random.default_rng()
batch, seq, h = S.symbol("batch"), S.symbol("seq"), S.symbol("h")


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "m", inputs, outputs,
                          initializer=[numpy_helper.from_array(a, n) for n, a in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def test_convolution_and_pooling_dims_are_expressions():
    net = Network("conv")
    x = net.add_input("x", DataType.FLOAT, ("batch", 3, "h", "h"))
    w = net.add_constant((8, 3, 3, 3), np.ones((8, 3, 3, 3), np.float32)).get_output(0)
    conv = net.add_layer(LayerKind.CONVOLUTION, ConvolutionParams(8, (3, 3), (2, 2), (1, 1), (1, 1)), [x, w])
    pool = net.add_layer(LayerKind.POOLING, PoolingParams(PoolingType.MAX, (2, 2), (2, 2),
                                                          padding_mode=PaddingMode.EXPLICIT_ROUND_UP),
                         [conv.outputs[0]])
    net.mark_output(pool.outputs[0])
    c = conv.outputs[0].symbolic_shape
    assert c[:2] == (batch, 8)
    assert S.substitute(c[2], {"h": 7}) == 4 and S.substitute(c[2], {"h": 224}) == 112
    p = pool.outputs[0].symbolic_shape
    for size in (5, 8, 31, 224):   # ceil mode, against torch
        want = torch.nn.functional.max_pool2d(
            torch.nn.functional.conv2d(torch.zeros(1, 3, size, size), torch.zeros(8, 3, 3, 3), stride=2, padding=1),
            2, 2, ceil_mode=True).shape[-1]
        assert S.substitute(p[2], {"h": size}) == want, size


def test_reshape_of_exporter_shape_chain_keeps_symbols_and_infers_minus_one():
    """x [batch, seq, 768] -> reshape(concat(shape[0], shape[1], 12, -1)): [batch, seq, 12, 64]."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "two"], ["bs"]),
             helper.make_node("Concat", ["bs", "tail"], ["dims"], axis=0),
             helper.make_node("Reshape", ["x", "dims"], ["y"]),
             helper.make_node("Shape", ["y"], ["ys"]),
             helper.make_node("ReduceProd", ["ys"], ["n"], keepdims=0)]
    inits = [("zero", np.array([0], np.int64)), ("two", np.array([2], np.int64)),
             ("tail", np.array([12, -1], np.int64))]
    net = kilnrt.to_network(model(nodes, [vi("x", ["batch", "seq", 768])],
                                  [vi("y", None), vi("n", None, TensorProto.INT64)], inits))
    y = net.tensors["y"]
    assert y.shape == ("batch", "seq", 12, 64)
    info = kilnrt.network.infer.tensor_info(net, net.tensors["n"])
    assert sympy.expand(info.value.reshape(-1)[0] - 768 * batch * seq) == 0


def test_data_dependent_size_is_a_fresh_symbol():
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Shape", ["nz"], ["s"])]
    net = kilnrt.to_network(model(nodes, [vi("x", ["n", 4])], [vi("s", None, TensorProto.INT64)]))
    nz = net.tensors["nz"]
    assert nz.shape == (2, -1)
    assert S.is_data_dependent(nz.symbolic_shape[1])


def test_profile_range_resolves_min_of_a_position_table():
    """CLIP's text encoder slices a 77-row position table to the sequence length: the dim is
    Min(77, seq) until a profile keeps seq at most 77, then it is seq."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["len"], axis=0),
             helper.make_node("Slice", ["table", "zero", "len"], ["pos"]),
             helper.make_node("Add", ["x", "pos"], ["y"])]
    inits = [("one", np.array([1], np.int64)), ("zero", np.array([0], np.int64)),
             ("table", RNG.standard_normal((77, 16)).astype(np.float32))]
    m = model(nodes, [vi("x", ["batch", "seq", 16])], [vi("y", None)], inits)
    net = kilnrt.to_network(m)
    assert net.tensors["pos"].symbolic_shape[0] == sympy.Min(77, seq)
    assert net.tensors["y"].shape == ("batch", "seq", 16)
    net.symbol_ranges = {"seq": (1, 77)}
    assert net.tensors["pos"].shape == ("seq", 16)
    engine = kilnrt.build(m, profiles={"x": [(1, 1, 16), (2, 8, 16), (4, 77, 16)]})
    sess = ort.InferenceSession(m.SerializeToString())
    for shape in [(1, 1, 16), (3, 77, 16), (2, 9, 16)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(engine.run({"x": x})["y"], sess.run(None, {"x": x})[0], rtol=1e-6)


def test_strided_convolution_front_end_with_a_long_receptive_field():
    """wav2vec2's feature encoder: strided 1-D convolutions whose receptive field is longer than
    any small placeholder size; dynamic batch and samples."""
    w1 = RNG.standard_normal((8, 1, 10)).astype(np.float32)
    w2 = RNG.standard_normal((8, 8, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[5]),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], strides=[2]),
             helper.make_node("Transpose", ["c2"], ["y"], perm=[0, 2, 1])]
    m = model(nodes, [vi("x", ["batch", 1, "samples"])], [vi("y", None)], [("w1", w1), ("w2", w2)])
    net = kilnrt.to_network(m)
    assert len(net.outputs[0].shape) == 3 and net.outputs[0].shape[2] == 8
    engine = kilnrt.build(m, profiles={"x": [(1, 1, 400), (2, 1, 1600), (4, 1, 16000)]})
    sess = ort.InferenceSession(m.SerializeToString())
    for shape in [(1, 1, 400), (3, 1, 4001)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        got, want = engine.run({"x": x})["y"], sess.run(None, {"x": x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_rule_that_breaks_inside_the_profile_is_a_build_error():
    m = model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[5, 5], strides=[2, 2])],
              [vi("x", ["batch", 3, "h", "w"])], [vi("y", None)])
    with pytest.raises(ShapeError) as err:
        kilnrt.build(m, profiles={"x": [(1, 3, 4, 8), (2, 3, 16, 16), (4, 3, 32, 32)]})
    text = str(err.value)
    assert "MaxPool_0" in text and "h = 4" in text and "h in [4, 32]" in text and "h >= 5" in text
    kilnrt.build(m, profiles={"x": [(1, 3, 5, 8), (2, 3, 16, 16), (4, 3, 32, 32)]})   # from 5 on it holds


def test_expression_trees_evaluate_like_sympy():
    exprs = [sympy.floor((seq - 3) / 2) + 1, sympy.ceiling(seq / 3) * batch, sympy.Min(77, seq) + sympy.Max(1, h - 4),
             sympy.Mod(seq, 7) * 2, sympy.Piecewise((seq - 1, sympy.Ge(2 * seq, 9)), (seq, True))]
    for e in exprs:
        tree = S.to_tree(e)
        for b, s, hh in [(1, 1, 1), (3, 17, 9), (64, 512, 224)]:
            want = int(e.subs({batch: b, seq: s, h: hh}))
            assert S.evaluate(tree, {"batch": b, "seq": s, "h": hh}) == want, (e, b, s, hh)


def test_shape_of_an_input_with_unnamed_dynamic_dims():
    net = Network("n")
    x = net.add_input("x", DataType.FLOAT, (-1, 4))
    s = net.add_layer(LayerKind.SHAPE, ShapeParams(), [x]).outputs[0]
    y = net.add_layer(LayerKind.SHUFFLE, ShuffleParams(reshape_dims=(2, -1)), [x]).outputs[0]
    net.mark_output(y)
    assert s.shape == (2,)
    assert y.shape == (2, "2*x:0")


def _two_inputs_sharing_seq():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    return model(nodes, [vi("a", ["batch", "seq"]), vi("b", ["batch", "seq"])], [vi("y", None)])


def test_a_profile_giving_one_symbol_two_ranges_is_refused():
    with pytest.raises(ShapeError) as err:
        kilnrt.build(_two_inputs_sharing_seq(), profiles={"a": [(1, 2), (2, 8), (4, 16)], "b": [(1, 2), (2, 8), (4, 32)]})
    assert ("gives the dynamic dim 'seq' min/opt/max 2/8/16 through input 'a' (dim 1) but 2/8/32 through input 'b' "
            "(dim 1)") in str(err.value)


def test_a_symbol_bound_to_two_sizes_names_both_and_the_range():
    engine = kilnrt.build(_two_inputs_sharing_seq(), profiles={"a": [(1, 2), (2, 8), (4, 16)],
                                                               "b": [(1, 2), (2, 8), (4, 16)]})
    a = RNG.standard_normal((2, 5)).astype(np.float32)
    b = RNG.standard_normal((2, 6)).astype(np.float32)
    with pytest.raises(ShapeError) as err:
        engine.run({"a": a, "b": b})
    assert str(err.value).endswith("inputs 'a' (dim 1 = 5) and 'b' (dim 1 = 6) share the dynamic dim 'seq', so they "
                                   "must have the same size there (profile 0 allows seq in [2, 16])")


@pytest.mark.parametrize("tree", [["pow", {"s": "seq"}, 10 ** 9], ["frac", 1, 0], ["floor"], ["exec", 1],
                                  ["add", "x"], "seq", {"s": 3}, ["piecewise", [1]],
                                  ["max", 1, 2, ["ceil", 1, 2]]])
def test_a_malformed_expression_tree_from_a_plan_is_refused(tree):
    nested = 1
    for _ in range(200):
        nested = ["add", nested, 1]
    for bad in (tree, nested):
        with pytest.raises((ValueError, KeyError, TypeError)):
            S.evaluate(bad, {"seq": 4})


def test_a_plan_with_malformed_dims_runs_its_layers_instead():
    """ShapeProgram treats a dim it cannot evaluate as unknown: the output shape is then learned
    by running, never a crash or a hang at load."""
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["n", 4])], [vi("y", None)])
    engine = kilnrt.build(m, profiles={"x": [(1, 4), (2, 4), (8, 4)]})
    engine.tensors["y"]["dims"] = [["pow", {"s": "n"}, 10 ** 12], 4]
    loaded = kilnrt.Engine.deserialize(engine.serialize())
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.run({"x": x})["y"], np.maximum(x, 0))
    assert loaded.program.shapes.shape_of("y", {"n": 3}) is None
