"""``cuda.convolution.triton_gemm_<tiles>``: a 1x1 convolution (stride 1, no padding, one group)
on channels-last tensors as one Triton GEMM with its whole epilogue, ``act(x @ W + bias +
residual)``.

Channels-last, a 1x1 convolution is exactly a GEMM over pixels: ``[N*H*W, C] @ [C, K]``, both
read in place.  cuDNN runs it as a cuBLAS GEMM and the bias/ReLU6/SiLU and residual add are
another pass over the output (MobileNet's and EfficientNet's expand and project convolutions
have few input channels, so that pass costs about as much as the GEMM).  The kernel is
:func:`kilnrt.kernels.triton.gemm.gemm`; every tile configuration is its own tactic, timed by
the builder against the cuDNN tactics.
"""
from __future__ import annotations

import torch

from kilnrt.kernels.gemm_rows import strided_rows
from kilnrt.kernels.registry import register, static_dims
from kilnrt.kernels.triton.epilogue import EPILOGUE_ACTIVATIONS
from kilnrt.kernels.triton.gemm import TiledTactic, gemm, gemm_shape_ok
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind, PaddingMode


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` as its channels-last ``[N*H*W, C]`` rows (a view when already channels-last)."""
    return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, t.shape[1])


class TritonConvGemm(TiledTactic):
    kind = LayerKind.CONVOLUTION
    device = "cuda"
    prefix = "cuda.convolution.triton_gemm_"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        x, w = layer.inputs[0], ctx.constant(layer, 1)
        if w is None or w.dim() != 4 or tuple(w.shape[2:]) != (1, 1) or p.num_groups != 1:
            return False
        if x is None or x.dtype not in (DataType.HALF, DataType.BF16) or x.shape is None or len(x.shape) != 4:
            return False
        if any(s != 1 for s in p.stride_nd) or any(p.pre_padding) or any(p.post_padding):
            return False
        if p.padding_mode not in (PaddingMode.EXPLICIT_ROUND_DOWN, PaddingMode.SAME_UPPER, PaddingMode.SAME_LOWER):
            return False  # SAME pads a 1x1 stride-1 window by nothing
        if len(layer.inputs) > 2 and layer.inputs[2] is not None and ctx.constant(layer, 2) is None:
            return False
        return p.activation in EPILOGUE_ACTIVATIONS and gemm_shape_ok(w.shape[1], w.shape[0])

    def prepare(self, layer, ctx):
        p = layer.params
        w = ctx.constant(layer, 1)
        weight = w.reshape(w.shape[0], w.shape[1]).t().contiguous()  # [C, K]
        b = ctx.constant(layer, 2) if len(layer.inputs) > 2 else None
        bias = None if b is None else b.reshape(-1).to(weight.dtype).contiguous()
        return weight, bias, EPILOGUE_ACTIVATIONS[p.activation], p.activation_alpha, p.activation_beta

    def run(self, state, inputs):
        weight, bias, act, alpha, beta = state
        x = inputs[0]
        residual = inputs[3] if len(inputs) > 3 else None
        n, _, h, w = x.shape
        c = gemm(_rows(x), weight, bias, None if residual is None else _rows(residual), act, alpha, beta,
                 self.config)
        return [c.view(n, h, w, weight.shape[1]).permute(0, 3, 1, 2)]  # [N, K, H, W], channels-last

    def can_write_into(self, layer, ctx, out) -> bool:
        """Into an ``[N, K, H, W]`` view whose pixels are one stride apart with dense channels: a
        channel slice of a channels-last buffer (a concatenation along channels)."""
        return nhwc_slice_ok(layer, out)

    def run_into(self, state, inputs, out) -> None:
        weight, bias, act, alpha, beta = state
        residual = inputs[3] if len(inputs) > 3 else None
        gemm(_rows(inputs[0]), weight, bias, None if residual is None else _rows(residual), act, alpha, beta,
             self.config, out=nhwc_rows(out))


def nhwc_rows(out: torch.Tensor) -> torch.Tensor | None:
    """An ``[N, K, H, W]`` view as its ``[N*H*W, K]`` pixel rows (see :func:`strided_rows`)."""
    return strided_rows(out.permute(0, 2, 3, 1)) if out.dim() == 4 else None


def nhwc_slice_ok(layer, out: torch.Tensor) -> bool:
    """Whether a channels-last convolution tactic can store ``layer``'s output into ``out``."""
    x = layer.inputs[0]
    return x.dtype is not None and out.dtype == x.dtype.torch and static_dims(out.shape) \
        and nhwc_rows(out) is not None


# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps): the expand/project convolutions of mobile networks
# have 16 to 1152 channels, so short K tiles; 128-row tiles for the large batches.
CONFIGS = [(128, 64, 32, 4, 4), (64, 64, 64, 3, 4), (128, 128, 64, 3, 4), (32, 64, 64, 3, 4), (64, 128, 32, 4, 4)]
for _cfg in CONFIGS:
    register(TritonConvGemm(*_cfg))
