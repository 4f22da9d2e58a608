"""Importers for type conversion: Cast, CastLike."""
from __future__ import annotations

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import CastParams, LayerKind
from kilnrt.onnx.registry import importer

_ROUND_MODES = ("up", "down", "nearest")


def onnx_dtype(ctx, to: int, what: str = "to") -> DataType:
    """The kilnrt DataType of an ONNX element type, or an import error naming the supported ones."""
    try:
        return DataType.from_onnx(int(to))
    except TypeError as exc:
        raise ctx.error(ErrorCode.UNSUPPORTED_NODE_DATATYPE, f"{what}: {exc}") from None


def cast_layer(ctx, x, to: DataType, saturate=1, round_mode="up"):
    ctx.require(round_mode in _ROUND_MODES, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"round_mode={round_mode!r}; supported: {', '.join(_ROUND_MODES)}")
    return ctx.out(LayerKind.CAST, CastParams(to, bool(saturate), round_mode), x)


@importer("Cast")
def cast(ctx, node, x, *, to=None, saturate=1, round_mode="up"):
    """Cast: float8 targets saturate unless saturate=0; round_mode applies to FLOAT8E8M0."""
    ctx.require(to is not None, ErrorCode.INVALID_NODE, "attribute 'to' is required")
    return cast_layer(ctx, x, onnx_dtype(ctx, to), saturate, round_mode)


@importer("CastLike", since=15)
def cast_like(ctx, node, x, target, *, saturate=1, round_mode="up"):
    """CastLike: Cast to the element type of ``target``."""
    return cast_layer(ctx, x, ctx.dtype(target), saturate, round_mode)
