"""Clean-up passes: constant folding, identity removal, dead-layer elimination."""
from __future__ import annotations

import logging

import numpy as np

from kilnrt.network.dtypes import torch_to_numpy
from kilnrt.network.graph import Network
from kilnrt.network.infer import run_layer
from kilnrt.network.layers import CastParams, ConstantParams, LayerKind
from kilnrt.network.rewrite import NetworkCopier

log = logging.getLogger("kilnrt.optimize")

# a folded value larger than this stays computed at run time (keeps plans small)
MAX_FOLDED_BYTES = 1 << 30


def _foldable(layer, inputs) -> bool:
    if layer.kind in (LayerKind.CONSTANT, LayerKind.PLUGIN) or not any(t is not None for t in inputs):
        return False
    return all(t is None or (t.producer is not None and t.producer.kind == LayerKind.CONSTANT) for t in inputs)


def fold_constants(net: Network, stats: dict | None = None) -> Network:
    """layer(constants...) -> constant: evaluate every layer whose inputs are all constants;
    shape(x) -> constant when x's shape is static."""
    net.infer()
    c = NetworkCopier(net)
    for layer in net.layers:
        ins = [c.mapped(t) for t in layer.inputs]
        if layer.kind == LayerKind.SHAPE and layer.inputs[0].is_static:
            value = np.asarray(layer.inputs[0].shape, dtype=np.int64)
            new = c.net.add_layer(LayerKind.CONSTANT, ConstantParams(value), [], name=c.net.unique_name(layer.name),
                                  origin=layer.origin, output_names=[layer.outputs[0].name])
            c.alias(layer.outputs[0], new.outputs[0])
            if stats is not None:
                stats["fold_constants"] = stats.get("fold_constants", 0) + 1
            continue
        if _foldable(layer, ins):
            try:
                args = [None if t is None else run_layer(t.producer, [])[0] for t in ins]
                values = [torch_to_numpy(o) for o in run_layer(layer, args)]
            except Exception as exc:  # noqa: BLE001 - leave it to run time
                log.debug("not folding %s: %s", layer.name, exc)
                values = []
            if values and sum(v.nbytes for v in values) <= MAX_FOLDED_BYTES:
                for old_t, v in zip(layer.outputs, values):
                    new = c.net.add_layer(LayerKind.CONSTANT, ConstantParams(np.array(v, order="C")), [],
                                          name=c.net.unique_name(old_t.name), origin=layer.origin,
                                          output_names=[old_t.name])
                    c.alias(old_t, new.outputs[0])
                if stats is not None:
                    stats["fold_constants"] = stats.get("fold_constants", 0) + 1
                continue
        c.copy(layer, ins)
    return c.finish()


def remove_identities(net: Network, stats: dict | None = None) -> Network:
    """identity(x) -> x, cast(x: T) to T -> x (unless the output is a network output)."""
    outputs = {t.name for t in net.outputs}
    c = NetworkCopier(net)
    for layer in net.layers:
        x = c.mapped(layer.inputs[0]) if layer.inputs else None
        is_noop = layer.kind == LayerKind.IDENTITY or (
            layer.kind == LayerKind.CAST and x is not None and x.dtype is not None
            and isinstance(layer.params, CastParams) and x.dtype == layer.params.to)
        if is_noop and layer.outputs[0].name not in outputs and x is not None:
            c.alias(layer.outputs[0], x)
            if stats is not None:
                stats["remove_identities"] = stats.get("remove_identities", 0) + 1
            continue
        c.copy(layer)
    return c.finish()


def eliminate_dead_layers(net: Network, stats: dict | None = None) -> Network:
    """Drop every layer that no network output depends on."""
    live = {t.name for t in net.outputs}
    keep = set()
    for layer in reversed(net.layers):
        if any(t.name in live for t in layer.outputs):
            keep.add(id(layer))
            live.update(t.name for t in layer.inputs if t is not None)
    c = NetworkCopier(net)
    for layer in net.layers:
        if id(layer) in keep:
            c.copy(layer)
        elif stats is not None:
            stats["eliminate_dead_layers"] = stats.get("eliminate_dead_layers", 0) + 1
    return c.finish()
