"""Importers for neural-network layers: convolution, pooling, normalization, GEMM, softmax."""
from __future__ import annotations

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.layers import (ConvolutionParams, ElementWiseOperation as E, IdentityParams,
                                   LayerKind, LRNParams, MatrixMultiplyParams, MatrixOperation,
                                   NormalizationParams, PaddingMode, PoolingParams, PoolingType,
                                   ReduceOperation, ReduceParams, ScaleMode, ScaleParams,
                                   SoftmaxParams, UnaryOperation as U)
from kilnrt.onnx.registry import importer

_AUTO_PAD = {"SAME_UPPER": PaddingMode.SAME_UPPER, "SAME_LOWER": PaddingMode.SAME_LOWER}


def spatial_attrs(ctx, n: int, auto_pad: str, pads, strides, dilations, ceil_mode: int = 0):
    """ONNX conv/pool attributes -> (stride, pre, post, dilation, padding mode)."""
    ctx.require(auto_pad in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"auto_pad={auto_pad!r}; supported: NOTSET, VALID, SAME_UPPER, SAME_LOWER")
    stride = tuple(strides) if strides else (1,) * n
    dil = tuple(dilations) if dilations else (1,) * n
    if auto_pad in _AUTO_PAD:
        return stride, (0,) * n, (0,) * n, dil, _AUTO_PAD[auto_pad]
    p = tuple(pads) if pads and auto_pad == "NOTSET" else (0,) * (2 * n)
    ctx.require(len(p) == 2 * n, ErrorCode.INVALID_NODE, f"pads has {len(p)} values; expected {2 * n}")
    mode = PaddingMode.EXPLICIT_ROUND_UP if ceil_mode else PaddingMode.EXPLICIT_ROUND_DOWN
    return stride, p[:n], p[n:], dil, mode


@importer("Conv")
def conv(ctx, node, x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
         pads=None, strides=None):
    """Conv: 1-D, 2-D, 3-D (and N-D) convolution with groups, dilations and auto_pad."""
    wshape = w.shape
    ctx.require(wshape is not None and all(isinstance(d, int) and d > 0 for d in wshape),
                ErrorCode.UNSUPPORTED_NODE_DYNAMIC, "the weight shape must be known at build time")
    n = len(wshape) - 2
    ks = tuple(kernel_shape) if kernel_shape else tuple(wshape[2:])
    stride, pre, post, dil, mode = spatial_attrs(ctx, n, auto_pad, pads, strides, dilations)
    params = ConvolutionParams(num_output_maps=int(wshape[0]), kernel_size_nd=ks, stride_nd=stride,
                               pre_padding=pre, post_padding=post, dilation_nd=dil, num_groups=int(group),
                               padding_mode=mode)
    return ctx.out(LayerKind.CONVOLUTION, params, x, w, b)


def _pool(ctx, kind, x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides, exclude_pad=True, p=2):
    ctx.require(kernel_shape, ErrorCode.INVALID_NODE, "kernel_shape is required")
    n = len(kernel_shape)
    stride, pre, post, dil, mode = spatial_attrs(ctx, n, auto_pad, pads, strides, dilations, ceil_mode)
    params = PoolingParams(kind, tuple(kernel_shape), stride, pre, post, dil, mode, exclude_pad, int(p))
    return ctx.out(LayerKind.POOLING, params, x)


@importer("MaxPool")
def max_pool(ctx, node, x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             storage_order=0, strides=None):
    """MaxPool: the Indices output is not supported."""
    ctx.require(len(node.output) < 2 or not node.output[1], ErrorCode.UNSUPPORTED_NODE_INPUT,
                "the Indices output of MaxPool is not supported")
    return _pool(ctx, PoolingType.MAX, x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)


@importer("AveragePool")
def average_pool(ctx, node, x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None,
                 kernel_shape=None, pads=None, strides=None):
    return _pool(ctx, PoolingType.AVERAGE, x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides,
                 exclude_pad=not count_include_pad)


@importer("LpPool")
def lp_pool(ctx, node, x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, p=2,
            pads=None, strides=None):
    return _pool(ctx, PoolingType.LP, x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides, p=p)


def _global(ctx, x, op):
    rank = ctx.rank(x)
    return ctx.out(LayerKind.REDUCE, ReduceParams(op, tuple(range(2, rank)), True), x)


@importer("GlobalAveragePool")
def global_average_pool(ctx, node, x):
    return _global(ctx, x, ReduceOperation.AVG)


@importer("GlobalMaxPool")
def global_max_pool(ctx, node, x):
    return _global(ctx, x, ReduceOperation.MAX)


@importer("LRN")
def lrn(ctx, node, x, *, alpha=0.0001, beta=0.75, bias=1.0, size=None):
    ctx.require(size, ErrorCode.INVALID_NODE, "size is required")
    return ctx.out(LayerKind.LRN, LRNParams(int(size), float(alpha), float(beta), float(bias)), x)


@importer("BatchNormalization")
def batch_normalization(ctx, node, x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9,
                        training_mode=0, spatial=1, is_test=0, consumed_inputs=None):
    """BatchNormalization (inference): a per-channel SCALE layer when the statistics are constant."""
    ctx.require(not training_mode, ErrorCode.UNSUPPORTED_NODE_ATTR,
                "training_mode=1 is not supported (kilnrt runs inference); export the model in eval mode")
    ctx.require(spatial == 1, ErrorCode.UNSUPPORTED_NODE_ATTR, "spatial=0 is not supported")
    values = [ctx.value(t) for t in (scale, b, mean, var)]
    dtype = ctx.dtype(x).numpy
    if all(v is not None for v in values):
        s, bb, m, v = (np.asarray(a, dtype=np.float64) for a in values)
        k = s / np.sqrt(v + epsilon)
        shift = bb - m * k
        return ctx.out(LayerKind.SCALE, ScaleParams(ScaleMode.CHANNEL, 1), x,
                       ctx.constant(shift.astype(dtype)), ctx.constant(k.astype(dtype)), None)
    rank = ctx.rank(x)
    tail = [1] * (rank - 2)
    s, bb, m, v = (ctx.reshape(t, [-1] + tail) for t in (scale, b, mean, var))
    eps = ctx.constant(np.asarray(epsilon, dtype=dtype))
    inv = ctx.unary(U.SQRT, ctx.elementwise(E.SUM, v, eps))
    y = ctx.elementwise(E.DIV, ctx.elementwise(E.SUB, x, m), inv)
    return ctx.elementwise(E.SUM, ctx.elementwise(E.PROD, y, s), bb)


@importer("InstanceNormalization", since=6)
def instance_normalization(ctx, node, x, scale, b, *, epsilon=1e-5):
    rank = ctx.rank(x)
    tail = [1] * (rank - 2)
    s, bb = ctx.reshape(scale, [-1] + tail), ctx.reshape(b, [-1] + tail)
    return ctx.out(LayerKind.NORMALIZATION, NormalizationParams(tuple(range(2, rank)), float(epsilon)), x, s, bb)


@importer("LayerNormalization", since=17)
def layer_normalization(ctx, node, x, scale, b=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    """LayerNormalization: the Mean and InvStdDev outputs are not produced."""
    rank = ctx.rank(x)
    axis = axis % rank
    return ctx.out(LayerKind.NORMALIZATION, NormalizationParams(tuple(range(axis, rank)), float(epsilon)),
                   x, scale, b)


@importer("Dropout")
def dropout_v1(ctx, node, x, *, ratio=0.5, is_test=0, consumed_inputs=None, seed=None):
    """Dropout: identity at inference (the mask output is not produced)."""
    return ctx.out(LayerKind.IDENTITY, IdentityParams(), x)


@importer("Dropout", since=12)
def dropout(ctx, node, x, ratio=None, training_mode=None, *, seed=None):
    """Dropout: identity at inference (the mask output is not produced)."""
    if training_mode is not None:
        t = ctx.value(training_mode)
        ctx.require(t is not None and not bool(np.asarray(t)), ErrorCode.UNSUPPORTED_NODE_INPUT,
                    "training_mode must be a constant false for inference")
    return ctx.out(LayerKind.IDENTITY, IdentityParams(), x)


def _softmax(ctx, node, x, axis, log):
    if ctx.opset >= 13:
        return ctx.out(LayerKind.SOFTMAX, SoftmaxParams(int(axis), log), x)
    # opsets < 13 flatten to 2-D at `axis`, softmax over the second dim, and restore the shape
    rank = ctx.rank(x)
    axis = axis % rank if rank else 0
    flat = flatten_to_2d(ctx, x, axis)
    y = ctx.out(LayerKind.SOFTMAX, SoftmaxParams(1, log), flat)
    return ctx.reshape(y, ctx.shape_of(x))


@importer("Softmax")
def softmax_v1(ctx, node, x, *, axis=1):
    return _softmax(ctx, node, x, axis, False)


@importer("Softmax", since=13)
def softmax(ctx, node, x, *, axis=-1):
    return _softmax(ctx, node, x, axis, False)


@importer("LogSoftmax")
def log_softmax_v1(ctx, node, x, *, axis=1):
    return _softmax(ctx, node, x, axis, True)


@importer("LogSoftmax", since=13)
def log_softmax(ctx, node, x, *, axis=-1):
    return _softmax(ctx, node, x, axis, True)


def flatten_to_2d(ctx, x, axis: int):
    shape = x.shape
    head, tail = shape[:axis], shape[axis:]
    static = lambda dims: all(isinstance(d, int) and d >= 0 for d in dims)  # noqa: E731
    if static(head):
        return ctx.reshape(x, [int(np.prod(head, dtype=np.int64)), -1], zero_is_placeholder=False)
    if static(tail):
        return ctx.reshape(x, [-1, int(np.prod(tail, dtype=np.int64))], zero_is_placeholder=False)
    if axis == 1:
        return ctx.reshape(x, [0, -1])
    # dynamic: [prod(shape[:axis]), -1] computed at run time
    from kilnrt.network.layers import ConcatenationParams, SliceParams

    shp = ctx.shape_of(x)
    first = ctx.out(LayerKind.SLICE, SliceParams(), shp, ctx.constant([0], np.int64), ctx.constant([axis], np.int64))
    prod = ctx.out(LayerKind.REDUCE, ReduceParams(ReduceOperation.PROD, (0,), True), first)
    dims = ctx.out(LayerKind.CONCATENATION, ConcatenationParams(0), prod, ctx.constant([-1], np.int64))
    return ctx.reshape(x, dims, zero_is_placeholder=False)


@importer("Flatten")
def flatten(ctx, node, x, *, axis=1):
    rank = ctx.rank(x)
    return flatten_to_2d(ctx, x, axis % rank if rank else 0)


@importer("Gemm")
def gemm(ctx, node, a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=0):
    """Gemm: alpha * A' B' + beta * C as a matrix multiply and elementwise layers."""
    op = lambda t: MatrixOperation.TRANSPOSE if t else MatrixOperation.NONE  # noqa: E731
    y = ctx.out(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(op(transA), op(transB)), a, b)
    dtype = ctx.dtype(a).numpy
    if alpha != 1.0:
        y = ctx.elementwise(E.PROD, y, ctx.constant(np.asarray(alpha, dtype=dtype)))
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = ctx.elementwise(E.PROD, c, ctx.constant(np.asarray(beta, dtype=dtype)))
        y = ctx.elementwise(E.SUM, y, c)
    return y


@importer("MatMul")
def matmul(ctx, node, a, b):
    return ctx.out(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(), a, b)
