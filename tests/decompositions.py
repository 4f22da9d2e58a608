"""Activation functions written out as the arithmetic exporters emit, for the optimizer's tests:
each builder writes one decomposition into a network (operands in either order) and returns its
output; ``k`` replaces one constant, which makes a near miss."""
from __future__ import annotations

import math

import numpy as np

from kilnrt.network.graph import Network
from kilnrt.network.layers import (ActivationParams, ActivationType as A, ConstantParams, ElementWiseOperation as E,
                                   ElementWiseParams, LayerKind, UnaryOperation as U, UnaryParams)


class Builder:
    """Writes an activation's arithmetic into a network, operands in a chosen order."""

    def __init__(self, net: Network, swap: bool) -> None:
        self.net, self.swap = net, swap

    def c(self, v: float):
        return self.net.add_layer(LayerKind.CONSTANT, ConstantParams(np.asarray(v, np.float32)), []).outputs[0]

    def bin(self, op, a, b):
        if self.swap and op in (E.SUM, E.PROD):
            a, b = b, a
        return self.net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(op), [a, b]).outputs[0]

    def act(self, t, a, alpha=0.0, beta=0.0):
        return self.net.add_layer(LayerKind.ACTIVATION, ActivationParams(t, alpha, beta), [a]).outputs[0]

    def un(self, op, a):
        return self.net.add_layer(LayerKind.UNARY, UnaryParams(op), [a]).outputs[0]


def gelu_erf_half_last(b, x, k=0.5):     # (x * (1 + erf(x / sqrt2))) * 0.5
    inner = b.bin(E.SUM, b.un(U.ERF, b.bin(E.DIV, x, b.c(math.sqrt(2)))), b.c(1.0))
    return b.bin(E.PROD, b.bin(E.PROD, x, inner), b.c(k))


def gelu_erf_half_first(b, x, k=0.5):    # (x * 0.5) * (1 + erf(x * 0.70710678))
    inner = b.bin(E.SUM, b.c(1.0), b.un(U.ERF, b.bin(E.PROD, x, b.c(1 / math.sqrt(2)))))
    return b.bin(E.PROD, b.bin(E.PROD, x, b.c(k)), inner)


def gelu_tanh_pow(b, x, k=0.044715):     # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + k * x^3)))
    cube = b.bin(E.POW, x, b.c(3.0))
    arg = b.bin(E.PROD, b.c(math.sqrt(2 / math.pi)), b.bin(E.SUM, x, b.bin(E.PROD, b.c(k), cube)))
    return b.bin(E.PROD, b.bin(E.PROD, b.c(0.5), x), b.bin(E.SUM, b.c(1.0), b.act(A.TANH, arg)))


def gelu_tanh_cubed(b, x, k=0.044715):   # x^3 as x * x * x, and 0.5 applied last
    cube = b.bin(E.PROD, b.bin(E.PROD, x, x), x)
    arg = b.bin(E.PROD, b.bin(E.SUM, x, b.bin(E.PROD, cube, b.c(k))), b.c(math.sqrt(2 / math.pi)))
    return b.bin(E.PROD, b.bin(E.PROD, x, b.bin(E.SUM, b.act(A.TANH, arg), b.c(1.0))), b.c(0.5))


def silu(b, x, k=1.0):
    return b.bin(E.PROD, x, b.act(A.SIGMOID, x if k == 1.0 else b.bin(E.PROD, x, b.c(k))))


def hard_swish_hard_sigmoid(b, x, k=1 / 6):
    return b.bin(E.PROD, x, b.act(A.HARD_SIGMOID, x, k, 0.5))


def hard_swish_relu6(b, x, k=6.0):        # x * relu6(x + 3) / 6
    return b.bin(E.DIV, b.bin(E.PROD, x, b.act(A.CLIP, b.bin(E.SUM, x, b.c(3.0)), 0.0, 6.0)), b.c(k))


def mish_softplus(b, x, k=1.0):
    sp = b.act(A.SOFTPLUS, x)
    return b.bin(E.PROD, x, b.act(A.TANH, sp if k == 1.0 else b.bin(E.PROD, sp, b.c(k))))


def mish_log_exp(b, x, k=1.0):           # softplus as log(exp(x) + 1)
    return b.bin(E.PROD, x, b.act(A.TANH, b.un(U.LOG, b.bin(E.SUM, b.un(U.EXP, x), b.c(k)))))


# (decomposition, what it becomes, a constant that makes it a near miss)
DECOMPOSITIONS = [(gelu_erf_half_last, A.GELU_ERF, 0.4), (gelu_erf_half_first, A.GELU_ERF, 0.6),
                  (gelu_tanh_pow, A.GELU_TANH, 0.05), (gelu_tanh_cubed, A.GELU_TANH, 0.04),
                  (silu, A.SILU, 1.702), (hard_swish_hard_sigmoid, A.HARD_SWISH, 0.2),
                  (hard_swish_relu6, A.HARD_SWISH, 5.0), (mish_softplus, A.MISH, 2.0), (mish_log_exp, A.MISH, 2.0)]
