"""PyTorch custom ops (``torch.library.custom_op``) under ``kilnrt.compile``: PLUGIN layers.

An op ``mylib::scale`` runs the kilnrt plugin ``mylib::scale`` when one is registered (its
reference and kernels, say a Triton kernel timed as a tactic); otherwise the op itself becomes
the plugin (:func:`kilnrt.kernels.plugin.torch_op_plugin`): the engine calls its implementation,
and its fake implementation gives the shapes.  The op's tensor arguments are the plugin's inputs
in schema order, its other arguments the plugin's attributes, by name.
"""
from __future__ import annotations

from typing import Any

import torch

from kilnrt.errors import ErrorCode
from kilnrt.kernels import plugin as kernel_plugins
from kilnrt.network import plugin as plugins
from kilnrt.network.graph import Tensor
from kilnrt.network.layers import LayerKind
from kilnrt.torch.registry import AtenImporter, target_name


def plugin_importer(target: Any) -> AtenImporter | None:
    """An importer running the plugin for the custom op ``target`` (an OpOverload), or None."""
    if not isinstance(target, torch._ops.OpOverload):
        return None
    qualified, overload = target._schema.name, target._overloadname
    namespace, base = qualified.split("::", 1)
    if kernel_plugins.torch_op(namespace, base) is None:   # aten, prims and the like: not plugins
        return None
    name = base if overload == "default" else f"{base}.{overload}"
    tensor_args = [a.name for a in target._schema.arguments if str(a.type) in ("Tensor", "Optional[Tensor]", "Tensor?")]

    def import_plugin(ctx, **args: Any):
        d = plugins.find(name, None, namespace)
        ctx.require(d is not None, ErrorCode.UNSUPPORTED_NODE,
                    f"custom op {qualified} can run neither as a registered kilnrt plugin nor as itself: "
                    + plugins.missing_message(name, None, namespace))
        inputs = [args.pop(n) for n in tensor_args]
        for k, v in args.items():
            ctx.require(not isinstance(v, Tensor), ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                        f"argument {k!r} is a size known only at run time; a plugin attribute must be fixed when "
                        "the engine is built")
        try:
            params = d.make_params({k: v for k, v in args.items() if v is not None or k in d.attributes})
        except ValueError as exc:
            raise ctx.error(ErrorCode.UNSUPPORTED_NODE_ATTR, f"plugin {d.id} v{d.version}: {exc}") from None
        layer = ctx.add(LayerKind.PLUGIN, params, inputs, num_outputs=d.num_outputs)
        return layer.outputs[0] if d.num_outputs == 1 else tuple(layer.outputs)

    import_plugin.__doc__ = f"the custom op {qualified} as a plugin layer"
    return AtenImporter(target_name(target), import_plugin, import_plugin.__doc__)
