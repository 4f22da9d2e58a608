"""Importers for vision ops: Resize, Upsample, GridSample, AffineGrid, NonMaxSuppression, RoiAlign."""
from __future__ import annotations

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import (ConcatenationParams, ElementWiseOperation as E, FillOperation, FillParams,
                                   GridSampleParams, LayerKind, MatrixMultiplyParams, MatrixOperation, NMSParams,
                                   PluginParams, ResizeParams, SliceParams)
from kilnrt.onnx.registry import importer

_MODES = ("nearest", "linear", "cubic")
_COORDS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
           "tf_crop_and_resize")
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_ASPECT = ("stretch", "not_larger", "not_smaller")


def _present(ctx, t):
    """None for an omitted input or one that is statically empty (ONNX's "not given")."""
    if t is None:
        return None
    shape = t.shape
    if shape is not None and any(d == 0 for d in shape):
        return None
    return t


def _resize(ctx, x, roi, scales, sizes, params: ResizeParams):
    ctx.require(params.mode in _MODES, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"mode={params.mode!r}; supported: {', '.join(_MODES)}")
    ctx.require(params.coordinate_transformation in _COORDS, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"coordinate_transformation_mode={params.coordinate_transformation!r}; "
                f"supported: {', '.join(_COORDS)}")
    ctx.require(params.nearest_mode in _NEAREST, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"nearest_mode={params.nearest_mode!r}; supported: {', '.join(_NEAREST)}")
    ctx.require(params.keep_aspect_ratio_policy in _ASPECT, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"keep_aspect_ratio_policy={params.keep_aspect_ratio_policy!r}; supported: {', '.join(_ASPECT)}")
    ctx.require(not (params.antialias and params.mode == "nearest"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                "antialias=1 needs mode linear or cubic")
    scales, sizes = _present(ctx, scales), _present(ctx, sizes)
    ctx.require((scales is None) != (sizes is None), ErrorCode.INVALID_NODE,
                "exactly one of scales and sizes must be given")
    if params.coordinate_transformation != "tf_crop_and_resize":
        roi = None
    return ctx.out(LayerKind.RESIZE, params, x, scales, sizes, _present(ctx, roi))


@importer("Upsample", since=7)
def upsample(ctx, node, x, scales=None, *, mode="nearest", **attrs):
    """Upsample (opset 7: scales attribute; 9: scales input): asymmetric coordinates, floor for nearest."""
    if scales is None:
        ctx.require("scales" in attrs, ErrorCode.INVALID_NODE, "the scales attribute is required")
        scales = ctx.constant(list(attrs.pop("scales")), "float32")
    ctx.require(not attrs, ErrorCode.UNSUPPORTED_NODE_ATTR, f"attributes {sorted(attrs)} are not supported")
    mode = {"bilinear": "linear"}.get(mode, mode)
    ctx.require(mode in ("nearest", "linear"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"mode={mode!r}; supported: nearest, linear")
    return _resize(ctx, x, None, scales, None,
                   ResizeParams(mode=mode, coordinate_transformation="asymmetric", nearest_mode="floor"))


@importer("Resize", since=10)
def resize_v10(ctx, node, x, scales, *, mode="nearest"):
    """Resize-10: scales only, asymmetric coordinates, floor for nearest (as Upsample)."""
    return _resize(ctx, x, None, scales, None,
                   ResizeParams(mode=mode, coordinate_transformation="asymmetric", nearest_mode="floor"))


@importer("Resize", since=11)
def resize_v11(ctx, node, x, roi=None, scales=None, sizes=None, *, coordinate_transformation_mode="half_pixel",
               cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, mode="nearest",
               nearest_mode="round_prefer_floor"):
    return _resize(ctx, x, roi, scales, sizes, ResizeParams(
        mode=mode, coordinate_transformation=coordinate_transformation_mode, nearest_mode=nearest_mode,
        cubic_coeff_a=float(cubic_coeff_a), exclude_outside=bool(exclude_outside),
        extrapolation_value=float(extrapolation_value)))


@importer("Resize", since=18)
def resize(ctx, node, x, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
           coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
           extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
           nearest_mode="round_prefer_floor"):
    """Resize: every mode, coordinate transformation and nearest mode; antialias, axes, aspect policies."""
    return _resize(ctx, x, roi, scales, sizes, ResizeParams(
        mode=mode, coordinate_transformation=coordinate_transformation_mode, nearest_mode=nearest_mode,
        cubic_coeff_a=float(cubic_coeff_a), exclude_outside=bool(exclude_outside),
        extrapolation_value=float(extrapolation_value), axes=tuple(int(a) for a in axes) if axes else None,
        keep_aspect_ratio_policy=keep_aspect_ratio_policy, antialias=bool(antialias)))


def _grid_sample(ctx, x, grid, mode, padding_mode, align_corners):
    ctx.require(padding_mode in ("zeros", "border", "reflection"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"padding_mode={padding_mode!r}; supported: zeros, border, reflection")
    rank = ctx.rank(x)
    ctx.require(rank in (4, 5), ErrorCode.UNSUPPORTED_NODE_SHAPE,
                f"X has rank {rank}; supported: 4 (2-D sampling) and 5 (3-D sampling)")
    ctx.require(not (mode == "cubic" and rank == 5), ErrorCode.UNSUPPORTED_NODE_ATTR,
                "mode='cubic' is supported for 2-D sampling (rank-4 X) only")
    return ctx.out(LayerKind.GRID_SAMPLE, GridSampleParams(mode, padding_mode, bool(align_corners)), x, grid)


@importer("GridSample", since=16)
def grid_sample_v16(ctx, node, x, grid, *, align_corners=0, mode="bilinear", padding_mode="zeros"):
    """GridSample-16: modes bilinear, nearest, bicubic on 4-D X."""
    names = {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"}
    ctx.require(mode in names, ErrorCode.UNSUPPORTED_NODE_ATTR, f"mode={mode!r}; supported: {', '.join(names)}")
    return _grid_sample(ctx, x, grid, names[mode], padding_mode, align_corners)


@importer("GridSample", since=20)
def grid_sample(ctx, node, x, grid, *, align_corners=0, mode="linear", padding_mode="zeros"):
    """GridSample: linear and nearest for 2-D and 3-D sampling, cubic for 2-D."""
    ctx.require(mode in ("linear", "nearest", "cubic"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"mode={mode!r}; supported: linear, nearest, cubic")
    return _grid_sample(ctx, x, grid, mode, padding_mode, align_corners)


@importer("AffineGrid", since=20)
def affine_grid(ctx, node, theta, size, *, align_corners=0):
    """AffineGrid: a base grid of normalized coordinates (built from the run-time size) times theta^T."""
    r = (theta.shape or (None, None))[1]
    ctx.require(r in (2, 3), ErrorCode.UNSUPPORTED_NODE_SHAPE,
                f"theta must be [N, 2, 3] (2-D) or [N, 3, 4] (3-D); got shape {theta.shape}")
    dtype = ctx.dtype(theta)
    np_dtype = dtype.numpy

    def size_slice(start, end):
        return ctx.out(LayerKind.SLICE, SliceParams(), size, ctx.constant([start], np.int64),
                       ctx.constant([end], np.int64))

    def scalar(i):
        return size_slice(i, i + 1)

    spatial = size_slice(2, 2 + r)
    zeros = ctx.out(LayerKind.FILL, FillParams(FillOperation.CONSTANT, 0.0, dtype), spatial)
    coords = []
    for i in range(r):   # spatial dim i (D, H, W order); the grid lists them last-first (x, y, z)
        d = scalar(2 + i)
        steps = ctx.out(LayerKind.FILL, FillParams(FillOperation.RANGE, 0, DataType.INT64),
                        ctx.constant(np.asarray(0, np.int64)), d, ctx.constant(np.asarray(1, np.int64)))
        steps, df = ctx.cast(steps, dtype), ctx.cast(d, dtype)
        one, two = ctx.constant(np.asarray(1, np_dtype)), ctx.constant(np.asarray(2, np_dtype))
        if align_corners:   # -1 + 2 i / (d - 1)
            c = ctx.elementwise(E.DIV, ctx.elementwise(E.PROD, steps, two), ctx.elementwise(E.SUB, df, one))
        else:               # (2 i + 1) / d - 1
            c = ctx.elementwise(E.DIV, ctx.elementwise(E.SUM, ctx.elementwise(E.PROD, steps, two), one), df)
        c = ctx.elementwise(E.SUB, c, one)
        c = ctx.reshape(c, [1] * i + [-1] + [1] * (r - 1 - i))
        coords.append(ctx.unsqueeze(ctx.elementwise(E.SUM, c, zeros), [r]))
    ones = ctx.unsqueeze(ctx.elementwise(E.SUM, zeros, ctx.constant(np.asarray(1, np_dtype))), [r])
    base = ctx.out(LayerKind.CONCATENATION, ConcatenationParams(r), *reversed(coords), ones)
    base = ctx.reshape(base, [-1, r + 1])                                   # [P, r + 1]
    grid = ctx.out(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(MatrixOperation.NONE, MatrixOperation.TRANSPOSE),
                   base, theta)                                             # [N, P, r]
    dims = ctx.out(LayerKind.CONCATENATION, ConcatenationParams(0), scalar(0), spatial, ctx.constant([r], np.int64))
    return ctx.reshape(grid, dims, zero_is_placeholder=False)


@importer("NonMaxSuppression", since=10)
def non_max_suppression(ctx, node, boxes, scores, max_output_boxes_per_class=None, iou_threshold=None,
                        score_threshold=None, *, center_point_box=0):
    """NonMaxSuppression: an NMS layer (its output length depends on the data)."""
    ctx.require(center_point_box in (0, 1), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"center_point_box={center_point_box}; supported: 0 (corners), 1 (centers)")
    return ctx.out(LayerKind.NMS, NMSParams(int(center_point_box)), boxes, scores, max_output_boxes_per_class,
                   iou_threshold, score_threshold)


@importer("RoiAlign", since=10)
def roi_align_v10(ctx, node, x, rois, batch_indices, *, mode="avg", output_height=1, output_width=1,
                  sampling_ratio=0, spatial_scale=1.0):
    """RoiAlign-10: RoI corners are not shifted by half a pixel (output_half_pixel)."""
    return roi_align(ctx, node, x, rois, batch_indices, coordinate_transformation_mode="output_half_pixel",
                     mode=mode, output_height=output_height, output_width=output_width,
                     sampling_ratio=sampling_ratio, spatial_scale=spatial_scale)


@importer("RoiAlign", since=16)
def roi_align(ctx, node, x, rois, batch_indices, *, coordinate_transformation_mode="half_pixel", mode="avg",
              output_height=1, output_width=1, sampling_ratio=0, spatial_scale=1.0):
    """RoiAlign: the built-in RoiAlign plugin (4-D X, avg or max pooling of bilinear samples)."""
    ctx.require(mode in ("avg", "max"), ErrorCode.UNSUPPORTED_NODE_ATTR, f"mode={mode!r}; supported: avg, max")
    ctx.require(coordinate_transformation_mode in ("half_pixel", "output_half_pixel"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"coordinate_transformation_mode={coordinate_transformation_mode!r}; "
                "supported: half_pixel, output_half_pixel")
    ctx.require(ctx.rank(x) == 4, ErrorCode.UNSUPPORTED_NODE_SHAPE, f"X has rank {ctx.rank(x)}; RoiAlign needs 4")
    fields = (("mode", mode), ("output_height", int(output_height)), ("output_width", int(output_width)),
              ("sampling_ratio", int(sampling_ratio)), ("spatial_scale", float(spatial_scale)),
              ("half_pixel", coordinate_transformation_mode == "half_pixel"))
    return ctx.out(LayerKind.PLUGIN, PluginParams("RoiAlign", "1", fields), x, rois, batch_indices)
