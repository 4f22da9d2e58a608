"""``cuda.quantize.triton``: per-tensor QuantizeLinear to INT8, UINT8 or FP8 E4M3 as one pass.

Reads the float tensor once and writes one byte per element, in the input's memory order (a
channels-last activation stays channels-last), so that the 8-bit layers after it read bytes
they can feed straight to the tensor cores.  INT8/UINT8 round half to even after the
multiply by ``1 / scale`` and saturate; FP8 is a saturating cast (:mod:`.gemm_int8`'s
``round_saturate`` and ``quantize_fp8_tile``, the same code the 8-bit kernels run).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilnrt.kernels.registry import Tactic, tactic
from kilnrt.kernels.triton import FLOAT_TYPES, TORCH_FLOATS, launch_options, wait_for_previous_kernel
from kilnrt.kernels.triton.gemm_int8 import RANGE, fp8_capable, quantize_fp8_tile, round_saturate
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind

BLOCK = 2048


@triton.jit
def _quantize(x_ptr, y_ptr, n, inv_scale, zero_point, lo, hi, FP8: tl.constexpr, BLOCK: tl.constexpr,
              USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if FP8:
        q = quantize_fp8_tile(x, inv_scale)
    else:   # an integer in the output type's range: the cast is exact (UINT8 too)
        q = round_saturate(x, inv_scale, zero_point, lo, hi)
    tl.store(y_ptr + offs, q.to(y_ptr.dtype.element_ty), mask=mask)


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x``'s elements fill its storage span exactly (any dim order), so that one
    flat pass over it visits each once."""
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last) or x.numel() <= 1


@tactic
class TritonQuantize(Tactic):
    name = "cuda.quantize.triton"
    kind = LayerKind.QUANTIZE
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        x = layer.inputs[0]
        if x is None or x.dtype not in FLOAT_TYPES or p.block_size or p.to_type not in (*RANGE, DataType.FP8):
            return False
        if p.to_type == DataType.FP8 and not (p.saturate and fp8_capable(ctx.device)):
            return False
        scale = ctx.constant(layer, 1)
        zp = ctx.constant(layer, 2)
        if scale is None or scale.numel() != 1 or not float(scale.reshape(())) > 0:
            return False
        return zp is None or (zp.numel() == 1 and p.to_type != DataType.FP8)

    def prepare(self, layer, ctx):
        p = layer.params
        zp = ctx.constant(layer, 2)
        lo, hi = RANGE.get(p.to_type, (0, 0))
        return (1.0 / float(ctx.constant(layer, 1).reshape(())), float(zp.reshape(())) if zp is not None else 0.0,
                float(lo), float(hi), p.to_type)

    def run(self, state, inputs):
        inv_scale, zero_point, lo, hi, to = state
        x = inputs[0]
        if x.dtype not in TORCH_FLOATS or not _dense(x):
            x = x.contiguous()
        y = torch.empty_like(x, dtype=to.torch)   # the same strides: one flat pass over both
        n = x.numel()
        if n:
            _quantize[(triton.cdiv(n, BLOCK),)](x, y, n, inv_scale, zero_point, lo, hi, FP8=to == DataType.FP8,
                                                 BLOCK=BLOCK, num_warps=8, **launch_options(y))
        return [y]
