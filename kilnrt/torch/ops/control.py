"""ATen importers for control flow: ``torch.cond`` as a CONDITIONAL layer, its branches imported
through the same table into subgraphs (as the ONNX ``If`` importer builds them)."""
from __future__ import annotations

import torch

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Tensor
from kilnrt.network.layers import ConditionalParams, LayerKind, Subgraph, SubgraphLayer
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
