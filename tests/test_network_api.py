"""The TensorRT-style network definition API (``Network.add_*``), checked against numpy / torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kilnrt
from kilnrt import DataType, LayerKind
from kilnrt.errors import NetworkError
from kilnrt.network.definition import Dims, ResizeCoordinateTransformation, Weights
from kilnrt.network.layers import (ActivationType as A, ElementWiseOperation as E, GatherMode,
                                   MatrixOperation as M, PaddingMode, PoolingType, ReduceOperation,
                                   ScaleMode, TopKOperation, UnaryOperation as U)
from kilnrt.testing import assert_close, fresh_seed


@pytest.fixture
def rng():
    seed = fresh_seed()
    print(f"seed {seed}")
    return np.random.default_rng(seed)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def run(net, feeds, *outputs):
    """Mark ``outputs``, build on the CPU and run; returns the outputs' arrays in order."""
    for t in outputs:
        net.mark_output(t)
    result = kilnrt.build(net).run(feeds)
    return [result[t.name] for t in outputs]


def has_kernel(kind: LayerKind) -> bool:
    from kilnrt.kernels.registry import all_tactics

    return any(t.kind == kind and t.device == "cpu" for t in all_tactics().values())


def network(*inputs):
    net = kilnrt.Network("api")
    return net, [net.add_input(name, DataType.FLOAT, shape) for name, shape in inputs]


# ----------------------------------------------------------------------------- convolution family
def test_convolution_with_trt_attributes(rng):
    x, w, b = randn(rng, 2, 4, 9, 9), randn(rng, 6, 2, 3, 3), randn(rng, 6)
    net, (xt,) = network(("x", x.shape))
    conv = net.add_convolution_nd(xt, 6, (3, 3), Weights(w.reshape(-1)), b)  # flat KCRS weights
    conv.stride_nd = (2, 2)
    conv.padding_nd = (1, 1)
    conv.dilation_nd = (1, 1)
    conv.num_groups = 2
    assert conv.type == LayerKind.CONVOLUTION and conv.padding_nd == (1, 1)
    assert conv.kernel.numpy().shape == (6, 2, 3, 3) and conv.bias.size == 6
    (y,) = run(net, {"x": x}, conv.get_output(0))
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), 2, 1, 1, 2)
    assert_close(y, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_convolution_kernel_and_bias_set_later(rng):
    x, w, b = randn(rng, 1, 3, 6, 6), randn(rng, 4, 3, 1, 1), randn(rng, 4)
    net, (xt,) = network(("x", x.shape))
    conv = net.add_convolution_nd(xt, 4, (1, 1), np.zeros((4, 3, 1, 1), np.float32))
    conv.kernel = w
    conv.bias = b                      # no bias before: a new constant is inserted before the layer
    assert conv.get_input(2) is not None
    (y,) = run(net, {"x": x}, conv.get_output(0))
    expected = np.einsum("kc,nchw->nkhw", w[:, :, 0, 0], x) + b[None, :, None, None]
    assert_close(y, expected, rtol=1e-4, atol=1e-4)


def test_deconvolution(rng):
    x, w, b = randn(rng, 1, 3, 5, 5), randn(rng, 3, 4, 3, 3), randn(rng, 4)
    net, (xt,) = network(("x", x.shape))
    deconv = net.add_deconvolution_nd(xt, 4, (3, 3), w.reshape(-1), b)
    deconv.stride_nd = (2, 2)
    deconv.padding_nd = (1, 1)
    assert deconv.type == LayerKind.DECONVOLUTION and deconv.kernel.numpy().shape == (3, 4, 3, 3)
    if not has_kernel(LayerKind.DECONVOLUTION):
        pytest.skip("no CPU deconvolution kernel in this tree yet: construction checked only")
    (y,) = run(net, {"x": x}, deconv.get_output(0))
    expected = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), 2, 1)
    assert_close(y, expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["max", "average", "average_with_padding"])
def test_pooling(rng, kind):
    x = randn(rng, 2, 3, 7, 7)
    net, (xt,) = network(("x", x.shape))
    ptype = PoolingType.MAX if kind == "max" else PoolingType.AVERAGE
    pool = net.add_pooling_nd(xt, ptype, (3, 3))
    assert pool.stride_nd == (1, 1)  # TensorRT's default stride is 1, not the window
    pool.stride_nd = (2, 2)
    pool.padding_nd = (1, 1)
    pool.average_count_excludes_padding = kind != "average_with_padding"
    (y,) = run(net, {"x": x}, pool.get_output(0))
    t = torch.from_numpy(x)
    if kind == "max":
        expected = F.max_pool2d(t, 3, 2, 1)
    else:
        expected = F.avg_pool2d(t, 3, 2, 1, count_include_pad=kind == "average_with_padding")
    assert_close(y, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_pooling_same_upper(rng):
    x = randn(rng, 1, 2, 6, 6)
    net, (xt,) = network(("x", x.shape))
    pool = net.add_pooling_nd(xt, PoolingType.MAX, (3, 3))
    pool.stride_nd = (2, 2)
    pool.padding_mode = PaddingMode.SAME_UPPER
    (y,) = run(net, {"x": x}, pool.get_output(0))
    assert y.shape == (1, 2, 3, 3)  # ceil(6 / 2)
    padded = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=-np.inf)
    expected = F.max_pool2d(torch.from_numpy(padded), 3, 2).numpy()
    assert_close(y, expected)


def test_lrn(rng):
    x = randn(rng, 1, 6, 4, 4)
    net, (xt,) = network(("x", x.shape))
    lrn = net.add_lrn(xt, 3, 1e-3, 0.75, 2.0)
    (y,) = run(net, {"x": x}, lrn.get_output(0))
    assert_close(y, F.local_response_norm(torch.from_numpy(x), 3, 1e-3, 0.75, 2.0).numpy())


@pytest.mark.parametrize("mode", [ScaleMode.UNIFORM, ScaleMode.CHANNEL, ScaleMode.ELEMENTWISE])
def test_scale(rng, mode):
    x = np.abs(randn(rng, 2, 3, 4, 5)) + 0.5
    count = {ScaleMode.UNIFORM: 1, ScaleMode.CHANNEL: 3, ScaleMode.ELEMENTWISE: 60}[mode]
    shift, scale = np.abs(randn(rng, count)), np.abs(randn(rng, count)) + 0.1
    power = np.full(count, 2.0, np.float32)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_scale(xt, mode, shift, scale, power)
    (y,) = run(net, {"x": x}, layer.get_output(0))
    shape = {ScaleMode.UNIFORM: (1,), ScaleMode.CHANNEL: (3, 1, 1), ScaleMode.ELEMENTWISE: (3, 4, 5)}[mode]
    expected = (x * scale.reshape(shape) + shift.reshape(shape)) ** 2
    assert_close(y, expected, rtol=1e-4, atol=1e-4)


def test_scale_empty_weights_are_defaults(rng):
    x = randn(rng, 1, 2, 3, 3)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_scale(xt, ScaleMode.CHANNEL, Weights(), np.array([2.0, 3.0], np.float32), Weights())
    assert layer.get_input(1) is None and layer.get_input(3) is None
    (y,) = run(net, {"x": x}, layer.get_output(0))
    assert_close(y, x * np.array([2.0, 3.0], np.float32).reshape(2, 1, 1))


def test_normalization_layer_norm(rng):
    x, gamma, beta = randn(rng, 2, 5, 8), randn(rng, 1, 1, 8), randn(rng, 1, 1, 8)
    net, (xt,) = network(("x", x.shape))
    norm = net.add_normalization(xt, gamma, beta, 1 << 2)
    norm.epsilon = 1e-3
    assert norm.axes == (2,)
    (y,) = run(net, {"x": x}, norm.get_output(0))
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    assert_close(y, (x - mean) / np.sqrt(var + 1e-3) * gamma + beta, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- pointwise
ACTIVATIONS = [
    (A.RELU, 0, 0, lambda x, a, b: np.maximum(x, 0)),
    (A.SIGMOID, 0, 0, lambda x, a, b: 1 / (1 + np.exp(-x))),
    (A.TANH, 0, 0, lambda x, a, b: np.tanh(x)),
    (A.LEAKY_RELU, 0.1, 0, lambda x, a, b: np.where(x > 0, x, a * x)),
    (A.ELU, 0.7, 0, lambda x, a, b: np.where(x > 0, x, a * np.expm1(x))),
    (A.SELU, 1.6, 1.05, lambda x, a, b: b * np.where(x > 0, x, a * np.expm1(x))),
    (A.SOFTSIGN, 0, 0, lambda x, a, b: x / (1 + np.abs(x))),
    (A.CLIP, -0.5, 0.5, lambda x, a, b: np.clip(x, a, b)),
    (A.HARD_SIGMOID, 0.2, 0.5, lambda x, a, b: np.clip(a * x + b, 0, 1)),
    (A.SCALED_TANH, 1.5, 0.5, lambda x, a, b: a * np.tanh(b * x)),
    (A.THRESHOLDED_RELU, 0.3, 0, lambda x, a, b: np.where(x > a, x, 0)),
]


@pytest.mark.parametrize("act,alpha,beta,reference", ACTIVATIONS, ids=[a[0].name for a in ACTIVATIONS])
def test_activation(rng, act, alpha, beta, reference):
    x = randn(rng, 3, 7)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_activation(xt, act)
    assert (layer.alpha, layer.beta) == (0.0, 0.0)  # TensorRT's defaults
    layer.alpha, layer.beta = alpha, beta
    (y,) = run(net, {"x": x}, layer.get_output(0))
    assert_close(y, reference(x.astype(np.float64), alpha, beta).astype(np.float32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op,reference", [
    (E.SUM, np.add), (E.PROD, np.multiply), (E.MAX, np.maximum), (E.MIN, np.minimum),
    (E.SUB, np.subtract), (E.DIV, np.divide), (E.POW, None), (E.FLOOR_DIV, np.floor_divide),
    (E.EQUAL, np.equal), (E.GREATER, np.greater), (E.LESS, np.less),
], ids=lambda v: getattr(v, "name", ""))
def test_elementwise_broadcasts_like_trt(rng, op, reference):
    a, b = randn(rng, 2, 3, 4), randn(rng, 1, 3, 1)
    if op == E.POW:
        a, reference = np.abs(a) + 0.1, np.power
    if op == E.FLOOR_DIV:
        b = np.where(np.abs(b) < 0.2, 0.5, b).astype(np.float32)
    net, (at, bt) = network(("a", a.shape), ("b", b.shape))
    layer = net.add_elementwise(at, bt, op)
    (y,) = run(net, {"a": a, "b": b}, layer.get_output(0))
    expected = reference(a, b)
    assert y.shape == expected.shape and y.dtype == expected.dtype
    assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_elementwise_logical_and_unary_not():
    a = np.array([True, False, True, False])
    b = np.array([True, True, False, False])
    net = kilnrt.Network()
    at, bt = net.add_input("a", DataType.BOOL, (4,)), net.add_input("b", DataType.BOOL, (4,))
    xor = net.add_elementwise(at, bt, E.XOR)
    inv = net.add_unary(xor.get_output(0), U.NOT)
    (y,) = run(net, {"a": a, "b": b}, inv.get_output(0))
    np.testing.assert_array_equal(y, ~(a ^ b))


@pytest.mark.parametrize("op,reference", [
    (U.EXP, np.exp), (U.LOG, np.log), (U.SQRT, np.sqrt), (U.RECIP, np.reciprocal), (U.ABS, np.abs),
    (U.NEG, np.negative), (U.SIN, np.sin), (U.COS, np.cos), (U.TAN, np.tan), (U.ATAN, np.arctan),
    (U.SINH, np.sinh), (U.COSH, np.cosh), (U.CEIL, np.ceil), (U.FLOOR, np.floor), (U.SIGN, np.sign),
    (U.ROUND, np.round), (U.ASINH, np.arcsinh),
], ids=lambda v: getattr(v, "name", ""))
def test_unary(rng, op, reference):
    x = randn(rng, 4, 5)
    if op in (U.LOG, U.SQRT, U.RECIP):
        x = np.abs(x) + 0.1
    net, (xt,) = network(("x", x.shape))
    layer = net.add_unary(xt, op)
    (y,) = run(net, {"x": x}, layer.get_output(0))
    assert_close(y, reference(x), rtol=1e-5, atol=1e-6)


def test_cast_identity_select(rng):
    x, y = randn(rng, 3, 4) * 5, randn(rng, 3, 4)
    net, (xt, yt) = network(("x", x.shape), ("y", y.shape))
    cast = net.add_cast(xt, DataType.INT32)
    ident = net.add_identity(yt)
    cond = net.add_elementwise(xt, yt, E.GREATER)
    select = net.add_select(cond.get_output(0), xt, ident.get_output(0))
    c, s = run(net, {"x": x, "y": y}, cast.get_output(0), select.get_output(0))
    assert c.dtype == np.int32
    np.testing.assert_array_equal(c, x.astype(np.int32))
    np.testing.assert_array_equal(s, np.where(x > y, x, y))


# ----------------------------------------------------------------------------- linear algebra
@pytest.mark.parametrize("op0,op1", [(M.NONE, M.NONE), (M.TRANSPOSE, M.NONE), (M.NONE, M.TRANSPOSE),
                                     (M.TRANSPOSE, M.TRANSPOSE), (M.NONE, M.VECTOR)])
def test_matrix_multiply(rng, op0, op1):
    a = randn(rng, 2, 5, 3) if op0 == M.TRANSPOSE else randn(rng, 2, 3, 5)
    b = {M.NONE: randn(rng, 5, 4), M.TRANSPOSE: randn(rng, 4, 5), M.VECTOR: randn(rng, 2, 5)}[op1]
    net, (at, bt) = network(("a", a.shape), ("b", b.shape))
    layer = net.add_matrix_multiply(at, op0, bt, op1)
    (y,) = run(net, {"a": a, "b": b}, layer.get_output(0))
    am = a.transpose(0, 2, 1) if op0 == M.TRANSPOSE else a
    if op1 == M.VECTOR:
        expected = np.einsum("bij,bj->bi", am, b)
    else:
        expected = am @ (b.T if op1 == M.TRANSPOSE else b)
    assert_close(y, expected, rtol=1e-4, atol=1e-4)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


@pytest.mark.parametrize("shape,default_axis", [((2, 3, 4, 5), 1), ((2, 3, 4), 0), ((4, 6), 0)])
def test_softmax_default_axis_is_trts(rng, shape, default_axis):
    x = randn(rng, *shape)
    net, (xt,) = network(("x", shape))
    layer = net.add_softmax(xt)
    assert layer.axes == 1 << default_axis
    (y,) = run(net, {"x": x}, layer.get_output(0))
    assert_close(y, _softmax(x, default_axis), rtol=1e-5, atol=1e-6)


def test_softmax_axes_bitmask(rng):
    x = randn(rng, 2, 3, 4, 5)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_softmax(xt)
    layer.axes = 1 << 3
    assert layer.axis == 3 and layer.axes == 8
    (y,) = run(net, {"x": x}, layer.get_output(0))
    assert_close(y, _softmax(x, 3), rtol=1e-5, atol=1e-6)
    with pytest.raises(NetworkError, match="exactly one axis"):
        layer.axes = 0b110


@pytest.mark.parametrize("op,reference", [(ReduceOperation.SUM, np.sum), (ReduceOperation.PROD, np.prod),
                                          (ReduceOperation.MAX, np.max), (ReduceOperation.MIN, np.min),
                                          (ReduceOperation.AVG, np.mean)], ids=lambda v: getattr(v, "name", ""))
@pytest.mark.parametrize("keep_dims", [True, False])
def test_reduce_axes_bitmask(rng, op, reference, keep_dims):
    x = randn(rng, 2, 3, 4)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_reduce(xt, op, 0b101, keep_dims)
    assert layer.axes == (0, 2)
    (y,) = run(net, {"x": x}, layer.get_output(0))
    assert_close(y, reference(x, axis=(0, 2), keepdims=keep_dims), rtol=1e-5, atol=1e-5)


def test_reduce_axes_set_as_bitmask(rng):
    x = randn(rng, 2, 3, 4)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_reduce(xt, ReduceOperation.SUM, 1, True)
    layer.axes = 1 << 1
    layer.keep_dims = False
    (y,) = run(net, {"x": x}, layer.get_output(0))
    assert_close(y, x.sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", [TopKOperation.MAX, TopKOperation.MIN])
def test_topk(rng, op):
    x = randn(rng, 3, 10)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_topk(xt, op, 4, 1 << 1)
    assert layer.num_outputs == 2 and layer.k == 4 and layer.axes == 2
    if not has_kernel(LayerKind.TOPK):
        pytest.skip("no CPU TopK kernel in this tree yet: construction checked only")
    values, indices = run(net, {"x": x}, layer.get_output(0), layer.get_output(1))
    order = np.argsort(-x if op == TopKOperation.MAX else x, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(indices, order)
    assert_close(values, np.take_along_axis(x, order, 1))


# ----------------------------------------------------------------------------- data movement
def test_shuffle(rng):
    x = randn(rng, 2, 3, 4, 5)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_shuffle(xt)
    layer.first_transpose = (0, 2, 1, 3)
    layer.reshape_dims = Dims((0, 4, 15))        # 0 copies the input dim (zero_is_placeholder)
    layer.second_transpose = (0, 2, 1)
    assert layer.zero_is_placeholder and layer.reshape_dims == (0, 4, 15)
    (y,) = run(net, {"x": x}, layer.get_output(0))
    expected = x.transpose(0, 2, 1, 3).reshape(2, 4, 15).transpose(0, 2, 1)
    np.testing.assert_array_equal(y, expected)


def test_shuffle_dynamic_reshape_from_shape_tensor(rng):
    x, z = randn(rng, 2, 12), randn(rng, 2, 3, 4)
    net, (xt, zt) = network(("x", x.shape), ("z", z.shape))
    layer = net.add_shuffle(xt)
    layer.set_input(1, net.add_shape(zt).get_output(0))
    (y,) = run(net, {"x": x, "z": z}, layer.get_output(0))
    np.testing.assert_array_equal(y, x.reshape(2, 3, 4))


@pytest.mark.parametrize("rank,default_axis", [(4, 1), (3, 0), (2, 0)])
def test_concatenation_default_axis(rng, rank, default_axis):
    shape = (2, 3, 4, 5)[:rank]
    a, b = randn(rng, *shape), randn(rng, *shape)
    net, (at, bt) = network(("a", shape), ("b", shape))
    layer = net.add_concatenation([at, bt])
    assert layer.axis == default_axis
    (y,) = run(net, {"a": a, "b": b}, layer.get_output(0))
    np.testing.assert_array_equal(y, np.concatenate([a, b], default_axis))
    layer.axis = rank - 1
    net.unmark_output(layer.get_output(0))
    (y,) = run(net, {"a": a, "b": b}, layer.get_output(0))
    np.testing.assert_array_equal(y, np.concatenate([a, b], rank - 1))


def test_constant(rng):
    x, c = randn(rng, 2, 3), randn(rng, 3)
    net, (xt,) = network(("x", x.shape))
    const = net.add_constant((1, 3), Weights(c))
    assert const.shape == (1, 3) and const.weights.numpy().shape == (1, 3)
    layer = net.add_elementwise(xt, const.get_output(0), E.SUM)
    (y,) = run(net, {"x": x}, layer.get_output(0))
    assert_close(y, x + c[None])
    with pytest.raises(NetworkError, match="holds 4 values"):
        net.add_constant((2, 2), c)


@pytest.mark.parametrize("start,shape,stride", [
    ((0, 1, 2), (2, 2, 3), (1, 1, 1)),
    ((1, 0, 0), (1, 2, 3), (1, 2, 2)),
    ((1, 2, 6), (2, 3, 3), (-1, -1, -3)),   # negative strides run backwards, down to index 0
])
def test_slice_trt_semantics(rng, start, shape, stride):
    x = randn(rng, 2, 3, 7)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_slice(xt, start, shape, stride)
    assert layer.get_output(0).shape == shape
    (y,) = run(net, {"x": x}, layer.get_output(0))
    idx = np.ix_(*[np.arange(n) * st + s for s, n, st in zip(start, shape, stride)])
    np.testing.assert_array_equal(y, x[idx])


def test_slice_attributes_set_after_creation(rng):
    x = randn(rng, 4, 6)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_slice(xt, (0, 0), (1, 1), (1, 1))
    layer.start = (1, 5)
    layer.shape = Dims((2, 3))
    layer.stride = (2, -2)
    assert (layer.start, layer.shape, layer.stride) == ((1, 5), (2, 3), (2, -2))
    (y,) = run(net, {"x": x}, layer.get_output(0))
    np.testing.assert_array_equal(y, x[1:4:2, 5::-2])
    with pytest.raises(NetworkError, match="set_input"):
        layer.set_input(1, xt)


def test_gather(rng):
    x = randn(rng, 3, 5, 2)
    idx = np.array([[4, 0], [-1, 2]], dtype=np.int32)
    net, (xt,) = network(("x", x.shape))
    it = net.add_input("i", DataType.INT32, idx.shape)
    layer = net.add_gather(xt, it, 1)
    (y,) = run(net, {"x": x, "i": idx}, layer.get_output(0))
    np.testing.assert_array_equal(y, np.take(x, idx, axis=1))


def test_gather_elements(rng):
    x = randn(rng, 3, 4)
    idx = rng.integers(0, 4, (3, 2)).astype(np.int64)
    net, (xt,) = network(("x", x.shape))
    it = net.add_input("i", DataType.INT64, idx.shape)
    layer = net.add_gather_v2(xt, it, GatherMode.ELEMENT)
    layer.axis = 1
    (y,) = run(net, {"x": x, "i": idx}, layer.get_output(0))
    np.testing.assert_array_equal(y, np.take_along_axis(x, idx, 1))


def test_padding_nd_pads_and_crops_the_last_dims(rng):
    x = randn(rng, 1, 2, 4, 5)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_padding_nd(xt, (1, 2), (0, -1))
    assert layer.pre_padding_nd == (1, 2) and layer.post_padding_nd == (0, -1)
    (y,) = run(net, {"x": x}, layer.get_output(0))
    expected = np.pad(x, ((0, 0), (0, 0), (1, 0), (2, 0)))[..., :-1]
    np.testing.assert_array_equal(y, expected)
    layer.post_padding_nd = (2, 1)
    net.unmark_output(layer.get_output(0))
    (y,) = run(net, {"x": x}, layer.get_output(0))
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (0, 0), (1, 2), (2, 1))))


def test_shape_layer(rng):
    x = randn(rng, 2, 3, 5)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_shape(xt)
    (y,) = run(net, {"x": x}, layer.get_output(0))
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [2, 3, 5])


def test_resize(rng):
    x = randn(rng, 1, 2, 3, 4)
    net, (xt,) = network(("x", x.shape))
    layer = net.add_resize(xt)
    layer.shape = (1, 2, 6, 8)
    assert layer.shape == (1, 2, 6, 8) and layer.scales is None
    assert layer.coordinate_transformation == ResizeCoordinateTransformation.ASYMMETRIC
    if not has_kernel(LayerKind.RESIZE):
        pytest.skip("no CPU Resize kernel in this tree yet: construction checked only")
    (y,) = run(net, {"x": x}, layer.get_output(0))
    np.testing.assert_array_equal(y, x.repeat(2, 2).repeat(2, 3))  # nearest, asymmetric, floor
    layer.scales = (1.0, 1.0, 1.0, 2.0)
    net.unmark_output(layer.get_output(0))
    (y,) = run(net, {"x": x}, layer.get_output(0))
    np.testing.assert_array_equal(y, x.repeat(2, 3))


# ----------------------------------------------------------------------------- the network itself
def test_queries_and_shape_inference(rng):
    net, (xt,) = network(("x", (-1, 3, 8, 8)))
    conv = net.add_convolution_nd(xt, 4, (3, 3), randn(rng, 4, 3, 3, 3))
    relu = net.add_activation(conv.get_output(0), A.RELU)
    net.mark_output(relu.get_output(0))
    assert net.num_inputs == 1 and net.get_input(0) is xt and net.num_outputs == 1
    assert net.num_layers == 3  # kernel constant, convolution, activation
    assert net.get_layer(1) is conv and conv.num_inputs == 3 and conv.get_input(2) is None
    assert relu.get_output(0).shape == ("x:0", 4, 6, 6) or relu.get_output(0).shape[1:] == (4, 6, 6)
    assert relu.get_output(0).dtype == DataType.FLOAT
    assert not net.has_implicit_batch_dimension


def test_dynamic_network_builds_with_profile(rng):
    net, (xt,) = network(("x", (-1, 6)))
    w = randn(rng, 6, 2)
    const = net.add_constant((6, 2), w)
    mm = net.add_matrix_multiply(xt, M.NONE, const.get_output(0), M.NONE)
    net.mark_output(mm.get_output(0))
    engine = kilnrt.build(net, profiles={"x": ((1, 6), (4, 6), (8, 6))})
    for batch in (1, 5):
        x = randn(rng, batch, 6)
        assert_close(engine.run({"x": x})[mm.get_output(0).name], x @ w, rtol=1e-5, atol=1e-5)


def test_plan_round_trip_of_a_handmade_network(rng):
    x = randn(rng, 1, 2, 5, 5)
    net, (xt,) = network(("x", x.shape))
    conv = net.add_convolution_nd(xt, 3, (3, 3), randn(rng, 3, 2, 3, 3), randn(rng, 3))
    sl = net.add_slice(conv.get_output(0), (0, 0, 1, 0), (1, 3, 2, 3), (1, 1, 1, 1))
    sm = net.add_softmax(sl.get_output(0))
    net.mark_output(sm.get_output(0))
    engine = kilnrt.build(net)
    again = kilnrt.load(engine.serialize())
    np.testing.assert_array_equal(again.run({"x": x})[sm.get_output(0).name],
                                  engine.run({"x": x})[sm.get_output(0).name])


def test_add_input_accepts_numpy_dtypes_and_rejects_others():
    net = kilnrt.Network()
    assert net.add_input("a", np.float16, (2,)).dtype == DataType.HALF
    assert net.add_input("b", torch.int64, (2,)).dtype == DataType.INT64
    with pytest.raises(NetworkError, match="not a kilnrt DataType"):
        net.add_input("c", object(), (2,))


def test_adopt_moves_everything(rng):
    src, (xt,) = network(("x", (2, 3)))
    relu = src.add_activation(xt, A.RELU)
    src.mark_output(relu.get_output(0))
    dst = kilnrt.Network()
    dst.adopt(src)
    assert dst.num_layers == 1 and dst.get_input(0).name == "x" and src.num_layers == 0
    x = randn(rng, 2, 3)
    assert_close(kilnrt.build(dst).run({"x": x})[relu.get_output(0).name], np.maximum(x, 0))
    with pytest.raises(NetworkError, match="empty network"):
        dst.adopt(kilnrt.Network())


def test_unknown_attribute_names_the_params():
    net, (xt,) = network(("x", (2, 3)))
    layer = net.add_activation(xt, A.RELU)
    with pytest.raises(AttributeError, match="alpha, beta"):
        layer.gamma = 1.0
