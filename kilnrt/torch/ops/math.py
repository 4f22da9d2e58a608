"""ATen importers for pointwise math, activations, comparisons, reductions and casts."""
from __future__ import annotations

import operator

import numpy as np
import torch

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Tensor
from kilnrt.network.layers import (ActivationParams, ActivationType as Act, ElementWiseOperation as E, LayerKind,
                                   ReduceOperation, ReduceParams, SelectParams, UnaryOperation as U)
from kilnrt.torch.registry import aten

A = torch.ops.aten


def result_dtype(ctx, a, b) -> DataType:
    """torch's type promotion of two operands (tensors or python numbers; 0-d tensors and numbers are weaker)."""
    probes = [torch.empty(() if ctx.rank(v) == 0 else (1,), dtype=ctx.dtype(v).torch) if isinstance(v, Tensor) else v
              for v in (a, b)]
    return DataType.from_torch(torch.result_type(*probes))


def _binary(ctx, op, a, b, dtype: DataType | None = None) -> Tensor:
    dt = dtype or ctx.out_dtype() or result_dtype(ctx, a, b)
    return ctx.elementwise(op, ctx.tensor(a, dt), ctx.tensor(b, dt))


def _scaled(ctx, other, alpha, dtype):
    if alpha == 1:
        return other
    return _binary(ctx, E.PROD, other, alpha, dtype)


@aten(A.add.Tensor, A.add.Scalar)
def add(ctx, self, other, alpha=1):
    """add: self + alpha * other."""
    dt = ctx.out_dtype() or result_dtype(ctx, self, other)
    return _binary(ctx, E.SUM, self, _scaled(ctx, other, alpha, dt), dt)


@aten(A.sub.Tensor, A.sub.Scalar)
def sub(ctx, self, other, alpha=1):
    """sub: self - alpha * other."""
    dt = ctx.out_dtype() or result_dtype(ctx, self, other)
    return _binary(ctx, E.SUB, self, _scaled(ctx, other, alpha, dt), dt)


@aten(A.rsub.Scalar, A.rsub.Tensor)
def rsub(ctx, self, other, alpha=1):
    """rsub: other - alpha * self."""
    dt = ctx.out_dtype() or result_dtype(ctx, self, other)
    return _binary(ctx, E.SUB, other, _scaled(ctx, self, alpha, dt), dt)


@aten(A.mul.Tensor, A.mul.Scalar)
def mul(ctx, self, other):
    """mul: an elementwise product."""
    return _binary(ctx, E.PROD, self, other)


@aten(A.div.Tensor, A.div.Scalar)
def div(ctx, self, other):
    """div: true division (integers promote to float)."""
    return _binary(ctx, E.DIV, self, other)


@aten(A.div.Tensor_mode, A.div.Scalar_mode)
def div_mode(ctx, self, other, rounding_mode=None):
    """div with rounding_mode: None (true), 'floor', or 'trunc' (integers only)."""
    dt = ctx.out_dtype() or result_dtype(ctx, self, other)
    if rounding_mode is None:
        return _binary(ctx, E.DIV, self, other, dt)
    if rounding_mode == "floor":
        return _binary(ctx, E.FLOOR_DIV, self, other, dt)
    ctx.require(rounding_mode == "trunc" and not dt.is_floating, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"rounding_mode={rounding_mode!r} on {dt.name}: supported: None, 'floor', and 'trunc' on integers")
    return _binary(ctx, E.DIV, self, other, dt)


@aten(A.remainder.Tensor, A.remainder.Scalar)
def remainder(ctx, self, other):
    """remainder: the sign of the divisor (python's %)."""
    return _binary(ctx, E.MOD, self, other)


@aten(A.fmod.Tensor, A.fmod.Scalar)
def fmod(ctx, self, other):
    """fmod: the sign of the dividend (C's fmod)."""
    return _binary(ctx, E.FMOD, self, other)


@aten(A.pow.Tensor_Scalar, A.pow.Tensor_Tensor, A.pow.Scalar)
def pow_(ctx, self, exponent):
    """pow: x ** 2 as a product, x ** 0.5 as a square root, else a POW layer."""
    dt = ctx.out_dtype() or result_dtype(ctx, self, exponent)
    if isinstance(self, Tensor) and exponent == 2 and not isinstance(exponent, Tensor):
        x = ctx.tensor(self, dt)
        return ctx.elementwise(E.PROD, x, x)
    if isinstance(self, Tensor) and exponent == 0.5 and not isinstance(exponent, Tensor) and dt.is_floating:
        return ctx.unary(U.SQRT, ctx.tensor(self, dt))
    return _binary(ctx, E.POW, self, exponent, dt)


@aten(A.maximum.default, A.max.other)
def maximum(ctx, self, other):
    """maximum: an elementwise MAX."""
    return _binary(ctx, E.MAX, self, other)


@aten(A.minimum.default, A.min.other)
def minimum(ctx, self, other):
    """minimum: an elementwise MIN."""
    return _binary(ctx, E.MIN, self, other)


_COMPARE = {A.eq.Tensor: E.EQUAL, A.eq.Scalar: E.EQUAL, A.lt.Tensor: E.LESS, A.lt.Scalar: E.LESS,
            A.gt.Tensor: E.GREATER, A.gt.Scalar: E.GREATER, A.le.Tensor: E.LESS_EQUAL, A.le.Scalar: E.LESS_EQUAL,
            A.ge.Tensor: E.GREATER_EQUAL, A.ge.Scalar: E.GREATER_EQUAL}


@aten(*_COMPARE)
def compare(ctx, self, other):
    """eq, lt, gt, le, ge: a comparison in the operands' promoted type."""
    return _binary(ctx, _COMPARE[ctx.node.target], self, other, result_dtype(ctx, self, other))


@aten(A.ne.Tensor, A.ne.Scalar)
def not_equal(ctx, self, other):
    """ne: NOT of EQUAL."""
    return ctx.unary(U.NOT, _binary(ctx, E.EQUAL, self, other, result_dtype(ctx, self, other)))


_LOGICAL = {A.logical_and.default: E.AND, A.logical_or.default: E.OR, A.logical_xor.default: E.XOR,
            A.bitwise_and.Tensor: E.AND, A.bitwise_or.Tensor: E.OR}


@aten(*_LOGICAL)
def logical(ctx, self, other):
    """logical_and/or/xor (and bitwise and/or of booleans)."""
    op = _LOGICAL[ctx.node.target]
    if "bitwise" in str(ctx.node.target):
        ctx.require(ctx.dtype(self) == DataType.BOOL, ErrorCode.UNSUPPORTED_NODE_DATATYPE,
                    "bitwise and/or are supported on booleans only")
    return ctx.elementwise(op, ctx.tensor(self, DataType.BOOL), ctx.tensor(other, DataType.BOOL))


@aten(A.logical_not.default, A.bitwise_not.default)
def logical_not(ctx, self):
    """logical_not (and bitwise_not of booleans)."""
    ctx.require(ctx.dtype(self) == DataType.BOOL or "logical" in str(ctx.node.target),
                ErrorCode.UNSUPPORTED_NODE_DATATYPE, "bitwise_not is supported on booleans only")
    return ctx.unary(U.NOT, ctx.tensor(self, DataType.BOOL))


_UNARY = {A.neg.default: U.NEG, A.exp.default: U.EXP, A.log.default: U.LOG, A.sqrt.default: U.SQRT,
          A.abs.default: U.ABS, A.reciprocal.default: U.RECIP, A.erf.default: U.ERF, A.sin.default: U.SIN,
          A.cos.default: U.COS, A.floor.default: U.FLOOR, A.ceil.default: U.CEIL, A.round.default: U.ROUND,
          A.sign.default: U.SIGN, A.isnan.default: U.ISNAN}


@aten(*_UNARY)
def unary(ctx, self):
    """neg, exp, log, sqrt, abs, reciprocal, erf, sin, cos, floor, ceil, round, sign, isnan: a UNARY layer."""
    dt = ctx.out_dtype()
    x = self if dt is None or dt == DataType.BOOL else ctx.tensor(self, dt)
    return ctx.unary(_UNARY[ctx.node.target], x)


@aten(A.rsqrt.default)
def rsqrt(ctx, self):
    """rsqrt: 1 / sqrt(x)."""
    return ctx.unary(U.RECIP, ctx.unary(U.SQRT, ctx.tensor(self, ctx.out_dtype())))


def _act(ctx, x, kind, alpha=0.0, beta=0.0):
    return ctx.out(LayerKind.ACTIVATION, ActivationParams(kind, float(alpha), float(beta)), x)


_ACTIVATIONS = {A.relu.default: Act.RELU, A.sigmoid.default: Act.SIGMOID, A.tanh.default: Act.TANH,
                A.silu.default: Act.SILU, A.hardswish.default: Act.HARD_SWISH, A.mish.default: Act.MISH}


@aten(*_ACTIVATIONS)
def activation(ctx, self):
    """relu, sigmoid, tanh, silu, hardswish, mish: an ACTIVATION layer."""
    return _act(ctx, ctx.tensor(self, ctx.out_dtype()), _ACTIVATIONS[ctx.node.target])


@aten(A.gelu.default)
def gelu(ctx, self, approximate="none"):
    """gelu: the exact (erf) or tanh form."""
    ctx.require(approximate in ("none", "tanh"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"approximate={approximate!r}; supported: 'none', 'tanh'")
    return _act(ctx, self, Act.GELU_ERF if approximate == "none" else Act.GELU_TANH)


@aten(A.hardtanh.default)
def hardtanh(ctx, self, min_val=-1, max_val=1):
    """hardtanh (and relu6): a CLIP activation."""
    return _act(ctx, self, Act.CLIP, min_val, max_val)


@aten(A.hardsigmoid.default)
def hardsigmoid(ctx, self):
    """hardsigmoid: max(0, min(1, x / 6 + 1 / 2))."""
    return _act(ctx, self, Act.HARD_SIGMOID, 1.0 / 6.0, 0.5)


@aten(A.leaky_relu.default)
def leaky_relu(ctx, self, negative_slope=0.01):
    """leaky_relu: a LEAKY_RELU activation."""
    return _act(ctx, self, Act.LEAKY_RELU, negative_slope)


@aten(A.elu.default)
def elu(ctx, self, alpha=1, scale=1, input_scale=1):
    """elu: an ELU activation (scale and input_scale 1; SELU's constants give SELU)."""
    if abs(float(scale) - 1.0507009873554805) < 1e-12 and abs(float(alpha) - 1.6732632423543772) < 1e-12 \
            and input_scale == 1:
        return _act(ctx, self, Act.SELU, alpha, scale)
    ctx.require(scale == 1 and input_scale == 1, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"elu with scale={scale}, input_scale={input_scale}; supported: 1 and 1 (or SELU's constants)")
    return _act(ctx, self, Act.ELU, alpha)


@aten(A.softplus.default)
def softplus(ctx, self, beta=1, threshold=20):
    """softplus: log(1 + exp(x)) for beta 1 and threshold 20."""
    ctx.require(beta == 1 and threshold == 20, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"softplus with beta={beta}, threshold={threshold}; supported: beta=1, threshold=20")
    return _act(ctx, self, Act.SOFTPLUS)


@aten(A.clamp.default, A.clamp.Tensor)
def clamp(ctx, self, min=None, max=None):
    """clamp: an elementwise MAX with min and MIN with max."""
    dt = ctx.out_dtype() or ctx.dtype(self)
    y = ctx.tensor(self, dt)
    if min is not None:
        y = ctx.elementwise(E.MAX, y, ctx.tensor(min, dt))
    if max is not None:
        y = ctx.elementwise(E.MIN, y, ctx.tensor(max, dt))
    return y


@aten(A.clamp_min.default)
def clamp_min(ctx, self, min):
    """clamp_min: an elementwise MAX."""
    return clamp(ctx, self, min, None)


@aten(A.clamp_max.default)
def clamp_max(ctx, self, max):
    """clamp_max: an elementwise MIN."""
    return clamp(ctx, self, None, max)


@aten(A.where.self, A.where.ScalarOther, A.where.ScalarSelf, A.where.Scalar)
def where(ctx, condition, self, other):
    """where: a SELECT layer."""
    dt = ctx.out_dtype() or result_dtype(ctx, self, other)
    return ctx.out(LayerKind.SELECT, SelectParams(), ctx.tensor(condition, DataType.BOOL), ctx.tensor(self, dt),
                   ctx.tensor(other, dt))


@aten(A.masked_fill.Scalar, A.masked_fill.Tensor)
def masked_fill(ctx, self, mask, value):
    """masked_fill: a SELECT of value where mask holds."""
    dt = ctx.dtype(self)
    return ctx.out(LayerKind.SELECT, SelectParams(), ctx.tensor(mask, DataType.BOOL), ctx.tensor(value, dt), self)


def _reduce(ctx, op, x, dim, keepdim, dtype=None):
    out = DataType.from_torch(dtype) if dtype is not None else ctx.out_dtype()
    if out is not None and out != ctx.dtype(x):
        x = ctx.cast(x, out)
    return ctx.out(LayerKind.REDUCE, ReduceParams(op, _axes(ctx, x, dim), bool(keepdim)), x)


@aten(A.sum.dim_IntList)
def sum_dim(ctx, self, dim, keepdim=False, dtype=None):
    """sum over dims: a sum REDUCE (integers and booleans sum in int64, as torch)."""
    return _reduce(ctx, ReduceOperation.SUM, self, dim, keepdim, dtype)


@aten(A.sum.default)
def sum_all(ctx, self, dtype=None):
    """sum of every element: a sum REDUCE to a scalar."""
    return _reduce(ctx, ReduceOperation.SUM, self, None, False, dtype)


@aten(A.mean.dim)
def mean_dim(ctx, self, dim, keepdim=False, dtype=None):
    """mean over dims: an average REDUCE."""
    return _reduce(ctx, ReduceOperation.AVG, self, dim, keepdim, dtype)


@aten(A.mean.default)
def mean_all(ctx, self, dtype=None):
    """mean of every element: an average REDUCE to a scalar."""
    return _reduce(ctx, ReduceOperation.AVG, self, None, False, dtype)


@aten(A.amax.default)
def amax(ctx, self, dim=(), keepdim=False):
    """amax: a max REDUCE."""
    return _reduce(ctx, ReduceOperation.MAX, self, dim, keepdim)


@aten(A.amin.default)
def amin(ctx, self, dim=(), keepdim=False):
    """amin: a min REDUCE."""
    return _reduce(ctx, ReduceOperation.MIN, self, dim, keepdim)


@aten(A.max.default, A.min.default)
def max_all(ctx, self):
    """max / min of every element: a REDUCE to a scalar."""
    op = ReduceOperation.MAX if ctx.node.target is A.max.default else ReduceOperation.MIN
    return _reduce(ctx, op, self, None, False)


@aten(A.any.dim, A.any.dims, A.any.default, A.all.dim, A.all.dims, A.all.default)
def any_all(ctx, self, dim=None, keepdim=False):
    """any / all: a max / min REDUCE of the values as 0 and 1."""
    op = ReduceOperation.MAX if "any" in str(ctx.node.target) else ReduceOperation.MIN
    x = ctx.cast(ctx.tensor(self, DataType.BOOL), DataType.INT32)
    y = ctx.out(LayerKind.REDUCE, ReduceParams(op, _axes(ctx, x, dim), bool(keepdim)), x)
    return ctx.cast(y, DataType.BOOL)


def _axes(ctx, x, dim) -> tuple[int, ...]:
    rank = ctx.rank(x)
    if isinstance(dim, int):
        dim = [dim]
    return tuple(range(rank)) if not dim else tuple(sorted(ctx.axis(int(d), rank) for d in dim))


@aten(A.linalg_vector_norm.default)
def linalg_vector_norm(ctx, self, ord=2, dim=None, keepdim=False, dtype=None):  # noqa: A002 - the schema's name
    """linalg_vector_norm (torch.norm, F.normalize): a sum REDUCE of |x|^ord to the power 1 / ord
    (ord 2: sqrt of a sum of squares; ord 1: a sum of |x|); ord ±inf: a max or min REDUCE of |x|."""
    x = self if dtype is None else ctx.cast(self, DataType.from_torch(dtype))
    p = float(ord)
    ctx.require(p != 0, ErrorCode.UNSUPPORTED_NODE_ATTR,
                "ord=0 (a count of nonzero elements) is not supported; use (x != 0).sum(dim)")
    if p in (float("inf"), float("-inf")):
        op = ReduceOperation.MAX if p > 0 else ReduceOperation.MIN
        return _reduce(ctx, op, ctx.unary(U.ABS, x), dim, keepdim)
    if p == 2:
        return ctx.unary(U.SQRT, _reduce(ctx, ReduceOperation.SUM, ctx.elementwise(E.PROD, x, x), dim, keepdim))
    a = ctx.unary(U.ABS, x)
    if p == 1:
        return _reduce(ctx, ReduceOperation.SUM, a, dim, keepdim)
    dt = ctx.dtype(x)
    total = _reduce(ctx, ReduceOperation.SUM, ctx.elementwise(E.POW, a, ctx.tensor(p, dt)), dim, keepdim)
    return ctx.elementwise(E.POW, total, ctx.tensor(1.0 / p, dt))


@aten(A.prod.dim_int)
def prod_dim(ctx, self, dim, keepdim=False, dtype=None):
    """prod over one dim: a product REDUCE."""
    return _reduce(ctx, ReduceOperation.PROD, self, [dim], keepdim, dtype)


@aten(A.var.correction)
def var(ctx, self, dim=None, correction=None, keepdim=False):
    """var: mean((x - mean(x))^2) * n / (n - correction) (correction None: 1)."""
    rank = ctx.rank(self)
    axes = tuple(range(rank)) if not dim else tuple(sorted(ctx.axis(int(d), rank) for d in dim))
    corr = 1 if correction is None else float(correction)
    count = 1
    for a in axes:
        d = self.shape[a]
        ctx.require(isinstance(d, int), ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                    "var needs the reduced dims known at build time")
        count *= d
    mean = ctx.out(LayerKind.REDUCE, ReduceParams(ReduceOperation.AVG, axes, True), self)
    diff = ctx.elementwise(E.SUB, self, mean)
    y = ctx.out(LayerKind.REDUCE, ReduceParams(ReduceOperation.AVG, axes, bool(keepdim)),
                ctx.elementwise(E.PROD, diff, diff))
    if corr:
        y = ctx.elementwise(E.PROD, y, ctx.constant(np.asarray(count / max(count - corr, 0), ctx.dtype(self).numpy)))
    return y


def _cast(ctx, x, dtype):
    if dtype is None:
        return x
    dt = DataType.from_torch(dtype)
    return x if ctx.dtype(x) == dt else ctx.cast(x, dt)


@aten(A.to.dtype)
def to_dtype(ctx, self, dtype, non_blocking=False, copy=False, memory_format=None):
    """to(dtype): a CAST layer (none when the dtype is already right)."""
    return _cast(ctx, self, dtype)


@aten(A._to_copy.default, A.to.dtype_layout, A.to.device)
def to_copy(ctx, self, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False, copy=False,
            memory_format=None):
    """_to_copy / to: a CAST when the dtype changes; devices are the engine's (kilnrt picks where it runs)."""
    return _cast(ctx, self, dtype)


@aten(A.type_as.default)
def type_as(ctx, self, other):
    """type_as: a CAST to other's dtype."""
    return _cast(ctx, self, ctx.dtype(other).torch)


# -- arithmetic on sizes (SymInts): python numbers where known, int64 scalars otherwise --------
_SYM = {operator.add: E.SUM, operator.sub: E.SUB, operator.mul: E.PROD, operator.floordiv: E.FLOOR_DIV,
        operator.mod: E.MOD}


@aten(*_SYM)
def sym_arith(ctx, a, b):
    """+, -, *, //, % on sizes: python arithmetic where both are known, else an int64 ELEMENTWISE."""
    fn = ctx.node.target
    ka, kb = ctx.int_value(a), ctx.int_value(b)
    if ka is not None and kb is not None:
        return fn(ka, kb)
    return ctx.elementwise(_SYM[fn], ctx.tensor(a, DataType.INT64), ctx.tensor(b, DataType.INT64))


@aten(operator.neg)
def sym_neg(ctx, a):
    """-size: python where known, else an int64 NEG."""
    k = ctx.int_value(a)
    return -k if k is not None else ctx.unary(U.NEG, ctx.tensor(a, DataType.INT64))


_SYM_COMPARE = {operator.lt: E.LESS, operator.le: E.LESS_EQUAL, operator.gt: E.GREATER,
                operator.ge: E.GREATER_EQUAL, operator.eq: E.EQUAL}


@aten(*_SYM_COMPARE, operator.ne)
def sym_compare(ctx, a, b):
    """<, <=, >, >=, ==, != on sizes (as in torch's run-time checks): python where known, else a bool."""
    fn = ctx.node.target
    ka, kb = ctx.int_value(a), ctx.int_value(b)
    if ka is not None and kb is not None:
        return fn(ka, kb)
    ta, tb = ctx.tensor(a, DataType.INT64), ctx.tensor(b, DataType.INT64)
    if fn is operator.ne:
        return ctx.unary(U.NOT, ctx.elementwise(E.EQUAL, ta, tb))
    return ctx.elementwise(_SYM_COMPARE[fn], ta, tb)
