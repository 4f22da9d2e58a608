"""What the fusion passes share: a view of a network for matching (consumers, constant
scalars), and the rewrite that replaces each matched subgraph with one layer."""
from __future__ import annotations

from typing import Callable

import numpy as np

from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.network.layers import ElementWiseOperation as E, LayerKind
from kilnrt.network.rewrite import NetworkCopier


class Graph:
    """Consumers and constant scalars of a network, for matching."""

    def __init__(self, net: Network) -> None:
        net.infer()
        self.net = net
        self.uses = net.consumers()
        self.outputs = {t.name for t in net.outputs}

    def single_use(self, t: Tensor) -> Layer | None:
        users = self.uses.get(t.name, [])
        return users[0][0] if len(users) == 1 and t.name not in self.outputs else None

    def scalar(self, t: Tensor | None) -> float | None:
        v = self.net.constant_value(t)
        if v is None or v.size != 1:
            return None
        return float(np.asarray(v, dtype=np.float64).reshape(()))

    @staticmethod
    def is_op(layer: Layer | None, op: E) -> bool:
        return layer is not None and layer.kind == LayerKind.ELEMENTWISE and layer.params.op == op

    def other(self, layer: Layer, t: Tensor) -> Tensor:
        return layer.inputs[1] if layer.inputs[0] is t else layer.inputs[0]


Emit = Callable[[NetworkCopier], Tensor]


def add_fused(c: NetworkCopier, kind: LayerKind, params, inputs: list[Tensor | None],
               absorbed: list[Layer]) -> Tensor:
    """Add the layer that replaces ``absorbed``: named after them, keeping their origins,
    producing the last absorbed layer's output."""
    return c.net.add_layer(kind, params, inputs, name=" + ".join(l.name for l in absorbed),
                           origin=tuple(o for l in absorbed for o in l.origin),
                           output_names=[absorbed[-1].outputs[0].name]).outputs[0]


def fused(kind: LayerKind, params, inputs: list[Tensor | None], absorbed: list[Layer]) -> Emit:
    return lambda c: add_fused(c, kind, params, [c.mapped(t) for t in inputs], absorbed)


def replace(net: Network, rewrites: dict[int, Emit], drop: set[int], stats: dict | None, name: str) -> Network:
    """Copy ``net``, emitting ``rewrites[id(layer)]`` in place of each rewritten layer and
    leaving out the layers in ``drop`` (absorbed into a rewrite)."""
    if not rewrites:
        return net
    c = NetworkCopier(net)
    for layer in net.layers:
        if id(layer) in rewrites:
            c.alias(layer.outputs[0], rewrites[id(layer)](c))
        elif id(layer) not in drop:
            c.copy(layer)
    if stats is not None:
        stats[name] = len(rewrites)
    return c.finish()
