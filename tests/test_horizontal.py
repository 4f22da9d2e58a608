"""Horizontal fusion of sibling convolutions (``fuse_sibling_convs``): it fires on an
Inception-style block and on random sibling groups, the numerics are unchanged, and every
near miss stays apart.  (Sibling GEMMs: tests/test_fusion.py.)"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kilnrt
from kilnrt.network.dtypes import DataType, torch_to_numpy
from kilnrt.network.graph import Network
from kilnrt.testing import run_reference as propagate
from kilnrt.network.layers import (ActivationType as A, ConstantParams, ConvolutionParams, LayerKind, PaddingMode,
                                   UnaryOperation, UnaryParams)
from kilnrt.optimize import PIPELINE, optimize
from kilnrt.optimize.passes.cleanup import eliminate_dead_layers
from kilnrt.optimize.passes.horizontal import fuse_sibling_convs
from kilnrt.testing import assert_close, seeded_inputs

from models import inception_model


def evaluate(net: Network, feeds) -> list[np.ndarray]:
    """The network's outputs, in order, from the CPU reference kernels."""
    values = propagate(net, {k: torch.from_numpy(v) for k, v in feeds.items()})
    return [torch_to_numpy(values[t.name]) for t in net.outputs]


def check_same_function(before: Network, after: Network) -> None:
    assert [t.name for t in after.outputs] == [t.name for t in before.outputs]
    feeds = seeded_inputs(before)
    for t, a, e in zip(before.outputs, evaluate(after, feeds), evaluate(before, feeds)):
        assert_close(a, e, rtol=1e-5, atol=1e-5, seed=feeds.seed, name=t.name)


def convs(net) -> list:
    return [l for l in net.layers if l.kind == LayerKind.CONVOLUTION]


def constant(net: Network, value: np.ndarray):
    return net.add_layer(LayerKind.CONSTANT, ConstantParams(value), []).outputs[0]


def add_conv(net: Network, x, k: int, rng: np.random.Generator, params: ConvolutionParams, *, bias: bool = True,
             weight=None, bias_tensor=None, residual=None):
    """A convolution of ``x`` with ``k`` output maps: random constant weights (or ``weight``)
    and bias (or ``bias_tensor``, or none), and an optional residual input."""
    params = dataclasses.replace(params, num_output_maps=k)
    w = weight if weight is not None else constant(
        net, rng.standard_normal((k, x.shape[1] // params.num_groups) + params.kernel_size_nd).astype(np.float32))
    b = bias_tensor if bias_tensor is not None else \
        constant(net, rng.standard_normal(k).astype(np.float32)) if bias else None
    ins = [x, w, b] + ([residual] if residual is not None else [])
    return net.add_layer(LayerKind.CONVOLUTION, params, ins)


# ----------------------------------------------------------------------------- an Inception block
def test_inception_block_merges_its_1x1_convolutions():
    rng = np.random.default_rng()
    model = inception_model(rng).SerializeToString()
    report: list = []
    net = optimize(kilnrt.to_network(model), 3, report=report)
    assert sum(r["rewrites"] for r in report if r["pass"] == "fuse_sibling_convs") == 1
    merged = [l for l in convs(net) if " | " in l.name]
    assert len(merged) == 1 and merged[0].params.num_output_maps == 7 + 5 + 3
    assert merged[0].params.activation == A.RELU and len(merged[0].inputs) == 3  # zeros for the bias-less one
    # the merged 1x1, the 3x3 after the bias-less branch, the 3x3 of x, the 1x1 after the pool
    assert len(convs(net)) == 4
    assert sum(l.kind == LayerKind.SLICE for l in net.layers) == 3

    engine = kilnrt.build(model)
    assert [" | " in l.name for l in engine.layers if l.kind == LayerKind.CONVOLUTION].count(True) == 1
    x = rng.standard_normal((2, 16, 9, 11)).astype(np.float32)
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(engine.run({"x": x})["y"], ref, rtol=1e-4, atol=1e-4)


def test_registered_after_the_convolution_fusions():
    names = [name for name, _, _ in PIPELINE]
    assert ("fuse_sibling_convs", fuse_sibling_convs, 2) in PIPELINE
    at = names.index("fuse_sibling_convs")
    assert at > max(names.index(n) for n in ("fuse_conv_epilogue", "move_residual_bias", "fuse_squeeze_excitation"))
    assert "eliminate_dead_layers" in names[at:]


# ----------------------------------------------------------------------------- it fires
BASE = ConvolutionParams(0, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), activation=A.RELU)


def test_three_siblings_become_one_convolution_and_three_slices():
    rng = np.random.default_rng()
    net = Network("siblings")
    x = net.add_input("x", DataType.FLOAT, (1, 5, 7, 6))
    layers = [add_conv(net, x, k, rng, BASE, bias=k != 3) for k in (4, 3, 9)]
    for layer in layers:
        net.mark_output(layer.outputs[0])
    stats: dict = {}
    after = fuse_sibling_convs(net, stats)
    assert stats["fuse_sibling_convs"] == 1
    assert len(convs(after)) == 1 and convs(after)[0].params.num_output_maps == 16
    assert [l.kind for l in after.layers].count(LayerKind.SLICE) == 3
    assert [t.name for t in after.outputs] == [l.outputs[0].name for l in layers]
    check_same_function(net, after)
    cleaned = eliminate_dead_layers(after)  # the three original weights and two biases go
    constants = [l.params.weights.shape for l in cleaned.layers if l.kind == LayerKind.CONSTANT]
    assert (16, 5, 3, 3) in constants and (16,) in constants
    assert not any(s in constants for s in ((4, 5, 3, 3), (3, 5, 3, 3), (9, 5, 3, 3)))


# ----------------------------------------------------------------------------- near misses
def _pair(second: dict, first: dict | None = None) -> Network:
    """x [1, 4, 7, 6] read by two 3x3 ReLU convolutions (pad 1) of 4 and 6 output maps; each
    dict changes its convolution: params fields, or ``weight="computed"`` (a weight the pass
    cannot read), ``bias="input"``, ``residual=True``, ``input="other"``, ``precision``."""
    rng = np.random.default_rng()
    net = Network("pair")
    x = net.add_input("x", DataType.FLOAT, (1, 4, 7, 6))
    other = net.add_input("x2", DataType.FLOAT, (1, 4, 7, 6))
    for k, change in ((4, dict(first or {})), (6, dict(second))):
        params = dataclasses.replace(BASE, **{f: change.pop(f) for f in list(change)
                                              if f in ConvolutionParams.__dataclass_fields__})
        weight = bias = residual = None
        if change.pop("weight", None) == "computed":
            w = constant(net, rng.standard_normal((k, 4, 3, 3)).astype(np.float32))
            weight = net.add_layer(LayerKind.UNARY, UnaryParams(UnaryOperation.NEG), [w]).outputs[0]
        if change.pop("bias", None) == "input":
            bias = net.add_input(f"bias{k}", DataType.FLOAT, (k,))
        if change.pop("residual", False):
            residual = net.add_input(f"residual{k}", DataType.FLOAT, (1, k, 7, 6))
        src = other if change.pop("input", None) == "other" else x
        layer = add_conv(net, src, k, rng, params, weight=weight, bias_tensor=bias, residual=residual)
        layer.precision = change.pop("precision", None)
        assert not change, change
        net.mark_output(layer.outputs[0])
    return net


NEAR_MISSES = {
    "stride": dict(stride_nd=(2, 1)),
    "pads": dict(pre_padding=(0, 1), post_padding=(2, 1)),
    "auto_pad": dict(padding_mode=PaddingMode.SAME_UPPER),
    "kernel": dict(kernel_size_nd=(1, 1), pre_padding=(0, 0), post_padding=(0, 0)),
    "dilation": dict(dilation_nd=(2, 2), pre_padding=(2, 2), post_padding=(2, 2)),
    "activation": dict(activation=None),
    "activation_alpha": dict(activation=A.LEAKY_RELU, activation_alpha=0.2),
    "computed_weight": dict(weight="computed"),
    "computed_bias": dict(bias="input"),
    "residual": dict(residual=True),
    "other_input": dict(input="other"),
    "precision": dict(precision=DataType.FLOAT),
}


@pytest.mark.parametrize("near_miss", sorted(NEAR_MISSES) + ["groups", "both_residual"])
def test_near_misses_stay_apart(near_miss):
    if near_miss == "groups":      # identical, but each output map reads only half of the channels
        net = _pair(dict(num_groups=2), dict(num_groups=2))
    elif near_miss == "both_residual":
        net = _pair(dict(residual=True), dict(residual=True))
    elif near_miss == "activation_alpha":
        net = _pair(NEAR_MISSES[near_miss], dict(activation=A.LEAKY_RELU, activation_alpha=0.1))
    else:
        net = _pair(NEAR_MISSES[near_miss])
    stats: dict = {}
    after = fuse_sibling_convs(net, stats)
    assert stats.get("fuse_sibling_convs", 0) == 0
    assert len(convs(after)) == 2 and not any(l.kind == LayerKind.SLICE for l in after.layers)
    check_same_function(net, after)


def test_the_near_miss_pair_merges_when_nothing_differs():
    """The control for the near misses: without a difference, the same pair merges."""
    net = _pair({})
    after = fuse_sibling_convs(net, stats := {})
    assert stats["fuse_sibling_convs"] == 1 and len(convs(after)) == 1
    check_same_function(net, after)


def test_siblings_pinned_to_float32_merge_into_a_pinned_convolution():
    net = _pair(dict(precision=DataType.FLOAT), dict(precision=DataType.FLOAT))
    after = fuse_sibling_convs(net, stats := {})
    assert stats["fuse_sibling_convs"] == 1 and [l.precision for l in convs(after)] == [DataType.FLOAT]


# ----------------------------------------------------------------------------- random sibling groups
ACTIVATIONS = [(None, 0.0, 0.0), (A.RELU, 0.0, 0.0), (A.LEAKY_RELU, 0.1, 0.0), (A.CLIP, -0.5, 0.5)]
MODES = [PaddingMode.EXPLICIT_ROUND_DOWN, PaddingMode.SAME_UPPER, PaddingMode.SAME_LOWER]
pairs = lambda lo, hi: st.tuples(st.integers(lo, hi), st.integers(lo, hi))  # noqa: E731
GEOMETRIES = st.tuples(pairs(1, 3), pairs(1, 2), pairs(0, 1), pairs(0, 1), pairs(1, 2), st.sampled_from(MODES),
                       st.sampled_from(ACTIVATIONS))


@st.composite
def sibling_networks(draw):
    """x [1, C, H, W] read by 1-6 convolutions, each of one of 1-3 distinct random geometries
    (window, strides, pads, dilations, padding mode, activation), with random output maps and
    bias or not; some outputs read by a layer placed before the next sibling.  Returns the
    network and how many groups (geometries with two or more convolutions) must merge."""
    c = draw(st.integers(1, 9), label="channels")
    h, w = draw(st.integers(5, 9), label="height"), draw(st.integers(5, 9), label="width")
    geometries = draw(st.lists(GEOMETRIES, min_size=1, max_size=3, unique=True), label="geometries")
    members = draw(st.lists(st.tuples(st.integers(0, len(geometries) - 1), st.integers(1, 11), st.booleans(),
                                      st.booleans()), min_size=1, max_size=6), label="(geometry, maps, bias, read)")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="weights seed"))
    net = Network("random_siblings")
    x = net.add_input("x", DataType.FLOAT, (1, c, h, w))
    for g, k, bias, read in members:
        kernel, stride, pre, post, dilation, mode, (act, alpha, beta) = geometries[g]
        params = ConvolutionParams(0, kernel, stride, pre, post, dilation, 1, mode, act, alpha, beta)
        y = add_conv(net, x, k, rng, params, bias=bias).outputs[0]
        if read:
            y = net.add_layer(LayerKind.UNARY, UnaryParams(UnaryOperation.SIN), [y]).outputs[0]
        net.mark_output(y)
    used = [sum(m[0] == g for m in members) for g in range(len(geometries))]
    return net, sum(n > 1 for n in used), len(members) - sum(n - 1 for n in used if n > 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sibling_networks())
def test_random_sibling_groups_keep_the_function(case):
    net, groups, remaining = case
    stats: dict = {}
    after = fuse_sibling_convs(net, stats)
    assert stats.get("fuse_sibling_convs", 0) == groups
    assert len(convs(after)) == remaining
    check_same_function(net, after)
