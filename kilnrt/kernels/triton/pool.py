"""``cuda.pooling.triton_nhwc``: 2-D max and average pooling on channels-last (NHWC) activations.

kilnrt's CUDA activations are channels-last (cuDNN NHWC convolutions produce them), where
PyTorch's pooling kernels are slow.  Here each program takes a tile of ``BLOCK_P`` output
pixels (flattened over N, OH, OW) by ``BLOCK_C`` channels; for every window tap it loads one
``[BLOCK_P, BLOCK_C]`` tile of the input, whose rows are contiguous along C, so loads are
coalesced.  The taps are unrolled (window and stride are compile-time constants); padding is
``-inf`` for max and skipped for average.  Output sizes and padding come from the CPU
reference's own rule (:func:`kilnrt.kernels.cpu.conv._pool_padding`: explicit pre/post pads,
ceil mode, SAME_* modes), so shapes match it exactly.

Average pooling follows the reference's (ONNX's) divisors: with ``average_count_excludes_padding``
the count is the window cells inside the input; otherwise it also counts the explicit padding,
but never the extra end cells that ceil mode adds.  Math is float32 (exact for max, which skips
NaN as ONNX's reference evaluator does: a window of only NaN gives NaN).

Any input layout is accepted (``.contiguous(memory_format=torch.channels_last)`` is a no-op
for NHWC inputs); the output is channels-last.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kilnrt.kernels.cpu.conv import _nd, _pool_padding
from kilnrt.kernels.registry import Tactic, reference_kernel, tactic
from kilnrt.kernels.triton import FLOAT_TYPES, TORCH_FLOATS, launch_options, wait_for_previous_kernel
from kilnrt.network.layers import LayerKind, PoolingType

MAX_TAPS = 128            # window cells unrolled into one kernel; larger windows are left to PyTorch
_TILE_ELEMS = 2048        # BLOCK_P * BLOCK_C
_MAX_BLOCK_C = 128
_MAX_BLOCK_P = 512


# x and y are dense NHWC.  Only C is specialized (its divisibility makes every row offset aligned, so
# loads are vectorized); one compiled kernel serves every batch, image size and padding.
@triton.jit(do_not_specialize=["n_pixels", "H", "W", "OH", "OW", "pad_h", "pad_w", "end_h", "end_w"])
def _pool_nhwc(x_ptr, y_ptr, n_pixels, C, H, W, OH, OW, pad_h, pad_w, end_h, end_w,
               KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
               DH: tl.constexpr, DW: tl.constexpr, AVERAGE: tl.constexpr, COUNT_PAD: tl.constexpr,
               EVEN_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
    # channel blocks of one pixel tile are neighbours in launch order (they share DRAM rows)
    n_cblocks = tl.cdiv(C, BLOCK_C)
    pid = tl.program_id(0)
    pix = (pid // n_cblocks) * BLOCK_P + tl.arange(0, BLOCK_P)   # int32: the launcher checks the sizes
    ch = (pid % n_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    pix_ok = pix < n_pixels
    ow = pix % OW
    rest = pix // OW
    oh = rest % OH
    base = (rest // OH).to(tl.int64) * H * W * C                # offsets within one image are int32
    h0 = oh * SH - pad_h
    w0 = ow * SW - pad_w
    if EVEN_C:
        c_ok = tl.full([BLOCK_C], 1, tl.int1)
    else:
        c_ok = ch < C
    if AVERAGE:
        acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
        count = tl.zeros([BLOCK_P], tl.float32)
    else:
        acc = tl.full([BLOCK_P, BLOCK_C], float("-inf"), tl.float32)  # exact for every input type
        number = tl.zeros([BLOCK_P, BLOCK_C], tl.int1)                  # the window held a non-NaN
    for kh in tl.static_range(KH):
        ih = h0 + kh * DH
        h_in = (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = w0 + kw * DW
            inside = h_in & (iw >= 0) & (iw < W) & pix_ok
            ptrs = x_ptr + (base + (ih * W + iw) * C)[:, None] + ch[None, :]
            mask = inside[:, None] & c_ok[None, :]
            # the input and its explicit padding; not ceil mode's extra end cells
            padded = (ih >= -pad_h) & (ih < end_h) & (iw >= -pad_w) & (iw < end_w)
            if AVERAGE:
                acc += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
                counted = padded if COUNT_PAD else inside
                count += counted.to(tl.float32)
            else:
                v = tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32)
                acc = tl.where(v > acc, v, acc)    # ONNX's MaxPool skips NaN (never greater)
                number = number | ((v == v) & padded[:, None])   # explicit padding (-inf) is a number
    if AVERAGE:
        acc = acc / count[:, None]
    else:
        acc = tl.where(number, acc, float("nan"))  # a window of only NaN
    out = y_ptr + (pix.to(tl.int64) * C)[:, None] + ch[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=pix_ok[:, None] & c_ok[None, :])


def pool_blocks(channels: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, num_warps): a block of up to 128 channels by enough pixels (at most 512)
    for a 2048-element tile.  Only C decides, so one compiled kernel serves every batch and image size."""
    block_c = min(triton.next_power_of_2(max(channels, 1)), _MAX_BLOCK_C)
    block_p = min(_TILE_ELEMS // block_c, _MAX_BLOCK_P)
    num_warps = min(4, max(1, block_p * block_c // 256))
    return block_p, block_c, num_warps


def pool_nhwc(p, x: torch.Tensor, blocks: tuple[int, int, int] | None = None) -> torch.Tensor | None:
    """Run the kernel on a 4-D float tensor, or return None where the reference must answer: a
    window that does not fit (the reference raises), 2**31 or more output pixels or elements in
    one image (int32 indexing).  ``blocks`` overrides :func:`pool_blocks` (benchmark sweeps)."""
    window = tuple(p.window_size_nd)
    stride, dil = _nd(p.stride_nd, 2, 1), _nd(p.dilation_nd, 2, 1)
    n, c, h, w = x.shape
    pre, post, extra = _pool_padding(p, (h, w))
    out_hw = [(size + pre[i] + post[i] + extra[i] - ((window[i] - 1) * dil[i] + 1)) // stride[i] + 1
              for i, size in enumerate((h, w))]
    oh, ow = out_hw
    if min(out_hw) <= 0 or max(n * oh * ow, h * w * c) >= 2**31:  # int32 pixel / in-image indexing
        return None
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    n_pixels = n * oh * ow
    if y.numel() == 0:
        return y
    block_p, block_c, num_warps = blocks or pool_blocks(c)
    grid = (triton.cdiv(n_pixels, block_p) * triton.cdiv(c, block_c),)
    _pool_nhwc[grid](x, y, n_pixels, c, h, w, oh, ow, pre[0], pre[1], h + post[0], w + post[1],
                     KH=window[0], KW=window[1], SH=stride[0], SW=stride[1], DH=dil[0], DW=dil[1],
                     AVERAGE=p.type == PoolingType.AVERAGE,
                     COUNT_PAD=not p.average_count_excludes_padding, EVEN_C=c % block_c == 0,
                     BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps, **launch_options(y))
    return y


def _static_positive(values) -> bool:
    return all(isinstance(v, int) and v > 0 for v in values)


@tactic
class TritonPoolNHWC(Tactic):
    """2-D MAX / AVERAGE pooling of float16/bfloat16/float32 4-D tensors, any explicit or SAME
    padding, ceil mode, stride and dilation; windows up to 128 cells.  LP pooling is declined."""

    name = "cuda.pooling.triton_nhwc"
    kind = LayerKind.POOLING
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        p, x, y = layer.params, layer.inputs[0], layer.outputs[0]
        if p.type not in (PoolingType.MAX, PoolingType.AVERAGE) or len(p.window_size_nd) != 2:
            return False
        if x is None or x.shape is None or len(x.shape) != 4 or x.dtype not in FLOAT_TYPES or y.dtype != x.dtype:
            return False
        window = tuple(p.window_size_nd)
        if not _static_positive(window) or math.prod(window) > MAX_TAPS:
            return False
        if not _static_positive(_nd(p.stride_nd, 2, 1)) or not _static_positive(_nd(p.dilation_nd, 2, 1)):
            return False
        pads = tuple(p.pre_padding) + tuple(p.post_padding)
        if any(not isinstance(v, int) or v < 0 for v in pads) or len(p.pre_padding) not in (0, 2) \
                or len(p.post_padding) not in (0, 2):
            return False
        return True

    def run(self, p, inputs):
        x = inputs[0]
        y = pool_nhwc(p, x) if x.dim() == 4 and x.dtype in TORCH_FLOATS else None
        if y is None:  # not a shape/dtype the build saw, or a window that does not fit: the reference says why
            return [reference_kernel(LayerKind.POOLING)(p, x)]
        return [y]
