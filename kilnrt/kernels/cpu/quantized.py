"""Reference kernels of the 8-bit layers: QUANTIZED_CONVOLUTION, QUANTIZED_MATRIX_MULTIPLY.

The activation is quantized per tensor (INT8: round half to even, saturate; FP8 E4M3: a
saturating cast), unless it arrives quantized already; the weights are already 8-bit with a
scale per output channel, and the products are summed exactly: in float64, whose 53-bit
mantissa holds any sum of 8-bit integer products a layer can make (2^16 per product, so exact
up to 2^37 terms), and of E4M3 products up to rounding far below FP8's. The sum is then scaled
back to float, goes through the layer's epilogue (bias, residual, activation) as the float
layer's would, and is requantized when the layer has an output scale (``QuantizedOutput``).
"""
from __future__ import annotations

import torch

from kilnrt.kernels.cpu.conv import _convolution
from kilnrt.kernels.cpu.epilogue import conv_epilogue
from kilnrt.kernels.cpu.linalg import _matmul
from kilnrt.kernels.cpu.quantize import int_range, to_float8
from kilnrt.kernels.registry import kernel
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind, QuantizedConvolutionParams, QuantizedMatrixMultiplyParams

def quantize_values(v: torch.Tensor, scale: float, zero_point: int, to: DataType) -> torch.Tensor:
    """``v`` quantized per tensor into ``to``: INT8/UINT8 ``saturate(round(v / scale) + zero_point)``,
    FP8 ``saturate_cast(v / scale)``."""
    if to == DataType.FP8:
        # rounded to float32 first, as the kernels compute ``x * (1 / scale)`` in float32
        return to_float8((v.to(torch.float64) / scale).to(torch.float32), torch.float8_e4m3fn, saturate=True)
    lo, hi = int_range(to.torch)
    return torch.clamp(torch.round(v.to(torch.float64) / scale) + zero_point, lo, hi).to(to.torch)


def quantized_input(p, x: torch.Tensor) -> torch.Tensor:
    """The values the layer multiplies, ``xq - zero_point``, in float64; x is quantized here
    unless it arrives as ``input_type`` already."""
    q = x if x.dtype == p.input_type.torch else quantize_values(x, p.input_scale, p.input_zero_point, p.input_type)
    return q.to(torch.float64) - p.input_zero_point


def _float_type(p, x: torch.Tensor) -> torch.dtype:
    """The float type of the layer's epilogue: float32 before a requantization, else the output's."""
    if p.output_scale > 0:
        return torch.float32
    return (p.output_type.torch if p.output_type is not None else x.dtype)


def _finish(p, y: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    y = conv_epilogue(p, y, None if residual is None else residual.to(y.dtype))
    if p.output_scale > 0:
        return quantize_values(y, p.output_scale, 0, p.output_type)
    return y


def _meta_output(p, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = p.output_type.torch if p.output_type is not None else x.dtype
    return torch.empty(y.shape, dtype=out, device="meta")


@kernel(LayerKind.QUANTIZED_CONVOLUTION)
def quantized_convolution(p: QuantizedConvolutionParams, x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
                          b: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    if x.device.type == "meta":
        return _meta_output(p, _convolution(p, torch.empty(x.shape, device="meta"), w.to(torch.float32), None), x)
    acc = _convolution(p, quantized_input(p, x), w.to(torch.float64), None)
    scale = (w_scale.to(torch.float64).reshape(-1) * p.input_scale).reshape((1, -1) + (1,) * (acc.dim() - 2))
    y = acc * scale
    if b is not None:
        y = y + b.to(torch.float64).reshape((1, -1) + (1,) * (acc.dim() - 2))
    return _finish(p, y.to(_float_type(p, x)), residual)


@kernel(LayerKind.QUANTIZED_MATRIX_MULTIPLY)
def quantized_matrix_multiply(p: QuantizedMatrixMultiplyParams, a: torch.Tensor, b: torch.Tensor,
                              b_scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if a.device.type == "meta":
        return _meta_output(p, _matmul(p, torch.empty(a.shape, device="meta"), b.to(torch.float32)), a)
    acc = _matmul(p, quantized_input(p, a), b.to(torch.float64))
    y = acc * (b_scale.to(torch.float64).reshape(-1) * p.input_scale)
    return _finish(p, y.to(_float_type(p, a)), bias)
