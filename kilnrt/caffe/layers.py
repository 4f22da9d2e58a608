"""One converter per Caffe layer type: ``fn(ctx, layer) -> [top tensors]``, in :data:`CONVERTERS`.

Each follows the layer's documented Caffe semantics (caffe.proto's comments and the layer's
forward pass); a parameter value kilnrt does not implement raises, naming the layer.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from kilnrt.caffe.context import Context
from kilnrt.errors import ErrorCode, KilnError
from kilnrt.network.layers import (ActivationParams, ActivationType, ConcatenationParams, ConvolutionParams,
                                   DeconvolutionParams, ElementWiseOperation, ElementWiseParams, IdentityParams,
                                   LayerKind, LRNParams, MatrixMultiplyParams, MatrixOperation, PaddingMode,
                                   PoolingParams, PoolingType, ScaleMode, ScaleParams, ShuffleParams,
                                   SoftmaxParams)

CONVERTERS: dict[str, Callable] = {}


def converter(*types: str):
    def register(fn):
        for t in types:
            CONVERTERS[t] = fn
        return fn
    return register


def supported_types() -> list[str]:
    return sorted({"Input", *CONVERTERS})


def unsupported(net, note: str = "") -> KilnError | None:
    """The error for a net's layers of types kilnrt has no converter for (None if there are none)."""
    by_type: dict[str, list[str]] = {}
    for layer in net.layer:
        if layer.type != "Input" and layer.type not in CONVERTERS:
            by_type.setdefault(layer.type, []).append(layer.name)
    if not by_type:
        return None
    unknown = [f"{t} ({names[0]})" if len(names) == 1 else
               f"{t} ({len(names)} layers: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
               for t, names in sorted(by_type.items())]
    return KilnError(ErrorCode.UNSUPPORTED_NODE, f"Caffe layer type(s) not supported: {', '.join(unknown)}. "
                                                 f"Supported: {', '.join(supported_types())}{note}")


def _spatial(ctx: Context, p, name: str, default: int, n: int, repeated: bool) -> tuple[int, ...]:
    """Caffe's pad/kernel_size/stride: one value, one per spatial dim, or the 2-D _h/_w pair."""
    h, w = f"{name.split('_')[0]}_h", f"{name.split('_')[0]}_w"     # kernel_size -> kernel_h
    has_hw = p.HasField(h) or p.HasField(w)
    if has_hw:
        if n != 2:
            raise ctx.fail(f"{h}/{w} are for 2-D blobs; this one has {n} spatial dims")
        if repeated and len(getattr(p, name)) or not repeated and p.HasField(name):
            raise ctx.fail(f"give either {name} or {h}/{w}, not both", "INVALID_NODE")
        return int(getattr(p, h)), int(getattr(p, w))
    values = list(getattr(p, name)) if repeated else ([getattr(p, name)] if p.HasField(name) else [])
    if not values:
        return (default,) * n
    if len(values) == 1:
        return (int(values[0]),) * n
    if len(values) != n:
        raise ctx.fail(f"{name} has {len(values)} values for {n} spatial dims", "INVALID_NODE")
    return tuple(int(v) for v in values)


# ----------------------------------------------------------------------------- inputs
def input_shapes(ctx: Context, layer) -> list[tuple[int, ...]]:
    shapes = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
    if len(shapes) == 1:
        shapes = shapes * len(layer.top)
    if len(shapes) != len(layer.top):
        raise ctx.fail(f"{len(layer.top)} top(s) but {len(shapes)} shape(s) in input_param", "INVALID_NODE")
    return shapes


# ----------------------------------------------------------------------------- convolution
@converter("Convolution", "Deconvolution")
def convolution(ctx: Context, layer):
    p, (x,) = layer.convolution_param, ctx.bottoms(1)
    shape = ctx.shape(x)
    if p.axis != 1:
        raise ctx.fail(f"axis {p.axis}: kilnrt supports axis 1 (N, C, spatial...) only")
    n = len(shape) - 2
    kernel = _spatial(ctx, p, "kernel_size", 0, n, True)
    if 0 in kernel:
        raise ctx.fail("kernel_size (or kernel_h/kernel_w) is required", "INVALID_NODE")
    pad, stride = _spatial(ctx, p, "pad", 0, n, True), _spatial(ctx, p, "stride", 1, n, True)
    dil = tuple(int(d) for d in p.dilation) or (1,)
    dil = dil * n if len(dil) == 1 else dil
    group, k, c = int(p.group), int(p.num_output), shape[1]
    if k % group or c % group:
        raise ctx.fail(f"num_output {k} and {c} input channels must both divide by group {group}", "INVALID_NODE")
    blobs = ctx.blobs(2 if p.bias_term else 1, 2 if p.bias_term else 1)
    deconv = layer.type == "Deconvolution"
    wshape = ((c, k // group) if deconv else (k, c // group)) + kernel
    w = ctx.const(ctx.blob(blobs[0], wshape, "weight"), "kernel")
    b = ctx.const(ctx.blob(blobs[1], (k,), "bias"), "bias") if p.bias_term else None
    cls, kind = (DeconvolutionParams, LayerKind.DECONVOLUTION) if deconv else (ConvolutionParams, LayerKind.CONVOLUTION)
    params = cls(num_output_maps=k, kernel_size_nd=kernel, stride_nd=stride, pre_padding=pad, post_padding=pad,
                 dilation_nd=dil, num_groups=group)
    return [ctx.add(kind, params, [x, w, b])]


@converter("Pooling")
def pooling(ctx: Context, layer):
    p, (x,) = layer.pooling_param, ctx.bottoms(1)
    shape = ctx.shape(x)
    n = len(shape) - 2
    if p.pool not in (0, 1):
        raise ctx.fail("pool STOCHASTIC is not supported; MAX and AVE are")
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or any(_spatial(ctx, p, "pad", 0, n, False)) \
                or any(s != 1 for s in _spatial(ctx, p, "stride", 1, n, False)):
            raise ctx.fail("global_pooling takes no kernel size, pad 0 and stride 1 (as Caffe requires)",
                           "INVALID_NODE")
        kernel, pad, stride = tuple(shape[2:]), (0,) * n, (1,) * n
    else:
        kernel = _spatial(ctx, p, "kernel_size", 0, n, False)
        if 0 in kernel:
            raise ctx.fail("kernel_size (or kernel_h/kernel_w) is required unless global_pooling", "INVALID_NODE")
        pad, stride = _spatial(ctx, p, "pad", 0, n, False), _spatial(ctx, p, "stride", 1, n, False)
        if any(pd >= k for pd, k in zip(pad, kernel)):
            raise ctx.fail(f"pad {pad} must be smaller than the kernel {kernel} (as Caffe requires)", "INVALID_NODE")
    # Caffe's output size rounds up (round_mode CEIL, the default) and drops a last window that
    # would start in the padding; its averages count padding cells but not the cells past it:
    # kilnrt's EXPLICIT_ROUND_UP with padding counted is exactly that.
    mode = PaddingMode.EXPLICIT_ROUND_DOWN if p.round_mode == 1 else PaddingMode.EXPLICIT_ROUND_UP
    for d, k, st, pd in zip(shape[2:], kernel, stride, pad):
        if mode == PaddingMode.EXPLICIT_ROUND_UP and not pd and -(-(d - k) // st) * st >= d:
            raise ctx.fail(f"kernel {k} with stride {st} on {d} cells: Caffe's last window would hold no "
                           "input cell (a kernel smaller than the stride, no pad); kilnrt does not emulate it")
    kind = PoolingType.MAX if p.pool == 0 else PoolingType.AVERAGE
    params = PoolingParams(kind, kernel, stride_nd=stride, pre_padding=pad, post_padding=pad, padding_mode=mode,
                           average_count_excludes_padding=False)
    return [ctx.add(LayerKind.POOLING, params, [x])]


@converter("LRN")
def lrn(ctx: Context, layer):
    p, (x,) = layer.lrn_param, ctx.bottoms(1)
    if p.norm_region != 0:
        raise ctx.fail("norm_region WITHIN_CHANNEL is not supported; ACROSS_CHANNELS is")
    if p.local_size % 2 == 0:
        raise ctx.fail(f"local_size {p.local_size} must be odd (as Caffe requires)", "INVALID_NODE")
    return [ctx.add(LayerKind.LRN, LRNParams(int(p.local_size), float(p.alpha), float(p.beta), float(p.k)), [x])]


# ----------------------------------------------------------------------------- inner product
def _reshape(ctx: Context, x, dims: tuple[int, ...], suffix: str):
    return ctx.add(LayerKind.SHUFFLE, ShuffleParams(reshape_dims=tuple(dims), zero_is_placeholder=False), [x],
                   suffix)


@converter("InnerProduct")
def inner_product(ctx: Context, layer):
    p, (x,) = layer.inner_product_param, ctx.bottoms(1)
    shape = ctx.shape(x)
    axis = ctx.axis(p.axis, len(shape))
    k, n = int(np.prod(shape[axis:], dtype=np.int64)), int(p.num_output)
    blobs = ctx.blobs(2 if p.bias_term else 1, 2 if p.bias_term else 1)
    w = ctx.blob(blobs[0], (k, n) if p.transpose else (n, k), "weight")
    flat = _reshape(ctx, x, shape[:axis] + (k,), "/flatten") if len(shape) != axis + 1 else x
    mm = MatrixMultiplyParams(MatrixOperation.NONE, MatrixOperation.NONE if p.transpose else MatrixOperation.TRANSPOSE)
    y = ctx.add(LayerKind.MATRIX_MULTIPLY, mm, [flat, ctx.const(w, "weight")], "" if not p.bias_term else "/matmul")
    if p.bias_term:
        b = ctx.blob(blobs[1], (1,) * axis + (n,), "bias")
        y = ctx.add(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.SUM), [y, ctx.const(b, "bias")])
    return [y]


# ----------------------------------------------------------------------------- pointwise
def _activation(ctx: Context, kind: ActivationType, alpha: float = 0.0):
    (x,) = ctx.bottoms(1)
    return [ctx.add(LayerKind.ACTIVATION, ActivationParams(kind, alpha=alpha), [x])]


@converter("ReLU")
def relu(ctx: Context, layer):
    slope = float(layer.relu_param.negative_slope)
    return _activation(ctx, ActivationType.LEAKY_RELU, slope) if slope else _activation(ctx, ActivationType.RELU)


@converter("Sigmoid")
def sigmoid(ctx: Context, layer):
    return _activation(ctx, ActivationType.SIGMOID)


@converter("TanH")
def tanh(ctx: Context, layer):
    return _activation(ctx, ActivationType.TANH)


@converter("ELU")
def elu(ctx: Context, layer):
    return _activation(ctx, ActivationType.ELU, float(layer.elu_param.alpha))


@converter("PReLU")
def prelu(ctx: Context, layer):
    (x,) = ctx.bottoms(1)
    shape = ctx.shape(x)
    if len(shape) < 2:
        raise ctx.fail(f"needs a blob of rank 2 or more (N, C, ...), got shape {shape}", "INVALID_NODE")
    (slope,) = ctx.blobs(1, 1)
    count = 1 if layer.prelu_param.channel_shared else shape[1]
    slope = ctx.blob(slope, (1, count) + (1,) * (len(shape) - 2), "slope")
    pos = ctx.add(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [x], "/pos")
    neg = ctx.add(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.SUB), [x, pos], "/neg")
    neg = ctx.add(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.PROD), [neg, ctx.const(slope, "slope")],
                  "/scaled")
    return [ctx.add(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.SUM), [pos, neg])]


@converter("Power")
def power(ctx: Context, layer):
    p, (x,) = layer.power_param, ctx.bottoms(1)
    weights = [ctx.const(np.array([v], np.float32), what) for v, what in
               ((p.shift, "shift"), (p.scale, "scale"), (p.power, "power"))]
    return [ctx.add(LayerKind.SCALE, ScaleParams(ScaleMode.UNIFORM, 1), [x, *weights])]


@converter("BatchNorm")
def batch_norm(ctx: Context, layer):
    p, (x,) = layer.batch_norm_param, ctx.bottoms(1)
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise ctx.fail("use_global_stats: false normalizes with the batch's own statistics (training); "
                       "kilnrt applies the stored mean and variance only (use_global_stats: true or unset)")
    c = ctx.shape(x)[1]
    mean, var, factor = ctx.blobs(3, 3)
    # the stored sums are scaled by the moving-average factor blob[2] (0 means no statistics yet)
    f = float(factor.reshape(-1)[0])
    f = 0.0 if f == 0 else 1.0 / f
    mean = ctx.blob(mean, (c,), "mean").astype(np.float64) * f
    var = ctx.blob(var, (c,), "variance").astype(np.float64) * f
    scale = 1.0 / np.sqrt(var + float(p.eps))
    return [ctx.add(LayerKind.SCALE, ScaleParams(ScaleMode.CHANNEL, 1),
                    [x, ctx.const((-mean * scale).astype(np.float32), "shift"),
                     ctx.const(scale.astype(np.float32), "scale"), None])]


@converter("Scale")
def scale(ctx: Context, layer):
    p, (x,) = layer.scale_param, ctx.bottoms(1)
    shape = ctx.shape(x)
    axis = ctx.axis(p.axis, len(shape))
    num_axes = len(shape) - axis if p.num_axes == -1 else int(p.num_axes)
    if num_axes not in (0, 1) or num_axes == 1 and axis != 1:
        raise ctx.fail(f"axis {p.axis}, num_axes {p.num_axes}: kilnrt supports a per-channel scale (axis 1, "
                       "num_axes 1) or a scalar (num_axes 0) with learned blobs")
    blobs = ctx.blobs(2 if p.bias_term else 1, 2 if p.bias_term else 1)
    size = (shape[1],) if num_axes else (1,)
    mode = ScaleMode.CHANNEL if num_axes else ScaleMode.UNIFORM
    s = ctx.const(ctx.blob(blobs[0], size, "scale"), "scale")
    b = ctx.const(ctx.blob(blobs[1], size, "bias"), "shift") if p.bias_term else None
    return [ctx.add(LayerKind.SCALE, ScaleParams(mode, 1), [x, b, s, None])]


@converter("Eltwise")
def eltwise(ctx: Context, layer):
    p, xs = layer.eltwise_param, ctx.bottoms()
    if len(xs) < 2:
        raise ctx.fail("needs two or more bottoms", "INVALID_NODE")
    coeff = list(p.coeff)
    if coeff and (p.operation != 1 or len(coeff) != len(xs)):
        raise ctx.fail("coeff is for operation SUM, one value per bottom", "INVALID_NODE")
    op = {0: ElementWiseOperation.PROD, 1: ElementWiseOperation.SUM, 2: ElementWiseOperation.MAX}[p.operation]
    if coeff and any(c != 1 for c in coeff):
        rank = len(ctx.shape(xs[0]))
        xs = [x if c == 1 else ctx.add(LayerKind.ELEMENTWISE, ElementWiseParams(ElementWiseOperation.PROD),
                                       [x, ctx.const(np.full((1,) * rank, c, np.float32), f"coeff{i}")], f"/coeff{i}")
              for i, (x, c) in enumerate(zip(xs, coeff))]
    y = xs[0]
    for i, x in enumerate(xs[1:], 1):
        y = ctx.add(LayerKind.ELEMENTWISE, ElementWiseParams(op), [y, x], "" if i == len(xs) - 1 else f"/{i}")
    return [y]


@converter("Softmax")
def softmax(ctx: Context, layer):
    (x,) = ctx.bottoms(1)
    axis = ctx.axis(layer.softmax_param.axis, len(ctx.shape(x)))
    return [ctx.add(LayerKind.SOFTMAX, SoftmaxParams(axis=axis), [x])]


# ----------------------------------------------------------------------------- data movement
@converter("Concat")
def concat(ctx: Context, layer):
    p, xs = layer.concat_param, ctx.bottoms()
    axis = int(p.concat_dim) if p.HasField("concat_dim") and not p.HasField("axis") else int(p.axis)
    axis = ctx.axis(axis, len(ctx.shape(xs[0])))
    if len(xs) == 1:
        return [ctx.add(LayerKind.IDENTITY, IdentityParams(), xs)]
    return [ctx.add(LayerKind.CONCATENATION, ConcatenationParams(axis), xs)]


@converter("Dropout")
def dropout(ctx: Context, layer):
    (x,) = ctx.bottoms(1)       # at inference Caffe's dropout passes its input through
    return [x]


@converter("Split")
def split(ctx: Context, layer):
    (x,) = ctx.bottoms(1)
    return [x] * len(layer.top)


@converter("Flatten")
def flatten(ctx: Context, layer):
    p, (x,) = layer.flatten_param, ctx.bottoms(1)
    shape = ctx.shape(x)
    start, end = ctx.axis(p.axis, len(shape)), ctx.axis(p.end_axis, len(shape), "end_axis")
    dims = shape[:start] + (int(np.prod(shape[start:end + 1], dtype=np.int64)),) + shape[end + 1:]
    return [_reshape(ctx, x, dims, "")]


@converter("Reshape")
def reshape(ctx: Context, layer):
    p, (x,) = layer.reshape_param, ctx.bottoms(1)
    shape = ctx.shape(x)
    rank = len(shape)
    start = p.axis + rank + 1 if p.axis < 0 else int(p.axis)
    if not 0 <= start <= rank:
        raise ctx.fail(f"axis {p.axis} is out of range for a rank-{rank} blob", "INVALID_NODE")
    end = rank if p.num_axes == -1 else start + int(p.num_axes)
    if p.num_axes < -1 or end > rank:
        raise ctx.fail(f"num_axes {p.num_axes} is out of range from axis {p.axis}", "INVALID_NODE")
    spec = [int(d) for d in p.shape.dim]
    if spec.count(-1) > 1:
        raise ctx.fail("at most one dim may be -1", "INVALID_NODE")
    middle = [shape[start + i] if d == 0 else d for i, d in enumerate(spec)]
    dims = list(shape[:start]) + middle + list(shape[end:])
    total = int(np.prod(shape, dtype=np.int64))
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        dims[dims.index(-1)] = total // known if known else 0
    if int(np.prod(dims, dtype=np.int64)) != total:
        raise ctx.fail(f"cannot reshape {shape} to {tuple(dims)}", "INVALID_NODE")
    return [_reshape(ctx, x, tuple(dims), "")]


# SSD Caffe's layers register themselves here
from kilnrt.caffe import ssd_layers  # noqa: E402,F401
