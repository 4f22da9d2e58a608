"""One shape and type rule per layer kind.

A rule maps its inputs' :class:`Info` (dtype, symbolic shape, and the value where it is
known: a constant, or a shape computation such as ``Shape -> Gather -> Concat``) to its
outputs' Info.  Dims are ints or sympy expressions (:mod:`kilnrt.network.symbolic`); a size
that depends on data is a fresh symbol from ``ctx.fresh()``.  Values are numpy arrays,
``dtype=object`` where an element is an expression.  Rules never run kernels.

A new layer kind needs one function here: ``@rule(LayerKind.X) def x(ctx, layer, ins)``.
"""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import sympy

from kilnrt.network import plugin as plugins, symbolic as S
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import (ElementWiseOperation as E, FillOperation, GatherMode, LayerKind, MatrixOperation,
                                   PaddingMode, QUANTIZED_KINDS, QuantizedOutput, ReduceOperation, UnaryOperation as U)

MAX_VALUE_ELEMENTS = 1 << 16   # values larger than this are not tracked (only shapes)


@dataclass
class Info:
    dtype: DataType | None
    shape: tuple | None                 # tuple of dims (int | sympy expr), None: unknown rank
    value: np.ndarray | None = None     # known value (object dtype where symbolic)


class ShapeRuleError(ValueError):
    """A rule found its inputs inconsistent (the layer cannot run for any binding)."""


RULES: dict[LayerKind, Callable[..., list[Info]]] = {}


def rule(*kinds: LayerKind):
    def register(fn):
        for k in kinds:
            RULES[k] = fn
        return fn
    return register


# ----------------------------------------------------------------------------- helpers
def _dims(shape) -> tuple:
    return tuple(S.as_dim(d) for d in shape)


def _axis(a: int, rank: int) -> int:
    if not -rank <= a < max(rank, 1):
        raise ShapeRuleError(f"axis {a} is out of range for rank {rank}")
    return a % rank if rank else 0


def numel(shape) -> Any:
    return S.as_dim(functools.reduce(operator.mul, shape, 1))


def broadcast(*shapes) -> tuple | None:
    """Numpy broadcasting of symbolic shapes; None if a rank is unknown."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        out.append(_merge_dims(dims, broadcasting=True))
    return tuple(out)


def _merge_dims(dims, broadcasting: bool):
    """One dim from dims that must agree, or, when broadcasting, agree or be 1.

    Dims that must agree keep the simplest spelling (a number, then an input symbol, then the
    shortest expression).  Broadcast dims that are not provably equal are ``Max(a, b)``: each
    is 1 or both are the same, so the larger is the result (a number that is not 1 decides)."""
    best = None
    for d in dims:
        if broadcasting and d == 1:
            continue
        if best is None:
            best = d
            continue
        same = S.equal(best, d)
        if same is False and isinstance(best, int) and isinstance(d, int):
            raise ShapeRuleError(f"dims {best} and {d} do not broadcast")
        if same is True or not broadcasting:
            if _complexity(d) < _complexity(best):
                best = d
        elif isinstance(best, int) or isinstance(d, int):
            best = best if isinstance(best, int) else d     # a number other than 1 decides
        else:
            best = S.dmax(best, d)
    return 1 if best is None else best


def _complexity(d) -> tuple:
    if isinstance(d, int):
        return (0, 0)
    return (2 if S.is_data_dependent(d) else 1, sympy.count_ops(d))


def values_of(ctx, info: Info | None) -> list | None:
    """A 1-D (or scalar) int input's elements: known values, else fresh symbols when its
    length is known, else None."""
    known = _known(info)
    if known is not None or info is None:
        return known
    if info.shape is not None and len(info.shape) <= 1 and all(isinstance(d, int) for d in info.shape):
        n = info.shape[0] if info.shape else 1
        return [ctx.fresh() for _ in range(n)]
    return None


def _known(info: Info | None) -> list | None:
    """The elements of a known value, else None (no fresh symbols)."""
    if info is None or info.value is None:
        return None
    return [S.as_dim(v) if not isinstance(v, (float, np.floating)) else float(v)
            for v in np.asarray(info.value).reshape(-1).tolist()]


def value_array(values, shape=None, dtype: DataType | None = None) -> np.ndarray | None:
    """A value array: numeric where every element is a number, else dtype=object."""
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    if shape is not None:
        arr = arr.reshape(tuple(int(d) for d in shape))
    return _numeric(arr, dtype)


def _numeric(arr: np.ndarray, dtype: DataType | None) -> np.ndarray:
    if arr.dtype != object:
        return arr
    if all(isinstance(v, (int, float, bool, np.number, np.bool_)) or
           (isinstance(v, sympy.Basic) and v.is_Number) for v in arr.reshape(-1)):
        np_dtype = dtype.numpy if dtype is not None and _numpy_ok(dtype) else None
        try:
            flat = [v if not isinstance(v, sympy.Basic) else (int(v) if v.is_Integer else float(v))
                    for v in arr.reshape(-1)]
            return np.array(flat, dtype=np_dtype).reshape(arr.shape)
        except (TypeError, ValueError, OverflowError):
            return arr
    return arr


def _numpy_ok(dtype: DataType) -> bool:
    try:
        np.dtype(dtype.numpy)
        return True
    except TypeError:
        return False


def _small(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape) and math.prod(shape) <= MAX_VALUE_ELEMENTS


def same(info: Info, dtype: DataType | None = None) -> Info:
    return Info(dtype or info.dtype, info.shape)


def _reshaped(info: Info, shape) -> np.ndarray | None:
    """``info``'s known value in a new static shape (None if unknown, or the shape is not small)."""
    return None if info.value is None or not _small(shape) else np.asarray(info.value).reshape(tuple(shape))


# ----------------------------------------------------------------------------- sources
@rule(LayerKind.CONSTANT)
def constant(ctx, layer, ins):
    w = layer.params.weights
    value = w if w.size <= MAX_VALUE_ELEMENTS else None
    return [Info(DataType.from_numpy(w.dtype), tuple(int(d) for d in w.shape), value)]


@rule(LayerKind.SHAPE)
def shape(ctx, layer, ins):
    x = ins[0]
    if x.shape is None:
        return [Info(DataType.INT64, None)]
    return [Info(DataType.INT64, (len(x.shape),), value_array(list(x.shape), dtype=DataType.INT64))]


@rule(LayerKind.FILL)
def fill(ctx, layer, ins):
    p = layer.params
    if p.op == FillOperation.CONSTANT:
        dims = values_of(ctx, ins[0])
        if dims is None:
            return [Info(p.dtype, None)]
        dims = _dims(dims)
        value = None
        if _small(dims):
            value = np.full(dims, p.value, dtype=p.dtype.numpy) if _numpy_ok(p.dtype) else None
        return [Info(p.dtype, dims, value)]
    start, limit, delta = (values_of(ctx, i) for i in ins[:3])
    if start is None or limit is None or delta is None:
        return [Info(p.dtype, (ctx.fresh(),))]
    s, lim, dl = start[0], limit[0], delta[0]
    if all(isinstance(v, (int, float)) for v in (s, lim, dl)):
        n = max(int(math.ceil((lim - s) / dl)), 0)
        value = (np.arange(n, dtype=np.float64 if p.dtype.is_floating else np.int64) * dl + s).astype(
            p.dtype.numpy) if n <= MAX_VALUE_ELEMENTS and _numpy_ok(p.dtype) else None
        return [Info(p.dtype, (n,), value)]
    n = S.dmax(S.ceildiv(S.as_dim(sympy.sympify(lim) - s), dl) if isinstance(dl, int) and dl > 0
               else S.as_dim(sympy.ceiling((sympy.sympify(lim) - s) / dl)), 0)
    return [Info(p.dtype, (n,))]


# ----------------------------------------------------------------------------- pointwise
_COMPARE = {E.EQUAL, E.GREATER, E.LESS, E.GREATER_EQUAL, E.LESS_EQUAL}
_LOGICAL = {E.AND, E.OR, E.XOR}


def _sym_compare(op, a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return {E.EQUAL: a == b, E.GREATER: a > b, E.LESS: a < b, E.GREATER_EQUAL: a >= b,
                E.LESS_EQUAL: a <= b}[op]
    diff = sympy.sympify(a) - sympy.sympify(b)
    test = {E.EQUAL: lambda: (True if diff == 0 else (False if diff.is_nonzero else None)),
            E.GREATER: lambda: diff.is_positive, E.LESS: lambda: diff.is_negative,
            E.GREATER_EQUAL: lambda: diff.is_nonnegative, E.LESS_EQUAL: lambda: diff.is_nonpositive}[op]()
    if test is None:
        raise _Unknown
    return bool(test)


class _Unknown(Exception):
    pass


def _sym_div(a, b, integer: bool):
    if isinstance(a, int) and isinstance(b, int):
        if b == 0:
            raise _Unknown
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    if not integer:
        return a / b
    return S.floordiv(a, b)   # symbols are positive: truncation is the floor


_SYM_BINARY = {
    E.SUM: operator.add, E.SUB: operator.sub, E.PROD: operator.mul,
    E.MAX: S.dmax, E.MIN: S.dmin, E.FLOOR_DIV: S.floordiv,
    E.MOD: lambda a, b: S.as_dim(sympy.Mod(a, b)) if not (isinstance(a, int) and isinstance(b, int)) else a % b,
    E.POW: lambda a, b: S.as_dim(sympy.sympify(a) ** b),
}


def elementwise_value(op: E, a: np.ndarray, b: np.ndarray, out_dtype: DataType) -> np.ndarray | None:
    """The value of an elementwise op on known values (numbers or expressions)."""
    if a.dtype != object and b.dtype != object:
        return None   # numeric: the caller computes it with numpy
    try:
        a2, b2 = np.broadcast_arrays(a, b)
        out = np.empty(a2.shape, dtype=object)
        integer = not out_dtype.is_floating
        for idx in np.ndindex(a2.shape):
            x, y = _py(a2[idx]), _py(b2[idx])
            if op in _COMPARE:
                out[idx] = _sym_compare(op, x, y)
            elif op == E.DIV:
                out[idx] = S.as_dim(_sym_div(x, y, integer)) if integer else _sym_div(x, y, integer)
            elif op in _SYM_BINARY:
                out[idx] = _SYM_BINARY[op](x, y)
                if integer:
                    out[idx] = S.as_dim(out[idx])
            else:
                return None
        return _numeric(out, out_dtype)
    except (_Unknown, TypeError, ZeroDivisionError):
        return None


def _py(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


_NUMPY_BINARY = {
    E.SUM: np.add, E.SUB: np.subtract, E.PROD: np.multiply, E.MAX: np.maximum, E.MIN: np.minimum,
    E.EQUAL: np.equal, E.GREATER: np.greater, E.LESS: np.less, E.GREATER_EQUAL: np.greater_equal,
    E.LESS_EQUAL: np.less_equal, E.AND: np.logical_and, E.OR: np.logical_or, E.XOR: np.logical_xor,
    E.BITWISE_AND: np.bitwise_and, E.BITWISE_OR: np.bitwise_or, E.BITWISE_XOR: np.bitwise_xor,
}


def _numpy_binary(op, a, b, out_dtype: DataType):
    if op not in _NUMPY_BINARY and op not in (E.DIV, E.FLOOR_DIV, E.MOD, E.FMOD, E.POW):
        return None
    if out_dtype is None or not _numpy_ok(out_dtype) or a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
        return None
    with np.errstate(all="ignore"):
        if op == E.DIV:
            if a.dtype.kind in "iu" and b.dtype.kind in "iu":
                if np.any(b == 0):
                    return None
                r = np.trunc(a.astype(np.float64) / b).astype(out_dtype.numpy)
                return r if np.all(np.abs(a) < 2 ** 52) else None
            r = np.divide(a, b)
        elif op == E.FLOOR_DIV:
            if np.any(b == 0):
                return None
            r = np.floor_divide(a, b)
        elif op == E.MOD:
            if np.any(b == 0) and a.dtype.kind in "iu":
                return None
            r = np.mod(a, b)
        elif op == E.FMOD:
            if np.any(b == 0) and a.dtype.kind in "iu":
                return None
            r = np.fmod(a, b)
        elif op == E.POW:
            r = np.power(a.astype(np.float64), b.astype(np.float64))
        else:
            r = _NUMPY_BINARY[op](a, b)
    return np.asarray(r).astype(out_dtype.numpy)


@rule(LayerKind.ELEMENTWISE)
def elementwise(ctx, layer, ins):
    a, b = ins[0], ins[1]
    op = layer.params.op
    dtype = DataType.BOOL if op in _COMPARE | _LOGICAL else (a.dtype or b.dtype)
    shape = broadcast(a.shape, b.shape)
    value = None
    if a.value is not None and b.value is not None and _small(shape):
        av, bv = np.asarray(a.value), np.asarray(b.value)
        if av.dtype == object or bv.dtype == object:
            value = elementwise_value(op, av, bv, dtype)
        else:
            value = _numpy_binary(op, av, bv, dtype)
    return [Info(dtype, shape, value)]


_BOOL_UNARY = {U.ISINF, U.ISINF_POS, U.ISINF_NEG, U.ISNAN}
_NUMPY_UNARY = {U.NEG: np.negative, U.ABS: np.abs, U.CEIL: np.ceil, U.FLOOR: np.floor, U.SIGN: np.sign,
                U.SQRT: np.sqrt, U.EXP: np.exp, U.LOG: np.log, U.RECIP: np.reciprocal}
_SYM_UNARY = {U.NEG: operator.neg, U.ABS: abs, U.CEIL: sympy.ceiling, U.FLOOR: sympy.floor}


@rule(LayerKind.UNARY)
def unary(ctx, layer, ins):
    x = ins[0]
    op = layer.params.op
    dtype = DataType.BOOL if op in _BOOL_UNARY else x.dtype
    value = None
    if x.value is not None:
        v = np.asarray(x.value)
        if v.dtype == object and op in _SYM_UNARY:
            out = np.empty(v.shape, dtype=object)
            for idx in np.ndindex(v.shape):
                out[idx] = S.as_dim(_SYM_UNARY[op](v[idx])) if not isinstance(v[idx], float) else \
                    float(_NUMPY_UNARY[op](v[idx]))
            value = _numeric(out, dtype)
        elif v.dtype != object and op in _NUMPY_UNARY and v.dtype.kind in "biuf" and _numpy_ok(dtype):
            with np.errstate(all="ignore"):
                value = _NUMPY_UNARY[op](v).astype(dtype.numpy)
        elif v.dtype != object and op == U.NOT:
            value = np.logical_not(v)
    return [Info(dtype, x.shape, value)]


@rule(LayerKind.CAST)
def cast(ctx, layer, ins):
    x = ins[0]
    to = layer.params.to
    value = None
    if x.value is not None:
        v = np.asarray(x.value)
        if v.dtype == object:
            value = v if not to.is_floating and to != DataType.BOOL else (v if to.is_floating else None)
        elif _numpy_ok(to) and v.dtype.kind in "biuf" and to != DataType.BOOL and not (
                to.is_floating is False and v.dtype.kind == "f" and not np.all(np.isfinite(v))):
            with np.errstate(all="ignore"):
                value = v.astype(to.numpy)
        elif to == DataType.BOOL and v.dtype.kind in "biuf":
            value = v != 0
    return [Info(to, x.shape, value)]


@rule(LayerKind.ACTIVATION, LayerKind.SOFTMAX, LayerKind.LRN, LayerKind.CUMULATIVE, LayerKind.REVERSE_SEQUENCE,
      LayerKind.SCATTER, LayerKind.SCALE)
def same_as_first(ctx, layer, ins):
    return [same(ins[0])]


@rule(LayerKind.IDENTITY)
def identity(ctx, layer, ins):
    x = ins[0]
    return [Info(x.dtype, x.shape, x.value)]


@rule(LayerKind.SELECT)
def select(ctx, layer, ins):
    c, a, b = ins[:3]
    shape = broadcast(c.shape, a.shape, b.shape)
    value = None
    if c.value is not None and a.value is not None and b.value is not None and _small(shape):
        cv = np.asarray(c.value)
        if cv.dtype != object:
            value = np.where(cv.astype(bool), np.asarray(a.value), np.asarray(b.value))
            value = _numeric(value.astype(object) if value.dtype == object else value, a.dtype)
    return [Info(a.dtype or b.dtype, shape, value)]


@rule(LayerKind.POINTWISE)
def pointwise(ctx, layer, ins):
    """Each step by the rule of the layer kind it came from."""
    p = layer.params
    infos = [Info(None, None) if i is None else Info(i.dtype, i.shape) for i in ins[:p.num_inputs]]
    for kind, params, operands in p.ops:
        infos.append(RULES[kind](ctx, _Params(params), [infos[o] for o in operands])[0])
    return [Info(infos[p.num_inputs + o].dtype, infos[p.num_inputs + o].shape) for o in p.outputs]


@rule(LayerKind.QUANTIZE)
def quantize(ctx, layer, ins):
    return [same(ins[0], layer.params.to_type)]


@rule(LayerKind.DEQUANTIZE)
def dequantize(ctx, layer, ins):
    return [same(ins[0], layer.params.to_type)]


@rule(LayerKind.NORMALIZATION)
def normalization(ctx, layer, ins):
    out = [same(ins[0])]
    if layer.params.sum_output:
        out.append(same(ins[0]))
    return out


@rule(LayerKind.SQUEEZE_EXCITATION)
def squeeze_excitation(ctx, layer, ins):
    x = ins[0]
    return [Info(x.dtype, None if x.shape is None else tuple(x.shape[:2]) + (1,) * (len(x.shape) - 2))]


# ----------------------------------------------------------------------------- data movement
@rule(LayerKind.CONCATENATION)
def concatenation(ctx, layer, ins):
    shapes = [i.shape for i in ins]
    dtype = next((i.dtype for i in ins if i.dtype is not None), None)
    if any(s is None for s in shapes):
        rank = next((len(s) for s in shapes if s is not None), None)
        if rank is None:
            return [Info(dtype, None)]
        axis = _axis(layer.params.axis, rank)
        known = [s for s in shapes if s is not None]
        return [Info(dtype, tuple(ctx.fresh() if k == axis else _merge_dims([s[k] for s in known], False)
                                  for k in range(rank)))]
    rank = len(shapes[0])
    axis = _axis(layer.params.axis, rank)
    out = []
    for k in range(rank):
        if k == axis:
            out.append(S.as_dim(sum((sympy.sympify(s[k]) for s in shapes), sympy.Integer(0))))
        else:
            out.append(_merge_dims([s[k] for s in shapes], False))
    out = tuple(out)
    value = None
    if all(i.value is not None for i in ins) and _small(out):
        vals = [np.asarray(i.value) for i in ins]
        if any(v.dtype == object for v in vals):
            vals = [v.astype(object) for v in vals]
        value = _numeric(np.concatenate(vals, axis=axis), dtype) if vals[0].ndim else None
    return [Info(dtype, out, value)]


def _shape_from(ctx, info, params_value):
    if info is not None:
        return values_of(ctx, info)
    return None if params_value is None else list(params_value)


@rule(LayerKind.SHUFFLE)
def shuffle(ctx, layer, ins):
    p = layer.params
    x = ins[0]
    dims_in = ins[1] if len(ins) > 1 else None
    shape = x.shape
    value = np.asarray(x.value) if x.value is not None else None
    if shape is None:
        if dims_in is not None and dims_in.shape is not None and len(dims_in.shape) == 1 and \
                isinstance(dims_in.shape[0], int):
            n = dims_in.shape[0]
        elif p.reshape_dims is not None:
            n = len(p.reshape_dims)
        else:
            return [Info(x.dtype, None)]
        return [Info(x.dtype, tuple(ctx.fresh() for _ in range(n)))]
    if p.first_transpose is not None:
        shape = tuple(shape[i] for i in p.first_transpose)
        value = None if value is None else np.transpose(value, p.first_transpose)
    target = _shape_from(ctx, dims_in, p.reshape_dims)
    if target is None and dims_in is not None:   # dims read at run time, even their count unknown
        return [Info(x.dtype, None)]
    if target is not None:
        shape = reshape_dims(ctx, shape, target, p.zero_is_placeholder)
        if value is not None:
            value = value.reshape(tuple(shape)) if all(isinstance(d, int) for d in shape) else None
    if p.second_transpose is not None:
        shape = tuple(shape[i] for i in p.second_transpose)
        value = None if value is None else np.transpose(value, p.second_transpose)
    return [Info(x.dtype, tuple(shape), value)]


def reshape_dims(ctx, source, target, zero_is_placeholder=True) -> tuple:
    out = []
    infer = None
    for i, d in enumerate(target):
        d = S.as_dim(d) if not isinstance(d, float) else int(d)
        if d == 0 and zero_is_placeholder:
            if i >= len(source):
                raise ShapeRuleError(f"reshape dim {i} is 0 (copy the input dim) but the input has rank {len(source)}")
            d = source[i]
        if d == -1:
            if infer is not None:
                raise ShapeRuleError("a reshape target may hold one -1")
            infer = i
            out.append(None)
            continue
        out.append(d)
    if infer is not None:
        rest = numel([d for d in out if d is not None])
        total = numel(source)
        if isinstance(total, int) and isinstance(rest, int):
            if rest == 0 or total % rest:
                raise ShapeRuleError(f"cannot reshape {total} elements into {target}")
            out[infer] = total // rest
        else:
            out[infer] = S.as_dim(sympy.cancel(sympy.sympify(total) / rest))
            if not isinstance(out[infer], int) and not out[infer].is_polynomial():
                out[infer] = S.floordiv(total, rest)
    return tuple(out)


@rule(LayerKind.VIEW)
def view(ctx, layer, ins):
    return [Info(ins[0].dtype, tuple(int(d) for d in layer.params.shape))]


@rule(LayerKind.SQUEEZE)
def squeeze(ctx, layer, ins):
    x = ins[0]
    axes_in = ins[1] if len(ins) > 1 else None
    axes = values_of(ctx, axes_in) if axes_in is not None else layer.params.axes
    if x.shape is None or (axes_in is not None and axes is None):
        return [Info(x.dtype, None)]
    rank = len(x.shape)
    if axes is None:
        drop = {i for i, d in enumerate(x.shape) if d == 1}
    else:
        if any(not isinstance(a, int) for a in axes):
            n = rank - len(axes)
            return [Info(x.dtype, tuple(ctx.fresh() for _ in range(n)))]
        drop = {_axis(a, rank) for a in axes}
    shape = tuple(d for i, d in enumerate(x.shape) if i not in drop)
    return [Info(x.dtype, shape, _reshaped(x, shape))]


@rule(LayerKind.UNSQUEEZE)
def unsqueeze(ctx, layer, ins):
    x = ins[0]
    axes = values_of(ctx, ins[1]) if len(ins) > 1 and ins[1] is not None else layer.params.axes
    if x.shape is None or axes is None:
        return [Info(x.dtype, None)]
    rank = len(x.shape) + len(axes)
    if any(not isinstance(a, int) for a in axes):
        return [Info(x.dtype, tuple(ctx.fresh() for _ in range(rank)))]
    where = {_axis(a, rank) for a in axes}
    it = iter(x.shape)
    shape = tuple(1 if i in where else next(it) for i in range(rank))
    return [Info(x.dtype, shape, _reshaped(x, shape))]


@rule(LayerKind.EXPAND)
def expand(ctx, layer, ins):
    x = ins[0]
    target = values_of(ctx, ins[1])
    if target is None or x.shape is None:
        rank = None if target is None else max(len(target), len(x.shape or ()))
        return [Info(x.dtype, None if rank is None or x.shape is None else tuple(ctx.fresh() for _ in range(rank)))]
    shape = broadcast(x.shape, _dims(target))
    value = None
    if x.value is not None and _small(shape):
        value = np.broadcast_to(np.asarray(x.value), tuple(shape)).copy()
    return [Info(x.dtype, shape, value)]


@rule(LayerKind.TILE)
def tile(ctx, layer, ins):
    x = ins[0]
    reps = values_of(ctx, ins[1])
    if x.shape is None or reps is None:
        return [Info(x.dtype, x.shape and tuple(ctx.fresh() for _ in x.shape))]
    shape = tuple(S.as_dim(d * r) for d, r in zip(x.shape, _dims(reps)))
    value = None
    if x.value is not None and _small(shape) and all(isinstance(r, int) for r in reps):
        value = np.tile(np.asarray(x.value), reps)
    return [Info(x.dtype, shape, value)]


def _clamp_index(i, dim, step_positive: bool):
    """Python/ONNX slice bound -> position in [0, dim] (or [-1, dim-1] for negative steps)."""
    lo, hi = (0, dim) if step_positive else (-1, S.as_dim(dim - 1))
    if isinstance(i, int):
        if i >= 2 ** 31 - 1:
            return hi
        if i <= -(2 ** 31):
            return lo
        if i < 0:
            i = S.as_dim(dim + i)
    return S.dmax(lo, S.dmin(i, hi)) if not (isinstance(i, int) and isinstance(dim, int)) else max(lo, min(i, hi))


@rule(LayerKind.SLICE)
def slice_(ctx, layer, ins):
    x = ins[0]
    if x.shape is None:
        return [Info(x.dtype, None)]
    rank = len(x.shape)
    starts, ends = _known(ins[1]), _known(ins[2])
    axes = _known(ins[3]) if len(ins) > 3 and ins[3] is not None else None
    steps = _known(ins[4]) if len(ins) > 4 and ins[4] is not None else None
    if len(ins) > 3 and ins[3] is not None and axes is None:
        return [Info(x.dtype, tuple(ctx.fresh() for _ in range(rank)))]
    if starts is None or ends is None or (len(ins) > 4 and ins[4] is not None and steps is None):
        sliced = set(range(rank)) if axes is None else {_axis(a, rank) for a in axes}
        return [Info(x.dtype, tuple(ctx.fresh() if i in sliced else d for i, d in enumerate(x.shape)))]
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    shape = list(x.shape)
    index: list[Any] = [slice(None)] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, rank)
        dim = shape[a]
        if not isinstance(st, int) or st == 0:
            shape[a] = ctx.fresh()
            index = None
            continue
        if isinstance(dim, int) and isinstance(s, int) and isinstance(e, int):
            rng = range(*slice(s, e, st).indices(dim))
            shape[a] = len(rng)
            if index is not None:
                index[a] = slice(rng.start, rng.stop if rng.stop >= 0 else None, st)
            continue
        lo, hi = _clamp_index(s, dim, st > 0), _clamp_index(e, dim, st > 0)
        length = S.ceildiv(S.as_dim(hi - lo), st) if st > 0 else S.ceildiv(S.as_dim(lo - hi), -st)
        shape[a] = S.dmax(length, 0)
        index = None
    shape = tuple(shape)
    value = None
    if x.value is not None and index is not None and _small(shape):
        value = np.asarray(x.value)[tuple(index)]
    return [Info(x.dtype, shape, value)]


@rule(LayerKind.GATHER)
def gather(ctx, layer, ins):
    p = layer.params
    data, idx = ins[0], ins[1]
    if data.shape is None or idx.shape is None:
        return [Info(data.dtype, None)]
    rank = len(data.shape)
    if p.mode == GatherMode.ELEMENT:
        return [Info(data.dtype, idx.shape)]
    if p.mode == GatherMode.ND:
        b, k = p.num_elementwise_dims, idx.shape[-1]
        if not isinstance(k, int):
            return [Info(data.dtype, None)]
        return [Info(data.dtype, tuple(idx.shape[:-1]) + tuple(data.shape[b + k:]))]
    axis = _axis(p.axis, rank)
    shape = tuple(data.shape[:axis]) + tuple(idx.shape) + tuple(data.shape[axis + 1:])
    value = None
    if data.value is not None and idx.value is not None and _small(shape):
        iv = np.asarray(idx.value)
        dv = np.asarray(data.value)
        if iv.dtype != object and isinstance(data.shape[axis], int):
            iv = np.where(iv < 0, iv + data.shape[axis], iv)
            if np.all((iv >= 0) & (iv < data.shape[axis])):
                value = np.take(dv, iv.astype(np.int64), axis=axis)
    return [Info(data.dtype, shape, value)]


@rule(LayerKind.PADDING)
def padding(ctx, layer, ins):
    x = ins[0]
    if x.shape is None:
        return [Info(x.dtype, None)]
    rank = len(x.shape)
    pads = values_of(ctx, ins[1])
    axes = _known(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(rank))
    if pads is None or axes is None:
        return [Info(x.dtype, tuple(ctx.fresh() for _ in range(rank)))]
    shape = list(x.shape)
    n = len(axes)
    for i, a in enumerate(axes):
        a = _axis(a, rank)
        shape[a] = S.as_dim(sympy.sympify(shape[a]) + pads[i] + pads[n + i])
    return [Info(x.dtype, tuple(shape))]


@rule(LayerKind.ONE_HOT)
def one_hot(ctx, layer, ins):
    idx, depth, values = ins[:3]
    d = values_of(ctx, depth)
    if idx.shape is None or d is None:
        return [Info(values.dtype, None)]
    rank = len(idx.shape) + 1
    axis = _axis(layer.params.axis, rank)
    shape = list(idx.shape)
    shape.insert(axis, S.as_dim(d[0]) if not isinstance(d[0], float) else int(d[0]))
    return [Info(values.dtype, tuple(shape))]


@rule(LayerKind.NON_ZERO)
def non_zero(ctx, layer, ins):
    x = ins[0]
    return [Info(DataType.INT64, None if x.shape is None else (len(x.shape), ctx.fresh()))]


@rule(LayerKind.NMS)
def nms(ctx, layer, ins):
    return [Info(DataType.INT64, (ctx.fresh(), 3))]


@rule(LayerKind.TOPK)
def topk(ctx, layer, ins):
    x = ins[0]
    if x.shape is None:
        return [Info(x.dtype, None), Info(DataType.INT64, None)]
    k = values_of(ctx, ins[1])[0] if len(ins) > 1 and ins[1] is not None else layer.params.k
    axis = _axis(layer.params.axis, len(x.shape))
    shape = tuple(S.as_dim(k) if i == axis else d for i, d in enumerate(x.shape))
    return [Info(x.dtype, shape), Info(DataType.INT64, shape)]


# ----------------------------------------------------------------------------- reductions
@rule(LayerKind.REDUCE)
def reduce(ctx, layer, ins):
    p = layer.params
    x = ins[0]
    if x.shape is None:
        return [Info(x.dtype, None)]
    rank = len(x.shape)
    if len(ins) > 1 and ins[1] is not None:
        axes = _known(ins[1])
        if axes is None:
            n = ins[1].shape[0] if ins[1].shape and isinstance(ins[1].shape[0], int) else None
            if p.keep_dims:
                return [Info(x.dtype, tuple(ctx.fresh() for _ in range(rank)))]
            return [Info(x.dtype, None if n is None else tuple(ctx.fresh() for _ in range(rank - n)))]
        if not axes:
            if p.noop_with_empty_axes:
                return [Info(x.dtype, x.shape, x.value)]
            axes = list(range(rank))
    else:
        axes = list(range(rank)) if p.axes is None else list(p.axes)
    red = {_axis(int(a), rank) for a in axes}
    shape = tuple((1 if i in red else d) for i, d in enumerate(x.shape) if p.keep_dims or i not in red)
    value = None
    if x.value is not None and p.op in (ReduceOperation.PROD, ReduceOperation.SUM, ReduceOperation.MAX,
                                        ReduceOperation.MIN):
        v = np.asarray(x.value)
        fn = {ReduceOperation.PROD: lambda a, b: S.as_dim(a * b), ReduceOperation.SUM: lambda a, b: S.as_dim(a + b),
              ReduceOperation.MAX: S.dmax, ReduceOperation.MIN: S.dmin}[p.op]
        if v.dtype == object:
            if red == set(range(rank)) and v.size:
                total = functools.reduce(fn, [_py(e) for e in v.reshape(-1)])
                value = value_array([total], shape, x.dtype)
        elif v.dtype.kind in "biuf" and v.size:
            np_fn = {ReduceOperation.PROD: np.prod, ReduceOperation.SUM: np.sum, ReduceOperation.MAX: np.max,
                     ReduceOperation.MIN: np.min}[p.op]
            value = np.asarray(np_fn(v, axis=tuple(sorted(red)), keepdims=p.keep_dims)).astype(v.dtype)
    return [Info(x.dtype, shape, value)]


# ----------------------------------------------------------------------------- linear algebra
@rule(LayerKind.MATRIX_MULTIPLY, LayerKind.QUANTIZED_MATRIX_MULTIPLY)
def matrix_multiply(ctx, layer, ins):
    p = layer.params
    a, b = ins[0], ins[1]
    if a.shape is None or b.shape is None:
        return [Info(_output_dtype(layer, a.dtype), None)]
    sa, sb = list(a.shape), list(b.shape)
    if p.op0 == MatrixOperation.TRANSPOSE:
        sa[-2:] = sa[-2:][::-1]
    if p.op1 == MatrixOperation.TRANSPOSE:
        sb[-2:] = sb[-2:][::-1]
    vec_a = p.op0 == MatrixOperation.VECTOR or len(sa) == 1
    vec_b = p.op1 == MatrixOperation.VECTOR or len(sb) == 1
    if vec_a:
        sa = sa[:-1] + [1, sa[-1]]
    if vec_b:
        sb = sb[:-1] + [sb[-1], 1]
    batch = broadcast(tuple(sa[:-2]), tuple(sb[:-2]))
    out = list(batch) + [sa[-2], sb[-1]]
    if vec_b:
        out.pop(-1)
    if vec_a:
        out.pop(-2 if not vec_b else -1)
    return [Info(_output_dtype(layer, a.dtype), tuple(out))]


def _output_dtype(layer, x_dtype):
    """A quantized layer's output type may differ from its input's (``QuantizedOutput``)."""
    if layer.kind in QUANTIZED_KINDS:
        return QuantizedOutput.dtype(layer.params, x_dtype)
    return x_dtype


@rule(LayerKind.EINSUM)
def einsum(ctx, layer, ins):
    eq = layer.params.equation.replace(" ", "")
    if "->" in eq:
        lhs, rhs = eq.split("->")
    else:
        lhs, rhs = eq, None
    terms = lhs.split(",")
    sizes: dict[str, Any] = {}
    ellipsis: list[tuple] = []
    for term, info in zip(terms, ins):
        if info.shape is None:
            return [Info(ins[0].dtype, None)]
        letters = term.replace("...", ".")
        n_ell = len(info.shape) - (len(letters) - 1) if "." in letters else 0
        k = 0
        for c in letters:
            if c == ".":
                ellipsis.append(tuple(info.shape[k:k + n_ell]))
                k += n_ell
            else:
                d = info.shape[k]
                if c not in sizes or sizes[c] == 1:
                    sizes[c] = d
                k += 1
    ell = broadcast(*ellipsis) if ellipsis else ()
    if rhs is None:
        letters = sorted(c for c in set(lhs.replace(",", "").replace(".", "")) if lhs.count(c) == 1)
        rhs = ("..." if ellipsis else "") + "".join(letters)
    out = []
    for c in rhs.replace("...", "."):
        out.extend(ell if c == "." else [sizes[c]])
    return [Info(ins[0].dtype, tuple(out))]


def _nd(values, n, default):
    return tuple(values) if values else (default,) * n


def window_output(size, window, stride, dilation, pre, post, mode: PaddingMode):
    """Output length of a convolution/pooling window along one dim."""
    eff = (window - 1) * dilation + 1
    if mode in (PaddingMode.SAME_UPPER, PaddingMode.SAME_LOWER):
        return S.ceildiv(size, stride)
    padded = S.as_dim(sympy.sympify(size) + pre + post)
    if mode == PaddingMode.EXPLICIT_ROUND_UP:
        out = S.as_dim(S.ceildiv(S.as_dim(padded - eff), stride) + 1)
        # the last window must start inside the input or its front padding
        start_limit = S.as_dim(sympy.sympify(size) + pre)
        if isinstance(out, int) and isinstance(start_limit, int):
            return out - 1 if (out - 1) * stride >= start_limit else out
        return S.as_dim(sympy.Piecewise((out - 1, sympy.Ge((out - 1) * stride, start_limit)), (out, True)))
    return S.as_dim(S.floordiv(S.as_dim(padded - eff), stride) + 1)


def _windows(p, window: tuple, spatial: tuple) -> tuple:
    """The output lengths of a convolution's or pooling's windows over its spatial dims."""
    n = len(window)
    stride, dil = _nd(p.stride_nd, n, 1), _nd(p.dilation_nd, n, 1)
    pre, post = _nd(p.pre_padding, n, 0), _nd(p.post_padding, n, 0)
    return tuple(window_output(spatial[i], window[i], stride[i], dil[i], pre[i], post[i], p.padding_mode)
                 for i in range(n))


@rule(LayerKind.CONVOLUTION, LayerKind.QUANTIZED_CONVOLUTION)
def convolution(ctx, layer, ins):
    p = layer.params
    x = ins[0]
    if x.shape is None:
        return [Info(_output_dtype(layer, x.dtype), None)]
    spatial = _windows(p, tuple(p.kernel_size_nd), tuple(x.shape[2:]))
    return [Info(_output_dtype(layer, x.dtype), (x.shape[0], p.num_output_maps) + spatial)]


@rule(LayerKind.DECONVOLUTION)
def deconvolution(ctx, layer, ins):
    p = layer.params
    x = ins[0]
    if x.shape is None:
        return [Info(x.dtype, None)]
    n = len(p.kernel_size_nd)
    stride, dil = _nd(p.stride_nd, n, 1), _nd(p.dilation_nd, n, 1)
    out_pad = _nd(p.output_padding, n, 0)
    pre, post = _nd(p.pre_padding, n, 0), _nd(p.post_padding, n, 0)
    spatial = []
    for i in range(n):
        size = x.shape[2 + i]
        if p.padding_mode in (PaddingMode.SAME_UPPER, PaddingMode.SAME_LOWER):
            spatial.append(S.as_dim(size * stride[i]))
        else:
            full = S.as_dim((size - 1) * stride[i] + (p.kernel_size_nd[i] - 1) * dil[i] + 1)
            spatial.append(S.as_dim(full - pre[i] - post[i] + out_pad[i]))
    return [Info(x.dtype, (x.shape[0], p.num_output_maps) + tuple(spatial))]


@rule(LayerKind.POOLING)
def pooling(ctx, layer, ins):
    p = layer.params
    x = ins[0]
    if x.shape is None:
        return [Info(x.dtype, None)]
    n = len(p.window_size_nd)
    lead = tuple(x.shape[:-n])
    return [Info(x.dtype, lead + _windows(p, tuple(p.window_size_nd), tuple(x.shape[-n:])))]


@rule(LayerKind.RESIZE)
def resize(ctx, layer, ins):
    p = layer.params
    x = ins[0]
    if x.shape is None:
        return [Info(x.dtype, None)]
    rank = len(x.shape)
    axes = [_axis(a, rank) for a in p.axes] if p.axes else list(range(rank))
    scales_in = ins[1] if len(ins) > 1 else None
    sizes_in = ins[2] if len(ins) > 2 else None
    has_sizes = sizes_in is not None and not (sizes_in.shape is not None and sizes_in.shape == (0,))
    out = list(x.shape)
    if has_sizes:
        sizes = values_of(ctx, sizes_in)
        if sizes is None or p.keep_aspect_ratio_policy != "stretch":
            return [Info(x.dtype, tuple(ctx.fresh() if i in axes else d for i, d in enumerate(x.shape)))]
        for a, s in zip(axes, sizes):
            out[a] = S.as_dim(s) if not isinstance(s, float) else int(s)
        return [Info(x.dtype, tuple(out))]
    scales = _known(scales_in) if scales_in is not None else None
    if scales is None:
        return [Info(x.dtype, tuple(ctx.fresh() if i in axes else d for i, d in enumerate(x.shape)))]
    for a, s in zip(axes, scales):
        d = x.shape[a]
        if isinstance(d, int):
            out[a] = int(float(s) * d)
        else:
            out[a] = S.as_dim(sympy.floor(sympy.nsimplify(float(s)) * d))
    return [Info(x.dtype, tuple(out))]


@rule(LayerKind.GRID_SAMPLE)
def grid_sample(ctx, layer, ins):
    x, grid = ins[0], ins[1]
    if x.shape is None or grid.shape is None:
        return [Info(x.dtype, None)]
    return [Info(x.dtype, tuple(x.shape[:2]) + tuple(grid.shape[1:-1]))]


@rule(LayerKind.ATTENTION)
def attention(ctx, layer, ins):
    q, k, v = ins[:3]
    past_k = ins[4] if len(ins) > 4 else None
    past_v = ins[5] if len(ins) > 5 else None
    if q.shape is None or k.shape is None or v.shape is None:
        outs = [Info(q.dtype, None)] * 3
    else:
        past = 0 if past_k is None or past_k.shape is None else past_k.shape[2]
        total = S.as_dim(sympy.sympify(k.shape[2]) + past)
        present_k = tuple(k.shape[:2]) + (total, k.shape[3])
        present_v = tuple(v.shape[:2]) + (S.as_dim(sympy.sympify(v.shape[2]) +
                                                   (0 if past_v is None or past_v.shape is None else past_v.shape[2])),
                                          v.shape[3])
        y = tuple(q.shape[:3]) + (v.shape[3],)
        outs = [Info(q.dtype, y), Info(k.dtype, present_k), Info(v.dtype, present_v)]
        if layer.params.qk_output_mode >= 0:
            outs.append(Info(q.dtype, tuple(q.shape[:3]) + (total,)))
    return outs[:len(layer.outputs)]


@rule(LayerKind.RNN)
def rnn(ctx, layer, ins):
    p = layer.params
    x = ins[0]
    dirs = 2 if p.direction == "bidirectional" else 1
    n_out = len(layer.outputs)
    if x.shape is None:
        return [Info(x.dtype, None)] * n_out
    seq, batch = (x.shape[1], x.shape[0]) if p.batch_first else (x.shape[0], x.shape[1])
    h = p.hidden_size
    y = (batch, seq, dirs, h) if p.batch_first else (seq, dirs, batch, h)
    state = (batch, dirs, h) if p.batch_first else (dirs, batch, h)
    return ([Info(x.dtype, y)] + [Info(x.dtype, state)] * 2)[:n_out]


# ----------------------------------------------------------------------------- control flow, plugins
@rule(LayerKind.CONDITIONAL)
def conditional(ctx, layer, ins):
    p = layer.params
    cond = _known(ins[0])
    if cond is not None:
        branch = p.then_branch if cond[0] else p.else_branch
        return ctx.subgraph(branch, ins[1:], len(layer.outputs))
    a = ctx.subgraph(p.then_branch, ins[1:], len(layer.outputs))
    b = ctx.subgraph(p.else_branch, ins[1:], len(layer.outputs))
    out = []
    for x, y in zip(a, b):
        if x.shape is not None and y.shape is not None and len(x.shape) == len(y.shape):
            shape = tuple(d if S.equal(d, e) else ctx.fresh() for d, e in zip(x.shape, y.shape))
        else:
            shape = None
        out.append(Info(x.dtype or y.dtype, shape))
    return out


@rule(LayerKind.LOOP)
def loop(ctx, layer, ins):
    p = layer.params
    carried = ins[2:2 + p.num_carried]
    out = []
    for i in range(len(layer.outputs)):
        dtype, rank = p.body.output_types[i + (1 if p.counter_inputs else 0)] if p.body.output_types and \
            i + (1 if p.counter_inputs else 0) < len(p.body.output_types) else (None, -1)
        if i < p.num_carried:
            c = carried[i]
            out.append(Info(c.dtype if c is not None else dtype,
                            None if c is None or c.shape is None else tuple(ctx.fresh() for _ in c.shape)))
        else:
            out.append(Info(dtype, None if rank < 0 else tuple(ctx.fresh() for _ in range(rank + 1))))
    return out


def plugin_rule(name: str, version: str = "1"):
    """The rule ``fn(ctx, params, ins, num_outputs) -> [Info]`` of the built-in plugin ``name``
    (the plugin registry, :mod:`kilnrt.network.plugin`, holds it with the plugin's kernel)."""
    def register(fn):
        plugins.builtin(name, version).shape = fn
        return fn
    return register


@rule(LayerKind.PLUGIN)
def plugin(ctx, layer, ins):
    p = layer.params
    d = plugins.definition_of(p)
    if d is None:   # not registered: the outputs' shapes are known only at run time (the build says why)
        dtype = ins[0].dtype if ins and ins[0] is not None else None
        return [Info(dtype, None) for _ in layer.outputs]
    return d.infer(ctx, p, ins, len(layer.outputs))


@plugin_rule("BitCast")
def _bitcast(ctx, p, ins, n):
    return [Info(p.field("to"), ins[0].shape)]


@plugin_rule("Det")
def _det(ctx, p, ins, n):
    x = ins[0]
    return [Info(x.dtype, None if x.shape is None else tuple(x.shape[:-2]))]


@plugin_rule("MaxPoolWithIndices")
def _max_pool_indices(ctx, p, ins, n):
    from kilnrt.network.layers import PoolingParams, PoolingType

    params = PoolingParams(PoolingType.MAX, p.field("window"), p.field("stride"), p.field("pre"), p.field("post"),
                           p.field("dilation"), p.field("padding_mode"))
    (y,) = pooling(ctx, _Params(params), ins)
    return [y, Info(DataType.INT64, y.shape)]


class _Params:
    """A stand-in layer that only carries params (a plugin rule reusing a layer kind's rule)."""

    def __init__(self, params) -> None:
        self.params = params


@plugin_rule("Unique")
def _unique(ctx, p, ins, n):
    x = ins[0]
    axis = p.field("axis")
    count = ctx.fresh()
    if axis is None or x.shape is None:
        y = Info(x.dtype, (count,))
    else:
        a = _axis(axis, len(x.shape))
        y = Info(x.dtype, tuple(count if i == a else d for i, d in enumerate(x.shape)))
    inverse = ctx.fresh()
    return [y, Info(DataType.INT64, (count,)), Info(DataType.INT64, (inverse,)), Info(DataType.INT64, (count,))][:n]


@plugin_rule("LinearAttention")
def _linear_attention(ctx, p, ins, n):
    q, k, v = ins[:3]
    past = ins[3] if len(ins) > 3 else None
    hq, hkv = int(p.field("q_num_heads")), int(p.field("kv_num_heads"))
    if q.shape is None or k.shape is None or v.shape is None or len(q.shape) != 3:
        return [Info(q.dtype, None), Info(q.dtype if past is None else past.dtype, None)][:n]
    d_k, d_v = S.floordiv(k.shape[-1], hkv), S.floordiv(v.shape[-1], hkv)
    out = Info(q.dtype, (q.shape[0], q.shape[1], S.as_dim(d_v * hq)))
    state = Info(q.dtype if past is None else past.dtype, (q.shape[0], hkv, d_k, d_v))
    return [out, state][:n]


@plugin_rule("RoiAlign")
def _roi_align(ctx, p, ins, n):
    x, rois = ins[0], ins[1]
    if x.shape is None or rois.shape is None:
        return [Info(x.dtype, None)]
    return [Info(x.dtype, (rois.shape[0], x.shape[1], int(p.field("output_height")), int(p.field("output_width"))))]


@plugin_rule("Col2Im")
def _col2im(ctx, p, ins, n):
    x = ins[0]
    image, block = values_of(ctx, ins[1]), values_of(ctx, ins[2])
    if x.shape is None or image is None or block is None:
        return [Info(x.dtype, None)]
    channels = S.floordiv(x.shape[1], numel(_dims(block)))
    return [Info(x.dtype, (x.shape[0], channels) + _dims(image))]


@plugin_rule("MelWeightMatrix")
def _mel_weight_matrix(ctx, p, ins, n):
    bins, length = values_of(ctx, ins[0]), values_of(ctx, ins[1])
    dtype = DataType(p.field("to"))
    if bins is None or length is None:
        return [Info(dtype, (ctx.fresh(), ctx.fresh()))]
    return [Info(dtype, (S.as_dim(S.floordiv(S.as_dim(length[0]), 2) + 1), S.as_dim(bins[0])))]


@plugin_rule("DFT")
def _dft(ctx, p, ins, n):
    x = ins[0]
    if x.shape is None:
        return [Info(x.dtype, None)]
    rank = len(x.shape)
    axis = _known(ins[2]) if len(ins) > 2 and ins[2] is not None else [p.field("axis")]
    a = _axis(int(axis[0]), rank) if axis is not None else None
    shape = tuple(2 if i == rank - 1 else (ctx.fresh() if a is None or i == a else d) for i, d in enumerate(x.shape))
    return [Info(x.dtype, shape)]


@plugin_rule("STFT")
def _stft(ctx, p, ins, n):
    x = ins[0]
    if x.shape is None:
        return [Info(x.dtype, None)]
    return [Info(x.dtype, (x.shape[0], ctx.fresh(), ctx.fresh(), 2))]


@plugin_rule("DeformConv")
def _deform_conv(ctx, p, ins, n):
    x, w = ins[0], ins[1]
    if x.shape is None or w.shape is None or len(x.shape) != 4:
        return [Info(x.dtype, None)]
    offset = ins[2]
    spatial = tuple(offset.shape[2:4]) if offset is not None and offset.shape is not None else (ctx.fresh(), ctx.fresh())
    return [Info(x.dtype, (x.shape[0], w.shape[0]) + spatial)]
