"""CPU kernels for convolution, deconvolution, pooling and LRN."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import (ConvolutionParams, LayerKind, LRNParams, PaddingMode,
                                   PoolingParams, PoolingType)


def _nd(values: tuple[int, ...], n: int, default: int) -> tuple[int, ...]:
    return tuple(values) if values else (default,) * n


def resolve_padding(spatial: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...],
                    dilation: tuple[int, ...], pre: tuple[int, ...], post: tuple[int, ...],
                    mode: PaddingMode) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Explicit (pre, post) pads; SAME_* modes pad so that out = ceil(in / stride)."""
    n = len(spatial)
    if mode in (PaddingMode.SAME_UPPER, PaddingMode.SAME_LOWER):
        pre_l, post_l = [], []
        for i in range(n):
            out = math.ceil(spatial[i] / stride[i])
            total = max(0, (out - 1) * stride[i] + (window[i] - 1) * dilation[i] + 1 - spatial[i])
            small, big = total // 2, total - total // 2
            pre_l.append(small if mode == PaddingMode.SAME_UPPER else big)
            post_l.append(big if mode == PaddingMode.SAME_UPPER else small)
        return tuple(pre_l), tuple(post_l)
    return _nd(pre, n, 0), _nd(post, n, 0)


def torch_pad_list(pre: tuple[int, ...], post: tuple[int, ...]) -> list[int]:
    """F.pad's order: last dim first, (begin, end) pairs."""
    out: list[int] = []
    for b, e in zip(reversed(pre), reversed(post)):
        out += [b, e]
    return out


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@kernel(LayerKind.CONVOLUTION)
def convolution(p: ConvolutionParams, x: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor | None = None) -> torch.Tensor:
    n = x.dim() - 2
    stride, dil = _nd(p.stride_nd, n, 1), _nd(p.dilation_nd, n, 1)
    window = tuple(w.shape[2:])
    pre, post = resolve_padding(tuple(x.shape[2:]), window, stride, dil, p.pre_padding,
                                p.post_padding, p.padding_mode)
    if pre == post:
        padding = pre
    else:
        x = F.pad(x, torch_pad_list(pre, post))
        padding = (0,) * n
    if n in _CONV:
        return _CONV[n](x, w, b, stride, padding, dil, p.num_groups)
    return torch.ops.aten.convolution(x, w, b, list(stride), list(padding), list(dil), False,
                                      [0] * n, p.num_groups)


@kernel(LayerKind.POOLING)
def pooling(p: PoolingParams, x: torch.Tensor) -> torch.Tensor:
    n = len(p.window_size_nd)
    window = tuple(p.window_size_nd)
    stride, dil = _nd(p.stride_nd, n, 1), _nd(p.dilation_nd, n, 1)
    spatial = tuple(x.shape[-n:])
    pre, post = resolve_padding(spatial, window, stride, dil, p.pre_padding, p.post_padding,
                                p.padding_mode)
    ceil = p.padding_mode == PaddingMode.EXPLICIT_ROUND_UP
    # extra end padding so that ceil-mode windows fit; those cells never count
    extra = []
    for i in range(n):
        eff = (window[i] - 1) * dil[i] + 1
        padded = spatial[i] + pre[i] + post[i]
        out = ((padded - eff + (stride[i] - 1 if ceil else 0)) // stride[i]) + 1
        if ceil and (out - 1) * stride[i] >= spatial[i] + pre[i]:
            out -= 1  # the last window would start in the end padding
        extra.append(max(0, (out - 1) * stride[i] + eff - padded))
    post_all = tuple(post[i] + extra[i] for i in range(n))
    pads = torch_pad_list(pre, post_all)
    if p.type == PoolingType.MAX:
        fill = float("-inf") if x.dtype.is_floating_point else torch.iinfo(x.dtype).min
        xp = F.pad(x, pads, value=fill) if any(pads) else x
        return _max_pool(xp, window, stride, dil)
    if p.type == PoolingType.LP:
        xp = F.pad(x.abs() ** p.p, pads) if any(pads) else x.abs() ** p.p
        return _sum_pool(xp, window, stride, dil) ** (1.0 / p.p)
    xp = F.pad(x, pads) if any(pads) else x
    sums = _sum_pool(xp, window, stride, dil)
    ones = torch.ones((1, 1) + spatial, dtype=x.dtype, device=x.device)
    if p.average_count_excludes_padding:
        count = _sum_pool(F.pad(ones, pads) if any(pads) else ones, window, stride, dil)
    else:
        # padding counts, but not the extra cells added for ceil mode
        inner = F.pad(ones, torch_pad_list(pre, post), value=1.0)
        inner = F.pad(inner, torch_pad_list((0,) * n, tuple(extra)))
        count = _sum_pool(inner, window, stride, dil)
    return sums / count


def _windows(x: torch.Tensor, window, stride, dil) -> torch.Tensor:
    n = len(window)
    out = x
    for i in range(n):
        dim = x.dim() - n + i
        eff = (window[i] - 1) * dil[i] + 1
        out = out.unfold(dim, eff, stride[i])
        if dil[i] > 1:
            out = out[..., :: dil[i]]
    return out  # [..., out_1..out_n, w_1..w_n]


def _max_pool(x: torch.Tensor, window, stride, dil) -> torch.Tensor:
    n = len(window)
    if n in (1, 2, 3) and x.dtype.is_floating_point and x.device.type != "meta":
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
        return fn(x, window, stride, 0, dil)
    w = _windows(x, window, stride, dil)
    return w.flatten(-n).amax(-1)


def _sum_pool(x: torch.Tensor, window, stride, dil) -> torch.Tensor:
    n = len(window)
    if n in (1, 2, 3) and all(d == 1 for d in dil):
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        return fn(x, window, stride, 0) * math.prod(window)
    w = _windows(x, window, stride, dil)
    return w.flatten(-n).sum(-1)


@kernel(LayerKind.LRN)
def lrn(p: LRNParams, x: torch.Tensor) -> torch.Tensor:
    return F.local_response_norm(x, p.window_size, p.alpha, p.beta, p.k)
