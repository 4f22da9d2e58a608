"""Importers for quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, and the
integer / quantized linear ops MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv.

QuantizeLinear / DequantizeLinear become QUANTIZE / DEQUANTIZE layers (per tensor, per axis
or blocked).  The integer ops decompose as ONNX's reference computes them: operands minus
their zero points in int32 (convolutions in float64, exact for these magnitudes), then a
requantization of the accumulator.
"""
from __future__ import annotations

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import (DequantizeParams, ElementWiseOperation as E, LayerKind, MatrixMultiplyParams,
                                   QuantizeParams, ReduceOperation as R, ReduceParams, SelectParams,
                                   UnaryOperation as U)
from kilnrt.onnx.ops.cast import onnx_dtype
from kilnrt.onnx.ops.nn import conv as conv_importer
from kilnrt.onnx.registry import importer

QUANTIZED_TYPES = (DataType.INT8, DataType.UINT8, DataType.INT16, DataType.UINT16, DataType.INT32,
                   DataType.INT4, DataType.UINT4, DataType.INT2, DataType.UINT2, DataType.FP8,
                   DataType.FP8_E5M2, DataType.FP8_E4M3FNUZ, DataType.FP8_E5M2FNUZ)


@importer("QuantizeLinear", since=10)
def quantize_linear(ctx, node, x, y_scale, y_zero_point=None, *, axis=1, saturate=1, block_size=0,
                    output_dtype=0, precision=0):
    """QuantizeLinear: the output type is the zero point's, else ``output_dtype``, else uint8;
    ``precision`` (opset 23) is the type the division x / scale is computed in."""
    if y_zero_point is not None:
        to = ctx.dtype(y_zero_point)
        ctx.require(not output_dtype or onnx_dtype(ctx, output_dtype, "output_dtype") == to,
                    ErrorCode.INVALID_NODE, f"output_dtype differs from the zero point's type {to.name}")
    else:
        to = onnx_dtype(ctx, output_dtype, "output_dtype") if output_dtype else DataType.UINT8
    ctx.require(to in QUANTIZED_TYPES, ErrorCode.UNSUPPORTED_NODE_DATATYPE,
                f"quantizing to {to.name} is not supported; supported: "
                + ", ".join(t.name for t in QUANTIZED_TYPES))
    if precision:
        compute = onnx_dtype(ctx, precision, "precision")
        x, y_scale = ctx.cast(x, compute), ctx.cast(y_scale, compute)
    params = QuantizeParams(axis=int(axis), to_type=to, block_size=int(block_size), saturate=bool(saturate))
    return ctx.out(LayerKind.QUANTIZE, params, x, y_scale, y_zero_point)


@importer("DequantizeLinear", since=10)
def dequantize_linear(ctx, node, x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    """DequantizeLinear: (x - zero_point) * scale in the scale's type (or ``output_dtype``)."""
    src = ctx.dtype(x)
    ctx.require(src in QUANTIZED_TYPES, ErrorCode.UNSUPPORTED_NODE_DATATYPE,
                f"dequantizing {src.name} is not supported; supported: " + ", ".join(t.name for t in QUANTIZED_TYPES))
    to = onnx_dtype(ctx, output_dtype, "output_dtype") if output_dtype else ctx.dtype(x_scale)
    params = DequantizeParams(axis=int(axis), block_size=int(block_size), to_type=to)
    return ctx.out(LayerKind.DEQUANTIZE, params, x, x_scale, x_zero_point)


def _scalar(ctx, value, dtype: DataType):
    return ctx.constant(np.asarray(value, dtype=dtype.numpy))


@importer("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(ctx, node, x):
    """DynamicQuantizeLinear: uint8 with scale = (max(0, max x) - min(0, min x)) / 255 (1/255 when
    that range is 0) and zero point = round(clip(-min / scale, 0, 255))."""
    dt = ctx.dtype(x)
    zero = _scalar(ctx, 0, dt)
    hi = ctx.elementwise(E.MAX, ctx.out(LayerKind.REDUCE, ReduceParams(R.MAX, None, False), x), zero)
    lo = ctx.elementwise(E.MIN, ctx.out(LayerKind.REDUCE, ReduceParams(R.MIN, None, False), x), zero)
    span = ctx.elementwise(E.SUB, hi, lo)
    span = ctx.out(LayerKind.SELECT, SelectParams(), ctx.elementwise(E.EQUAL, span, zero), _scalar(ctx, 1, dt), span)
    scale = ctx.elementwise(E.DIV, span, _scalar(ctx, 255, dt))
    zp = ctx.elementwise(E.SUB, zero, ctx.elementwise(E.DIV, lo, scale))
    zp = ctx.elementwise(E.MIN, ctx.elementwise(E.MAX, zp, zero), _scalar(ctx, 255, dt))
    zp = ctx.cast(ctx.unary(U.ROUND, zp), DataType.UINT8)
    y = ctx.out(LayerKind.QUANTIZE, QuantizeParams(axis=0, to_type=DataType.UINT8), x, scale, zp)
    return y, scale, zp


# ----------------------------------------------------------------------------- integer linear ops
def _shifted(ctx, q, zero_point, compute: DataType, per_row_axes=None):
    """q - zero_point in ``compute``; a 1-D zero point gets size-1 dims at ``per_row_axes``."""
    v = ctx.cast(q, compute)
    if zero_point is None:
        return v
    zp = ctx.cast(zero_point, compute)
    if per_row_axes and ctx.rank(zero_point) == 1:
        zp = ctx.unsqueeze(zp, per_row_axes)
    return ctx.elementwise(E.SUB, v, zp)


def _require_int8(ctx, *tensors):
    for t in tensors:
        if t is not None:
            ctx.require(ctx.dtype(t) in (DataType.INT8, DataType.UINT8), ErrorCode.UNSUPPORTED_NODE_DATATYPE,
                        f"{t.name!r} is {ctx.dtype(t).name}; supported: INT8, UINT8")


@importer("MatMulInteger", since=10)
def matmul_integer(ctx, node, a, b, a_zero_point=None, b_zero_point=None):
    """MatMulInteger: int32 (a - a_zero_point) @ (b - b_zero_point); a 1-D a_zero_point is per row."""
    _require_int8(ctx, a, b)
    a32 = _shifted(ctx, a, a_zero_point, DataType.INT32,
                   [1] if a_zero_point is not None and ctx.rank(a_zero_point) == 1 and ctx.rank(a) >= 2
                   and a_zero_point.shape[0] != 1 else None)
    b32 = _shifted(ctx, b, b_zero_point, DataType.INT32)
    return ctx.out(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(), a32, b32)


def _conv_attrs(auto_pad, dilations, group, kernel_shape, pads, strides):
    return dict(auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                strides=strides)


def _integer_conv(ctx, node, x, w, x_zero_point, w_zero_point, bias, attrs):
    """The exact integer convolution accumulator, as float64."""
    wrank = ctx.rank(w)
    xs = _shifted(ctx, x, x_zero_point, DataType.DOUBLE)
    ws = _shifted(ctx, w, w_zero_point, DataType.DOUBLE, list(range(1, wrank)))
    b = ctx.cast(bias, DataType.DOUBLE) if bias is not None else None
    return conv_importer(ctx, node, xs, ws, b, **attrs)


@importer("ConvInteger", since=10)
def conv_integer(ctx, node, x, w, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None,
                 group=1, kernel_shape=None, pads=None, strides=None):
    """ConvInteger: int32 convolution of (x - x_zero_point) and (w - w_zero_point), padding with 0."""
    _require_int8(ctx, x, w)
    acc = _integer_conv(ctx, node, x, w, x_zero_point, w_zero_point, None,
                        _conv_attrs(auto_pad, dilations, group, kernel_shape, pads, strides))
    return ctx.cast(acc, DataType.INT32)


def _requantize(ctx, acc, multiplier, y_zero_point, out: DataType):
    """saturate(round_half_even(acc * multiplier) + y_zero_point) as ``out``, in float64."""
    scaled = ctx.elementwise(E.PROD, acc, ctx.cast(multiplier, DataType.DOUBLE))
    one = ctx.constant(np.asarray(1.0, dtype=np.float64))
    return ctx.out(LayerKind.QUANTIZE, QuantizeParams(axis=0, to_type=out), scaled, one, y_zero_point)


@importer("QLinearMatMul", since=10)
def qlinear_matmul(ctx, node, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    """QLinearMatMul: requantize((a - a_zp) @ (b - b_zp), a_scale * b_scale / y_scale, y_zp)."""
    _require_int8(ctx, a, b)
    a32 = _shifted(ctx, a, a_zero_point, DataType.INT32)
    b32 = _shifted(ctx, b, b_zero_point, DataType.INT32)
    acc = ctx.cast(ctx.out(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(), a32, b32), DataType.DOUBLE)
    multiplier = ctx.elementwise(E.DIV, ctx.elementwise(E.PROD, a_scale, b_scale), y_scale)
    out = ctx.dtype(y_zero_point) if y_zero_point is not None else ctx.dtype(a)
    return _requantize(ctx, acc, multiplier, y_zero_point, out)


@importer("QLinearConv", since=10)
def qlinear_conv(ctx, node, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B=None, *,
                 auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    """QLinearConv: requantize(conv(x - x_zp, w - w_zp) + B, x_scale * w_scale / y_scale, y_zp);
    a 1-D w_scale / w_zero_point is per output channel."""
    _require_int8(ctx, x, w)
    acc = _integer_conv(ctx, node, x, w, x_zero_point, w_zero_point, B,
                        _conv_attrs(auto_pad, dilations, group, kernel_shape, pads, strides))
    if ctx.rank(w_scale) == 1:
        w_scale = ctx.unsqueeze(w_scale, list(range(1, ctx.rank(x) - 1)))
    multiplier = ctx.elementwise(E.DIV, ctx.elementwise(E.PROD, x_scale, w_scale), y_scale)
    out = ctx.dtype(y_zero_point) if y_zero_point is not None else ctx.dtype(x)
    return _requantize(ctx, acc, multiplier, y_zero_point, out)
