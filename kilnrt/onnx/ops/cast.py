"""Importers for type conversion: Cast, CastLike."""
from __future__ import annotations

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.onnx.registry import importer


def _dtype(ctx, to: int) -> DataType:
    try:
        return DataType.from_onnx(int(to))
    except TypeError as exc:
        raise ctx.error(ErrorCode.UNSUPPORTED_NODE_DATATYPE, str(exc)) from None


@importer("Cast")
def cast(ctx, node, x, *, to=None, saturate=1, round_mode="up"):
    ctx.require(to is not None, ErrorCode.INVALID_NODE, "attribute 'to' is required")
    return ctx.cast(x, _dtype(ctx, to))


@importer("CastLike", since=15)
def cast_like(ctx, node, x, target, *, saturate=1, round_mode="up"):
    return ctx.cast(x, ctx.dtype(target))
