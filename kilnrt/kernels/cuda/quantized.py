"""CUDA tactic for INT8 matrix multiplies: cuBLASLt's INT8 GEMM through ``torch._int_mm``.

``cuda.quantized_matrix_multiply.int_mm``: the activation is quantized (symmetric INT8, zero
point 0) unless it arrives as int8 already, multiplied by the INT8 weights on the tensor cores
with exact int32 sums, and rescaled per output column in float32 before the layer's epilogue.
A layer that requantizes its output (``output_scale``) is left to the Triton kernel.  ``torch._int_mm`` needs
more than 16 rows and K and N multiples of 8; fewer rows are padded.  The quantize, rescale
and epilogue are separate PyTorch kernels (not yet fused), so the builder keeps this tactic
only where its timing beats the reference kernel.
"""
from __future__ import annotations

import torch

from kilnrt.kernels.cpu.epilogue import conv_epilogue
from kilnrt.kernels.registry import Tactic, tactic
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind, MatrixOperation

MIN_ROWS = 17   # torch._int_mm wants more than 16 rows


@tactic
class Int8MatMul(Tactic):
    name = "cuda.quantized_matrix_multiply.int_mm"
    kind = LayerKind.QUANTIZED_MATRIX_MULTIPLY
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        b = ctx.constant(layer, 1)
        x = layer.inputs[0]
        return (b is not None and b.dim() == 2 and b.dtype == torch.int8 and p.input_type == DataType.INT8
                and p.input_zero_point == 0 and p.output_scale == 0 and p.op0 == MatrixOperation.NONE
                and p.op1 in (MatrixOperation.NONE, MatrixOperation.TRANSPOSE)
                and b.shape[0] % 8 == 0 and b.shape[1] % 8 == 0
                and x is not None and x.shape is not None and len(x.shape) >= 2
                and x.dtype in (DataType.FLOAT, DataType.HALF, DataType.BF16, DataType.INT8))

    def prepare(self, layer, ctx):
        p = layer.params
        b = ctx.constant(layer, 1)
        # [K, N] column-major (an [N, K] row-major matrix, transposed): cuBLASLt's INT8 layout; a
        # row-major [K, N] ran 5-7x slower on an H200 (benchmarks/int8_kernels.py)
        b = (b if p.op1 == MatrixOperation.TRANSPOSE else b.t()).contiguous().t()
        scale = ctx.constant(layer, 2).to(torch.float32).reshape(-1) * p.input_scale
        bias = ctx.constant(layer, 3) if len(layer.inputs) > 3 else None
        return p, b, scale, bias, layer.outputs[0].dtype.torch

    def run(self, state, inputs):
        p, b, scale, bias, out_dtype = state
        x = inputs[0]
        if bias is None and len(inputs) > 3:
            bias = inputs[3]
        lead, k = x.shape[:-1], x.shape[-1]
        a = x.reshape(-1, k) if x.dtype == torch.int8 else \
            torch.clamp(torch.round(x.reshape(-1, k).float() / p.input_scale), -128, 127).to(torch.int8)
        m = a.shape[0]
        if m < MIN_ROWS:
            a = torch.cat([a, a.new_zeros(MIN_ROWS - m, k)])
        acc = torch._int_mm(a, b)[:m]
        y = (acc.float() * scale).to(out_dtype).reshape(*lead, b.shape[1])
        return [conv_epilogue(p, y, None if bias is None else bias.to(y.dtype))]
