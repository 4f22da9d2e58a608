"""Convolution on CUDA through cuDNN.

``cuda.convolution.cudnn_nhwc`` keeps activations channels-last (NHWC), cuDNN's fast
layout for tensor cores; ``cuda.convolution.cudnn`` uses NCHW.  Weights are converted
once, in ``prepare``.
"""
from __future__ import annotations

import torch

from kilnrt.kernels.cpu.conv import convolution, resolve_padding
from kilnrt.kernels.registry import Tactic, tactic
from kilnrt.network.layers import ActivationType, LayerKind, PaddingMode


class _CudnnConv(Tactic):
    kind = LayerKind.CONVOLUTION
    device = "cuda"
    memory_format = torch.contiguous_format

    def prepare(self, layer, ctx):
        """Weights in this tactic's layout, once (None: the weights are a run-time input)."""
        w = ctx.constant(layer, 1)
        if w is not None and w.dim() == 4:
            w = w.contiguous(memory_format=self.memory_format)
        return layer.params, w

    def run(self, state, inputs):
        params, w = state
        x = inputs[0]
        if x.dim() == 4 and self.memory_format is torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        b = inputs[2] if len(inputs) > 2 else None
        residual = inputs[3] if len(inputs) > 3 else None
        return [convolution(params, x, inputs[1] if w is None else w, b, residual)]


@tactic
class CudnnConvNHWC(_CudnnConv):
    name = "cuda.convolution.cudnn_nhwc"
    memory_format = torch.channels_last

    def supports(self, layer, ctx) -> bool:
        w = ctx.constant(layer, 1)
        return w is not None and w.dim() == 4


@tactic
class CudnnConv(_CudnnConv):
    """NCHW: for 1-D/3-D convolutions and run-time weights. 2-D convolutions with constant
    weights always run NHWC, so that the layout does not alternate between layers (a per-layer
    timing on NCHW inputs would otherwise pick NCHW for some and pay conversions between)."""

    name = "cuda.convolution.cudnn"

    def supports(self, layer, ctx) -> bool:
        w = ctx.constant(layer, 1)
        return w is None or w.dim() != 4


@tactic
class CudnnConvAddRelu(_CudnnConv):
    """cuDNN's fused kernels: ``relu(conv(x) + bias)`` and ``relu(conv(x) + bias + residual)``."""

    name = "cuda.convolution.cudnn_fused_relu"
    memory_format = torch.channels_last

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        w = ctx.constant(layer, 1)
        return (w is not None and w.dim() == 4 and p.activation == ActivationType.RELU
                and p.padding_mode in (PaddingMode.EXPLICIT_ROUND_DOWN, PaddingMode.EXPLICIT_ROUND_UP)
                and tuple(p.pre_padding) == tuple(p.post_padding))

    def run(self, state, inputs):
        p, w = state
        x = inputs[0].contiguous(memory_format=torch.channels_last)
        b = inputs[2] if len(inputs) > 2 else None
        stride = list(p.stride_nd) or [1, 1]
        dilation = list(p.dilation_nd) or [1, 1]
        padding, _ = resolve_padding(tuple(x.shape[2:]), tuple(w.shape[2:]), stride, dilation, p.pre_padding,
                                     p.post_padding, p.padding_mode)
        if len(inputs) > 3 and inputs[3] is not None:
            z = inputs[3].contiguous(memory_format=torch.channels_last)
            return [torch.cudnn_convolution_add_relu(x, w, z, 1.0, b, stride, list(padding), dilation, p.num_groups)]
        return [torch.cudnn_convolution_relu(x, w, b, stride, list(padding), dilation, p.num_groups)]
