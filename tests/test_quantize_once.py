"""``quantize_once``: the readers that share an activation's quantization read one 8-bit tensor,
made by the producing 8-bit layer's epilogue or by a QUANTIZE layer, and every output is what it
was before the pass (the CPU reference kernels, fresh random inputs)."""
from __future__ import annotations

import numpy as np
import torch

import kilnrt.kernels.cpu  # noqa: F401  (registers the reference kernels)
from kilnrt.builder.calibration import NetworkRunner
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.layers import ActivationType, ConstantParams, LayerKind, QuantizedMatrixMultiplyParams
from kilnrt.optimize.passes.quantization import quantize_once
from kilnrt.testing import fresh_seed


def _gemm(net, rng, x, name, k, n, scale, zp=0, to=DataType.INT8, act=None):
    w = rng.integers(-100, 100, (k, n)).astype(np.int8) if to == DataType.INT8 else \
        np.clip(rng.standard_normal((k, n)) * 50, -448, 448).astype(np.float32).astype(DataType.FP8.numpy)
    wt = net.add_layer(LayerKind.CONSTANT, ConstantParams(w), [], name=f"{name}/w").outputs[0]
    s = net.add_layer(LayerKind.CONSTANT, ConstantParams((rng.random(n) * 0.01 + 1e-3).astype(np.float32)), [],
                      name=f"{name}/s").outputs[0]
    p = QuantizedMatrixMultiplyParams(input_scale=scale, input_zero_point=zp, input_type=to, activation=act)
    return net.add_layer(LayerKind.QUANTIZED_MATRIX_MULTIPLY, p, [x, wt, s], name=name).outputs[0]


def _same_outputs(build) -> Network:
    seed = fresh_seed()
    feed = {"x": torch.from_numpy(np.random.default_rng(seed).standard_normal((8, 32)).astype(np.float32))}
    before = NetworkRunner(build(np.random.default_rng(seed)), "cpu").run(feed)
    after_net = quantize_once(build(np.random.default_rng(seed)))
    after = NetworkRunner(after_net, "cpu").run(feed)
    for name, v in before.items():
        assert float(v.abs().max()) > 0
        torch.testing.assert_close(after[name], v, rtol=0, atol=0, msg=f"{name} (seed {seed})")
    return after_net


def test_readers_of_one_quantization_share_one_quantize_layer_and_others_keep_theirs():
    def build(rng):
        net = Network()
        x = net.add_input("x", DataType.FLOAT, (8, 32))
        for i, (zp, scale, to) in enumerate([(0, 0.05, DataType.INT8), (0, 0.05, DataType.INT8),
                                             (-5, 0.05, DataType.INT8), (0, 0.01, DataType.FP8)]):
            net.mark_output(_gemm(net, rng, x, f"mm{i}", 32, 16, scale, zp, to))
        return net

    net = _same_outputs(build)
    quantize = [l for l in net.layers if l.kind == LayerKind.QUANTIZE]
    assert sorted(l.params.to_type.name for l in quantize) == ["FP8", "INT8"]     # one per quantization
    layers = {l.name: l for l in net.layers}
    assert layers["mm0"].inputs[0] is layers["mm1"].inputs[0] and layers["mm0"].inputs[0].dtype == DataType.INT8
    assert layers["mm2"].inputs[0].dtype == DataType.FLOAT            # zero point -5: quantizes itself
    assert layers["mm3"].inputs[0].dtype == DataType.FP8
    assert all(layers[f"mm{i}"].outputs[0].dtype == DataType.FLOAT for i in range(4))


def test_an_8_bit_producer_read_only_by_8_bit_layers_requantizes_in_its_epilogue():
    def build(rng):
        net = Network()
        x = net.add_input("x", DataType.FLOAT, (8, 32))
        h = _gemm(net, rng, x, "ffn1", 32, 64, 0.05, act=ActivationType.GELU_ERF)
        net.mark_output(_gemm(net, rng, h, "ffn2", 64, 16, 0.02))
        return net

    net = _same_outputs(build)
    layers = {l.name: l for l in net.layers}
    assert layers["ffn1"].params.output_scale == 0.02 and layers["ffn1"].outputs[0].dtype == DataType.INT8
    assert layers["ffn2"].inputs[0] is layers["ffn1"].outputs[0]
    assert sum(l.kind == LayerKind.QUANTIZE for l in net.layers) == 1        # x's only


# ----------------------------------------------------------------------------- random networks
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

QUANTIZATIONS = [(DataType.INT8, 0), (DataType.INT8, -3), (DataType.UINT8, 128), (DataType.UINT8, 7),
                 (DataType.FP8, 0)]


@st.composite
def networks(draw):
    """A random DAG of 8-bit GEMMs over x [4, 16], every width 16: each GEMM reads x, an earlier
    GEMM's result, or a ReLU of one, with one of a few quantizations (few scales, so readers of
    one tensor often share a quantization, or differ only in the zero point); a random subset of
    the results are network outputs."""
    n = draw(st.integers(2, 7))
    plan = []
    pool = 1                                   # x, then each GEMM's result and maybe its ReLU
    for _ in range(n):
        src = draw(st.integers(0, pool - 1))
        q = draw(st.sampled_from(QUANTIZATIONS))
        scale = draw(st.sampled_from([0.02, 0.05]))
        act = draw(st.sampled_from([None, ActivationType.RELU]))
        relu = draw(st.booleans())
        plan.append((src, q, scale, act, relu))
        pool += 1 + relu
    outputs = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    return plan, outputs


def _random_net(plan, outputs, rng) -> Network:
    from kilnrt.network.layers import ActivationParams

    net = Network()
    pool = [net.add_input("x", DataType.FLOAT, (4, 16))]
    made = []
    for i, (src, (to, zp), scale, act, relu) in enumerate(plan):
        y = _gemm(net, rng, pool[src], f"mm{i}", 16, 16, scale, zp, to, act)
        made.append(y)
        pool.append(y)
        if relu:
            pool.append(net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [y],
                                      name=f"relu{i}").outputs[0])
    read = {t.name for l in net.layers for t in l.inputs if t is not None}
    for i, t in enumerate(made):   # outputs, and every result nothing reads
        if i in outputs or t.name not in read:
            net.mark_output(t)
    for t in pool[1:]:
        if t.name not in read and t not in made:
            net.mark_output(t)
    return net


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks(), st.integers(0, 2 ** 31 - 1))
def test_quantize_once_keeps_every_output_of_random_networks(spec, seed):
    plan, outputs = spec
    feed = {"x": torch.from_numpy(np.random.default_rng(seed).standard_normal((4, 16)).astype(np.float32) * 2)}
    before = NetworkRunner(_random_net(plan, outputs, np.random.default_rng(seed)), "cpu").run(feed)
    after_net = quantize_once(_random_net(plan, outputs, np.random.default_rng(seed)))
    after = NetworkRunner(after_net, "cpu").run(feed)
    assert set(after) == set(before)
    for name, v in before.items():
        assert after[name].dtype == v.dtype, name
        # the same quantization in another place: equal, but for a value within float32 rounding
        # of a tie (the reader divides in float64, a QUANTIZE layer in float32): one input step
        diff = (after[name].double() - v.double()).abs()
        assert float((diff > 1e-6 * (1 + v.double().abs())).double().mean()) <= 0.02, (name, float(diff.max()))
