"""Converters of SSD Caffe's layer types (github.com/weiliu89/caffe, branch ssd): Normalize,
Permute, PriorBox and DetectionOutput, as that Caffe runs them, from kilnrt's layer kinds.
Imported by :mod:`kilnrt.caffe.layers`, whose ``@converter`` registry they join."""
from __future__ import annotations

import numpy as np

from kilnrt.caffe.context import Context
from kilnrt.caffe.layers import _reshape, converter
from kilnrt.errors import ErrorCode
from kilnrt.network.graph import Tensor
from kilnrt.network.layers import (ConcatenationParams, ElementWiseOperation, ElementWiseParams, GatherMode,
                                   GatherParams, LayerKind, NMSParams, ReduceOperation, ReduceParams, ShapeParams,
                                   ShuffleParams, TopKOperation, TopKParams, UnaryOperation, UnaryParams)


def _binary(ctx: Context, op: ElementWiseOperation, a, b, suffix: str):
    return ctx.add(LayerKind.ELEMENTWISE, ElementWiseParams(op), [a, b], suffix)


def _gather(ctx: Context, x, axis: int, indices, suffix: str):
    """``x`` indexed along ``axis`` by ``indices`` (a tensor, or a list that becomes an int64 constant)."""
    if not isinstance(indices, Tensor):
        indices = ctx.const(np.asarray(indices, np.int64), suffix.lstrip("/") + "_indices")
    return ctx.add(LayerKind.GATHER, GatherParams(axis), [x, indices], suffix)


@converter("Normalize")
def normalize(ctx: Context, layer):
    """x / sqrt(sum of x*x + eps), the sum over the channels at each position (across_spatial:
    false) or over all of an image's values, times a learned scale per channel (or one scale)."""
    p, (x,) = layer.norm_param, ctx.bottoms(1)
    shape = ctx.shape(x)
    rank = len(shape)
    if rank < 2:
        raise ctx.fail(f"needs a blob of rank 2 or more (N, C, ...), got shape {shape}", ErrorCode.INVALID_NODE)
    (scale,) = ctx.blobs(1, 1)
    scale = ctx.blob(scale, (1, 1 if p.channel_shared else shape[1]) + (1,) * (rank - 2), "scale")
    axes = tuple(range(1, rank)) if p.across_spatial else (1,)
    total = ctx.add(LayerKind.REDUCE, ReduceParams(ReduceOperation.SUM, axes, keep_dims=True),
                    [_binary(ctx, ElementWiseOperation.PROD, x, x, "/square")], "/sum")
    eps = ctx.const(np.full((1,) * rank, p.eps, np.float32), "eps")
    norm = ctx.add(LayerKind.UNARY, UnaryParams(UnaryOperation.SQRT),
                   [_binary(ctx, ElementWiseOperation.SUM, total, eps, "/eps")], "/norm")
    y = _binary(ctx, ElementWiseOperation.DIV, x, norm, "/div")
    return [_binary(ctx, ElementWiseOperation.PROD, y, ctx.const(scale, "scale"), "")]


@converter("Permute")
def permute(ctx: Context, layer):
    """A transpose: top axis i is bottom axis order[i]."""
    (x,) = ctx.bottoms(1)
    rank = len(ctx.shape(x))
    order = [int(o) for o in layer.permute_param.order]
    if any(o >= rank for o in order) or len(set(order)) != len(order):
        raise ctx.fail(f"order {order} must name distinct axes of the rank-{rank} blob", ErrorCode.INVALID_NODE)
    order += [i for i in range(rank) if i not in order]      # Caffe appends the axes not named, in order
    return [ctx.add(LayerKind.SHUFFLE, ShuffleParams(first_transpose=tuple(order)), [x])]


def _floats(values) -> str:
    return f"[{', '.join(f'{v:g}' for v in values)}]"      # float32 fields as written: 0.9, not 0.8999999761


def _height_width(ctx: Context, t, what: str) -> tuple[int, int]:
    shape = t.shape
    if shape is None or len(shape) != 4:
        raise ctx.fail(f"the {what} bottom {t.name!r} must be an (N, C, H, W) blob, got shape {shape}",
                       ErrorCode.INVALID_NODE)
    if not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        raise ctx.fail(f"the height and width of the {what} bottom {t.name!r} are not static ({shape}); "
                       "kilnrt computes the priors when it parses, from those sizes")
    return shape[2], shape[3]


@converter("PriorBox")
def prior_box(ctx: Context, layer):
    """SSD's default boxes depend only on the sizes of the feature map and the image (its two
    bottoms), so they are a constant computed here as Caffe's PriorBoxLayer::Forward_cpu does:
    [1, 2, H * W * priors * 4], the boxes (xmin, ymin, xmax, ymax, as fractions of the image),
    then their variances.  Per cell, for each min_size: a min_size square, a sqrt(min_size *
    max_size) square, then one box per aspect ratio other than 1."""
    p, (feature, image) = layer.prior_box_param, ctx.bottoms(2)
    h, w = _height_width(ctx, feature, "first (feature map)")
    img_h, img_w = _height_width(ctx, image, "second (image)")
    min_sizes, max_sizes = list(p.min_size), list(p.max_size)
    if not min_sizes or any(m <= 0 for m in min_sizes):
        raise ctx.fail(f"min_size is required and positive, got {_floats(min_sizes)}", ErrorCode.INVALID_NODE)
    if max_sizes and (len(max_sizes) != len(min_sizes) or any(mx <= mn for mn, mx in zip(min_sizes, max_sizes))):
        raise ctx.fail(f"max_size {_floats(max_sizes)} must give one size above each min_size {_floats(min_sizes)}",
                       ErrorCode.INVALID_NODE)
    variance = list(p.variance) or [0.1]
    if len(variance) not in (1, 4) or any(v <= 0 for v in variance):
        raise ctx.fail(f"variance takes 1 or 4 positive values, got {_floats(variance)}", ErrorCode.INVALID_NODE)
    if p.HasField("img_h") or p.HasField("img_w") or p.HasField("img_size"):
        if p.HasField("img_size") and (p.HasField("img_h") or p.HasField("img_w")):
            raise ctx.fail("give either img_size or img_h/img_w, not both", ErrorCode.INVALID_NODE)
        img_h, img_w = (p.img_size, p.img_size) if p.HasField("img_size") else (p.img_h, p.img_w)
    f32 = np.float32
    if p.HasField("step_h") or p.HasField("step_w") or p.HasField("step"):
        if p.HasField("step") and (p.HasField("step_h") or p.HasField("step_w")):
            raise ctx.fail("give either step or step_h/step_w, not both", ErrorCode.INVALID_NODE)
        step_h, step_w = (p.step, p.step) if p.HasField("step") else (p.step_h, p.step_w)
    else:
        step_h, step_w = f32(img_h) / f32(h), f32(img_w) / f32(w)
    if min(img_h, img_w, step_h, step_w) <= 0:
        raise ctx.fail("img_size/img_h/img_w and step/step_h/step_w must be positive", ErrorCode.INVALID_NODE)
    ratios = [f32(1)]        # 1, then each new ratio (and, with flip, its inverse)
    for r in p.aspect_ratio:
        if all(abs(r - q) >= 1e-6 for q in ratios):
            ratios += [f32(r), f32(1.0 / r)] if p.flip else [f32(r)]
    sizes = []               # (width, height) of each prior of a cell, in float32 as Caffe's
    for i, mn in enumerate(min_sizes):
        mn = int(mn)         # Caffe's loop reads each size as an int
        sizes.append((f32(mn), f32(mn)))
        if max_sizes:
            side = f32(np.sqrt(mn * int(max_sizes[i])))
            sizes.append((side, side))
        sizes += [(f32(mn) * np.sqrt(r), f32(mn) / np.sqrt(r)) for r in ratios if abs(r - 1) >= 1e-6]
    cx = (np.arange(w, dtype=f32) + f32(p.offset)) * f32(step_w)
    cy = (np.arange(h, dtype=f32) + f32(p.offset)) * f32(step_h)
    bw = np.array([s[0] for s in sizes], f32).astype(np.float64) / 2
    bh = np.array([s[1] for s in sizes], f32).astype(np.float64) / 2
    cx, cy = cx.astype(np.float64)[None, :, None], cy.astype(np.float64)[:, None, None]
    boxes = np.stack(np.broadcast_arrays((cx - bw) / img_w, (cy - bh) / img_h, (cx + bw) / img_w,
                                         (cy + bh) / img_h), -1).astype(f32)          # [H, W, priors, 4]
    if p.clip:
        boxes = np.clip(boxes, 0, 1)
    variances = np.broadcast_to(np.asarray(variance, f32), boxes.shape)
    return [ctx.const(np.stack([boxes.reshape(-1), variances.reshape(-1)])[None], "priors")]


@converter("DetectionOutput")
def detection_output(ctx: Context, layer):
    """SSD's detections for one image, as Caffe's DetectionOutputLayer::Forward_cpu finds them:
    the location predictions decoded against the priors; per class but the background, the
    top_k scores above confidence_threshold, greedy NMS (overlap above nms_threshold
    suppresses); then the best keep_top_k of all classes.  Top: [1, 1, N, 7] rows (image 0,
    label, confidence, xmin, ymin, xmax, ymax) by descending confidence (OpenCV's order; Caffe
    groups them by label), N known only when it runs, 0 when nothing is detected (Caffe writes one
    row of -1 then).  Built of TopK, Gather and NMS layers."""
    p, (loc, conf, prior) = layer.detection_output_param, ctx.bottoms(3)
    classes, nms = int(p.num_classes), p.nms_param
    if classes < 1:
        raise ctx.fail("num_classes is required", ErrorCode.INVALID_NODE)
    if p.code_type not in (1, 2):
        raise ctx.fail("code_type CORNER_SIZE is not supported; CORNER and CENTER_SIZE are")
    if nms.eta != 1:
        raise ctx.fail(f"adaptive NMS (eta {nms.eta:g}) is not supported; eta 1 is")
    loc_shape, conf_shape, prior_shape = ctx.shape(loc), ctx.shape(conf), ctx.shape(prior)
    if loc_shape[0] != 1 or conf_shape[0] != 1:
        raise ctx.fail(f"kilnrt detects in one image per run; the bottoms have batch {loc_shape[0]}")
    rows = 1 if p.variance_encoded_in_target else 2     # boxes, and their variances unless the targets hold them
    if len(prior_shape) != 3 or prior_shape[0] != 1 or prior_shape[1] < rows or prior_shape[2] % 4:
        raise ctx.fail(f"the priors (third bottom) must be [1, {rows}, 4 * priors], got {prior_shape}",
                       ErrorCode.INVALID_NODE)
    count = prior_shape[2] // 4
    loc_classes = 1 if p.share_location else classes
    for name, shape, size in (("location", loc_shape, count * loc_classes * 4),
                              ("confidence", conf_shape, count * classes)):
        if int(np.prod(shape, dtype=np.int64)) != size:
            raise ctx.fail(f"the {name} bottom has shape {shape}; {count} priors and {classes} classes "
                           f"need {size} values", ErrorCode.INVALID_NODE)
    kept = [c for c in range(classes) if c != p.background_label_id]
    top_k = count if not nms.HasField("top_k") or nms.top_k < 0 else min(int(nms.top_k), count)
    E = ElementWiseOperation

    # decode: boxes [loc_classes, count, 4] (xmin, ymin, xmax, ymax)
    priors = _reshape(ctx, prior, (prior_shape[1], count, 4), "/priors")
    prior_boxes = _gather(ctx, priors, 0, [0], "/prior_boxes")
    deltas = ctx.add(LayerKind.SHUFFLE, ShuffleParams(reshape_dims=(count, loc_classes, 4), second_transpose=(1, 0, 2),
                                                      zero_is_placeholder=False), [loc], "/deltas")
    if not p.variance_encoded_in_target:
        deltas = _binary(ctx, E.PROD, deltas, _gather(ctx, priors, 0, [1], "/variances"), "/scaled")
    if p.code_type == 1:        # CORNER: the deltas move the prior's corners
        boxes = _binary(ctx, E.SUM, prior_boxes, deltas, "/boxes")
        # a box whose max is below its min has no size for Caffe (it overlaps nothing); the NMS
        # layer would read its corners either way round, so it gets a box of no size
        low = _gather(ctx, boxes, 2, [0, 1], "/box_min")
        high = _binary(ctx, E.MAX, _gather(ctx, boxes, 2, [2, 3], "/box_max"), low, "/box_max_or_min")
        nms_boxes = ctx.add(LayerKind.CONCATENATION, ConcatenationParams(2), [low, high], "/nms_boxes")
    else:                       # CENTER_SIZE: the deltas move the center (in prior sizes) and scale the size (exp)
        half = ctx.const(np.full((1, 1, 1), 0.5, np.float32), "half")
        low = _gather(ctx, prior_boxes, 2, [0, 1], "/prior_min")
        high = _gather(ctx, prior_boxes, 2, [2, 3], "/prior_max")
        size = _binary(ctx, E.SUB, high, low, "/prior_size")
        center = _binary(ctx, E.PROD, _binary(ctx, E.SUM, low, high, "/prior_sum"), half, "/prior_center")
        shift = _binary(ctx, E.PROD, _gather(ctx, deltas, 2, [0, 1], "/d_center"), size, "/shift")
        center = _binary(ctx, E.SUM, shift, center, "/center")
        grow = ctx.add(LayerKind.UNARY, UnaryParams(UnaryOperation.EXP), [_gather(ctx, deltas, 2, [2, 3], "/d_size")],
                       "/grow")
        extent = _binary(ctx, E.PROD, _binary(ctx, E.PROD, grow, size, "/size"), half, "/half_size")
        boxes = ctx.add(LayerKind.CONCATENATION, ConcatenationParams(2),
                        [_binary(ctx, E.SUB, center, extent, "/min"), _binary(ctx, E.SUM, center, extent, "/max")],
                        "/boxes")
        nms_boxes = boxes

    # per class: the top_k scores and their boxes, [C, top_k] and [C, top_k, 4]
    scores = ctx.add(LayerKind.SHUFFLE, ShuffleParams(reshape_dims=(count, classes), second_transpose=(1, 0),
                                                      zero_is_placeholder=False), [conf], "/scores")
    scores = _gather(ctx, scores, 0, kept, "/class_scores")
    best, order = ctx.add(LayerKind.TOPK, TopKParams(TopKOperation.MAX, top_k, 1), [scores], "/top_k", outputs=2)

    def candidates(boxes, suffix):
        if p.share_location:
            return _gather(ctx, _reshape(ctx, boxes, (count, 4), suffix + "_all"), 0, order, suffix)
        return ctx.add(LayerKind.GATHER, GatherParams(0, GatherMode.ND, 1),
                       [_gather(ctx, boxes, 0, kept, suffix + "_classes"),
                        _reshape(ctx, order, (len(kept), top_k, 1), suffix + "_order")], suffix)

    # NMS with each class as a batch of its own: [M, 3] rows (class, 0, candidate)
    threshold = ctx.const(np.array([p.confidence_threshold], np.float32), "confidence_threshold") \
        if p.HasField("confidence_threshold") else None
    compared = candidates(nms_boxes, "/nms_candidates")
    picked = ctx.add(LayerKind.NMS, NMSParams(), [compared, _reshape(ctx, best, (len(kept), 1, top_k), "/nms_scores"),
                                                  ctx.const(np.array([top_k], np.int64), "top_k"),
                                                  ctx.const(np.array([nms.nms_threshold], np.float32), "nms_threshold"),
                                                  threshold], "/nms")
    where = _gather(ctx, picked, 1, [0, 2], "/where")
    score = ctx.add(LayerKind.GATHER, GatherParams(0, GatherMode.ND), [best, where], "/score")
    found_boxes = compared if nms_boxes is boxes else candidates(boxes, "/candidates")
    box = ctx.add(LayerKind.GATHER, GatherParams(0, GatherMode.ND), [found_boxes, where], "/box")
    label = _gather(ctx, ctx.const(np.array(kept, np.float32), "labels"), 0, _gather(ctx, picked, 1, [0], "/class"),
                    "/label")
    image = _binary(ctx, E.PROD, label, ctx.const(np.zeros((1, 1), np.float32), "zero"), "/image")   # 0s
    found = ctx.add(LayerKind.CONCATENATION, ConcatenationParams(1),
                    [image, label, _reshape(ctx, score, (-1, 1), "/score_column"), box], "/found")

    # the best keep_top_k of all, by confidence (TopK's second input gives k: min(M, keep_top_k))
    keep = ctx.add(LayerKind.SHAPE, ShapeParams(), [score], "/count")
    if p.keep_top_k >= 0:
        keep = _binary(ctx, E.MIN, keep, ctx.const(np.array([p.keep_top_k], np.int64), "keep_top_k"), "/keep")
    _, rank = ctx.add(LayerKind.TOPK, TopKParams(TopKOperation.MAX, 0, 0), [score, keep], "/rank", outputs=2)
    return [_reshape(ctx, _gather(ctx, found, 0, rank, "/detections"), (1, 1, -1, 7), "")]
