"""Importers for tensor manipulation: reshape, transpose, slice, gather, concat, cast, constants."""
from __future__ import annotations

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import (ConcatenationParams, ExpandParams, FillOperation, FillParams,
                                   GatherMode, GatherParams, IdentityParams, LayerKind, PaddingParams,
                                   ReduceOperation, ReduceParams, SliceParams, SqueezeParams,
                                   TileParams, UnsqueezeParams)
from kilnrt.onnx.registry import importer


@importer("Identity")
def identity(ctx, node, x):
    return ctx.out(LayerKind.IDENTITY, IdentityParams(), x)


@importer("Constant")
def constant(ctx, node, *, value=None, value_float=None, value_floats=None, value_int=None, value_ints=None,
             value_string=None, value_strings=None, sparse_value=None):
    if value is not None:
        return ctx.constant(value, name=node.output[0])
    if value_float is not None:
        return ctx.constant(np.asarray(value_float, np.float32), name=node.output[0])
    if value_floats is not None:
        return ctx.constant(np.asarray(value_floats, np.float32), name=node.output[0])
    if value_int is not None:
        return ctx.constant(np.asarray(value_int, np.int64), name=node.output[0])
    if value_ints is not None:
        return ctx.constant(np.asarray(value_ints, np.int64), name=node.output[0])
    raise ctx.error(ErrorCode.UNSUPPORTED_NODE_ATTR,
                    "only tensor, float(s) and int(s) constants are supported (strings and sparse values are not)")


@importer("ConstantOfShape", since=9)
def constant_of_shape(ctx, node, shape, *, value=None):
    v = np.asarray(value if value is not None else np.zeros(1, np.float32)).reshape(-1)
    dtype = DataType.from_numpy(v.dtype)
    return ctx.out(LayerKind.FILL, FillParams(FillOperation.CONSTANT, v[0].item(), dtype), shape)


@importer("Range", since=11)
def range_(ctx, node, start, limit, delta):
    dtype = ctx.dtype(start)
    return ctx.out(LayerKind.FILL, FillParams(FillOperation.RANGE, 0, dtype), start, limit, delta)


@importer("Shape")
def shape(ctx, node, x, *, start=0, end=None):
    s = ctx.shape_of(x)
    if start == 0 and end is None:
        return s
    rank = ctx.rank(x)
    end = rank if end is None else end
    return _slice_const(ctx, s, [start], [end], [0], [1])


@importer("Size")
def size(ctx, node, x):
    s = ctx.shape_of(x)
    return ctx.out(LayerKind.REDUCE, ReduceParams(ReduceOperation.PROD, (0,), False), s)


@importer("Reshape", since=5)
def reshape(ctx, node, data, shape, *, allowzero=0):
    dims = ctx.value(shape)
    if dims is not None:
        return ctx.reshape(data, [int(d) for d in np.asarray(dims).reshape(-1)], zero_is_placeholder=not allowzero)
    return ctx.reshape(data, shape, zero_is_placeholder=not allowzero)


@importer("Transpose")
def transpose(ctx, node, x, *, perm=None):
    if perm is None:
        perm = tuple(reversed(range(ctx.rank(x))))
    return ctx.transpose(x, perm)


@importer("Concat", since=4)
def concat(ctx, node, *xs, axis=None):
    ctx.require(axis is not None, ErrorCode.INVALID_NODE, "attribute 'axis' is required")
    rank = ctx.rank(xs[0])
    return ctx.out(LayerKind.CONCATENATION, ConcatenationParams(int(axis) % rank if rank else 0), *xs)


def _slice_const(ctx, x, starts, ends, axes, steps):
    c = lambda v: ctx.constant(np.asarray(v, dtype=np.int64))  # noqa: E731
    return ctx.out(LayerKind.SLICE, SliceParams(), x, c(starts), c(ends), c(axes), c(steps))


@importer("Slice")
def slice_v1(ctx, node, x, *, starts=None, ends=None, axes=None):
    axes = axes if axes is not None else list(range(len(starts)))
    return _slice_const(ctx, x, starts, ends, axes, [1] * len(starts))


@importer("Slice", since=10)
def slice_(ctx, node, x, starts, ends, axes=None, steps=None):
    return ctx.out(LayerKind.SLICE, SliceParams(), x, starts, ends, axes, steps)


@importer("Squeeze")
def squeeze_v1(ctx, node, x, *, axes=None):
    return ctx.out(LayerKind.SQUEEZE, SqueezeParams(None if axes is None else tuple(axes)), x)


@importer("Squeeze", since=13)
def squeeze(ctx, node, x, axes=None):
    if axes is None:
        return ctx.out(LayerKind.SQUEEZE, SqueezeParams(None), x)
    v = ctx.value(axes)
    if v is not None:
        return ctx.out(LayerKind.SQUEEZE, SqueezeParams(tuple(int(a) for a in np.asarray(v).reshape(-1))), x)
    return ctx.out(LayerKind.SQUEEZE, SqueezeParams(None), x, axes)


@importer("Unsqueeze")
def unsqueeze_v1(ctx, node, x, *, axes=None):
    ctx.require(axes is not None, ErrorCode.INVALID_NODE, "attribute 'axes' is required")
    return ctx.unsqueeze(x, axes)


@importer("Unsqueeze", since=13)
def unsqueeze(ctx, node, x, axes):
    v = ctx.value(axes)
    if v is not None:
        return ctx.unsqueeze(x, [int(a) for a in np.asarray(v).reshape(-1)])
    return ctx.out(LayerKind.UNSQUEEZE, UnsqueezeParams(None), x, axes)


@importer("Gather")
def gather(ctx, node, data, indices, *, axis=0):
    return ctx.out(LayerKind.GATHER, GatherParams(int(axis)), data, indices)


@importer("GatherElements", since=11)
def gather_elements(ctx, node, data, indices, *, axis=0):
    return ctx.out(LayerKind.GATHER, GatherParams(int(axis), GatherMode.ELEMENT), data, indices)


@importer("GatherND", since=11)
def gather_nd(ctx, node, data, indices, *, batch_dims=0):
    return ctx.out(LayerKind.GATHER, GatherParams(0, GatherMode.ND, int(batch_dims)), data, indices)


@importer("Expand", since=8)
def expand(ctx, node, x, shape):
    return ctx.out(LayerKind.EXPAND, ExpandParams(), x, shape)


@importer("Tile", since=6)
def tile(ctx, node, x, repeats):
    return ctx.out(LayerKind.TILE, TileParams(), x, repeats)


@importer("Pad", since=2)
def pad_v2(ctx, node, x, *, mode="constant", pads=None, value=0.0):
    c = ctx.constant(np.asarray(pads, np.int64))
    v = ctx.constant(np.asarray(value, dtype=ctx.dtype(x).numpy))
    return ctx.out(LayerKind.PADDING, PaddingParams(_pad_mode(ctx, mode)), x, c, v)


@importer("Pad", since=11)
def pad(ctx, node, x, pads, constant_value=None, axes=None, *, mode="constant"):
    return ctx.out(LayerKind.PADDING, PaddingParams(_pad_mode(ctx, mode)), x, pads, constant_value, axes)


def _pad_mode(ctx, mode: str) -> str:
    ctx.require(mode in ("constant", "reflect", "edge", "wrap"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"mode={mode!r}; supported: constant, reflect, edge, wrap")
    return mode
