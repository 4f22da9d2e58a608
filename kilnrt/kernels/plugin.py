"""Plugins in the tactic library: running a plugin's code, its kernels as tactics, and PyTorch
custom ops as plugins.

* :func:`run_user` calls a user plugin's reference or kernel and checks what comes back.
* Every :class:`~kilnrt.network.plugin.PluginKernel` of a registered plugin is the tactic
  ``{device}.plugin.{id}.v{version}.{kernel}``, enumerated and timed by the builder like any
  other (the reference runs as ``cpu.plugin.torch`` and ``cuda.plugin.torch``).
* :func:`require` is what the plan loader asks of every PLUGIN layer: the plugin must be
  registered and the plan's attributes must fit it.
* A PyTorch custom op (``torch.library.custom_op``) with no kilnrt plugin of its name becomes
  one automatically (:func:`torch_op_plugin`): its own implementation is the reference, and its
  fake (meta) implementation, run at probe sizes, gives the shape rule.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from kilnrt.errors import ErrorCode, ExecutionError, KilnError, PlanError
from kilnrt.kernels import registry
from kilnrt.network import plugin as plugins
from kilnrt.network import symbolic as S
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Layer
from kilnrt.network.layers import LayerKind, PluginParams


def lookup(p: PluginParams) -> plugins.PluginDefinition:
    """The plugin of a layer's params; a KilnError naming it and saying how to register it."""
    d = plugins.definition_of(p)
    if d is None:
        raise ExecutionError(ErrorCode.RUNTIME, plugins.missing_message(p.name, p.version, p.namespace))
    return d


def run_user(d: plugins.PluginDefinition, fn: Any, p: PluginParams, inputs: Sequence[torch.Tensor | None],
             what: str) -> list[torch.Tensor]:
    """``fn(*inputs, **attributes)`` (a user plugin's reference or kernel), its outputs checked.
    Shape inputs come last, as host tensors (their values: ``.tolist()``)."""
    data = list(inputs)
    try:
        out = fn(*data, **dict(p.fields))
    except KilnError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: say whose it is
        shapes = ", ".join("-" if t is None else f"{tuple(t.shape)}:{str(t.dtype).replace('torch.', '')}"
                           for t in data)
        raise ExecutionError(ErrorCode.RUNTIME, f"plugin {d.id} v{d.version} ({what}) failed on inputs [{shapes}]: "
                                                f"{type(exc).__name__}: {exc}") from exc
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if len(outs) != d.num_outputs or not all(isinstance(o, torch.Tensor) for o in outs):
        got = ", ".join(type(o).__name__ for o in outs)
        raise ExecutionError(ErrorCode.RUNTIME, f"plugin {d.id} v{d.version} ({what}) returned [{got}]; it must "
                                                f"return {d.num_outputs} torch tensor{'s' if d.num_outputs > 1 else ''}")
    return outs


def run_reference(p: PluginParams, *inputs: torch.Tensor | None):
    """The PLUGIN layer's reference kernel: the plugin's PyTorch implementation."""
    d = lookup(p)
    if d.reference is None:
        raise ExecutionError(ErrorCode.RUNTIME, f"plugin {d.id} v{d.version} has no implementation: register one "
                                                f"(a PyTorch reference, or @trt.plugin.impl; see {plugins.DOCS})")
    if d.builtin:
        return d.reference(p, *inputs)
    if any(t is not None and t.device.type == "meta" for t in inputs) and d.shape is not None:
        return meta_outputs(d, p, inputs)
    return run_user(d, d.reference, p, inputs, "reference")


def meta_outputs(d: plugins.PluginDefinition, p: PluginParams, inputs: Sequence[torch.Tensor | None]):
    """A user plugin's outputs as meta tensors, from its shape rule at these inputs' sizes (what
    memory planning measures; the user's code may not run on meta tensors)."""
    descs = [None if t is None else plugins.TensorDesc(tuple(t.shape), DataType.from_torch(t.dtype),
                                                       tuple(t.tolist()) if t.device.type != "meta" and t.dim() == 1
                                                       and not t.is_floating_point() else None)
             for t in inputs]
    out = d.shape(*descs, **dict(p.fields))
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if any(o.shape is None or not all(isinstance(x, int) for x in o.shape) for o in outs):
        raise ExecutionError(ErrorCode.RUNTIME, f"plugin {d.id}: its output sizes depend on data")
    return [torch.empty(o.shape, dtype=(o.dtype or descs[0].dtype).torch, device="meta") for o in outs]


# ----------------------------------------------------------------------------- kernels as tactics
def tactic_name(d: plugins.PluginDefinition, kernel: plugins.PluginKernel) -> str:
    return f"{kernel.device}.plugin.{d.id}.v{d.version}.{kernel.name}"


class PluginKernelTactic(registry.Tactic):
    """One kernel of one plugin, for PLUGIN layers of that plugin."""

    kind = LayerKind.PLUGIN

    def __init__(self, definition: plugins.PluginDefinition, kernel: plugins.PluginKernel) -> None:
        self.definition, self.kernel = definition, kernel
        self.name, self.device = tactic_name(definition, kernel), kernel.device

    def supports(self, layer: Layer, ctx: registry.TacticContext) -> bool:
        p, d = layer.params, self.definition
        if (p.namespace, p.name, p.version) != (d.namespace, d.name, d.version):
            return False
        if self.kernel.supports is None:
            return True
        descs = [None if t is None else plugins.TensorDesc(t.shape, t.dtype) for t in layer.inputs]
        return bool(self.kernel.supports(*descs, **dict(p.fields)))

    def run(self, state: Any, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        return run_user(self.definition, self.kernel.fn, state, inputs, f"kernel {self.kernel.name!r}")


_REGISTERED: dict[tuple[str, str, str], list[str]] = {}


def _sync_tactics(d: plugins.PluginDefinition, present: bool) -> None:
    """Keep the tactic table in step with the plugin registry (a listener of it)."""
    key = (d.namespace, d.name, d.version)
    for name in _REGISTERED.pop(key, []):
        registry.unregister(name)
    if present and not d.builtin:
        names = []
        for kernel in d.kernels.values():
            names.append(registry.register(PluginKernelTactic(d, kernel)).name)
        _REGISTERED[key] = names


plugins.add_listener(_sync_tactics)


def missing_kernel_error(tactic: str) -> PlanError:
    """The plan names a plugin kernel this process does not have."""
    known = sorted(n for names in _REGISTERED.values() for n in names)
    return PlanError(ErrorCode.PLAN_UNKNOWN_TACTIC,
                     f"the plan uses plugin kernel {tactic!r}, which no registered plugin provides "
                     f"(plugin kernels here: {', '.join(known) or 'none'}); register the plugin with that kernel "
                     f"before loading the plan (see {plugins.DOCS})")


# ----------------------------------------------------------------------------- plans
def require(params: PluginParams) -> None:
    """Raise PlanError unless the plugin of a plan's layer is registered and its attributes fit."""
    registry.all_tactics()   # the built-in plugins register with the CPU kernels
    d = plugins.definition_of(params)
    if d is None:
        raise PlanError(ErrorCode.PLAN_UNKNOWN_TACTIC,
                        "the plan cannot run here: " + plugins.missing_message(params.name, params.version,
                                                                               params.namespace))
    why = d.check_params(params)
    if why is not None:
        raise PlanError(ErrorCode.PLAN_CORRUPT, f"a layer of plugin {d.id} v{d.version} does not fit the "
                                                f"registered plugin: {why}")


# ----------------------------------------------------------------------------- PyTorch custom ops
_TORCH_BUILTIN_NAMESPACES = frozenset({"aten", "prims", "prim", "_operator", "higher_order", "quantized",
                                       "_quant", "profiler", "inductor", "_c10d_functional", "c10d"})
# probe values for the input dims of a shape rule run on meta tensors: two sets, so that an output
# dim that follows an input dim can be told from a constant
_PROBES = ((11, 13, 17, 19, 23, 29, 31, 37), (41, 43, 47, 53, 59, 61, 67, 71))


def torch_op(namespace: str, name: str) -> Any:
    """The OpOverload ``torch.ops.<namespace>.<op>.<overload>`` that plugin ``namespace::name``
    names (``op`` or ``op.overload``), or None."""
    if not namespace or namespace in _TORCH_BUILTIN_NAMESPACES or not namespace.isidentifier():
        return None
    op, _, overload = name.partition(".")
    if not op.isidentifier():
        return None
    try:
        packet = getattr(getattr(torch.ops, namespace), op)
        return getattr(packet, overload or "default")
    except (AttributeError, RuntimeError):
        return None


def torch_op_plugin(op: Any) -> plugins.PluginDefinition:
    """A plugin definition that runs the PyTorch op ``op`` (an OpOverload) as it is: its tensor
    arguments are the inputs, its other arguments the attributes."""
    qualified, overload = op._schema.name, op._overloadname      # "mylib::f", "default"
    namespace, base = qualified.split("::", 1)
    name = base if overload == "default" else f"{base}.{overload}"
    tensors, attributes = [], {}
    for arg in op._schema.arguments:
        t = str(arg.type)
        if t in ("Tensor", "Optional[Tensor]", "Tensor?"):
            tensors.append(arg.name)
            continue
        kind = _ATTR_KIND.get(t.rstrip("?").replace("Optional[", "").rstrip("]"))
        if kind is None:
            raise ValueError(f"torch op {qualified}: argument {arg.name!r} has type {t}, which a plugin "
                             f"attribute cannot hold (int, float, bool, str and lists of them can)")
        default = arg.default_value if arg.has_default_value() else plugins._REQUIRED
        attributes[arg.name] = plugins.Attribute(arg.name, kind, default)
    outputs = [str(r.type) for r in op._schema.returns]
    if not outputs or any(r != "Tensor" for r in outputs):
        raise ValueError(f"torch op {qualified} returns ({', '.join(outputs) or 'nothing'}); a plugin returns "
                         "one or more tensors")

    def reference(*inputs: torch.Tensor | None, **attrs: Any):
        args = dict(zip(tensors, inputs))
        args.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.items()})
        return op(**args)

    return plugins.PluginDefinition(
        name, namespace, "1", attributes, num_outputs=len(outputs), shape=_probe_rule(op, tensors),
        reference=reference, automatic=True, origin=f"the PyTorch op torch.ops.{namespace}.{base}.{overload}, run as it is")


_ATTR_KIND = {"int": "int", "SymInt": "int", "float": "float", "bool": "bool", "str": "str",
              "int[]": "ints", "SymInt[]": "ints", "float[]": "floats", "str[]": "strs"}


def _probe_rule(op: Any, tensor_names: list[str]):
    """A shape rule that runs ``op`` on meta tensors: once when every dim is known; else at two
    probe bindings of the symbols, where an output dim equal to an input dim's value both times
    is that dim, one equal to the same number both times is that number, and any other is a size
    known only at run time."""

    def rule(*descs: plugins.TensorDesc | None, **attrs: Any):
        dims = [d for desc in descs if desc is not None for d in desc.shape]
        symbols = sorted({s for d in dims if not isinstance(d, int) for s in d.free_symbols}, key=str)
        if len(symbols) > len(_PROBES[0]):
            raise ValueError(f"too many symbolic dims ({len(symbols)}) to probe")
        runs = []
        for probe in (_PROBES if symbols else _PROBES[:1]):
            binding = dict(zip(symbols, probe))
            shapes = [None if desc is None else [int(S.as_dim(S.as_dim(d).subs(binding) if binding and
                                                               not isinstance(d, int) else d))
                                                 for d in desc.shape] for desc in descs]
            metas = [None if desc is None else torch.empty(shape, dtype=desc.dtype.torch, device="meta")
                     for desc, shape in zip(descs, shapes)]
            args = dict(zip(tensor_names, metas))
            args.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.items()})
            out = op(**args)
            runs.append((shapes, list(out) if isinstance(out, (tuple, list)) else [out]))
        result = []
        for k, first in enumerate(runs[0][1]):
            shape = []
            for j, size in enumerate(first.shape):
                sizes = [int(run[1][k].shape[j]) for run in runs]
                shape.append(_match_dim(sizes, descs, [run[0] for run in runs]))
            result.append(plugins.TensorDesc(tuple(shape), DataType.from_torch(first.dtype)))
        return tuple(result) if len(result) > 1 else result[0]

    return rule


def _match_dim(sizes: list[int], descs, shapes_per_run) -> Any:
    if len(set(sizes)) == 1:
        return sizes[0]
    for i, desc in enumerate(descs):
        if desc is None:
            continue
        for j, d in enumerate(desc.shape):
            if all(run[i][j] == s for run, s in zip(shapes_per_run, sizes)):
                return d
    return None   # a size the probes cannot explain: known when the op runs


def _resolve_torch_op(namespace: str, name: str, version: str | None) -> plugins.PluginDefinition | None:
    """A plugin registry resolver: a PyTorch custom op of this name becomes a plugin."""
    if version not in (None, "1"):
        return None
    op = torch_op(namespace, name)
    if op is None:
        return None
    try:
        d = torch_op_plugin(op)
    except ValueError:
        return None
    existing = plugins.find(d.name, d.version, d.namespace, resolve=False)
    return existing if existing is not None else plugins.add(d)


plugins.add_resolver(_resolve_torch_op)

