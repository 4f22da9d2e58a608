"""``cuda.pointwise.triton``: a fused pointwise region (POINTWISE layer) as one generated kernel.

The region's steps become one expression tree per output for :mod:`.pointwise`'s generator:
the kernel loads each input once, computes every step in float32 registers and stores only the
region's outputs.  A step whose result is float16/bfloat16 is rounded to it, as the layer that
stored it would have, so the fused kernel computes what the separate layers computed.

Declines (the reference kernel then runs as ``cuda.pointwise.torch``): any value that is not
float16/bfloat16/float32 (a select's bool condition excepted), an op the generator does not
render, or outputs that are not all of the inputs' broadcast shape.
"""
from __future__ import annotations

from typing import Sequence

import torch

from kilnrt.kernels.cpu.pointwise_region import step_dtypes
from kilnrt.kernels.registry import Tactic, tactic
from kilnrt.kernels.triton import FLOAT_TYPES, TORCH_FLOATS
from kilnrt.kernels.triton.pointwise import MAX_RANK, Node, PointwiseKernel, input_node, renderable
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import ElementWiseOperation as E, LayerKind, PointwiseParams

_NARROW = {torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16"}


def region_trees(p: PointwiseParams, input_dtypes: Sequence[torch.dtype]) -> tuple[Node, ...]:
    """One expression tree per output of the region (shared subtrees render once)."""
    dtypes = list(input_dtypes) + step_dtypes(p, list(input_dtypes))
    nodes = [input_node(i) for i in range(p.num_inputs)]
    for j, (kind, q, operands) in enumerate(p.ops):
        args = tuple(nodes[i] for i in operands)
        if kind == LayerKind.ACTIVATION:
            node = Node(q.type, args, (q.alpha, q.beta))
        elif kind == LayerKind.ELEMENTWISE:
            a, b = operands
            if q.op == E.POW and dtypes[a] in _NARROW and dtypes[b] != dtypes[a]:  # the exponent in the base's type
                args = (args[0], Node("round", (args[1],), (_NARROW[dtypes[a]],)))
            node = Node(q.op, args)
        elif kind == LayerKind.UNARY:
            node = Node(q.op, args)
        elif kind == LayerKind.CAST:
            node = args[0]             # the conversion is the rounding below (float to float only)
        elif kind == LayerKind.SELECT:
            node = Node("select", args)
        else:
            raise ValueError(f"no pointwise step of kind {kind.value}")
        dt = dtypes[p.num_inputs + j]
        nodes.append(Node("round", (node,), (_NARROW[dt],)) if dt in _NARROW else node)
    return tuple(nodes[p.num_inputs + j] for j in p.outputs)


def _broadcast(shapes) -> tuple | None:
    """The numpy broadcast of shapes with symbolic dims, or None where it is not sure."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(rank):
        dims = {s[k - rank + len(s)] for s in shapes if k - rank + len(s) >= 0} - {1}
        if len(dims) > 1 or -1 in dims:
            return None
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _conditions_only(p: PointwiseParams) -> set[int]:
    """Inputs read only as a select's condition (those may be bool)."""
    reads: dict[int, set[bool]] = {}
    for kind, _, operands in p.ops:
        for pos, i in enumerate(operands):
            reads.setdefault(i, set()).add(kind == LayerKind.SELECT and pos == 0)
    return {i for i, r in reads.items() if r == {True}}


@tactic
class TritonPointwiseRegion(Tactic):
    name = "cuda.pointwise.triton"
    kind = LayerKind.POINTWISE
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        p, ins, outs = layer.params, layer.inputs, layer.outputs
        if any(t is None or t.shape is None or t.dtype is None or len(t.shape) > MAX_RANK for t in ins):
            return False
        conditions = _conditions_only(p)
        if any(t.dtype not in FLOAT_TYPES and not (i in conditions and t.dtype == DataType.BOOL)
               for i, t in enumerate(ins)):
            return False
        if any(t.dtype not in FLOAT_TYPES for t in outs):
            return False
        shape = _broadcast([t.shape for t in ins])
        if shape is None or any(t.shape is None or tuple(t.shape) != shape for t in outs):
            return False
        try:
            dtypes = [t.dtype.torch for t in ins]
            if any(d not in TORCH_FLOATS for d in step_dtypes(p, dtypes)):
                return False
            return all(renderable(tree) for tree in region_trees(p, dtypes))
        except Exception:  # noqa: BLE001 - a step its reference kernel rejects: not ours to run
            return False

    def prepare(self, layer, ctx) -> PointwiseKernel:
        dtypes = [t.dtype.torch for t in layer.inputs]
        return PointwiseKernel(region_trees(layer.params, dtypes), len(layer.inputs),
                               tuple(t.dtype.torch for t in layer.outputs))

    def run(self, kernel: PointwiseKernel, inputs):
        if any(t.dtype not in TORCH_FLOATS and t.dtype != torch.bool for t in inputs):
            raise TypeError(f"{self.name} runs float16/bfloat16/float32 (and bool condition) inputs; "
                            f"got {[str(t.dtype) for t in inputs]}")
        return kernel(*inputs)
