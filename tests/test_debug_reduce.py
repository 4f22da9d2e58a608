"""kilnrt debug reduce: shrink a failing ONNX model to the smallest subgraph that still fails.
One node is made to fail by breaking one CPU tactic (a wrong result, or no tactic at all)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kilnrt
from kilnrt.cli.main import main
from kilnrt.debugging.precision import build_reduced
from kilnrt.debugging.reduce import Reference, error_check, mismatch_check, reduce_model, subgraph
from kilnrt.debugging.reference import onnxruntime_run
from kilnrt.errors import KilnError
from kilnrt.kernels.registry import all_tactics
from kilnrt.testing import assert_close, fresh_seed, seeded_inputs


def branchy(seed: int) -> onnx.ModelProto:
    """x @ W + b -> Relu -> (Sigmoid, Tanh) -> Mul -> Softmax -> + Relu's output -> Reshape
    (shape from a Constant node) -> * c: eleven nodes, two branches, a residual."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "c")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="MatMul_0"),
             helper.make_node("Add", ["h", "b"], ["h2"], name="Add_1"),
             helper.make_node("Relu", ["h2"], ["r"], name="Relu_2"),
             helper.make_node("Sigmoid", ["r"], ["s"], name="Sigmoid_3"),
             helper.make_node("Tanh", ["r"], ["t"], name="Tanh_4"),
             helper.make_node("Mul", ["s", "t"], ["m"], name="Mul_5"),
             helper.make_node("Softmax", ["m"], ["sm"], name="Softmax_6", axis=-1),
             helper.make_node("Add", ["sm", "r"], ["a"], name="Add_7"),
             helper.make_node("Constant", [], ["shape"], name="Constant_8",
                              value=numpy_helper.from_array(np.array([64], np.int64))),
             helper.make_node("Reshape", ["a", "shape"], ["flat"], name="Reshape_9"),
             helper.make_node("Mul", ["flat", "c"], ["y"], name="Mul_10")]
    graph = helper.make_graph(nodes, "branchy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture()
def model(tmp_path):
    seed = fresh_seed()
    path = tmp_path / "branchy.onnx"
    onnx.save(branchy(seed), path)
    return str(path), seed


@pytest.fixture()
def wrong_softmax(monkeypatch):
    """The CPU softmax tactic adds 0.1 to every probability."""
    tactic = all_tactics()["cpu.softmax.torch"]
    right = tactic.fn
    monkeypatch.setattr(tactic, "fn", lambda p, x: right(p, x) + 0.1)


@pytest.fixture()
def no_softmax(monkeypatch):
    """No CPU tactic supports softmax: building a model with one raises NO_TACTIC."""
    monkeypatch.setattr(all_tactics()["cpu.softmax.torch"], "_supports", lambda layer, ctx: False)


def _build(model):
    return build_reduced(kilnrt.to_network(model), None, device="cpu")


def test_subgraph_inputs_carry_the_whole_models_values(model):
    """A middle range: its inputs are fed with the reference run's values and ONNX Runtime on
    the subgraph gives back the whole model's values of its outputs; the Constant node's
    output, an integer tensor, becomes an initializer."""
    path, seed = model
    proto = onnx.load(path)
    ref = Reference.run(proto, dict(seeded_inputs(proto, seed)))
    sub, feeds = subgraph(ref, [5, 6, 7, 9])                  # Mul_5, Softmax_6, Add_7, Reshape_9
    assert [i.name for i in sub.graph.input] == ["s", "t", "r"] and set(feeds) == {"s", "t", "r"}
    assert [o.name for o in sub.graph.output] == ["flat"]     # read by Mul_10, outside
    assert "shape" in {i.name for i in sub.graph.initializer}
    got = onnxruntime_run(sub, feeds)
    assert_close(got["flat"], ref.values["flat"], rtol=1e-6, atol=1e-6, seed=seed)
    assert_close(_build(sub).run(feeds)["flat"], ref.values["flat"], rtol=1e-5, atol=1e-5, seed=seed)


def test_reduce_finds_the_wrong_node(model, wrong_softmax):
    path, seed = model
    proto = onnx.load(path)
    ref = Reference.run(proto, dict(seeded_inputs(proto, seed)))
    fails = mismatch_check(_build, 1e-3, 1e-4)
    result = reduce_model(ref, fails)
    assert [proto.graph.node[i].name for i in result.nodes] == ["Softmax_6"]
    onnx.checker.check_model(result.model)
    assert fails(result.model, result.feeds)
    assert result.checks <= 2 * 4 + 4                       # two bisections of 11 nodes, then pruning


def test_reduce_needs_a_failing_model(model):
    path, seed = model
    proto = onnx.load(path)
    ref = Reference.run(proto, dict(seeded_inputs(proto, seed)))
    with pytest.raises(KilnError, match="nothing to reduce"):
        reduce_model(ref, mismatch_check(_build, 1e-3, 1e-4))


def test_cli_reduce_mismatch(model, wrong_softmax, tmp_path, capsys):
    path, seed = model
    out = tmp_path / "small.onnx"
    assert main(["debug", "reduce", path, "-o", str(out), "--seed", str(seed), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "reduced to 1 of 11 node(s)" in text and "Softmax_6 (Softmax)" in text
    reduced = onnx.load(str(out))
    assert [n.op_type for n in reduced.graph.node] == ["Softmax"]
    feeds = dict(np.load(out.with_suffix(".npz")))
    assert set(feeds) == {"m"}
    wrong = _build(reduced).run(feeds)["sm"]
    assert not np.allclose(wrong, onnxruntime_run(reduced, feeds)["sm"], rtol=1e-3, atol=1e-4)


def test_cli_reduce_build_error(model, no_softmax, tmp_path, capsys):
    path, seed = model
    out = tmp_path / "small.onnx"
    assert main(["debug", "reduce", path, "-o", str(out), "--check", "error", "--device", "cpu",
                 "--error-contains", "softmax"]) == 0
    text = capsys.readouterr().out
    assert "raises BuildError[NO_TACTIC]" in text and "reduced to 1 of 11 node(s)" in text
    assert [n.name for n in onnx.load(str(out)).graph.node] == ["Softmax_6"]


def test_cli_reduce_error_check_refuses_a_model_that_builds(model, capsys):
    path, _ = model
    assert main(["debug", "reduce", path, "--check", "error", "--device", "cpu"]) == 1
    assert "builds and runs without an error; nothing to reduce" in capsys.readouterr().err


def test_error_check_matches_the_signature(model, no_softmax):
    path, seed = model
    proto = onnx.load(path)
    feeds = dict(seeded_inputs(proto, seed))
    assert error_check(_build, "BuildError[NO_TACTIC]")(proto, feeds)
    assert not error_check(_build, "ShapeError[SHAPE]")(proto, feeds)
    assert not error_check(_build, None, "no such text")(proto, feeds)


def test_search_prunes_a_branch_between_two_needed_nodes(model):
    """A failure that needs Sigmoid_3 and Mul_5 together: bisection keeps Sigmoid_3..Mul_5, and
    pruning drops Tanh_4 (Mul_5 then reads Tanh's output as an input)."""
    path, seed = model
    proto = onnx.load(path)
    ref = Reference.run(proto, dict(seeded_inputs(proto, seed)))
    result = reduce_model(ref, lambda m, feeds: {"Sigmoid_3", "Mul_5"} <= {n.name for n in m.graph.node})
    assert [proto.graph.node[i].name for i in result.nodes] == ["Sigmoid_3", "Mul_5"]
    assert {i.name for i in result.model.graph.input} == {"r", "t"}
    assert any("without node Tanh_4" in s and "FAILS" in s for s in result.steps)
