"""ONNX nodes that run a registered plugin (:mod:`kilnrt.plugins`).

A node whose (domain, op type) has no importer runs plugin ``domain::op_type`` when one is
registered.  A node of the default domain may name its plugin's namespace and version with the
attributes ``plugin_namespace`` and ``plugin_version``, as TensorRT's ONNX parser reads them.
Every other attribute is a plugin attribute, checked against the plugin's declaration.
"""
from __future__ import annotations

from typing import Any

from kilnrt.errors import ErrorCode
from kilnrt.network import plugin as plugins
from kilnrt.network.layers import LayerKind
from kilnrt.onnx.registry import DEFAULT_DOMAINS, Importer

_CONTROL = ("plugin_namespace", "plugin_version")


def plugin_importer(op_type: str, domain: str) -> Importer | None:
    """An importer for nodes of ``domain::op_type`` if a plugin may run them, else None."""
    namespace = "" if domain in DEFAULT_DOMAINS else domain
    if namespace:
        if plugins.find(op_type, None, namespace) is None:
            return None
    elif not any(d.name == op_type and not d.builtin for d in plugins.definitions()):
        return None

    def import_plugin(ctx, node, *inputs: Any, **attrs: Any):
        ns = str(attrs.pop("plugin_namespace", namespace))
        version = attrs.pop("plugin_version", None)
        d = plugins.find(op_type, None if version is None else str(version), ns)
        ctx.require(d is not None, ErrorCode.UNSUPPORTED_NODE,
                    plugins.missing_message(op_type, None if version is None else str(version), ns))
        try:
            params = d.make_params(attrs)
        except ValueError as exc:
            raise ctx.error(ErrorCode.UNSUPPORTED_NODE_ATTR, f"plugin {d.id} v{d.version}: {exc}") from None
        layer = ctx.add(LayerKind.PLUGIN, params, list(inputs), num_outputs=d.num_outputs)
        return layer.outputs

    import_plugin.__doc__ = f"the registered plugin {plugins.plugin_id(op_type, namespace)}"
    return Importer(op_type, 1, import_plugin, domain, import_plugin.__doc__)
