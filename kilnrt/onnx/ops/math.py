"""Importers for pointwise math: binary elementwise, unary, activations, variadic Sum/Max/Min/Mean."""
from __future__ import annotations

from functools import reduce as _fold

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.layers import (ActivationParams, ActivationType as A, ElementWiseOperation as E,
                                   IdentityParams, LayerKind, SelectParams, UnaryOperation as U)
from kilnrt.onnx.registry import importer


def _binary(op_type: str, op: E, since: int = 1) -> None:
    def imp(ctx, node, a, b):
        return ctx.elementwise(op, a, b)

    imp.__name__ = op_type.lower()
    imp.__doc__ = f"{op_type}: elementwise {op.value} with numpy broadcasting."
    importer(op_type, since=since)(imp)


for _op, _e in [("Add", E.SUM), ("Sub", E.SUB), ("Mul", E.PROD), ("Div", E.DIV), ("Pow", E.POW),
                ("And", E.AND), ("Or", E.OR), ("Xor", E.XOR), ("Equal", E.EQUAL), ("Greater", E.GREATER),
                ("Less", E.LESS), ("GreaterOrEqual", E.GREATER_EQUAL), ("LessOrEqual", E.LESS_EQUAL),
                ("BitwiseAnd", E.BITWISE_AND), ("BitwiseOr", E.BITWISE_OR), ("BitwiseXor", E.BITWISE_XOR)]:
    _binary(_op, _e)


@importer("Mod", since=10)
def mod(ctx, node, a, b, *, fmod=0):
    """Mod: fmod=0 takes the divisor's sign (integers only in ONNX), fmod=1 the dividend's."""
    return ctx.elementwise(E.FMOD if fmod else E.MOD, a, b)


@importer("BitShift", since=11)
def bit_shift(ctx, node, x, y, *, direction=""):
    ctx.require(direction in ("LEFT", "RIGHT"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"direction={direction!r} is not valid; use LEFT or RIGHT")
    return ctx.elementwise(E.SHIFT_LEFT if direction == "LEFT" else E.SHIFT_RIGHT, x, y)


def _unary(op_type: str, op: U, since: int = 1) -> None:
    def imp(ctx, node, x):
        return ctx.unary(op, x)

    imp.__name__ = op_type.lower()
    imp.__doc__ = f"{op_type}: unary {op.value}."
    importer(op_type, since=since)(imp)


for _op, _u in [("Exp", U.EXP), ("Log", U.LOG), ("Sqrt", U.SQRT), ("Reciprocal", U.RECIP),
                ("Abs", U.ABS), ("Neg", U.NEG), ("Sin", U.SIN), ("Cos", U.COS), ("Tan", U.TAN),
                ("Sinh", U.SINH), ("Cosh", U.COSH), ("Asin", U.ASIN), ("Acos", U.ACOS),
                ("Atan", U.ATAN), ("Asinh", U.ASINH), ("Acosh", U.ACOSH), ("Atanh", U.ATANH),
                ("Ceil", U.CEIL), ("Floor", U.FLOOR), ("Erf", U.ERF), ("Not", U.NOT), ("Sign", U.SIGN),
                ("Round", U.ROUND), ("IsNaN", U.ISNAN), ("BitwiseNot", U.BITWISE_NOT)]:
    _unary(_op, _u)


@importer("IsInf", since=10)
def is_inf(ctx, node, x, *, detect_negative=1, detect_positive=1):
    if detect_negative and detect_positive:
        return ctx.unary(U.ISINF, x)
    if detect_positive:
        return ctx.unary(U.ISINF_POS, x)
    if detect_negative:
        return ctx.unary(U.ISINF_NEG, x)
    isinf = ctx.unary(U.ISINF, x)
    return ctx.elementwise(E.AND, isinf, ctx.unary(U.NOT, isinf))


def _activation(ctx, kind: A, x, alpha: float = 0.0, beta: float = 0.0):
    return ctx.out(LayerKind.ACTIVATION, ActivationParams(kind, float(alpha), float(beta)), x)


@importer("Relu")
def relu(ctx, node, x):
    return _activation(ctx, A.RELU, x)


@importer("Sigmoid")
def sigmoid(ctx, node, x):
    return _activation(ctx, A.SIGMOID, x)


@importer("Tanh")
def tanh(ctx, node, x):
    return _activation(ctx, A.TANH, x)


@importer("LeakyRelu")
def leaky_relu(ctx, node, x, *, alpha=0.01):
    return _activation(ctx, A.LEAKY_RELU, x, alpha)


@importer("Elu")
def elu(ctx, node, x, *, alpha=1.0):
    return _activation(ctx, A.ELU, x, alpha)


@importer("Selu")
def selu(ctx, node, x, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    return _activation(ctx, A.SELU, x, alpha, gamma)


@importer("Celu", since=12)
def celu(ctx, node, x, *, alpha=1.0):
    return _activation(ctx, A.CELU, x, alpha)


@importer("Softsign")
def softsign(ctx, node, x):
    return _activation(ctx, A.SOFTSIGN, x)


@importer("Softplus")
def softplus(ctx, node, x):
    return _activation(ctx, A.SOFTPLUS, x)


@importer("HardSigmoid")
def hard_sigmoid(ctx, node, x, *, alpha=0.2, beta=0.5):
    return _activation(ctx, A.HARD_SIGMOID, x, alpha, beta)


@importer("HardSwish", since=14)
def hard_swish(ctx, node, x):
    return _activation(ctx, A.HARD_SWISH, x)


@importer("ThresholdedRelu", since=10)
def thresholded_relu(ctx, node, x, *, alpha=1.0):
    return _activation(ctx, A.THRESHOLDED_RELU, x, alpha)


@importer("Mish", since=18)
def mish(ctx, node, x):
    return _activation(ctx, A.MISH, x)


@importer("Gelu", since=20)
def gelu(ctx, node, x, *, approximate="none"):
    ctx.require(approximate in ("none", "tanh"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"approximate={approximate!r}; supported: none, tanh")
    return _activation(ctx, A.GELU_TANH if approximate == "tanh" else A.GELU_ERF, x)


@importer("PRelu")
def prelu(ctx, node, x, slope):
    """PRelu: where(x < 0, slope * x, x)."""
    zero = ctx.constant(np.zeros((), dtype=ctx.dtype(x).numpy))
    neg = ctx.elementwise(E.LESS, x, zero)
    return ctx.out(LayerKind.SELECT, SelectParams(), neg, ctx.elementwise(E.PROD, x, slope), x)


@importer("Clip", since=1)
def clip_v1(ctx, node, x, *, min=float("-inf"), max=float("inf")):
    return _activation(ctx, A.CLIP, x, min, max)


@importer("Clip", since=11)
def clip(ctx, node, x, min=None, max=None):
    """Clip: an activation when the bounds are constants, else Max/Min elementwise."""
    lo = None if min is None else ctx.value(min)
    hi = None if max is None else ctx.value(max)
    if (min is None or lo is not None) and (max is None or hi is not None):
        return _activation(ctx, A.CLIP, x, float("-inf") if lo is None else float(lo),
                           float("inf") if hi is None else float(hi))
    y = x
    if min is not None:
        y = ctx.elementwise(E.MAX, y, min)
    if max is not None:
        y = ctx.elementwise(E.MIN, y, max)
    return y


def _variadic(op: E):
    def imp(ctx, node, *xs):
        ctx.require(len(xs) >= 1, ErrorCode.INVALID_NODE, "needs at least one input")
        if len(xs) == 1:
            return ctx.out(LayerKind.IDENTITY, IdentityParams(), xs[0])
        return _fold(lambda a, b: ctx.elementwise(op, a, b), xs)
    return imp


importer("Sum")(_variadic(E.SUM))
importer("Max")(_variadic(E.MAX))
importer("Min")(_variadic(E.MIN))


@importer("Mean")
def mean(ctx, node, *xs):
    total = _variadic(E.SUM)(ctx, node, *xs)
    if len(xs) == 1:
        return total
    n = ctx.constant(np.asarray(len(xs), dtype=ctx.dtype(xs[0]).numpy))
    return ctx.elementwise(E.DIV, total, n)


@importer("Where", since=9)
def where(ctx, node, condition, x, y):
    return ctx.out(LayerKind.SELECT, SelectParams(), condition, x, y)
