"""CPU kernels for type conversion and (de)quantization: CAST, QUANTIZE, DEQUANTIZE.

Also the codecs for the types torch stores but cannot compute with: the sub-byte
integers (INT4, UINT4, INT2, UINT2; one element per byte, the value in the low bits, as
ml_dtypes lays them out) and FP8_E8M0 (a power of two, rounded by ONNX's rules).
Conversions follow ONNX: float -> int truncates (sub-byte ints wrap, as a C cast does);
float8 targets saturate to the largest finite value unless ``saturate`` is off, when
out-of-range values become NaN (E4M3FN and the FNUZ types) or inf (E5M2).
"""
from __future__ import annotations

import torch

from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import CastParams, DequantizeParams, LayerKind, QuantizeParams

# torch dtype -> (bits, signed)
SUB_BYTE = {torch.int4: (4, True), torch.uint4: (4, False), torch.int2: (2, True), torch.uint2: (2, False)}
FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz)
E8M0 = torch.float8_e8m0fnu


def int_range(dtype: torch.dtype) -> tuple[int, int]:
    """The smallest and largest value of an integer dtype (sub-byte ones included)."""
    if dtype in SUB_BYTE:
        bits, signed = SUB_BYTE[dtype]
        return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    info = torch.iinfo(dtype)
    return int(info.min), int(info.max)


def decode(x: torch.Tensor) -> torch.Tensor:
    """A tensor torch computes with: sub-byte integers become int8 / uint8; others are unchanged."""
    if x.dtype not in SUB_BYTE:
        return x
    bits, signed = SUB_BYTE[x.dtype]
    raw = x.view(torch.uint8) & ((1 << bits) - 1)
    if not signed:
        return raw
    v = raw.to(torch.int8)
    return torch.where(v >= (1 << (bits - 1)), v - (1 << bits), v)


def _integers(x: torch.Tensor) -> torch.Tensor:
    """int64 values of x, floats truncated toward zero (NaN -> 0), uint64 by its bits."""
    if x.dtype == torch.uint64:
        return x.view(torch.int64)
    if x.dtype.is_floating_point:
        f = x.to(torch.float64)
        return torch.nan_to_num(torch.trunc(f), nan=0.0).to(torch.int64)
    return x.to(torch.int64)


def _to_sub_byte(x: torch.Tensor, to: torch.dtype) -> torch.Tensor:
    bits, _ = SUB_BYTE[to]
    return (_integers(x) & ((1 << bits) - 1)).to(torch.uint8).view(to)


# |x| above which a non-saturating E4M3FN conversion overflows (448 is its largest value and
# 464 the midpoint to the next binade step, which rounds to even, i.e. down to 448)
_E4M3FN_OVERFLOW = 464.0


def to_float8(x: torch.Tensor, to: torch.dtype, saturate: bool) -> torch.Tensor:
    if not x.dtype.is_floating_point or x.dtype in FLOAT8 or x.dtype == E8M0:
        x = x.to(torch.float32)
    if saturate:
        big = torch.finfo(to).max
        return torch.clamp(x, -big, big).to(to)
    y = x.to(to)
    if to == torch.float8_e4m3fn:   # torch saturates E4M3FN; ONNX's saturate=0 gives NaN
        overflow = (x.abs() > _E4M3FN_OVERFLOW) & ~torch.isnan(x)
        bits = torch.where(overflow, y.view(torch.uint8) | 0x7F, y.view(torch.uint8))
        y = bits.view(to)
    return y


def _to_e8m0(x: torch.Tensor, saturate: bool, round_mode: str) -> torch.Tensor:
    """ONNX's float -> FLOAT8E8M0: keep the float32 exponent, round it up/down/to nearest."""
    bits = x.to(torch.float32).view(torch.int32)
    exponent = (bits >> 23) & 0xFF
    special = exponent == 0xFF
    if round_mode == "up":
        round_up = ((bits & 0x7FFFFF) != 0) & ~special
    elif round_mode == "nearest":
        g, r, s = (bits & 0x400000) != 0, (bits & 0x200000) != 0, (bits & 0x1FFFFF) != 0
        round_up = g & (r | s | (exponent > 0)) & ~special
    elif round_mode == "down":
        round_up = torch.zeros_like(special)
    else:
        raise ValueError(f"round_mode={round_mode!r}; supported: up, down, nearest")
    if saturate:
        round_up = round_up & (exponent != 0xFE)
    exponent = torch.where(special, 0xFF, exponent + round_up.to(torch.int32))
    return exponent.clamp(0, 0xFF).to(torch.uint8).view(E8M0)


def convert(x: torch.Tensor, to: torch.dtype, saturate: bool = True, round_mode: str = "up") -> torch.Tensor:
    """x converted to ``to`` with ONNX's Cast semantics."""
    if x.device.type == "meta":
        return torch.empty(x.shape, dtype=to, device="meta")
    x = decode(x)
    if to in SUB_BYTE:
        return _to_sub_byte(x, to)
    if to in FLOAT8:
        return to_float8(x, to, saturate)
    if to == E8M0:
        return _to_e8m0(x, saturate, round_mode)
    if x.dtype in FLOAT8 or x.dtype == E8M0:
        x = x.to(torch.float32)
    return x.to(to)


@kernel(LayerKind.CAST)
def cast(p: CastParams, x: torch.Tensor) -> torch.Tensor:
    return convert(x, p.to.torch, p.saturate, p.round_mode)


# ----------------------------------------------------------------------------- (de)quantize
def broadcast_param(v: torch.Tensor, shape: tuple[int, ...], axis: int, block_size: int) -> torch.Tensor:
    """A scale / zero point made broadcastable to ``shape``: per tensor (a scalar or one
    value), per axis (a vector along ``axis``) or blocked (``block_size`` along ``axis``)."""
    if v.dim() == 0 or v.numel() == 1:
        return v.reshape(())
    rank = len(shape)
    axis = axis % rank
    if block_size:
        v = torch.repeat_interleave(v, block_size, dim=axis)
        return v.narrow(axis, 0, shape[axis])
    return v.reshape([v.numel() if i == axis else 1 for i in range(rank)])


@kernel(LayerKind.QUANTIZE)
def quantize(p: QuantizeParams, x: torch.Tensor, scale: torch.Tensor,
             zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """y = saturate(round_half_even(x / scale) + zero_point); float8: saturate-cast(x / scale)."""
    to = p.to_type.torch
    if x.device.type == "meta":
        return torch.empty(x.shape, dtype=to, device="meta")
    if x.dtype in (torch.float16, torch.bfloat16):   # not rounded to 16 bits before the rounding to integers
        x = x.to(torch.float32)
    q = x / broadcast_param(scale, tuple(x.shape), p.axis, p.block_size)
    if to in FLOAT8:
        return to_float8(q, to, p.saturate)
    q = torch.round(q.to(torch.float64))
    if zero_point is not None:
        q = q + broadcast_param(decode(zero_point), tuple(x.shape), p.axis, p.block_size).to(torch.float64)
    lo, hi = int_range(to)
    q = torch.clamp(q, lo, hi).to(torch.int64)
    return _to_sub_byte(q, to) if to in SUB_BYTE else q.to(to)


@kernel(LayerKind.DEQUANTIZE)
def dequantize(p: DequantizeParams, x: torch.Tensor, scale: torch.Tensor,
               zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """y = (x - zero_point) * scale, computed in float32 (float64 for a float64 scale)."""
    to = p.to_type.torch
    if x.device.type == "meta":
        return torch.empty(x.shape, dtype=to, device="meta")
    compute = torch.float64 if scale.dtype == torch.float64 else torch.float32
    shape = tuple(x.shape)
    dx = convert(x, compute)
    if zero_point is not None and x.dtype not in FLOAT8:
        dx = dx - broadcast_param(convert(zero_point, compute), shape, p.axis, p.block_size)
    y = dx * broadcast_param(scale.to(compute), shape, p.axis, p.block_size)
    return y.to(to)
