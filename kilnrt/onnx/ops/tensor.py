"""Importers for tensor manipulation: reshape, transpose, slice, split, gather, concat, pad, constants,
triangles and diagonals, block rearrangements (DepthToSpace...), crop-and-pad, BitCast and Col2Im.

Dims computed at import time are python ints when known, else [1] int64 tensors built from SHAPE
(see :func:`dim_of`), so the same importer serves static and dynamic shapes."""
from __future__ import annotations

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import ElementWiseOperation as E
from kilnrt.network.layers import (ConcatenationParams, ExpandParams, FillOperation, FillParams,
                                   GatherMode, GatherParams, IdentityParams, LayerKind, PaddingParams,
                                   PluginParams, ReduceOperation, ReduceParams, SelectParams, SliceParams,
                                   SqueezeParams, TileParams, UnsqueezeParams)
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


# ----------------------------------------------------------------------------- shape arithmetic
# A dim is a python int when it is known at import time, else a [1] int64 tensor computed from
# SHAPE (constant folding turns what becomes static later into constants).
def dim_of(ctx, x, i: int):
    """Dim ``i`` of x: an int when static, else a [1] int64 tensor sliced from SHAPE(x)."""
    shape = x.shape
    if shape is not None and isinstance(shape[i], int) and shape[i] >= 0:
        return int(shape[i])
    i = i % ctx.rank(x)
    return _slice_const(ctx, ctx.shape_of(x), [i], [i + 1], [0], [1])


_INT_OPS = {E.SUM: lambda a, b: a + b, E.SUB: lambda a, b: a - b, E.PROD: lambda a, b: a * b,
            E.DIV: lambda a, b: a // b, E.MAX: max, E.MIN: min}


def dim_arith(ctx, op: E, a, b):
    """``a op b`` on dims (ints or [1] int64 tensors); python arithmetic when both are ints."""
    if isinstance(a, int) and isinstance(b, int):
        return _INT_OPS[op](a, b)
    as_tensor = lambda v: ctx.constant(np.asarray([v], np.int64)) if isinstance(v, int) else v  # noqa: E731
    return ctx.elementwise(op, as_tensor(a), as_tensor(b))


def dims_vector(ctx, dims):
    """An int64 vector of dims (ints or [1] tensors): a constant when all are ints, else a concat."""
    if all(isinstance(d, int) for d in dims):
        return ctx.constant(np.asarray(dims, np.int64))
    parts = [ctx.constant(np.asarray([d], np.int64)) if isinstance(d, int) else d for d in dims]
    return ctx.out(LayerKind.CONCATENATION, ConcatenationParams(0), *parts)


def reshape_to(ctx, x, dims):
    """Reshape to dims (ints or [1] tensors); a 0 is a zero-size dim, not a placeholder."""
    static = all(isinstance(d, int) for d in dims)
    return ctx.reshape(x, dims if static else dims_vector(ctx, dims), zero_is_placeholder=False)


def arange_of(ctx, n):
    """int64 [0, 1, ..., n-1] for a dim n."""
    if isinstance(n, int):
        return ctx.constant(np.arange(n, dtype=np.int64))
    zero, one = ctx.constant(np.asarray(0, np.int64)), ctx.constant(np.asarray(1, np.int64))
    return ctx.out(LayerKind.FILL, FillParams(FillOperation.RANGE, 0, DataType.INT64), zero, n, one)


# ----------------------------------------------------------------------------- split
def _split(ctx, x, axis: int, split, num_outputs: int):
    """Slices of ``x`` along ``axis``: sizes from ``split`` (ints or an int64 tensor), else
    ``num_outputs`` parts of ceil(dim / num_outputs) (the last one smaller)."""
    rank = ctx.rank(x)
    ctx.require(-rank <= axis < rank, ErrorCode.INVALID_NODE, f"axis={axis} is out of range for rank {rank}")
    axis %= rank
    if split is not None and not isinstance(split, (list, tuple)):
        known = ctx.value(split)
        if known is not None:
            split = [int(s) for s in np.asarray(known).reshape(-1)]
    if split is None:
        dim = dim_of(ctx, x, axis)
        part = dim_arith(ctx, E.DIV, dim_arith(ctx, E.SUM, dim, num_outputs - 1), num_outputs)
        starts = [dim_arith(ctx, E.MIN, dim_arith(ctx, E.PROD, part, i), dim) for i in range(num_outputs)]
        ends = [dim_arith(ctx, E.MIN, dim_arith(ctx, E.PROD, part, i + 1), dim) for i in range(num_outputs)]
    elif isinstance(split, (list, tuple)):
        ctx.require(len(split) == num_outputs, ErrorCode.INVALID_NODE,
                    f"split has {len(split)} sizes but the node has {num_outputs} outputs")
        offsets = np.concatenate([[0], np.cumsum(split)]).astype(np.int64)
        starts, ends = [int(v) for v in offsets[:-1]], [int(v) for v in offsets[1:]]
    else:  # sizes computed at run time: start i = sum(split[:i])
        total = lambda n: ctx.out(LayerKind.REDUCE, ReduceParams(ReduceOperation.SUM, (0,), True),  # noqa: E731
                                  _slice_const(ctx, split, [0], [n], [0], [1]))
        starts = [0] + [total(i) for i in range(1, num_outputs)]
        ends = starts[1:] + [total(num_outputs)]
    axes = ctx.constant(np.asarray([axis], np.int64))
    step = ctx.constant(np.asarray([1], np.int64))
    return tuple(ctx.out(LayerKind.SLICE, SliceParams(), x, dims_vector(ctx, [s]), dims_vector(ctx, [e]), axes, step)
                 for s, e in zip(starts, ends))


@importer("Split")
def split_v1(ctx, node, x, sizes=None, *, axis=0, split=None):
    """Split-1: sizes from the second input or the ``split`` attribute, else equal parts."""
    return _split(ctx, x, int(axis), sizes if sizes is not None else split, len(node.output))


@importer("Split", since=2)
def split_v2(ctx, node, x, *, axis=0, split=None):
    """Split-2/11: sizes from the ``split`` attribute, else equal parts."""
    return _split(ctx, x, int(axis), list(split) if split is not None else None, len(node.output))


@importer("Split", since=13)
def split_v13(ctx, node, x, split=None, *, axis=0):
    """Split-13: sizes from the ``split`` input (constant or computed at run time), else equal parts."""
    return _split(ctx, x, int(axis), split, len(node.output))


@importer("Split", since=18)
def split_v18(ctx, node, x, split=None, *, axis=0, num_outputs=None):
    """Split-18: sizes from ``split``, else ``num_outputs`` parts of ceil(dim / n), the last smaller."""
    ctx.require(split is None or num_outputs is None, ErrorCode.INVALID_NODE,
                "give either the 'split' input or the 'num_outputs' attribute, not both")
    n = len(node.output) if num_outputs is None else int(num_outputs)
    return _split(ctx, x, int(axis), split, n)


# ----------------------------------------------------------------------------- triangles and diagonals
def _diagonal_offsets(ctx, x):
    """int64 [rows, cols] of ``col - row`` for the last two dims of x (the diagonal index)."""
    rows = ctx.reshape(arange_of(ctx, dim_of(ctx, x, -2)), [-1, 1])
    cols = arange_of(ctx, dim_of(ctx, x, -1))
    return ctx.elementwise(E.SUB, cols, rows)


@importer("Trilu", since=14)
def trilu(ctx, node, x, k=None, *, upper=1):
    """Trilu: keep elements with ``col - row >= k`` (upper) or ``<= k`` (lower), zero the rest."""
    ctx.require(ctx.rank(x) >= 2, ErrorCode.INVALID_NODE, f"input must have rank >= 2, got {ctx.rank(x)}")
    k = ctx.constant(np.asarray(0, np.int64)) if k is None else ctx.cast(k, DataType.INT64)
    keep = ctx.elementwise(E.GREATER_EQUAL if upper else E.LESS_EQUAL, _diagonal_offsets(ctx, x), k)
    zero = ctx.constant(np.zeros((), ctx.dtype(x).numpy))
    return ctx.out(LayerKind.SELECT, SelectParams(), keep, x, zero)


@importer("EyeLike", since=9)
def eye_like(ctx, node, x, *, dtype=None, k=0):
    """EyeLike: ones on diagonal ``k`` of a matrix shaped like x, of type ``dtype`` (default x's)."""
    ctx.require(ctx.rank(x) == 2, ErrorCode.INVALID_NODE, f"input must have rank 2, got {ctx.rank(x)}")
    to = ctx.dtype(x) if dtype is None else _onnx_dtype(ctx, dtype)
    on_diagonal = ctx.elementwise(E.EQUAL, _diagonal_offsets(ctx, x), ctx.constant(np.asarray(int(k), np.int64)))
    return ctx.cast(on_diagonal, to)


def _onnx_dtype(ctx, elem_type: int) -> DataType:
    try:
        return DataType.from_onnx(int(elem_type))
    except TypeError as exc:
        raise ctx.error(ErrorCode.UNSUPPORTED_NODE_DATATYPE, str(exc)) from None


# ----------------------------------------------------------------------------- block rearrangements
def _require_4d(ctx, x, blocksize):
    ctx.require(ctx.rank(x) == 4, ErrorCode.UNSUPPORTED_NODE_SHAPE,
                f"input must be 4-D [N, C, H, W], got rank {ctx.rank(x)}")
    ctx.require(int(blocksize) > 0, ErrorCode.INVALID_NODE, f"blocksize must be positive, got {blocksize}")
    return [dim_of(ctx, x, i) for i in range(4)]


@importer("DepthToSpace", since=1)
def depth_to_space(ctx, node, x, *, blocksize=None, mode="DCR"):
    """DepthToSpace: [N, C, H, W] -> [N, C/b², H*b, W*b]; DCR takes depth as (b, b, C'), CRD as (C', b, b)."""
    ctx.require(mode in ("DCR", "CRD"), ErrorCode.UNSUPPORTED_NODE_ATTR, f"mode={mode!r}; supported: DCR, CRD")
    n, c, h, w = _require_4d(ctx, x, blocksize)
    b = int(blocksize)
    c_out = dim_arith(ctx, E.DIV, c, b * b)
    if mode == "DCR":
        y = reshape_to(ctx, x, [n, b, b, c_out, h, w])
        perm = (0, 3, 4, 1, 5, 2)
    else:
        y = reshape_to(ctx, x, [n, c_out, b, b, h, w])
        perm = (0, 1, 4, 2, 5, 3)
    y = ctx.transpose(y, perm)
    return reshape_to(ctx, y, [n, c_out, dim_arith(ctx, E.PROD, h, b), dim_arith(ctx, E.PROD, w, b)])


@importer("SpaceToDepth", since=1)
def space_to_depth(ctx, node, x, *, blocksize=None, mode="DCR"):
    """SpaceToDepth: [N, C, H, W] -> [N, C*b², H/b, W/b], depth ordered (b, b, C) (DCR) or (C, b, b) (CRD)."""
    ctx.require(mode in ("DCR", "CRD"), ErrorCode.UNSUPPORTED_NODE_ATTR, f"mode={mode!r}; supported: DCR, CRD")
    n, c, h, w = _require_4d(ctx, x, blocksize)
    b = int(blocksize)
    h_out, w_out = dim_arith(ctx, E.DIV, h, b), dim_arith(ctx, E.DIV, w, b)
    y = reshape_to(ctx, x, [n, c, h_out, b, w_out, b])
    y = ctx.transpose(y, (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4))
    return reshape_to(ctx, y, [n, dim_arith(ctx, E.PROD, c, b * b), h_out, w_out])


# ----------------------------------------------------------------------------- crop and pad
@importer("CenterCropPad", since=18)
def center_crop_pad(ctx, node, x, shape, *, axes=None):
    """CenterCropPad: crop (start at floor((dim - size) / 2)) or zero-pad (floor((size - dim) / 2)
    before) each axis to ``shape``, as a Slice then a Pad."""
    rank = ctx.rank(x)
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    axes_t = ctx.constant(np.asarray(axes, np.int64))
    dims = ctx.out(LayerKind.GATHER, GatherParams(0), ctx.shape_of(x), axes_t)
    size = ctx.cast(shape, DataType.INT64)
    zero, two = ctx.constant(np.asarray([0], np.int64)), ctx.constant(np.asarray([2], np.int64))
    excess = ctx.elementwise(E.SUB, dims, size)
    start = ctx.elementwise(E.DIV, ctx.elementwise(E.MAX, excess, zero), two)
    end = ctx.elementwise(E.SUM, start, ctx.elementwise(E.MIN, dims, size))
    cropped = ctx.out(LayerKind.SLICE, SliceParams(), x, start, end, axes_t,
                      ctx.constant(np.ones(len(axes), np.int64)))
    missing = ctx.elementwise(E.MAX, ctx.elementwise(E.SUB, size, dims), zero)
    before = ctx.elementwise(E.DIV, missing, two)
    pads = ctx.out(LayerKind.CONCATENATION, ConcatenationParams(0), before, ctx.elementwise(E.SUB, missing, before))
    return ctx.out(LayerKind.PADDING, PaddingParams("constant"), cropped, pads, None, axes_t)


# ----------------------------------------------------------------------------- plugins
@importer("BitCast", since=26)
def bit_cast(ctx, node, x, *, to=None):
    """BitCast: reinterpret the bits as another type of the same width (built-in plugin)."""
    ctx.require(to is not None, ErrorCode.INVALID_NODE, "attribute 'to' is required")
    src, dst = ctx.dtype(x), _onnx_dtype(ctx, to)
    ctx.require(src.itemsize == dst.itemsize, ErrorCode.INVALID_NODE,
                f"BitCast needs types of the same width: {src.name} is {src.itemsize * 8} bits, "
                f"{dst.name} is {dst.itemsize * 8}")
    return ctx.out(LayerKind.PLUGIN, PluginParams("BitCast", "1", (("to", dst),)), x)


@importer("Col2Im", since=18)
def col2im(ctx, node, x, image_shape, block_shape, *, dilations=None, pads=None, strides=None):
    """Col2Im: sum column blocks [N, C*prod(block), L] into an image [N, C, *image_shape] (built-in plugin)."""
    fields = (("dilations", None if dilations is None else tuple(int(d) for d in dilations)),
              ("pads", None if pads is None else tuple(int(p) for p in pads)),
              ("strides", None if strides is None else tuple(int(s) for s in strides)))
    return ctx.out(LayerKind.PLUGIN, PluginParams("Col2Im", "1", fields, host_inputs=(1, 2)), x, image_shape, block_shape)
