"""Horizontal fusion: sibling layers that read the same input become one layer, sliced.

    x @ W1 + b1, x @ W2 + b2, x @ W3 + b3   =>  x @ [W1 W2 W3] + [b1 b2 b3], then three slices
    conv(x, K1, b1), conv(x, K2, b2)        =>  conv(x, [K1; K2], [b1; b2]), then two channel slices

The Q, K and V projections of attention, and the parallel convolutions of an Inception
block (several 1x1 convolutions reading one tensor), are the common cases: one launch
instead of several, and ``x`` is read once.  The slices are views (no copy) on every
backend; a channel slice of a channels-last tensor is a strided view, which the CUDA
convolution tactics copy into their channels-last layout and the pointwise kernels read
through its strides.  The merged weights are new constants, so the originals become dead:
run dead-layer elimination after.

Every member reads only the shared input and constants, so the merged layer and its slices
can take the first member's place: everything they read exists there, and every reader of
a later member comes after that member, so after the first.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.network.layers import ConstantParams, LayerKind, MatrixOperation, SliceParams
from kilnrt.network.rewrite import NetworkCopier


def _bias(net: Network, layer: Layer, width: int, dtype) -> tuple[bool, np.ndarray | None]:
    """(ok, bias): ``ok`` when input 2 is absent or a constant ``[width]`` of ``dtype`` (None: absent)."""
    t = layer.inputs[2] if len(layer.inputs) > 2 else None
    if t is None:
        return True, None
    b = net.constant_value(t)
    return (b is not None and b.shape == (width,) and (dtype is None or b.dtype == dtype)), b


def _matmul_signature(net: Network, mm: Layer):
    """What sibling GEMMs must share to merge: input, K, dtypes, epilogue; None if not mergeable."""
    if mm.kind != LayerKind.MATRIX_MULTIPLY or mm.params.op0 != MatrixOperation.NONE \
            or mm.params.op1 != MatrixOperation.NONE:
        return None
    w = net.constant_value(mm.inputs[1])
    if w is None or w.ndim != 2:
        return None
    ok, b = _bias(net, mm, w.shape[1], None)
    if not ok:
        return None
    return mm.inputs[0].name, w.shape[0], str(w.dtype), None if b is None else str(b.dtype), mm.params


def _conv_signature(net: Network, conv: Layer):
    """What sibling convolutions must share to merge: input, weight shape but for the output maps,
    weight dtype, and every param but ``num_output_maps`` (window, strides, pads, padding mode,
    dilations, the fused activation); None if not mergeable.  One group only (a grouped
    convolution's output maps are tied to its input channels), no residual input."""
    if conv.kind != LayerKind.CONVOLUTION or conv.params.num_groups != 1 \
            or any(t is not None for t in conv.inputs[3:]):
        return None
    x, w = conv.inputs[0], net.constant_value(conv.inputs[1])
    if x is None or w is None or w.ndim < 3 or w.shape[0] != conv.params.num_output_maps \
            or any(t is x for t in conv.inputs[1:]):
        return None
    if not _bias(net, conv, w.shape[0], w.dtype)[0]:  # a missing bias merges as zeros
        return None
    return x.name, w.shape[1:], str(w.dtype), dataclasses.replace(conv.params, num_output_maps=0)


def _constant(c: NetworkCopier, value: np.ndarray, name: str, origin: tuple) -> Tensor:
    return c.net.add_layer(LayerKind.CONSTANT, ConstantParams(value), [], name=c.net.unique_name(name),
                           origin=origin).outputs[0]


def _emit_merged(c: NetworkCopier, members: list[Layer], weight_axis: int, out_axis: int, params) -> None:
    """The merged layer (weights concatenated along ``weight_axis``, biases concatenated, a
    missing one as zeros), then one slice of its output along ``out_axis`` per member, which
    takes over the member's output name."""
    net, head = c.source, members[0]
    weights = [net.constant_value(m.inputs[1]) for m in members]
    widths = [w.shape[weight_axis] for w in weights]
    biases = [_bias(net, m, n, None)[1] for m, n in zip(members, widths)]
    origin = tuple(o for m in members for o in m.origin)
    ins = [c.mapped(head.inputs[0]),
           _constant(c, np.concatenate(weights, axis=weight_axis), f"{head.name}/merged_weights", origin)]
    if any(b is not None for b in biases):
        dtype = next(b.dtype for b in biases if b is not None)
        bias = np.concatenate([np.zeros(n, dtype) if b is None else b for b, n in zip(biases, widths)])
        ins.append(_constant(c, bias, f"{head.name}/merged_bias", origin))
    layer = c.net.add_layer(head.kind, params(head, sum(widths)), ins, name=" | ".join(m.name for m in members),
                            origin=origin)
    layer.precision = head.precision  # the members agree on it (part of the group's key)
    layer.output_types.update(head.output_types)
    start = 0
    for m, width in zip(members, widths):
        bounds = [_constant(c, np.asarray([v], np.int64), f"{m.name}/{what}", m.origin)
                  for what, v in (("start", start), ("end", start + width), ("axis", out_axis))]
        piece = c.net.add_layer(LayerKind.SLICE, SliceParams(), [layer.outputs[0]] + bounds, name=f"{m.name}/slice",
                                origin=m.origin, output_names=[m.outputs[0].name])
        piece.precision = m.precision   # a pinned member's result stays in its precision
        part = piece.outputs[0]
        part.dynamic_range = m.outputs[0].dynamic_range
        c.alias(m.outputs[0], part)
        start += width


def _merge_siblings(net: Network, stats: dict | None, name: str, signature: Callable, weight_axis: int,
                    out_axis: int, params: Callable) -> Network:
    """Each group of two or more layers with one signature (and one precision) => the merged
    layer and its slices, at the first member's place."""
    groups: dict[tuple, list[Layer]] = {}
    for layer in net.layers:
        sig = signature(net, layer)
        if sig is not None:
            key = (sig, layer.precision, tuple(sorted(layer.output_types.items())))
            groups.setdefault(key, []).append(layer)
    first_of = {id(members[0]): members for members in groups.values() if len(members) > 1}
    if not first_of:
        return net
    merged = {id(l) for members in first_of.values() for l in members}
    c = NetworkCopier(net)
    for layer in net.layers:
        if id(layer) in first_of:
            _emit_merged(c, first_of[id(layer)], weight_axis, out_axis, params)
        elif id(layer) not in merged:
            c.copy(layer)
    if stats is not None:
        stats[name] = len(first_of)
    return c.finish()


def fuse_sibling_matmuls(net: Network, stats: dict | None = None) -> Network:
    """x @ Wi (+ bi) for i = 1..n => (x @ [W1..Wn] + [b1..bn]) sliced n ways along the last axis."""
    return _merge_siblings(net, stats, "fuse_sibling_matmuls", _matmul_signature, 1, -1,
                           lambda head, n: head.params)


def fuse_sibling_convs(net: Network, stats: dict | None = None) -> Network:
    """act(conv(x, Ki) + bi) for i = 1..n, one geometry => act(conv(x, [K1; ..; Kn]) + [b1; ..; bn])
    sliced n ways along the channels (axis 1)."""
    return _merge_siblings(net, stats, "fuse_sibling_convs", _conv_signature, 0, 1,
                           lambda head, n: dataclasses.replace(head.params, num_output_maps=n))
