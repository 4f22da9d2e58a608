"""Malformed ONNX models that ONNX Runtime refuses are refused by kilnrt's importer too, with
a KilnError whose code and message name the node; each case is checked against
onnxruntime.InferenceSession (both must refuse)."""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper

import kilnrt
from kilnrt.errors import ErrorCode, KilnError

X = helper.make_tensor_value_info("x", TP.FLOAT, [2, 3])
Y = helper.make_tensor_value_info("y", TP.FLOAT, [2, 3])
C = helper.make_tensor_value_info("c", TP.BOOL, [])
RNG = np.random.default_rng()


def model(nodes, inputs=(X,), outputs=(Y,), opset=17, value_info=()):
    graph = helper.make_graph(nodes, "g", list(inputs), list(outputs), value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def relu_chain(h_type=TP.FLOAT, h_shape=(2, 3), out=Y):
    return model([helper.make_node("Relu", ["x"], ["h"], name="first"), helper.make_node("Relu", ["h"], ["y"], name="second")],
                 outputs=[out], value_info=[helper.make_tensor_value_info("h", h_type, list(h_shape))])


def duplicate_axis():
    node = helper.make_node("Softmax", ["x"], ["y"], name="soft", axis=1)
    node.attribute.append(helper.make_attribute("axis", 0))
    return model([node])


def branch(name, op, out_type=TP.FLOAT, out="o", count=1, **attrs):
    nodes = [helper.make_node(op, ["x"], [f"{out}{i}"], **attrs) for i in range(count)]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{out}{i}", out_type, [2, 3])
                                               for i in range(count)])


def if_model(then_branch, else_branch):
    attrs = {"then_branch": then_branch}
    if else_branch is not None:
        attrs["else_branch"] = else_branch
    return model([helper.make_node("If", ["c"], ["y"], name="choose", **attrs)], inputs=[C, X])


def duplicate_in_branch():
    g = branch("else", "Softmax", axis=1)
    g.node[0].attribute.append(helper.make_attribute("axis", 0))
    return if_model(branch("then", "Relu"), g)


def dangling_branch():
    g = branch("else", "Neg")
    g.node[0].input[0] = "nowhere"
    return if_model(branch("then", "Relu"), g)


CASES = {
    "duplicate attribute": (duplicate_axis, ErrorCode.INVALID_NODE,
                            r"node 'soft' \(Softmax, opset 17\): attribute 'axis' appears 2 times"),
    "duplicate attribute in an If branch": (duplicate_in_branch, ErrorCode.INVALID_NODE,
                                            r"node 'choose' \(If, opset 17\): attribute 'axis' appears 2 times in node "
                                            r"'Softmax_0' of its else_branch"),
    "opset 1": (lambda: model([helper.make_node("Relu", ["x"], ["y"], name="r")], opset=1), ErrorCode.UNSUPPORTED_NODE,
                r"node 'r' \(Relu, opset 1\): opset 1 gives Relu-1, a legacy form"),
    "opset 5": (lambda: model([helper.make_node("Add", ["x", "x"], ["y"], name="add")], opset=5),
                ErrorCode.UNSUPPORTED_NODE, r"node 'add' \(Add, opset 5\): opset 5 gives Add-1"),
    "opset newer than onnx": (lambda: model([helper.make_node("Relu", ["x"], ["y"])], opset=onnx.defs.onnx_opset_version() + 2),
                              ErrorCode.INVALID_MODEL, r"newer than the installed onnx knows"),
    "op not in the model's opset": (lambda: model([helper.make_node("Gelu", ["x"], ["y"], name="gelu")], opset=17),
                                    ErrorCode.UNSUPPORTED_NODE, r"node 'gelu' \(Gelu, opset 17\).*opset 20"),
    "value_info type contradicts the node": (lambda: relu_chain(h_type=TP.INT64), ErrorCode.INVALID_MODEL,
                                             r"node 'first' \(Relu\): value_info 'h' says INT64, but the node makes FLOAT"),
    "graph output type contradicts the node": (lambda: relu_chain(out=helper.make_tensor_value_info("y", TP.INT64, [2, 3])),
                                               ErrorCode.INVALID_MODEL,
                                               r"node 'second' \(Relu\): graph output 'y' says INT64"),
    "If branches with different output counts": (lambda: if_model(branch("then", "Relu"), branch("else", "Neg", count=2)),
                                                 ErrorCode.INVALID_NODE, r"node 'choose' \(If.*1 and 2 outputs"),
    "If branches with different types": (lambda: if_model(branch("then", "Relu"), branch("else", "Cast", TP.INT64, to=TP.INT64)),
                                         ErrorCode.INVALID_NODE, r"node 'choose' \(If.*FLOAT in then_branch but .*INT64"),
    "If without else_branch": (lambda: if_model(branch("then", "Relu"), None), ErrorCode.INVALID_NODE,
                               r"node 'choose' \(If.*'else_branch' are required"),
    "If branch reading an undefined tensor": (dangling_branch, ErrorCode.INVALID_NODE,
                                              r"node 'choose' \(If.*'nowhere' is not produced"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_what_onnx_runtime_refuses_kilnrt_refuses(case):
    make, code, message = CASES[case]
    data = make().SerializeToString()
    with pytest.raises(Exception):   # onnxruntime's own error types
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    with pytest.raises(KilnError, match=message) as info:
        kilnrt.build(data)
    codes = [e.code for e in getattr(info.value, "errors", [info.value])]
    assert code in codes


@pytest.mark.parametrize("h_shape", [(4, 5), (2, 3, 4)])
def test_a_contradicting_value_info_shape_warns_and_runs_as_onnx_runtime_does(h_shape, caplog):
    data = relu_chain(h_shape=h_shape).SerializeToString()
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with caplog.at_level(logging.WARNING, logger="kilnrt.onnx"):
        engine = kilnrt.build(data)
    assert f"value_info 'h' is declared with shape {list(h_shape)}, but the model makes [2, 3]" in caplog.text
    np.testing.assert_allclose(engine.run({"x": x})["y"], want, rtol=1e-6)


def test_an_opset_6_model_onnx_runtime_runs_still_imports():
    """Opset 6 is the oldest ONNX's conformance suite uses (its pytorch-converted cases); kilnrt
    also runs their Add-6 with the broadcast attribute, which ONNX Runtime has no kernel for."""
    data = model([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Sigmoid", ["h"], ["y"])], opset=6)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    want = ort.InferenceSession(data.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(kilnrt.build(data).run({"x": x})["y"], want, rtol=1e-6)
