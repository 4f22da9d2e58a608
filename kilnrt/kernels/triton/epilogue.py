"""The activations a hand-written kernel (GEMM, depthwise convolution) applies in its epilogue.

``activate(x, ACT, alpha, beta)`` applies the activation named ``ACT`` (a compile-time
string from :data:`EPILOGUE_ACTIVATIONS`) to a float32 tile, with the layer's ``alpha`` and
``beta`` as :mod:`kilnrt.kernels.cpu.pointwise` defines them.  Generated pointwise kernels
render activations from :data:`kilnrt.kernels.triton.pointwise.OPS` instead; the tests
check both against the CPU reference.
"""
from __future__ import annotations

import triton
import triton.language as tl

from kilnrt.kernels.triton.pointwise import tanh
from kilnrt.network.layers import ActivationType as A

EPILOGUE_ACTIVATIONS = {None: "none", A.RELU: "relu", A.CLIP: "clip", A.LEAKY_RELU: "leaky_relu",
                        A.GELU_ERF: "gelu_erf", A.GELU_TANH: "gelu_tanh", A.TANH: "tanh",
                        A.SIGMOID: "sigmoid", A.SILU: "silu", A.HARD_SWISH: "hard_swish",
                        A.HARD_SIGMOID: "hard_sigmoid"}


@triton.jit
def activate(x, ACT: tl.constexpr, alpha, beta):
    if ACT == "relu":
        x = tl.where(x < 0.0, 0.0, x)
    elif ACT == "clip":  # alpha, beta: the bounds (ReLU6: 0, 6)
        x = tl.where(x < alpha, alpha, x)
        x = tl.where(x > beta, beta, x)
    elif ACT == "leaky_relu":
        x = tl.where(x > 0.0, x, x * alpha)
    elif ACT == "gelu_erf":
        x = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif ACT == "gelu_tanh":  # 0.5 * (1 + tanh(u)) == sigmoid(2u)
        x = x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
    elif ACT == "tanh":
        x = tanh(x)
    elif ACT == "sigmoid":
        x = tl.sigmoid(x)
    elif ACT == "silu":
        x = x * tl.sigmoid(x)
    elif ACT == "hard_swish":
        h = x / 6.0 + 0.5
        x = x * tl.where(h < 0.0, 0.0, tl.where(h > 1.0, 1.0, h))
    elif ACT == "hard_sigmoid":
        h = alpha * x + beta
        x = tl.where(h < 0.0, 0.0, tl.where(h > 1.0, 1.0, h))
    return x
