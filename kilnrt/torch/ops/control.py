"""ATen importers for control flow: ``torch.cond`` as a CONDITIONAL layer, and the ``map``,
``scan`` and ``while_loop`` higher-order ops as LOOP layers (as the ONNX ``If``, ``Scan`` and
``Loop`` importers build them); their functions are imported through the same table into
subgraphs."""
from __future__ import annotations

import torch

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Tensor
from kilnrt.network.layers import ConditionalParams, LayerKind, LoopParams, Subgraph, SubgraphLayer
from kilnrt.torch.registry import aten


def _subgraph(converted, what: str, ctx) -> Subgraph:
    """A converted branch as a :class:`Subgraph` (its inputs bound in order to the cond's operands)."""
    net = converted.network
    ctx.require(all(o.kind == "tensor" for o in converted.outputs), ErrorCode.UNSUPPORTED_NODE_INPUT,
                f"the {what} returns a number; kilnrt's branches return tensors")
    layers = tuple(SubgraphLayer(l.kind, l.params, tuple(None if t is None else t.name for t in l.inputs),
                                 tuple(t.name for t in l.outputs)) for l in net.layers)
    outputs = [net.tensors[o.name] for o in converted.outputs]
    types = tuple((t.dtype, -1 if t.shape is None else len(t.shape)) for t in outputs)
    return Subgraph(tuple(converted.inputs), layers, tuple(t.name for t in outputs), types)


@aten(torch.ops.higher_order.cond)
def cond(ctx, pred, true_fn, false_fn, operands=()):
    """cond (torch.cond): a CONDITIONAL layer; both branches imported as subgraphs, only the chosen one runs."""
    ctx.require(all(isinstance(t, Tensor) for t in operands), ErrorCode.UNSUPPORTED_NODE_INPUT,
                "cond's operands must be tensors (numbers are not supported)")
    ctx.require(isinstance(true_fn, torch.fx.GraphModule) and isinstance(false_fn, torch.fx.GraphModule),
                ErrorCode.INVALID_NODE, "cond's branches must be graph modules")
    if not isinstance(pred, Tensor):   # a size known at build time
        pred = ctx.constant(bool(pred), bool)
    ctx.require(ctx.dtype(pred) == DataType.BOOL, ErrorCode.INVALID_NODE,
                f"the predicate is {ctx.dtype(pred).name}; torch.cond takes a bool")
    if ctx.rank(pred):
        pred = ctx.reshape(pred, [])
    types = [(ctx.dtype(t), tuple(t.shape)) for t in operands]
    name = ctx.node.name
    branches = []
    for what, fn in (("true branch", true_fn), ("false branch", false_fn)):
        branches.append(_subgraph(ctx.import_graph(fn, types, f"{name}/{what.replace(' ', '_')}"), what, ctx))
    a, b = branches
    ctx.require(len(a.outputs) == len(b.outputs), ErrorCode.INVALID_NODE,
                f"the branches return {len(a.outputs)} and {len(b.outputs)} values")
    for k, (ta, tb) in enumerate(zip(a.output_types, b.output_types)):
        ctx.require(ta == tb, ErrorCode.INVALID_NODE,
                    f"output {k} is {ta[0].name} of rank {ta[1]} in the true branch, {tb[0].name} of rank {tb[1]} "
                    "in the false one")
    layer = ctx.add(LayerKind.CONDITIONAL, ConditionalParams(a, b), [pred, *operands], num_outputs=len(a.outputs))
    return list(layer.outputs)


def _loop(ctx, fn, what: str, carried, xs, captured):
    """A LOOP layer running ``fn(*carried, *slices, *captured) -> (*carried, *per-slice outputs)``
    once per slice along dim 0 of ``xs``; outputs: the final carried values, then the per-slice
    outputs stacked along dim 0."""
    values = [*carried, *xs, *captured]
    ctx.require(all(isinstance(t, Tensor) for t in values), ErrorCode.UNSUPPORTED_NODE_INPUT,
                f"{what}'s inputs must be tensors (numbers are not supported)")
    ctx.require(isinstance(fn, torch.fx.GraphModule), ErrorCode.INVALID_NODE, f"{what}'s function must be a graph module")
    ctx.require(len(xs) > 0 and all(ctx.rank(x) > 0 for x in xs), ErrorCode.UNSUPPORTED_NODE_INPUT,
                f"{what} needs at least one input to slice along dim 0")
    types = ([(ctx.dtype(t), tuple(t.shape)) for t in carried] + [(ctx.dtype(x), tuple(x.shape)[1:]) for x in xs]
             + [(ctx.dtype(t), tuple(t.shape)) for t in captured])
    body = _subgraph(ctx.import_graph(fn, types, f"{ctx.node.name}/body"), f"{what}'s function", ctx)
    per_slice = len(body.outputs) - len(carried)
    ctx.require(per_slice >= 0, ErrorCode.INVALID_NODE,
                f"{what}'s function returns {len(body.outputs)} values, fewer than the {len(carried)} it carries")
    params = LoopParams(body, len(carried), (0,) * len(xs), (False,) * len(xs), (0,) * per_slice, (False,) * per_slice,
                        counter_inputs=False)
    layer = ctx.add(LayerKind.LOOP, params, [None, None, *values], num_outputs=len(body.outputs))
    return list(layer.outputs)


@aten(torch.ops.higher_order.map_impl)
def map_impl(ctx, f, xs, pos_args=()):
    """map (torch._higher_order_ops.map): a LOOP over dim 0 of xs; f's outputs stacked along dim 0."""
    return _loop(ctx, f, "map", [], list(xs), list(pos_args))


@aten(torch.ops.higher_order.scan)
def scan(ctx, combine_fn, init, xs, *rest, additional_inputs=()):
    """scan (torch._higher_order_ops.scan): a LOOP over dim 0 of xs carrying init; the final carry,
    then the per-step outputs stacked along dim 0."""
    if len(rest) == 3:   # older PyTorch: scan(combine_fn, init, xs, dim, reverse, additional_inputs)
        dim, reverse, additional_inputs = rest
        ctx.require(int(dim) == 0 and not reverse, ErrorCode.UNSUPPORTED_NODE_ATTR,
                    f"scan along dim {dim}{' in reverse' if reverse else ''}: kilnrt imports dim 0, forwards")
    elif rest:
        additional_inputs = rest[0]
    return _loop(ctx, combine_fn, "scan", list(init), list(xs), list(additional_inputs))


def _inline(ctx, converted, operands) -> list:
    """The layers of a converted function copied into this network, its inputs bound to
    ``operands``: its outputs here."""
    net = converted.network
    here = dict(zip(converted.inputs, operands))
    for layer in net.layers:
        copy = ctx.add(layer.kind, layer.params, [None if t is None else here[t.name] for t in layer.inputs],
                       num_outputs=len(layer.outputs))
        here.update((t.name, c) for t, c in zip(layer.outputs, copy.outputs))
    return [here[o.name] for o in converted.outputs]


def _body_then_condition(body_fn, cond_fn) -> torch.fx.GraphModule:
    """One graph ``(iteration, condition, *values) -> (cond_fn(*next, *captured), *next)`` with
    ``next = body_fn(*values)``: a LOOP body that decides the next iteration, as ONNX Loop's does.
    ``values`` are the carried values, then the captured ones."""
    root = torch.nn.Module()
    root.body, root.cond = body_fn, cond_fn
    g = torch.fx.Graph()
    g.placeholder("iteration")
    g.placeholder("condition")
    body_inputs = [n for n in body_fn.graph.nodes if n.op == "placeholder"]
    values = [g.placeholder(f"value_{k}") for k in range(len(body_inputs))]

    def copy(fn, prefix, inputs):
        before = set(g.nodes)
        out = g.graph_copy(fn.graph, dict(zip([n for n in fn.graph.nodes if n.op == "placeholder"], inputs)))
        for n in g.nodes:
            if n not in before and n.op == "get_attr":
                n.target = f"{prefix}.{n.target}"
        return out

    nxt = copy(body_fn, "body", values)
    nxt = list(nxt) if isinstance(nxt, (list, tuple)) else [nxt]
    keep_going = copy(cond_fn, "cond", nxt + values[len(nxt):])
    g.output((keep_going, *nxt))
    return torch.fx.GraphModule(root, g)


@aten(torch.ops.higher_order.while_loop)
def while_loop(ctx, cond_fn, body_fn, carried_inputs, additional_inputs=()):
    """while_loop (torch.while_loop): a LOOP whose body runs body_fn then cond_fn on its result;
    cond_fn on the initial values, in the network before it, says whether it runs at all."""
    carried, captured = list(carried_inputs), list(additional_inputs)
    values = carried + captured
    ctx.require(all(isinstance(t, Tensor) for t in values), ErrorCode.UNSUPPORTED_NODE_INPUT,
                "while_loop's values must be tensors (numbers, such as a size under torch.compile's "
                "dynamic shapes, are not supported)")
    ctx.require(isinstance(cond_fn, torch.fx.GraphModule) and isinstance(body_fn, torch.fx.GraphModule),
                ErrorCode.INVALID_NODE, "while_loop's functions must be graph modules")
    types = [(ctx.dtype(t), tuple(t.shape)) for t in values]
    name = ctx.node.name
    first = _inline(ctx, ctx.import_graph(cond_fn, list(types), f"{name}/cond"), values)
    ctx.require(len(first) == 1 and ctx.dtype(first[0]) == DataType.BOOL, ErrorCode.INVALID_NODE,
                "while_loop's condition must return one bool")
    go = first[0] if not ctx.rank(first[0]) else ctx.reshape(first[0], [])
    counters = [(DataType.INT64, ()), (DataType.BOOL, ())]
    body = _subgraph(ctx.import_graph(_body_then_condition(body_fn, cond_fn), counters + types, f"{name}/body"),
                     "while_loop's body", ctx)
    ctx.require(len(body.outputs) == 1 + len(carried), ErrorCode.INVALID_NODE,
                f"while_loop's body returns {len(body.outputs) - 1} values for {len(carried)} carried ones")
    layer = ctx.add(LayerKind.LOOP, LoopParams(body, len(carried), counter_inputs=True), [None, go, *values],
                    num_outputs=len(carried))
    return list(layer.outputs)
