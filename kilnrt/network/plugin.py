"""Plugins: layer kinds that users define, and the one registry of every plugin.

A plugin is known by ``namespace::name`` and a version.  Its :class:`PluginDefinition` holds
its attributes (names, types, defaults: plain data, which is all a plan stores), a shape and
type rule over :class:`TensorDesc` (symbolic dims, so dynamic shapes work), a PyTorch
*reference* implementation, and optional device kernels that the builder times as tactics.
A network holds a PLUGIN layer whose :class:`~kilnrt.network.layers.PluginParams` name the
plugin and carry its attributes; shape inference, the kernels and the plan loader look the
definition up here.  The ``kilnrt.plugins`` package is the public way to register one;
kilnrt's own built-in plugins (Unique, DFT, ...) live in the same table.

This module is part of the IR: it stores the user's callables but never calls a kernel.
"""
from __future__ import annotations

import dataclasses
import difflib
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kilnrt.errors import ErrorCode, NetworkError
from kilnrt.network import symbolic as S
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind, PluginParams

DOCS = "docs/plugins.md"
_REQUIRED = object()

# attribute kinds: what a plan may store (JSON numbers, strings, tuples of them, arrays as weights)
ATTRIBUTE_KINDS = ("int", "float", "bool", "str", "ints", "floats", "strs", "array")
_SCALAR = {"int": int, "float": float, "bool": bool, "str": str}
_ELEMENT = {"ints": "int", "floats": "float", "strs": "str"}


def plugin_id(name: str, namespace: str = "") -> str:
    return f"{namespace}::{name}" if namespace else name


def split_id(qualified: str) -> tuple[str, str]:
    """``"ns::name"`` -> (namespace, name); a name without ``::`` has the empty namespace."""
    if not isinstance(qualified, str) or not qualified or qualified.count("::") > 1:
        raise ValueError(f"a plugin id is 'namespace::name' or 'name', got {qualified!r}")
    ns, _, name = qualified.rpartition("::")
    if not name:
        raise ValueError(f"a plugin id is 'namespace::name' or 'name', got {qualified!r}")
    return ns, name


# ----------------------------------------------------------------------------- attributes
@dataclasses.dataclass(frozen=True)
class Attribute:
    """One plugin attribute: its name, kind (one of :data:`ATTRIBUTE_KINDS`) and default."""

    name: str
    kind: str
    default: Any = _REQUIRED

    def __post_init__(self) -> None:
        if self.kind not in ATTRIBUTE_KINDS:
            raise ValueError(f"attribute {self.name!r}: kind {self.kind!r} is not one of {', '.join(ATTRIBUTE_KINDS)}")

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def coerce(self, value: Any) -> Any:
        """``value`` as this attribute's kind (numpy scalars and 1-element arrays unwrapped,
        ints accepted for floats); ValueError saying what was wrong."""
        if self.kind == "array":
            a = np.asarray(value)
            if a.dtype == object or a.dtype.kind not in "biuf":
                raise ValueError(f"attribute {self.name!r} must be a numeric array, got {_short(value)}")
            return np.ascontiguousarray(a)
        if self.kind in _SCALAR:
            return _scalar(self.name, self.kind, value)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_scalar(self.name, _ELEMENT[self.kind], v) for v in value)

    def conforms(self, value: Any) -> bool:
        """Whether a value read from a plan is exactly of this kind (no conversion)."""
        if self.kind == "array":
            return isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
        if self.kind in _SCALAR:
            return _is_kind(value, self.kind)
        return isinstance(value, tuple) and all(_is_kind(v, _ELEMENT[self.kind]) for v in value)


def _is_kind(v: Any, kind: str) -> bool:
    if kind == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, _SCALAR[kind])


def _scalar(name: str, kind: str, value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, np.generic):
        value = value.item()
    if kind == "str" and isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind == "bool" and isinstance(value, int) and value in (0, 1):
        value = bool(value)
    if kind == "int" and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_kind(value, kind):
        raise ValueError(f"attribute {name!r} must be {'an' if kind == 'int' else 'a'} {kind}, got {_short(value)}")
    return value


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- shape rules
class TensorDesc:
    """What a shape rule sees of a tensor, and what it returns: a dtype and a shape whose dims
    are ints or symbolic expressions (``x.shape[0] * 2`` works on both).  A returned dim of
    ``None`` is a size known only when the plugin runs (data-dependent).  ``value`` is a
    shape input's known values (ints or expressions), or None."""

    def __init__(self, shape: Sequence[Any] | None = None, dtype: DataType | None = None, value: Any = None) -> None:
        self.shape = None if shape is None else tuple(shape)
        self.dtype = dtype
        self.value = value

    @property
    def shape_expr(self) -> tuple | None:   # TensorRT's name
        return self.shape

    @property
    def ndim(self) -> int:
        if self.shape is None:
            raise ValueError("the rank of this tensor is not known at build time")
        return len(self.shape)

    def like(self) -> "TensorDesc":
        """A description with this one's shape and dtype (an elementwise plugin's output)."""
        return TensorDesc(self.shape, self.dtype)

    def __repr__(self) -> str:
        dtype = self.dtype.name if self.dtype is not None else "?"
        return f"TensorDesc({dtype}, {self.shape})"


# ----------------------------------------------------------------------------- definitions
@dataclasses.dataclass
class PluginKernel:
    """A device implementation of a plugin, timed as the tactic ``{device}.plugin.{id}.v{version}.{name}``.
    ``fn(*inputs, **attributes)`` returns the outputs like the reference; ``supports(*descs,
    **attributes)``, where given, says whether it can run those inputs (dtypes, ranks)."""

    name: str
    device: str
    fn: Callable[..., Any]
    supports: Callable[..., bool] | None = None


@dataclasses.dataclass
class PluginDefinition:
    """Everything kilnrt knows of one plugin (see the module docstring).

    ``shape(*descs, **attributes) -> TensorDesc | tuple[TensorDesc, ...]``: the shape and type
    rule; ``reference(*tensors, **attributes) -> Tensor | tuple``: the PyTorch implementation
    (any device).  Built-in plugins instead take ``(params, *tensors)`` and a rule over the
    shape inference's own ``Info`` (``builtin=True``)."""

    name: str
    namespace: str = ""
    version: str = "1"
    attributes: dict[str, Attribute] = dataclasses.field(default_factory=dict)
    num_outputs: int = 1
    shape: Callable[..., Any] | None = None
    reference: Callable[..., Any] | None = None
    kernels: dict[str, PluginKernel] = dataclasses.field(default_factory=dict)
    builtin: bool = False
    rank_rule: Callable[..., Any] | None = None   # built-ins whose output ranks depend on values
    origin: str = ""                              # where it came from, for messages ("torch op mylib::f")
    strict_attributes: bool = True                # False: any attribute name is accepted (built-ins)
    automatic: bool = False                       # made by a resolver; a user registration replaces it

    @property
    def id(self) -> str:
        return plugin_id(self.name, self.namespace)

    def __repr__(self) -> str:
        return f"<plugin {self.id} v{self.version}>"

    # -- attributes --------------------------------------------------------------------
    def make_params(self, attributes: Mapping[str, Any] | None = None, shape_inputs: int = 0) -> PluginParams:
        """This plugin's layer params for ``attributes`` (checked and converted, defaults filled);
        ValueError naming what is wrong and what is allowed."""
        attributes = dict(attributes or {})
        if not self.strict_attributes:
            return PluginParams(self.name, self.version, tuple(attributes.items()), self.namespace, shape_inputs)
        unknown = sorted(set(attributes) - set(self.attributes))
        if unknown:
            allowed = ", ".join(f"{a.name} ({a.kind})" for a in self.attributes.values()) or "none"
            raise ValueError(f"unknown attribute{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                             f"plugin {self.id} takes: {allowed}")
        fields = []
        for a in self.attributes.values():
            if a.name in attributes and not (attributes[a.name] is None and a.default is None):
                fields.append((a.name, a.coerce(attributes[a.name])))
            elif a.required:
                raise ValueError(f"attribute {a.name!r} ({a.kind}) is required")
            else:
                fields.append((a.name, a.coerce(a.default) if a.default is not None else None))
        return PluginParams(self.name, self.version, tuple(fields), self.namespace, shape_inputs)

    def check_params(self, params: PluginParams) -> str | None:
        """Why ``params`` (read from a plan) do not fit this definition, or None."""
        if not self.strict_attributes:
            return None
        names = [k for k, _ in params.fields]
        if sorted(names) != sorted(self.attributes) or len(set(names)) != len(names):
            return f"its attributes are {sorted(names)}, the registered plugin's are {sorted(self.attributes)}"
        for k, v in params.fields:
            a = self.attributes[k]
            if not (a.conforms(v) or (v is None and a.default is None)):
                return f"attribute {k!r} is {_short(v)}, not {a.kind}"
        return None

    # -- shape inference -----------------------------------------------------------------
    def infer(self, ctx: Any, params: PluginParams, ins: Sequence[Any], num_outputs: int) -> list:
        """The outputs' Info for the inputs' Info (``kilnrt.network.shape_rules``)."""
        from kilnrt.network.shape_rules import Info

        if self.builtin:
            if self.shape is None:   # known only at run time
                dtype = ins[0].dtype if ins and ins[0] is not None else None
                return [Info(dtype, None) for _ in range(num_outputs)]
            return self.shape(ctx, params, ins, num_outputs)
        if self.shape is None:
            raise NetworkError(ErrorCode.INVALID_NETWORK,
                               f"plugin {self.id} v{self.version} has no shape rule; give it one (see {DOCS})")
        descs = [None if i is None else TensorDesc(i.shape, i.dtype, _value(i)) for i in ins]
        if any(d is not None and d.shape is None for d in descs[:len(descs) - params.shape_inputs]):
            return [Info(None, None) for _ in range(num_outputs)]
        try:
            out = self.shape(*descs, **dict(params.fields))
        except Exception as exc:  # noqa: BLE001 - the user's rule: say whose it is
            raise NetworkError(ErrorCode.INVALID_NETWORK,
                               f"plugin {self.id} v{self.version}: its shape rule failed for inputs {descs}: "
                               f"{type(exc).__name__}: {exc}") from exc
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(outs) != num_outputs or not all(isinstance(o, TensorDesc) for o in outs):
            raise NetworkError(ErrorCode.INVALID_NETWORK,
                               f"plugin {self.id} v{self.version}: its shape rule returned {outs!r}; it must return "
                               f"{num_outputs} TensorDesc{'s' if num_outputs > 1 else ''}")
        infos = []
        for k, o in enumerate(outs):
            if o.dtype is not None and not isinstance(o.dtype, DataType):
                raise NetworkError(ErrorCode.INVALID_NETWORK,
                                   f"plugin {self.id}: output {k}'s dtype is {o.dtype!r}, not a DataType")
            shape = None if o.shape is None else tuple(ctx.fresh() if d is None else S.as_dim(d) for d in o.shape)
            infos.append(Info(o.dtype, shape))
        return infos


def _value(info: Any) -> tuple | None:
    v = getattr(info, "value", None)
    if v is None or np.ndim(v) != 1:
        return None
    return tuple(S.as_dim(x) for x in v.tolist())


# ----------------------------------------------------------------------------- the registry
_LOCK = threading.RLock()
_DEFINITIONS: dict[tuple[str, str, str], PluginDefinition] = {}
# asked when a plugin is not registered: resolver(namespace, name, version) -> definition | None
_RESOLVERS: list[Callable[[str, str, str | None], PluginDefinition | None]] = []
# told of every (de)registration: listener(definition, registered: bool) (the kernel tactics)
_LISTENERS: list[Callable[[PluginDefinition, bool], None]] = []


def add(definition: PluginDefinition, *, replace: bool = False) -> PluginDefinition:
    """Register ``definition``; a second registration of the same (namespace, name, version)
    is an error unless ``replace``."""
    key = (definition.namespace, definition.name, definition.version)
    with _LOCK:
        old = _DEFINITIONS.get(key)
        if old is not None and not replace and not old.automatic:
            raise ValueError(f"plugin {definition.id} version {definition.version} is already registered "
                             f"({old.origin or 'registered earlier'}); deregister it first or pass replace=True")
        if old is not None:
            remove(old)
        _DEFINITIONS[key] = definition
        for listener in _LISTENERS:
            listener(definition, True)
    return definition


def remove(definition: PluginDefinition) -> None:
    key = (definition.namespace, definition.name, definition.version)
    with _LOCK:
        if _DEFINITIONS.get(key) is definition:
            del _DEFINITIONS[key]
            for listener in _LISTENERS:
                listener(definition, False)


def changed(definition: PluginDefinition) -> None:
    """Tell the listeners that a registered definition gained kernels or an implementation."""
    with _LOCK:
        if _DEFINITIONS.get((definition.namespace, definition.name, definition.version)) is definition:
            for listener in _LISTENERS:
                listener(definition, True)


def builtin(name: str, version: str = "1") -> PluginDefinition:
    """The built-in plugin ``name``, created on first use (its rule and kernel register apart)."""
    key = ("", name, version)
    with _LOCK:
        if key not in _DEFINITIONS:
            _DEFINITIONS[key] = PluginDefinition(name, "", version, builtin=True, strict_attributes=False,
                                                 origin="built into kilnrt")
        return _DEFINITIONS[key]


def add_resolver(fn: Callable[[str, str, str | None], PluginDefinition | None]) -> None:
    if fn not in _RESOLVERS:
        _RESOLVERS.append(fn)


def add_listener(fn: Callable[[PluginDefinition, bool], None]) -> None:
    if fn not in _LISTENERS:
        _LISTENERS.append(fn)
        for d in list(_DEFINITIONS.values()):
            fn(d, True)


def definitions() -> list[PluginDefinition]:
    with _LOCK:
        return sorted(_DEFINITIONS.values(), key=lambda d: (d.namespace, d.name, d.version))


def find(name: str, version: str | None = None, namespace: str = "", *, resolve: bool = True
         ) -> PluginDefinition | None:
    """The registered plugin (the newest version when ``version`` is None), or what a resolver
    makes of it (a PyTorch custom op of that name, say), or None."""
    with _LOCK:
        if version is not None:
            d = _DEFINITIONS.get((namespace, name, str(version)))
        else:
            found = [d for (ns, n, _), d in _DEFINITIONS.items() if ns == namespace and n == name]
            d = max(found, key=lambda d: _version_key(d.version)) if found else None
    if d is None and resolve:
        for resolver in list(_RESOLVERS):
            d = resolver(namespace, name, None if version is None else str(version))
            if d is not None:
                break
    return d


def _version_key(v: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in v.split("."))


def missing_message(name: str, version: str | None, namespace: str = "") -> str:
    """What to say when a plugin is not registered: its name, what is, and how to register it."""
    pid = plugin_id(name, namespace)
    ver = f" version {version}" if version is not None else ""
    user = [d for d in definitions() if not d.builtin]
    close = difflib.get_close_matches(pid, [d.id for d in user], n=3, cutoff=0.6)
    have = (f"; registered plugins with similar names: {', '.join(close)}" if close else
            f"; registered plugins: {', '.join(f'{d.id} v{d.version}' for d in user[:8])}" if user else
            "; no user plugin is registered in this process")
    return (f"plugin {pid}{ver} is not registered{have}. Register it before building or loading: "
            f"@kilnrt.plugins.register({pid!r}, version={version or '1'!r}) on its PyTorch implementation, or "
            f"TensorRT's @trt.plugin.register({pid!r}) with @trt.plugin.impl; import the module that does so "
            f"before loading a plan that uses it (see {DOCS})")


def definition_of(params: PluginParams) -> PluginDefinition | None:
    return find(params.name, params.version, params.namespace)


# ----------------------------------------------------------------------------- the network API
class PluginInstance:
    """A plugin with its attributes fixed: what ``creator.create_plugin`` returns and
    ``network.add_plugin_v3`` takes (TensorRT's ``IPluginV3``)."""

    def __init__(self, definition: PluginDefinition, params: PluginParams, name: str = "") -> None:
        self.definition, self.params, self.name = definition, params, name or definition.name

    @property
    def plugin_type(self) -> str:
        return self.definition.name

    @property
    def plugin_version(self) -> str:
        return self.definition.version

    @property
    def plugin_namespace(self) -> str:
        return self.definition.namespace

    @property
    def num_outputs(self) -> int:
        return self.definition.num_outputs

    def __repr__(self) -> str:
        return f"<plugin instance {self.definition.id} v{self.definition.version} {dict(self.params.fields)}>"


class PluginLayers:
    """``add_plugin_v3`` / ``add_plugin`` for :class:`~kilnrt.network.graph.Network` (TensorRT 10's
    ``INetworkDefinition`` methods)."""

    add_layer: Callable[..., Any]
    layers: list

    def add_plugin_v3(self, inputs: Sequence[Any], shape_inputs: Sequence[Any], plugin: PluginInstance):
        """A PLUGIN layer running ``plugin`` on ``inputs``; ``shape_inputs`` (1-D int tensors) are
        read only by its shape rule, as values."""
        if not isinstance(plugin, PluginInstance):
            raise NetworkError(ErrorCode.INVALID_ARGUMENT,
                               f"add_plugin_v3 needs a plugin from creator.create_plugin(...) or "
                               f"kilnrt.plugins.instance(...), got {type(plugin).__name__} (see {DOCS})")
        inputs, shape_inputs = list(inputs), list(shape_inputs or ())
        p = plugin.params
        params = PluginParams(p.name, p.version, p.fields, p.namespace, len(shape_inputs))
        name = f"{plugin.name}_{len(self.layers)}"
        return self.add_layer(LayerKind.PLUGIN, params, inputs + shape_inputs, name=name,
                              num_outputs=plugin.definition.num_outputs)

    def add_plugin(self, call: Any):
        """TensorRT's ``add_plugin(trt.plugin.op.ns.name(inputs..., attr=...))``."""
        if isinstance(call, tuple) and len(call) == 3 and isinstance(call[2], PluginInstance):
            return self.add_plugin_v3(*call)
        raise NetworkError(ErrorCode.INVALID_ARGUMENT,
                           f"add_plugin takes trt.plugin.op.<namespace>.<name>(inputs..., attributes...), "
                           f"got {type(call).__name__} (see {DOCS})")
