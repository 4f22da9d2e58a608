"""CPU kernels for matrix multiply, softmax, reduce and normalization."""
from __future__ import annotations

import torch

from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import (LayerKind, MatrixMultiplyParams, MatrixOperation as M,
                                   ReduceOperation as R, ReduceParams, SoftmaxParams)


@kernel(LayerKind.MATRIX_MULTIPLY)
def matrix_multiply(p: MatrixMultiplyParams, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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


@kernel(LayerKind.REDUCE)
def reduce(p: ReduceParams, x: torch.Tensor) -> torch.Tensor:
    axes = normalize_axes(p.axes, x.dim())
    if not axes:
        return x.clone()
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
            shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if p.keep_dims else \
                [d for i, d in enumerate(x.shape) if i not in axes]
            return torch.full(shape, fill, dtype=x.dtype, device=x.device)
        if x.dtype == torch.bool:
            return (torch.any if p.op == R.MAX else torch.all)(x, dim=axes, keepdim=p.keep_dims)
        return (torch.amax if p.op == R.MAX else torch.amin)(x, dim=axes, keepdim=p.keep_dims)
    # PROD reduces one axis at a time, from the last so the indices stay valid
    y = x
    for a in sorted(axes, reverse=True):
        y = torch.prod(y, dim=a, keepdim=p.keep_dims, dtype=x.dtype)
    return y
