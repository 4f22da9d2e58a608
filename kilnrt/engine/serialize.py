"""Layer params <-> JSON, without pickle: enums by name, tuples tagged, arrays by weight key.

Decoding builds only the params dataclasses of :data:`kilnrt.network.layers.PARAMS` and the
enums of :data:`kilnrt.network.layers.ENUMS`; anything else in a plan is refused.
"""
from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from typing import Any, Callable

import numpy as np

from kilnrt.errors import ErrorCode, PlanError
from kilnrt.network.layers import ENUMS, PARAMS, LayerKind, Subgraph, SubgraphLayer

# dataclasses that may appear *inside* params (control-flow bodies), by class name
_NESTED = {cls.__name__: cls for cls in (*PARAMS.values(), Subgraph, SubgraphLayer)}


def _encode(v: Any, put_weight: Callable[[np.ndarray], str] | None) -> Any:
    if isinstance(v, enum.Enum):
        return {"enum": type(v).__name__, "name": v.name}
    if isinstance(v, np.ndarray):
        if put_weight is None:
            return {"array": list(v.shape), "dtype": str(v.dtype)}
        return {"weight": put_weight(v)}
    if isinstance(v, (tuple, list)):
        return {"tuple": [_encode(x, put_weight) for x in v]}
    if isinstance(v, float) and not math.isfinite(v):
        return {"float": repr(v)}
    if isinstance(v, (np.generic,)):
        return _encode(v.item(), put_weight)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if dataclasses.is_dataclass(v) and type(v).__name__ in _NESTED:
        return {"dataclass": type(v).__name__,
                "fields": {f.name: _encode(getattr(v, f.name), put_weight) for f in dataclasses.fields(v)}}
    raise TypeError(f"cannot serialize a {type(v).__name__} in layer params")


def _decode(v: Any, weights: dict[str, np.ndarray]) -> Any:
    if isinstance(v, dict):
        if "enum" in v:
            cls = ENUMS.get(v["enum"])
            if cls is None or v["name"] not in cls.__members__:
                raise PlanError(ErrorCode.PLAN_CORRUPT, f"unknown enum value {v['enum']}.{v['name']} in the plan")
            return cls[v["name"]]
        if "tuple" in v:
            return tuple(_decode(x, weights) for x in v["tuple"])
        if "weight" in v:
            if v["weight"] not in weights:
                raise PlanError(ErrorCode.PLAN_CORRUPT, f"the plan refers to missing weights {v['weight']!r}")
            return weights[v["weight"]]
        if "float" in v:
            return float(v["float"])
        if "dataclass" in v and v["dataclass"] in _NESTED and isinstance(v.get("fields"), dict):
            cls = _NESTED[v["dataclass"]]
            names = {f.name for f in dataclasses.fields(cls)}
            if set(v["fields"]) - names:
                raise PlanError(ErrorCode.PLAN_CORRUPT, f"{cls.__name__} has unknown fields in the plan")
            return cls(**{k: _decode(x, weights) for k, x in v["fields"].items()})
        raise PlanError(ErrorCode.PLAN_CORRUPT, f"unexpected value {v!r} in layer params")
    if isinstance(v, list):
        raise PlanError(ErrorCode.PLAN_CORRUPT, "unexpected list in layer params")
    return v


def encode_params(params: Any, put_weight: Callable[[np.ndarray], str] | None) -> dict:
    return {f.name: _encode(getattr(params, f.name), put_weight) for f in dataclasses.fields(params)}


def decode_params(kind: LayerKind, data: dict, weights: dict[str, np.ndarray]) -> Any:
    cls = PARAMS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise PlanError(ErrorCode.PLAN_CORRUPT, f"{kind.value} params have unknown fields {sorted(unknown)}")
    values = {k: _decode(v, weights) for k, v in data.items()}
    hints = _hints(cls)
    for k, v in values.items():
        if not conforms(v, hints.get(k, Any)):
            raise PlanError(ErrorCode.PLAN_CORRUPT, f"{kind.value} params: field {k!r} is {_short(v)}, "
                                                    f"not a {_hint_text(hints[k])}")
    params = cls(**values)
    if kind == LayerKind.PLUGIN:   # the plugin must be registered here, its attributes fit it
        from kilnrt.kernels.plugin import require

        require(params)
    return params


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        import kilnrt.network.layers as layers

        _HINTS[cls] = typing.get_type_hints(cls, vars(layers))
    return _HINTS[cls]


def conforms(value: Any, hint: Any) -> bool:
    """Whether a decoded params value has its field's annotated type (ints pass for floats)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(conforms(v, a) for v, a in zip(value, args)))
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _hint_text(hint: Any) -> str:
    if typing.get_origin(hint) is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", None) or str(hint)
