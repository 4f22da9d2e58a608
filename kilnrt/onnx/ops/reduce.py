"""Importers for reductions (ReduceSum, ReduceMean, ... in their attribute and input forms)."""
from __future__ import annotations

import numpy as np


from kilnrt.network.layers import (ElementWiseOperation as E, IdentityParams, LayerKind,
                                   ReduceOperation as R, ReduceParams, UnaryOperation as U)
from kilnrt.onnx.registry import importer


def _axes(ctx, axes_input, axes_attr, noop_with_empty_axes):
    """The axes to reduce (None: all) or the string 'noop'."""
    if axes_input is not None:
        v = ctx.require_value(axes_input, "the axes input")
        axes = tuple(int(a) for a in np.asarray(v).reshape(-1))
    else:
        axes = tuple(axes_attr) if axes_attr is not None else ()
    if not axes:
        return "noop" if noop_with_empty_axes else None
    return axes


def _reduce(ctx, x, op, axes, keepdims):
    if axes == "noop":
        return ctx.out(LayerKind.IDENTITY, IdentityParams(), x)
    return ctx.out(LayerKind.REDUCE, ReduceParams(op, axes, bool(keepdims)), x)


# op -> (pre-transform, reduce op, post-transform)
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
    "ReduceLogSumExp": (U.EXP, R.SUM, U.LOG),
}
# the opset from which `axes` is an input rather than an attribute
_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _make(op_type: str, pre, rop, post):
    def body(ctx, x, axes_input, axes, keepdims, noop):
        ax = _axes(ctx, axes_input, axes, noop)
        y = x
        if pre == "square":
            y = ctx.elementwise(E.PROD, x, x)
        elif pre is not None:
            y = ctx.unary(pre, x)
        y = _reduce(ctx, y, rop, ax, keepdims)
        if post is not None and ax != "noop":
            y = ctx.unary(post, y)
        return y

    def attr_form(ctx, node, x, *, axes=None, keepdims=1):
        return body(ctx, x, None, axes, keepdims, 0)

    def input_form(ctx, node, x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        return body(ctx, x, axes, None, keepdims, noop_with_empty_axes)

    attr_form.__doc__ = input_form.__doc__ = f"{op_type}: reduce {rop.value}."
    importer(op_type, since=1)(attr_form)
    importer(op_type, since=_AXES_INPUT_SINCE.get(op_type, 18))(input_form)


for _op, (_pre, _rop, _post) in _FORMS.items():
    _make(_op, _pre, _rop, _post)


