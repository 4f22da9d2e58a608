"""Reference kernels of the 8-bit integer layers: QUANTIZED_CONVOLUTION, QUANTIZED_MATRIX_MULTIPLY.

The activation is quantized per tensor (round half to even, saturate), the weights are
already 8-bit integers with a scale per output channel, and the products are summed exactly:
in float64, whose 53-bit mantissa holds any sum of 8-bit products a layer can make (2^16 per
product, so exact up to 2^37 terms). The sum is then scaled back to float and goes through the
layer's epilogue (bias, residual, activation) as the float layer's would.
"""
from __future__ import annotations

import torch

from kilnrt.kernels.cpu.conv import _convolution
from kilnrt.kernels.cpu.epilogue import conv_epilogue
from kilnrt.kernels.cpu.linalg import _matmul
from kilnrt.kernels.cpu.quantize import int_range
from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import LayerKind, QuantizedConvolutionParams, QuantizedMatrixMultiplyParams


def quantized_input(p, x: torch.Tensor) -> torch.Tensor:
    """``saturate(round(x / input_scale) + zero_point) - zero_point`` in float64: the integer
    values the layer multiplies, offset by the zero point."""
    lo, hi = int_range(p.input_type.torch)
    q = torch.round(x.to(torch.float64) / p.input_scale) + p.input_zero_point
    return torch.clamp(q, lo, hi) - p.input_zero_point


@kernel(LayerKind.QUANTIZED_CONVOLUTION)
def quantized_convolution(p: QuantizedConvolutionParams, x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
                          b: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    if x.device.type == "meta":
        return _convolution(p, x, w.to(x.dtype), None)
    acc = _convolution(p, quantized_input(p, x), w.to(torch.float64), None)
    scale = (w_scale.to(torch.float64).reshape(-1) * p.input_scale).reshape((1, -1) + (1,) * (acc.dim() - 2))
    y = acc * scale
    if b is not None:
        y = y + b.to(torch.float64).reshape((1, -1) + (1,) * (acc.dim() - 2))
    return conv_epilogue(p, y.to(x.dtype), residual)


@kernel(LayerKind.QUANTIZED_MATRIX_MULTIPLY)
def quantized_matrix_multiply(p: QuantizedMatrixMultiplyParams, a: torch.Tensor, b: torch.Tensor,
                              b_scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if a.device.type == "meta":
        return _matmul(p, a, b.to(a.dtype))
    acc = _matmul(p, quantized_input(p, a), b.to(torch.float64))
    y = acc * (b_scale.to(torch.float64).reshape(-1) * p.input_scale)
    return conv_epilogue(p, y.to(a.dtype), bias)
