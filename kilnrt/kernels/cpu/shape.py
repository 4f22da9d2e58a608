"""CPU kernels for data movement and shape layers.

Inputs listed in ``SHAPE_INPUTS`` arrive as host tensors; :func:`host_values` reads them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kilnrt.kernels.registry import kernel
from kilnrt.network.dtypes import numpy_to_torch
from kilnrt.network.layers import (ConcatenationParams, ConstantParams, ExpandParams, FillOperation,
                                   FillParams, GatherMode, GatherParams, LayerKind, PaddingParams,
                                   ShapeParams, ShuffleParams, SliceParams, SqueezeParams,
                                   TileParams, UnsqueezeParams)


def host_values(t: torch.Tensor | None) -> list | None:
    """The values of a shape input as a python list (flattened)."""
    if t is None:
        return None
    return t.reshape(-1).tolist()


@kernel(LayerKind.CONSTANT)
def constant(p: ConstantParams) -> torch.Tensor:
    return numpy_to_torch(p.weights)


@kernel(LayerKind.SHAPE)
def shape(p: ShapeParams, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(x.shape), dtype=torch.int64)


def _reshape_dims(dims: list[int], source: tuple[int, ...], zero_is_placeholder: bool) -> list[int]:
    out = [source[i] if (d == 0 and zero_is_placeholder) else int(d) for i, d in enumerate(dims)]
    return out


@kernel(LayerKind.SHUFFLE)
def shuffle(p: ShuffleParams, x: torch.Tensor, dims: torch.Tensor | None = None) -> torch.Tensor:
    if p.first_transpose is not None:
        x = x.permute(p.first_transpose)
    reshape = host_values(dims) if dims is not None else p.reshape_dims
    if reshape is not None:
        x = x.reshape(_reshape_dims(list(reshape), tuple(x.shape), p.zero_is_placeholder))
    if p.second_transpose is not None:
        x = x.permute(p.second_transpose)
    return x


@kernel(LayerKind.CONCATENATION)
def concatenation(p: ConcatenationParams, *xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(xs, dim=p.axis)


@kernel(LayerKind.SLICE)
def slice_(p: SliceParams, x: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
           axes: torch.Tensor | None = None, steps: torch.Tensor | None = None) -> torch.Tensor:
    s, e = host_values(starts), host_values(ends)
    ax = host_values(axes) if axes is not None else list(range(len(s)))
    st = host_values(steps) if steps is not None else [1] * len(s)
    for start, end, axis, step in zip(s, e, ax, st):
        axis = int(axis) % x.dim()
        lo, hi, step = slice(int(start), int(end), int(step)).indices(x.shape[axis])
        if step > 0:
            idx = slice(lo, max(lo, hi), step)
            x = x[(slice(None),) * axis + (idx,)]
        else:
            index = torch.arange(lo, hi, step, device=x.device)
            x = x.index_select(axis, index) if x.device.type != "meta" else \
                x.narrow(axis, 0, len(index)) if len(index) <= x.shape[axis] else x
    return x


@kernel(LayerKind.SQUEEZE)
def squeeze(p: SqueezeParams, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    ax = host_values(axes) if axes is not None else p.axes
    if ax is None:
        return x.squeeze()
    return x.squeeze(tuple(int(a) % x.dim() for a in ax)) if ax else x


@kernel(LayerKind.UNSQUEEZE)
def unsqueeze(p: UnsqueezeParams, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    ax = host_values(axes) if axes is not None else p.axes
    rank = x.dim() + len(ax)
    for a in sorted(int(a) % rank for a in ax):
        x = x.unsqueeze(a)
    return x


@kernel(LayerKind.EXPAND)
def expand(p: ExpandParams, x: torch.Tensor, shape_: torch.Tensor) -> torch.Tensor:
    target = torch.broadcast_shapes(tuple(x.shape), tuple(int(d) for d in host_values(shape_)))
    return x.expand(target)


@kernel(LayerKind.TILE)
def tile(p: TileParams, x: torch.Tensor, repeats: torch.Tensor) -> torch.Tensor:
    return x.repeat([int(r) for r in host_values(repeats)])


@kernel(LayerKind.GATHER)
def gather(p: GatherParams, data: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    axis = p.axis % data.dim() if data.dim() else 0
    if p.mode == GatherMode.ELEMENT:
        idx = indices.to(torch.int64)
        idx = torch.where(idx < 0, idx + data.shape[axis], idx)
        return torch.gather(data, axis, idx)
    if p.mode == GatherMode.ND:
        return _gather_nd(data, indices.to(torch.int64), p.num_elementwise_dims)
    idx = indices.to(torch.int64)
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(data.shape[:axis]) + tuple(indices.shape) + tuple(data.shape[axis + 1:]))


def _gather_nd(data: torch.Tensor, indices: torch.Tensor, batch_dims: int) -> torch.Tensor:
    b = batch_dims
    batch_shape = tuple(data.shape[:b])
    k = indices.shape[-1]
    idx_shape = tuple(indices.shape[b:-1])
    nb = 1
    for d in batch_shape:
        nb *= d
    d = data.reshape((nb,) + tuple(data.shape[b:]))
    i = indices.reshape((nb, -1, k))
    dims = torch.tensor(d.shape[1:1 + k], device=data.device)
    i = torch.where(i < 0, i + dims, i)
    outs = []
    for n in range(nb):
        cols = tuple(i[n, :, j] for j in range(k))
        outs.append(d[n][cols])
    out = torch.stack(outs) if outs else d.new_empty((0,) + tuple(d.shape[1 + k:]))
    return out.reshape(batch_shape + idx_shape + tuple(data.shape[b + k:]))


@kernel(LayerKind.FILL)
def fill(p: FillParams, a: torch.Tensor, b: torch.Tensor | None = None,
         c: torch.Tensor | None = None) -> torch.Tensor:
    if p.op == FillOperation.CONSTANT:
        return torch.full([int(d) for d in host_values(a)], p.value, dtype=p.dtype.torch)
    start, limit, delta = (host_values(t)[0] for t in (a, b, c))
    import math

    n = max(int(math.ceil((limit - start) / delta)), 0)
    out = torch.arange(n, dtype=torch.float64 if p.dtype.is_floating else torch.int64) * delta + start
    return out.to(p.dtype.torch)


@kernel(LayerKind.PADDING)
def padding(p: PaddingParams, x: torch.Tensor, pads: torch.Tensor, value: torch.Tensor | None = None,
            axes: torch.Tensor | None = None) -> torch.Tensor:
    pv = [int(v) for v in host_values(pads)]
    rank = x.dim()
    ax = [int(a) % rank for a in host_values(axes)] if axes is not None else list(range(rank))
    n = len(ax)
    pre, post = [0] * rank, [0] * rank
    for i, a in enumerate(ax):
        pre[a], post[a] = pv[i], pv[n + i]
    fill = host_values(value)[0] if value is not None and value.numel() else 0
    if p.mode == "constant":
        flat = []
        for a in reversed(range(rank)):
            flat += [pre[a], post[a]]
        return F.pad(x, flat, value=fill)
    # reflect / edge / wrap: pad one axis at a time with index arithmetic (any rank)
    y = x
    for a in range(rank):
        if pre[a] == 0 and post[a] == 0:
            continue
        size = y.shape[a]
        idx = torch.arange(-pre[a], size + post[a], device=x.device)
        if p.mode == "edge":
            idx = idx.clamp(0, size - 1)
        elif p.mode == "wrap":
            idx = idx % size
        elif p.mode == "reflect":
            period = 2 * (size - 1) if size > 1 else 1
            idx = idx.abs() % period
            idx = torch.where(idx >= size, period - idx, idx)
        y = y.index_select(a, idx)
    return y
