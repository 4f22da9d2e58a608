"""TensorRT's ``tensorrt.plugin`` decorators (quickly deployable plugins) over :mod:`kilnrt.plugins`.

::

    import kilnrt.trt.plugin as trtp   # or: import kilnrt.trt as trt; trt.plugin.register(...)

    @trtp.register("demo::add_one")
    def add_one_desc(inp0: trtp.TensorDesc, delta: float) -> trtp.TensorDesc:
        return inp0.like()

    @trtp.impl("demo::add_one")
    def add_one_impl(inp0: trtp.Tensor, delta: float, outputs, stream) -> None:
        outputs[0].copy_(inp0 + delta)

``register``'s function is the shape rule (TensorDesc parameters are the inputs, the others the
attributes); ``impl`` writes the outputs it is given.  kilnrt passes torch tensors on the
engine's device as ``trtp.Tensor`` (``torch.as_tensor(t, device="cuda")`` returns them as they
are), and the current CUDA stream's handle (0 on the CPU).  The impl is the plugin's
reference on every device; each tactic that ``autotune`` lists is also a CUDA tactic the builder
times.  See docs/plugins.md for what is not supported yet (AOT kernels, size tensors, aliased
outputs, tuned type/format combinations).
"""
from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Sequence

import torch

from kilnrt.errors import ErrorCode, ExecutionError, KilnError
from kilnrt.network import plugin as _registry
from kilnrt.network.dtypes import DataType
from kilnrt.network.plugin import PluginDefinition, PluginInstance, PluginKernel, TensorDesc, split_id
from kilnrt.plugins.attributes import from_signature, hints   # (importing kilnrt.plugins makes kernels tactics)
from kilnrt.trt.strict import warn_once

Tensor = torch.Tensor   # what an impl receives


def from_shape_expr(shape_expr: Sequence[Any], dtype: DataType) -> TensorDesc:
    """A TensorDesc of this shape (ints or expressions of input dims) and dtype."""
    return TensorDesc(tuple(shape_expr), dtype)


class AutoTuneCombination:
    """TensorRT's autotune entry: kilnrt takes its ``tactics`` (each a CUDA tactic it times); the
    type and format lists are accepted but not tuned (plugins run at their inputs' types)."""

    def __init__(self, io_types: str | None = None, layouts: str | None = None,
                 tactics: Sequence[int] | None = None) -> None:
        self.io_types, self.layouts = io_types, layouts
        self._tactics = [int(t) for t in tactics or ()]

    def pos(self, pos: Any, io_types: str, layouts: str = "LINEAR") -> None:
        self.io_types = io_types

    def tactics(self, tactics: Sequence[int]) -> None:
        self._tactics = [int(t) for t in tactics]


def _unsupported(what: str, instead: str) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"trt.plugin.{what} is not supported yet; {instead} "
                                                    "(see docs/plugins.md)")
    fail.__name__ = what
    return fail


aot_impl = _unsupported("aot_impl", "give a JIT implementation with @trt.plugin.impl (kilnrt times its tactics)")
size_tensor = _unsupported("size_tensor", "a kilnrt plugin's shape rule may return None for a data-dependent dim "
                                          "(kilnrt.plugins.register), which @trt.plugin.impl cannot allocate")


def _definition(plugin_id: str) -> PluginDefinition:
    namespace, name = split_id(plugin_id)
    d = _registry.find(name, None, namespace, resolve=False)
    if d is None or d.builtin:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"plugin {plugin_id} is not registered: decorate its "
                                                    f"description with @trt.plugin.register({plugin_id!r}) first")
    return d


def _is_desc(annotation: Any) -> bool:
    return annotation is TensorDesc or (isinstance(annotation, str) and annotation.split(".")[-1] == "TensorDesc")


def _num_outputs(annotation: Any, plugin_id: str) -> int:
    if _is_desc(annotation):
        return 1
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and args and Ellipsis not in args and all(_is_desc(a) for a in args):
        return len(args)
    raise KilnError(ErrorCode.INVALID_ARGUMENT, f"@trt.plugin.register({plugin_id!r}): annotate the return as "
                                                "TensorDesc or Tuple[TensorDesc, ...] with one entry per output")


def register(plugin_id: str, lazy_register: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a plugin whose description (shape and type rule) is the decorated function."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        namespace, name = split_id(plugin_id)
        ann = hints(fn)
        params = list(inspect.signature(fn).parameters.values())
        inputs = [p.name for p in params if _is_desc(ann.get(p.name))]
        try:
            attrs = from_signature(fn, keyword_only=False, skip=inputs)
        except ValueError as exc:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"@trt.plugin.register({plugin_id!r}): {exc}") from None
        n = _num_outputs(ann.get("return"), plugin_id)

        def shape(*descs: TensorDesc, **attributes: Any):
            return fn(*descs, **attributes)

        d = PluginDefinition(name, namespace, "1", attrs, n, shape, None,
                             origin=f"@trt.plugin.register on {getattr(fn, '__qualname__', fn)}")
        d.qdp = {"impl": None, "tactics": []}
        try:
            _registry.add(d)
        except ValueError as exc:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None
        return fn

    return wrap


def impl(plugin_id: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The plugin's computation: ``fn(inputs..., attributes..., outputs, stream[, tactic])``."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        d = _definition(plugin_id)
        d.qdp["impl"] = fn
        _refresh(d)
        return fn

    return wrap


def autotune(plugin_id: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The plugin's tactics: each ``AutoTuneCombination``'s tactics become CUDA tactics that the
    builder times (the function is called once, with descriptions of unknown shape)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        d = _definition(plugin_id)
        params = inspect.signature(fn).parameters.values()
        inputs = [TensorDesc() for p in params if p.name not in d.attributes and p.name != "outputs"]
        attrs = {p.name: d.attributes[p.name].default for p in params if p.name in d.attributes}
        attrs = {k: (None if v is _registry._REQUIRED else v) for k, v in attrs.items()}
        combos = fn(*inputs, outputs=tuple(TensorDesc() for _ in range(d.num_outputs)), **attrs)
        tactics = sorted({t for c in combos for t in getattr(c, "_tactics", [])})
        if any(getattr(c, "io_types", None) or getattr(c, "layouts", None) for c in combos):
            warn_once(f"autotune-types:{plugin_id}", "plugin %s: kilnrt runs plugins at the types their inputs "
                      "have; the type/format combinations of @trt.plugin.autotune are not tuned (its tactics are)",
                      plugin_id)
        d.qdp["tactics"] = tactics
        _refresh(d)
        return fn

    return wrap


def _refresh(d: PluginDefinition) -> None:
    """The reference (the impl at its first tactic) and one CUDA kernel per autotune tactic."""
    fn = d.qdp["impl"]
    if fn is None:
        return
    tactics = d.qdp["tactics"]
    d.reference = _run_impl(d, fn, tactics[0] if tactics else None)
    d.kernels = {f"tactic{t}": PluginKernel(f"tactic{t}", "cuda", _run_impl(d, fn, t)) for t in tactics}
    _registry.changed(d)


def _run_impl(d: PluginDefinition, fn: Callable[..., Any], tactic: int | None) -> Callable[..., Any]:
    taken = set(inspect.signature(fn).parameters)

    def run(*inputs: torch.Tensor, **attributes: Any) -> tuple[torch.Tensor, ...]:
        descs = [TensorDesc(tuple(t.shape), DataType.from_torch(t.dtype)) for t in inputs]
        out_descs = d.shape(*descs, **attributes)
        out_descs = list(out_descs) if isinstance(out_descs, (tuple, list)) else [out_descs]
        outputs = []
        for k, o in enumerate(out_descs):
            if o.shape is None or not all(isinstance(x, int) for x in o.shape):
                raise ExecutionError(ErrorCode.RUNTIME, f"plugin {d.id}: output {k}'s shape {o.shape} is not known "
                                                        "from the input shapes, so its buffer cannot be allocated")
            outputs.append(torch.empty(o.shape, dtype=(o.dtype or descs[0].dtype).torch, device=inputs[0].device))
        device = inputs[0].device
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
        extra = {"outputs": tuple(outputs), "stream": stream}
        if "tactic" in taken:
            extra["tactic"] = tactic
        fn(*inputs, **{k: v for k, v in attributes.items() if k in taken}, **extra)
        return tuple(outputs)

    return run


class _Namespace:
    def __init__(self, namespace: str) -> None:
        self._namespace = namespace

    def __getattr__(self, name: str) -> Callable[..., tuple]:
        if name.startswith("__"):
            raise AttributeError(name)
        plugin_id = f"{self._namespace}::{name}"

        def call(*inputs: Any, **attributes: Any) -> tuple:
            d = _definition(plugin_id)
            try:
                params = d.make_params(attributes)
            except ValueError as exc:
                raise KilnError(ErrorCode.INVALID_ARGUMENT, f"plugin {plugin_id}: {exc}") from None
            return (list(inputs), [], PluginInstance(d, params))

        return call


class _Ops:
    """``trt.plugin.op.<namespace>.<name>(inputs..., attributes...)``, for ``network.add_plugin``."""

    def __getattr__(self, namespace: str) -> _Namespace:
        if namespace.startswith("__"):
            raise AttributeError(namespace)
        return _Namespace(namespace)


op = _Ops()

__all__ = ["AutoTuneCombination", "Tensor", "TensorDesc", "aot_impl", "autotune", "from_shape_expr", "impl", "op",
           "register", "size_tensor"]
