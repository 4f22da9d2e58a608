"""CPU kernels for matrix multiply, einsum, softmax, reduce, top-k and cumulative scans."""
from __future__ import annotations

import torch

from kilnrt.kernels.cpu.epilogue import conv_epilogue
from kilnrt.kernels.cpu.plugin import builtin_plugin
from kilnrt.kernels.cpu.shape import host_values, rank_rule
from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import (CumulativeParams, EinsumParams, LayerKind, MatrixMultiplyParams,
                                   MatrixOperation as M, PluginParams, ReduceOperation as R, ReduceParams,
                                   SoftmaxParams, TopKOperation, TopKParams)


@kernel(LayerKind.MATRIX_MULTIPLY)
def matrix_multiply(p: MatrixMultiplyParams, a: torch.Tensor, b: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    return conv_epilogue(p, _matmul(p, a, b), bias)


def _matmul(p: MatrixMultiplyParams, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if p.op0 == M.TRANSPOSE:
        a = a.transpose(-1, -2)
    if p.op1 == M.TRANSPOSE:
        b = b.transpose(-1, -2)
    if p.op0 == M.VECTOR:
        a = a.unsqueeze(-2)
    if p.op1 == M.VECTOR:
        b = b.unsqueeze(-1)
    y = torch.matmul(a, b)
    if p.op1 == M.VECTOR:
        y = y.squeeze(-1)
    if p.op0 == M.VECTOR:
        y = y.squeeze(-2 if p.op1 != M.VECTOR else -1)
    return y


@kernel(LayerKind.SOFTMAX)
def softmax(p: SoftmaxParams, x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x, p.axis) if p.log else torch.softmax(x, p.axis)


def normalize_axes(p_axes: tuple[int, ...] | None, rank: int) -> tuple[int, ...]:
    if p_axes is None:
        return tuple(range(rank))
    return tuple(sorted({a % rank for a in p_axes})) if rank else ()


def _reduce_axes(p: ReduceParams, x: torch.Tensor, axes: torch.Tensor | None) -> tuple[int, ...] | None:
    """The normalized axes to reduce; None means no reduction (noop)."""
    if axes is None:
        return normalize_axes(p.axes, x.dim())
    values = host_values(axes)
    if not values:
        return None if p.noop_with_empty_axes else tuple(range(x.dim()))
    return normalize_axes(tuple(int(a) for a in values), x.dim())


def _reduced_shape(x: torch.Tensor, axes: tuple[int, ...], keep_dims: bool) -> list[int]:
    if keep_dims:
        return [1 if i in axes else d for i, d in enumerate(x.shape)]
    return [d for i, d in enumerate(x.shape) if i not in axes]


def _reduce_rank(p: ReduceParams, x: torch.Tensor, axes: torch.Tensor | None = None):
    if p.keep_dims or axes is None:
        return [(x.dim() if p.keep_dims else x.dim() - len(normalize_axes(p.axes, x.dim())), x.dtype)]
    if axes.numel() == 0:
        return [(x.dim() if p.noop_with_empty_axes else 0, x.dtype)]
    return [(x.dim() - axes.numel(), x.dtype)]


@rank_rule(_reduce_rank)
@kernel(LayerKind.REDUCE)
def reduce(p: ReduceParams, x: torch.Tensor, axes_input: torch.Tensor | None = None) -> torch.Tensor:
    axes = _reduce_axes(p, x, axes_input)
    if not axes:
        return x if axes is None else x.clone()
    if x.dtype in _WIDENED:     # torch has no reductions for these: reduce exactly in int64
        return reduce(p, x.to(torch.int64), axes_input).to(x.dtype)
    if p.op == R.SUM:
        return torch.sum(x, dim=axes, keepdim=p.keep_dims, dtype=x.dtype)
    if p.op == R.AVG:
        if x.dtype.is_floating_point:
            return torch.mean(x, dim=axes, keepdim=p.keep_dims)
        count = 1
        for a in axes:
            count *= x.shape[a]
        return torch.div(torch.sum(x, dim=axes, keepdim=p.keep_dims), count, rounding_mode="trunc").to(x.dtype)
    if p.op in (R.MAX, R.MIN):
        if any(x.shape[a] == 0 for a in axes):
            fill = float("-inf") if p.op == R.MAX else float("inf")
            if not x.dtype.is_floating_point:
                info = torch.iinfo(x.dtype) if x.dtype != torch.bool else None
                fill = (info.min if p.op == R.MAX else info.max) if info else (p.op == R.MIN)
            return torch.full(_reduced_shape(x, axes, p.keep_dims), fill, dtype=x.dtype, device=x.device)
        if x.dtype == torch.bool:
            return (torch.any if p.op == R.MAX else torch.all)(x, dim=axes, keepdim=p.keep_dims)
        return (torch.amax if p.op == R.MAX else torch.amin)(x, dim=axes, keepdim=p.keep_dims)
    # PROD reduces one axis at a time, from the last so the indices stay valid
    y = x
    for a in sorted(axes, reverse=True):
        y = torch.prod(y, dim=a, keepdim=p.keep_dims, dtype=x.dtype)
    return y


# unsigned types torch cannot reduce / sort / scan: computed in int64 (exact below 2**63)
_WIDENED = (torch.uint16, torch.uint32, torch.uint64)


def _sort_key(x: torch.Tensor) -> torch.Tensor:
    """A tensor that torch can sort, ordered as ``x`` is."""
    if x.dtype == torch.bool:
        return x.to(torch.uint8)
    if x.dtype in (torch.uint16, torch.uint32):
        return x.to(torch.int64)
    if x.dtype == torch.uint64:   # flip the sign bit: unsigned order becomes signed order
        return x.view(torch.int64) ^ torch.iinfo(torch.int64).min
    return x


@rank_rule(lambda p, x, k=None: [(x.dim(), x.dtype), (x.dim(), torch.int64)])
@kernel(LayerKind.TOPK)
def topk(p: TopKParams, x: torch.Tensor, k: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and int64 indices of the k largest (MAX) or smallest (MIN); ties: lower index first."""
    count = int(host_values(k)[0]) if k is not None else p.k
    axis = p.axis % x.dim() if x.dim() else 0
    if x.device.type == "meta":
        shape = list(x.shape)
        shape[axis] = count
        return x.new_empty(shape), torch.empty(shape, dtype=torch.int64, device="meta")
    if count > x.shape[axis] or count < 0:
        raise ValueError(f"k={count} is out of range for axis {axis} of size {x.shape[axis]}")
    key = _sort_key(x)
    order = torch.sort(key, dim=axis, descending=p.op == TopKOperation.MAX, stable=True).indices
    indices = order.narrow(axis, 0, count)   # sorted=False allows any order: the sorted one is fine
    if x.dtype in _WIDENED:
        return torch.gather(x.view(_SAME_SIZE_INT[x.dtype]), axis, indices).view(x.dtype), indices
    return torch.gather(x, axis, indices), indices


_SAME_SIZE_INT = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


@rank_rule(lambda p, x, axis: [(x.dim(), x.dtype)])
@kernel(LayerKind.CUMULATIVE)
def cumulative(p: CumulativeParams, x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """CumSum / CumProd along a run-time axis, optionally exclusive and/or reversed."""
    dim = int(host_values(axis)[0])
    dim = dim % x.dim() if x.dim() else 0
    if x.dim() == 0:
        return x.clone()
    y = x.flip(dim) if p.reverse else x
    scan = torch.cumsum if p.op == R.SUM else torch.cumprod
    if p.exclusive:
        n = y.shape[dim]
        first = (torch.zeros_like if p.op == R.SUM else torch.ones_like)(y.narrow(dim, 0, min(n, 1)))
        y = torch.cat([first, scan(y.narrow(dim, 0, max(n - 1, 0)), dim, dtype=x.dtype)], dim)
    else:
        y = scan(y, dim, dtype=x.dtype)
    return y.flip(dim) if p.reverse else y


@kernel(LayerKind.EINSUM)
def einsum(p: EinsumParams, *xs: torch.Tensor) -> torch.Tensor:
    return torch.einsum(p.equation, *xs)


@builtin_plugin("Det", rank_rule=lambda p, x: [(x.dim() - 2, x.dtype)])
def det(p: PluginParams, x: torch.Tensor) -> torch.Tensor:
    """Determinants of the square matrices in the last two dims (computed in float64)."""
    if x.device.type == "meta":
        return x.new_empty(x.shape[:-2])
    return torch.linalg.det(x.to(torch.float64)).to(x.dtype)
