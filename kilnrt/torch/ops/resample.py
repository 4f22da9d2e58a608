"""ATen importers for padding and upsampling, through the PADDING and RESIZE layers the ONNX
Pad and Resize importers use: ``pad`` in every mode (circular included), ``constant_pad_nd``
and the reflection and replication pads (``F.pad``), and the nearest, linear, bilinear,
bicubic and trilinear upsamples (``F.interpolate``, ``nn.Upsample``), antialiased or not."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from kilnrt.errors import ErrorCode
from kilnrt.network.layers import GatherParams, LayerKind, PaddingParams, ResizeParams
from kilnrt.torch.registry import aten

A = torch.ops.aten


# -- padding ----------------------------------------------------------------------------------
def _pad(ctx, x, pad, mode: str, value=None):
    """torch's pad list ([last dim's begin, end, the one before's begin, end, ...]; negative
    crops) as ONNX's [begins..., ends...] over every dim."""
    rank = ctx.rank(x)
    pad = list(pad)
    ctx.require(len(pad) % 2 == 0 and len(pad) // 2 <= rank, ErrorCode.INVALID_NODE,
                f"pad has {len(pad)} values for a tensor of rank {rank}; it takes two per padded dim, last dim first")
    begins, ends = [0] * rank, [0] * rank
    for k in range(len(pad) // 2):
        begins[rank - 1 - k], ends[rank - 1 - k] = pad[2 * k], pad[2 * k + 1]
    if mode == "reflect":   # PyTorch reflects about the uncropped edge; the PADDING layer crops first
        mixed = [d for d, (b, e) in enumerate(zip(begins, ends))
                 if not (isinstance(b, int) and isinstance(e, int)) or min(b, e) < 0 < max(b, e)]
        ctx.require(not mixed, ErrorCode.UNSUPPORTED_NODE_ATTR,
                    f"a reflect pad that crops one side of dim {mixed[0] if mixed else ''} and pads the other "
                    "(or whose pads are known only at run time) is not supported; crop with a slice first")
    pads = ctx.int_vector(begins + ends)
    if mode != "constant":
        return ctx.out(LayerKind.PADDING, PaddingParams(mode), x, pads)
    fill = ctx.constant(np.asarray(0 if value is None else value, dtype=ctx.dtype(x).numpy))
    return ctx.out(LayerKind.PADDING, PaddingParams("constant"), x, pads, fill)


@aten(A.constant_pad_nd.default)
def constant_pad_nd(ctx, self, pad, value=0):
    """constant_pad_nd (F.pad, mode "constant"): a PADDING with the value; negative pads crop."""
    return _pad(ctx, self, pad, "constant", value)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@aten(A.pad.default)
def pad(ctx, self, pad, mode="constant", value=None):
    """pad (F.pad, and a convolution's ``padding_mode``): a PADDING in that mode; "circular" is
    ONNX's "wrap" (kept whole: PyTorch's decomposition writes it with in-place copies)."""
    ctx.require(mode in _PAD_MODES, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"pad mode {mode!r} is not supported; the modes are {', '.join(map(repr, _PAD_MODES))}")
    return _pad(ctx, self, pad, _PAD_MODES[mode], value)


@aten(A.reflection_pad1d.default, A.reflection_pad2d.default, A.reflection_pad3d.default)
def reflection_pad(ctx, self, padding):
    """reflection_pad1d/2d/3d (F.pad, mode "reflect"): a PADDING in reflect mode."""
    return _pad(ctx, self, padding, "reflect")


@aten(A.replication_pad1d.default, A.replication_pad2d.default, A.replication_pad3d.default)
def replication_pad(ctx, self, padding):
    """replication_pad1d/2d/3d (F.pad, mode "replicate"): a PADDING in edge mode."""
    return _pad(ctx, self, padding, "edge")


# -- upsampling -------------------------------------------------------------------------------
def _resize(ctx, x, spatial: int, output_size, scale_factors, params: ResizeParams):
    """The last ``spatial`` dims of ``x`` resized to ``output_size`` or by ``scale_factors``, as
    PyTorch does it:

    - the output size by a scale factor is floor(in * scale) in double precision (the scales
      go to the RESIZE layer in float64, where float32 would round 0.7 * 10 down to 6);
    - nearest picks floor(dst * s) with s = 1 / scale or in / out in float32, as PyTorch's
      kernel does (ONNX's floor(dst / (out / in)) differs at exact boundaries): a GATHER of
      those indices per dim, where the input's size is known at build time;
    - linear and cubic map source coordinates by 1 / scale when a scale factor is given (as
      ONNX's scales do), by in / out for a size; with align_corners by (in - 1) / (out - 1) of
      the integer sizes, so a scale factor is turned into sizes first."""
    rank = ctx.rank(x)
    ctx.require(rank == spatial + 2, ErrorCode.UNSUPPORTED_NODE_INPUT,
                f"the input has rank {rank}; a {spatial}-D upsample takes [N, C, {spatial} dims]")
    if output_size is None:
        ctx.require(scale_factors is not None and len(scale_factors) == spatial, ErrorCode.INVALID_NODE,
                    "an upsample needs output_size or one scale factor per spatial dim")
    else:
        ctx.require(len(output_size) == spatial, ErrorCode.INVALID_NODE,
                    f"output_size has {len(output_size)} values for {spatial} dims")
    sizes_in = [x.shape[d] if isinstance(x.shape[d], int) else None for d in range(2, rank)]
    static = all(n is not None for n in sizes_in)
    if output_size is None and static:
        output_size = [int(math.floor(n * float(s))) for n, s in zip(sizes_in, scale_factors)]
    else:
        scale_factors = None if output_size is not None else scale_factors
    if params.mode == "nearest" and static and all(isinstance(o, int) for o in output_size):
        for d, (n, o) in enumerate(zip(sizes_in, output_size)):
            s = np.float32(1.0 / float(scale_factors[d])) if scale_factors is not None else np.float32(n) / np.float32(o)
            idx = np.minimum(np.floor(np.arange(o, dtype=np.float32) * s), n - 1).astype(np.int64)
            x = ctx.out(LayerKind.GATHER, GatherParams(2 + d), x, ctx.constant(idx))
        return x
    params = dataclasses.replace(params, axes=tuple(range(2, rank)))
    if scale_factors is not None and params.coordinate_transformation != "align_corners":
        scales = ctx.constant(np.asarray([float(s) for s in scale_factors], np.float64))
        return ctx.out(LayerKind.RESIZE, params, x, scales, None)
    ctx.require(output_size is not None, ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                "an upsample by a scale factor with align_corners needs the input's spatial size known at build time")
    return ctx.out(LayerKind.RESIZE, params, x, None, ctx.int_vector(list(output_size)))


def _linear(align_corners) -> ResizeParams:
    return ResizeParams(mode="linear", coordinate_transformation="align_corners" if align_corners else "half_pixel")


_NEAREST = ResizeParams(mode="nearest", coordinate_transformation="asymmetric", nearest_mode="floor")
@aten(A.upsample_nearest1d.vec, A.upsample_nearest2d.vec, A.upsample_nearest3d.vec)
def upsample_nearest_vec(ctx, input, output_size=None, scale_factors=None):
    """upsample_nearest1d/2d/3d (F.interpolate, mode "nearest"): a nearest RESIZE, source index
    floor(dst * in / out)."""
    return _resize(ctx, input, ctx.rank(input) - 2, output_size, scale_factors, _NEAREST)


def _sized(ctx, x, output_size, scales: dict) -> tuple[list | None, list | None]:
    """(output size, scale factors) for ``_resize`` of an upsample given a size and, optionally,
    its scales (PyTorch's decompositions pass both): PyTorch maps coordinates by 1 / scale when
    a scale is given, ONNX's sizes by in / out.  The scales are used when they give that size
    (floor(in * scale)); the size alone when the scales are its ratios; refused otherwise."""
    given = [v for k, v in sorted(scales.items()) if k.startswith("scales") and v is not None]
    if not given:
        return list(output_size), None
    spatial = tuple(x.shape[2:])
    static = len(given) == len(output_size) and all(isinstance(n, int) and n > 0 for n in spatial) \
        and all(isinstance(o, int) for o in output_size)
    if static and all(float(o) / n == float(s) for n, o, s in zip(spatial, output_size, given)):
        return list(output_size), None
    ctx.require(static and all(math.floor(n * float(s)) == o for n, o, s in zip(spatial, output_size, given)),
                ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"an upsample to {list(output_size)} with scales {given} that do not give that size from "
                f"{list(spatial)}: use scale_factor or size alone")
    return None, [float(v) for v in given]


@aten(A.upsample_nearest1d.default, A.upsample_nearest2d.default, A.upsample_nearest3d.default)
def upsample_nearest(ctx, self, output_size, **scales):
    """upsample_nearest with an output size: a nearest RESIZE to it."""
    return _resize(ctx, self, ctx.rank(self) - 2, *_sized(ctx, self, output_size, scales), _NEAREST)


@aten(A.upsample_linear1d.vec, A.upsample_bilinear2d.vec, A.upsample_trilinear3d.vec)
def upsample_linear_vec(ctx, input, output_size=None, align_corners=False, scale_factors=None):
    """upsample_linear1d / bilinear2d / trilinear3d (F.interpolate, linear modes): a linear RESIZE,
    half-pixel coordinates (align_corners: corner-aligned)."""
    return _resize(ctx, input, ctx.rank(input) - 2, output_size, scale_factors, _linear(align_corners))


@aten(A.upsample_linear1d.default, A.upsample_bilinear2d.default, A.upsample_trilinear3d.default)
def upsample_linear(ctx, self, output_size, align_corners=False, **scales):
    """upsample_linear with an output size: a linear RESIZE to it."""
    size, factors = _sized(ctx, self, output_size, {} if align_corners else scales)   # corner-aligned ignores scales
    return _resize(ctx, self, ctx.rank(self) - 2, size, factors, _linear(align_corners))


@aten(A.upsample_bicubic2d.vec)
def upsample_bicubic_vec(ctx, input, output_size=None, align_corners=False, scale_factors=None):
    """upsample_bicubic2d (F.interpolate, mode "bicubic"): a cubic RESIZE with PyTorch's a = -0.75."""
    params = ResizeParams(mode="cubic", coordinate_transformation="align_corners" if align_corners else "half_pixel",
                          cubic_coeff_a=-0.75)
    return _resize(ctx, input, 2, output_size, scale_factors, params)


def _antialiased(ctx, align_corners) -> ResizeParams:
    """PyTorch's antialiased resampling (``antialias=True``, PIL's filters): ONNX Resize's
    antialias, with the filter's weights renormalized inside the image (exclude_outside) and
    cubic's a = -0.5.  With align_corners PyTorch maps coordinates its own way: refused."""
    ctx.require(not align_corners, ErrorCode.UNSUPPORTED_NODE_ATTR,
                "antialias=True with align_corners=True is not supported; use one or the other")
    mode = "linear" if ctx.node.target in (A._upsample_bilinear2d_aa.vec, A._upsample_bilinear2d_aa.default) \
        else "cubic"
    return ResizeParams(mode=mode, coordinate_transformation="half_pixel", cubic_coeff_a=-0.5, exclude_outside=True,
                        antialias=True)


@aten(A._upsample_bilinear2d_aa.vec, A._upsample_bicubic2d_aa.vec)
def upsample_antialiased_vec(ctx, input, output_size=None, align_corners=False, scale_factors=None):
    """_upsample_bilinear2d_aa / _upsample_bicubic2d_aa (F.interpolate with antialias=True): an
    antialiased RESIZE, its filter widened by in / out when shrinking, as PyTorch and PIL do."""
    return _resize(ctx, input, 2, output_size, scale_factors, _antialiased(ctx, align_corners))


@aten(A._upsample_bilinear2d_aa.default, A._upsample_bicubic2d_aa.default)
def upsample_antialiased(ctx, self, output_size, align_corners=False, **scales):
    """The antialiased upsamples with an output size: an antialiased RESIZE to it."""
    return _resize(ctx, self, 2, *_sized(ctx, self, output_size, scales), _antialiased(ctx, align_corners))
