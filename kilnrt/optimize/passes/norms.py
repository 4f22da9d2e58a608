"""LayerNorm and RMSNorm written out as reductions and pointwise math, recognized as one layer.

ONNX had no LayerNormalization before opset 17 and no RMSNormalization before opset 23, so
exporters spell them out.  PyTorch below opset 17 writes ``F.layer_norm`` as

    mean = ReduceMean(x); d = x - mean; var = ReduceMean(d ^ 2); y = d / sqrt(var + eps) * g + b

and Hugging Face's RMSNorm (Llama, Mistral, Qwen2, Gemma, T5) as

    var = ReduceMean(x ^ 2); y = g * (x * (1 / sqrt(var + eps)))

often between a Cast of ``x`` to float32 and a Cast back.  Each becomes one NORMALIZATION
layer (statistics in float32, as the chain computes them), which the residual-add fusion and
the norm kernels then take.  Matched: the square as ``Pow(·, 2)`` or ``d * d``; the inverse
square root as ``d / sqrt(v)``, ``d * (1 / sqrt(v))``, ``d * reciprocal(sqrt(v))`` or
``d * v ^ -0.5``; reductions over trailing axes with kept dims; a scalar constant epsilon; the
scale and bias only when they are constants of the normalized shape.  Every intermediate must
be read only inside the match and not be a network output.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.network.layers import (ConstantParams, ElementWiseOperation as E, LayerKind, NormalizationParams,
                                   ReduceOperation, UnaryOperation as U)
from kilnrt.network.rewrite import NetworkCopier
from kilnrt.optimize.passes.match import Emit, Graph, add_fused, replace, rewrite

_LOW_FLOATS = (DataType.HALF, DataType.BF16)


@dataclasses.dataclass
class _Match:
    x: Tensor                      # the normalized input (before a Cast to float32, when absorbed)
    axes: tuple[int, ...]
    epsilon: float
    rms: bool
    layers: list[Layer]            # absorbed, in network order; the last one's output is the result
    scale: Tensor | None = None
    bias: Tensor | None = None


def _mean(g: Graph, layer: Layer | None, rank: int) -> tuple[int, ...] | None:
    """The trailing axes a kept-dims ReduceMean averages over (from its params, or its constant
    axes input from opset 18), else None."""
    if layer is None or layer.kind != LayerKind.REDUCE or layer.params.op != ReduceOperation.AVG \
            or not layer.params.keep_dims:
        return None
    axes = layer.params.axes
    if len(layer.inputs) > 1 and layer.inputs[1] is not None:
        value = g.net.constant_value(layer.inputs[1])
        axes = None if value is None or value.size == 0 else tuple(int(a) for a in value.reshape(-1))
    if not axes:
        return None
    axes = sorted({a % rank for a in axes})
    return tuple(axes) if axes == list(range(rank - len(axes), rank)) else None


def _square_of(g: Graph, layer: Layer | None) -> Tensor | None:
    """``d`` of ``Pow(d, 2)`` or ``d * d``."""
    if g.is_op(layer, E.POW) and g.scalar(layer.inputs[1]) == 2.0:
        return layer.inputs[0]
    if g.is_op(layer, E.PROD) and layer.inputs[0] is layer.inputs[1]:
        return layer.inputs[0]
    return None


def _users(g: Graph, t: Tensor) -> list[Layer]:
    return [] if t.name in g.outputs else [layer for layer, _ in g.uses.get(t.name, [])]


def _scaled_by_inverse_root(g: Graph, v: Tensor, d: Tensor) -> list[Layer] | None:
    """The layers computing ``d / sqrt(v)`` in one of its spellings, ending with the one whose
    output it is; None when ``v``'s single reader starts none of them."""
    first = g.single_use(v)
    if g.is_op(first, E.POW) and first.inputs[0] is v and g.scalar(first.inputs[1]) == -0.5:
        chain = [first]
    elif first is not None and first.kind == LayerKind.UNARY and first.params.op == U.SQRT:
        root = g.single_use(first.outputs[0])
        if g.is_op(root, E.DIV) and root.inputs[1] is first.outputs[0]:
            if root.inputs[0] is d:
                return [first, root]
            if g.scalar(root.inputs[0]) != 1.0:
                return None
        elif root is None or root.kind != LayerKind.UNARY or root.params.op != U.RECIP:
            return None
        chain = [first, root]
    else:
        return None
    product = g.single_use(chain[-1].outputs[0])
    if g.is_op(product, E.PROD) and g.other(product, chain[-1].outputs[0]) is d:
        return chain + [product]
    return None


def _affine(g: Graph, net: Network, y: Tensor, op: E, normalized: tuple) -> tuple[Layer, Tensor] | None:
    """``y * scale`` (or ``y + bias``) with a constant of the normalized shape: (layer, constant)."""
    layer = g.single_use(y)
    if not g.is_op(layer, op):
        return None
    c = g.other(layer, y)
    value = net.constant_value(c)
    if value is None or layer.outputs[0].shape != y.shape or c.dtype not in (y.dtype, DataType.FLOAT):
        return None
    shape = tuple(value.shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return (layer, c) if shape == normalized else None


def _match(g: Graph, net: Network, var: Layer) -> _Match | None:
    sq = var.inputs[0].producer if var.kind == LayerKind.REDUCE else None
    d = _square_of(g, sq)
    if d is None or d.shape is None or d.dtype not in (DataType.FLOAT, *_LOW_FLOATS):
        return None
    axes = _mean(g, var, len(d.shape))
    if axes is None or g.single_use(var.outputs[0]) is None or g.single_use(sq.outputs[0]) is not var:
        return None
    center = d.producer if g.is_op(d.producer, E.SUB) else None
    if center is not None and _mean(g, center.inputs[1].producer, len(d.shape)) == axes \
            and center.inputs[1].producer.inputs[0] is center.inputs[0]:
        x, head = center.inputs[0], [center.inputs[1].producer, center]   # LayerNorm: d = x - mean(x)
    else:
        x, head = d, []                                                     # RMSNorm: d = x
    add = g.single_use(var.outputs[0])
    eps = g.scalar(g.other(add, var.outputs[0])) if g.is_op(add, E.SUM) else None
    if eps is None or eps < 0:
        return None
    tail = _scaled_by_inverse_root(g, add.outputs[0], d)
    if tail is None:
        return None
    layers = head + [sq, var, add] + tail
    out = tail[-1].outputs[0]
    if out.shape != d.shape:
        return None
    cast_in = x.producer if x.producer is not None and x.producer.kind == LayerKind.CAST else None
    cast_out = g.single_use(out)
    inside = set(map(id, layers))
    if cast_in is not None and cast_in.inputs[0].dtype in _LOW_FLOATS and x.dtype == DataType.FLOAT \
            and cast_out is not None and cast_out.kind == LayerKind.CAST \
            and cast_out.params.to == cast_in.inputs[0].dtype \
            and all(id(user) in inside for user in _users(g, x)) and x.name not in g.outputs:
        layers = [cast_in] + layers + [cast_out]   # float32 statistics of a half tensor: what the kernels do
        x, out = cast_in.inputs[0], cast_out.outputs[0]
    normalized = tuple(x.shape[len(x.shape) - len(axes):])
    match = _Match(x, tuple(range(len(x.shape) - len(axes), len(x.shape))), eps, not head, layers)
    scaled = _affine(g, net, out, E.PROD, normalized)
    if scaled is not None:
        match.layers.append(scaled[0])
        match.scale, out = scaled[1], scaled[0].outputs[0]
        shifted = _affine(g, net, out, E.SUM, normalized)
        if shifted is not None:
            match.layers.append(shifted[0])
            match.bias = shifted[1]
    inside = set(map(id, match.layers))
    for layer in match.layers[:-1]:   # intermediates read inside the match only
        if any(id(user) not in inside for t in layer.outputs for user in _users(g, t)) or \
                any(t.name in g.outputs for t in layer.outputs):
            return None
    return match


def _emit(net: Network, m: _Match) -> Emit:
    normalized = tuple(m.x.shape[len(m.x.shape) - len(m.axes):])

    def constant(c: NetworkCopier, t: Tensor | None) -> Tensor | None:
        """The scale or bias in the normalized shape (the kernels take no leading ones)."""
        if t is None:
            return None
        value = net.constant_value(t)
        if tuple(value.shape) == normalized:
            return c.mapped(t)
        return c.net.add_layer(LayerKind.CONSTANT, ConstantParams(np.ascontiguousarray(value.reshape(normalized))),
                               [], name=c.net.unique_name(f"{t.name}/normalized"), origin=m.layers[-1].origin).outputs[0]

    params = NormalizationParams(m.axes, float(m.epsilon), rms=m.rms)
    return rewrite(m.layers, lambda c: add_fused(c, LayerKind.NORMALIZATION, params,
                                                 [c.mapped(m.x), constant(c, m.scale), constant(c, m.bias)], m.layers))


def fuse_normalizations(net: Network, stats: dict | None = None) -> Network:
    """ReduceMean/Sub/Pow/Sqrt/Div chains => one LayerNorm or RMSNorm layer."""
    g = Graph(net)
    rewrites, taken = {}, set()
    for layer in net.layers:
        m = _match(g, net, layer) if layer.kind == LayerKind.REDUCE else None
        if m is None or any(id(l) in taken for l in m.layers):
            continue
        rewrites[id(m.layers[-1])] = _emit(net, m)
        taken.update(map(id, m.layers))
    drop = taken - set(rewrites)
    return replace(net, rewrites, drop, stats, "fuse_normalizations")
