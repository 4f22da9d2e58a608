"""CPU kernels for pointwise layers: activation, elementwise, unary, cast, select, scale, identity."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import (ActivationParams, ActivationType as A, CastParams,
                                   ElementWiseOperation as E, ElementWiseParams, IdentityParams,
                                   LayerKind, ScaleMode, ScaleParams, SelectParams,
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


@kernel(LayerKind.ELEMENTWISE)
def elementwise(p: ElementWiseParams, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _ELEMENTWISE[p.op](a, b)


_UNARY = {
    U.EXP: torch.exp, U.LOG: torch.log, U.SQRT: torch.sqrt, U.RECIP: torch.reciprocal,
    U.ABS: torch.abs, U.NEG: torch.neg, U.SIN: torch.sin, U.COS: torch.cos, U.TAN: torch.tan,
    U.SINH: torch.sinh, U.COSH: torch.cosh, U.ASIN: torch.asin, U.ACOS: torch.acos,
    U.ATAN: torch.atan, U.ASINH: torch.asinh, U.ACOSH: torch.acosh, U.ATANH: torch.atanh,
    U.CEIL: torch.ceil, U.FLOOR: torch.floor, U.ERF: torch.erf, U.NOT: torch.logical_not,
    U.SIGN: torch.sign, U.ROUND: torch.round, U.ISINF: torch.isinf, U.ISINF_POS: torch.isposinf,
    U.ISINF_NEG: torch.isneginf, U.ISNAN: torch.isnan, U.BITWISE_NOT: torch.bitwise_not,
}


@kernel(LayerKind.UNARY)
def unary(p: UnaryParams, x: torch.Tensor) -> torch.Tensor:
    return _UNARY[p.op](x)


@kernel(LayerKind.CAST)
def cast(p: CastParams, x: torch.Tensor) -> torch.Tensor:
    return x.to(p.to.torch)


@kernel(LayerKind.SELECT)
def select(p: SelectParams, cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(cond.to(torch.bool), a, b)


@kernel(LayerKind.IDENTITY)
def identity(p: IdentityParams, x: torch.Tensor) -> torch.Tensor:
    return x


def _broadcast_channel(v: torch.Tensor, x: torch.Tensor, p: ScaleParams) -> torch.Tensor:
    if p.mode == ScaleMode.CHANNEL and v.dim() == 1:
        axis = p.channel_axis % x.dim()
        return v.reshape((-1,) + (1,) * (x.dim() - axis - 1))
    return v


@kernel(LayerKind.SCALE)
def scale(p: ScaleParams, x: torch.Tensor, shift: torch.Tensor | None = None,
          scale_: torch.Tensor | None = None, power: torch.Tensor | None = None) -> torch.Tensor:
    y = x
    if scale_ is not None:
        y = y * _broadcast_channel(scale_, x, p)
    if shift is not None:
        y = y + _broadcast_channel(shift, x, p)
    if power is not None:
        y = torch.pow(y, _broadcast_channel(power, x, p))
    return y
