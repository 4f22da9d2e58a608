"""``cuda.normalization.triton``: LayerNorm and RMSNorm over the trailing axes, whole rows in registers.

x is viewed as ``[rows, N]`` with N the product of the normalized dims (at most 32768).  The
statistics are float32 (mean, then the centered variance, from the row in registers), then
``y = (x - mean) / sqrt(var + eps) * scale + bias`` (RMSNorm: ``x / sqrt(mean(x^2) + eps)``),
as :func:`kilnrt.kernels.cpu.norm.normalization` computes it.  scale and bias are optional
and have the normalized shape (leading 1s allowed); group normalization is left to PyTorch.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kilnrt.kernels.cpu.linalg import normalize_axes
from kilnrt.kernels.registry import Tactic, reference_kernel, static_dims, tactic
from kilnrt.kernels.triton import (FLOAT_TYPES, MAX_ROW, TORCH_FLOATS, launch_options, row_blocks,
                                   wait_for_previous_kernel)
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind



@triton.jit
def _norm_rows(x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, s_ptr, n_rows, n_cols, eps, RMS: tl.constexpr,
               HAS_R: tl.constexpr, STORE_SUM: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    mask = (rows[:, None] < n_rows) & col_mask[None, :]
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if HAS_R:  # the residual add, rounded to x's type as a separate add would be
        x = x + tl.load(r_ptr + offs, mask=mask, other=0.0)
    if STORE_SUM:  # x + residual is read by later layers too (a pre-norm transformer's residual stream)
        tl.store(s_ptr + offs, x, mask=mask)
    x = x.to(tl.float32)
    if RMS:
        y = x * (1.0 / tl.sqrt_rn(tl.sum(x * x, axis=1) / n_cols + eps))[:, None]
    else:
        centered = tl.where(mask, x - (tl.sum(x, axis=1) / n_cols)[:, None], 0.0)
        var = tl.sum(centered * centered, axis=1) / n_cols
        y = centered * (1.0 / tl.sqrt_rn(var + eps))[:, None]
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _strip_leading_ones(shape) -> tuple:
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


@tactic
class TritonNormalization(Tactic):
    """LayerNorm / RMSNorm (num_groups == 1) over trailing axes whose product is at most 32768."""

    name = "cuda.normalization.triton"
    kind = LayerKind.NORMALIZATION
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        p, x = layer.params, layer.inputs[0]
        if p.num_groups != 1 or x is None or x.shape is None or x.dtype not in FLOAT_TYPES \
                or layer.outputs[0].dtype != x.dtype:
            return False
        rank = len(x.shape)
        axes = normalize_axes(p.axes, rank)
        normalized = tuple(x.shape[rank - len(axes):])
        if axes != tuple(range(rank - len(axes), rank)) or not static_dims(normalized) \
                or math.prod(normalized) > MAX_ROW:
            return False
        for t in layer.inputs[1:3]:  # scale, bias: the normalized shape, float, not broadcasting x
            if t is not None and (t.shape is None or t.dtype not in FLOAT_TYPES | {DataType.DOUBLE}
                                  or len(t.shape) > rank
                                  or _strip_leading_ones(t.shape) != _strip_leading_ones(normalized)):
                return False
        return True

    def run(self, p, inputs):
        x = inputs[0]
        scale = inputs[1] if len(inputs) > 1 else None
        bias = inputs[2] if len(inputs) > 2 else None
        residual = inputs[3] if len(inputs) > 3 else None
        n_axes = x.dim() if p.axes is None else len(normalize_axes(p.axes, x.dim()))
        n_cols = math.prod(x.shape[x.dim() - n_axes:])
        if x.dtype not in TORCH_FLOATS or n_cols > MAX_ROW or p.num_groups != 1 \
                or any(t is not None and t.numel() != n_cols for t in (scale, bias)) \
                or (residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype)):
            out = reference_kernel(LayerKind.NORMALIZATION)(p, x, scale, bias, residual)  # not a shape the build saw
            return list(out) if p.sum_output else [out]
        x = x.contiguous()
        y = torch.empty_like(x)
        total = torch.empty_like(x) if p.sum_output else None
        outs = [y] if total is None else [y, total]
        n_rows = x.numel() // n_cols if n_cols else 0
        if n_rows == 0:
            return outs
        w = x if scale is None else scale.contiguous()
        b = x if bias is None else bias.contiguous()
        r = x if residual is None else residual.contiguous()
        # 16 elements per thread: BERT's 4096 x 768 add + LayerNorm took 4.5 us with 4 warps
        # per two rows, 5.6 us with 8 (H200)
        block_m, block_n, num_warps = row_blocks(n_rows, n_cols, per_thread=16)
        _norm_rows[(triton.cdiv(n_rows, block_m),)](
            x, r, w, b, y, y if total is None else total, n_rows, n_cols, float(p.epsilon), RMS=p.rms,
            HAS_R=residual is not None, STORE_SUM=total is not None, HAS_W=scale is not None,
            HAS_B=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, **launch_options(y))
        return outs
