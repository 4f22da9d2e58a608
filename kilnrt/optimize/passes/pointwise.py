"""Vertical pointwise fusion: a chain or tree of pointwise layers => one POINTWISE layer.

``act(a * x + b) * x`` is four layers and four round trips through memory; fused, it is one
kernel (a generated Triton kernel on CUDA, the composed reference ops on the CPU) that reads
``a``, ``x``, ``b`` once and writes the result once.

Runs after the anchor fusions (conv/matmul epilogues, GELU, attention, add+norm), so that it
only takes the pointwise layers they left.
"""
from __future__ import annotations

from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.network.layers import (ActivationType as A, CastParams, ConstantParams, ElementWiseOperation as E,
                                   ElementWiseParams, LayerKind, PointwiseParams, UnaryOperation as U)
from kilnrt.network.rewrite import NetworkCopier
from kilnrt.optimize.passes.match import Emit, Graph, fused, replace, rewrite

# the dtypes a region computes in (the Triton generator's: math in float32, stored in these)
FLOATS = frozenset({DataType.FLOAT, DataType.HALF, DataType.BF16})
# the float ops of each kind that a region takes: those the Triton generator renders
# (kilnrt/kernels/triton/pointwise.py's OPS; tests/test_pointwise_fusion.py keeps them in sync)
ELEMENTWISE_OPS = frozenset({E.SUM, E.PROD, E.SUB, E.DIV, E.MAX, E.MIN, E.POW})
UNARY_OPS = frozenset({U.EXP, U.LOG, U.SQRT, U.RECIP, U.ABS, U.NEG, U.SIN, U.COS, U.TAN, U.SINH, U.COSH,
                       U.ERF, U.FLOOR, U.CEIL, U.SIGN})
ACTIVATIONS = frozenset(A)


def fusible(layer: Layer) -> bool:
    """A float pointwise layer that a region may absorb (one output, no pinned precision)."""
    kind, p = layer.kind, layer.params
    if len(layer.outputs) != 1 or layer.precision is not None or layer.output_types:
        return False
    if kind == LayerKind.ACTIVATION:
        ok = p.type in ACTIVATIONS
    elif kind == LayerKind.ELEMENTWISE:
        ok = p.op in ELEMENTWISE_OPS
    elif kind == LayerKind.UNARY:
        ok = p.op in UNARY_OPS
    elif kind == LayerKind.CAST:
        ok = p.to in FLOATS
    elif kind == LayerKind.SELECT:
        cond = layer.inputs[0] if len(layer.inputs) == 3 else None
        ok = cond is not None and (cond.dtype in FLOATS or cond.dtype == DataType.BOOL)
    else:
        return False
    values = layer.inputs[1:] if kind == LayerKind.SELECT else layer.inputs
    return ok and bool(values) and all(t is not None and t.dtype in FLOATS for t in values) \
        and layer.outputs[0].dtype in FLOATS


class _Regions:
    """Pointwise layers grouped into regions (union-find), each kept *schedulable*.

    A region is emitted where its last layer was.  A merge is accepted only if, afterwards,
    every layer or region reading one of the region's results is emitted after that place,
    and every region it reads is emitted before it (plain layers it reads come before one of
    its members, so before its place).  Then the rewritten layer list is in topological
    order, so no cycle can exist: a region never reads, through layers outside it, a result
    it computes itself (``x -> a -> matmul -> b`` with ``a, b`` pointwise: ``a`` and ``b``
    stay apart, as the matmul would need ``a`` before the fused layer that makes it).
    Checking regions against each other, not only against the original layers, matters:
    two regions that each read the other's result through outside layers are each fine
    alone, but not together.
    """

    def __init__(self, g: Graph) -> None:
        self.g = g
        self.pos = {id(l): i for i, l in enumerate(g.net.layers)}
        self.parent: dict[int, int] = {}
        self.members: dict[int, list[Layer]] = {}
        self.last: dict[int, int] = {}

    def find(self, layer: Layer) -> int:
        key = id(layer)
        if key not in self.parent:
            self.parent[key], self.members[key], self.last[key] = key, [layer], self.pos[key]
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def try_merge(self, roots: set[int]) -> bool:
        """Merge the regions ``roots`` if the result stays schedulable."""
        layers = [l for r in roots for l in self.members[r]]
        inside = {id(l) for l in layers}
        end = max(self.last[r] for r in roots)
        for layer in layers:
            for t in layer.inputs:
                if t is not None and t.producer is not None and id(t.producer) not in inside \
                        and self.last[self.find(t.producer)] >= end:
                    return False  # reads a region that is emitted later
            for t in layer.outputs:
                for user, _ in self.g.uses.get(t.name, []):
                    if id(user) not in inside and self.last[self.find(user)] <= end:
                        return False  # a reader would come before the result
        root = min(roots)
        for r in roots - {root}:
            self.parent[r] = root
            self.members[root] += self.members.pop(r)
            self.last.pop(r)
        self.members[root].sort(key=lambda l: self.pos[id(l)])
        self.last[root] = end
        return True


def scales_to_elementwise(net: Network, stats: dict | None = None) -> Network:
    """scale(x, shift, s) => x * s + shift, as two elementwise layers on constants shaped to
    broadcast, where a pointwise layer is next to it (its producer, or every reader), so that
    :func:`fuse_pointwise` takes the scale into that layer's region: a BatchNormalization no
    convolution absorbed (DenseNet's and pre-activation networks', on a concatenation or a sum)
    and its ReLU become one kernel instead of a scale kernel and an activation kernel.  Only
    constant weights and no power; a float input of known rank."""
    g = Graph(net)
    ok = {id(l) for l in net.layers if fusible(l)}
    rewrites: dict[int, Emit] = {}
    for layer in net.layers:
        if layer.kind != LayerKind.SCALE or layer.precision is not None or layer.output_types:
            continue
        x = layer.inputs[0]
        ins = list(layer.inputs[1:]) + [None] * (4 - len(layer.inputs))
        shift, scale, power = ins[:3]
        values = [net.constant_value(t) if t is not None else None for t in (shift, scale)]
        if power is not None or (shift is None and scale is None) \
                or any(t is not None and v is None for t, v in zip((shift, scale), values)) \
                or x is None or x.dtype not in FLOATS or not x.shape \
                or any(v is not None and v.dtype != x.dtype.numpy for v in values):
            continue
        out = layer.outputs[0]
        users = g.uses.get(out.name, [])
        near = (x.producer is not None and id(x.producer) in ok and g.single_use(x) is layer) or \
            (users and out.name not in g.outputs and all(id(u) in ok for u, _ in users))
        if near:
            rewrites[id(layer)] = _scale_as_elementwise(layer, *(_broadcastable(v, layer, len(x.shape))
                                                                 for v in values))
    return replace(net, rewrites, set(), stats, "scales_to_elementwise")


def _broadcastable(v, layer: Layer, rank: int):
    """A scale weight shaped as the elementwise layer needs it (as the scale kernel broadcasts
    it), in a constant of its own: plans refuse two weights sharing memory."""
    return None if v is None else layer.params.broadcastable(v, rank).copy()


def _scale_as_elementwise(layer: Layer, shift, scale) -> Emit:
    """``x * scale`` then ``+ shift`` (each only where given: at least one is), the last
    keeping the scale's name and output."""
    steps = [(op, value, what) for op, value, what in ((E.PROD, scale, "scale"), (E.SUM, shift, "shift"))
             if value is not None]

    def emit(c: NetworkCopier) -> Tensor:
        def const(value, what: str) -> Tensor:
            return c.net.add_layer(LayerKind.CONSTANT, ConstantParams(value), [],
                                   name=c.net.unique_name(f"{layer.name}/{what}"), origin=layer.origin).outputs[0]

        y = c.mapped(layer.inputs[0])
        for op, value, what in steps[:-1]:
            y = c.net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(op), [y, const(value, what)],
                                name=c.net.unique_name(f"{layer.name}/{what}"), origin=layer.origin).outputs[0]
        op, value, what = steps[-1]
        return c.add_merged(LayerKind.ELEMENTWISE, ElementWiseParams(op), [y, const(value, what)], [layer]).outputs[0]

    return rewrite([layer], emit)


def fuse_pointwise(net: Network, stats: dict | None = None) -> Network:
    """f(g(x), h(x, y)) ... => pointwise(x, y): regions of float pointwise layers (activation,
    elementwise, unary, cast, select), grown in network order as far as they stay schedulable;
    each region of two or more layers => one layer.

    A tensor joins its producer and all of its readers into one region only when every reader
    is pointwise and it is not a network output (so it is never written to memory); results
    read outside the region, and network outputs, become the fused layer's outputs.
    """
    g = Graph(net)
    ok = {id(l) for l in net.layers if fusible(l)}
    regions = _Regions(g)
    for layer in net.layers:
        if id(layer) not in ok:
            continue
        t = layer.outputs[0]
        users = g.uses.get(t.name, [])
        if t.name in g.outputs or not users or any(id(u) not in ok for u, _ in users):
            continue
        roots = {regions.find(layer)} | {regions.find(u) for u, _ in users}
        if len(roots) > 1:
            regions.try_merge(roots)
    rewrites: dict[int, Emit] = {}
    drop: set[int] = set()
    for members in regions.members.values():
        if len(members) < 2:
            continue
        rewrites[id(members[-1])] = _region(g, members)
        drop.update(id(l) for l in members[:-1])
    return replace(net, rewrites, drop, stats, "fuse_pointwise")


def _region(g: Graph, members: list[Layer]) -> Emit:
    """The POINTWISE layer computing ``members`` (in network order)."""
    step_of = {l.outputs[0].name: j for j, l in enumerate(members)}
    inside = {id(l) for l in members}
    inputs: list[Tensor] = []
    index: dict[str, int] = {}
    for layer in members:
        for t in layer.inputs:
            if t.name not in step_of and t.name not in index:
                index[t.name] = len(inputs)
                inputs.append(t)
    n = len(inputs)
    ops = tuple((l.kind, l.params, tuple(n + step_of[t.name] if t.name in step_of else index[t.name]
                                         for t in l.inputs)) for l in members)
    outs = [l.outputs[0] for l in members
            if l is members[-1] or l.outputs[0].name in g.outputs
            or any(id(u) not in inside for u, _ in g.uses.get(l.outputs[0].name, []))]
    params = PointwiseParams(n, ops, tuple(step_of[t.name] for t in outs))
    if len(outs) == 1:
        return fused(LayerKind.POINTWISE, params, inputs, members)

    def emit(c: NetworkCopier) -> Tensor:
        layer = c.add_merged(LayerKind.POINTWISE, params, [c.mapped(t) for t in inputs], members, outs)
        return layer.outputs[-1]  # the last member's result (``outs`` ends with it)

    return rewrite(members, emit, outs)


def retarget_casts(p: PointwiseParams, old: DataType, new: DataType) -> PointwiseParams:
    """The region with its casts to ``old`` casting to ``new`` instead (precision lowering)."""
    ops = tuple((k, CastParams(new, q.saturate, q.round_mode) if k == LayerKind.CAST and q.to == old else q, o)
                for k, q, o in p.ops)
    return PointwiseParams(p.num_inputs, ops, p.outputs)
