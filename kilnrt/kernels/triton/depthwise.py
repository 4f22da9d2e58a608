"""``cuda.convolution.triton_depthwise_<tiles>``: a 2-D depthwise convolution on channels-last
tensors with its whole epilogue, ``act(conv(x) + bias [+ residual])``, in one Triton kernel.

A depthwise convolution (MobileNet, EfficientNet, ConvNeXt) does a few multiply-adds per
byte it moves, so its time is memory traffic.  cuDNN's channels-last depthwise kernel writes
the raw result and the bias/activation is another pass over it; here each program loads a
tile of output pixels x channels for every tap of the window (the overlapping reads hit the
cache), accumulates in float32, applies the epilogue and stores once.

Every tile configuration is its own tactic, timed by the builder against the cuDNN tactics
(which stay the choice wherever they are faster, e.g. on very large windows).  The weights
are stored once, at build, as float32 ``[KH * KW, C]``: one tap is a contiguous row of
channels, as the input's pixels are.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilnrt.kernels.cpu.conv import FLOOR_PADDING_MODES, window_geometry
from kilnrt.kernels.registry import Tactic, register
from kilnrt.kernels.triton import FLOAT_TYPES, launch_options, wait_for_previous_kernel
from kilnrt.kernels.triton.epilogue import EPILOGUE_ACTIVATIONS, activate
from kilnrt.network.layers import LayerKind


@triton.jit
def _depthwise_nhwc(x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr, P, H, W, OH, OW, alpha, beta,
                    C: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, BIG: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
    # P = N * OH * OW output pixels, each a row of C channels (channels-last: rows are contiguous)
    rp = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    if BIG:
        rp = rp.to(tl.int64)
    rc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = rp < P
    c_ok = rc < C
    ow = rp % OW
    oh = (rp // OW) % OH
    n = rp // (OW * OH)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for kh in tl.static_range(KH):
        ih = oh * SH - PH + kh * DH
        h_ok = p_ok & (ih >= 0) & (ih < H)
        row = (n * H + ih) * W
        for kw in tl.static_range(KW):
            iw = ow * SW - PW + kw * DW
            ok = h_ok & (iw >= 0) & (iw < W)
            x = tl.load(x_ptr + ((row + iw) * C)[:, None] + rc[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
            w = tl.load(w_ptr + (kh * KW + kw) * C + rc, mask=c_ok, other=0.0)
            acc += x.to(tl.float32) * w[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rc, mask=c_ok, other=0.0)[None, :]
    offs = rp[:, None] * C + rc[None, :]
    mask = p_ok[:, None] & c_ok[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    acc = activate(acc, ACT, alpha, beta)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


class TritonDepthwiseConv(Tactic):
    kind = LayerKind.CONVOLUTION
    device = "cuda"

    def __init__(self, block_p: int, block_c: int, warps: int) -> None:
        self.block_p, self.block_c, self.warps = block_p, block_c, warps
        self.name = f"cuda.convolution.triton_depthwise_{block_p}x{block_c}_w{warps}"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        x, w = layer.inputs[0], ctx.constant(layer, 1)
        if w is None or w.dim() != 4 or x is None or x.dtype not in FLOAT_TYPES or x.shape is None or len(x.shape) != 4:
            return False
        c = w.shape[0]
        if w.shape[1] != 1 or p.num_groups != c or x.shape[1] != c:  # one filter per channel
            return False
        if len(layer.inputs) > 2 and layer.inputs[2] is not None and ctx.constant(layer, 2) is None:
            return False
        if p.activation not in EPILOGUE_ACTIVATIONS or p.padding_mode not in FLOOR_PADDING_MODES:
            return False
        return self.block_c <= max(16, triton.next_power_of_2(c))  # no tile mostly past the channels

    def prepare(self, layer, ctx):
        p = layer.params
        w = ctx.constant(layer, 1)
        c, _, kh, kw = w.shape
        taps = w.reshape(c, kh * kw).t().float().contiguous()  # [KH*KW, C]
        b = ctx.constant(layer, 2) if len(layer.inputs) > 2 else None
        bias = None if b is None else b.reshape(-1).float().contiguous()
        return p, taps, bias, (kh, kw)

    def run(self, state, inputs):
        p, taps, bias, window = state
        x = inputs[0].contiguous(memory_format=torch.channels_last)
        residual = inputs[3] if len(inputs) > 3 else None
        n, c, h, w = x.shape
        stride, dilation, pre, (oh, ow) = window_geometry(p, (h, w), window)
        y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        if residual is not None:
            residual = residual.contiguous(memory_format=torch.channels_last)
        pixels = n * oh * ow
        if pixels and c:
            grid = (triton.cdiv(pixels, self.block_p), triton.cdiv(c, self.block_c))
            _depthwise_nhwc[grid](
                x, taps, bias if bias is not None else taps, residual if residual is not None else y, y,
                pixels, h, w, oh, ow, float(p.activation_alpha), float(p.activation_beta),
                C=c, KH=window[0], KW=window[1], SH=stride[0], SW=stride[1], PH=pre[0], PW=pre[1],
                DH=dilation[0], DW=dilation[1], HAS_BIAS=bias is not None, HAS_RES=residual is not None,
                ACT=EPILOGUE_ACTIVATIONS[p.activation], BIG=max(x.numel(), y.numel()) + self.block_p * c >= 2**31,
                BLOCK_P=self.block_p, BLOCK_C=self.block_c, num_warps=self.warps, **launch_options(y))
        return [y]


# (BLOCK_P pixels, BLOCK_C channels, warps): wide channel tiles for the late, deep layers;
# small tiles so that batch-1 layers still spread over every SM.
CONFIGS = [(64, 32, 4), (32, 64, 4), (16, 128, 4), (8, 64, 2), (32, 32, 2)]
for _cfg in CONFIGS:
    register(TritonDepthwiseConv(*_cfg))
