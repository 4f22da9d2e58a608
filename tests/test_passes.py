"""Optimization passes: on random small networks every pass of the pipeline (and the
whole pipeline) computes the same function as before; each clean-up rule fires where it
should and a near miss does not."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kilnrt.network.dtypes import DataType, torch_to_numpy
from kilnrt.network.graph import Network
from kilnrt.testing import run_reference as propagate
from kilnrt.network.layers import (ActivationParams, ActivationType, CastParams, ConstantParams,
                                   ElementWiseOperation, ElementWiseParams, IdentityParams, LayerKind,
                                   ShuffleParams, UnaryOperation, UnaryParams)
from kilnrt.optimize import PIPELINE, optimize
from kilnrt.optimize.passes.cleanup import eliminate_dead_layers, fold_constants, remove_identities
from kilnrt.testing import assert_close, seeded_inputs

from decompositions import DECOMPOSITIONS, Builder

B = "batch"   # the symbolic dim of a random network's inputs, when it has one


def evaluate(net: Network, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a network with the CPU reference kernels (no optimization): its outputs, in order."""
    values = propagate(net, {k: torch.from_numpy(v) for k, v in feeds.items()})
    return [torch_to_numpy(values[t.name]) for t in net.outputs]


def count(net: Network, kind: LayerKind) -> int:
    return sum(layer.kind == kind for layer in net.layers)


# ----------------------------------------------------------------------------- random networks
class RandomNetwork:
    """A network drawn by hypothesis, with a short repr for failure reports."""

    def __init__(self, net: Network, batch: int) -> None:
        self.net, self.batch = net, batch

    def __repr__(self) -> str:
        lines = [f"inputs: {[(t.name, t.shape) for t in self.net.inputs]}  (batch={self.batch})"]
        for layer in self.net.layers:
            ins = ", ".join("-" if t is None else t.name for t in layer.inputs)
            params = "" if layer.kind == LayerKind.CONSTANT else f" {layer.params}"
            shape = layer.params.weights.shape if layer.kind == LayerKind.CONSTANT else ""
            lines.append(f"  {layer.name}: {layer.kind.value}{shape}({ins}){params}")
        lines.append(f"outputs: {[t.name for t in self.net.outputs]}")
        return "\n".join(lines)


UNARY_OPS = [UnaryOperation.ABS, UnaryOperation.NEG, UnaryOperation.SIN, UnaryOperation.COS, UnaryOperation.ERF,
             UnaryOperation.FLOOR]
ACTIVATIONS = [(ActivationType.RELU, 0.0, 0.0), (ActivationType.SIGMOID, 0.0, 0.0), (ActivationType.TANH, 0.0, 0.0),
               (ActivationType.LEAKY_RELU, 0.1, 0.0), (ActivationType.CLIP, -0.5, 0.5),
               (ActivationType.GELU_ERF, 0.0, 0.0), (ActivationType.SILU, 0.0, 0.0)]
BINARY_OPS = [ElementWiseOperation.SUM, ElementWiseOperation.SUB, ElementWiseOperation.PROD,
              ElementWiseOperation.MAX, ElementWiseOperation.MIN]


@st.composite
def random_networks(draw, max_layers: int = 12) -> RandomNetwork:
    """Inputs of rank 1-3 (maybe with a symbolic batch dim), then a random mix of constant,
    elementwise, unary, activation, identity, cast and shuffle layers, and activations written
    out as arithmetic (some with a wrong constant: near misses); one to three outputs.
    Layers no output reads stay in the network: they are the dead branches."""
    net = Network("random")
    symbolic = draw(st.booleans(), label="symbolic batch")
    batch = draw(st.integers(1, 3), label="batch")
    rank = draw(st.integers(1, 3), label="rank")
    dims = [B if symbolic else batch] + [draw(st.integers(1, 4)) for _ in range(rank - 1)]
    pool: list[tuple] = []                # (tensor, dims), dims with B for the batch dim
    for i in range(draw(st.integers(1, 2), label="inputs")):
        pool.append((net.add_input(f"x{i}", DataType.FLOAT, tuple(dims)), tuple(dims)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1), label="weights seed"))

    def constant_like(shape: tuple) -> tuple:
        cdims = tuple(1 if d == B or draw(st.booleans()) else d for d in shape)
        value = rng.standard_normal(cdims).astype(np.float32)
        layer = net.add_layer(LayerKind.CONSTANT, ConstantParams(value), [])
        return layer.outputs[0], cdims

    def broadcast(a: tuple, b: tuple) -> tuple:
        return tuple(x if y == 1 else y if x == 1 else x for x, y in zip(a, b))

    for _ in range(draw(st.integers(1, max_layers), label="layers")):
        x, xd = draw(st.sampled_from(pool))
        kind = draw(st.sampled_from(["const", "binary", "unary", "activation", "identity", "cast", "shuffle",
                                     "decomposed"]))
        if kind == "decomposed":
            decompose, _, wrong = draw(st.sampled_from(DECOMPOSITIONS))
            kw = {"k": wrong} if draw(st.booleans()) else {}
            pool.append((decompose(Builder(net, draw(st.booleans())), x, **kw), xd))
            continue
        if kind == "const":
            pool.append(constant_like(xd))
            continue
        if kind == "binary":
            op = draw(st.sampled_from(BINARY_OPS))
            same = [(t, d) for t, d in pool if d == xd]
            if draw(st.booleans()) and len(same) > 1:
                y, yd = draw(st.sampled_from(same))
            else:
                y, yd = constant_like(xd)
            a, b = ((x, y) if draw(st.booleans()) else (y, x))
            out = net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(op), [a, b]).outputs[0]
            pool.append((out, broadcast(xd, yd)))
        elif kind == "unary":
            op = draw(st.sampled_from(UNARY_OPS))
            pool.append((net.add_layer(LayerKind.UNARY, UnaryParams(op), [x]).outputs[0], xd))
        elif kind == "activation":
            act, alpha, beta = draw(st.sampled_from(ACTIVATIONS))
            pool.append((net.add_layer(LayerKind.ACTIVATION, ActivationParams(act, alpha, beta), [x]).outputs[0], xd))
        elif kind == "identity":
            pool.append((net.add_layer(LayerKind.IDENTITY, IdentityParams(), [x]).outputs[0], xd))
        elif kind == "cast":
            pool.append((net.add_layer(LayerKind.CAST, CastParams(DataType.FLOAT), [x]).outputs[0], xd))
        else:
            shuffle = draw(st.sampled_from(["transpose", "flatten_tail", "flatten"]))
            if shuffle == "transpose" and len(xd) > 1:
                perm = tuple(draw(st.permutations(range(len(xd)))))
                params, od = ShuffleParams(first_transpose=perm), tuple(xd[p] for p in perm)
            elif shuffle == "flatten_tail" and len(xd) > 1 and B not in xd[1:]:
                params, od = ShuffleParams(reshape_dims=(0, -1)), (xd[0], int(np.prod(xd[1:])))
            elif B not in xd:
                params, od = ShuffleParams(reshape_dims=(-1,)), (int(np.prod(xd)),)
            else:
                continue
            pool.append((net.add_layer(LayerKind.SHUFFLE, params, [x]).outputs[0], od))
    produced = [(t, d) for t, d in pool if t.producer is not None]
    if not produced:
        produced = [(net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [pool[0][0]])
                     .outputs[0], pool[0][1])]
    outputs = [produced[-1][0]] + draw(st.lists(st.sampled_from([t for t, _ in produced]), max_size=2))
    for t in outputs:
        net.mark_output(t)
    return RandomNetwork(net, batch)


def check_same_function(before: Network, after: Network, batch: int) -> None:
    assert [t.name for t in after.outputs] == [t.name for t in before.outputs]
    assert [t.name for t in after.inputs] == [t.name for t in before.inputs]
    feeds = seeded_inputs(before, shapes={B: batch})
    expected = evaluate(before, feeds)
    actual = evaluate(after, feeds)
    for t, a, e in zip(before.outputs, actual, expected):
        assert a.dtype == e.dtype, t.name
        assert_close(a, e, rtol=1e-5, atol=1e-6, seed=feeds.seed, name=t.name)


PASSES = {fn.__name__: fn for _, fn, _ in PIPELINE}
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(PASSES))
@HYPOTHESIS
@given(case=random_networks())
def test_pass_preserves_the_function(name, case):
    before = case.net
    reference = before.clone()
    after = PASSES[name](before, {})
    check_same_function(reference, after, case.batch)
    check_same_function(reference, before, case.batch)   # a pass never changes its input network


@HYPOTHESIS
@given(case=random_networks(), level=st.integers(0, 5))
def test_pipeline_preserves_the_function(case, level):
    reference = case.net.clone()
    check_same_function(reference, optimize(case.net, level), case.batch)


@HYPOTHESIS
@given(case=random_networks())
def test_cleanup_leaves_no_dead_identity_or_foldable_layer(case):
    net = optimize(case.net, 0)
    live = {t.name for t in net.outputs}
    for layer in reversed(net.layers):
        assert any(t.name in live for t in layer.outputs), f"dead layer {layer.name} survived"
        live.update(t.name for t in layer.inputs if t is not None)
    outputs = {t.name for t in net.outputs}
    for layer in net.layers:
        if layer.kind == LayerKind.IDENTITY:
            assert layer.outputs[0].name in outputs, f"identity {layer.name} survived"
        if layer.kind != LayerKind.CONSTANT:
            assert not all(t is not None and t.producer is not None and t.producer.kind == LayerKind.CONSTANT
                           for t in layer.inputs), f"{layer.name} reads only constants but was not folded"


# ----------------------------------------------------------------------------- rules fire / near misses
def constant(net: Network, value) -> object:
    return net.add_layer(LayerKind.CONSTANT, ConstantParams(np.asarray(value, np.float32)), []).outputs[0]


def binary(net: Network, op, a, b):
    return net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(op), [a, b]).outputs[0]


def test_fold_constants_folds_a_constant_subgraph():
    net = Network("fold")
    x = net.add_input("x", DataType.FLOAT, (B, 3))
    a, b = constant(net, [[1.0, 2.0, 3.0]]), constant(net, [[0.5, -1.0, 2.0]])
    ab = binary(net, ElementWiseOperation.PROD, a, b)                          # constant
    e = net.add_layer(LayerKind.UNARY, UnaryParams(UnaryOperation.NEG), [ab]).outputs[0]   # constant
    y = binary(net, ElementWiseOperation.SUM, x, e)
    net.mark_output(y)
    stats: dict = {}
    folded = fold_constants(net, stats)
    assert stats.get("fold_constants") == 2
    assert count(folded, LayerKind.UNARY) == 0
    assert count(folded, LayerKind.ELEMENTWISE) == 1
    value = folded.constant_value(folded.layers[-1].inputs[1])
    assert value is not None and np.array_equal(value, -np.array([[0.5, -2.0, 6.0]], np.float32))
    assert folded.layers[-1].origin == net.layers[-1].origin
    check_same_function(net, folded, 4)


def test_fold_constants_near_miss_keeps_layers_that_read_an_input():
    net = Network("nofold")
    x = net.add_input("x", DataType.FLOAT, (2, 3))
    y = binary(net, ElementWiseOperation.SUM, x, constant(net, [[1.0, 2.0, 3.0]]))
    net.mark_output(net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [y]).outputs[0])
    stats: dict = {}
    after = fold_constants(net, stats)
    assert stats.get("fold_constants", 0) == 0
    assert [l.kind for l in after.layers] == [l.kind for l in net.layers]


def test_fold_constants_keeps_a_zero_dim_constant_zero_dim():
    net = Network("scalar")
    x = net.add_input("x", DataType.FLOAT, (3,))
    s = net.add_layer(LayerKind.UNARY, UnaryParams(UnaryOperation.NEG), [constant(net, 2.0)]).outputs[0]
    net.mark_output(binary(net, ElementWiseOperation.PROD, x, s))
    folded = fold_constants(net, {})
    assert folded.constant_value(folded.layers[-1].inputs[1]).shape == ()
    check_same_function(net, folded, 1)


def test_eliminate_dead_layers_removes_an_unused_branch():
    net = Network("dead")
    x = net.add_input("x", DataType.FLOAT, (B, 4))
    live = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [x], name="live").outputs[0]
    d1 = net.add_layer(LayerKind.UNARY, UnaryParams(UnaryOperation.SIN), [x], name="dead_sin").outputs[0]
    net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.SUM), [d1, live], name="dead_sum")
    net.mark_output(live)
    stats: dict = {}
    after = eliminate_dead_layers(net, stats)
    assert stats.get("eliminate_dead_layers") == 2
    assert [l.name for l in after.layers] == ["live"]
    check_same_function(net, after, 2)


def test_eliminate_dead_layers_near_miss_keeps_a_branch_that_feeds_an_output():
    net = Network("alive")
    x = net.add_input("x", DataType.FLOAT, (2, 4))
    a = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [x], name="a").outputs[0]
    b = net.add_layer(LayerKind.UNARY, UnaryParams(UnaryOperation.SIN), [x], name="b").outputs[0]
    net.mark_output(a)
    net.mark_output(b)
    stats: dict = {}
    after = eliminate_dead_layers(net, stats)
    assert stats.get("eliminate_dead_layers", 0) == 0
    assert [l.name for l in after.layers] == ["a", "b"]


def test_remove_identities_fires_on_identity_and_same_type_cast():
    net = Network("ids")
    x = net.add_input("x", DataType.FLOAT, (2, 3))
    i = net.add_layer(LayerKind.IDENTITY, IdentityParams(), [x]).outputs[0]
    c = net.add_layer(LayerKind.CAST, CastParams(DataType.FLOAT), [i]).outputs[0]
    y = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.TANH), [c]).outputs[0]
    net.mark_output(y)
    stats: dict = {}
    after = remove_identities(net, stats)
    assert stats.get("remove_identities") == 2
    assert [l.kind for l in after.layers] == [LayerKind.ACTIVATION]
    assert after.layers[0].inputs[0].name == "x"
    check_same_function(net, after, 2)


def test_remove_identities_near_misses():
    """A cast that changes the type, and an identity that produces a network output, stay."""
    net = Network("keep")
    x = net.add_input("x", DataType.FLOAT, (2, 3))
    h = net.add_layer(LayerKind.CAST, CastParams(DataType.HALF), [x]).outputs[0]
    y = net.add_layer(LayerKind.IDENTITY, IdentityParams(), [h]).outputs[0]
    net.mark_output(y)
    stats: dict = {}
    after = remove_identities(net, stats)
    assert stats.get("remove_identities", 0) == 0
    assert [l.kind for l in after.layers] == [LayerKind.CAST, LayerKind.IDENTITY]
    (out,) = evaluate(after, {"x": np.array([[1.0, 2.5, -3.25]] * 2, np.float32)})
    assert out.dtype == np.float16


def test_remove_identities_drops_a_pad_by_zeros_and_keeps_real_pads():
    """Constant zero pads (in any mode) add nothing; a pad by one, or by a computed amount, stays."""
    from kilnrt.network.layers import PaddingParams

    net = Network("pads")
    x = net.add_input("x", DataType.FLOAT, (1, 3, 4, 4))
    n = net.add_input("n", DataType.INT64, (8,))

    def const(v):
        return net.add_layer(LayerKind.CONSTANT, ConstantParams(np.asarray(v, np.int64)), []).outputs[0]

    zero = net.add_layer(LayerKind.PADDING, PaddingParams("reflect"), [x, const([0] * 8)]).outputs[0]
    one = net.add_layer(LayerKind.PADDING, PaddingParams(), [zero, const([0, 0, 0, 1, 0, 0, 0, 1])]).outputs[0]
    computed = net.add_layer(LayerKind.PADDING, PaddingParams(), [one, n]).outputs[0]
    y = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.TANH), [computed]).outputs[0]
    net.mark_output(y)
    stats: dict = {}
    after = remove_identities(net.clone(), stats)
    assert stats.get("remove_identities") == 1
    pads = [l for l in after.layers if l.kind == LayerKind.PADDING]
    assert len(pads) == 2 and pads[0].inputs[0].name == "x"
    feeds = {"x": np.random.default_rng(3).standard_normal((1, 3, 4, 4)).astype(np.float32),
             "n": np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64)}
    for a, e in zip(evaluate(after, feeds), evaluate(net, feeds)):
        np.testing.assert_array_equal(a, e)


def test_common_subexpressions_merge_and_near_misses_stay():
    from kilnrt.optimize.passes.cleanup import eliminate_common_subexpressions

    net = Network("cse")
    x = net.add_input("x", DataType.FLOAT, (B, 4))
    c1 = net.add_layer(LayerKind.CONSTANT, ConstantParams(np.full((4,), 2.0, np.float32)), [], name="c1").outputs[0]
    c2 = net.add_layer(LayerKind.CONSTANT, ConstantParams(np.full((4,), 2.0, np.float32)), [], name="c2").outputs[0]
    c3 = net.add_layer(LayerKind.CONSTANT, ConstantParams(np.full((4,), 2.0, np.float64)), [], name="c3").outputs[0]
    a = net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.PROD), [x, c1], name="a").outputs[0]
    b = net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.PROD), [x, c2], name="b").outputs[0]
    s = net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.SUM), [x, c1], name="s").outputs[0]
    r1 = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [a], name="r1").outputs[0]
    r2 = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [b], name="r2").outputs[0]
    out = net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.SUM), [r1, r2], name="o").outputs[0]
    net.mark_output(out)
    net.mark_output(s)
    net.mark_output(net.add_layer(LayerKind.CAST, CastParams(DataType.FLOAT), [c3], name="cast").outputs[0])
    dup = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [a], name="dup_output").outputs[0]
    net.mark_output(dup)  # a network output keeps its own layer
    stats: dict = {}
    after = eliminate_common_subexpressions(net, stats)
    names = [l.name for l in after.layers]
    assert stats["eliminate_common_subexpressions"] == 3  # c2, b, r2
    assert "c2" not in names and "b" not in names and "r2" not in names
    assert {"c1", "c3", "a", "s", "r1", "o", "dup_output"} <= set(names)  # other dtype / op / output stay
    check_same_function(net, after, 3)


def test_common_subexpressions_keep_a_scalar_and_a_one_element_vector_apart():
    from kilnrt.optimize.passes.cleanup import eliminate_common_subexpressions

    net = Network("cse0d")
    x = net.add_input("x", DataType.INT64, (2,))
    s = net.add_layer(LayerKind.CONSTANT, ConstantParams(np.array(1, np.int64)), [], name="scalar").outputs[0]
    v = net.add_layer(LayerKind.CONSTANT, ConstantParams(np.array([1], np.int64)), [], name="vector").outputs[0]
    net.mark_output(net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.SUM), [x, s]).outputs[0])
    net.mark_output(net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.SUM), [x, v]).outputs[0])
    stats: dict = {}
    after = eliminate_common_subexpressions(net, stats)
    assert stats.get("eliminate_common_subexpressions", 0) == 0
    assert [t.shape for t in after.outputs] == [(2,), (2,)]
