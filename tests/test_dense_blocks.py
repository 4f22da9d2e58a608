"""Dense blocks (DenseNet's pattern): every layer concatenates all the features so far and
normalizes the result before its convolution.

* ``share_concatenations``: ``cat(x, f1, ..., fk)`` reads ``cat(x, f1, ..., fk-1)`` instead of
  its k-1 first inputs; near misses (another axis, another order, a run of one) stay as they were;
* ``scales_to_elementwise``: a BatchNormalization no convolution absorbed becomes ``x * s + b``
  beside its ReLU, and the two fuse into one pointwise region; a scale with a power, or alone
  between non-pointwise layers, stays a scale;
* end to end against onnxruntime on fresh random inputs (CPU), and in FP16 against float32 on
  a GPU (marked ``cuda``).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import kilnrt
from kilnrt.network.layers import ConcatenationParams, ConstantParams, LayerKind, ScaleMode
from kilnrt.network.graph import Network
from kilnrt.optimize import optimize
from kilnrt.optimize.passes.concat import share_concatenations
from kilnrt.optimize.passes.pointwise import fuse_pointwise, scales_to_elementwise
from kilnrt.testing import assert_close, fresh_seed, run_reference

import torch


def dense_block(rng, layers: int = 4, channels: int = 8, growth: int = 4, size: int = 6):
    """x -> for each layer: cat(x, f1..fk) -> BN -> ReLU -> conv3x3 -> f(k+1); the output is
    the concatenation of everything (and a pooled copy of the last normalized input)."""
    nodes, inits, features = [], [], ["x"]
    for k in range(layers):
        c = channels + growth * k
        cat = "x" if k == 0 else f"cat{k}"
        if k:
            nodes.append(helper.make_node("Concat", list(features), [cat], axis=1))
        stats = [rng.uniform(0.5, 1.5, c), rng.standard_normal(c), rng.standard_normal(c) / 4, rng.uniform(0.5, 2, c)]
        names = [f"bn{k}_{what}" for what in ("s", "b", "m", "v")]
        inits += [numpy_helper.from_array(v.astype(np.float32), n) for v, n in zip(stats, names)]
        w = (rng.standard_normal((growth, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        nodes += [helper.make_node("BatchNormalization", [cat] + names, [f"n{k}"]),
                  helper.make_node("Relu", [f"n{k}"], [f"r{k}"]),
                  helper.make_node("Conv", [f"r{k}", f"w{k}"], [f"f{k + 1}"], pads=[1, 1, 1, 1])]
        features.append(f"f{k + 1}")
    nodes += [helper.make_node("Concat", list(features), ["y"], axis=1),
              helper.make_node("GlobalAveragePool", [f"r{layers - 1}"], ["pooled"])]
    graph = helper.make_graph(nodes, "dense_block",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "pooled")],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _concat_inputs(net: Network) -> list[int]:
    return [len(layer.inputs) for layer in net.layers if layer.kind == LayerKind.CONCATENATION]


def test_each_concatenation_reads_the_one_before_it():
    rng = np.random.default_rng(fresh_seed())
    net = kilnrt.to_network(dense_block(rng, layers=5).SerializeToString())
    assert _concat_inputs(net) == [2, 3, 4, 5, 6]
    stats: dict = {}
    shared = share_concatenations(net.clone(), stats)
    assert _concat_inputs(shared) == [2, 2, 2, 2, 2] and stats["share_concatenations"] == 4
    cats = [layer for layer in shared.layers if layer.kind == LayerKind.CONCATENATION]
    for before, after in zip(cats, cats[1:]):
        assert after.inputs[0] is before.outputs[0]
    feeds = {"x": torch.randn(1, 8, 6, 6)}
    want, got = run_reference(net, feeds), run_reference(shared, feeds)
    for t in net.outputs:
        assert torch.equal(got[t.name], want[t.name]), t.name   # the same values, copied from elsewhere


def test_concatenations_that_do_not_repeat_a_run_stay():
    net = Network("near misses")
    a, b, c = (net.add_input(n, kilnrt.DataType.FLOAT, (2, 3, 4)) for n in "abc")

    def cat(inputs, axis):
        return net.add_layer(LayerKind.CONCATENATION, ConcatenationParams(axis), inputs).outputs[0]

    first = cat([a, b], 1)
    outs = [cat([b, a, c], 1),     # another order
            cat([a, b, c], 2),     # another axis
            cat([a, c, b], 1),     # the run broken by c
            cat([a, b, c], -2)]    # the same axis, counted from the end: shared
    for t in [first, *outs]:
        net.mark_output(t)
    shared = share_concatenations(net.clone())
    assert _concat_inputs(shared) == [2, 3, 3, 3, 2]


def test_a_batch_norm_beside_its_relu_becomes_one_region():
    rng = np.random.default_rng(fresh_seed())
    net = kilnrt.to_network(dense_block(rng, layers=3).SerializeToString())
    level2 = optimize(net.clone(), 2)
    assert sum(layer.kind == LayerKind.SCALE for layer in level2.layers) == 3   # no convolution took them
    stats: dict = {}
    rewritten = scales_to_elementwise(level2, stats)
    assert stats["scales_to_elementwise"] == 3
    assert not any(layer.kind == LayerKind.SCALE for layer in rewritten.layers)
    fused = fuse_pointwise(rewritten)
    regions = [layer for layer in fused.layers if layer.kind == LayerKind.POINTWISE]
    assert len(regions) == 3 and all(len(r.params.ops) == 3 for r in regions)   # mul, add, relu
    feeds = {"x": torch.randn(1, 8, 6, 6)}
    want, got = run_reference(level2, feeds), run_reference(fused, feeds)
    for t in net.outputs:
        assert_close(got[t.name].numpy(), want[t.name].numpy(), rtol=1e-5, atol=1e-6, name=t.name)


def test_scales_the_rewrite_leaves():
    net = Network("scales")
    x = net.add_input("x", kilnrt.DataType.FLOAT, (1, 3, 4, 4))
    s, power = (net.add_layer(LayerKind.CONSTANT, ConstantParams(v), []).outputs[0]
                for v in ((np.arange(3) + 1).astype(np.float32), np.full(3, 2.0, np.float32)))
    alone = net.add_layer(LayerKind.SCALE, _scale_params(), [x, None, s]).outputs[0]   # between two pools
    pooled = net.add_layer(LayerKind.REDUCE, _mean_params(), [alone]).outputs[0]
    with_power = net.add_layer(LayerKind.SCALE, _scale_params(), [x, None, s, power]).outputs[0]
    relu = net.add_layer(LayerKind.ACTIVATION, _relu(), [with_power]).outputs[0]
    bare = net.add_layer(LayerKind.SCALE, _scale_params(), [relu]).outputs[0]   # no weights, after a ReLU
    net.mark_output(pooled)
    net.mark_output(bare)
    stats: dict = {}
    after = scales_to_elementwise(net.clone(), stats)
    assert sum(layer.kind == LayerKind.SCALE for layer in after.layers) == 3 and not stats.get("scales_to_elementwise")
    assert [t.name for t in after.outputs] == [pooled.name, bare.name]


def _scale_params():
    from kilnrt.network.layers import ScaleParams
    return ScaleParams(ScaleMode.CHANNEL, 1)


def _mean_params():
    from kilnrt.network.layers import ReduceOperation, ReduceParams
    return ReduceParams(ReduceOperation.AVG, (2, 3), True)


def _relu():
    from kilnrt.network.layers import ActivationParams, ActivationType
    return ActivationParams(ActivationType.RELU)


def test_dense_block_end_to_end_against_onnxruntime():
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    model = dense_block(rng, layers=4)
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    engine = kilnrt.build(model.SerializeToString(), device="cpu")
    assert _concat_inputs_of(engine) == [2, 2, 2, 2]
    assert not any(layer.kind == LayerKind.SCALE for layer in engine.layers)
    got = engine.run({"x": x})
    for name, w in zip(("y", "pooled"), want):
        assert_close(got[name], w, rtol=1e-4, atol=1e-5, seed=seed, name=name)
    loaded = kilnrt.Runtime().deserialize_cuda_engine(engine.serialize())   # the rewritten weights save
    assert_close(loaded.run({"x": x}), got, rtol=0, atol=0, seed=seed)


def _concat_inputs_of(engine) -> list[int]:
    return [len(layer.inputs) for layer in engine.layers if layer.kind == LayerKind.CONCATENATION]


@pytest.mark.cuda
def test_cuda_dense_block_fp16_against_float32():
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    model = dense_block(rng, layers=6, channels=32, growth=16, size=14)
    x = rng.standard_normal((1, 32, 14, 14)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    engine = kilnrt.build(model.SerializeToString(), device="cuda", fp16=True)
    assert not any(layer.kind == LayerKind.SCALE for layer in engine.layers)
    got = engine.run({"x": torch.from_numpy(x).cuda()})   # FP16 inside, float32 at the inputs and outputs
    for name, w in zip(("y", "pooled"), want):
        assert_close(got[name].cpu().numpy(), w, rtol=2e-2, atol=2e-2, seed=seed, name=name)
