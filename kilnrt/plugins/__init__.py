"""User-defined layer kinds: register a plugin once, use it from ONNX, the network API and PyTorch.

::

    import kilnrt.plugins as kp

    @kp.register("demo::scaled_tanh", shape=lambda x, *, alpha: x.like())
    def scaled_tanh(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
        return alpha * torch.tanh(x)          # the PyTorch reference (CPU and GPU)

    @scaled_tanh.kernel("triton")             # optional: a CUDA kernel, timed as a tactic
    def _(x, *, alpha): ...

The decorated function is the reference; its positional parameters are the inputs, its
keyword-only parameters the attributes (plain data: what a plan stores).  ``shape(*descs,
**attributes)`` is the shape and type rule over :class:`TensorDesc` (symbolic dims).  The plugin
is then found by an ONNX node of domain ``demo`` and op type ``scaled_tanh``, by
``network.add_plugin_v3(inputs, [], scaled_tanh.instance(alpha=0.5))``, by TensorRT's creator
lookup (``kilnrt.trt.get_plugin_registry()``), and by ``kilnrt.compile`` for a PyTorch custom op
``demo::scaled_tanh``.  A plan stores the plugin's id, version and attributes, never its code: a
process that loads the plan registers the plugin first (imports the module that does).
See docs/plugins.md.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from kilnrt.errors import ErrorCode, KilnError
from kilnrt.kernels import plugin as _kernels  # plugin kernels become tactics; torch custom ops resolve
from kilnrt.network import plugin as _registry
from kilnrt.network.plugin import (Attribute, PluginDefinition, PluginInstance, PluginKernel, TensorDesc,
                                   split_id)
from kilnrt.plugins.attributes import from_signature


class Plugin:
    """A registered plugin, as :func:`register` returns it: call it to run the reference; add
    kernels and a shape rule with its decorators; make instances for the network API."""

    def __init__(self, definition: PluginDefinition) -> None:
        self.definition = definition
        self.__doc__ = getattr(definition.reference, "__doc__", None)

    @property
    def id(self) -> str:
        return self.definition.id

    def __call__(self, *inputs: Any, **attributes: Any) -> Any:
        return self.definition.reference(*inputs, **attributes)

    def shape(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: ``fn(*descs, **attributes) -> TensorDesc | tuple[TensorDesc, ...]`` is the shape rule."""
        self.definition.shape = fn
        return fn

    def kernel(self, name: str, *, device: str = "cuda",
               supports: Callable[..., bool] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``fn(*inputs, **attributes)`` is a kernel of this plugin on ``device``, the tactic
        ``{device}.plugin.{id}.v{version}.{name}``; ``supports(*descs, **attributes)`` may decline inputs."""
        if device not in ("cpu", "cuda") or not name or "." in name:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"plugin {self.id}: kernel {name!r} on {device!r}: the name "
                                                        "must be non-empty without dots, the device cpu or cuda")

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            kernel = PluginKernel(name, device, fn, supports)
            self.definition.kernels[name] = kernel
            _registry.changed(self.definition)
            fn.tactic_name = _kernels.tactic_name(self.definition, kernel)
            return fn

        return wrap

    def instance(self, name: str = "", **attributes: Any) -> PluginInstance:
        """This plugin with its attributes fixed, for ``network.add_plugin_v3``."""
        return instance(self.id, self.definition.version, name=name, **attributes)

    def __repr__(self) -> str:
        return f"<kilnrt plugin {self.id} v{self.definition.version}>"


def register(plugin_id: str, *, version: str = "1", shape: Callable[..., Any] | None = None, num_outputs: int = 1,
             attributes: Mapping[str, Attribute] | None = None, replace: bool = False
             ) -> Callable[[Callable[..., Any]], Plugin]:
    """Decorator: register the decorated PyTorch function as the reference of plugin
    ``plugin_id`` (``"namespace::name"``); see the module docstring."""
    namespace, name = _checked_id(plugin_id)

    def wrap(fn: Callable[..., Any]) -> Plugin:
        try:
            attrs = dict(attributes) if attributes is not None else from_signature(fn)
            d = PluginDefinition(name, namespace, str(version), attrs, int(num_outputs), shape, fn,
                                 origin=f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}")
            _registry.add(d, replace=replace)
        except ValueError as exc:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"plugin {plugin_id}: {exc}") from None
        return Plugin(d)

    return wrap


def define(definition: PluginDefinition, *, replace: bool = False) -> Plugin:
    """Register a complete :class:`PluginDefinition` (what :func:`register` builds from a function)."""
    try:
        _registry.add(definition, replace=replace)
    except ValueError as exc:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None
    return Plugin(definition)


def deregister(plugin_id: str, version: str | None = None) -> bool:
    """Remove a plugin (every version when ``version`` is None); whether there was one."""
    namespace, name = _checked_id(plugin_id)
    found = [d for d in _registry.definitions() if (d.namespace, d.name) == (namespace, name) and not d.builtin
             and (version is None or d.version == str(version))]
    for d in found:
        _registry.remove(d)
    return bool(found)


def get(plugin_id: str, version: str | None = None) -> Plugin:
    """The registered plugin (the newest version when ``version`` is None); KilnError if none."""
    namespace, name = _checked_id(plugin_id)
    d = _registry.find(name, None if version is None else str(version), namespace)
    if d is None:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, _registry.missing_message(name, version, namespace))
    return Plugin(d)


def registered(builtin: bool = False) -> list[PluginDefinition]:
    """Every registered plugin (with kilnrt's built-in ones when ``builtin``)."""
    return [d for d in _registry.definitions() if builtin or not d.builtin]


def instance(plugin_id: str, version: str | None = None, *, name: str = "", **attributes: Any) -> PluginInstance:
    """Plugin ``plugin_id`` with ``attributes`` checked and fixed: ``network.add_plugin_v3(inputs, [], it)``."""
    d = get(plugin_id, version).definition
    try:
        params = d.make_params(attributes)
    except ValueError as exc:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"plugin {d.id} v{d.version}: {exc}") from None
    return PluginInstance(d, params, name)


def _checked_id(plugin_id: str) -> tuple[str, str]:
    try:
        return split_id(plugin_id)
    except ValueError as exc:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None


__all__ = ["Attribute", "Plugin", "PluginDefinition", "PluginInstance", "PluginKernel", "TensorDesc", "define",
           "deregister", "get", "instance", "register", "registered"]
