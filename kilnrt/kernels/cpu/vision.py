"""CPU kernels for vision layers: resize, grid sample, non-max suppression, and the RoiAlign plugin."""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from kilnrt.kernels.cpu.plugin import builtin_plugin
from kilnrt.kernels.cpu.shape import host_values
from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import GridSampleParams, LayerKind, NMSParams, PluginParams, ResizeParams


# ----------------------------------------------------------------------------- resize
def _source_coords(mode: str, out: np.ndarray, scale: float, in_w: int, out_w: int,
                   roi: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Source coordinate of every output index (ONNX coordinate_transformation_mode)."""
    out_f = scale * in_w   # the (fractional) output width the scale implies
    if mode == "align_corners":
        return (np.zeros(out_w) if out_f == 1 else out * (in_w - 1) / (out_f - 1)), None
    if mode == "asymmetric":
        return out / scale, None
    if mode == "tf_crop_and_resize":
        lo, hi = roi if roi is not None else (0.0, 1.0)
        x = np.full(out_w, (hi - lo) * (in_w - 1) / 2) if out_f == 1 else out * (hi - lo) * (in_w - 1) / (out_f - 1)
        x = x + lo * (in_w - 1)
        return x, (x < 0) | (x > in_w - 1)
    if mode == "pytorch_half_pixel":
        return (np.full(out_w, -0.5) if out_f == 1 else (out + 0.5) / scale - 0.5), None
    if mode == "half_pixel":
        return (out + 0.5) / scale - 0.5, None
    if mode == "half_pixel_symmetric":
        offset = in_w / 2 * (1 - out_w / out_f)
        return offset + (out + 0.5) / scale - 0.5, None
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


def _nearest_coeffs(ratio: float, nearest_mode: str) -> list[float]:
    if ratio == 1.0:
        return [0.0, 1.0]
    pick_ceil = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
                 "floor": False, "ceil": True}[nearest_mode]
    return [0.0, 1.0] if pick_ceil else [1.0, 0.0]


def _cubic(x: float, a: float) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
    if x < 2:
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
    return 0.0


def _coeffs(p: ResizeParams, ratio: float, scale: float) -> list[float]:
    """Interpolation weights of the taps around a source coordinate with fraction ``ratio`` in (0, 1]."""
    if p.mode == "nearest":
        return _nearest_coeffs(ratio, p.nearest_mode)
    if p.mode == "linear":
        if not p.antialias:
            return [1 - ratio, ratio]
        s = min(scale, 1.0)
        start = int(math.floor(-1 / s) + 1)
        c = [min(max(1 - abs((i - ratio) * s), 0.0), 1.0) for i in range(start, 2 - start)]
        return [v / sum(c) for v in c]
    a = p.cubic_coeff_a
    if not p.antialias:
        return [_cubic(ratio + 1, a), _cubic(ratio, a), _cubic(1 - ratio, a), _cubic(2 - ratio, a)]
    s = min(scale, 1.0)
    start = int(math.floor(-2 / s) + 1)
    c = [_cubic(s * (i - ratio), a) for i in range(start, 2 - start)]
    return [v / sum(c) for v in c]


def _axis_taps(p: ResizeParams, in_w: int, out_w: int, scale: float, roi):
    """(indices [out, n] clamped into the input, weights [out, n], extrapolated rows or None)."""
    x, extrapolated = _source_coords(p.coordinate_transformation, np.arange(out_w, dtype=np.float64), scale,
                                     in_w, out_w, roi)
    base = np.floor(x)
    ratios = np.where(x == base, 1.0, x - base)
    coeffs = np.array([_coeffs(p, float(r), scale) for r in ratios], dtype=np.float64).reshape(out_w, -1)
    n = coeffs.shape[1]
    # the n taps nearest x (ties to the smaller index), as ONNX's reference picks them
    pad = int(math.ceil(n / 2))
    xp = x + pad
    fl = np.floor(xp).astype(np.int64)
    frac = xp - fl
    if n % 2 == 0:
        start = fl + np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        start = fl + np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    idx = start[:, None] + np.arange(n)[None, :] - pad
    if p.exclude_outside:
        coeffs = np.where((idx < 0) | (idx >= in_w), 0.0, coeffs)
        total = coeffs.sum(axis=-1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, in_w - 1), coeffs, extrapolated


def resize_plan(p: ResizeParams, shape: tuple[int, ...], scales, sizes, roi):
    """Per-dim (output size, scale) and full-rank roi from the scales/sizes/roi inputs."""
    rank = len(shape)
    axes = [a % rank for a in p.axes] if p.axes else list(range(rank))
    scale = [1.0] * rank
    out = list(shape)
    if sizes:
        for a, s in zip(axes, sizes):
            out[a] = int(s)
        scale = [out[i] / shape[i] if shape[i] else 1.0 for i in range(rank)]
        if p.keep_aspect_ratio_policy != "stretch":
            pick = min if p.keep_aspect_ratio_policy == "not_larger" else max
            s = pick(scale[a] for a in axes)
            scale = [s if i in axes else 1.0 for i in range(rank)]
            out = [int(s * shape[i] + 0.5) if i in axes else shape[i] for i in range(rank)]
    else:
        for a, s in zip(axes, scales):
            scale[a] = float(s)
        out = [int(scale[i] * shape[i]) for i in range(rank)]
    full_roi = None
    if roi:
        full_roi = [0.0] * rank + [1.0] * rank
        for i, a in enumerate(axes):
            full_roi[a], full_roi[rank + a] = float(roi[i]), float(roi[len(axes) + i])
    return axes, out, scale, full_roi


@functools.cache
def _device_taps(p: ResizeParams, in_w: int, out_w: int, scale: float, roi: tuple[float, float] | None,
                 device: torch.device):
    """:func:`_axis_taps` as tensors on ``device`` (nearest: the picked indices, no weights),
    made once per axis geometry: a run after the first copies nothing from the host, so it can
    be captured into a CUDA graph (a capture refuses copies from pageable host memory).  Kept
    for the life of the process, never evicted: a captured graph reads them by address (a few
    KB per geometry)."""
    idx, coeffs, extrapolated = _axis_taps(p, in_w, out_w, scale, roi)
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    if p.mode == "nearest":
        taps, weights = to(idx[np.arange(out_w), coeffs.argmax(axis=1)]), None
    else:
        taps, weights = to(idx.reshape(-1)), to(coeffs)
    mask = to(extrapolated) if extrapolated is not None and extrapolated.any() else None
    return taps, idx.shape, weights, mask


@kernel(LayerKind.RESIZE)
def resize(p: ResizeParams, x: torch.Tensor, scales: torch.Tensor | None = None,
           sizes: torch.Tensor | None = None, roi: torch.Tensor | None = None) -> torch.Tensor:
    values = [host_values(t) if t is not None and t.numel() else None for t in (scales, sizes, roi)]
    axes, out, scale, full_roi = resize_plan(p, tuple(x.shape), *values)
    rank = x.dim()
    nearest = p.mode == "nearest"
    y = x if nearest else x.to(torch.float64)
    for a in axes:
        axis_roi = None if full_roi is None else (full_roi[a], full_roi[rank + a])
        if math.isclose(scale[a], 1.0) and out[a] == y.shape[a] and \
                (axis_roi is None or (math.isclose(axis_roi[0], 0.0) and math.isclose(axis_roi[1], 1.0))):
            continue
        if out[a] == 0:
            y = y.narrow(a, 0, 0)
            continue
        index, tap_shape, weights, extrapolated = _device_taps(
            p, y.shape[a], out[a], float(scale[a]), None if axis_roi is None else tuple(map(float, axis_roi)),
            y.device)
        if nearest:
            y = y.index_select(a, index)
        else:
            taps = y.index_select(a, index).reshape(tuple(y.shape[:a]) + tap_shape + tuple(y.shape[a + 1:]))
            y = (taps * weights.reshape((1,) * a + tap_shape + (1,) * (rank - a - 1))).sum(dim=a + 1)
        if extrapolated is not None:
            m = extrapolated.reshape((1,) * a + (out[a],) + (1,) * (rank - a - 1))
            y = torch.where(m, torch.tensor(p.extrapolation_value, dtype=y.dtype), y)
    if y.dtype == x.dtype:
        return y
    if x.dtype.is_floating_point:
        return y.to(x.dtype)
    info = torch.iinfo(x.dtype)
    return y.round().clamp(info.min, info.max).to(x.dtype)


# ----------------------------------------------------------------------------- grid sample
_GRID_MODES = {"linear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}


@kernel(LayerKind.GRID_SAMPLE)
def grid_sample(p: GridSampleParams, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """ONNX GridSample (PyTorch's semantics): x [N, C, *D], grid [N, *D_out, r] in (x, y, ...) order."""
    if x.device.type == "meta" or grid.device.type == "meta":   # torch's meta path decomposes slowly
        return torch.empty(tuple(x.shape[:2]) + tuple(grid.shape[1:-1]), dtype=x.dtype, device="meta")
    compute = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    y = F.grid_sample(x.to(compute), grid.to(compute), mode=_GRID_MODES[p.mode], padding_mode=p.padding_mode,
                      align_corners=p.align_corners)
    return y.to(x.dtype)


# ----------------------------------------------------------------------------- non-max suppression
def _corners(boxes: torch.Tensor, center_point_box: int):
    """(x_min, y_min, x_max, y_max) of [..., 4] boxes given as corners (either order) or centers."""
    if center_point_box:
        cx, cy, w, h = boxes.unbind(-1)
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    y1, x1, y2, x2 = boxes.unbind(-1)
    return torch.minimum(x1, x2), torch.minimum(y1, y2), torch.maximum(x1, x2), torch.maximum(y1, y2)


def _iou_exceeds(boxes: torch.Tensor, center_point_box: int, threshold: float) -> torch.Tensor:
    """[B, B] bool: the IoU of boxes i and j is above ``threshold`` (degenerate boxes never are)."""
    x0, y0, x1, y1 = _corners(boxes, center_point_box)
    iw = torch.minimum(x1[:, None], x1[None, :]) - torch.maximum(x0[:, None], x0[None, :])
    ih = torch.minimum(y1[:, None], y1[None, :]) - torch.maximum(y0[:, None], y0[None, :])
    inter = iw * ih
    area = (x1 - x0) * (y1 - y0)
    union = area[:, None] + area[None, :] - inter
    valid = (iw > 0) & (ih > 0) & (inter > 0) & (area[:, None] > 0) & (area[None, :] > 0) & (union > 0)
    return valid & (inter / torch.where(union > 0, union, torch.ones_like(union)) > threshold)


@kernel(LayerKind.NMS)
def nms(p: NMSParams, boxes: torch.Tensor, scores: torch.Tensor, max_per_class: torch.Tensor | None = None,
        iou_threshold: torch.Tensor | None = None, score_threshold: torch.Tensor | None = None) -> torch.Tensor:
    """ONNX NonMaxSuppression: int64 [K, 3] rows of (batch, class, box), greedy per batch and class."""
    limit = host_values(max_per_class) if max_per_class is not None and max_per_class.numel() else [0]
    limit = max(int(limit[0]), 0)
    iou = float(host_values(iou_threshold)[0]) if iou_threshold is not None and iou_threshold.numel() else 0.0
    min_score = host_values(score_threshold)[0] if score_threshold is not None and score_threshold.numel() else None
    selected: list[tuple[int, int, int]] = []
    for b in range(boxes.shape[0]):
        suppress = _iou_exceeds(boxes[b], p.center_point_box, iou).tolist() if limit else None
        for c in range(scores.shape[1]):
            s = scores[b, c]
            order = torch.sort(s, descending=True, stable=True).indices.tolist()
            if min_score is not None:
                order = [i for i in order if float(s[i]) > min_score]
            kept: list[int] = []
            for i in order:
                if len(kept) >= limit:
                    break
                if not any(suppress[i][j] for j in kept):
                    kept.append(i)
                    selected.append((b, c, i))
    return torch.tensor(selected, dtype=torch.int64).reshape(-1, 3)


# ----------------------------------------------------------------------------- RoiAlign (plugin)
def _roi_axis(start: float, bin_size: float, bins: int, grid: int, size: int):
    """Per-axis bilinear taps of a RoI's sample points: (low, high) indices and weights, [bins, grid]."""
    pos = start + torch.arange(bins, dtype=torch.float64)[:, None] * bin_size + \
        (torch.arange(grid, dtype=torch.float64)[None, :] + 0.5) * bin_size / grid
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low)
    return low, high, (1 - frac) * valid, frac * valid


@builtin_plugin("RoiAlign")
def roi_align(p: PluginParams, x: torch.Tensor, rois: torch.Tensor, batch_indices: torch.Tensor) -> torch.Tensor:
    """ONNX RoiAlign: bilinear samples on a grid per output bin, averaged (avg) or max-ed (max).

    Fields: mode, output_height, output_width, sampling_ratio (0: ceil(roi size / bins)),
    spatial_scale, half_pixel (coordinate_transformation_mode half_pixel vs output_half_pixel).
    """
    oh, ow = int(p.field("output_height")), int(p.field("output_width"))
    shape = (rois.shape[0], x.shape[1], oh, ow)
    if x.device.type == "meta" or rois.device.type == "meta":
        return torch.empty(shape, dtype=x.dtype, device="meta")
    height, width = x.shape[2], x.shape[3]
    scale, ratio = float(p.field("spatial_scale")), int(p.field("sampling_ratio"))
    offset = 0.5 if p.field("half_pixel") else 0.0
    data = x.to(torch.float64)
    out = []
    for roi, b in zip(rois.to(torch.float64).tolist(), batch_indices.to(torch.int64).tolist()):
        x0, y0, x1, y1 = (v * scale - offset for v in roi)
        rw, rh = x1 - x0, y1 - y0
        if not offset:   # malformed RoIs are forced to 1x1
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        gh = ratio if ratio > 0 else int(math.ceil(rh / oh))
        gw = ratio if ratio > 0 else int(math.ceil(rw / ow))
        ylo, yhi, wylo, wyhi = _roi_axis(y0, rh / oh, oh, gh, height)
        xlo, xhi, wxlo, wxhi = _roi_axis(x0, rw / ow, ow, gw, width)
        img = data[b]                                           # [C, H, W]
        yy = lambda i: i[:, :, None, None]  # noqa: E731  -> [oh, gh, 1, 1]
        xx = lambda i: i[None, None, :, :]  # noqa: E731  -> [1, 1, ow, gw]
        taps = [wy * wx * img[:, yy(iy), xx(ix)] for iy, wy in ((ylo, yy(wylo)), (yhi, yy(wyhi)))
                for ix, wx in ((xlo, xx(wxlo)), (xhi, xx(wxhi)))]   # each [C, oh, gh, ow, gw]
        if p.field("mode") == "max":
            v = torch.stack(taps).amax(dim=0).amax(dim=(2, 4))
        else:
            v = sum(taps).sum(dim=(2, 4)) / max(gh * gw, 1)
        out.append(v)
    y = torch.stack(out) if out else torch.empty(shape, dtype=torch.float64)
    return y.to(x.dtype)
