"""Clean-up passes: constant folding, identity removal, dead-layer elimination, common
subexpressions."""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from kilnrt.network.dtypes import torch_to_numpy
from kilnrt.network.graph import Network
from kilnrt.kernels.registry import run_layer
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
    """identity(x) -> x, cast(x: T) to T -> x, pad(x) by constant zero pads -> x (unless the
    output is a network output).  Zero pads come from models that pad to a multiple of a
    window whatever the size (Swin: ``F.pad`` by ``(w - W % w) % w``), exported at sizes that
    need none: each was a full copy of its input."""
    outputs = {t.name for t in net.outputs}
    c = NetworkCopier(net)
    for layer in net.layers:
        x = c.mapped(layer.inputs[0]) if layer.inputs else None
        is_noop = layer.kind == LayerKind.IDENTITY or (
            layer.kind == LayerKind.CAST and x is not None and x.dtype is not None
            and isinstance(layer.params, CastParams) and x.dtype == layer.params.to) or (
            layer.kind == LayerKind.PADDING and _zero_pads(net, layer))
        if is_noop and layer.outputs[0].name not in outputs and x is not None:
            c.alias(layer.outputs[0], x)
            if stats is not None:
                stats["remove_identities"] = stats.get("remove_identities", 0) + 1
            continue
        c.copy(layer)
    return c.finish()


def _zero_pads(net: Network, layer) -> bool:
    """Whether a PADDING layer's pads are a constant of zeros (in every mode: nothing added)."""
    pads = net.constant_value(layer.inputs[1]) if len(layer.inputs) > 1 else None
    return pads is not None and pads.size > 0 and not np.any(pads)


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


# kinds whose two identical layers may not be one (state, host side effects, subgraphs)
_NO_CSE = {LayerKind.PLUGIN, LayerKind.CONDITIONAL, LayerKind.LOOP}


def _cse_key(layer, mapped_inputs) -> str | None:
    from kilnrt.engine.serialize import encode_params

    if layer.kind in _NO_CSE:
        return None
    if layer.kind == LayerKind.CONSTANT:
        w = np.asarray(layer.params.weights)  # (np.ascontiguousarray would make a 0-d array 1-d)
        params = [str(w.dtype), list(w.shape), hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest()]
    else:
        try:
            params = encode_params(layer.params, None)
        except TypeError:
            return None
    ins = [None if t is None else t.name for t in mapped_inputs]
    return json.dumps([layer.kind.value, params, ins, len(layer.outputs),
                       sorted((k, str(v)) for k, v in layer.output_types.items()), str(layer.precision)],
                      sort_keys=True, default=str)


def eliminate_common_subexpressions(net: Network, stats: dict | None = None) -> Network:
    """Two layers of the same kind and params reading the same tensors compute the same
    values: keep the first, read its outputs in place of the second's (identical constants
    included; network outputs keep their own layer)."""
    outputs = {t.name for t in net.outputs}
    c = NetworkCopier(net)
    seen: dict[str, object] = {}
    for layer in net.layers:
        ins = [c.mapped(t) for t in layer.inputs]
        key = _cse_key(layer, ins)
        first = seen.get(key) if key is not None else None
        if first is not None and not any(t.name in outputs for t in layer.outputs):
            for old, new in zip(layer.outputs, first.outputs):
                c.alias(old, new)
            if stats is not None:
                stats["eliminate_common_subexpressions"] = stats.get("eliminate_common_subexpressions", 0) + 1
            continue
        new_layer = c.copy(layer, ins)
        if key is not None and first is None:
            seen[key] = new_layer
    return c.finish()
