"""Importers for neural-network layers: convolution, pooling, normalization, GEMM, softmax."""
from __future__ import annotations

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import (ActivationParams, ActivationType, ConcatenationParams, ConvolutionParams,
                                   DeconvolutionParams, ElementWiseOperation as E, ExpandParams, FillOperation,
                                   FillParams, IdentityParams, LayerKind, LRNParams, MatrixMultiplyParams,
                                   MatrixOperation, NormalizationParams, PaddingMode, PaddingParams, PluginParams,
                                   PoolingParams, PoolingType, ReduceOperation, ReduceParams, ScaleMode, ScaleParams,
                                   ScatterMode, ScatterParams, SliceParams, SoftmaxParams, UnaryOperation as U)
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


@importer("ConvTranspose")
def conv_transpose(ctx, node, x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None):
    """ConvTranspose: a DECONVOLUTION layer; output_shape is turned into pads (static spatial dims)."""
    wshape = w.shape
    ctx.require(wshape is not None and all(isinstance(d, int) and d > 0 for d in wshape),
                ErrorCode.UNSUPPORTED_NODE_DYNAMIC, "the weight shape must be known at build time")
    n = len(wshape) - 2
    ks = tuple(kernel_shape) if kernel_shape else tuple(wshape[2:])
    stride, pre, post, dil, mode = spatial_attrs(ctx, n, auto_pad, pads, strides, dilations)
    out_pad = tuple(int(v) for v in output_padding) if output_padding else (0,) * n
    if output_shape:
        spatial = tuple((x.shape or ())[2:])
        ctx.require(len(spatial) == n and all(isinstance(d, int) and d >= 0 for d in spatial),
                    ErrorCode.UNSUPPORTED_NODE_DYNAMIC, "output_shape needs the input's spatial dims at build time")
        wanted = tuple(int(v) for v in output_shape)[-n:]
        total = [stride[i] * (spatial[i] - 1) + out_pad[i] + (ks[i] - 1) * dil[i] + 1 - wanted[i] for i in range(n)]
        if auto_pad == "SAME_UPPER":
            pre = tuple(t // 2 if t > 0 else 0 for t in total)
        else:
            pre = tuple(t - t // 2 if t > 0 else 0 for t in total)
        post = tuple(t - b for t, b in zip(total, pre))
        mode = PaddingMode.EXPLICIT_ROUND_DOWN
    params = DeconvolutionParams(num_output_maps=int(wshape[1]) * int(group), kernel_size_nd=ks, stride_nd=stride,
                                 pre_padding=pre, post_padding=post, dilation_nd=dil, num_groups=int(group),
                                 output_padding=out_pad, padding_mode=mode)
    return ctx.out(LayerKind.DECONVOLUTION, params, x, w, b)


@importer("DeformConv", since=19)
def deform_conv(ctx, node, x, w, offset, b=None, mask=None, *, dilations=None, group=1, kernel_shape=None,
                offset_group=1, pads=None, strides=None):
    """DeformConv (2-D): the built-in DeformConv plugin."""
    wshape = w.shape
    ctx.require(wshape is not None and len(wshape) == 4 and all(isinstance(d, int) and d > 0 for d in wshape),
                ErrorCode.UNSUPPORTED_NODE_SHAPE, f"only 2-D DeformConv with a known weight shape is supported; "
                f"W has shape {wshape}")
    p = tuple(int(v) for v in pads) if pads else (0, 0, 0, 0)
    fields = (("stride", tuple(int(v) for v in strides) if strides else (1, 1)), ("pre", p[:2]),
              ("dilation", tuple(int(v) for v in dilations) if dilations else (1, 1)), ("group", int(group)),
              ("offset_group", int(offset_group)))
    return ctx.out(LayerKind.PLUGIN, PluginParams("DeformConv", "1", fields), x, w, offset, b, mask)


def _pool(ctx, kind, x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides, exclude_pad=True, p=2):
    ctx.require(kernel_shape, ErrorCode.INVALID_NODE, "kernel_shape is required")
    n = len(kernel_shape)
    stride, pre, post, dil, mode = spatial_attrs(ctx, n, auto_pad, pads, strides, dilations, ceil_mode)
    params = PoolingParams(kind, tuple(kernel_shape), stride, pre, post, dil, mode, exclude_pad, int(p))
    return ctx.out(LayerKind.POOLING, params, x)


@importer("MaxPool")
def max_pool(ctx, node, x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             storage_order=0, strides=None):
    """MaxPool: a POOLING layer; with the Indices output, the built-in MaxPoolWithIndices plugin."""
    if len(node.output) < 2 or not node.output[1]:
        return _pool(ctx, PoolingType.MAX, x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
    ctx.require(kernel_shape, ErrorCode.INVALID_NODE, "kernel_shape is required")
    n = len(kernel_shape)
    stride, pre, post, dil, mode = spatial_attrs(ctx, n, auto_pad, pads, strides, dilations, ceil_mode)
    fields = (("window", tuple(int(k) for k in kernel_shape)), ("stride", tuple(stride)), ("pre", tuple(pre)),
              ("post", tuple(post)), ("dilation", tuple(dil)), ("padding_mode", mode),
              ("column_major", bool(storage_order)))
    return ctx.add(LayerKind.PLUGIN, PluginParams("MaxPoolWithIndices", "1", fields), [x], num_outputs=2).outputs


@importer("MaxUnpool", since=9)
def max_unpool(ctx, node, x, indices, output_shape=None, *, kernel_shape=None, pads=None, strides=None):
    """MaxUnpool: X scattered at the flat Indices into zeros (SCATTER), zero-padded at the end to output_shape."""
    ctx.require(kernel_shape, ErrorCode.INVALID_NODE, "kernel_shape is required")
    n = len(kernel_shape)
    shape = x.shape
    ctx.require(shape is not None and len(shape) == n + 2 and all(isinstance(d, int) and d >= 0 for d in shape),
                ErrorCode.UNSUPPORTED_NODE_DYNAMIC, "the shape of X must be known at build time")
    stride = tuple(strides) if strides else (1,) * n
    p = tuple(pads) if pads else (0,) * (2 * n)
    inferred = list(shape[:2]) + [(shape[2 + i] - 1) * stride[i] - (p[i] + p[n + i]) + kernel_shape[i]
                                  for i in range(n)]
    zeros = ctx.out(LayerKind.FILL, FillParams(FillOperation.CONSTANT, 0, ctx.dtype(x)),
                    ctx.constant(np.asarray([int(np.prod(inferred))], np.int64)))
    flat = ctx.out(LayerKind.SCATTER, ScatterParams(ScatterMode.ELEMENT, 0), zeros,
                   ctx.reshape(indices, [-1]), ctx.reshape(x, [-1]))
    y = ctx.reshape(flat, inferred)
    if output_shape is None:
        return y
    # the output is the unpooled tensor followed by zeros up to output_shape
    grow = ctx.elementwise(E.SUB, ctx.cast(output_shape, DataType.INT64), ctx.constant(np.asarray(inferred, np.int64)))
    pads_t = ctx.out(LayerKind.CONCATENATION, ConcatenationParams(0), ctx.constant(np.zeros(n + 2, np.int64)), grow)
    return ctx.out(LayerKind.PADDING, PaddingParams("constant"), y, pads_t)


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


def _batch_norm_training(ctx, x, scale, b, mean, var, epsilon: float, momentum: float):
    """y from the batch's mean and (biased) variance over every axis but 1; running statistics
    ``stat * momentum + batch_stat * (1 - momentum)``."""
    rank = ctx.rank(x)
    dtype = ctx.dtype(x).numpy
    axes = (0,) + tuple(range(2, rank))
    batch_mean = ctx.out(LayerKind.REDUCE, ReduceParams(ReduceOperation.AVG, axes, True), x)
    diff = ctx.elementwise(E.SUB, x, batch_mean)
    batch_var = ctx.out(LayerKind.REDUCE, ReduceParams(ReduceOperation.AVG, axes, True),
                        ctx.elementwise(E.PROD, diff, diff))
    tail = [1] * (rank - 2)
    std = ctx.unary(U.SQRT, ctx.elementwise(E.SUM, batch_var, ctx.constant(np.asarray(epsilon, dtype))))
    y = ctx.elementwise(E.PROD, ctx.elementwise(E.DIV, diff, std), ctx.reshape(scale, [-1] + tail))
    y = ctx.elementwise(E.SUM, y, ctx.reshape(b, [-1] + tail))
    keep, take = ctx.constant(np.asarray(momentum, dtype)), ctx.constant(np.asarray(1 - momentum, dtype))

    def running(stat, batch_stat):
        return ctx.elementwise(E.SUM, ctx.elementwise(E.PROD, stat, keep),
                               ctx.elementwise(E.PROD, ctx.reshape(batch_stat, [-1]), take))

    return y, running(mean, batch_mean), running(var, batch_var)


@importer("BatchNormalization")
def batch_normalization(ctx, node, x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9,
                        training_mode=0, spatial=1, is_test=0, consumed_inputs=None):
    """BatchNormalization: a per-channel SCALE layer when the statistics are constant; training_mode=1
    normalizes with the batch statistics and also returns the updated running mean and variance."""
    ctx.require(spatial == 1, ErrorCode.UNSUPPORTED_NODE_ATTR, "spatial=0 is not supported")
    if training_mode:
        return _batch_norm_training(ctx, x, scale, b, mean, var, float(epsilon), float(momentum))
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


def _layer_norm_statistics(ctx, x, axes: tuple[int, ...], epsilon: float):
    """LayerNormalization's Mean and InvStdDev outputs (float32), as REDUCE and pointwise layers."""
    from kilnrt.network.dtypes import DataType

    xs = x if ctx.dtype(x) == DataType.FLOAT else ctx.cast(x, DataType.FLOAT)
    mean = ctx.out(LayerKind.REDUCE, ReduceParams(ReduceOperation.AVG, axes, True), xs)
    diff = ctx.elementwise(E.SUB, xs, mean)
    var = ctx.out(LayerKind.REDUCE, ReduceParams(ReduceOperation.AVG, axes, True),
                  ctx.elementwise(E.PROD, diff, diff))
    eps = ctx.constant(np.asarray(epsilon, dtype=np.float32))
    inv_std = ctx.unary(U.RECIP, ctx.unary(U.SQRT, ctx.elementwise(E.SUM, var, eps)))
    return mean, inv_std


@importer("LayerNormalization", since=17)
def layer_normalization(ctx, node, x, scale, b=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    """LayerNormalization: a NORMALIZATION layer; Mean and InvStdDev (float32) only when used."""
    ctx.require(stash_type == 1, ErrorCode.UNSUPPORTED_NODE_ATTR, f"stash_type={stash_type}; supported: 1 (float32)")
    rank = ctx.rank(x)
    axes = tuple(range(axis % rank, rank))
    y = ctx.out(LayerKind.NORMALIZATION, NormalizationParams(axes, float(epsilon)), x, scale, b)
    if any(node.output[1:]):
        return (y, *_layer_norm_statistics(ctx, x, axes, float(epsilon)))
    return y


@importer("RMSNormalization", since=23)
def rms_normalization(ctx, node, x, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    """RMSNormalization: x / sqrt(mean(x^2 over axis..) + epsilon) * scale, one NORMALIZATION layer."""
    ctx.require(stash_type == 1, ErrorCode.UNSUPPORTED_NODE_ATTR, f"stash_type={stash_type}; supported: 1 (float32)")
    rank = ctx.rank(x)
    return ctx.out(LayerKind.NORMALIZATION, NormalizationParams(tuple(range(axis % rank, rank)), float(epsilon),
                                                                rms=True), x, scale)


def _group_norm(ctx, x, scale, bias, epsilon, num_groups):
    rank = ctx.rank(x)
    tail = [1] * (rank - 2)
    s, b = ctx.reshape(scale, [-1] + tail), ctx.reshape(bias, [-1] + tail)
    return ctx.out(LayerKind.NORMALIZATION, NormalizationParams.group_norm(rank, epsilon, num_groups), x, s, b)


@importer("GroupNormalization", since=18)
def group_normalization_v18(ctx, node, x, scale, bias, *, epsilon=1e-5, num_groups=None):
    """GroupNormalization-18: scale and bias hold one value per group, repeated over its channels."""
    ctx.require(num_groups, ErrorCode.INVALID_NODE, "num_groups is required")
    channels = (x.shape or (None, None))[1]
    ctx.require(isinstance(channels, int) and channels > 0, ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                "the channel dim of X must be known at build time")
    per_group = channels // int(num_groups)

    def per_channel(t):
        return ctx.reshape(ctx.out(LayerKind.EXPAND, ExpandParams(), ctx.reshape(t, [-1, 1]),
                                   ctx.constant(np.asarray([int(num_groups), per_group], np.int64))), [-1])

    return _group_norm(ctx, x, per_channel(scale), per_channel(bias), epsilon, num_groups)


@importer("GroupNormalization", since=21)
def group_normalization(ctx, node, x, scale, bias, *, epsilon=1e-5, num_groups=None, stash_type=1):
    """GroupNormalization: statistics per group of channels, scale and bias per channel."""
    ctx.require(num_groups, ErrorCode.INVALID_NODE, "num_groups is required")
    ctx.require(stash_type == 1, ErrorCode.UNSUPPORTED_NODE_ATTR, f"stash_type={stash_type}; supported: 1 (float32)")
    return _group_norm(ctx, x, scale, bias, epsilon, num_groups)


def _dropout_outputs(ctx, node, x):
    """Inference dropout: y = x, and the mask (when used) is all true."""
    y = ctx.out(LayerKind.IDENTITY, IdentityParams(), x)
    if len(node.output) < 2 or not node.output[1]:
        return y
    mask = ctx.out(LayerKind.FILL, FillParams(FillOperation.CONSTANT, True, DataType.BOOL), ctx.shape_of(x))
    return y, mask


@importer("Dropout")
def dropout_v1(ctx, node, x, *, ratio=0.5, is_test=0, consumed_inputs=None, seed=None):
    """Dropout: identity at inference; the mask output is all true."""
    return _dropout_outputs(ctx, node, x)


@importer("Dropout", since=12)
def dropout(ctx, node, x, ratio=None, training_mode=None, *, seed=None):
    """Dropout: identity at inference; the mask output is all true. training_mode must be a constant false."""
    if training_mode is not None:
        t = ctx.value(training_mode)
        ctx.require(t is not None and not bool(np.asarray(t)), ErrorCode.UNSUPPORTED_NODE_INPUT,
                    "training_mode must be a constant false: kilnrt runs inference and has no random dropout")
    return _dropout_outputs(ctx, node, x)


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
    return flatten_to_2d(ctx, x, axis + rank if axis < 0 else axis)  # axis == rank is valid


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


@importer("CausalConvWithState", since=27)
def causal_conv_with_state(ctx, node, x, weight, bias=None, past_state=None, *, activation="none"):
    """CausalConvWithState: depthwise causal 1-D conv over [past_state | x] (zeros without a past),
    optionally followed by SiLU; present_state is the last k - 1 steps of that padded input."""
    ctx.require(activation in ("none", "silu", "swish"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"activation={activation!r}; supported: none, silu, swish")
    wshape = weight.shape
    ctx.require(wshape is not None and len(wshape) == 3 and all(isinstance(d, int) and d > 0 for d in wshape),
                ErrorCode.UNSUPPORTED_NODE_DYNAMIC, "the weight shape [C, 1, k] must be known at build time")
    channels, k = int(wshape[0]), int(wshape[2])
    if past_state is not None:
        padded = ctx.out(LayerKind.CONCATENATION, ConcatenationParams(2), past_state, x)
    else:
        pads = ctx.constant(np.asarray([0, 0, k - 1, 0, 0, 0], np.int64))
        padded = ctx.out(LayerKind.PADDING, PaddingParams("constant"), x, pads)
    params = ConvolutionParams(num_output_maps=channels, kernel_size_nd=(k,), stride_nd=(1,), pre_padding=(0,),
                               post_padding=(0,), dilation_nd=(1,), num_groups=channels)
    y = ctx.out(LayerKind.CONVOLUTION, params, padded, weight, bias)
    if activation != "none":
        y = ctx.out(LayerKind.ACTIVATION, ActivationParams(ActivationType.SILU), y)
    i64 = lambda v: ctx.constant(np.asarray([v], np.int64))  # noqa: E731
    start = -(k - 1) if k > 1 else np.iinfo(np.int64).max
    present = ctx.out(LayerKind.SLICE, SliceParams(), padded, i64(start), i64(np.iinfo(np.int64).max), i64(2))
    return y, present


@importer("SwiGLU", since=28)
def swiglu(ctx, node, a, b, *, alpha=1.0):
    """SwiGLU: a * sigmoid(alpha * a) * b, as pointwise layers."""
    gate_in = a if alpha == 1.0 else ctx.elementwise(E.PROD, a, ctx.constant(np.asarray(alpha, ctx.dtype(a).numpy)))
    gate = ctx.out(LayerKind.ACTIVATION, ActivationParams(ActivationType.SIGMOID), gate_in)
    return ctx.elementwise(E.PROD, ctx.elementwise(E.PROD, a, gate), b)
