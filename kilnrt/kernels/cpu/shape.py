"""CPU kernels for data movement and shape layers.

Inputs listed in ``SHAPE_INPUTS`` arrive as host tensors; :func:`host_values` reads them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kilnrt.kernels.cpu.plugin import builtin_plugin
from kilnrt.kernels.registry import kernel
from kilnrt.network.dtypes import numpy_to_torch
from kilnrt.network.layers import (ViewParams, ConcatenationParams, ConstantParams, ExpandParams, FillOperation,
                                   FillParams, GatherMode, GatherParams, LayerKind, PaddingParams, PluginParams,
                                   ShapeParams, ShuffleParams, SliceParams, SqueezeParams,
                                   TileParams, UnsqueezeParams)


def host_values(t: torch.Tensor | None) -> list | None:
    """The values of a shape input as a python list (flattened)."""
    if t is None:
        return None
    return t.reshape(-1).tolist()


def rank_rule(rule):
    """Attach ``rule(params, *inputs) -> [(rank, dtype), ...]`` to a kernel: its outputs' ranks
    and dtypes when shape-input *values* are unknown at build time (only their lengths are);
    shape inference then marks every output dim unknown (-1).  A rule may give a tuple of
    dims instead of a rank, None for each unknown one."""

    def attach(fn):
        fn.rank_rule = rule
        return fn

    return attach


def _length(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel()


@kernel(LayerKind.CONSTANT)
def constant(p: ConstantParams) -> torch.Tensor:
    return numpy_to_torch(p.weights)


@kernel(LayerKind.SHAPE)
def shape(p: ShapeParams, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(x.shape), dtype=torch.int64)


def _reshape_dims(dims: list[int], source: tuple[int, ...], zero_is_placeholder: bool) -> list[int]:
    out = [source[i] if (d == 0 and zero_is_placeholder) else int(d) for i, d in enumerate(dims)]
    return out


def _shuffle_rank(p: ShuffleParams, x: torch.Tensor, dims: torch.Tensor | None = None):
    rank = x.dim() if dims is None and p.reshape_dims is None else (
        _length(dims) if dims is not None else len(p.reshape_dims))
    return [(rank, x.dtype)]


@kernel(LayerKind.SHUFFLE)
@rank_rule(_shuffle_rank)
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
@rank_rule(lambda p, x, *bounds: [(x.dim(), x.dtype)])
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
@rank_rule(lambda p, x, axes=None: [(x.dim() - _length(axes), x.dtype)])
def squeeze(p: SqueezeParams, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    ax = host_values(axes) if axes is not None else p.axes
    if ax is None:
        return x.squeeze()
    return x.squeeze(tuple(int(a) % x.dim() for a in ax)) if ax else x


@kernel(LayerKind.VIEW)
def view(p: ViewParams, x: torch.Tensor) -> torch.Tensor:
    from kilnrt.kernels.views import apply_view

    return apply_view(x, p.shape, p.ops)


@kernel(LayerKind.UNSQUEEZE)
@rank_rule(lambda p, x, axes=None: [(x.dim() + _length(axes), x.dtype)])
def unsqueeze(p: UnsqueezeParams, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    ax = host_values(axes) if axes is not None else p.axes
    rank = x.dim() + len(ax)
    for a in sorted(int(a) % rank for a in ax):
        x = x.unsqueeze(a)
    return x


def _expand_dims(p: ExpandParams, x: torch.Tensor, shape_: torch.Tensor):
    """Broadcasting keeps every dim of x larger than 1; the others follow the unknown shape values."""
    rank = max(x.dim(), _length(shape_))
    dims = (1,) * (rank - x.dim()) + tuple(x.shape)
    return [(tuple(d if d > 1 else None for d in dims), x.dtype)]


@kernel(LayerKind.EXPAND)
@rank_rule(_expand_dims)
def expand(p: ExpandParams, x: torch.Tensor, shape_: torch.Tensor) -> torch.Tensor:
    target = torch.broadcast_shapes(tuple(x.shape), tuple(int(d) for d in host_values(shape_)))
    return x.expand(target)


@kernel(LayerKind.TILE)
@rank_rule(lambda p, x, repeats: [(x.dim(), x.dtype)])
def tile(p: TileParams, x: torch.Tensor, repeats: torch.Tensor) -> torch.Tensor:
    return x.repeat([int(r) for r in host_values(repeats)])


@kernel(LayerKind.GATHER)
def gather(p: GatherParams, data: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    axis = p.axis % data.dim() if data.dim() else 0
    if p.mode == GatherMode.ELEMENT:
        if data.device.type == "meta" or indices.device.type == "meta":  # the output is shaped like indices
            return torch.empty(indices.shape, dtype=data.dtype, device="meta")
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
    # negative indices wrap per column, with python ints: no host-to-device copy (CUDA-graph safe)
    i = torch.stack([torch.where(i[..., j] < 0, i[..., j] + d.shape[1 + j], i[..., j]) for j in range(k)], dim=-1) \
        if k else i
    outs = []
    for n in range(nb):
        cols = tuple(i[n, :, j] for j in range(k))
        outs.append(d[n][cols])
    out = torch.stack(outs) if outs else d.new_empty((0,) + tuple(d.shape[1 + k:]))
    return out.reshape(batch_shape + idx_shape + tuple(data.shape[b + k:]))


@kernel(LayerKind.FILL)
@rank_rule(lambda p, a, *rest: [(_length(a) if p.op == FillOperation.CONSTANT else 1, p.dtype.torch)])
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
@rank_rule(lambda p, x, *rest: [(x.dim(), x.dtype)])
def padding(p: PaddingParams, x: torch.Tensor, pads: torch.Tensor, value: torch.Tensor | None = None,
            axes: torch.Tensor | None = None) -> torch.Tensor:
    pv = [int(v) for v in host_values(pads)]
    rank = x.dim()
    ax = [int(a) % rank for a in host_values(axes)] if axes is not None else list(range(rank))
    n = len(ax)
    pre, post = [0] * rank, [0] * rank
    for i, a in enumerate(ax):
        pre[a], post[a] = pv[i], pv[n + i]
    # the fill value only matters with data (it is no shape input: meta during shape inference)
    fill = host_values(value)[0] if value is not None and value.numel() and value.device.type != "meta" else 0
    if p.mode == "constant":
        flat = []
        for a in reversed(range(rank)):
            flat += [pre[a], post[a]]
        return F.pad(x, flat, value=fill)
    # reflect / edge / wrap: negative pads crop first (as onnxruntime does), then each axis
    # is padded by index arithmetic (any rank)
    y = x[tuple(slice(max(-pre[a], 0), x.shape[a] - max(-post[a], 0)) for a in range(rank))]
    pre, post = [max(v, 0) for v in pre], [max(v, 0) for v in post]
    for a in range(rank):
        if pre[a] == 0 and post[a] == 0:
            continue
        size = y.shape[a]
        idx = torch.arange(-pre[a], size + post[a], device=y.device)
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


# ----------------------------------------------------------------------------- built-in plugins

@builtin_plugin("BitCast", rank_rule=lambda p, x: [(x.dim(), p.field("to").torch)])
def bitcast(p: PluginParams, x: torch.Tensor) -> torch.Tensor:
    """Reinterpret the bits of ``x`` as ``to`` (same bit width, same shape)."""
    return x.view(p.field("to").torch)


def _col2im_ranks(p: PluginParams, x: torch.Tensor, image_shape: torch.Tensor, block_shape: torch.Tensor):
    return [(2 + _length(image_shape), x.dtype)]


@builtin_plugin("Col2Im", rank_rule=_col2im_ranks)
def col2im(p: PluginParams, x: torch.Tensor, image_shape: torch.Tensor, block_shape: torch.Tensor) -> torch.Tensor:
    """Sum the columns of x [N, C*prod(block), L] back into an image [N, C, *image_shape]
    (the adjoint of im2col; torch's ``fold`` generalized to N spatial dims)."""
    image = [int(v) for v in host_values(image_shape)]
    block = [int(v) for v in host_values(block_shape)]
    nd = len(image)
    strides = list(p.field("strides") or [1] * nd)
    dilations = list(p.field("dilations") or [1] * nd)
    pads = list(p.field("pads") or [0] * (2 * nd))
    padded = [image[i] + pads[i] + pads[i + nd] for i in range(nd)]
    grid = [(padded[i] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]

    def coords(sizes: list[int]) -> torch.Tensor:  # every index of a box, [prod(sizes), nd]
        axes = torch.meshgrid(*[torch.arange(s) for s in sizes], indexing="ij")
        return torch.stack(axes, -1).reshape(-1, nd)

    pos = coords(grid)[None] * torch.tensor(strides) + coords(block)[:, None] * torch.tensor(dilations)
    place = [1] * nd
    for i in range(nd - 2, -1, -1):
        place[i] = place[i + 1] * padded[i + 1]
    linear = (pos * torch.tensor(place)).sum(-1).reshape(-1)
    n, columns = x.shape[0], x.shape[1]
    channels = columns // max(1, int(torch.tensor(block).prod()))
    total = int(torch.tensor(padded).prod())
    if x.device.type == "meta":
        out = x.new_empty((n, channels, total))
    else:
        out = x.new_zeros((n, channels, total)).index_add_(2, linear.to(x.device), x.reshape(n, channels, -1))
    out = out.reshape([n, channels] + padded)
    crop = tuple(slice(pads[i], pads[i] + image[i]) for i in range(nd))
    return out[(slice(None), slice(None)) + crop]
