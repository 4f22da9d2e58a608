"""CPU kernels for pointwise layers: activation, elementwise, unary, select, scale, identity
(CAST is in quantize.py, with the dtype codecs)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kilnrt.kernels.registry import kernel, writes_into
from kilnrt.network.layers import (ActivationParams, ActivationType as A,
                                   ElementWiseOperation as E, ElementWiseParams, IdentityParams,
                                   LayerKind, ScaleParams, SelectParams,
                                   UnaryOperation as U, UnaryParams)


def _clip(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    if not x.dtype.is_floating_point:
        lo = None if lo == float("-inf") else int(max(lo, torch.iinfo(x.dtype).min))
        hi = None if hi == float("inf") else int(min(hi, torch.iinfo(x.dtype).max))
        if lo is None and hi is None:
            return x
    return torch.clamp(x, lo, hi)


_ACTIVATIONS = {
    A.RELU: lambda x, a, b: torch.relu(x),
    A.SIGMOID: lambda x, a, b: torch.sigmoid(x),
    A.TANH: lambda x, a, b: torch.tanh(x),
    A.LEAKY_RELU: lambda x, a, b: F.leaky_relu(x, a),
    A.ELU: lambda x, a, b: torch.where(x > 0, x, a * torch.expm1(x)),
    A.SELU: lambda x, a, b: b * torch.where(x > 0, x, a * torch.expm1(x)),
    A.SOFTSIGN: lambda x, a, b: x / (1 + x.abs()),
    A.SOFTPLUS: lambda x, a, b: torch.where(x > 20, x, torch.log1p(torch.exp(x))),
    A.CLIP: lambda x, a, b: _clip(x, a, b),
    A.HARD_SIGMOID: lambda x, a, b: torch.clamp(a * x + b, 0, 1),
    A.SCALED_TANH: lambda x, a, b: a * torch.tanh(b * x),
    A.THRESHOLDED_RELU: lambda x, a, b: torch.where(x > a, x, torch.zeros_like(x)),
    A.GELU_ERF: lambda x, a, b: F.gelu(x),
    A.GELU_TANH: lambda x, a, b: F.gelu(x, approximate="tanh"),
    A.SILU: lambda x, a, b: F.silu(x),
    A.MISH: lambda x, a, b: x * torch.tanh(F.softplus(x)),
    A.HARD_SWISH: lambda x, a, b: x * torch.clamp(x / 6 + 0.5, 0, 1),
    A.CELU: lambda x, a, b: torch.clamp(x, min=0) + torch.clamp(a * torch.expm1(x / a), max=0),
}


@kernel(LayerKind.ACTIVATION)
def activation(p: ActivationParams, x: torch.Tensor) -> torch.Tensor:
    return _ACTIVATIONS[p.type](x, p.alpha, p.beta)


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype.is_floating_point:
        return torch.pow(a, b.to(a.dtype))
    if b.dtype.is_floating_point:
        return torch.pow(a.to(torch.float64), b.to(torch.float64)).to(a.dtype)
    return torch.pow(a, b.to(a.dtype))


def _mod(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a, b)


_ELEMENTWISE = {
    E.SUM: torch.add,
    E.PROD: torch.mul,
    E.MAX: torch.maximum,
    E.MIN: torch.minimum,
    E.SUB: torch.sub,
    E.DIV: _div,
    E.POW: _pow,
    E.FLOOR_DIV: lambda a, b: torch.div(a, b, rounding_mode="floor"),
    E.AND: torch.logical_and,
    E.OR: torch.logical_or,
    E.XOR: torch.logical_xor,
    E.EQUAL: torch.eq,
    E.GREATER: torch.gt,
    E.LESS: torch.lt,
    E.GREATER_EQUAL: torch.ge,
    E.LESS_EQUAL: torch.le,
    E.MOD: _mod,
    E.FMOD: torch.fmod,
    E.BITWISE_AND: torch.bitwise_and,
    E.BITWISE_OR: torch.bitwise_or,
    E.BITWISE_XOR: torch.bitwise_xor,
    E.SHIFT_LEFT: torch.bitwise_left_shift,
    E.SHIFT_RIGHT: torch.bitwise_right_shift,
}


_COMPARISONS = {E.EQUAL, E.GREATER, E.LESS, E.GREATER_EQUAL, E.LESS_EQUAL}
# unsigned types torch has (almost) no arithmetic kernels for
_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)
# ops whose result bits do not depend on signedness (two's complement)
_SIGN_AGNOSTIC = {E.SUM, E.SUB, E.PROD, E.BITWISE_AND, E.BITWISE_OR, E.BITWISE_XOR, E.SHIFT_LEFT, E.EQUAL}
_SIGNED_ORDER = {E.GREATER: torch.gt, E.LESS: torch.lt, E.GREATER_EQUAL: torch.ge, E.LESS_EQUAL: torch.le}


def _unsigned_elementwise(op: E, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """uint16/32 are computed exactly in int64 (wrapping back); uint64 on its int64 bits."""
    f = _ELEMENTWISE[op]
    if a.dtype != torch.uint64:
        y = f(a.to(torch.int64), b.to(torch.int64))
        return y if op in _COMPARISONS else y.to(a.dtype)
    ia, ib = a.view(torch.int64), b.view(torch.int64)
    if op in _SIGN_AGNOSTIC:
        y = f(ia, ib)
        return y if op in _COMPARISONS else y.view(torch.uint64)
    lowest = torch.iinfo(torch.int64).min    # flipping the sign bit maps unsigned order to signed order
    ka, kb = ia ^ lowest, ib ^ lowest
    if op in _SIGNED_ORDER:
        return _SIGNED_ORDER[op](ka, kb)
    if op in (E.MAX, E.MIN):
        pick_a = ka >= kb if op == E.MAX else ka <= kb
        return torch.where(pick_a, ia, ib).view(torch.uint64)
    # division, remainder and logical right shift of 64-bit unsigned values: numpy has them
    shape = torch.broadcast_shapes(a.shape, b.shape)
    if a.device.type == "meta":
        return torch.empty(shape, dtype=a.dtype, device="meta")
    na, nb = ia.cpu().numpy().view(np.uint64), ib.cpu().numpy().view(np.uint64)
    with np.errstate(divide="ignore"):
        y = _NUMPY_UNSIGNED[op](na, nb)
    return torch.from_numpy(np.ascontiguousarray(y).astype(np.uint64).view(np.int64)).view(torch.uint64).to(a.device)


_NUMPY_UNSIGNED = {E.DIV: np.floor_divide, E.FLOOR_DIV: np.floor_divide, E.MOD: np.remainder,
                   E.FMOD: np.fmod, E.SHIFT_RIGHT: np.right_shift, E.POW: np.power}


@kernel(LayerKind.ELEMENTWISE)
def elementwise(p: ElementWiseParams, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype in _WIDE_UNSIGNED and a.dtype == b.dtype:
        return _unsigned_elementwise(p.op, a, b)
    return _ELEMENTWISE[p.op](a, b)


_UNARY = {
    U.EXP: torch.exp, U.LOG: torch.log, U.SQRT: torch.sqrt, U.RECIP: torch.reciprocal,
    U.ABS: torch.abs, U.NEG: torch.neg, U.SIN: torch.sin, U.COS: torch.cos, U.TAN: torch.tan,
    U.SINH: torch.sinh, U.COSH: torch.cosh, U.ASIN: torch.asin, U.ACOS: torch.acos,
    U.ATAN: torch.atan, U.ASINH: torch.asinh, U.ACOSH: torch.acosh, U.ATANH: torch.atanh,
    U.CEIL: torch.ceil, U.FLOOR: torch.floor, U.ERF: torch.erf, U.NOT: torch.logical_not,
    U.SIGN: lambda x: torch.where(torch.isnan(x), x, torch.sign(x)) if x.is_floating_point() else torch.sign(x),
    U.ROUND: torch.round, U.ISINF: torch.isinf, U.ISINF_POS: torch.isposinf,
    U.ISINF_NEG: torch.isneginf, U.ISNAN: torch.isnan, U.BITWISE_NOT: torch.bitwise_not,
}


_SAME_SIZE_SIGNED = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


@kernel(LayerKind.UNARY)
def unary(p: UnaryParams, x: torch.Tensor) -> torch.Tensor:
    if x.dtype in _WIDE_UNSIGNED:
        if p.op == U.BITWISE_NOT:
            return torch.bitwise_not(x.view(_SAME_SIZE_SIGNED[x.dtype])).view(x.dtype)
        if p.op == U.ABS:
            return x.clone()
        if p.op == U.SIGN:
            return (x != 0).to(x.dtype)
    return _UNARY[p.op](x)


@kernel(LayerKind.SELECT)
def select(p: SelectParams, cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(cond.to(torch.bool), a, b)


@kernel(LayerKind.IDENTITY)
def identity(p: IdentityParams, x: torch.Tensor) -> torch.Tensor:
    return x


@kernel(LayerKind.SCALE)
def scale(p: ScaleParams, x: torch.Tensor, shift: torch.Tensor | None = None,
          scale_: torch.Tensor | None = None, power: torch.Tensor | None = None) -> torch.Tensor:
    y = x
    if scale_ is not None:
        y = y * p.broadcastable(scale_, x.dim())
    if shift is not None:
        y = y + p.broadcastable(shift, x.dim())
    if power is not None:
        y = torch.pow(y, p.broadcastable(power, x.dim()))
    return y


# ----------------------------------------------------------------------------- storing into a given view
# The ops below have ``out=`` forms: TensorIterator stores into a strided ``out`` directly (no
# temporary), so a float activation or elementwise layer can write its slice of a
# concatenation's buffer (kilnrt.builder.concat).  Each computes what the kernel above does (up
# to an ulp of sigmoid and SiLU, whose strided loops are not vectorized).
# Not GELU: on the CPU, torch's ``gelu(x, out=view)`` leaves a strided ``out`` unwritten.
_ACTIVATIONS_INTO = {
    A.RELU: lambda x, a, b, out: torch.clamp_min(x, 0, out=out),
    A.SIGMOID: lambda x, a, b, out: torch.sigmoid(x, out=out),
    A.TANH: lambda x, a, b, out: torch.tanh(x, out=out),
    A.LEAKY_RELU: lambda x, a, b, out: torch._C._nn.leaky_relu(x, a, out=out),
    A.CLIP: lambda x, a, b, out: torch.clamp(x, a, b, out=out),
    A.SILU: lambda x, a, b, out: torch._C._nn.silu(x, out=out),
}
_ELEMENTWISE_INTO = {E.SUM: torch.add, E.PROD: torch.mul, E.MAX: torch.maximum, E.MIN: torch.minimum,
                     E.SUB: torch.sub, E.DIV: torch.div}   # float division: _div is a / b


_INTO_TYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _float_static(t, out: torch.Tensor) -> bool:
    """A float input of ``out``'s dtype whose shape is known at build."""
    return (t is not None and t.dtype is not None and t.dtype.torch == out.dtype and out.dtype in _INTO_TYPES
            and t.shape is not None and all(isinstance(d, int) and d >= 0 for d in t.shape))


def _activation_into_ok(layer, out: torch.Tensor) -> bool:
    x = layer.inputs[0]
    return layer.params.type in _ACTIVATIONS_INTO and _float_static(x, out) and tuple(x.shape) == tuple(out.shape)


def _elementwise_into_ok(layer, out: torch.Tensor) -> bool:
    a, b = layer.inputs[0], layer.inputs[1]
    if layer.params.op not in _ELEMENTWISE_INTO or not (_float_static(a, out) and _float_static(b, out)):
        return False
    try:
        return tuple(torch.broadcast_shapes(tuple(a.shape), tuple(b.shape))) == tuple(out.shape)
    except RuntimeError:
        return False


@writes_into(LayerKind.ACTIVATION, when=_activation_into_ok)
def activation_into(p: ActivationParams, out: torch.Tensor, x: torch.Tensor) -> None:
    _ACTIVATIONS_INTO[p.type](x, p.alpha, p.beta, out)


@writes_into(LayerKind.ELEMENTWISE, when=_elementwise_into_ok)
def elementwise_into(p: ElementWiseParams, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    _ELEMENTWISE_INTO[p.op](a, b, out=out)
