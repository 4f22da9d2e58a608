"""Average pooling on CUDA with PyTorch's pooling and its native padding (no padded copy of the
input).

Not max pooling: PyTorch's ``max_pool2d`` propagates NaN, where kilnrt skips it as ONNX's
reference evaluator does (docs/robustness.md), and has no integer kernels; the Triton kernel
and the reference (``cuda.pooling.torch``) skip NaN, so the builder's choice of tactic never
changes a result."""
from __future__ import annotations

import torch.nn.functional as F

from kilnrt.kernels.registry import Tactic, reference_kernel, tactic
from kilnrt.network.layers import LayerKind, PaddingMode, PoolingType


@tactic
class CudaPoolNative(Tactic):
    name = "cuda.pooling.native"
    kind = LayerKind.POOLING
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        window = tuple(p.window_size_nd)
        pre, post = tuple(p.pre_padding) or (0,) * len(window), tuple(p.post_padding) or (0,) * len(window)
        if len(window) != 2 or p.type != PoolingType.AVERAGE or pre != post:
            return False
        if p.padding_mode not in (PaddingMode.EXPLICIT_ROUND_DOWN, PaddingMode.EXPLICIT_ROUND_UP):
            return False
        if any(2 * pad > k for pad, k in zip(pre, window)):
            return False
        # ceil-mode divisors differ between PyTorch and ONNX
        return all(d == 1 for d in p.dilation_nd) and (p.padding_mode == PaddingMode.EXPLICIT_ROUND_DOWN
                                                        or not any(pre))

    def run(self, p, inputs):
        x = inputs[0]
        if p.type != PoolingType.AVERAGE:   # a plan built when this tactic also served max pooling
            return [reference_kernel(LayerKind.POOLING)(p, x)]
        stride = tuple(p.stride_nd) or (1, 1)
        padding = tuple(p.pre_padding) or (0, 0)
        ceil = p.padding_mode == PaddingMode.EXPLICIT_ROUND_UP
        return [F.avg_pool2d(x, p.window_size_nd, stride, padding, ceil, not p.average_count_excludes_padding)]
