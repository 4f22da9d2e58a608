"""Import errors: every unsupported node is reported before anything is built, once, with
its op type, node name, opset and a hint.  Messages are asserted word for word where it
matters."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import kilnrt
from kilnrt.errors import ErrorCode, ImportErrors, KilnError, UnsupportedNodeError
from models import make_model


def vi(name: str, dtype: int = TensorProto.FLOAT, shape=(2, 3)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def import_error(model) -> ImportErrors:
    with pytest.raises(ImportErrors) as info:
        kilnrt.build(model)
    return info.value


def test_unknown_op_names_op_node_opset_and_a_hint():
    model = make_model([helper.make_node("FooBar", ["x"], ["y"], name="foo_1")], [vi("x")], [vi("y")], opset=17)
    err = import_error(model)
    assert isinstance(err, KilnError)
    (one,) = err.errors
    assert isinstance(one, UnsupportedNodeError)
    assert (one.code, one.node, one.op, one.opset) == (ErrorCode.UNSUPPORTED_NODE, "foo_1", "FooBar", 17)
    text = str(err)
    assert "[UNSUPPORTED_NODE] node 'foo_1' (FooBar, opset 17): op FooBar is not supported (1 node: foo_1)" in text
    assert "nearest supported ops:" in text or "add a plugin" in text


def test_typo_of_a_supported_op_suggests_it():
    model = make_model([helper.make_node("Relux", ["x"], ["y"], name="r")], [vi("x")], [vi("y")])
    assert "nearest supported ops: Relu" in str(import_error(model))


def test_op_from_a_newer_opset_says_which_opset_to_use():
    model = make_model([helper.make_node("Gelu", ["x"], ["y"], name="gelu")], [vi("x")], [vi("y")], opset=17)
    text = str(import_error(model))
    assert "node 'gelu' (Gelu, opset 17)" in text
    assert "kilnrt supports Gelu from opset 20; the model uses opset 17: re-export it with opset >= 20" in text


def test_unsupported_attribute_names_it_and_the_supported_ones():
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1, temperature=2.0)],
                       [vi("x")], [vi("y")], opset=13)
    err = import_error(model)
    (one,) = err.errors
    assert (one.code, one.node, one.op, one.opset) == (ErrorCode.UNSUPPORTED_NODE_ATTR, "sm", "Softmax", 13)
    assert ("[UNSUPPORTED_NODE_ATTR] node 'sm' (Softmax, opset 13): attribute 'temperature' is not supported; "
            "supported attributes: axis") in str(err)


def test_attribute_of_an_op_without_attributes():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu", slope=0.1)], [vi("x")], [vi("y")])
    assert "attribute 'slope' is not supported; supported attributes: none" in str(import_error(model))


def test_several_unsupported_nodes_are_listed_in_one_error_with_counts():
    nodes = [helper.make_node("FooBar", ["x"], ["a"], name="f1"),
             helper.make_node("FooBar", ["a"], ["b"], name="f2"),
             helper.make_node("FooBar", ["b"], ["c"], name="f3"),
             helper.make_node("Relux", ["c"], ["d"], name="r1"),
             helper.make_node("Relu", ["d"], ["e"], name="ok"),
             helper.make_node("Relu", ["e"], ["y"], name="r2", slope=1.0)]
    err = import_error(make_model(nodes, [vi("x")], [vi("y")]))
    assert err.code == ErrorCode.UNSUPPORTED_NODE
    assert len(err.errors) == 3
    text = str(err)
    assert text.startswith("3 problem(s) found while importing the model:")
    assert "op FooBar is not supported (3 nodes: f1, f2, f3)" in text
    assert "op Relux is not supported (1 node: r1)" in text
    assert "node 'r2' (Relu, opset 17): attribute 'slope' is not supported" in text
    assert "'ok'" not in text


def test_many_nodes_of_one_unknown_op_are_abbreviated():
    nodes, prev = [], "x"
    for i in range(8):
        out = "y" if i == 7 else f"t{i}"
        nodes.append(helper.make_node("FooBar", [prev], [out], name=f"foo_{i}"))
        prev = out
    text = str(import_error(make_model(nodes, [vi("x")], [vi("y")])))
    assert "op FooBar is not supported (8 nodes: foo_0, foo_1, foo_2, foo_3, foo_4, ...)" in text


def test_unnamed_node_is_named_after_its_op_and_index():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("FooBar", ["a"], ["y"])]
    (one,) = import_error(make_model(nodes, [vi("x")], [vi("y")])).errors
    assert one.node == "FooBar_1"


def test_custom_domain_op_names_the_domain():
    model = make_model([helper.make_node("Foo", ["x"], ["y"], name="custom", domain="com.acme")], [vi("x")], [vi("y")])
    model.opset_import.append(helper.make_opsetid("com.acme", 1))
    assert "op Foo (domain 'com.acme') is not supported (1 node: custom)" in str(import_error(model))


def test_unsupported_input_dtype():
    model = make_model([helper.make_node("Identity", ["x"], ["y"], name="id")],
                       [vi("x", TensorProto.STRING)], [vi("y", TensorProto.STRING)])
    with pytest.raises(UnsupportedNodeError) as info:
        kilnrt.build(model)
    assert info.value.code == ErrorCode.UNSUPPORTED_NODE_DATATYPE
    assert "graph input 'x'" in str(info.value) and "STRING is not supported" in str(info.value)


def test_input_without_a_shape():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [x], [vi("y")])
    with pytest.raises(UnsupportedNodeError) as info:
        kilnrt.build(model)
    assert info.value.code == ErrorCode.UNSUPPORTED_NODE_SHAPE and "graph input 'x' has no shape" in str(info.value)


def test_opset_newer_than_onnx_knows():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [vi("x")], [vi("y")], opset=99)
    with pytest.raises(KilnError) as info:
        kilnrt.build(model)
    assert info.value.code == ErrorCode.INVALID_MODEL
    assert "the model uses opset 99, newer than the installed onnx knows" in str(info.value)


def test_input_that_nothing_produces():
    model = make_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")], [vi("x")], [vi("y")])
    with pytest.raises(KilnError) as info:
        kilnrt.build(model)
    assert "node 'add' (Add, opset 17)" in str(info.value)
    assert "input 'ghost' is not produced by any earlier node, initializer or graph input" in str(info.value)


def test_missing_required_input():
    model = make_model([helper.make_node("Add", ["x"], ["y"], name="add")], [vi("x")], [vi("y")])
    with pytest.raises(KilnError) as info:
        kilnrt.build(model)
    assert info.value.code == ErrorCode.INVALID_NODE and "node 'add' (Add" in str(info.value)


@pytest.mark.parametrize("source,words", [
    ("/no/such/model.onnx", "ONNX file '/no/such/model.onnx' does not exist"),
    (b"definitely not protobuf \xff\xfe", "the bytes given are not an ONNX model"),
    (12345, "expected an ONNX path, bytes or onnx.ModelProto, got int"),
])
def test_bad_model_sources(source, words):
    with pytest.raises(KilnError) as info:
        kilnrt.build(source)
    assert words in str(info.value)


def test_bad_build_arguments():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [vi("x")], [vi("y")])
    with pytest.raises(KilnError, match="device='tpu'; supported: 'cpu', 'cuda'"):
        kilnrt.build(model, device="tpu")
    with pytest.raises(KilnError, match="names 'nope', which is not a network input; inputs: x"):
        kilnrt.build(model, profiles={"nope": (2, 3)})


def test_errors_are_raised_before_any_layer_is_built(monkeypatch):
    """check_model runs first: an unsupported node late in the graph stops the import of the
    supported ones before them (nothing is half-imported)."""
    import kilnrt.onnx.parser as parser

    calls = []
    real = parser.import_node
    monkeypatch.setattr(parser, "import_node", lambda *a, **k: (calls.append(a[1].name), real(*a, **k)))
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="first"), helper.make_node("FooBar", ["a"], ["y"], name="late")]
    import_error(make_model(nodes, [vi("x")], [vi("y")]))
    assert calls == []


def test_good_model_still_builds():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [vi("x")], [vi("y")])
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(kilnrt.build(model).run({"x": x})["y"], np.maximum(x, 0))
