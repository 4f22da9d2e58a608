"""Horizontal fusion: sibling GEMMs that read the same input become one GEMM.

    x @ W1 + b1, x @ W2 + b2, x @ W3 + b3  =>  x @ [W1 W2 W3] + [b1 b2 b3], then three slices

The Q, K and V projections of attention are the common case: one launch instead of three,
and ``x`` is read once.  The slices are views (no copy) on every backend.  The merged
weights are new constants, so the originals become dead: run dead-layer elimination after.
"""
from __future__ import annotations

import numpy as np

from kilnrt.network.graph import Layer, Network
from kilnrt.network.layers import ConstantParams, LayerKind, MatrixOperation, SliceParams
from kilnrt.network.rewrite import NetworkCopier


def _signature(net: Network, mm: Layer):
    """What siblings must share to merge: input, K, dtype, epilogue; None if not mergeable."""
    if mm.kind != LayerKind.MATRIX_MULTIPLY or mm.params.op0 != MatrixOperation.NONE \
            or mm.params.op1 != MatrixOperation.NONE:
        return None
    w = net.constant_value(mm.inputs[1])
    if w is None or w.ndim != 2:
        return None
    bias = mm.inputs[2] if len(mm.inputs) > 2 else None
    if bias is not None and (net.constant_value(bias) is None or net.constant_value(bias).shape != (w.shape[1],)):
        return None
    return (mm.inputs[0].name, w.shape[0], str(w.dtype), bias is None, mm.params)


def fuse_sibling_matmuls(net: Network, stats: dict | None = None) -> Network:
    """x @ Wi (+ bi) for i = 1..n => (x @ [W1..Wn] + [b1..bn]) sliced n ways."""
    groups: dict[tuple, list[Layer]] = {}
    for layer in net.layers:
        sig = _signature(net, layer)
        if sig is not None:
            groups.setdefault(sig, []).append(layer)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return net
    first_of = {id(members[0]): members for members in groups.values()}
    merged = {id(l) for members in groups.values() for l in members}
    c = NetworkCopier(net)
    for layer in net.layers:
        if id(layer) not in merged:
            c.copy(layer)
            continue
        if id(layer) not in first_of:
            continue  # emitted with the first member: all siblings read the same input
        members = first_of[id(layer)]
        weights = [net.constant_value(m.inputs[1]) for m in members]
        name = " | ".join(m.name for m in members)
        origin = tuple(o for m in members for o in m.origin)
        w = c.net.add_layer(LayerKind.CONSTANT, ConstantParams(np.concatenate(weights, axis=1)), [],
                            name=c.net.unique_name(f"{members[0].name}/merged_weights"), origin=origin).outputs[0]
        ins = [c.mapped(members[0].inputs[0]), w]
        if len(members[0].inputs) > 2 and members[0].inputs[2] is not None:
            bias = np.concatenate([net.constant_value(m.inputs[2]) for m in members])
            ins.append(c.net.add_layer(LayerKind.CONSTANT, ConstantParams(bias), [],
                                       name=c.net.unique_name(f"{members[0].name}/merged_bias"),
                                       origin=origin).outputs[0])
        y = c.net.add_layer(LayerKind.MATRIX_MULTIPLY, members[0].params, ins, name=name, origin=origin).outputs[0]
        start = 0
        for m, wt in zip(members, weights):
            bounds = [c.net.add_layer(LayerKind.CONSTANT, ConstantParams(np.asarray(v, np.int64)), [],
                                      name=c.net.unique_name(f"{m.name}/{what}"), origin=m.origin).outputs[0]
                      for what, v in (("start", [start]), ("end", [start + wt.shape[1]]), ("axis", [-1]))]
            part = c.net.add_layer(LayerKind.SLICE, SliceParams(), [y] + bounds, name=f"{m.name}/slice",
                                   origin=m.origin, output_names=[m.outputs[0].name]).outputs[0]
            c.alias(m.outputs[0], part)
            start += wt.shape[1]
    if stats is not None:
        stats["fuse_sibling_matmuls"] = len(groups)
    return c.finish()
