"""Normalization over the trailing axes in Triton: LayerNorm, RMSNorm, InstanceNorm, and
GroupNorm with one group.

x is viewed as ``[rows, N]`` with N the product of the normalized dims.  The statistics are
float32, then ``y = (x - mean) / sqrt(var + eps) * scale + bias`` (RMSNorm:
``x / sqrt(mean(x^2) + eps)``), as :func:`kilnrt.kernels.cpu.norm.normalization` computes it.
scale and bias are optional; each either has the normalized shape (LayerNorm's, one value per
column) or is constant along it (InstanceNorm's per-channel ``[C, 1]``, one value per row).

- ``cuda.normalization.triton``: a row in registers (N at most 32768), the mean, then the
  centered variance.
- ``cuda.normalization.triton_split``: a row split over many programs, for long rows or few
  of them (GroupNorm with one group over ``[1, 64, 56, 56]`` is one row of 200,704, which one
  program would walk alone).  A first kernel writes each chunk's mean and centered sum of
  squares; a second combines a row's chunks (Chan's formula, so a large mean does not cancel
  the variance) and normalizes its chunk.

The builder times both where both apply.  Group normalization with several groups is left to
PyTorch.
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
def _norm_rows(x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, s_ptr, n_rows, n_cols, eps, w_rows, b_rows, RMS: tl.constexpr,
               HAS_R: tl.constexpr, STORE_SUM: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
               PER_ROW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr):
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
    if PER_ROW:   # scale and bias constant along the row: w_rows (b_rows) values, row r takes r % w_rows
        if HAS_W:
            y = y * tl.load(w_ptr + rows % w_rows, mask=rows < n_rows, other=0.0).to(tl.float32)[:, None]
        if HAS_B:
            y = y + tl.load(b_ptr + rows % b_rows, mask=rows < n_rows, other=0.0).to(tl.float32)[:, None]
    else:
        if HAS_W:
            y = y * tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_B:
            y = y + tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _norm_chunk_moments(x_ptr, r_ptr, m_ptr, n_cols, n_chunks, HAS_R: tl.constexpr, BLOCK: tl.constexpr,
                        USE_PDL: tl.constexpr):
    """Program (row, chunk): the chunk's mean and centered sum of squares, float32, at
    ``m_ptr[(row * n_chunks + chunk) * 2 + (0, 1)]``."""
    wait_for_previous_kernel(USE_PDL)
    row, chunk = tl.program_id(0), tl.program_id(1)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    offs = row.to(tl.int64) * n_cols + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if HAS_R:
        x = x + tl.load(r_ptr + offs, mask=mask, other=0.0)
    x = x.to(tl.float32)
    count = tl.minimum(n_cols - chunk * BLOCK, BLOCK).to(tl.float32)
    mean = tl.sum(x, axis=0) / count
    centered = tl.where(mask, x - mean, 0.0)
    at = (row * n_chunks + chunk) * 2
    tl.store(m_ptr + at, mean)
    tl.store(m_ptr + at + 1, tl.sum(centered * centered, axis=0))


@triton.jit
def _norm_chunks(x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, s_ptr, m_ptr, n_cols, n_chunks, eps, w_rows, b_rows,
                 RMS: tl.constexpr, HAS_R: tl.constexpr, STORE_SUM: tl.constexpr, HAS_W: tl.constexpr,
                 HAS_B: tl.constexpr, PER_ROW: tl.constexpr, BLOCK: tl.constexpr, CHUNKS: tl.constexpr,
                 USE_PDL: tl.constexpr):
    """Program (row, chunk): the row's statistics from its chunks' moments, then the chunk
    normalized."""
    wait_for_previous_kernel(USE_PDL)
    row, chunk = tl.program_id(0), tl.program_id(1)
    k = tl.arange(0, CHUNKS)
    kmask = k < n_chunks
    means = tl.load(m_ptr + (row * n_chunks + k) * 2, mask=kmask, other=0.0)
    m2s = tl.load(m_ptr + (row * n_chunks + k) * 2 + 1, mask=kmask, other=0.0)
    counts = tl.where(kmask, tl.minimum(n_cols - k * BLOCK, BLOCK), 0).to(tl.float32)
    if RMS:
        mean = 0.0
        var = tl.sum(m2s + counts * means * means, axis=0) / n_cols
    else:
        mean = tl.sum(counts * means, axis=0) / n_cols
        spread = means - mean
        var = tl.sum(m2s + counts * spread * spread, axis=0) / n_cols
    inv = 1.0 / tl.sqrt_rn(var + eps)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    offs = row.to(tl.int64) * n_cols + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if HAS_R:
        x = x + tl.load(r_ptr + offs, mask=mask, other=0.0)
    if STORE_SUM:
        tl.store(s_ptr + offs, x, mask=mask)
    y = (x.to(tl.float32) - mean) * inv
    if PER_ROW:
        if HAS_W:
            y = y * tl.load(w_ptr + row % w_rows).to(tl.float32)
        if HAS_B:
            y = y + tl.load(b_ptr + row % b_rows).to(tl.float32)
    else:
        if HAS_W:
            y = y * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _strip_leading_ones(shape) -> tuple:
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def affine_layout(weight_shape, x_shape, n_axes: int) -> str | None:
    """How a scale or bias of ``weight_shape`` lines up with the ``[rows, N]`` view of x
    (its last ``n_axes`` dims normalized), broadcast as numpy does: "column" (the normalized
    shape), "row" (constant along the normalized dims, its other dims a suffix of x's leading
    ones: row r takes value r % its size), or None (neither)."""
    w, x = tuple(weight_shape), tuple(x_shape)
    if len(w) > len(x):
        return None
    normalized = x[len(x) - n_axes:]
    if _strip_leading_ones(w) == _strip_leading_ones(normalized):
        return "column"
    w = (1,) * (len(x) - len(w)) + w
    leading, along = w[:len(x) - n_axes], w[len(x) - n_axes:]
    if any(d != 1 for d in along):
        return None
    kept = _strip_leading_ones(leading)
    if kept and tuple(x[len(x) - n_axes - len(kept):len(x) - n_axes]) != kept:
        return None
    return "row"


def _layouts(layer) -> tuple[str, ...] | None:
    """The affine layouts of a NORMALIZATION layer both tactics run (None: they do not)."""
    p, x = layer.params, layer.inputs[0]
    if p.num_groups != 1 or x is None or x.shape is None or x.dtype not in FLOAT_TYPES \
            or layer.outputs[0].dtype != x.dtype:
        return None
    rank = len(x.shape)
    axes = normalize_axes(p.axes, rank)
    if axes != tuple(range(rank - len(axes), rank)) or not static_dims(x.shape[rank - len(axes):]):
        return None
    layouts = []
    for t in layer.inputs[1:3]:  # scale, bias: float
        if t is None:
            continue
        layout = None if t.shape is None or t.dtype not in FLOAT_TYPES | {DataType.DOUBLE} or not static_dims(t.shape) \
            else affine_layout(t.shape, x.shape, len(axes))
        if layout is None:
            return None
        layouts.append(layout)
    if len(set(layouts)) > 1:
        return None
    return tuple(layouts)


class _NormalizationTactic(Tactic):
    kind = LayerKind.NORMALIZATION
    device = "cuda"

    def run(self, p, inputs):
        x = inputs[0]
        scale = inputs[1] if len(inputs) > 1 else None
        bias = inputs[2] if len(inputs) > 2 else None
        residual = inputs[3] if len(inputs) > 3 else None
        n_axes = x.dim() if p.axes is None else len(normalize_axes(p.axes, x.dim()))
        n_cols = math.prod(x.shape[x.dim() - n_axes:])
        layouts = {affine_layout(t.shape, x.shape, n_axes) for t in (scale, bias) if t is not None}
        if x.dtype not in TORCH_FLOATS or not self.fits(n_cols) or p.num_groups != 1 \
                or None in layouts or len(layouts) > 1 \
                or (residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype)):
            out = reference_kernel(LayerKind.NORMALIZATION)(p, x, scale, bias, residual)  # not a shape the build saw
            return list(out) if p.sum_output else [out]
        per_row = layouts == {"row"}
        x = x.contiguous()
        y = torch.empty_like(x)
        total = torch.empty_like(x) if p.sum_output else None
        outs = [y] if total is None else [y, total]
        n_rows = x.numel() // n_cols if n_cols else 0
        if n_rows == 0:
            return outs
        w = x if scale is None else scale.contiguous()
        b = x if bias is None else bias.contiguous()
        w_rows = max(1, scale.numel()) if per_row and scale is not None else 1
        b_rows = max(1, bias.numel()) if per_row and bias is not None else 1
        r = x if residual is None else residual.contiguous()
        flags = dict(RMS=p.rms, HAS_R=residual is not None, STORE_SUM=total is not None, HAS_W=scale is not None,
                     HAS_B=bias is not None, PER_ROW=per_row)
        self.launch(x, r, w, b, y, y if total is None else total, n_rows, n_cols, float(p.epsilon), (w_rows, b_rows),
                    flags)
        return outs


@tactic
class TritonNormalization(_NormalizationTactic):
    """A row in registers: normalized size at most 32768."""

    name = "cuda.normalization.triton"

    @staticmethod
    def fits(n_cols: int) -> bool:
        return n_cols <= MAX_ROW

    def supports(self, layer, ctx) -> bool:
        x = layer.inputs[0]
        return _layouts(layer) is not None and self.fits(math.prod(
            x.shape[len(x.shape) - len(normalize_axes(layer.params.axes, len(x.shape))):]))

    def launch(self, x, r, w, b, y, s, n_rows, n_cols, eps, rows_of, flags):
        # 16 elements per thread: BERT's 4096 x 768 add + LayerNorm took 4.5 us with 4 warps
        # per two rows, 5.6 us with 8 (H200)
        block_m, block_n, num_warps = row_blocks(n_rows, n_cols, per_thread=16)
        _norm_rows[(triton.cdiv(n_rows, block_m),)](
            x, r, w, b, y, s, n_rows, n_cols, eps, *rows_of, **flags, BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=num_warps, **launch_options(y))


SPLIT_BLOCK = 4096     # elements of a row per program: 16 per thread with 8 warps
MAX_CHUNKS = 4096      # so rows of up to 16M elements


@tactic
class TritonSplitNormalization(_NormalizationTactic):
    """A row split over programs of 4096 elements, in two kernels (moments, then normalize)."""

    name = "cuda.normalization.triton_split"

    @staticmethod
    def fits(n_cols: int) -> bool:
        return n_cols <= SPLIT_BLOCK * MAX_CHUNKS

    def supports(self, layer, ctx) -> bool:
        x = layer.inputs[0]
        n_cols = math.prod(x.shape[len(x.shape) - len(normalize_axes(layer.params.axes, len(x.shape))):])
        return _layouts(layer) is not None and SPLIT_BLOCK < n_cols and self.fits(n_cols)

    def launch(self, x, r, w, b, y, s, n_rows, n_cols, eps, rows_of, flags):
        n_chunks = triton.cdiv(n_cols, SPLIT_BLOCK)
        moments = torch.empty(n_rows * n_chunks * 2, dtype=torch.float32, device=x.device)
        options = launch_options(y)
        _norm_chunk_moments[(n_rows, n_chunks)](x, r, moments, n_cols, n_chunks, HAS_R=flags["HAS_R"],
                                                BLOCK=SPLIT_BLOCK, num_warps=8, **options)
        _norm_chunks[(n_rows, n_chunks)](x, r, w, b, y, s, moments, n_cols, n_chunks, eps, *rows_of, **flags,
                                         BLOCK=SPLIT_BLOCK, CHUNKS=triton.next_power_of_2(n_chunks), num_warps=8,
                                         **options)
