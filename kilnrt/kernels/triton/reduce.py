"""``cuda.reduce.triton_spatial``: the mean or sum of a 4-D tensor over its two spatial axes
(ONNX GlobalAveragePool, ``ReduceMean(axes=[2, 3])``) in one or two Triton kernels.

CNNs end on a global average pool, and squeeze-excitation blocks (EfficientNet, MobileNetV3)
run one per block.  On channels-last activations PyTorch's ``mean`` is slow at small batches: at
batch 1, EfficientNet-B0's 112x112x32 pool has one image and 32 channels to spread over 132 SMs.
Here the pixels of each image are also split, so that there are enough programs to fill the GPU:

1. ``_spatial_partial``: program ``(c_block, split, n)`` sums its share of the ``H*W`` pixels for
   ``BLOCK_C`` channels, ``BLOCK_P`` pixels at a time, in float32.  With one split it writes the
   result; with several it writes a float32 partial sum to a ``[N, splits, C]`` workspace.
2. ``_spatial_finish`` (only with several splits): sums the partials of each ``(n, c)``, in a
   fixed order (the result does not depend on timing), and writes the result.

Strides are read from the tensor: channels-last or contiguous NCHW both merge H and W into one
pixel axis; other layouts are made channels-last first.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilnrt.kernels.cpu.linalg import normalize_axes
from kilnrt.kernels.registry import Tactic, reference_kernel, tactic
from kilnrt.kernels.triton import FLOAT_TYPES, TORCH_FLOATS, launch_options, wait_for_previous_kernel
from kilnrt.network.layers import LayerKind, ReduceOperation as R

TARGET_PROGRAMS = 264       # about two per SM on an H100/H200
_TILE_ELEMS = 2048          # BLOCK_P * BLOCK_C


# The loop bounds are compile-time constants: Triton pipelines constant-bound loops (a runtime-bound
# ``while`` would wait on every load), and its interpreter, which the CPU tests use, needs them.
# A layer's shape fixes them, so a model compiles a handful of variants at build time.
@triton.jit(do_not_specialize=["n_pix", "sn", "sp", "sc"])
def _spatial_partial(x_ptr, out_ptr, C, n_pix, sn, sp, sc, scale, PER_SPLIT: tl.constexpr,
                     ONE_SPLIT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
    cb, split, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ch = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < C
    start = split * PER_SPLIT
    base = x_ptr + n.to(tl.int64) * sn
    acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for p0 in range(0, PER_SPLIT, BLOCK_P):
        pix = start + p0 + tl.arange(0, BLOCK_P)
        mask = (pix < n_pix)[:, None] & c_ok[None, :]
        acc += tl.load(base + pix[:, None].to(tl.int64) * sp + ch[None, :] * sc, mask=mask, other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=0)
    if ONE_SPLIT:
        tl.store(out_ptr + n * C + ch, (total * scale).to(out_ptr.dtype.element_ty), mask=c_ok)
    else:
        tl.store(out_ptr + (n * tl.num_programs(1) + split) * C + ch, total, mask=c_ok)


@triton.jit
def _spatial_finish(part_ptr, y_ptr, C, scale, SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
                    USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
    cb, n = tl.program_id(0), tl.program_id(1)
    ch = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = ch < C
    acc = tl.zeros([BLOCK_S, BLOCK_C], tl.float32)
    for s0 in range(0, SPLITS, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = (s < SPLITS)[:, None] & c_ok[None, :]
        acc += tl.load(part_ptr + (n * SPLITS + s)[:, None] * C + ch[None, :], mask=mask, other=0.0)
    tl.store(y_ptr + n * C + ch, (tl.sum(acc, axis=0) * scale).to(y_ptr.dtype.element_ty), mask=c_ok)


def spatial_plan(n: int, c: int, pixels: int, channels_last: bool) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, splits): 64 channels (128-byte fp16 rows) by 32 pixels per load when
    channels-last, 16 channels by 128 pixels otherwise; pixels split so that there are about
    :data:`TARGET_PROGRAMS` programs, each with at least one whole tile."""
    block_c = min(triton.next_power_of_2(max(c, 1)), 64 if channels_last else 16)
    block_p = _TILE_ELEMS // block_c
    programs = n * triton.cdiv(c, block_c)
    splits = max(1, min(triton.cdiv(TARGET_PROGRAMS, programs), triton.cdiv(pixels, block_p)))
    return block_p, block_c, splits


def partial_sums(x: torch.Tensor, plan: tuple[int, int, int] | None = None, max_splits: int | None = None,
                 y: torch.Tensor | None = None, scale: float = 1.0) -> tuple[torch.Tensor, int]:
    """Run ``_spatial_partial`` on 4-D ``x`` (made channels-last first where H and W do not merge):
    ``(partials, splits)``, the float32 ``[N, splits, C]`` partial sums over the pixels; or, given
    ``y`` (``[N, C]``) and one split, ``(y, 1)`` with ``y`` holding the sums times ``scale``.
    ``plan`` overrides :func:`spatial_plan`; ``max_splits`` caps the splits."""
    n, c, h, w = x.shape
    if x.stride(2) != w * x.stride(3):          # H and W must merge into one pixel axis
        x = x.contiguous(memory_format=torch.channels_last)
    pixels = max(h * w, 1)
    block_p, block_c, splits = plan or spatial_plan(n, c, pixels, x.stride(1) == 1)
    splits = min(splits, max_splits or splits)
    per_split = triton.cdiv(triton.cdiv(pixels, splits), block_p) * block_p
    splits = triton.cdiv(pixels, per_split)
    one = y is not None and splits == 1
    out = y if one else torch.empty((n, splits, c), dtype=torch.float32, device=x.device)
    _spatial_partial[(triton.cdiv(c, block_c), splits, n)](
        x, out, c, h * w, x.stride(0), x.stride(3), x.stride(1), scale, PER_SPLIT=per_split,
        ONE_SPLIT=one, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4, **launch_options(out))
    return out, splits


def spatial_reduce(x: torch.Tensor, average: bool, keep_dims: bool,
                   plan: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Sum (or mean) of a 4-D float tensor over axes 2 and 3, float32 accumulation.  ``plan``
    overrides :func:`spatial_plan` (tests force several splits on small tensors)."""
    n, c, h, w = x.shape
    pixels = h * w
    y = torch.empty((n, c), dtype=x.dtype, device=x.device)
    if y.numel():
        if pixels == 0:
            y.fill_(float("nan") if average else 0.0)
        else:
            scale = 1.0 / pixels if average else 1.0
            out, splits = partial_sums(x, plan, y=y, scale=scale)
            if splits > 1:
                _spatial_finish[(triton.cdiv(c, 64), n)](out, y, c, scale, SPLITS=splits, BLOCK_S=32, BLOCK_C=64,
                                                         num_warps=4, **launch_options(y))
    return y.view(n, c, 1, 1) if keep_dims else y


@tactic
class TritonSpatialReduce(Tactic):
    """ReduceMean / ReduceSum of a float16/bfloat16/float32 4-D tensor over exactly axes 2 and 3
    (GlobalAveragePool imports as this), axes given as an attribute."""

    name = "cuda.reduce.triton_spatial"
    kind = LayerKind.REDUCE
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        p, x = layer.params, layer.inputs[0]
        if p.op not in (R.AVG, R.SUM) or len(layer.inputs) > 1 and layer.inputs[1] is not None:
            return False
        if x is None or x.shape is None or len(x.shape) != 4 or x.dtype not in FLOAT_TYPES:
            return False
        return p.axes is not None and sorted(normalize_axes(p.axes, 4)) == [2, 3]

    def run(self, p, inputs):
        x = inputs[0]
        if x.dim() != 4 or x.dtype not in TORCH_FLOATS or x[0].numel() >= 2**31:  # not what the build saw
            return [reference_kernel(LayerKind.REDUCE)(p, *inputs)]
        return [spatial_reduce(x, p.op == R.AVG, p.keep_dims)]
