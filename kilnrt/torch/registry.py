"""The ATen-op importer table: one place to add an ATen op.

An importer is a function registered under one or more ATen overloads::

    @aten(torch.ops.aten.linear.default)
    def linear(ctx, input, weight, bias=None):
        \"\"\"linear: a matrix multiply by the transposed weight, plus the bias.\"\"\"

Its parameters after ``ctx`` carry the names of the overload's schema arguments; the
converter binds a node's args and kwargs to them, with the schema's defaults.  A schema
argument the importer does not name must keep its default, else the node is reported as
unsupported before anything is converted (as ONNX attributes are).  Tensors arrive as
:class:`~kilnrt.network.graph.Tensor`, symbolic sizes as int64 scalar tensors (or ints
where known), lists as lists.  Python callables in the graph (``operator.getitem``,
``operator.mul`` on sizes) are registered the same way, with positional parameters.

The table is keyed by the overload's qualified name (``"aten.linear.default"``), so an op
of any namespace (``"mylib.my_op.default"``, a custom op) can be registered with the same
decorator, by a plugin for instance, without touching the converter.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class AtenImporter:
    name: str                       # "aten.linear.default", "_operator.getitem"
    fn: Callable[..., Any]
    doc: str

    @property
    def parameters(self) -> list[str]:
        return [p.name for p in list(inspect.signature(self.fn).parameters.values())[1:]
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    @property
    def accepts_any_argument(self) -> bool:
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(self.fn).parameters.values())


_TABLE: dict[str, AtenImporter] = {}


def target_name(target: Any) -> str:
    """The table key of an FX node's target: ``"aten.add.Tensor"``, ``"_operator.mul"``."""
    if isinstance(target, str):
        return target
    name = getattr(target, "_name", None)  # torch._ops.OpOverload: "aten::add.Tensor"
    overload = getattr(target, "_overloadname", None)
    if name is not None and overload is not None and "::" in name:
        ns, op = name.split("::", 1)
        op = op.split(".")[0]
        return f"{ns}.{op}.{overload}"
    if getattr(target, "namespace", None) == "higher_order":
        return f"higher_order.{getattr(target, '__name__', target)}"
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__name__', repr(target))}"


def aten(*targets: Any) -> Callable:
    """Register ``fn`` as the importer of each of ``targets`` (OpOverloads, callables or names)."""

    def wrap(fn: Callable) -> Callable:
        doc = (fn.__doc__ or "").strip().split("\n")[0]
        for target in targets:
            key = target_name(target)
            if key in _TABLE:
                raise ValueError(f"an importer for {key} is registered twice")
            _TABLE[key] = AtenImporter(key, fn, doc)
        return fn

    return wrap


def _load_builtin() -> None:
    importlib.import_module("kilnrt.torch.ops")


def lookup(target: Any) -> AtenImporter | None:
    _load_builtin()
    imp = _TABLE.get(target_name(target))
    if imp is None:   # a custom op: a plugin layer (kilnrt/torch/plugin.py)
        from kilnrt.torch.plugin import plugin_importer

        imp = plugin_importer(target)
    return imp


def supported() -> dict[str, AtenImporter]:
    """Every registered importer by key (sorted)."""
    _load_builtin()
    return dict(sorted(_TABLE.items()))


def supported_overloads() -> list[Any]:
    """The registered ATen OpOverloads (for keeping them out of torch's decompositions)."""
    import torch

    out = []
    for key in supported():
        ns, _, rest = key.partition(".")
        op, _, overload = rest.partition(".")
        packet = getattr(getattr(torch.ops, ns, None), op, None) if ns in ("aten", "prims") else None
        if packet is not None and overload in packet.overloads():
            out.append(getattr(packet, overload))
    return out


__all__ = ["AtenImporter", "aten", "lookup", "supported", "supported_overloads", "target_name"]
