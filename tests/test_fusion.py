"""Fusion passes: each fires where it should, leaves the numerics unchanged, and a near
miss does not fire."""
from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import kilnrt
from kilnrt.network.layers import ActivationType, LayerKind
from kilnrt.optimize.passes.fusion import fuse_conv_epilogue, fuse_conv_scale


class Block(nn.Module):
    """conv-bn-relu, conv-bn, + identity, relu (a ResNet basic block), then a near miss:
    a conv whose output also feeds a second consumer must not absorb the add."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.c3 = nn.Conv2d(c, c, 1)
        for bn in (self.b1, self.b2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y)) + x)
        z = self.c3(y)
        return torch.relu(z + y), z * 2  # z has two consumers: no fusion into c3


def _onnx(model, x) -> bytes:
    f = io.BytesIO()
    torch.onnx.export(model.eval(), (x,), f, input_names=["x"], output_names=["y", "z"], opset_version=17,
                      dynamo=False, do_constant_folding=False)  # keeps BatchNormalization nodes
    return f.getvalue()


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 7)
    return _onnx(Block(), x)


def test_fusions_fire_and_keep_numerics(block):
    net = kilnrt.to_network(block)
    folded = fuse_conv_scale(net, stats := {})
    assert stats["fuse_conv_scale"] == 2
    fused = fuse_conv_epilogue(folded, stats2 := {})
    assert stats2["fuse_conv_epilogue"] == 2  # c1+relu, c2+add+relu; c3 (two consumers) is left alone
    convs = [l for l in fused.layers if l.kind == LayerKind.CONVOLUTION]
    assert [l.params.activation for l in convs] == [ActivationType.RELU, ActivationType.RELU, None]
    assert len(convs[1].inputs) == 4  # the residual
    assert "+" in convs[1].name
    rng = np.random.default_rng()
    x = rng.normal(size=(2, 6, 9, 7)).astype(np.float32)
    ref = ort.InferenceSession(block, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for network in (net, folded, fused):
        out = kilnrt.build(network, optimization_level=0).run({"x": x})
        np.testing.assert_allclose(out["y"], ref[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out["z"], ref[1], rtol=1e-4, atol=1e-4)


def test_default_build_fuses(block):
    engine = kilnrt.build(block)
    convs = [l for l in engine.layers if l.kind == LayerKind.CONVOLUTION]
    assert len(convs) == 3 and sum(l.params.activation is not None for l in convs) == 2
    assert not any(l.kind == LayerKind.SCALE for l in engine.layers)
