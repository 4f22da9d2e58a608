"""The PLUGIN layer's CPU kernel: a table of built-in plugins, looked up by (name, version).

A built-in plugin is a function ``fn(params, *inputs)`` like any kernel, registered with
``@builtin_plugin("Unique")``; ``params`` is the layer's :class:`PluginParams` (read its
fields with ``params.field(key)``).  An optional ``rank_rule`` (see ``kernels/cpu/shape.py``)
gives its outputs' ranks and dtypes when its output shape depends on values.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from kilnrt.errors import ErrorCode, KilnError
from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import LayerKind, PluginParams

_BUILTIN: dict[tuple[str, str], Callable[..., Any]] = {}


def builtin_plugin(name: str, version: str = "1", rank_rule: Callable[..., Any] | None = None) -> Callable:
    """Register ``fn(params, *inputs)`` as the built-in plugin ``name`` (``version``)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = (name, version)
        if key in _BUILTIN:
            raise ValueError(f"built-in plugin {name!r} version {version} is registered twice")
        if rank_rule is not None:
            fn.rank_rule = rank_rule
        _BUILTIN[key] = fn
        return fn

    return wrap


def lookup_plugin(name: str, version: str = "1") -> Callable[..., Any]:
    fn = _BUILTIN.get((name, version))
    if fn is None:
        known = ", ".join(f"{n} v{v}" for n, v in sorted(_BUILTIN)) or "none"
        raise KilnError(ErrorCode.UNSUPPORTED_NODE,
                        f"no plugin named {name!r} version {version} is registered; built-in plugins: {known}")
    return fn


def _plugin_rank_rule(p: PluginParams, *inputs: torch.Tensor | None):
    rule = getattr(lookup_plugin(p.name, p.version), "rank_rule", None)
    if rule is None:
        raise NotImplementedError(f"plugin {p.name} has no rank rule")
    return rule(p, *inputs)


@kernel(LayerKind.PLUGIN)
def plugin(p: PluginParams, *inputs: torch.Tensor | None):
    return lookup_plugin(p.name, p.version)(p, *inputs)


plugin.rank_rule = _plugin_rank_rule
