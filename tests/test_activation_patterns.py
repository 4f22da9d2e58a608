"""``fuse_activations``: every decomposition in its pattern table (and the forms PyTorch's exporter
writes) becomes one ACTIVATION layer with the same outputs, operands in any order; near misses
(another tensor, a wrong constant, a shared intermediate) stay as they were."""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kilnrt
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.layers import ActivationParams, ActivationType as A, ElementWiseOperation as E, LayerKind
from kilnrt.optimize import optimize
from kilnrt.optimize.passes.activations import fuse_activations
from kilnrt.testing import assert_close, seeded_inputs
from decompositions import DECOMPOSITIONS, Builder
from test_passes import evaluate


IDS = [d.__name__ for d, _, _ in DECOMPOSITIONS]


def network(decompose, swap: bool, **kw) -> Network:
    """x -> relu (so x is a layer output, as in a real network) -> decomposition -> output."""
    net = Network("act")
    x = net.add_input("x", DataType.FLOAT, (2, 3, 5))
    h = net.add_layer(LayerKind.ACTIVATION, ActivationParams(A.LEAKY_RELU, 0.3), [x]).outputs[0]
    net.mark_output(decompose(Builder(net, swap), h, **kw))
    return net


def same_outputs(before: Network, after: Network, rtol=1e-5) -> None:
    feeds = seeded_inputs(before)
    feeds["x"] = feeds["x"] * 3              # reach the tails of every activation
    for e, a in zip(evaluate(before, feeds), evaluate(after, feeds)):
        assert_close(a, e, rtol=rtol, atol=1e-6, seed=feeds.seed)


def activations(net: Network) -> list:
    return [l.params.type for l in net.layers if l.kind == LayerKind.ACTIVATION]


@pytest.mark.parametrize("swap", [False, True], ids=["ab", "ba"])
@pytest.mark.parametrize("decompose,act,_", DECOMPOSITIONS, ids=IDS)
def test_decomposition_becomes_one_activation(decompose, act, _, swap):
    before = network(decompose, swap)
    after = fuse_activations(before.clone(), stats := {})
    assert stats["fuse_activations"] == 1
    assert activations(after) == [A.LEAKY_RELU, act]
    assert [l.kind for l in after.layers if l.kind != LayerKind.CONSTANT] == [LayerKind.ACTIVATION] * 2
    fused = after.layers[-1]
    assert fused.outputs[0].name == before.outputs[0].name
    assert len(fused.origin) >= 2          # names every layer it absorbed
    # GELU-tanh and Mish are approximations of the decomposition within float32 rounding only
    same_outputs(before, after, rtol=1e-5 if act not in (A.GELU_TANH, A.MISH) else 1e-4)


@pytest.mark.parametrize("decompose,act,wrong", DECOMPOSITIONS, ids=IDS)
def test_near_miss_constant_is_left_alone(decompose, act, wrong):
    net = network(decompose, False, k=wrong)
    after = fuse_activations(net.clone(), stats := {})
    assert "fuse_activations" not in stats and activations(after) == activations(net)


def test_near_miss_another_tensor_or_a_shared_intermediate():
    net = Network("miss")
    x = net.add_input("x", DataType.FLOAT, (4, 3))
    y = net.add_input("y", DataType.FLOAT, (4, 3))
    b = Builder(net, False)
    net.mark_output(b.bin(E.PROD, x, b.act(A.SIGMOID, y)))          # x * sigmoid(y)
    s = b.act(A.SIGMOID, x)
    net.mark_output(b.bin(E.PROD, x, s))                             # sigmoid(x) is also an output
    net.mark_output(s)
    row = net.add_input("row", DataType.FLOAT, (1, 3))
    net.mark_output(b.bin(E.PROD, x, b.act(A.SIGMOID, row)))        # broadcast: not x's shape
    after = fuse_activations(net.clone(), stats := {})
    assert "fuse_activations" not in stats and len(after.layers) == len(net.layers)


class TorchActivations(nn.Module):
    def forward(self, x):
        return (F.silu(x), F.gelu(x, approximate="tanh"), F.mish(x), F.gelu(x),
                0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0)))))


def test_torch_exports_fold_and_absorb_into_the_convolution():
    """PyTorch's opset-17 exports of SiLU, tanh GELU, Mish, exact GELU and the hand-written GELU of
    BERT-style code; then a conv + SiLU, whose activation the convolution epilogue absorbs."""
    x = torch.randn(2, 4, 5, 5)
    f = io.BytesIO()
    torch.onnx.export(TorchActivations(), (x,), f, input_names=["x"], opset_version=17, dynamo=False)
    net = kilnrt.to_network(f.getvalue())
    after = fuse_activations(net.clone())
    assert activations(after) == [A.SILU, A.GELU_TANH, A.MISH, A.GELU_ERF, A.GELU_TANH]
    assert {l.kind for l in after.layers} <= {LayerKind.ACTIVATION, LayerKind.CONSTANT}
    same_outputs(net, after, rtol=1e-4)

    conv = nn.Sequential(nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.SiLU()).eval()
    f = io.BytesIO()
    torch.onnx.export(conv, (x,), f, input_names=["x"], opset_version=17, dynamo=False)
    net = kilnrt.to_network(f.getvalue())
    opt = optimize(net.clone(), 2)
    (layer,) = [l for l in opt.layers if l.kind != LayerKind.CONSTANT]
    assert layer.kind == LayerKind.CONVOLUTION and layer.params.activation == A.SILU
    same_outputs(net, opt, rtol=1e-4)
