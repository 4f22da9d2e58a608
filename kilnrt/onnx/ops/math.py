"""Importers for math: binary elementwise, unary, activations, variadic Sum/Max/Min/Mean, scans,
Einsum, Det and the Lp / mean-variance normalizations."""
from __future__ import annotations

from functools import reduce as _fold

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import (ActivationParams, ActivationType as A, CumulativeParams, EinsumParams,
                                   ElementWiseOperation as E, IdentityParams, LayerKind, PluginParams,
                                   ReduceOperation as R, ReduceParams, SelectParams, UnaryOperation as U)
from kilnrt.onnx.registry import importer


def legacy_broadcast(ctx, a, b, broadcast, axis):
    """Opset < 7 broadcasting: with ``broadcast=1`` B's dims match A's from ``axis`` on
    (from the end when ``axis`` is not given); B gets trailing size-1 dims to align."""
    if not broadcast or axis is None:
        return b
    ra, rb = ctx.rank(a), ctx.rank(b)
    start = int(axis) % ra if ra else 0
    ctx.require(start + rb <= ra, ErrorCode.INVALID_NODE,
                f"broadcast axis={axis}: B of rank {rb} does not fit A of rank {ra} from that axis")
    trailing = ra - start - rb
    return ctx.unsqueeze(b, [rb + i for i in range(trailing)]) if trailing else b


def _binary(op_type: str, op: E, since: int = 1, legacy: bool = False) -> None:
    def imp(ctx, node, a, b):
        return ctx.elementwise(op, a, b)

    def imp_legacy(ctx, node, a, b, *, broadcast=0, axis=None, consumed_inputs=None):
        return ctx.elementwise(op, a, legacy_broadcast(ctx, a, b, broadcast, axis))

    for fn in (imp, imp_legacy):
        fn.__name__ = op_type.lower()
        fn.__doc__ = f"{op_type}: elementwise {op.value} with numpy broadcasting."
    imp_legacy.__doc__ = f"{op_type} (opset < 7): elementwise {op.value}; `broadcast`/`axis` align B to A."
    if legacy:
        importer(op_type, since=1)(imp_legacy)
        importer(op_type, since=7)(imp)
    else:
        importer(op_type, since=since)(imp)


for _op, _e in [("Add", E.SUM), ("Sub", E.SUB), ("Mul", E.PROD), ("Div", E.DIV), ("Pow", E.POW),
                ("And", E.AND), ("Or", E.OR), ("Xor", E.XOR), ("Equal", E.EQUAL), ("Greater", E.GREATER),
                ("Less", E.LESS)]:
    _binary(_op, _e, legacy=True)
for _op, _e in [("GreaterOrEqual", E.GREATER_EQUAL), ("LessOrEqual", E.LESS_EQUAL)]:
    _binary(_op, _e, since=12)
for _op, _e in [("BitwiseAnd", E.BITWISE_AND), ("BitwiseOr", E.BITWISE_OR), ("BitwiseXor", E.BITWISE_XOR)]:
    _binary(_op, _e, since=18)


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


@importer("PRelu", since=1)
def prelu_v1(ctx, node, x, slope, *, consumed_inputs=None):
    """PRelu (opset < 7): a 1-D slope of C values applies along the channel axis 1."""
    rank, srank = ctx.rank(x), ctx.rank(slope)
    if srank == 1 and rank > 2 and slope.shape[0] != 1:
        slope = ctx.unsqueeze(slope, list(range(1, rank - 1)))
    return prelu(ctx, node, x, slope)


@importer("PRelu", since=7)
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


def _const(ctx, value, like):
    return ctx.constant(np.asarray(value, dtype=ctx.dtype(like).numpy))


@importer("Shrink", since=9)
def shrink(ctx, node, x, *, bias=0.0, lambd=0.5):
    """Shrink: x + bias where x < -lambd, x - bias where x > lambd, else 0."""
    low = ctx.elementwise(E.LESS, x, _const(ctx, -lambd, x))
    high = ctx.elementwise(E.GREATER, x, _const(ctx, lambd, x))
    inner = ctx.out(LayerKind.SELECT, SelectParams(), high, ctx.elementwise(E.SUB, x, _const(ctx, bias, x)),
                    _const(ctx, 0, x))
    return ctx.out(LayerKind.SELECT, SelectParams(), low, ctx.elementwise(E.SUM, x, _const(ctx, bias, x)), inner)


@importer("Swish", since=24)
def swish(ctx, node, x, *, alpha=1.0):
    """Swish: x * sigmoid(alpha * x) (SiLU when alpha = 1)."""
    if alpha == 1.0:
        return _activation(ctx, A.SILU, x)
    gate = _activation(ctx, A.SIGMOID, ctx.elementwise(E.PROD, x, _const(ctx, alpha, x)))
    return ctx.elementwise(E.PROD, x, gate)


def _scan(ctx, x, axis, op: R, exclusive, reverse):
    if ctx.dtype(axis) != DataType.INT64:
        axis = ctx.cast(axis, DataType.INT64)
    return ctx.out(LayerKind.CUMULATIVE, CumulativeParams(bool(exclusive), bool(reverse), op), x, axis)


@importer("CumSum", since=11)
def cum_sum(ctx, node, x, axis, *, exclusive=0, reverse=0):
    """CumSum along a (run-time) axis; exclusive drops the element itself, reverse scans from the end."""
    return _scan(ctx, x, axis, R.SUM, exclusive, reverse)


@importer("CumProd", since=26)
def cum_prod(ctx, node, x, axis, *, exclusive=0, reverse=0):
    """CumProd along a (run-time) axis; exclusive drops the element itself, reverse scans from the end."""
    return _scan(ctx, x, axis, R.PROD, exclusive, reverse)


@importer("Einsum", since=12)
def einsum(ctx, node, *inputs, equation=""):
    """Einsum: any equation torch.einsum accepts (explicit or implicit output, ellipsis)."""
    ctx.require(equation, ErrorCode.INVALID_NODE, "attribute 'equation' is required")
    return ctx.out(LayerKind.EINSUM, EinsumParams(equation.replace(" ", "")), *inputs)


@importer("Det", since=11)
def det(ctx, node, x):
    """Det: determinants of the square matrices in the last two dims (built-in plugin)."""
    return ctx.out(LayerKind.PLUGIN, PluginParams("Det", "1"), x)


def _reduce(ctx, x, op: R, axes, keep=True):
    return ctx.out(LayerKind.REDUCE, ReduceParams(op, tuple(int(a) for a in axes), keep), x)


@importer("LpNormalization", since=1)
def lp_normalization(ctx, node, x, *, axis=-1, p=2):
    """LpNormalization: x / ||x||_p along ``axis`` (p = 1 or 2); 0 where the norm is 0."""
    ctx.require(p in (1, 2), ErrorCode.UNSUPPORTED_NODE_ATTR, f"p={p}; supported: 1, 2")
    if p == 1:
        norm = _reduce(ctx, ctx.unary(U.ABS, x), R.SUM, [axis])
    else:
        norm = ctx.unary(U.SQRT, _reduce(ctx, ctx.elementwise(E.PROD, x, x), R.SUM, [axis]))
    zero = _const(ctx, 0, x)
    return ctx.out(LayerKind.SELECT, SelectParams(), ctx.elementwise(E.EQUAL, norm, zero), zero,
                   ctx.elementwise(E.DIV, x, norm))


@importer("MeanVarianceNormalization", since=9)
def mean_variance_normalization(ctx, node, x, *, axes=(0, 2, 3)):
    """MeanVarianceNormalization: (x - mean) / (sqrt(variance) + 1e-9) over ``axes``."""
    centered = ctx.elementwise(E.SUB, x, _reduce(ctx, x, R.AVG, axes))
    variance = _reduce(ctx, ctx.elementwise(E.PROD, centered, centered), R.AVG, axes)
    std = ctx.elementwise(E.SUM, ctx.unary(U.SQRT, variance), _const(ctx, 1e-9, x))
    return ctx.elementwise(E.DIV, centered, std)
