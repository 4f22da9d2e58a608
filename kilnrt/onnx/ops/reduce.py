"""Importers for reductions (ReduceSum, ReduceMean, ... in their attribute and input forms),
ArgMax/ArgMin and Hardmax."""
from __future__ import annotations

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import (ElementWiseOperation as E, FillOperation, FillParams, GatherParams,
                                   IdentityParams, LayerKind, ReduceOperation as R, ReduceParams, SelectParams,
                                   SliceParams, SqueezeParams, TopKOperation, TopKParams, UnaryOperation as U)
from kilnrt.onnx.registry import importer


def reduce_layer(ctx, x, op: R, axes_input, axes_attr, keepdims, noop_with_empty_axes=0):
    """One REDUCE layer; the axes come from a constant (folded into the params) or a run-time input."""
    if axes_input is not None:
        value = ctx.value(axes_input)
        if value is None:
            params = ReduceParams(op, None, bool(keepdims), bool(noop_with_empty_axes))
            return ctx.out(LayerKind.REDUCE, params, x, ctx.cast(axes_input, DataType.INT64)
                           if ctx.dtype(axes_input) != DataType.INT64 else axes_input)
        axes = tuple(int(a) for a in np.asarray(value).reshape(-1))
    else:
        axes = tuple(int(a) for a in axes_attr) if axes_attr is not None else ()
    if not axes:
        if noop_with_empty_axes:
            return ctx.out(LayerKind.IDENTITY, IdentityParams(), x)
        return ctx.out(LayerKind.REDUCE, ReduceParams(op, None, bool(keepdims)), x)
    return ctx.out(LayerKind.REDUCE, ReduceParams(op, axes, bool(keepdims)), x)


def _square(ctx, x):
    return ctx.elementwise(E.PROD, x, x)


def _log_sum_exp(ctx, x, axes_input, axes_attr, keepdims, noop):
    """log(sum(exp(x - m))) + m with m = max(x) over the same axes (no overflow); with run-time
    axes (unknown result shape at build time) the plain log(sum(exp(x)))."""
    if axes_input is not None and ctx.value(axes_input) is None:
        summed = reduce_layer(ctx, ctx.unary(U.EXP, x), R.SUM, axes_input, axes_attr, keepdims, noop)
        return ctx.unary(U.LOG, summed)
    m = reduce_layer(ctx, x, R.MAX, axes_input, axes_attr, 1, noop)
    finite = ctx.out(LayerKind.SELECT, SelectParams(), ctx.unary(U.ISINF, m),
                     ctx.constant(np.zeros((), dtype=ctx.dtype(x).numpy)), m)
    shifted = ctx.unary(U.EXP, ctx.elementwise(E.SUB, x, finite))
    y = ctx.elementwise(E.SUM, ctx.unary(U.LOG, reduce_layer(ctx, shifted, R.SUM, axes_input, axes_attr, 1, noop)),
                        finite)
    if keepdims:
        return y
    # drop the reduced (now size-1) dims: a reduction over them keeps every value
    return reduce_layer(ctx, y, R.MAX, axes_input, axes_attr, 0, noop)


# op -> (pre-transform, reduce op, post-transform); None: no transform
_FORMS = {
    "ReduceSum": (None, R.SUM, None),
    "ReduceMean": (None, R.AVG, None),
    "ReduceMax": (None, R.MAX, None),
    "ReduceMin": (None, R.MIN, None),
    "ReduceProd": (None, R.PROD, None),
    "ReduceL1": (U.ABS, R.SUM, None),
    "ReduceL2": ("square", R.SUM, U.SQRT),
    "ReduceSumSquare": ("square", R.SUM, None),
    "ReduceLogSum": (None, R.SUM, U.LOG),
    "ReduceLogSumExp": ("lse", R.SUM, None),
}
# the opset from which `axes` is an input rather than an attribute
_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _make(op_type: str, pre, rop: R, post) -> None:
    def body(ctx, x, axes_input, axes_attr, keepdims, noop):
        if pre == "lse":
            return _log_sum_exp(ctx, x, axes_input, axes_attr, keepdims, noop)
        y = x
        if pre == "square":
            y = _square(ctx, x)
        elif pre is not None:
            y = ctx.unary(pre, x)
        y = reduce_layer(ctx, y, rop, axes_input, axes_attr, keepdims, noop)
        if post is not None:
            y = ctx.unary(post, y)
        return y

    def attr_form(ctx, node, x, *, axes=None, keepdims=1):
        return body(ctx, x, None, axes, keepdims, 0)

    def input_form(ctx, node, x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        return body(ctx, x, axes, None, keepdims, noop_with_empty_axes)

    doc = (f"{op_type}: reduce {rop.value}; with noop_with_empty_axes and empty axes the "
           "reduction is skipped but the element transforms still apply (as the reference does).")
    attr_form.__doc__ = input_form.__doc__ = doc
    attr_form.__name__ = input_form.__name__ = op_type.lower()
    importer(op_type, since=1)(attr_form)
    importer(op_type, since=_AXES_INPUT_SINCE.get(op_type, 18))(input_form)


for _op, (_pre, _rop, _post) in _FORMS.items():
    _make(_op, _pre, _rop, _post)


# ----------------------------------------------------------------------------- ArgMax / ArgMin
def _flip(ctx, x, axis: int):
    """x reversed along ``axis`` (a SLICE with step -1)."""
    big = np.iinfo(np.int64).max
    starts, ends = ctx.constant(np.array([-1], np.int64)), ctx.constant(np.array([-big], np.int64))
    axes, steps = ctx.constant(np.array([axis], np.int64)), ctx.constant(np.array([-1], np.int64))
    return ctx.out(LayerKind.SLICE, SliceParams(), x, starts, ends, axes, steps)


def _arg(ctx, x, op: TopKOperation, axis: int, keepdims: int, select_last_index: int):
    rank = ctx.rank(x)
    ctx.require(-rank <= axis < max(rank, 1), ErrorCode.INVALID_NODE,
                f"axis={axis} is out of range for an input of rank {rank}")
    axis = axis % rank if rank else 0
    src = _flip(ctx, x, axis) if select_last_index else x
    layer = ctx.add(LayerKind.TOPK, TopKParams(op, 1, axis), [src], num_outputs=2)
    idx = layer.outputs[1]
    if select_last_index:   # index in the flipped tensor -> index in x: (n - 1) - i
        n = ctx.out(LayerKind.GATHER, GatherParams(0), ctx.shape_of(x), ctx.constant(np.array(axis, np.int64)))
        last = ctx.elementwise(E.SUB, n, ctx.constant(np.array(1, np.int64)))
        idx = ctx.elementwise(E.SUB, last, idx)
    if not keepdims:
        idx = ctx.out(LayerKind.SQUEEZE, SqueezeParams((axis,)), idx)
    return idx


@importer("ArgMax", since=1)
def arg_max(ctx, node, x, *, axis=0, keepdims=1, select_last_index=0):
    """ArgMax: int64 index of the first maximum (the last with select_last_index=1)."""
    return _arg(ctx, x, TopKOperation.MAX, int(axis), keepdims, select_last_index)


@importer("ArgMin", since=1)
def arg_min(ctx, node, x, *, axis=0, keepdims=1, select_last_index=0):
    """ArgMin: int64 index of the first minimum (the last with select_last_index=1).

    A float input runs as ArgMax of -x, so that a NaN is picked as ArgMax picks it (numpy's
    and ONNX's reference evaluator's semantics); a TopK for the minimum would skip it."""
    if ctx.dtype(x) is not None and ctx.dtype(x).is_floating:
        return _arg(ctx, ctx.unary(U.NEG, x), TopKOperation.MAX, int(axis), keepdims, select_last_index)
    return _arg(ctx, x, TopKOperation.MIN, int(axis), keepdims, select_last_index)


# ----------------------------------------------------------------------------- Hardmax
def _hardmax(ctx, x, axis: int):
    """1 at the first maximum along ``axis``, 0 elsewhere: Equal(iota, ArgMax(x))."""
    rank = ctx.rank(x)
    axis = axis % rank
    idx = _arg(ctx, x, TopKOperation.MAX, axis, 1, 0)
    n = ctx.out(LayerKind.GATHER, GatherParams(0), ctx.shape_of(x), ctx.constant(np.array(axis, np.int64)))
    iota = ctx.out(LayerKind.FILL, FillParams(FillOperation.RANGE, dtype=DataType.INT64),
                   ctx.constant(np.array(0, np.int64)), n, ctx.constant(np.array(1, np.int64)))
    iota = ctx.reshape(iota, [-1] + [1] * (rank - 1 - axis))
    return ctx.cast(ctx.elementwise(E.EQUAL, iota, idx), ctx.dtype(x))


@importer("Hardmax", since=1)
def hardmax_v1(ctx, node, x, *, axis=1):
    """Hardmax (opset < 13): the input is flattened to 2-D at ``axis``, as Softmax-1 does."""
    rank = ctx.rank(x)
    axis = int(axis) % rank
    inner = x.shape[axis:]
    ctx.require(all(isinstance(d, int) and d >= 0 for d in inner), ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                f"the dims from axis {axis} on must be static; got {inner}")
    flat = ctx.reshape(x, [-1, int(np.prod(inner, dtype=np.int64))])
    return ctx.reshape(_hardmax(ctx, flat, 1), ctx.shape_of(x))


@importer("Hardmax", since=13)
def hardmax(ctx, node, x, *, axis=-1):
    """Hardmax: 1 at the first maximum along ``axis``, 0 elsewhere."""
    return _hardmax(ctx, x, int(axis))


# ----------------------------------------------------------------------------- TopK
def _topk(ctx, x, k, *, axis, largest, sorted_, k_attr=1):
    rank = ctx.rank(x)
    ctx.require(-rank <= int(axis) < rank, ErrorCode.INVALID_NODE,
                f"axis={axis} is out of range for an input of rank {rank}")
    op = TopKOperation.MAX if largest else TopKOperation.MIN
    inputs = [x]
    k_value = int(k_attr)
    if k is not None:
        known = ctx.value(k)
        if known is not None:
            k_value = int(np.asarray(known).reshape(-1)[0])
        else:
            inputs.append(k)
    params = TopKParams(op, k_value, int(axis) % rank, bool(sorted_))
    layer = ctx.add(LayerKind.TOPK, params, inputs, num_outputs=2)
    return layer.outputs[0], layer.outputs[1]


@importer("TopK", since=1)
def top_k_v1(ctx, node, x, *, axis=-1, k=None):
    ctx.require(k is not None, ErrorCode.INVALID_NODE, "attribute 'k' is required")
    return _topk(ctx, x, None, axis=axis, largest=1, sorted_=1, k_attr=k)


@importer("TopK", since=10)
def top_k_v10(ctx, node, x, k, *, axis=-1):
    return _topk(ctx, x, k, axis=axis, largest=1, sorted_=1)


@importer("TopK", since=11)
def top_k(ctx, node, x, k, *, axis=-1, largest=1, sorted=1):
    """TopK: values and int64 indices of the k largest (or smallest); equal values keep index order."""
    return _topk(ctx, x, k, axis=axis, largest=largest, sorted_=sorted)
