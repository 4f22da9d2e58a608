"""CPU kernels for convolution, deconvolution, pooling and LRN."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kilnrt.kernels.cpu.epilogue import conv_epilogue
from kilnrt.kernels.cpu.plugin import builtin_plugin
from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import (ConvolutionParams, DeconvolutionParams, LayerKind, LRNParams,
                                   PaddingMode, PluginParams, PoolingParams, PoolingType, SqueezeExcitationParams)


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


# padding modes whose output size rounds down, ``(in + pads - dilated window) // stride + 1``
FLOOR_PADDING_MODES = (PaddingMode.EXPLICIT_ROUND_DOWN, PaddingMode.SAME_UPPER, PaddingMode.SAME_LOWER)


def window_geometry(p: ConvolutionParams, spatial: tuple[int, ...], window: tuple[int, ...]):
    """(stride, dilation, pre-padding, output size) of a convolution of ``p`` over ``spatial``
    with a padding mode from :data:`FLOOR_PADDING_MODES`: what a hand-written kernel needs."""
    n = len(spatial)
    stride, dilation = _nd(p.stride_nd, n, 1), _nd(p.dilation_nd, n, 1)
    pre, post = resolve_padding(spatial, window, stride, dilation, p.pre_padding, p.post_padding, p.padding_mode)
    out = tuple((size + a + b - d * (k - 1) - 1) // s + 1
                for size, a, b, d, k, s in zip(spatial, pre, post, dilation, window, stride))
    return stride, dilation, pre, out


def torch_pad_list(pre: tuple[int, ...], post: tuple[int, ...]) -> list[int]:
    """F.pad's order: last dim first, (begin, end) pairs."""
    out: list[int] = []
    for b, e in zip(reversed(pre), reversed(post)):
        out += [b, e]
    return out


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@kernel(LayerKind.CONVOLUTION)
def convolution(p: ConvolutionParams, x: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    return conv_epilogue(p, _convolution(p, x, w, b), residual)


def _convolution(p: ConvolutionParams, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
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


@kernel(LayerKind.SQUEEZE_EXCITATION)
def squeeze_excitation(p: SqueezeExcitationParams, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None,
                       w2: torch.Tensor, b2: torch.Tensor | None = None) -> torch.Tensor:
    """The layers the gate was fused from, in order: mean over H and W, 1x1 convolution +
    activation, 1x1 convolution + gate (each rounding to the input's type, as they did)."""
    pooled = torch.mean(x, dim=(2, 3), keepdim=True)
    fc1 = ConvolutionParams(w1.shape[0], (1, 1), activation=p.activation, activation_alpha=p.activation_alpha,
                            activation_beta=p.activation_beta)
    fc2 = ConvolutionParams(w2.shape[0], (1, 1), activation=p.gate, activation_alpha=p.gate_alpha,
                            activation_beta=p.gate_beta)
    return convolution(fc2, convolution(fc1, pooled, w1, b1), w2, b2)


_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def deconvolution_padding(p: DeconvolutionParams, spatial: tuple[int, ...], window: tuple[int, ...]):
    """(pre, post, full): the crop at each end of the unpadded output, whose size is ``full``.

    SAME_* modes make the output ``spatial * stride`` (SAME_UPPER crops more at the end).
    A negative pad extends the output with zeros (before the bias is added).
    """
    n = len(spatial)
    stride, dil = _nd(p.stride_nd, n, 1), _nd(p.dilation_nd, n, 1)
    out_pad = _nd(p.output_padding, n, 0)
    full = tuple((spatial[i] - 1) * stride[i] + (window[i] - 1) * dil[i] + 1 for i in range(n))
    if p.padding_mode in (PaddingMode.SAME_UPPER, PaddingMode.SAME_LOWER):
        total = [full[i] + out_pad[i] - spatial[i] * stride[i] for i in range(n)]
        small = [t // 2 for t in total]
        pre = small if p.padding_mode == PaddingMode.SAME_UPPER else [t - s for t, s in zip(total, small)]
        post = [t - b for t, b in zip(total, pre)]
        return tuple(pre), tuple(post), full
    return _nd(p.pre_padding, n, 0), _nd(p.post_padding, n, 0), full


@kernel(LayerKind.DECONVOLUTION)
def deconvolution(p: DeconvolutionParams, x: torch.Tensor, w: torch.Tensor,
                  b: torch.Tensor | None = None) -> torch.Tensor:
    """Transposed convolution: the unpadded result, cropped (or zero-extended) by the pads, plus bias."""
    n = x.dim() - 2
    stride, dil = _nd(p.stride_nd, n, 1), _nd(p.dilation_nd, n, 1)
    pre, post, full = deconvolution_padding(p, tuple(x.shape[2:]), tuple(w.shape[2:]))
    if n in _CONV_TRANSPOSE:
        y = _CONV_TRANSPOSE[n](x, w, None, stride, 0, 0, p.num_groups, dil)
    else:
        y = torch.ops.aten.convolution(x, w, None, list(stride), [0] * n, list(dil), True, [0] * n, p.num_groups)
    out_pad = _nd(p.output_padding, n, 0)
    crop = torch_pad_list(tuple(-v for v in pre), tuple(out_pad[i] - post[i] for i in range(n)))
    if any(crop):
        y = F.pad(y, crop)
    if b is not None:
        y = y + b.reshape((-1,) + (1,) * n)
    return y


def _pool_padding(p: PoolingParams, spatial: tuple[int, ...]):
    """(pre, post, extra): explicit pads, plus the extra end padding ceil-mode windows need."""
    n = len(spatial)
    window = tuple(p.window_size_nd)
    stride, dil = _nd(p.stride_nd, n, 1), _nd(p.dilation_nd, n, 1)
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
    return pre, post, tuple(extra)


@kernel(LayerKind.POOLING)
def pooling(p: PoolingParams, x: torch.Tensor) -> torch.Tensor:
    n = len(p.window_size_nd)
    window = tuple(p.window_size_nd)
    stride, dil = _nd(p.stride_nd, n, 1), _nd(p.dilation_nd, n, 1)
    spatial = tuple(x.shape[-n:])
    pre, post, extra = _pool_padding(p, spatial)
    post_all = tuple(post[i] + extra[i] for i in range(n))
    pads = torch_pad_list(pre, post_all)
    if p.type == PoolingType.MAX:
        fill = float("-inf") if x.dtype.is_floating_point else torch.iinfo(x.dtype).min
        # on a GPU without asking whether there is NaN (a sync, and no CUDA graph)
        device = x.device.type
        if x.dtype.is_floating_point and device != "meta" and (device != "cpu" or bool(torch.isnan(x).any())):
            return _max_pool_ignoring_nan(x, pre, post, extra, window, stride, dil)
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


def _max_pool_ignoring_nan(x: torch.Tensor, pre, post, extra, window, stride, dil) -> torch.Tensor:
    """MaxPool skipping NaN, as onnx.reference's vectorized path does (its loop path and ONNX
    Runtime keep a NaN in the first or last cell of a window): a window's max is that of its
    numbers (np.fmax).  Explicit padding is -inf, a number; a window of only NaN (and ceil
    mode's extra end cells) gives NaN."""
    n = len(window)
    nan = torch.isnan(x)
    pads = torch_pad_list(pre, tuple(post[i] + extra[i] for i in range(n)))
    y = _max_pool(F.pad(x.masked_fill(nan, float("-inf")), pads, value=float("-inf")), window, stride, dil)
    numbers = F.pad((~nan).to(x.dtype), torch_pad_list(pre, post), value=1.0)
    numbers = _max_pool(F.pad(numbers, torch_pad_list((0,) * n, tuple(extra))), window, stride, dil)
    return y.masked_fill(numbers == 0, float("nan"))


def _sum_pool(x: torch.Tensor, window, stride, dil) -> torch.Tensor:
    n = len(window)
    if n in (1, 2, 3) and all(d == 1 for d in dil):
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        return fn(x, window, stride, 0) * math.prod(window)
    w = _windows(x, window, stride, dil)
    return w.flatten(-n).sum(-1)


@builtin_plugin("MaxPoolWithIndices")
def max_pool_with_indices(p: PluginParams, x: torch.Tensor):
    """Max pooling that also returns int64 indices of the maxima, flattened over the whole input.

    Fields: window, stride, pre, post, dilation, padding_mode (as PoolingParams) and
    ``column_major``: index the spatial dims last-fastest (False) or first-fastest (True, ONNX
    storage_order=1).  Padding never wins; ties go to the first position in the window.
    """
    pp = PoolingParams(PoolingType.MAX, p.field("window"), p.field("stride"), p.field("pre"), p.field("post"),
                       p.field("dilation"), p.field("padding_mode"))
    n = len(pp.window_size_nd)
    window = tuple(pp.window_size_nd)
    stride, dil = _nd(pp.stride_nd, n, 1), _nd(pp.dilation_nd, n, 1)
    spatial = tuple(x.shape[-n:])
    pre, post, extra = _pool_padding(pp, spatial)
    fill = float("-inf") if x.dtype.is_floating_point else torch.iinfo(x.dtype).min
    xp = F.pad(x, torch_pad_list(pre, tuple(post[i] + extra[i] for i in range(n))), value=fill)
    windows = _windows(xp, window, stride, dil).flatten(-n)        # [..., out_1..out_n, window]
    values, arg = windows.max(dim=-1)
    out_shape = tuple(values.shape[-n:])
    index = torch.zeros(values.shape, dtype=torch.int64, device=x.device)
    place = 1
    order = reversed(range(n)) if not p.field("column_major") else range(n)
    for d in order:   # the input coordinate along dim d, folded into the flat index
        k = (arg // math.prod(window[d + 1:])) % window[d]
        o = torch.arange(out_shape[d], device=x.device).reshape((-1,) + (1,) * (n - 1 - d))
        index = index + (o * stride[d] - pre[d] + k * dil[d]) * place
        place *= spatial[d]
    lead = math.prod(x.shape[:-n])
    base = torch.arange(lead, device=x.device).reshape(tuple(x.shape[:-n]) + (1,) * n) * math.prod(spatial)
    return values, index + base


@builtin_plugin("DeformConv")
def deform_conv(p: PluginParams, x: torch.Tensor, w: torch.Tensor, offset: torch.Tensor,
                b: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """2-D deformable convolution (ONNX DeformConv): bilinear samples at offset kernel taps, then a GEMM.

    Fields: stride, pre (top, left pads), dilation, group, offset_group.  offset is
    [N, offset_group * kh * kw * 2, oh, ow] as (dy, dx) pairs; mask [N, offset_group * kh * kw, oh, ow].
    """
    (sh, sw), (ph, pw), (dh, dw) = p.field("stride"), p.field("pre"), p.field("dilation")
    group, og = int(p.field("group")), int(p.field("offset_group"))
    n, c, ih, iw = x.shape
    m, _, kh, kw = w.shape
    oh, ow = offset.shape[2], offset.shape[3]
    if any(t is not None and t.device.type == "meta" for t in (x, w, offset, b, mask)):
        return torch.empty((n, m, oh, ow), dtype=x.dtype, device="meta")
    dev = x.device
    off = offset.reshape(n, og, kh, kw, 2, oh, ow)
    rows = (torch.arange(kh, device=dev) * dh).reshape(kh, 1, 1, 1) + \
        (torch.arange(oh, device=dev) * sh - ph).reshape(1, 1, oh, 1)
    cols = (torch.arange(kw, device=dev) * dw).reshape(1, kw, 1, 1) + \
        (torch.arange(ow, device=dev) * sw - pw).reshape(1, 1, 1, ow)
    ys = rows + off[:, :, :, :, 0]                                   # [N, G, kh, kw, oh, ow]
    xs = cols + off[:, :, :, :, 1]
    grid = torch.stack([xs / max(iw - 1, 1) * 2 - 1, ys / max(ih - 1, 1) * 2 - 1], dim=-1)
    grid = grid.reshape(n * og, kh * kw, oh * ow, 2)
    compute = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    taps = F.grid_sample(x.reshape(n * og, c // og, ih, iw).to(compute), grid.to(compute), mode="bilinear",
                         padding_mode="zeros", align_corners=True)   # [N*G, C/G, kh*kw, oh*ow]
    taps = taps.reshape(n, og, c // og, kh * kw, oh * ow)
    if mask is not None:
        taps = taps * mask.reshape(n, og, 1, kh * kw, oh * ow).to(compute)
    taps = taps.reshape(n, group, (c // group) * kh * kw, oh * ow)
    y = torch.matmul(w.reshape(group, m // group, -1).to(compute), taps).reshape(n, m, oh, ow)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1).to(compute)
    return y.to(x.dtype)


@kernel(LayerKind.LRN)
def lrn(p: LRNParams, x: torch.Tensor) -> torch.Tensor:
    return F.local_response_norm(x, p.window_size, p.alpha, p.beta, p.k)
