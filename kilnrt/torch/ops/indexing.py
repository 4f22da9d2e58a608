"""ATen importers for sorting and scans (sort, argsort, topk, cumsum, cumprod), advanced indexing
(``x[i, :, j]`` and ``x[mask] = v``) and element-wise gather and scatter (``gather``,
``scatter``, ``scatter_add``, ``scatter_reduce``, ``select_scatter``), through the layers the ONNX
importer uses for TopK, CumSum, GatherND, ScatterND, GatherElements and ScatterElements."""
from __future__ import annotations

import numpy as np
import torch

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import (ConcatenationParams, CumulativeParams, ElementWiseOperation, ExpandParams,
                                   FillOperation, FillParams, GatherMode, GatherParams, LayerKind, NonZeroParams,
                                   ReduceOperation, ScatterMode, ScatterParams, SelectParams, SliceParams,
                                   TopKOperation, TopKParams)
from kilnrt.torch.ops.tensor import dim_size
from kilnrt.torch.registry import aten

A = torch.ops.aten


# -- sorting and scans --------------------------------------------------------------------------
def _topk(ctx, x, k, dim, largest: bool, sorted_: bool = True):
    """A TOPK layer of ``k`` (an int, or an int64 scalar tensor computed at run time) along ``dim``."""
    rank = ctx.rank(x)
    ctx.require(rank > 0, ErrorCode.UNSUPPORTED_NODE_INPUT, "a 0-d input is not supported (nothing to sort)")
    axis = ctx.axis(int(dim), rank)
    op = TopKOperation.MAX if largest else TopKOperation.MIN
    known = ctx.int_value(k)
    if known is not None:
        layer = ctx.add(LayerKind.TOPK, TopKParams(op, known, axis, bool(sorted_)), [x], num_outputs=2)
    else:
        count = ctx.reshape(ctx.tensor(k, DataType.INT64), [1])
        layer = ctx.add(LayerKind.TOPK, TopKParams(op, 1, axis, bool(sorted_)), [x, count], num_outputs=2)
    return layer.outputs[0], layer.outputs[1]


@aten(A.sort.default, A.sort.stable)
def sort(ctx, self, dim=-1, descending=False, stable=None):
    """sort: a TOPK of the whole dim (values, int64 indices); equal values keep index order (stable=True's order)."""
    return list(_topk(ctx, self, dim_size(ctx, self, ctx.axis(int(dim), ctx.rank(self))), dim, bool(descending)))


@aten(A.argsort.default, A.argsort.stable)
def argsort(ctx, self, dim=-1, descending=False, stable=None):
    """argsort: the indices of a sort (a TOPK of the whole dim)."""
    return sort(ctx, self, dim, descending)[1]


@aten(A.topk.default)
def topk(ctx, self, k, dim=-1, largest=True, sorted=True):  # noqa: A002 - the schema's name
    """topk: a TOPK layer (k may be computed at run time); equal values keep index order."""
    return list(_topk(ctx, self, k, dim, bool(largest), bool(sorted)))


def _cumulative(ctx, x, dim, dtype, op: ReduceOperation):
    """A CUMULATIVE layer (integers and booleans accumulate in int64, as torch, unless dtype says otherwise)."""
    out = ctx.out_dtype() or (DataType.from_torch(dtype) if dtype is not None else ctx.dtype(x))
    axis = ctx.constant(np.asarray(ctx.axis(int(dim), ctx.rank(x)), np.int64))
    return ctx.out(LayerKind.CUMULATIVE, CumulativeParams(False, False, op), ctx.tensor(x, out), axis)


@aten(A.cumsum.default)
def cumsum(ctx, self, dim, dtype=None):
    """cumsum: a CUMULATIVE sum (integers and booleans sum in int64, as torch, unless dtype says otherwise)."""
    return _cumulative(ctx, self, dim, dtype, ReduceOperation.SUM)


@aten(A.cumprod.default)
def cumprod(ctx, self, dim, dtype=None):
    """cumprod: a CUMULATIVE product (integers and booleans multiply in int64, as torch, unless dtype says otherwise)."""
    return _cumulative(ctx, self, dim, dtype, ReduceOperation.PROD)


# -- element-wise gather and scatter ----------------------------------------------------------
@aten(A.gather.default)
def gather(ctx, self, dim, index, sparse_grad=False):
    """gather: a GATHER in ELEMENT mode (ONNX GatherElements): out[..i..] = self[.. index[..i..] ..] along dim."""
    rank = ctx.rank(self)
    ctx.require(ctx.rank(index) == rank, ErrorCode.UNSUPPORTED_NODE_INPUT,
                f"gather's index must have the input's rank ({rank}); it has {ctx.rank(index)}")
    if rank == 0:   # a 0-d gather: as 1-D, then back
        return ctx.reshape(gather(ctx, ctx.unsqueeze(self, [0]), 0, ctx.unsqueeze(index, [0])), [])
    return ctx.out(LayerKind.GATHER, GatherParams(ctx.axis(int(dim), rank), GatherMode.ELEMENT), self,
                   ctx.tensor(index, DataType.INT64))


def _index_shaped(ctx, src, index):
    """``src`` cut to ``index``'s shape: torch's scatter reads only that corner of a larger src,
    ONNX's ScatterElements wants updates of the index's shape."""
    rank = ctx.rank(index)
    same = all(isinstance(a, int) and a == b for a, b in
               ((dim_size(ctx, src, d), dim_size(ctx, index, d)) for d in range(rank)))
    if same:
        return src
    return ctx.out(LayerKind.SLICE, SliceParams(), src, ctx.constant(np.zeros(rank, np.int64)), ctx.shape_of(index))


def _scatter(ctx, self, dim, index, src, reduction: str):
    if ctx.rank(self) == 0:   # a 0-d scatter: as 1-D, then back
        one = [0]
        src = src if isinstance(src, (int, float, bool)) or ctx.rank(src) == 0 else ctx.unsqueeze(src, one)
        y = _scatter(ctx, ctx.unsqueeze(self, one), 0, ctx.unsqueeze(index, one) if ctx.rank(index) == 0 else index,
                     src, reduction)
        return ctx.reshape(y, [])
    rank = ctx.rank(self)
    ctx.require(ctx.rank(index) == rank, ErrorCode.UNSUPPORTED_NODE_INPUT,
                f"scatter's index must have the input's rank ({rank}); it has {ctx.rank(index)}")
    if isinstance(src, (int, float, bool)) or ctx.rank(src) == 0:   # one value for every index
        updates = ctx.out(LayerKind.EXPAND, ExpandParams(), ctx.tensor(src, ctx.dtype(self)), ctx.shape_of(index))
    else:
        updates = _index_shaped(ctx, ctx.tensor(src, ctx.dtype(self)), index)
    return ctx.out(LayerKind.SCATTER, ScatterParams(ScatterMode.ELEMENT, ctx.axis(int(dim), rank), reduction),
                   self, ctx.tensor(index, DataType.INT64), updates)


_SCATTER_REDUCE = {"add": "add", "multiply": "mul"}                          # scatter(..., reduce=)
_SCATTER_REDUCE_TWO = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min"}   # scatter_reduce


@aten(A.scatter.src, A.scatter.value, A.scatter.reduce, A.scatter.value_reduce)
def scatter(ctx, self, dim, index, src=None, value=None, reduce=None):
    """scatter (src or one value; reduce "add" or "multiply"): a SCATTER in ELEMENT mode (ONNX
    ScatterElements). Where an index repeats without a reduction, which write wins is undefined in
    torch and in kilnrt alike."""
    updates = src if src is not None else value
    if reduce is None:
        return _scatter(ctx, self, dim, index, updates, "none")
    ctx.require(reduce in _SCATTER_REDUCE, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"scatter's reduce is {reduce!r}; kilnrt imports 'add' and 'multiply'")
    return _scatter(ctx, self, dim, index, updates, _SCATTER_REDUCE[reduce])


@aten(A.scatter_add.default)
def scatter_add(ctx, self, dim, index, src):
    """scatter_add: a SCATTER that adds (repeated indices add up)."""
    return _scatter(ctx, self, dim, index, src, "add")


def _identity(reduce: str, dt: DataType):
    """The value a reduction starts from: 0 for sum and mean, 1 for prod, the lowest value for
    amax and the highest for amin."""
    if reduce in ("amax", "amin"):
        if dt.torch.is_floating_point:
            return float("-inf") if reduce == "amax" else float("inf")
        if dt.torch == torch.bool:
            return reduce == "amin"
        info = torch.iinfo(dt.torch)
        return int(info.min) if reduce == "amax" else int(info.max)
    return 1 if reduce == "prod" else 0


@aten(A.scatter_reduce.two)
def scatter_reduce(ctx, self, dim, index, src, reduce, include_self=True):
    """scatter_reduce: sum, prod, amax, amin or mean (floating-point types) of the scattered values, with the
    input's value (include_self) or without (those positions start from the reduction's
    identity: a SCATTER of it first); mean divides a scatter-add by a scatter-added count."""
    ctx.require(reduce in _SCATTER_REDUCE_TWO or reduce == "mean", ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"scatter_reduce's reduce is {reduce!r}; kilnrt imports "
                f"{', '.join(map(repr, [*_SCATTER_REDUCE_TWO, 'mean']))}")
    dt = ctx.dtype(self)
    base = self if include_self else _scatter(ctx, self, dim, index, _identity(reduce, dt), "none")
    if reduce != "mean":
        return _scatter(ctx, base, dim, index, src, _SCATTER_REDUCE_TWO[reduce])
    ctx.require(dt.torch.is_floating_point, ErrorCode.UNSUPPORTED_NODE_INPUT,
                f"scatter_reduce 'mean' of {dt.name} values (PyTorch rounds an integer mean down) is not "
                "supported; scatter floats")
    ones = ctx.out(LayerKind.EXPAND, ExpandParams(), ctx.constant(np.asarray(1, dt.numpy)), ctx.shape_of(self))
    counts = ones if include_self else _scatter(ctx, ones, dim, index, 0, "none")
    counts = _scatter(ctx, counts, dim, index, 1, "add")
    return ctx.elementwise(ElementWiseOperation.DIV, _scatter(ctx, base, dim, index, src, "add"), counts)


@aten(A.select_scatter.default)
def select_scatter(ctx, self, src, dim, index):
    """select_scatter (x[:, i] = src once functional): src, given back its dim, slice-scattered at i."""
    d = ctx.axis(int(dim), ctx.rank(self))
    i = ctx.int_value(index)
    ctx.require(i is not None, ErrorCode.UNSUPPORTED_NODE_DYNAMIC, "select_scatter's index must be known at build time")
    return slice_scatter(ctx, self, ctx.unsqueeze(ctx.tensor(src, ctx.dtype(self)), [d]), d, i, None, 1)


# -- advanced indexing ------------------------------------------------------------------------
def _index_tensors(ctx, x, indices) -> list:
    """torch's index list as one entry per dim of ``x``: None (the whole dim) or an int64 index tensor;
    a bool mask over m dims becomes m index tensors (its NON_ZERO coordinates, counted at run time)."""
    rank = ctx.rank(x)
    entries = []
    for t in indices:
        if t is None:
            entries.append(None)
            continue
        dt = ctx.dtype(t)
        if dt in (DataType.BOOL, DataType.UINT8):
            m = ctx.rank(t)
            ctx.require(m > 0, ErrorCode.UNSUPPORTED_NODE_INPUT, "a 0-d bool index is not supported")
            mask = t if dt == DataType.BOOL else ctx.cast(t, DataType.BOOL)
            coords = ctx.out(LayerKind.NON_ZERO, NonZeroParams(), mask)          # [m, count]
            entries += [ctx.out(LayerKind.GATHER, GatherParams(0), coords, ctx.constant(np.asarray(i, np.int64)))
                        for i in range(m)]
            continue
        ctx.require(not dt.is_floating, ErrorCode.UNSUPPORTED_NODE_DATATYPE,
                    f"index tensors must be integers or bools; got {dt.name}")
        entries.append(ctx.tensor(t, DataType.INT64))
    ctx.require(len(entries) <= rank, ErrorCode.INVALID_NODE,
                f"{len(entries)} indices for a tensor of rank {rank}")
    return entries + [None] * (rank - len(entries))


def _broadcast(ctx, tensors: list) -> tuple[list, object]:
    """The index tensors expanded to their common (numpy-broadcast) shape, and that shape as a tensor."""
    common = tensors[0]
    for t in tensors[1:]:
        if t.shape != common.shape:
            common = ctx.out(LayerKind.EXPAND, ExpandParams(), common, ctx.shape_of(t))
    shape = ctx.shape_of(common)
    return [t if t.shape == common.shape else ctx.out(LayerKind.EXPAND, ExpandParams(), t, shape)
            for t in tensors], shape


class _Plan:
    """How an index list addresses ``x``: the indexed dims moved first (``perm``), their index tuples
    stacked in a last dim (``nd``, shape B + [k]), and where torch puts B in the result."""

    def __init__(self, ctx, entries: list) -> None:
        self.rank = len(entries)
        self.adv = [d for d, e in enumerate(entries) if e is not None]
        ctx.require(self.adv, ErrorCode.INVALID_NODE, "no index tensor")
        self.rest = [d for d in range(self.rank) if d not in self.adv]
        self.perm = self.adv + self.rest
        tensors, self.b_shape = _broadcast(ctx, [entries[d] for d in self.adv])
        self.b_rank = max(ctx.rank(t) for t in tensors)
        self.nd = ctx.out(LayerKind.CONCATENATION, ConcatenationParams(self.b_rank),
                          *[ctx.unsqueeze(t, [self.b_rank]) for t in tensors])
        # adjacent indexed dims keep their place in the result; otherwise B comes first (numpy's rule)
        adjacent = self.adv == list(range(self.adv[0], self.adv[-1] + 1))
        self.before = self.adv[0] if adjacent else 0

    def moved(self, ctx, x):
        return x if self.perm == list(range(self.rank)) else ctx.transpose(x, self.perm)

    def result_perm(self) -> list[int]:
        """From the gathered layout [B, rest] to torch's [rest before, B, rest after]."""
        b, n = self.b_rank, self.b_rank + len(self.rest)
        return list(range(b, b + self.before)) + list(range(b)) + list(range(b + self.before, n))


@aten(A.index.Tensor)
def index(ctx, self, indices):
    """index (x[i, :, j], x[mask]): a GATHER for one index tensor, else a GATHER_ND over the indexed dims.

    Index tensors broadcast, negative indices count from the end, a bool mask becomes its NON_ZERO
    coordinates (a size known at run time); the result's dims are placed by numpy's rule."""
    entries = _index_tensors(ctx, self, indices)
    adv = [d for d, e in enumerate(entries) if e is not None]
    if len(adv) == 1:   # numpy's rule for one index tensor: B takes the place of the dim
        return ctx.out(LayerKind.GATHER, GatherParams(adv[0]), self, entries[adv[0]])
    plan = _Plan(ctx, entries)
    y = ctx.out(LayerKind.GATHER, GatherParams(0, GatherMode.ND), plan.moved(ctx, self), plan.nd)
    perm = plan.result_perm()
    return y if perm == list(range(len(perm))) else ctx.transpose(y, perm)


def _masked_put(ctx, x, mask, before: int, values, accumulate: bool):
    """x[:, ..., mask] = v for a v that is the same for every masked element: a SELECT, no NON_ZERO."""
    m = ctx.rank(mask)
    trailing = ctx.rank(x) - before - m
    v = ctx.tensor(values, ctx.dtype(x))
    known = ctx.value(v)
    if known is not None and known.size == 1:
        v = ctx.constant(known.reshape(()).astype(ctx.dtype(x).numpy))
    if trailing:
        mask = ctx.reshape(mask, [dim_size(ctx, mask, i) for i in range(m)] + [1] * trailing)
    if accumulate:
        v = ctx.elementwise(ElementWiseOperation.SUM, x, v)
    return ctx.out(LayerKind.SELECT, SelectParams(), mask, v, x)


@aten(A.index_put.default)
def index_put(ctx, self, indices, values, accumulate=False):
    """index_put (x[i, j] = v, x[mask] = v): a SCATTER_ND (accumulate: add); a SELECT for a mask and one value.

    ``x[mask] = v`` with a ``v`` that is the same for every masked element needs no NON_ZERO."""
    rank = ctx.rank(self)
    given = [(d, t) for d, t in enumerate(indices) if t is not None]
    if len(given) == 1 and ctx.dtype(given[0][1]) == DataType.BOOL:
        d, mask = given[0]
        trailing = rank - d - ctx.rank(mask)
        if isinstance(values, (int, float, bool)) or ctx.rank(values) <= trailing:
            return _masked_put(ctx, self, mask, d, values, bool(accumulate))
    plan = _Plan(ctx, _index_tensors(ctx, self, indices))
    xt = plan.moved(ctx, self)
    # values broadcast to torch's result layout [rest before, B, rest after], then moved to [B, rest]
    dims = [dim_size(ctx, self, d) for d in plan.rest]
    shape = ctx.out(LayerKind.CONCATENATION, ConcatenationParams(0), *(
        [ctx.int_vector(dims[:plan.before])] if plan.before else []), plan.b_shape,
        *([ctx.int_vector(dims[plan.before:])] if dims[plan.before:] else []))
    v = ctx.out(LayerKind.EXPAND, ExpandParams(), ctx.tensor(values, ctx.dtype(self)), shape)
    perm = plan.result_perm()
    if perm != list(range(len(perm))):
        v = ctx.transpose(v, [perm.index(i) for i in range(len(perm))])
    y = ctx.out(LayerKind.SCATTER, ScatterParams(ScatterMode.ND, 0, "add" if accumulate else "none"), xt, plan.nd, v)
    inverse = [plan.perm.index(i) for i in range(rank)]
    return y if inverse == list(range(rank)) else ctx.transpose(y, inverse)


@aten(A.slice_scatter.default)
def slice_scatter(ctx, self, src, dim=0, start=None, end=None, step=1):
    """slice_scatter (x[:, a:b:s] = src once functional): src as is for the whole dim, else a SCATTER along dim."""
    rank = ctx.rank(self)
    d = ctx.axis(int(dim), rank)
    src = ctx.tensor(src, ctx.dtype(self))
    first, stride = ctx.int_value(0 if start is None else start), ctx.int_value(step)
    ctx.require(first is not None and stride is not None and stride > 0, ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                "slice_scatter's start and step must be known at build time (step > 0)")
    size, count = dim_size(ctx, self, d), dim_size(ctx, src, d)
    if first == 0 and stride == 1 and isinstance(size, int) and size == count:
        return src
    if first < 0:   # counts from the end
        first = first + size if isinstance(size, int) else ctx.elementwise(
            ElementWiseOperation.SUM, ctx.tensor(size, DataType.INT64), ctx.tensor(first, DataType.INT64))
    positions = ctx.out(LayerKind.FILL, FillParams(FillOperation.RANGE, 0, DataType.INT64),
                        ctx.tensor(0, DataType.INT64), ctx.tensor(count, DataType.INT64),
                        ctx.tensor(1, DataType.INT64))
    positions = ctx.elementwise(ElementWiseOperation.SUM, ctx.tensor(first, DataType.INT64), ctx.elementwise(
        ElementWiseOperation.PROD, positions, ctx.tensor(stride, DataType.INT64)))
    positions = ctx.reshape(positions, [-1] + [1] * (rank - 1 - d))
    positions = ctx.out(LayerKind.EXPAND, ExpandParams(), positions, ctx.shape_of(src))
    return ctx.out(LayerKind.SCATTER, ScatterParams(ScatterMode.ELEMENT, d), self, positions, src)
