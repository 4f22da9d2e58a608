"""What the fusion passes share: a view of a network for matching (consumers, constant
scalars), and the rewrite that replaces each matched subgraph with one layer.

Precision constraints: :func:`replace` refuses every rewrite whose layers
:func:`~kilnrt.network.rewrite.pin_conflict` says no one layer can stand for (pinned to
different precisions), keeping those layers as they were, and the layer a rewrite adds keeps
the pins of those it absorbs (``NetworkCopier.add_merged``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.network.layers import ElementWiseOperation as E, LayerKind
from kilnrt.network.rewrite import NetworkCopier, pin_conflict

log = logging.getLogger("kilnrt.optimize")


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


@dataclass(frozen=True, eq=False)
class Emit:
    """A rewrite: ``emit(copier)`` adds what replaces the ``absorbed`` layers (in network
    order) and returns the tensor that stands for its anchor's first output; ``outputs``, the
    absorbed layers' tensors still visible after it (default: the last one's first output)."""
    absorbed: tuple[Layer, ...]
    emit: Callable[[NetworkCopier], Tensor]
    outputs: tuple[Tensor, ...] | None = None

    def __call__(self, c: NetworkCopier) -> Tensor:
        return self.emit(c)

    def conflict(self) -> str | None:
        outputs = (self.absorbed[-1].outputs[0],) if self.outputs is None else self.outputs
        return pin_conflict(self.absorbed, outputs)


def rewrite(absorbed: Sequence[Layer], emit: Callable[[NetworkCopier], Tensor],
            outputs: Sequence[Tensor] | None = None) -> Emit:
    return Emit(tuple(absorbed), emit, None if outputs is None else tuple(outputs))


def add_fused(c: NetworkCopier, kind: LayerKind, params, inputs: list[Tensor | None],
              absorbed: Sequence[Layer]) -> Tensor:
    """Add the layer that replaces ``absorbed``: named after them, keeping their origins and
    precision constraints, producing the last absorbed layer's output."""
    return c.add_merged(kind, params, inputs, absorbed).outputs[0]


def fused(kind: LayerKind, params, inputs: list[Tensor | None], absorbed: Sequence[Layer]) -> Emit:
    return rewrite(absorbed, lambda c: add_fused(c, kind, params, [c.mapped(t) for t in inputs], absorbed))


def replace(net: Network, rewrites: dict[int, Emit], drop: set[int], stats: dict | None, name: str) -> Network:
    """Copy ``net``, emitting ``rewrites[id(layer)]`` in place of each rewritten layer and
    leaving out the layers in ``drop`` (absorbed into a rewrite).  A rewrite across layers
    pinned to different precisions is refused: its layers are copied as they were, logged, and
    counted in ``stats[name + "_refused"]``."""
    if not rewrites:
        return net
    rewrites, drop = dict(rewrites), set(drop)
    refused = 0
    for key, r in list(rewrites.items()):
        reason = r.conflict()
        if reason is not None:
            log.info("%s: not fusing %s: %s", name, " + ".join(l.name for l in r.absorbed), reason)
            del rewrites[key]
            drop.difference_update(id(l) for l in r.absorbed)
            refused += 1
    c = NetworkCopier(net)
    for layer in net.layers:
        if id(layer) in rewrites:
            c.alias(layer.outputs[0], rewrites[id(layer)](c))
        elif id(layer) not in drop:
            c.copy(layer)
    if stats is not None:
        stats[name] = len(rewrites)
        if refused:
            stats[name + "_refused"] = refused
    return c.finish()
