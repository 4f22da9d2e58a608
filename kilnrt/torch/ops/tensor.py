"""ATen importers for views and shape manipulation, concatenation and splitting, indexing,
tensor creation, and the graph's bookkeeping nodes (getitem, sizes, asserts)."""
from __future__ import annotations

import operator

import numpy as np
import torch

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import (ConcatenationParams, ElementWiseOperation, ExpandParams, FillOperation, FillParams, GatherParams,
                                   LayerKind, SliceParams, SqueezeParams, TileParams)
from kilnrt.torch.registry import aten

A = torch.ops.aten
INT64_MAX = (1 << 63) - 1


def dim_size(ctx, x, dim: int):
    """Dim ``dim`` of ``x``: an int when static, else an int64 scalar tensor read from its shape."""
    d = x.shape[dim]
    if isinstance(d, int) and d >= 0:
        return d
    index = ctx.constant(np.asarray(dim, np.int64))
    return ctx.out(LayerKind.GATHER, GatherParams(0), ctx.shape_of(x), index)


@aten(A.sym_size.int)
def sym_size(ctx, self, dim):
    """sym_size: the size of one dim (an int64 scalar computed from the input's shape when dynamic)."""
    return dim_size(ctx, self, ctx.axis(int(dim), ctx.rank(self)))


@aten(operator.getitem)
def getitem(ctx, seq, index):
    """getitem: one output of a node with several."""
    ctx.require(isinstance(seq, (list, tuple)), ErrorCode.UNSUPPORTED_NODE_INPUT,
                f"getitem of a {type(seq).__name__}; kilnrt reads one output of a multi-output node only")
    value = seq[index]
    ctx.require(value is not None, ErrorCode.UNSUPPORTED_NODE_INPUT,
                f"output {index} of {ctx.node.args[0]} is not produced by kilnrt (an auxiliary output, such as "
                "pooling indices or saved statistics, that only training uses)")
    return value


@aten(A.clone.default, A.contiguous.default, A.alias.default, A.detach.default, A.lift_fresh_copy.default)
def identity(ctx, self, memory_format=None):
    """clone, contiguous, alias, detach, lift_fresh_copy: no layer (memory formats are the engine's choice)."""
    return self


@aten(A.dropout.default, A.native_dropout.default, A.feature_dropout.default)
def dropout(ctx, input, p, train):
    """dropout in inference: no layer."""
    ctx.require(not train, ErrorCode.UNSUPPORTED_NODE_ATTR,
                "dropout in training mode is random: call module.eval() before compiling")
    return [input, None] if "native" in str(ctx.node.target) else input


@aten(A._assert_tensor_metadata.default, A._assert_scalar.default, A.sym_constrain_range_for_size.default,
      A.sym_constrain_range.default, A._assert_async.msg)
def assertion(ctx, **_):
    """torch's run-time checks: none in the engine (the profile and the engine check shapes)."""
    return None


@aten(A.view.default, A.reshape.default, A._unsafe_view.default)
def view(ctx, self, size):
    """view / reshape: a SHUFFLE (sizes computed at run time are concatenated into a shape tensor)."""
    return ctx.reshape(self, list(size))


@aten(A.flatten.using_ints)
def flatten(ctx, self, start_dim=0, end_dim=-1):
    """flatten: a reshape that merges dims start_dim..end_dim."""
    rank = ctx.rank(self)
    if rank == 0:
        return ctx.reshape(self, [1])
    start, end = ctx.axis(int(start_dim), rank), ctx.axis(int(end_dim), rank)
    dims = [dim_size(ctx, self, i) for i in range(start)] + [-1] + \
           [dim_size(ctx, self, i) for i in range(end + 1, rank)]
    return ctx.reshape(self, dims)


@aten(A.unflatten.int)
def unflatten(ctx, self, dim, sizes):
    """unflatten: a reshape that splits one dim."""
    rank = ctx.rank(self)
    d = ctx.axis(int(dim), rank)
    dims = [dim_size(ctx, self, i) for i in range(d)] + list(sizes) + \
           [dim_size(ctx, self, i) for i in range(d + 1, rank)]
    return ctx.reshape(self, dims)


@aten(A.permute.default)
def permute(ctx, self, dims):
    """permute: a transposing SHUFFLE."""
    rank = ctx.rank(self)
    return ctx.transpose(self, [ctx.axis(int(d), rank) for d in dims])


@aten(A.transpose.int)
def transpose(ctx, self, dim0, dim1):
    """transpose: a SHUFFLE swapping two dims."""
    rank = ctx.rank(self)
    perm = list(range(rank))
    a, b = ctx.axis(int(dim0), rank), ctx.axis(int(dim1), rank)
    perm[a], perm[b] = perm[b], perm[a]
    return self if a == b else ctx.transpose(self, perm)


@aten(A.t.default, A.numpy_T.default)
def t(ctx, self):
    """t: the transpose of a matrix (a vector is returned as is)."""
    rank = ctx.rank(self)
    return self if rank < 2 else ctx.transpose(self, list(range(rank))[::-1])


@aten(A.unsqueeze.default)
def unsqueeze(ctx, self, dim):
    """unsqueeze: an UNSQUEEZE layer."""
    rank = ctx.rank(self)
    return ctx.unsqueeze(self, [ctx.axis(int(dim), rank + 1)])


def _squeeze(ctx, x, dims):
    rank = ctx.rank(x)
    axes = range(rank) if dims is None else sorted({ctx.axis(int(d), rank) for d in dims})
    ones = tuple(a for a in axes if x.shape[a] == 1)  # torch leaves dims that are not 1 alone
    return x if not ones else ctx.out(LayerKind.SQUEEZE, SqueezeParams(ones), x)


@aten(A.squeeze.default)
def squeeze(ctx, self):
    """squeeze: drops every dim of size 1 (known at build time)."""
    return _squeeze(ctx, self, None)


@aten(A.squeeze.dim)
def squeeze_dim(ctx, self, dim):
    """squeeze(dim): drops the dim if its size is 1."""
    return _squeeze(ctx, self, [dim])


@aten(A.squeeze.dims)
def squeeze_dims(ctx, self, dim):
    """squeeze(dims): drops those of the dims whose size is 1."""
    return _squeeze(ctx, self, list(dim))


@aten(A.expand.default)
def expand(ctx, self, size, implicit=False):
    """expand: an EXPAND layer (-1 keeps the input's dim)."""
    sizes = [1 if ctx.int_value(s) == -1 else s for s in size]
    return ctx.out(LayerKind.EXPAND, ExpandParams(), self, ctx.int_vector(sizes))


@aten(A.repeat.default)
def repeat(ctx, self, repeats):
    """repeat: a TILE layer (extra leading repeats add dims)."""
    rank = ctx.rank(self)
    x = self if len(repeats) == rank else ctx.reshape(self, [1] * (len(repeats) - rank) +
                                                     [dim_size(ctx, self, i) for i in range(rank)])
    return ctx.out(LayerKind.TILE, TileParams(), x, ctx.int_vector(list(repeats)))


def _slice(ctx, x, dim, start, end, step=1):
    vec = ctx.int_vector
    return ctx.out(LayerKind.SLICE, SliceParams(), x, vec([start]), vec([end]), vec([dim]), vec([step]))


@aten(A.slice.Tensor)
def slice_(ctx, self, dim=0, start=None, end=None, step=1):
    """slice: a SLICE layer (bounds clamped, as torch does)."""
    rank = ctx.rank(self)
    d = ctx.axis(int(dim), rank)
    start = 0 if start is None else start
    end = INT64_MAX if end is None else end
    if ctx.int_value(start) == 0 and ctx.int_value(end) is not None and ctx.int_value(end) >= INT64_MAX // 2 \
            and ctx.int_value(step) == 1:
        return self
    return _slice(ctx, self, d, start, end, step)


@aten(A.narrow.default)
def narrow(ctx, self, dim, start, length):
    """narrow: a SLICE of length elements from start."""
    d = ctx.axis(int(dim), ctx.rank(self))
    end = start + length if ctx.int_value(start) is not None and ctx.int_value(length) is not None else \
        ctx.elementwise(ElementWiseOperation.SUM,
                        ctx.tensor(start, DataType.INT64), ctx.tensor(length, DataType.INT64))
    return _slice(ctx, self, d, start, end)


@aten(A.select.int)
def select(ctx, self, dim, index):
    """select: a GATHER of one index (the dim is dropped)."""
    d = ctx.axis(int(dim), ctx.rank(self))
    return ctx.out(LayerKind.GATHER, GatherParams(d), self, ctx.tensor(index, DataType.INT64))


@aten(A.index_select.default)
def index_select(ctx, self, dim, index):
    """index_select: a GATHER along dim."""
    return ctx.out(LayerKind.GATHER, GatherParams(ctx.axis(int(dim), ctx.rank(self))), self, index)


@aten(A.cat.default)
def cat(ctx, tensors, dim=0):
    """cat: a CONCATENATION (inputs promoted to the output's dtype); empty 1-D inputs beside
    inputs of another rank are skipped, as torch does (a key/value cache's first step)."""
    dt = ctx.out_dtype()
    parts = [ctx.tensor(t, dt) for t in tensors]
    ctx.require(parts, ErrorCode.INVALID_NODE, "cat of no tensors")
    if any(ctx.rank(p) != 1 for p in parts):
        parts = [p for p in parts if not (ctx.rank(p) == 1 and p.shape[0] == 0)]
    if len(parts) == 1:
        return parts[0]
    return ctx.out(LayerKind.CONCATENATION, ConcatenationParams(ctx.axis(int(dim), ctx.rank(parts[0]))), *parts)


@aten(A.stack.default)
def stack(ctx, tensors, dim=0):
    """stack: UNSQUEEZE each input, then a CONCATENATION."""
    dt = ctx.out_dtype()
    rank = ctx.rank(tensors[0]) + 1
    d = ctx.axis(int(dim), rank)
    parts = [ctx.unsqueeze(ctx.tensor(t, dt), [d]) for t in tensors]
    return ctx.out(LayerKind.CONCATENATION, ConcatenationParams(d), *parts)


def _split_at(ctx, x, d, sizes):
    out, start = [], 0
    for s in sizes:
        ks, kstart = ctx.int_value(s), ctx.int_value(start)
        end = kstart + ks if ks is not None and kstart is not None else None
        ctx.require(end is not None, ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                    "split sizes must be known at build time")
        out.append(_slice(ctx, x, d, kstart, end))
        start = end
    return out


def _num_outputs(ctx) -> int:
    val = ctx.meta
    ctx.require(isinstance(val, (list, tuple)), ErrorCode.INVALID_NODE, "the number of outputs is not recorded")
    return len(val)


@aten(A.split.Tensor)
def split(ctx, self, split_size, dim=0):
    """split into chunks of split_size: one SLICE per output (the last may be shorter)."""
    d = ctx.axis(int(dim), ctx.rank(self))
    n = _num_outputs(ctx)
    size = ctx.int_value(split_size)
    ctx.require(size is not None, ErrorCode.UNSUPPORTED_NODE_DYNAMIC, "split_size must be known at build time")
    return [_slice(ctx, self, d, i * size, INT64_MAX if i == n - 1 else (i + 1) * size) for i in range(n)]


@aten(A.split_with_sizes.default)
def split_with_sizes(ctx, self, split_sizes, dim=0):
    """split_with_sizes: one SLICE per output."""
    return _split_at(ctx, self, ctx.axis(int(dim), ctx.rank(self)), list(split_sizes))


@aten(A.chunk.default)
def chunk(ctx, self, chunks, dim=0):
    """chunk: one SLICE per output, of ceil(dim / chunks) elements."""
    d = ctx.axis(int(dim), ctx.rank(self))
    size = self.shape[d]
    ctx.require(isinstance(size, int), ErrorCode.UNSUPPORTED_NODE_DYNAMIC, "chunk needs the dim's size at build time")
    step = -(-size // int(chunks))
    return split(ctx, self, step, d)


@aten(A.unbind.int)
def unbind(ctx, self, dim=0):
    """unbind: one GATHER per index."""
    d = ctx.axis(int(dim), ctx.rank(self))
    return [ctx.out(LayerKind.GATHER, GatherParams(d), self, ctx.constant(np.asarray(i, np.int64)))
            for i in range(_num_outputs(ctx))]


# -- creation ------------------------------------------------------------------------------
def _creation_dtype(ctx, dtype, like=None) -> DataType:
    if dtype is not None:
        return DataType.from_torch(dtype)
    return ctx.out_dtype() or (ctx.dtype(like) if like is not None else DataType.FLOAT)


def _fill(ctx, size, value, dt: DataType):
    known = [ctx.int_value(s) for s in size]
    if all(k is not None for k in known):
        return ctx.constant(np.full(tuple(known), value, dtype=dt.numpy))
    return ctx.out(LayerKind.FILL, FillParams(FillOperation.CONSTANT, value, dt), ctx.int_vector(list(size)))


@aten(A.full.default)
def full(ctx, size, fill_value, dtype=None, layout=None, device=None, pin_memory=None):
    """full: a constant, or a FILL when the size is computed at run time."""
    return _fill(ctx, size, fill_value, _creation_dtype(ctx, dtype))


@aten(A.zeros.default, A.ones.default)
def zeros_ones(ctx, size, dtype=None, layout=None, device=None, pin_memory=None):
    """zeros / ones: a constant, or a FILL when the size is computed at run time."""
    value = 1 if ctx.node.target is A.ones.default else 0
    return _fill(ctx, size, value, _creation_dtype(ctx, dtype))


@aten(A.empty.memory_format)
def empty(ctx, size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    """empty (values unspecified; PyTorch's decompositions write into it): zeros."""
    return _fill(ctx, size, 0, _creation_dtype(ctx, dtype))


@aten(A.copy.default)
def copy(ctx, self, src, non_blocking=False):
    """copy (``self.copy_(src)`` once functional): src cast to self's dtype and broadcast to its shape."""
    x = ctx.cast(src, ctx.dtype(self)) if ctx.dtype(src) != ctx.dtype(self) else src
    if x.shape is not None and tuple(x.shape) == tuple(self.shape):   # the same dims, symbols included
        return x
    return ctx.out(LayerKind.EXPAND, ExpandParams(), x,
                   ctx.int_vector([dim_size(ctx, self, i) for i in range(ctx.rank(self))]))


@aten(A.full_like.default, A.zeros_like.default, A.ones_like.default)
def full_like(ctx, self, fill_value=None, dtype=None, layout=None, device=None, pin_memory=None,
              memory_format=None):
    """full_like / zeros_like / ones_like: a FILL of the input's shape."""
    target = ctx.node.target
    value = fill_value if target is A.full_like.default else (1 if target is A.ones_like.default else 0)
    dt = _creation_dtype(ctx, dtype, self)
    return _fill(ctx, [dim_size(ctx, self, i) for i in range(ctx.rank(self))], value, dt)


@aten(A.scalar_tensor.default)
def scalar_tensor(ctx, s, dtype=None, layout=None, device=None, pin_memory=None):
    """scalar_tensor: a 0-d constant."""
    return ctx.constant(np.asarray(s, dtype=_creation_dtype(ctx, dtype).numpy))


@aten(A.arange.default, A.arange.start, A.arange.start_step)
def arange(ctx, start=0, end=None, step=1, dtype=None, layout=None, device=None, pin_memory=None):
    """arange: a constant when the bounds are known, else a RANGE FILL."""
    dt = _creation_dtype(ctx, dtype)
    known = [ctx.value(v) for v in (start, end, step)]
    if all(k is not None for k in known):
        values = torch.arange(*(k.item() for k in known), dtype=dt.torch)
        return ctx.constant(values)
    bounds = [ctx.tensor(v, dt) if not isinstance(v, (int, float)) else ctx.constant(np.asarray(v, dt.numpy))
              for v in (start, end, step)]
    return ctx.out(LayerKind.FILL, FillParams(FillOperation.RANGE, 0, dt), *bounds)
