"""Importers for index-driven ops: scatters, one-hot, non-zero, unique, compress, reverse-sequence."""
from __future__ import annotations

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import ElementWiseOperation as E
from kilnrt.network.layers import (ExpandParams, GatherParams, LayerKind, NonZeroParams, OneHotParams, PluginParams,
                                   ReverseSequenceParams, ScatterMode, ScatterParams)
from kilnrt.onnx.ops.tensor import arange_of, dim_of
from kilnrt.onnx.registry import importer

_REDUCTIONS = ("none", "add", "mul", "max", "min")


def _reduction(ctx, reduction: str, allowed=_REDUCTIONS) -> str:
    ctx.require(reduction in allowed, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"reduction={reduction!r}; supported: {', '.join(allowed)}")
    return reduction


@importer("Scatter", since=9)
def scatter_v9(ctx, node, data, indices, updates, *, axis=0):
    """Scatter (deprecated in opset 11): ScatterElements without reduction."""
    return ctx.out(LayerKind.SCATTER, ScatterParams(ScatterMode.ELEMENT, int(axis)), data, indices, updates)


@importer("ScatterElements", since=11)
def scatter_elements(ctx, node, data, indices, updates, *, axis=0, reduction="none"):
    """ScatterElements: ``out[..., indices[i, j], ...] = updates[i, j]`` along ``axis``;
    duplicates combine with ``reduction`` (add, mul from opset 16; max, min from 18)."""
    return ctx.out(LayerKind.SCATTER, ScatterParams(ScatterMode.ELEMENT, int(axis), _reduction(ctx, reduction)),
                   data, indices, updates)


@importer("ScatterND", since=11)
def scatter_nd(ctx, node, data, indices, updates, *, reduction="none"):
    """ScatterND: index tuples in the last dim of ``indices`` address slices of ``data``."""
    return ctx.out(LayerKind.SCATTER, ScatterParams(ScatterMode.ND, 0, _reduction(ctx, reduction)),
                   data, indices, updates)


@importer("TensorScatter", since=24)
def tensor_scatter(ctx, node, past_cache, update, write_indices=None, *, mode="linear", axis=-2):
    """TensorScatter (KV-cache update): ``cache[b, ..., write_indices[b] + i, ...] = update[b, ..., i, ...]``
    along ``axis`` (modulo the cache length when ``mode='circular'``), as one ScatterElements."""
    ctx.require(mode in ("linear", "circular"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"mode={mode!r}; supported: linear, circular")
    rank = ctx.rank(past_cache)
    axis = int(axis) % rank
    ctx.require(axis > 0, ErrorCode.INVALID_NODE, f"axis={axis} must not be the batch axis 0")
    steps = ctx.reshape(arange_of(ctx, dim_of(ctx, update, axis)), [-1] + [1] * (rank - 1 - axis))
    idx = steps
    if write_indices is not None:
        start = ctx.reshape(ctx.cast(write_indices, DataType.INT64), [-1] + [1] * (rank - 1))
        idx = ctx.elementwise(E.SUM, start, steps)
    if mode == "circular":
        length = dim_of(ctx, past_cache, axis)
        length = ctx.constant(np.asarray(length, np.int64)) if isinstance(length, int) else length
        idx = ctx.elementwise(E.MOD, idx, length)
    idx = ctx.out(LayerKind.EXPAND, ExpandParams(), idx, ctx.shape_of(update))
    return ctx.out(LayerKind.SCATTER, ScatterParams(ScatterMode.ELEMENT, axis), past_cache, idx, update)


@importer("OneHot", since=9)
def one_hot(ctx, node, indices, depth, values, *, axis=-1):
    """OneHot: a new axis of size ``depth`` holding values[1] at each index, values[0] elsewhere."""
    return ctx.out(LayerKind.ONE_HOT, OneHotParams(int(axis)), indices, depth, values)


@importer("NonZero", since=9)
def non_zero(ctx, node, x):
    """NonZero: int64 [rank, count] coordinates; the count is known only at run time."""
    return ctx.out(LayerKind.NON_ZERO, NonZeroParams(), x)


@importer("Compress", since=9)
def compress(ctx, node, x, condition, *, axis=None):
    """Compress: the slices along ``axis`` (of the flattened input without it) where condition
    is true, as Gather(x, NonZero(condition)); a shorter condition selects among the first entries."""
    if axis is None:
        x, axis = ctx.reshape(x, [-1]), 0
    else:
        rank = ctx.rank(x)
        ctx.require(-rank <= int(axis) < rank, ErrorCode.INVALID_NODE, f"axis={axis} is out of range for rank {rank}")
        axis = int(axis) % rank
    cond = condition if ctx.dtype(condition) == DataType.BOOL else ctx.cast(condition, DataType.BOOL)
    where = ctx.reshape(ctx.out(LayerKind.NON_ZERO, NonZeroParams(), ctx.reshape(cond, [-1])), [-1])
    return ctx.out(LayerKind.GATHER, GatherParams(axis), x, where)


@importer("Unique", since=11)
def unique(ctx, node, x, *, axis=None, sorted=1):  # noqa: A002 - ONNX's attribute name
    """Unique: (values, first indices, inverse indices, counts), all sized at run time."""
    if axis is not None:
        rank = ctx.rank(x)
        ctx.require(-rank <= int(axis) < rank, ErrorCode.INVALID_NODE, f"axis={axis} is out of range for rank {rank}")
        axis = int(axis) % rank
    params = PluginParams("Unique", "1", (("axis", axis), ("sorted", int(sorted))))
    return tuple(ctx.add(LayerKind.PLUGIN, params, [x], num_outputs=4).outputs)


@importer("ReverseSequence", since=10)
def reverse_sequence(ctx, node, x, sequence_lens, *, batch_axis=1, time_axis=0):
    """ReverseSequence: reverse the first sequence_lens[b] steps along time_axis for each batch entry."""
    ctx.require(int(batch_axis) != int(time_axis), ErrorCode.INVALID_NODE,
                f"batch_axis and time_axis must differ (both are {batch_axis})")
    return ctx.out(LayerKind.REVERSE_SEQUENCE, ReverseSequenceParams(int(batch_axis), int(time_axis)),
                   x, sequence_lens)
