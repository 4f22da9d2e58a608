"""CPU kernels for index-driven layers: scatter, one-hot, non-zero, reverse-sequence, and the
built-in Unique plugin (data-dependent output shapes)."""
from __future__ import annotations

import warnings

import torch

from kilnrt.kernels.cpu.plugin import builtin_plugin
from kilnrt.kernels.cpu.shape import host_values, rank_rule
from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import (LayerKind, NonZeroParams, OneHotParams, PluginParams, ReverseSequenceParams,
                                   ScatterMode, ScatterParams)

_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _wrap_negative(idx: torch.Tensor, size) -> torch.Tensor:
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + size, idx)


@kernel(LayerKind.SCATTER)
def scatter(p: ScatterParams, data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    if data.device.type == "meta" or indices.device.type == "meta" or updates.device.type == "meta":
        return torch.empty_like(data, device="meta")
    updates = updates.to(data.dtype)
    if p.mode == ScatterMode.ELEMENT:
        axis = p.axis % data.dim()
        idx = _wrap_negative(indices, data.shape[axis])
        if p.reduction == "none":
            return data.scatter(axis, idx, updates)
        return data.scatter_reduce(axis, idx, updates, _REDUCE[p.reduction], include_self=True)
    return _scatter_nd(data, indices, updates, p.reduction)


def _scatter_nd(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, reduction: str) -> torch.Tensor:
    """ONNX ScatterND: index tuples address the first k dims; done on a [prod(dims[:k]), *rest] view."""
    k = indices.shape[-1]
    lead, rest = tuple(data.shape[:k]), tuple(data.shape[k:])
    idx = indices.reshape(-1, k).to(torch.int64)
    strides = [1] * k
    for j in range(k - 2, -1, -1):
        strides[j] = strides[j + 1] * lead[j + 1]
    # per column, with python ints: no host tensor meets a device one, no copy (CUDA-graph safe)
    linear = sum((_wrap_negative(idx[:, j], lead[j]) * strides[j] for j in range(k)),
                 torch.zeros(idx.shape[0], dtype=torch.int64, device=idx.device))
    rows = 1
    for d in lead:
        rows *= d
    flat = data.reshape((rows,) + rest)
    src = updates.reshape((-1,) + rest)
    if reduction == "none":
        out = flat.index_copy(0, linear, src)
    elif reduction == "add":
        out = flat.index_add(0, linear, src)
    else:
        with warnings.catch_warnings():  # "index_reduce() is in beta"
            warnings.simplefilter("ignore", UserWarning)
            out = flat.index_reduce(0, linear, src, _REDUCE[reduction], include_self=True)
    return out.reshape(data.shape)


@kernel(LayerKind.ONE_HOT)
@rank_rule(lambda p, indices, depth, values: [(indices.dim() + 1, values.dtype)])
def one_hot(p: OneHotParams, indices: torch.Tensor, depth: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """values = [off, on]; indices in [-depth, depth) are hot (negative ones count from the end)."""
    d = int(host_values(depth)[0])
    idx = _wrap_negative(indices, d)
    hot = idx.unsqueeze(-1) == torch.arange(d, device=indices.device)
    flat = values.reshape(-1)
    out = torch.where(hot, flat[1], flat[0])
    return out.movedim(-1, p.axis % out.dim())


@kernel(LayerKind.NON_ZERO)
def non_zero(p: NonZeroParams, x: torch.Tensor) -> torch.Tensor:
    """int64 [rank, count]: the coordinates of the non-zero elements, in row-major order."""
    if x.device.type == "meta":
        raise NotImplementedError("NonZero's output shape depends on the input values")
    return torch.nonzero(x).T.contiguous()


@kernel(LayerKind.REVERSE_SEQUENCE)
def reverse_sequence(p: ReverseSequenceParams, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Reverse the first lens[b] steps along the time axis of each batch entry b."""
    rank = x.dim()
    t_axis, b_axis = p.time_axis % rank, p.batch_axis % rank
    view_t = [1] * rank
    view_t[t_axis] = x.shape[t_axis]
    view_b = [1] * rank
    view_b[b_axis] = x.shape[b_axis]
    t = torch.arange(x.shape[t_axis], device=x.device).reshape(view_t)
    n = lens.to(torch.int64).reshape(view_b)
    src = torch.where(t < n, n - 1 - t, t).expand(x.shape)
    return torch.gather(x, t_axis, src)


def _unique_ranks(p: PluginParams, x: torch.Tensor):
    y_rank = 1 if p.field("axis") is None else x.dim()
    return [(y_rank, x.dtype)] + [(1, torch.int64)] * 3


@builtin_plugin("Unique", rank_rule=_unique_ranks)
def unique(p: PluginParams, x: torch.Tensor):
    """ONNX Unique: (values, first-occurrence indices, inverse indices, counts), sorted ascending
    (lexicographically for slices along ``axis``) or, with ``sorted=0``, in first-occurrence order."""
    if x.device.type == "meta":
        raise NotImplementedError("Unique's output shape depends on the input values")
    axis = p.field("axis")
    items = x.reshape(-1) if axis is None else x.movedim(axis % x.dim(), 0)
    rows = items.reshape(items.shape[0], -1)
    if rows.dtype in (torch.float16, torch.bfloat16):
        rows = rows.float()
    _, inverse, counts = torch.unique(rows, dim=0, sorted=True, return_inverse=True, return_counts=True)
    n = rows.shape[0]
    first = torch.full((counts.shape[0],), n, dtype=torch.int64).scatter_reduce(
        0, inverse, torch.arange(n), "amin", include_self=True)
    if not p.field("sorted", 1):
        order = torch.argsort(first)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.shape[0])
        first, counts, inverse = first[order], counts[order], rank[inverse]
    values = items[first]
    if axis is not None:
        values = values.movedim(0, axis % x.dim())
    return values, first, inverse.to(torch.int64), counts.to(torch.int64)
