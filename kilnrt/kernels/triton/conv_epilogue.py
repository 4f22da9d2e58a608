"""``cuda.convolution.cudnn_nhwc_triton_epilogue``: cuDNN's channels-last convolution without
its bias, then the whole epilogue ``act(y + bias [+ residual])`` in one generated Triton pass.

PyTorch adds a convolution's bias in a separate, non-vectorized broadcast kernel when the
output is channels-last (and cuDNN's fused bias runs only with ReLU), and any other activation
(MobileNet's ReLU6, EfficientNet's SiLU) is another full pass over the output.  Here the bias,
the residual and the activation are one pass, reading the output as ``[N*H*W, C]`` rows.
The builder times it against the plain cuDNN tactics and keeps whichever is faster.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kilnrt.kernels.cpu.conv import resolve_padding, torch_pad_list
from kilnrt.kernels.registry import Tactic, tactic
from kilnrt.kernels.triton import FLOAT_TYPES
from kilnrt.kernels.triton.pointwise import OPS, Node, PointwiseKernel, input_node
from kilnrt.network.layers import ElementWiseOperation as E, LayerKind


@tactic
class CudnnConvTritonEpilogue(Tactic):
    name = "cuda.convolution.cudnn_nhwc_triton_epilogue"
    kind = LayerKind.CONVOLUTION
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        w, b = ctx.constant(layer, 1), ctx.constant(layer, 2)
        x = layer.inputs[0]
        if w is None or w.dim() != 4 or x is None or x.dtype not in FLOAT_TYPES:
            return False
        has_residual = len(layer.inputs) > 3 and layer.inputs[3] is not None
        if p.activation is not None and p.activation not in OPS:
            return False
        return b is not None or has_residual  # else the plain cuDNN tactic has nothing to add

    def prepare(self, layer, ctx):
        p = layer.params
        w = ctx.constant(layer, 1).contiguous(memory_format=torch.channels_last)
        b = ctx.constant(layer, 2)
        tree, n = input_node(0), 1
        if b is not None:
            tree, n = Node(E.SUM, (tree, input_node(n))), n + 1
            b = b.reshape(1, -1, 1, 1).to(w.dtype)
        residual = len(layer.inputs) > 3 and layer.inputs[3] is not None
        if residual:
            tree, n = Node(E.SUM, (tree, input_node(n))), n + 1
        if p.activation is not None:
            tree = Node(p.activation, (tree,), (p.activation_alpha, p.activation_beta))
        return p, w, b, residual, PointwiseKernel(tree, n)

    def run(self, state, inputs):
        p, w, b, residual, epilogue = state
        x = inputs[0].contiguous(memory_format=torch.channels_last)
        stride = list(p.stride_nd) or [1, 1]
        dilation = list(p.dilation_nd) or [1, 1]
        pre, post = resolve_padding(tuple(x.shape[2:]), tuple(w.shape[2:]), stride, dilation, p.pre_padding,
                                    p.post_padding, p.padding_mode)
        if pre != post:
            x = F.pad(x, torch_pad_list(pre, post))
            pre = (0,) * len(pre)
        y = F.conv2d(x, w, None, stride, list(pre), dilation, p.num_groups)
        args = [y]
        if b is not None:
            args.append(b)
        if residual:
            args.append(inputs[3].contiguous(memory_format=torch.channels_last))
        return [epilogue(*args)]
