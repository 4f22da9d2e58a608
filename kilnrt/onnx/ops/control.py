"""Importers for control flow: If, Loop, Scan.

A branch or body is imported into a network of its own (names from enclosing graphs become
*captured* inputs, or constants when their value is known) and stored in the layer's params
as a :class:`Subgraph`: If becomes a CONDITIONAL layer, Loop and Scan a LOOP layer.  An If
whose condition is known at import time is inlined instead (only the chosen branch is imported).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper

from kilnrt.errors import ErrorCode, ImportErrors
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network, Tensor
from kilnrt.network.layers import (ConcatenationParams, ConditionalParams, GatherParams, LayerKind, LoopParams,
                                   Subgraph, SubgraphLayer)
from kilnrt.onnx.context import ImportContext
from kilnrt.onnx.registry import importer

MAX_CAPTURED_CONSTANT = 1 << 16   # a known outer value up to this many elements is copied into the body


class BodyContext(ImportContext):
    """Imports a subgraph into its own network; a name from an enclosing graph is captured: copied
    in as a constant when its value is known, else made a body input fed by the outer tensor."""

    def __init__(self, parent: ImportContext, net: Network) -> None:
        super().__init__(net, parent.opset, parent.model_dir)
        self.parent = parent
        self.captured: list[tuple[str, Tensor]] = []     # (body input name, outer tensor)

    def get(self, name: str) -> Tensor | None:
        if name == "" or name in self.tensors or name in self.initializers or name in self.unavailable:
            return super().get(name)
        outer = self.parent.get(name)
        value = self.parent.value(outer)
        if value is not None and value.size <= MAX_CAPTURED_CONSTANT:
            t = self._constant(value, name)
        else:
            self.require(outer.shape is not None and outer.dtype is not None, ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                         f"the subgraph uses {name!r} from the enclosing graph, whose rank or type is unknown")
            t = self.net.add_input(name, outer.dtype, outer.shape)
            self.captured.append((name, outer))
        self.tensors[name] = t
        return t


def _value_info(vi: onnx.ValueInfoProto) -> tuple[DataType | None, tuple | None]:
    tt = vi.type.tensor_type
    dtype = DataType.from_onnx(tt.elem_type) if vi.type.HasField("tensor_type") and tt.elem_type else None
    if not tt.HasField("shape"):
        return dtype, None
    dims = [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or -1) for d in tt.shape.dim]
    return dtype, tuple(dims)


def _check_ops(ctx: ImportContext, graph: onnx.GraphProto) -> None:
    from kilnrt.onnx.parser import check_model

    errors = check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)]))
    if errors:
        raise ImportErrors(errors)


def import_body(ctx: ImportContext, graph: onnx.GraphProto, inputs: Sequence[tuple[DataType, tuple]],
                what: str) -> tuple[Network, list[Tensor], BodyContext]:
    """Import ``graph`` as a body network whose inputs have the given (dtype, shape), the graph's
    declared type where it has one; returns the network, its outputs and its context."""
    from kilnrt.onnx.parser import import_node

    ctx.require(len(graph.input) == len(inputs), ErrorCode.INVALID_NODE,
                f"the {what} takes {len(graph.input)} inputs, but {len(inputs)} are given to it")
    _check_ops(ctx, graph)
    net = Network(f"{ctx.node_name}/{what}")
    net.opset = ctx.opset
    body = BodyContext(ctx, net)
    for init in graph.initializer:
        body.initializers[init.name] = init
    for vi, (dtype, shape) in zip(graph.input, inputs):
        declared_dtype, declared_shape = _value_info(vi)
        body.tensors[vi.name] = net.add_input(vi.name, declared_dtype or dtype,
                                              declared_shape if declared_shape is not None else shape)
    for i, node in enumerate(graph.node):
        import_node(body, node, i)
    outputs = [body.get(o.name) for o in graph.output]
    return net, outputs, body


def _subgraph(net: Network, input_names: Sequence[str], outputs: Sequence[Tensor]) -> Subgraph:
    layers = tuple(SubgraphLayer(l.kind, l.params, tuple(None if t is None else t.name for t in l.inputs),
                                 tuple(t.name for t in l.outputs)) for l in net.layers)
    types = tuple((t.dtype, -1 if t.shape is None else len(t.shape)) for t in outputs)
    return Subgraph(tuple(input_names), layers, tuple(t.name for t in outputs), types)


def _shape(ctx: ImportContext, t: Tensor, what: str) -> tuple:
    ctx.require(t.shape is not None and t.dtype is not None, ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                f"the rank and type of {what} must be known at build time")
    return tuple(t.shape)


# ----------------------------------------------------------------------------- If
@importer("If", since=1)
def if_(ctx, node, cond, *, then_branch=None, else_branch=None):
    """If: only the chosen branch runs (a CONDITIONAL layer); inlined when the condition is known."""
    ctx.require(then_branch is not None and else_branch is not None, ErrorCode.INVALID_NODE,
                "attributes 'then_branch' and 'else_branch' are required")
    known = ctx.value(cond)
    if known is not None:
        return _inline(ctx, then_branch if bool(np.asarray(known).reshape(-1)[0]) else else_branch)
    then_net, then_outs, then_ctx = import_body(ctx, then_branch, [], "then_branch")
    else_net, else_outs, else_ctx = import_body(ctx, else_branch, [], "else_branch")
    ctx.require(len(then_outs) == len(else_outs) == len(node.output), ErrorCode.INVALID_NODE,
                f"the branches have {len(then_outs)} and {len(else_outs)} outputs; the node has {len(node.output)}")
    for k, (a, b) in enumerate(zip(then_outs, else_outs)):
        ctx.require(a.dtype == b.dtype, ErrorCode.INVALID_NODE,
                    f"output {k} is {a.dtype} in then_branch but {b.dtype} in else_branch")
    captured = dict(then_ctx.captured)
    captured.update(else_ctx.captured)
    names = list(captured)
    params = ConditionalParams(_subgraph(then_net, names, then_outs), _subgraph(else_net, names, else_outs))
    return tuple(ctx.add(LayerKind.CONDITIONAL, params, [cond] + [captured[n] for n in names],
                         num_outputs=len(then_outs)).outputs)


def _inline(ctx: ImportContext, graph: onnx.GraphProto) -> list[Tensor]:
    """Import a branch's nodes straight into the enclosing network (its names are unique: SSA)."""
    from kilnrt.onnx.parser import import_node

    _check_ops(ctx, graph)
    node, name = ctx.node, ctx.node_name
    for init in graph.initializer:
        ctx.initializers[init.name] = init
    for i, inner in enumerate(graph.node):
        import_node(ctx, inner, f"{name}/{i}")
    ctx.node, ctx.node_name = node, name
    return [ctx.get(o.name) for o in graph.output]


# ----------------------------------------------------------------------------- Loop
@importer("Loop", since=1)
def loop(ctx, node, max_trip_count=None, cond=None, *initial, body=None):
    """Loop: ``for i in range(M) while cond``; carried values and stacked scan outputs (a LOOP layer)."""
    ctx.require(body is not None, ErrorCode.INVALID_NODE, "attribute 'body' is required")
    ctx.require(max_trip_count is not None or cond is not None, ErrorCode.UNSUPPORTED_NODE_INPUT,
                "a Loop with neither a trip count nor a condition never ends")
    inputs = [(DataType.INT64, ()), (DataType.BOOL, ())]
    inputs += [(t.dtype, _shape(ctx, t, f"loop-carried input {k}")) for k, t in enumerate(initial)]
    net, outs, body_ctx = import_body(ctx, body, inputs, "body")
    num_scan = len(outs) - 1 - len(initial)
    ctx.require(num_scan >= 0, ErrorCode.INVALID_NODE,
                f"the body returns {len(outs)} values; it must return the condition and {len(initial)} carried values")
    names = [vi.name for vi in body.input] + [n for n, _ in body_ctx.captured]
    params = LoopParams(_subgraph(net, names, outs), len(initial), scan_output_axes=(0,) * num_scan,
                        scan_output_reverse=(False,) * num_scan, counter_inputs=True)
    trip = None if max_trip_count is None else ctx.cast(max_trip_count, DataType.INT64)
    layer = ctx.add(LayerKind.LOOP, params, [trip, cond, *initial] + [t for _, t in body_ctx.captured],
                    num_outputs=len(initial) + num_scan)
    return tuple(layer.outputs)


# ----------------------------------------------------------------------------- Scan
def _scan(ctx, node, states, scans, body, input_axes, input_reverse, output_axes, output_reverse):
    ranks = [ctx.rank(s) for s in scans]
    input_axes = [int(a) % r for a, r in zip(input_axes, ranks)]
    inputs = [(t.dtype, _shape(ctx, t, f"scan state {k}")) for k, t in enumerate(states)]
    for k, (s, axis) in enumerate(zip(scans, input_axes)):
        shape = _shape(ctx, s, f"scan input {k}")
        inputs.append((s.dtype, shape[:axis] + shape[axis + 1:]))
    net, outs, body_ctx = import_body(ctx, body, inputs, "body")
    num_out = len(outs) - len(states)
    ctx.require(num_out >= 0, ErrorCode.INVALID_NODE,
                f"the body returns {len(outs)} values, fewer than the {len(states)} states")
    output_axes = list(output_axes) if output_axes is not None else [0] * num_out
    output_reverse = list(output_reverse) if output_reverse is not None else [0] * num_out
    names = [vi.name for vi in body.input] + [n for n, _ in body_ctx.captured]
    params = LoopParams(_subgraph(net, names, outs), len(states), tuple(input_axes),
                        tuple(bool(d) for d in input_reverse), tuple(int(a) for a in output_axes),
                        tuple(bool(d) for d in output_reverse), counter_inputs=False)
    layer = ctx.add(LayerKind.LOOP, params, [None, None, *states, *scans] + [t for _, t in body_ctx.captured],
                    num_outputs=len(outs))
    return list(layer.outputs)


@importer("Scan", since=9)
def scan(ctx, node, *inputs, body=None, num_scan_inputs=None, scan_input_axes=None, scan_input_directions=None,
         scan_output_axes=None, scan_output_directions=None):
    """Scan: run the body once per slice of the scan inputs, carrying states (a LOOP layer)."""
    ctx.require(body is not None and num_scan_inputs is not None, ErrorCode.INVALID_NODE,
                "attributes 'body' and 'num_scan_inputs' are required")
    m = int(num_scan_inputs)
    states, scans = list(inputs[:len(inputs) - m]), list(inputs[len(inputs) - m:])
    axes = scan_input_axes if scan_input_axes is not None else [0] * m
    reverse = scan_input_directions if scan_input_directions is not None else [0] * m
    return tuple(_scan(ctx, node, states, scans, body, axes, reverse, scan_output_axes, scan_output_directions))


@importer("Scan", since=8)
def scan_v8(ctx, node, sequence_lens=None, *inputs, body=None, num_scan_inputs=None, directions=None):
    """Scan-8: every input has a leading batch axis and scans along axis 1; one LOOP per batch entry."""
    ctx.require(body is not None and num_scan_inputs is not None, ErrorCode.INVALID_NODE,
                "attributes 'body' and 'num_scan_inputs' are required")
    ctx.require(sequence_lens is None, ErrorCode.UNSUPPORTED_NODE_INPUT,
                "Scan-8 with sequence_lens is not supported; re-export with opset >= 9 (Scan without batching)")
    m = int(num_scan_inputs)
    batch = inputs[0].shape[0] if inputs and inputs[0].shape else None
    ctx.require(isinstance(batch, int) and batch >= 0, ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                "Scan-8 needs a batch size known at build time")
    per_batch = []
    for b in range(batch):
        index = ctx.constant(np.asarray(b, np.int64))
        items = [ctx.out(LayerKind.GATHER, GatherParams(0), t, index) for t in inputs]
        states, scans = items[:len(items) - m], items[len(items) - m:]
        reverse = directions if directions is not None else [0] * m
        per_batch.append(_scan(ctx, node, states, scans, body, [0] * m, reverse, None, None))
    return tuple(ctx.out(LayerKind.CONCATENATION, ConcatenationParams(0), *[ctx.unsqueeze(outs[k], [0])
                                                                            for outs in per_batch])
                 for k in range(len(per_batch[0])))
