"""The PLUGIN layer's CPU kernel: the plugin's PyTorch implementation, from the plugin registry.

Every plugin, user-defined or built in, is one entry of :mod:`kilnrt.network.plugin`.  A
built-in plugin registers its kernel here with ``@builtin_plugin("Unique")`` as a function
``fn(params, *inputs)`` like any kernel (read its attributes with ``params.field(key)``), and its
shape rule with ``@plugin_rule`` in :mod:`kilnrt.network.shape_rules`.  An optional
``rank_rule`` (see ``kernels/cpu/shape.py``) gives its outputs' ranks and dtypes when its output
shape depends on values.  User plugins register through :mod:`kilnrt.plugins`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from kilnrt.kernels.plugin import lookup, run_reference
from kilnrt.kernels.registry import kernel
from kilnrt.network import plugin as plugins
from kilnrt.network.layers import LayerKind, PluginParams


def builtin_plugin(name: str, version: str = "1", rank_rule: Callable[..., Any] | None = None) -> Callable:
    """Register ``fn(params, *inputs)`` as the kernel of the built-in plugin ``name`` (``version``)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        d = plugins.builtin(name, version)
        if d.reference is not None:
            raise ValueError(f"built-in plugin {name!r} version {version} is registered twice")
        d.reference, d.rank_rule = fn, rank_rule
        return fn

    return wrap


def _plugin_rank_rule(p: PluginParams, *inputs: torch.Tensor | None):
    rule = lookup(p).rank_rule
    if rule is None:
        raise NotImplementedError(f"plugin {plugins.plugin_id(p.name, p.namespace)} has no rank rule")
    return rule(p, *inputs)


@kernel(LayerKind.PLUGIN)
def plugin(p: PluginParams, *inputs: torch.Tensor | None):
    return run_reference(p, *inputs)


plugin.rank_rule = _plugin_rank_rule
