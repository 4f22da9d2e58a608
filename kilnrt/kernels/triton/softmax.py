"""``cuda.softmax.triton``: softmax and log-softmax over the last axis, whole rows in registers.

Each program takes ``BLOCK_M`` rows (one for long rows, several for short ones), subtracts the
row max, and normalizes in float32: ``exp(x - max) / sum`` or ``(x - max) - log(sum)``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilnrt.kernels.registry import Tactic, reference_kernel, static_dims, tactic
from kilnrt.kernels.triton import (FLOAT_TYPES, MAX_ROW, TORCH_FLOATS, launch_options, row_blocks,
                                   wait_for_previous_kernel)
from kilnrt.network.layers import LayerKind



@triton.jit
def _softmax_rows(x_ptr, y_ptr, n_rows, n_cols, LOG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=-float("inf")).to(tl.float32)
    z = x - tl.max(x, axis=1)[:, None]
    e = tl.exp(z)
    total = tl.sum(e, axis=1)[:, None]
    if LOG:
        y = z - tl.log(total)
    else:
        y = e / total
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@tactic
class TritonSoftmax(Tactic):
    """Softmax / log-softmax over the last axis of rows up to 32768 long, any leading dims."""

    name = "cuda.softmax.triton"
    kind = LayerKind.SOFTMAX
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        x, y = layer.inputs[0], layer.outputs[0]
        if x is None or x.shape is None or len(x.shape) == 0 or x.dtype not in FLOAT_TYPES or y.dtype != x.dtype:
            return False
        rank = len(x.shape)
        return layer.params.axis % rank == rank - 1 and static_dims(x.shape[-1:]) and x.shape[-1] <= MAX_ROW

    def run(self, p, inputs):
        x = inputs[0]
        if x.dtype not in TORCH_FLOATS or x.dim() == 0 or p.axis % x.dim() != x.dim() - 1 or x.shape[-1] > MAX_ROW:
            return [reference_kernel(LayerKind.SOFTMAX)(p, x)]  # not a shape the build saw
        x = x.contiguous()
        y = torch.empty_like(x)
        n_cols = x.shape[-1]
        n_rows = x.numel() // n_cols if n_cols else 0
        if n_rows == 0:
            return [y]
        block_m, block_n, num_warps = row_blocks(n_rows, n_cols)
        _softmax_rows[(triton.cdiv(n_rows, block_m),)](x, y, n_rows, n_cols, LOG=p.log, BLOCK_M=block_m,
                                                         BLOCK_N=block_n, num_warps=num_warps, **launch_options(y))
        return [y]
