"""Concatenations that repeat an earlier one: ``cat(a, b, c, d)`` after ``k = cat(a, b, c)``
=> ``cat(k, d)``.

A dense block (DenseNet, and any network that concatenates every feature so far) makes
``cat(x0, f1)``, ``cat(x0, f1, f2)``, ... ``cat(x0, f1, ..., fn)``: each concatenation copies
every earlier feature again, one small copy per input.  Reading the run ``x0 ... fk`` from the
concatenation that already holds it makes one copy of one contiguous tensor instead of k, and
leaves the newest feature as the concatenation's only other input (which its producer can
then write in place, :mod:`kilnrt.builder.concat`).  The values are the same by definition,
so this holds on every backend and at every precision.
"""
from __future__ import annotations

from kilnrt.network.graph import Layer, Network
from kilnrt.network.layers import ConcatenationParams, LayerKind
from kilnrt.network.rewrite import NetworkCopier


def share_concatenations(net: Network, stats: dict | None = None) -> Network:
    """Each concatenation reads, in place of every run of two or more of its inputs that an
    earlier concatenation on the same axis joined in the same order, that concatenation's
    output (the longest run first, then the longest among the rest)."""
    net.infer()
    earlier: list[tuple[Layer, tuple[str, ...]]] = []   # concatenations met so far, with their input names
    replaced: dict[int, list] = {}                         # id(layer) -> its new inputs, as old tensors
    for layer in net.layers:
        if layer.kind != LayerKind.CONCATENATION or any(t is None for t in layer.inputs) \
                or layer.precision is not None or layer.output_types:   # pinned: left as they are
            continue
        names = tuple(t.name for t in layer.inputs)
        axis = _axis(layer)
        inputs = list(layer.inputs)
        if axis is not None:
            inputs = _shared(inputs, axis, earlier)
            if len(inputs) != len(layer.inputs):
                replaced[id(layer)] = inputs
            earlier.append((layer, names))
    if not replaced:
        return net
    c = NetworkCopier(net)
    for layer in net.layers:
        new = replaced.get(id(layer))
        c.copy(layer, None if new is None else [c.mapped(t) for t in new])
    if stats is not None:
        stats["share_concatenations"] = len(replaced)
    return c.finish()


def _shared(inputs: list, axis: int, earlier: list[tuple[Layer, tuple[str, ...]]]) -> list:
    """``inputs`` with each run another concatenation joined replaced by its output."""
    while True:
        names = [t.name for t in inputs]
        best = None   # (run length, start, the concatenation)
        for other, joined in earlier:
            m = len(joined)
            if m < 2 or m > len(names) or m <= (best[0] if best else 1) or _axis(other) != axis \
                    or other.outputs[0].dtype != inputs[0].dtype:
                continue
            for i in range(len(names) - m + 1):
                if tuple(names[i:i + m]) == joined:
                    best = (m, i, other)
                    break
        if best is None:
            return inputs
        m, i, other = best
        inputs = inputs[:i] + [other.outputs[0]] + inputs[i + m:]


def _axis(layer: Layer) -> int | None:
    """The concatenation's axis, made non-negative, or None where its rank is not known."""
    p: ConcatenationParams = layer.params
    shape = layer.outputs[0].shape
    if shape is None:
        return None
    rank = len(shape)
    return p.axis + rank if p.axis < 0 else p.axis
