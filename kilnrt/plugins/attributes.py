"""A plugin's attributes, read from a Python function's signature.

Keyword-only parameters (``def f(x, *, alpha: float = 1.0)``) are attributes; their annotations
give the kind: ``int``, ``float``, ``bool``, ``str``, ``tuple[int, ...]`` (also ``list[int]``,
floats and strs alike) and ``numpy.ndarray`` / ``numpy.typing.NDArray[...]`` (a 1-D array, stored
in a plan as weights).  A parameter without an annotation takes the kind of its default.
"""
from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Iterable

import numpy as np

from kilnrt.network.plugin import _REQUIRED, Attribute

_SCALARS = {int: "int", float: "float", bool: "bool", str: "str"}
_SEQUENCES = {"int": "ints", "float": "floats", "str": "strs"}


def kind_of(annotation: Any, default: Any = _REQUIRED) -> str | None:
    """The attribute kind of a type annotation (or of a default value), or None."""
    if isinstance(annotation, str):   # an annotation that could not be resolved: read as written
        return _kind_of_text(annotation.replace(" ", ""))
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is np.ndarray or origin is np.ndarray:
        return "array"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        kinds = {kind_of(a) for a in args if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin in (tuple, list, typing.Sequence) and args and args[0] in _SCALARS and args[0] is not bool:
        return _SEQUENCES[_SCALARS[args[0]]]
    if annotation is inspect.Parameter.empty and default is not _REQUIRED and default is not None:
        if isinstance(default, np.ndarray):
            return "array"
        if type(default) in _SCALARS:
            return _SCALARS[type(default)]
        if isinstance(default, (tuple, list)) and default and type(default[0]) in _SCALARS:
            return _SEQUENCES.get(_SCALARS[type(default[0])])
    return None


def hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: use them as written
        return dict(getattr(fn, "__annotations__", {}))


def from_signature(fn: Callable, *, keyword_only: bool = True, skip: Iterable[str] = ()) -> dict[str, Attribute]:
    """The attributes of ``fn``: its keyword-only parameters (or, with ``keyword_only=False``, every
    parameter not in ``skip``).  ValueError for one whose kind cannot be told or stored."""
    ann = hints(fn)
    out: dict[str, Attribute] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if keyword_only and p.kind != p.KEYWORD_ONLY:
            continue
        default = _REQUIRED if p.default is p.empty else p.default
        kind = kind_of(ann.get(p.name, inspect.Parameter.empty), default)
        if kind is None:
            raise ValueError(f"attribute {p.name!r} of {getattr(fn, '__qualname__', fn)}: annotate it as int, float, "
                             f"bool, str, tuple[int, ...], tuple[float, ...], tuple[str, ...] or numpy.ndarray")
        out[p.name] = Attribute(p.name, kind, default)
    return out


def _kind_of_text(text: str) -> str | None:
    names = {"int": "int", "float": "float", "bool": "bool", "str": "str"}
    if text in names:
        return names[text]
    if text.split("[")[0].split(".")[-1] in ("ndarray", "NDArray"):
        return "array"
    for seq in ("tuple", "Tuple", "list", "List", "Sequence", "typing.Tuple", "typing.List"):
        for elem in ("int", "float", "str"):
            if text in (f"{seq}[{elem},...]", f"{seq}[{elem}]"):
                return _SEQUENCES[elem]
    return None
