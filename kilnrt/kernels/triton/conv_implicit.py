"""``cuda.convolution.triton_implicit_<tiles>``: a dense 2-D convolution (one group, any
window, stride, padding and dilation) on channels-last tensors as an implicit GEMM, with
``act(conv(x) + bias + residual)`` in its epilogue.

Channels-last, output pixel ``m`` and reduction index ``(kh, kw, c)`` address the input row
``x[n, oh*s - p + kh*d, ow*s - p + kw*d, c]``: the kernel gathers each ``[pixels, BLOCK_K]``
tile of that virtual ``[N*OH*OW, KH*KW*C]`` matrix straight from the input (zeros where the
window hangs over the edge) and multiplies it on the tensor cores with the weight, stored once
at build as ``[KH*KW*C, K]``.  When ``C`` is a multiple of ``BLOCK_K`` a K tile lies inside
one tap, so its addresses are one row offset per pixel plus contiguous channels; otherwise
(a stem's 3 channels) every column of the tile finds its own tap and channel.

At batch 1 a late layer has few output tiles (ResNet-50's 7x7x512 convolution: 8 tiles of
64x64 for 132 SMs), so the reduction is split over programs (:func:`split_for`): each split
stores a float32 partial, and a second kernel adds the partials in split order (the same bits
on every run) and applies the epilogue.  cuDNN's kernels take 8-15 us on those layers; these
chain with the kernels around them under programmatic dependent launch, cuDNN's do not.

Every tile configuration is its own tactic, timed by the builder against cuDNN.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kilnrt.kernels.cpu.conv import FLOOR_PADDING_MODES, window_geometry
from kilnrt.kernels.gemm_rows import restore_rows, rows_in_memory_order, strided_rows
from kilnrt.kernels.registry import register, static_dims
from kilnrt.kernels.triton import launch_options, wait_for_previous_kernel
from kilnrt.kernels.triton.epilogue import EPILOGUE_ACTIVATIONS
from kilnrt.kernels.triton.conv_gemm import nhwc_rows, nhwc_slice_ok
from kilnrt.kernels.triton.gemm import TiledTactic, TritonGemm, logical_rows, store_epilogue
from kilnrt.kernels.triton.gemm_int8 import (Int8Weights, fp8_capable, quantize_operand, quantized_support,
                                             store_output, weight_dtype)
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind


@triton.jit
def _conv_nhwc(x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr, part_ptr, corr_ptr, scale_ptr, M, H, W, OH, OW, alpha, beta,
               inv_scale, zero_point, lo, hi, shift, out_inv_scale, QUANT: tl.constexpr, A_QUANTIZED: tl.constexpr,
               FP8: tl.constexpr, OUT_Q: tl.constexpr, HAS_CORR: tl.constexpr,
               C: tl.constexpr, N: tl.constexpr, LDC: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
               SH: tl.constexpr, SW: tl.constexpr,
               PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
               TILES_PER_SPLIT: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
               ACT: tl.constexpr, BIG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
    pid = tl.program_id(0)  # grouped order, as in the GEMM: neighbouring pixel blocks share W in L2
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    group_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_m
    pid_n = (pid % width) // group_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    if BIG:
        rm = rm.to(tl.int64)
    ow = rm % OW
    oh = (rm // OW) % OH
    img = rm // (OW * OH)
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    rbn = tl.max_contiguous(tl.multiple_of(rn % N, BLOCK_N), BLOCK_N)  # wrapped columns, never stored
    first = tl.program_id(1) * TILES_PER_SPLIT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if QUANT and not FP8 else tl.float32)
    for i in range(TILES_PER_SPLIT):
        t = first + i
        if C % BLOCK_K == 0:  # the tile lies inside one tap: a row offset per pixel
            tap = t // (C // BLOCK_K)
            ih = ih0 + (tap // KW) * DH
            iw = iw0 + (tap % KW) * DW
            ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            row = ((img * H + ih) * W + iw) * C + (t % (C // BLOCK_K)) * BLOCK_K
            a = tl.load(x_ptr + row[:, None] + rk[None, :], mask=ok[:, None], other=0.0)
            if QUANT:  # INT8 weights are [N, KH*KW*C], K contiguous
                w = tl.load(w_ptr + rbn[None, :] * (KH * KW * C) + (t * BLOCK_K + rk)[:, None])
            else:
                w = tl.load(w_ptr + (t * BLOCK_K + rk)[:, None] * N + rbn[None, :])
        else:  # few channels (a stem's 3): each column of the tile is its own (tap, channel)
            kk = t * BLOCK_K + rk
            k_ok = kk < KH * KW * C
            tap = kk // C
            ih = ih0[:, None] + (tap // KW)[None, :] * DH
            iw = iw0[:, None] + (tap % KW)[None, :] * DW
            ok = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_ptr + ((img[:, None] * H + ih) * W + iw) * C + (kk % C)[None, :], mask=ok, other=0.0)
            if QUANT:  # (other=0.0, not 0: Triton casts no int constant to FP8)
                w = tl.load(w_ptr + rbn[None, :] * (KH * KW * C) + kk[:, None], mask=k_ok[:, None], other=0.0)
            else:
                w = tl.load(w_ptr + kk[:, None] * N + rbn[None, :], mask=k_ok[:, None], other=0.0)
        if QUANT and not A_QUANTIZED:  # padding reads 0.0, which quantizes to the zero point: it adds nothing
            a = quantize_operand(a, inv_scale, zero_point, lo, hi, shift, FP8)
        acc = tl.dot(a, w, acc, out_dtype=acc.dtype)
    if QUANT:  # exact int32 sums -> float: the zero-point correction (once, in split 0), the scales
        if HAS_CORR:
            corr = tl.load(corr_ptr + rn, mask=rn < N, other=0)
            acc += tl.where(tl.program_id(1) == 0, corr, 0)[None, :]
        acc = acc.to(tl.float32) * tl.load(scale_ptr + rn, mask=rn < N, other=0.0)[None, :]
    if SPLIT == 1:
        store_output(acc, rm, rn, M, N, LDC, bias_ptr, res_ptr, y_ptr, alpha, beta, out_inv_scale, HAS_BIAS, HAS_RES,
                     ACT, OUT_Q)
    else:  # (never with OUT_Q: a requantizing convolution does not split)  # this split's float32 partial, [SPLIT, M, N]; _add_partials finishes
        offs = (tl.program_id(1) * M + rm[:, None]).to(tl.int64) * N + rn[None, :]
        tl.store(part_ptr + offs, acc, mask=m_ok[:, None] & (rn[None, :] < N))


@triton.jit
def _add_partials(part_ptr, bias_ptr, res_ptr, y_ptr, M, alpha, beta, N: tl.constexpr, LDC: tl.constexpr,
                  SPLIT: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    acc = tl.load(part_ptr + offs, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLIT):  # split order: the same sum on every run
        acc += tl.load(part_ptr + s * M * N + offs, mask=mask, other=0.0)
    store_epilogue(acc, rm, rn, M, N, LDC, bias_ptr, res_ptr, y_ptr, alpha, beta, HAS_BIAS, HAS_RES, ACT)


MAX_SPLIT = 16


def split_for(m: int, n: int, k: int, config: dict, programs: int) -> int:
    """How many ways to split the ``k``-long reduction of an ``[m, n]`` output when it has fewer
    tiles than the GPU runs ``programs`` at once: about one program per SM, each split at least
    two K tiles, and every split the same number of K tiles (a divisor of their count)."""
    tiles = triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"])
    k_tiles = triton.cdiv(k, config["BLOCK_K"])
    most = max(1, min(programs // max(tiles, 1), k_tiles // 2, MAX_SPLIT))
    return max(d for d in range(1, most + 1) if k_tiles % d == 0)


def multiprocessors(device: torch.device) -> int:
    """The GPU's SM count (off the GPU, under Triton's interpreter in tests: a nominal 8)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 8
    return torch.cuda.get_device_properties(device).multi_processor_count


def conv_nhwc(x: torch.Tensor, weight: torch.Tensor, bias, residual, window, stride, pre, dilation,
              out_hw, act: str, alpha: float, beta: float, config: dict, programs: int,
              out: torch.Tensor | None = None, quantized: Int8Weights | None = None,
              out_dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """``act(conv(x) + bias + residual)`` as a new ``[N, OH, OW, K]`` tensor: ``x`` a contiguous
    ``[N, H, W, C]``, ``weight`` a contiguous ``[KH*KW*C, K]``, ``residual`` ``[N, OH, OW, K]``.
    With ``out`` (the ``[N*OH*OW, K]`` output pixels as rows ``out.stride(0)`` apart, unit column
    stride: a channel slice of a channels-last buffer) the result is stored there, returning None.
    With ``quantized`` (INT8 or FP8 weights ``[K, KH*KW*C]``; ``weight`` is then ignored) ``x`` is
    quantized in the kernel, unless it is already, and multiplied in 8 bits (:mod:`.gemm_int8`), the
    output of ``out_dtype`` (requantized in the epilogue when ``quantized.out_q``)."""
    n, h, w, c = x.shape
    q = quantized
    if q is not None:
        weight = q.weight
    k = weight.shape[0] if quantized is not None else weight.shape[1]
    (oh, ow), m = out_hw, n * out_hw[0] * out_hw[1]
    y = torch.empty((n, oh, ow, k), dtype=out_dtype or x.dtype, device=x.device) if out is None else None
    rows = y.view(m, k) if out is None else out
    assert rows.shape == (m, k) and (rows.stride(1) == 1 or k == 1) and rows.stride(0) >= k, "out: [M, K] rows"
    if m == 0:
        return y
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    k_tiles = triton.cdiv(window[0] * window[1] * c, bk)
    tiles = triton.cdiv(m, bm) * triton.cdiv(k, bn)
    split = split_for(m, k, window[0] * window[1] * c, config, programs) if q is None or not q.out_q else 1
    parts = torch.empty((split, m, k), dtype=torch.float32, device=x.device) if split > 1 else rows
    big = max(x.numel(), m * k) + bm * c >= 2 ** 31
    epilogue = dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None, ACT=act)
    bias_arg = bias if bias is not None else weight
    res_arg = residual if residual is not None else rows
    ldc = rows.stride(0) if m > 1 else k
    quant = (q.correction if q is not None and q.correction is not None else bias_arg,
             q.scale if q is not None else bias_arg, q.inv_scale if q else 1.0, q.zero_point if q else 0.0,
             q.lo if q else 0.0, q.hi if q else 0.0, q.shift if q else 0.0, q.out_inv_scale if q else 1.0)
    _conv_nhwc[(tiles, split)](
        x, weight, bias_arg, res_arg, rows, parts, quant[0], quant[1], m, h, w, oh, ow, float(alpha), float(beta),
        *quant[2:], QUANT=q is not None, A_QUANTIZED=q is not None and q.takes_quantized(x),
        FP8=q is not None and q.fp8, OUT_Q=q.out_q if q is not None else 0,
        HAS_CORR=q is not None and q.correction is not None, C=c, N=k, LDC=ldc,
        KH=window[0],
        KW=window[1], SH=stride[0], SW=stride[1], PH=pre[0], PW=pre[1], DH=dilation[0], DW=dilation[1],
        TILES_PER_SPLIT=k_tiles // split, SPLIT=split, BIG=big, **epilogue, **config, **launch_options(rows))
    if split > 1:
        _add_partials[(triton.cdiv(m, 32), triton.cdiv(k, 64))](
            parts, bias_arg, res_arg, rows, m, float(alpha), float(beta), N=k, LDC=ldc, SPLIT=split, **epilogue,
            BLOCK_M=32, BLOCK_N=64, num_warps=4, **launch_options(rows))
    return y


class TritonImplicitConv(TiledTactic):
    kind = LayerKind.CONVOLUTION
    device = "cuda"
    prefix = "cuda.convolution.triton_implicit_"
    residual_input = 3      # the residual's index among the layer's inputs

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        x, w = layer.inputs[0], ctx.constant(layer, 1)
        if w is None or w.dim() != 4 or p.num_groups != 1 or p.padding_mode not in FLOOR_PADDING_MODES:
            return False
        if x is None or x.dtype not in (DataType.HALF, DataType.BF16) or x.shape is None or len(x.shape) != 4:
            return False
        if layer.inputs[1].dtype != x.dtype:  # the tensor cores multiply two of a kind
            return False
        if len(layer.inputs) > 2 and layer.inputs[2] is not None and ctx.constant(layer, 2) is None:
            return False
        c, k = w.shape[1], w.shape[0]
        if tuple(w.shape[2:]) == (1, 1) and not any(s != 1 for s in p.stride_nd) and not any(p.pre_padding):
            # a plain GEMM (cuda.convolution.triton_gemm_*) unless its reduction gets split
            dims = (x.shape[0], x.shape[2], x.shape[3])
            if not static_dims(dims) or split_for(math.prod(dims), k, c, self.config,
                                                   multiprocessors(ctx.device)) == 1:
                return False
        return p.activation in EPILOGUE_ACTIVATIONS and k % 8 == 0

    def prepare(self, layer, ctx):
        p = layer.params
        w = ctx.constant(layer, 1)
        k, c, kh, kw = w.shape
        weight = w.permute(2, 3, 1, 0).reshape(kh * kw * c, k).contiguous()  # [(kh, kw, c), K]
        b = ctx.constant(layer, 2) if len(layer.inputs) > 2 else None
        bias = None if b is None else b.reshape(-1).to(weight.dtype).contiguous()
        return p, weight, bias, (kh, kw), multiprocessors(ctx.device), {}

    def run(self, state, inputs):
        return [self._conv(state, inputs, None).permute(0, 3, 1, 2)]  # [N, K, OH, OW], channels-last

    def can_write_into(self, layer, ctx, out) -> bool:
        """Into a channel slice of a channels-last buffer (see ``conv_gemm.nhwc_slice_ok``)."""
        return nhwc_slice_ok(layer, out)

    def run_into(self, state, inputs, out) -> None:
        self._conv(state, inputs, nhwc_rows(out))

    def _conv(self, state, inputs, out):
        p, weight, bias, window, programs, options = state     # options: conv_nhwc's INT8 arguments
        x = inputs[0].contiguous(memory_format=torch.channels_last)
        residual = inputs[self.residual_input] if len(inputs) > self.residual_input else None
        n, c, h, w = x.shape
        stride, dilation, pre, out_hw = window_geometry(p, (h, w), window)
        if residual is not None:
            residual = residual.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        return conv_nhwc(x.permute(0, 2, 3, 1), weight, bias, residual, window, stride, pre, dilation, out_hw,
                         EPILOGUE_ACTIVATIONS[p.activation], p.activation_alpha, p.activation_beta, self.config,
                         programs, out, **options)


class TritonInt8ImplicitConv(TritonImplicitConv):
    """``cuda.quantized_convolution.triton_implicit_<tiles>``: an INT8 convolution (any window, 1x1
    included) as the implicit GEMM above, the activation quantized in the kernel as it is
    gathered, the weights ``[K, KH*KW*C]`` INT8, exact int32 sums, and the scales, bias, residual
    and activation in the epilogue (:mod:`.gemm_int8`)."""

    kind = LayerKind.QUANTIZED_CONVOLUTION
    prefix = "cuda.quantized_convolution.triton_implicit_"
    residual_input = 4      # after x, weights, weight scale, bias

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        x, w = layer.inputs[0], ctx.constant(layer, 1)
        if (w is None or w.dim() != 4 or w.dtype != weight_dtype(p) or p.num_groups != 1
                or p.padding_mode not in FLOOR_PADDING_MODES):
            return False
        if x is None or not quantized_support(p, x.dtype) or x.shape is None or len(x.shape) != 4:
            return False
        if p.input_type == DataType.FP8 and not fp8_capable(ctx.device):
            return False
        if ctx.constant(layer, 2) is None or (len(layer.inputs) > 3 and layer.inputs[3] is not None
                                              and ctx.constant(layer, 3) is None):
            return False
        return p.activation in EPILOGUE_ACTIVATIONS and w.shape[0] % 8 == 0

    def prepare(self, layer, ctx):
        p = layer.params
        w = ctx.constant(layer, 1)
        k, c, kh, kw = w.shape
        q = Int8Weights(w.permute(0, 2, 3, 1).reshape(k, kh * kw * c), ctx.constant(layer, 2), p.input_scale,
                        p.input_zero_point, p.input_type, p.output_scale, p.output_type)   # [K, (kh, kw, c)]
        b = ctx.constant(layer, 3) if len(layer.inputs) > 3 else None
        bias = None if b is None else b.reshape(-1).to(torch.float32).contiguous()
        return p, None, bias, (kh, kw), multiprocessors(ctx.device), {"quantized": q,
                                                                     "out_dtype": layer.outputs[0].dtype.torch}


class TritonSplitKGemm(TritonGemm):
    """``act(x @ W + bias)`` for a GEMM with fewer output tiles than the GPU has SMs (a
    classifier's batch-1 ``[1, 2048] @ [2048, 1000]``): the kernel above as a 1x1 convolution
    over ``M`` pixels, its reduction split over programs.  Offered only where it splits."""

    prefix = "cuda.matrix_multiply.triton_splitk_"

    def supports(self, layer, ctx) -> bool:
        if not super().supports(layer, ctx):
            return False
        x, w = layer.inputs[0], ctx.constant(layer, 1)
        if not static_dims(x.shape):
            return False
        k = x.shape[-1]
        return split_for(math.prod(x.shape[:-1]), w.numel() // k, k, self.config, multiprocessors(ctx.device)) > 1

    def prepare(self, layer, ctx):
        return super().prepare(layer, ctx) + (multiprocessors(ctx.device),)

    def run(self, state, inputs):
        weight, bias, act, alpha, beta, programs = state
        a, lead, inverse = rows_in_memory_order(inputs[0])
        m, k = a.shape
        y = conv_nhwc(a.contiguous().view(1, m, 1, k), weight, bias, None, (1, 1), (1, 1), (0, 0), (1, 1), (m, 1),
                      act, alpha, beta, self.config, programs)
        return [restore_rows(y.view(m, -1), lead, inverse)]

    def run_into(self, state, inputs, out) -> None:  # can_write_into: TritonGemm's (rows one stride apart)
        weight, bias, act, alpha, beta, programs = state
        a = logical_rows(inputs[0])
        m, k = a.shape
        conv_nhwc(a.contiguous().view(1, m, 1, k), weight, bias, None, (1, 1), (1, 1), (0, 0), (1, 1), (m, 1),
                  act, alpha, beta, self.config, programs, out=strided_rows(out))


# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps): small tiles (and split-K) for batch-1 layers,
# 128-wide ones for large batches, a 32-deep K tile for 32-channel inputs.
CONFIGS = [(64, 64, 64, 4, 4), (32, 64, 64, 4, 4), (64, 128, 64, 3, 4), (128, 128, 64, 3, 8), (128, 64, 32, 4, 4)]
for _cfg in CONFIGS:
    register(TritonImplicitConv(*_cfg))
# INT8: K tiles twice as deep for the same bytes; 32 deep for 32-channel inputs and stems
INT8_CONFIGS = [(128, 128, 64, 4, 8), (128, 128, 128, 3, 8), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
                (64, 64, 64, 4, 4), (64, 64, 32, 4, 4)]
for _cfg in INT8_CONFIGS:
    register(TritonInt8ImplicitConv(*_cfg))
# batch-1 classifiers and projections: a handful of rows
SPLIT_K_GEMM_CONFIGS = [(16, 64, 128, 4, 4), (32, 64, 64, 4, 4), (64, 64, 64, 4, 4)]
for _cfg in SPLIT_K_GEMM_CONFIGS:
    register(TritonSplitKGemm(*_cfg))
