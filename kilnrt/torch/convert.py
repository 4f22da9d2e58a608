"""An FX graph of ATen ops -> a :class:`~kilnrt.network.graph.Network`, through the importer table.

:func:`check_graph` finds every node kilnrt cannot import before anything is converted, and
:func:`graph_to_network` raises once with that list, as the ONNX parser does.  Placeholders are
either network inputs (their dims named after the ``torch.export.Dim`` symbols) or constants
(parameters, buffers, lifted tensors: CONSTANT layers).  A node whose inputs are all constants and
that has no importer is evaluated by PyTorch once, at conversion, and becomes a constant.
"""
from __future__ import annotations

import collections
import dataclasses
import difflib
from typing import Any, Mapping, Sequence

import sympy
import torch
import torch.fx

from kilnrt.errors import ErrorCode, ImportErrors, KilnError, UnsupportedNodeError
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network, Tensor
from kilnrt.network.layers import IdentityParams, LayerKind
from kilnrt.torch import registry
from kilnrt.torch.context import TorchImportContext

_SYM_TYPES = (torch.SymInt, torch.SymFloat, torch.SymBool)


@dataclasses.dataclass
class Output:
    """One flat output of the graph: an engine tensor, or a value known at build time."""

    kind: str                 # "tensor", "int" (a size, returned as a python int), "const"
    name: str | None = None   # the engine output's name
    value: Any = None         # for "const"


@dataclasses.dataclass
class Converted:
    network: Network
    inputs: list[str]         # the user inputs' placeholder names, in graph order
    outputs: list[Output]


# -- binding a node's arguments to its importer -----------------------------------------------
def _schema_arguments(node: torch.fx.Node) -> dict[str, Any] | None:
    """The node's args and kwargs by schema argument name, defaults filled in; None for python callables."""
    target = node.target
    schema = getattr(target, "_schema", None)
    if schema is None:
        return None
    values = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args) and not arg.kwarg_only:
            values[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            values[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            values[arg.name] = arg.default_value
        else:
            values[arg.name] = _MISSING
    return values


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.fx.Node) or isinstance(b, torch.fx.Node):
        return a is b
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable values differ
        return False


def _unsupported_arguments(imp: registry.AtenImporter, node: torch.fx.Node) -> list[str]:
    """The schema arguments the importer does not take that are not at their default."""
    values = _schema_arguments(node)
    if values is None or imp.accepts_any_argument:
        return []
    taken = set(imp.parameters)
    bad = []
    for arg in node.target._schema.arguments:
        if arg.name in taken:
            continue
        default = arg.default_value if arg.has_default_value() else _MISSING
        if not _same(values[arg.name], default):
            bad.append(f"{arg.name}={values[arg.name]!r}")
    return bad


# -- which nodes are constants -----------------------------------------------------------------
def _node_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    return list(node.all_input_nodes)


def constant_nodes(graph: torch.fx.Graph, constants: Mapping[str, Any]) -> set[torch.fx.Node]:
    """Nodes whose value does not depend on the user inputs."""
    const: set[torch.fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder":
            if node.name in constants:
                const.add(node)
        elif node.op == "get_attr":
            const.add(node)
        elif node.op == "call_function" and isinstance(node.meta.get("val"), torch.Tensor) \
                and all(n in const for n in _node_inputs(node)) \
                and not any(isinstance(n.meta.get("val"), _SYM_TYPES) for n in _node_inputs(node)):
            const.add(node)
    return const


def _is_free(node: torch.fx.Node, const: set) -> bool:
    """A node that needs no importer: a constant evaluated by PyTorch at conversion."""
    return node in const and node.op == "call_function" and registry.lookup(node.target) is None


def node_support(node: torch.fx.Node) -> str | None:
    """Why kilnrt cannot import this call_function node, or None if it can (a node that takes
    subgraphs, torch.cond's, only if every node of them can be imported)."""
    imp = registry.lookup(node.target)
    if imp is None:
        return "no importer"
    bad = _unsupported_arguments(imp, node)
    if bad:
        return f"arguments not supported: {', '.join(bad)}"
    branches = _subgraphs(node)
    inner = [f"{name}: {e}" for name, sub in branches for e in check_graph(sub.graph)]
    if inner:
        return f"its subgraph cannot be imported ({'; '.join(inner)})"
    return None


def _subgraphs(node: torch.fx.Node) -> list[tuple[str, torch.fx.GraphModule]]:
    """The graph modules a node takes (torch.cond's branches), by attribute name."""
    owner = node.graph.owning_module
    out = []
    for arg in node.args:
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and owner is not None:
            sub = _get_attr(owner, arg.target)
            if isinstance(sub, torch.fx.GraphModule):
                out.append((arg.target, sub))
    return out


def check_graph(graph: torch.fx.Graph, constants: Mapping[str, Any] = {}) -> list[UnsupportedNodeError]:
    """Every node kilnrt cannot import, found before converting anything (one error per op)."""
    const = constant_nodes(graph, constants)
    unknown: dict[str, list[str]] = collections.defaultdict(list)
    errors: list[UnsupportedNodeError] = []
    for node in graph.nodes:
        if node.op in ("call_module", "call_method"):
            errors.append(UnsupportedNodeError(ErrorCode.UNSUPPORTED_NODE,
                                               f"{node.op} nodes are not supported (the graph must be ATen ops)",
                                               node=node.name, op=str(node.target)))
        if node.op != "call_function" or _is_free(node, const):
            continue
        why = node_support(node)
        if why == "no importer":
            unknown[registry.target_name(node.target)].append(node.name)
        elif why is not None:
            errors.append(UnsupportedNodeError(ErrorCode.UNSUPPORTED_NODE_ATTR, why, node=node.name,
                                               op=registry.target_name(node.target)))
    known = list(registry.supported())
    for op, names in unknown.items():
        close = difflib.get_close_matches(op, known, n=3, cutoff=0.6)
        hint = (f"nearest supported: {', '.join(close)}" if close else "see docs/pytorch.md for the supported ops")
        count = f"{len(names)} node{'s' if len(names) > 1 else ''}"
        errors.append(UnsupportedNodeError(
            ErrorCode.UNSUPPORTED_NODE,
            f"ATen op {op} is not supported ({count}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); "
            f"{hint}; torch.compile(model, backend='kilnrt') runs such ops in PyTorch",
            node=names[0], op=op))
    return errors


# -- conversion --------------------------------------------------------------------------------
def _concrete(value: Any, bindings: Mapping | None) -> Any:
    """A SymInt/SymFloat/SymBool as a python number: a constant one, or one given values for its symbols
    (``bindings``); None when it stays symbolic."""
    if not isinstance(value, _SYM_TYPES):
        return value
    expr = value.node.expr
    v = expr if bindings is None else sympy.sympify(expr.xreplace(dict(bindings)))
    if not v.is_number and v not in (True, False):
        if bindings is None:
            return None
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"size {expr} is not fixed by the input shapes given")
    return bool(v) if isinstance(value, torch.SymBool) else int(v) if isinstance(value, torch.SymInt) else float(v)


def _input_dims(node: torch.fx.Node, dim_names: Mapping[str, str], bindings: Mapping | None) -> tuple:
    val = node.meta.get("val")
    dims = []
    for i, d in enumerate(val.shape):
        if isinstance(d, torch.SymInt):
            if bindings is not None:
                dims.append(_concrete(d, bindings))
                continue
            expr = d.node.expr
            if expr.is_number:
                dims.append(int(expr))
            elif expr.is_Symbol:
                dims.append(dim_names.get(str(expr), str(expr)))
            else:
                raise UnsupportedNodeError(ErrorCode.UNSUPPORTED_NODE_SHAPE,
                                           f"input {node.name!r} dim {i} is the expression {expr}; kilnrt needs "
                                           "each dynamic input dim to be a Dim of its own", node=node.name)
        else:
            dims.append(int(d))
    return tuple(dims)


def graph_to_network(graph: torch.fx.Graph, *, constants: Mapping[str, Any] = {},
                     owner: torch.nn.Module | None = None, dim_names: Mapping[str, str] = {},
                     bindings: Mapping | None = None, name: str = "torch",
                     input_types: Sequence[tuple[DataType, tuple]] | None = None) -> Converted:
    """Convert ``graph``; ``constants`` maps placeholder names to tensors (weights), ``dim_names``
    sympy symbol names to profile dim names, and ``bindings`` (symbol -> int), when given, fixes
    every symbolic size (a static network).  ``input_types``, when given, are the (dtype, shape) of
    the input placeholders in order (a subgraph's inputs, shaped as the values bound to them)."""
    errors = check_graph(graph, constants)
    if errors:
        raise ImportErrors(errors)
    owner = owner if owner is not None else graph.owning_module
    net = Network(name)
    ctx = TorchImportContext(net)
    # a subgraph (torch.cond's branches) converts the same way, as a network of its own
    ctx.import_graph = lambda gm, types, sub_name: graph_to_network(
        gm.graph, owner=gm, dim_names=dim_names, bindings=bindings, name=sub_name, input_types=types)
    given_types = list(input_types) if input_types is not None else None
    env: dict[torch.fx.Node, Any] = {}
    const = constant_nodes(graph, constants)
    real: dict[torch.fx.Node, Any] = {}
    inputs: list[str] = []

    def real_value(node: torch.fx.Node) -> Any:
        """The value of a constant node, computed by PyTorch (for ops without an importer)."""
        if node not in real:
            if node.op == "placeholder":
                real[node] = constants[node.name]
            elif node.op == "get_attr":
                real[node] = _get_attr(owner, node.target)
            else:
                args = torch.fx.node.map_arg(node.args, real_value)
                kwargs = torch.fx.node.map_arg(node.kwargs, real_value)
                real[node] = node.target(*args, **kwargs)
        return real[node]

    def convert(v: Any) -> Any:
        if isinstance(v, torch.fx.Node):
            return env[v]
        if isinstance(v, (list, tuple)):
            return type(v)(convert(x) for x in v) if not hasattr(v, "_fields") else v
        return v

    for node in graph.nodes:
        ctx.node, ctx._layer_count = node, 0
        val = node.meta.get("val")
        if node.op == "placeholder":
            if node.name in constants:
                env[node] = ctx.constant(constants[node.name])
            elif isinstance(val, _SYM_TYPES) or isinstance(val, (int, float, bool)):
                concrete = _concrete(val, bindings)
                if concrete is None:
                    raise UnsupportedNodeError(ErrorCode.UNSUPPORTED_NODE_INPUT,
                                               f"a symbolic number input ({val}) is not supported", node=node.name)
                env[node] = concrete
            elif given_types is not None:
                if not given_types:
                    raise KilnError(ErrorCode.INVALID_MODEL, f"no value is bound to subgraph input {node.name!r}")
                dtype, shape = given_types.pop(0)
                env[node] = net.add_input(node.name, dtype, shape)
                inputs.append(node.name)
            elif isinstance(val, torch.Tensor):
                try:
                    dtype = DataType.from_torch(val.dtype)
                except TypeError as exc:
                    raise UnsupportedNodeError(ErrorCode.UNSUPPORTED_NODE_DATATYPE, str(exc), node=node.name) from None
                env[node] = net.add_input(node.name, dtype, _input_dims(node, dim_names, bindings))
                inputs.append(node.name)
            else:
                raise UnsupportedNodeError(ErrorCode.UNSUPPORTED_NODE_INPUT,
                                           f"input of type {type(val).__name__} is not supported; inputs must be "
                                           "tensors", node=node.name)
        elif node.op == "get_attr":
            attr = _get_attr(owner, node.target)   # a graph module (a cond branch) is its importer's to convert
            env[node] = attr if isinstance(attr, torch.fx.GraphModule) else ctx.constant(attr)
        elif node.op == "call_function":
            if isinstance(val, _SYM_TYPES) and bindings is not None:
                env[node] = _concrete(val, bindings)
            elif _is_free(node, const):
                env[node] = ctx.constant(real_value(node))
            else:
                env[node] = _call(ctx, node, convert)
        elif node.op == "output":
            return Converted(net, inputs, _mark_outputs(ctx, node.args[0], convert))
    raise KilnError(ErrorCode.INVALID_MODEL, "the graph has no output node")


def _get_attr(owner: torch.nn.Module | None, target: str) -> Any:
    if owner is None:
        raise KilnError(ErrorCode.INVALID_MODEL, f"get_attr {target!r} without the module that owns it")
    obj = owner
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _call(ctx: TorchImportContext, node: torch.fx.Node, convert) -> Any:
    imp = registry.lookup(node.target)
    schema_values = _schema_arguments(node)
    try:
        if schema_values is None:
            result = imp.fn(ctx, *convert(node.args), **convert(dict(node.kwargs)))
        else:
            missing = [k for k, v in schema_values.items() if v is _MISSING]
            ctx.require(not missing, ErrorCode.INVALID_NODE, f"required arguments missing: {', '.join(missing)}")
            take = schema_values if imp.accepts_any_argument else \
                {k: v for k, v in schema_values.items() if k in imp.parameters}
            result = imp.fn(ctx, **{k: convert(v) for k, v in take.items()})
    except KilnError:
        raise
    except Exception as exc:  # noqa: BLE001 - an importer bug or an input it did not expect
        raise ctx.error(ErrorCode.INVALID_NODE, f"could not be imported: {type(exc).__name__}: {exc}") from exc
    return result


def _mark_outputs(ctx: TorchImportContext, values: Any, convert) -> list[Output]:
    net = ctx.net
    ctx.node = None
    outs: list[Output] = []
    flat = values if isinstance(values, (list, tuple)) else [values]
    for i, v in enumerate(flat):
        value = convert(v)
        if isinstance(value, Tensor):
            name = f"output_{i}"
            if value.is_network_input or value.is_network_output or net.constant_value(value) is not None \
                    or value.name in [o.name for o in net.outputs]:
                value = net.add_layer(LayerKind.IDENTITY, IdentityParams(), [value], name=net.unique_name(name),
                                      output_names=[net.unique_name(name)]).outputs[0]
            elif name not in net.tensors:
                value.name = name
            net.mark_output(value)
            is_size = isinstance(v, torch.fx.Node) and isinstance(v.meta.get("val"), _SYM_TYPES)
            outs.append(Output("int" if is_size else "tensor", value.name))
        elif value is None or isinstance(value, (int, float, bool)):
            outs.append(Output("const", value=value))
        else:
            raise UnsupportedNodeError(ErrorCode.UNSUPPORTED_NODE_INPUT,
                                       f"output {i} is a {type(value).__name__}; outputs must be tensors or numbers")
    return outs


__all__ = ["Converted", "Output", "check_graph", "constant_nodes", "graph_to_network", "node_support"]
