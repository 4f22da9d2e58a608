"""ONNX -> Network.

:func:`parse` checks every node first and raises once with the complete list of what is
unsupported (op, attribute, opset), then calls one importer per node.  What ONNX Runtime and
``onnx.checker`` refuse is refused here too: an attribute given twice, an op in a version
ONNX Runtime has no kernel for (the pre-opset-6 forms with ``consumed_inputs``, so opset 1),
an op the model's opset does not have yet, and a ``value_info`` or graph output whose data
type contradicts what the node makes.  A contradicting *shape* is what ONNX Runtime merges
leniently: kilnrt warns, naming the tensor, and keeps the shape it computed.
"""
from __future__ import annotations

import collections
import difflib
import inspect
import logging
import os
from typing import Any

import onnx
from onnx import helper, numpy_helper

from kilnrt.errors import ErrorCode, ImportErrors, KilnError, UnsupportedNodeError
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.layers import IdentityParams, LayerKind
from kilnrt.onnx import registry
from kilnrt.onnx.tensors import sparse_array, tensor_array
from kilnrt.onnx.context import ImportContext

log = logging.getLogger("kilnrt.onnx")

MIN_OPSET = 1


def inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its model-local functions (``ModelProto.functions``: the TorchScript
    exporter's ``export_modules_as_functions``, onnxscript functions) expanded into the graph
    where they are called, as ONNX Runtime does; nested calls too (onnx's own inliner)."""
    if not model.functions:
        return model
    try:
        import onnx.inliner

        return onnx.inliner.inline_local_functions(model)
    except Exception as exc:  # noqa: BLE001 - a malformed function is the model's error
        raise KilnError(ErrorCode.INVALID_MODEL,
                        f"the model's local functions ({', '.join(f.domain + '.' + f.name for f in model.functions)}) "
                        f"could not be expanded: {exc}") from None


def load_model(model: Any) -> tuple[onnx.ModelProto, str | None]:
    """An ONNX ModelProto from a path, bytes or a ModelProto, its local functions expanded;
    and the folder for external data."""
    proto, folder = _read_model(model)
    return inline_functions(proto), folder


def _read_model(model: Any) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(model, onnx.ModelProto):
        return model, None
    if isinstance(model, (bytes, bytearray, memoryview)):
        try:
            return onnx.load_from_string(bytes(model)), None
        except Exception as exc:  # noqa: BLE001
            raise KilnError(ErrorCode.INVALID_MODEL, f"the bytes given are not an ONNX model: {exc}") from None
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise KilnError(ErrorCode.INVALID_MODEL, f"ONNX file {path!r} does not exist")
        try:
            return onnx.load(path), os.path.dirname(os.path.abspath(path))
        except Exception as exc:  # noqa: BLE001
            raise KilnError(ErrorCode.INVALID_MODEL, f"{path!r} could not be read as an ONNX model: {exc}") from None
    raise KilnError(ErrorCode.INVALID_ARGUMENT,
                    f"expected an ONNX path, bytes or onnx.ModelProto, got {type(model).__name__}")


def model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in registry.DEFAULT_DOMAINS:
            return imp.version
    return 1


def attribute_value(attr: onnx.AttributeProto, model_dir: str | None = None) -> Any:
    v = helper.get_attribute_value(attr)
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, onnx.TensorProto):
        return tensor_array(v, model_dir, f"attribute {attr.name!r}")
    if isinstance(v, list):
        if v and isinstance(v[0], bytes):
            return tuple(x.decode("utf-8") for x in v)
        if v and isinstance(v[0], onnx.TensorProto):
            return tuple(tensor_array(x, model_dir, f"attribute {attr.name!r}") for x in v)
        return tuple(v)
    return v


def check_model(model: onnx.ModelProto) -> list[UnsupportedNodeError]:
    """Every node kilnrt cannot import, found before importing anything."""
    model = inline_functions(model)
    opset = model_opset(model)
    errors: list[UnsupportedNodeError] = []
    unknown: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        if node.domain not in registry.DEFAULT_DOMAINS and registry.lookup(node.op_type, opset, node.domain) is None:
            unknown[(node.domain, node.op_type)].append(name)
            continue
        imp = registry.lookup(node.op_type, opset, node.domain)
        if imp is None:
            unknown[(node.domain, node.op_type)].append(name)
            continue
        errors.extend(_schema_errors(node, name, opset))
        if not imp.accepts_any_attribute:
            allowed = imp.attributes
            for attr in node.attribute:
                if attr.name not in allowed:
                    errors.append(UnsupportedNodeError(
                        ErrorCode.UNSUPPORTED_NODE_ATTR,
                        f"attribute {attr.name!r} is not supported; supported attributes: "
                        f"{', '.join(sorted(allowed)) or 'none'}",
                        node=name, op=node.op_type, opset=opset))
    supported = registry.supported_ops()
    for (domain, op), names in unknown.items():
        close = difflib.get_close_matches(op, supported, n=3, cutoff=0.5)
        versions = [e.since for e in registry.registered().get(("", op), [])]
        if versions:
            hint = (f"kilnrt supports {op} from opset {min(versions)}; the model uses opset {opset}: "
                    f"re-export it with opset >= {min(versions)}")
        elif "Sequence" in op or op.startswith("Optional"):
            hint = "sequence and optional values are not supported (kilnrt, like TensorRT, has tensors only)"
        elif close:
            hint = f"nearest supported ops: {', '.join(close)}"
        else:
            hint = (f"see docs/operators.md for the supported ops, or register a plugin for it: "
                    f"@kilnrt.plugins.register('{domain + '::' if domain not in registry.DEFAULT_DOMAINS else ''}"
                    f"{op}') on a PyTorch implementation (docs/plugins.md)")
        dom = f" (domain {domain!r})" if domain not in registry.DEFAULT_DOMAINS else ""
        count = f"{len(names)} node{'s' if len(names) > 1 else ''}"
        errors.append(UnsupportedNodeError(
            ErrorCode.UNSUPPORTED_NODE,
            f"op {op}{dom} is not supported ({count}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); {hint}",
            node=names[0], op=op, opset=opset))
    return errors


def _schema_errors(node: onnx.NodeProto, name: str, opset: int) -> list[UnsupportedNodeError]:
    """What ONNX Runtime refuses about this node before running anything: a repeated attribute
    (in it or in its subgraphs), an op its opset does not have, a legacy version with no kernel."""
    errors = []
    for where, n in _nodes_with_subgraphs(node, name):
        names = [a.name for a in n.attribute]
        for dup in sorted({a for a in names if names.count(a) > 1}):
            errors.append(UnsupportedNodeError(
                ErrorCode.INVALID_NODE, f"attribute {dup!r} appears {names.count(dup)} times{where}; "
                "ONNX allows each attribute once (onnx.checker and ONNX Runtime refuse this model too)",
                node=name, op=node.op_type, opset=opset))
    if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type, node.domain):
        return errors
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        first = onnx.defs.get_schema(node.op_type, onnx.defs.onnx_opset_version(), node.domain)
        while True:
            try:
                first = onnx.defs.get_schema(node.op_type, first.since_version - 1, node.domain)
            except onnx.defs.SchemaError:
                break
        errors.append(UnsupportedNodeError(
            ErrorCode.UNSUPPORTED_NODE, f"{node.op_type} does not exist in opset {opset}; ONNX added it in opset "
            f"{first.since_version}: re-export the model with opset >= {first.since_version}",
            node=name, op=node.op_type, opset=opset))
        return errors
    if "consumed_inputs" in schema.attributes:
        errors.append(UnsupportedNodeError(
            ErrorCode.UNSUPPORTED_NODE, f"opset {opset} gives {node.op_type}-{schema.since_version}, a legacy form "
            "(with consumed_inputs) that ONNX Runtime and kilnrt do not implement; convert the model to a newer "
            "opset: onnx.version_converter.convert_version(model, 13)", node=name, op=node.op_type, opset=opset))
    return errors


def _nodes_with_subgraphs(node: onnx.NodeProto, name: str, where: str = ""):
    yield where, node
    for attr in node.attribute:
        for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                  list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
            for i, sub in enumerate(g.node):
                yield from _nodes_with_subgraphs(sub, name, f"{where} in node {sub.name or sub.op_type + '_' + str(i)!r} "
                                                            f"of its {attr.name}")


def check_value_info(graph: onnx.GraphProto, tensors: dict) -> None:
    """Refuse a value_info or graph output whose data type contradicts the tensor the model
    makes (ONNX Runtime refuses it too); warn about a contradicting static shape (ONNX Runtime
    merges it leniently)."""
    producer = {o: (n.name or f"{n.op_type}_{i}", n.op_type) for i, n in enumerate(graph.node) for o in n.output}
    for kind, infos in (("value_info", graph.value_info), ("graph output", graph.output)):
        for vi in infos:
            t = tensors.get(vi.name)
            if t is None or not vi.type.HasField("tensor_type"):
                continue
            node, op = producer.get(vi.name, (None, None))
            tt = vi.type.tensor_type
            if tt.elem_type:
                try:
                    declared = DataType.from_onnx(tt.elem_type)
                except (TypeError, KeyError, ValueError):
                    raise KilnError(ErrorCode.INVALID_MODEL, f"{kind} {vi.name!r} has data type {tt.elem_type}, "
                                    "which is not an ONNX tensor type", node=node, op=op) from None
                if declared != t.dtype:
                    raise KilnError(ErrorCode.INVALID_MODEL,
                                    f"{kind} {vi.name!r} says {declared.name}, but the node makes {t.dtype.name}; "
                                    "fix or remove the value_info (ONNX Runtime refuses this model too)",
                                    node=node, op=op)
            if tt.HasField("shape") and t.shape is not None:
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                shape = list(t.shape)
                if len(dims) != len(shape) or any(d is not None and isinstance(s, int) and s >= 0 and d != s
                                                  for d, s in zip(dims, shape)):
                    log.warning("%s %r is declared with shape %s, but the model makes %s; kilnrt keeps %s "
                                "(ONNX Runtime merges such shapes leniently, onnx.checker refuses them)",
                                kind, vi.name, dims, shape, shape)


MAX_DIM = 1 << 31


def _input_shape(value_info: onnx.ValueInfoProto) -> tuple:
    shape = []
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            if not 0 <= d.dim_value < MAX_DIM:
                raise UnsupportedNodeError(ErrorCode.UNSUPPORTED_NODE_SHAPE,
                                           f"graph input {value_info.name!r} has dim {d.dim_value}; a dim must be "
                                           f"in [0, 2^31) (use a symbolic dim for a dynamic size)")
            shape.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            shape.append(d.dim_param)
        else:
            shape.append(-1)
    return tuple(shape)


def parse(model: Any, *, name: str | None = None, base_dir: str | os.PathLike | None = None) -> Network:
    """Import an ONNX model (path, bytes or ModelProto) into a :class:`Network`.  External data
    is read from the model file's folder, or from ``base_dir`` for bytes and ModelProtos."""
    proto, model_dir = load_model(model)
    if base_dir is not None:
        model_dir = os.fspath(base_dir)
    return parse_proto(proto, model_dir=model_dir, name=name)


def parse_proto(proto: onnx.ModelProto, *, model_dir: str | None = None, name: str | None = None) -> Network:
    proto = inline_functions(proto)
    graph = proto.graph
    opset = model_opset(proto)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise KilnError(ErrorCode.INVALID_MODEL,
                        f"the model uses opset {opset}, newer than the installed onnx knows ({newest}); "
                        "upgrade onnx or export with an older opset")
    errors = check_model(proto)
    if errors:
        raise ImportErrors(errors)

    net = Network(name or graph.name or "onnx")
    net.opset = opset
    ctx = ImportContext(net, opset, model_dir)
    init_names = set()
    for init in graph.initializer:
        ctx.initializers[init.name] = init
        init_names.add(init.name)
    for sparse in graph.sparse_initializer:
        full = sparse_array(sparse, model_dir)
        ctx.initializers[sparse.values.name] = numpy_helper.from_array(full, sparse.values.name)
        init_names.add(sparse.values.name)
    for vi in graph.input:
        if vi.name in init_names:
            continue
        if not vi.type.HasField("tensor_type"):
            raise UnsupportedNodeError(ErrorCode.UNSUPPORTED_NODE_DATATYPE,
                                       f"graph input {vi.name!r} is not a tensor (sequence/map/optional inputs are not supported)")
        try:
            dtype = DataType.from_onnx(vi.type.tensor_type.elem_type)
        except TypeError as exc:
            raise UnsupportedNodeError(ErrorCode.UNSUPPORTED_NODE_DATATYPE,
                                       f"graph input {vi.name!r}: {exc}") from None
        shape = _input_shape(vi)
        if shape is None:
            raise UnsupportedNodeError(ErrorCode.UNSUPPORTED_NODE_SHAPE,
                                       f"graph input {vi.name!r} has no shape (unknown rank); give it one")
        ctx.tensors[vi.name] = net.add_input(vi.name, dtype, shape)

    for i, node in enumerate(graph.node):
        import_node(ctx, node, i)
    check_value_info(graph, ctx.tensors)

    for vi in graph.output:
        t = ctx.get(vi.name)
        if t.name != vi.name and vi.name not in net.tensors and not (t.is_network_input or t.is_network_output):
            t.name = vi.name
        elif t.name != vi.name or t.is_network_input or t.is_network_output:
            out_name = vi.name if vi.name not in net.tensors else net.unique_name(vi.name)
            if out_name != vi.name:
                log.warning("ONNX output %r is also a graph input (or listed twice); an engine's I/O names are "
                            "unique, so kilnrt returns this output as %r, a copy of %r", vi.name, out_name, vi.name)
            t = net.add_layer(LayerKind.IDENTITY, IdentityParams(), [t], name=net.unique_name(f"{vi.name}/identity"),
                              output_names=[out_name]).outputs[0]
        net.mark_output(t)
    return net


def _call_args(imp, ctx: ImportContext, node: onnx.NodeProto) -> tuple[list, dict]:
    inputs = [ctx.get(n) for n in node.input]
    attrs = {a.name: attribute_value(a, ctx.model_dir) for a in node.attribute}
    return inputs, attrs


def import_node(ctx: ImportContext, node: onnx.NodeProto, index: int) -> None:
    imp = registry.lookup(node.op_type, ctx.opset, node.domain)
    ctx.node = node
    ctx.node_name = node.name or f"{node.op_type}_{index}"
    ctx._layer_count = 0
    start = len(ctx.net.layers)
    inputs, attrs = _call_args(imp, ctx, node)
    sig = inspect.signature(imp.fn)
    positional = [p for p in list(sig.parameters.values())[2:]
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    required = [p for p in positional if p.default is p.empty]
    ctx.require(len(inputs) >= len(required) and all(inputs[i] is not None for i in range(len(required))),
                ErrorCode.INVALID_NODE,
                f"needs inputs {', '.join(p.name for p in required)}; got {len(inputs)} input(s)")
    ctx.require(variadic or len(inputs) <= len(positional), ErrorCode.UNSUPPORTED_NODE_INPUT,
                f"takes at most {len(positional)} inputs ({', '.join(p.name for p in positional)}); got {len(inputs)}")
    try:
        result = imp.fn(ctx, node, *inputs, **attrs)
    except KilnError:
        raise
    except Exception as exc:  # noqa: BLE001 - an importer bug or an input it did not expect
        raise ctx.error(ErrorCode.INVALID_NODE, f"could not be imported: {type(exc).__name__}: {exc}") from exc
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    for k, onnx_name in enumerate(node.output):
        if onnx_name == "":
            continue
        if k >= len(outputs) or outputs[k] is None:
            ctx.unavailable[onnx_name] = (f"output {k} ({onnx_name!r}) of node '{ctx.node_name}' ({node.op_type}) "
                                          "is not produced by kilnrt's importer, but a later node or the graph uses it")
            continue
        t = outputs[k]
        ctx.tensors[onnx_name] = t
        created = t.producer is not None and t.producer in ctx.net.layers[start:]
        if created and t.name != onnx_name and onnx_name not in ctx.net.tensors:
            t.name = onnx_name
