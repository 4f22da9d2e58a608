"""lower_precision with layers pinned to FP32: a pinned layer computes in FP32 and its consumers
see FP32, unless they are lowered themselves (then one cast per tensor, at their input), and
its output type follows ``set_output_type`` where one is given (TensorRT's semantics)."""
from __future__ import annotations

import numpy as np
import pytest

import kilnrt
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind
from kilnrt.optimize.passes.precision import lower_precision
from kilnrt.testing import assert_close, seeded_inputs

from debug_models import overflow_between_layers


def _network(seed: int):
    return kilnrt.to_network(overflow_between_layers(seed))


def _pin(net, names, dtype=DataType.FLOAT):
    for layer in net.layers:
        if layer.kind != LayerKind.CONSTANT and set(layer.origin) & set(names):
            layer.precision = dtype
    return net


def _casts(net):
    return [l for l in net.layers if l.kind == LayerKind.CAST]


@pytest.fixture(params=[1, 2])
def case(request):
    """(network, feeds, the float32 result) on a fresh seed of weights and inputs."""
    seed = int(np.random.SeedSequence().entropy % 2**31) + request.param
    net = _network(seed)
    feeds = seeded_inputs(net, seed)
    expected = kilnrt.build(net, device="cpu").run(feeds)["y"]
    return seed, feeds, expected


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_unpinned_fp16_overflows(case):
    """The model's 'scaled' tensor (~1e5) is past FP16's 65504: without pins the result has inf."""
    seed, feeds, _ = case
    low = lower_precision(_network(seed), DataType.HALF)
    out = kilnrt.build(low, device="cpu").run(feeds)["y"]
    assert not np.isfinite(out).all()


def test_pinned_layers_pass_fp32_between_them(case):
    """Mul_big writes ~1e5 and Mul_small reads it: both pinned, the value never meets FP16."""
    seed, feeds, expected = case
    net = _pin(_network(seed), {"Mul_big", "Mul_small"})
    low = lower_precision(net, DataType.HALF)
    low.infer()
    scaled = low.tensors["scaled"]
    assert scaled.dtype == DataType.FLOAT and scaled.producer.precision == DataType.FLOAT
    back = low.tensors["back"]   # Mul_small's output, read by the lowered Add_3: FP32, cast at Add_3's input
    assert back.dtype == DataType.FLOAT
    add = next(l for l in low.layers if "Add_3" in l.origin and l.kind == LayerKind.ELEMENTWISE)
    assert {t.dtype for t in add.inputs} == {DataType.HALF}
    out = kilnrt.build(low, device="cpu").run(feeds)["y"]
    assert np.isfinite(out).all()
    assert_close(out, expected, rtol=1e-2, atol=1e-2, seed=seed)


def test_pinned_layer_output_type_follows_set_output_type(case):
    """set_output_type(0, HALF) on a pinned layer: it computes in FP32 and writes FP16."""
    seed, feeds, _ = case
    net = _pin(_network(seed), {"Mul_big", "Mul_small"})
    small = next(l for l in net.layers if "Mul_small" in l.origin and l.kind == LayerKind.ELEMENTWISE)
    small.set_output_type(0, DataType.HALF)
    low = lower_precision(net, DataType.HALF)
    low.infer()
    assert low.tensors["scaled"].dtype == DataType.FLOAT
    assert low.tensors["back"].dtype == DataType.HALF
    out = kilnrt.build(low, device="cpu").run(feeds)["y"]
    assert np.isfinite(out).all()


def test_pinned_output_of_the_network_needs_no_cast(case):
    """A pinned layer writing an FP32 engine output: no cast down and back up."""
    seed, feeds, expected = case
    net = _pin(_network(seed), {"Mul_big", "Mul_small", "Add_3", "Relu_4"})
    low = lower_precision(net, DataType.HALF)
    low.infer()
    relu = low.outputs[0].producer
    assert relu.kind != LayerKind.CAST and relu.precision == DataType.FLOAT and low.outputs[0].name == "y"
    # casts: x to FP16 (input), MatMul_0's output up to FP32 for Mul_big: two, none at the end
    assert len(_casts(low)) == 2
    assert_close(kilnrt.build(low, device="cpu").run(feeds)["y"], expected, rtol=1e-2, atol=1e-2, seed=seed)


def test_one_cast_per_pinned_tensor_for_several_lowered_consumers():
    net = kilnrt.Network("fanout")
    x = net.add_input("x", DataType.FLOAT, (4, 8))
    from kilnrt.network.layers import ActivationType, ElementWiseOperation

    big = net.add_elementwise(x, x, ElementWiseOperation.SUM)
    big.precision = DataType.FLOAT
    a = net.add_activation(big.get_output(0), ActivationType.RELU)
    b = net.add_activation(big.get_output(0), ActivationType.SIGMOID)
    net.mark_output(net.add_elementwise(a.get_output(0), b.get_output(0), ElementWiseOperation.PROD).get_output(0))
    low = lower_precision(net, DataType.HALF)
    low.infer()
    down = [l for l in _casts(low) if l.inputs[0].name == big.get_output(0).name]
    assert len(down) == 1 and down[0].params.to == DataType.HALF
    feeds = seeded_inputs(net, 7)
    assert_close(kilnrt.build(low, device="cpu").run(feeds), kilnrt.build(net, device="cpu").run(feeds),
                 rtol=1e-2, atol=1e-2, seed=7)
