"""Data-movement chains: cancel them, collapse them, or read through them without a copy.

Exporters surround attention with reshapes, transposes, squeezes and constant-index gathers
(torchvision's ViT: 12 such layers per block).  Run one by one, a reshape of a transposed
tensor must copy even when the chain as a whole only re-indexes memory.  This pass follows
each chain of such layers back to its first real tensor (the *root*) and computes the
chain's composite as strides over the root's contiguous layout:

* a composite that is the identity is removed (transpose then its inverse: cancellation);
* one that is a plain reshape becomes a single reshape;
* one that attention reads (q, k, v) becomes one VIEW layer: SDPA takes strided inputs,
  so the chain costs nothing at run time.

The composite is tracked exactly: each dim is a list of (size, stride) *atoms*; a reshape
splits and regroups atoms, a transpose permutes dims, a gather picks an index.  A chain is
left alone where some dim would need two atoms that do not merge (not one stride).
Static shapes only.  :func:`sink_reshape_into_matmul` removes the reshapes around a GEMM
that only flatten and restore its rows.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from kilnrt.kernels.views import Strided, contiguous_strides, gather_as_view
from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.network.layers import LayerKind, MatrixOperation, ShuffleParams, ViewParams
from kilnrt.network.rewrite import NetworkCopier
from kilnrt.optimize.passes.match import Graph, replace, rewrite

_MOVES = {LayerKind.SHUFFLE, LayerKind.SQUEEZE, LayerKind.UNSQUEEZE, LayerKind.GATHER}


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _ops(layer: Layer, net: Network) -> list | None:
    """``layer`` (a move with static shapes) as view ops, or None if it is not one."""
    x, y = layer.inputs[0], layer.outputs[0]
    if layer.kind in (LayerKind.SQUEEZE, LayerKind.UNSQUEEZE):
        return [("reshape", tuple(y.shape))]
    if layer.kind == LayerKind.SHUFFLE:
        p: ShuffleParams = layer.params
        mid = tuple(y.shape)
        if p.second_transpose is not None:
            m = [0] * len(y.shape)
            for i, q in enumerate(p.second_transpose):
                m[q] = y.shape[i]
            mid = tuple(m)
        ops = [("permute", tuple(p.first_transpose))] if p.first_transpose is not None else []
        ops.append(("reshape", mid))
        if p.second_transpose is not None:
            ops.append(("permute", tuple(p.second_transpose)))
        return ops
    if layer.kind == LayerKind.GATHER:
        how = gather_as_view(layer.params, x.shape, _constant(net, layer.inputs[1]))
        if how is None:
            return None
        axis, kind, arg = how
        return [("select", axis, arg)] if kind == "select" else [("slice", axis) + tuple(arg)]
    return None


def _constant(net: Network, t: Tensor | None):
    v = net.constant_value(t)
    return None if v is None else torch.from_numpy(np.array(v))


def _chain(t: Tensor) -> list[Layer]:
    """The moves that lead to ``t``, root side first (empty if ``t`` is not made by one)."""
    chain = []
    while t.producer is not None and t.producer.kind in _MOVES and len(t.producer.outputs) == 1:
        layer = t.producer
        if not (_static(layer.inputs[0].shape) and _static(layer.outputs[0].shape)):
            break
        if layer.kind == LayerKind.GATHER and len(layer.inputs) > 1 and layer.inputs[1].producer is not None \
                and layer.inputs[1].producer.kind != LayerKind.CONSTANT:
            break
        chain.append(layer)
        t = layer.inputs[0]
    return chain[::-1]


def _composite(chain: list[Layer], net: Network):
    """(ops, strides, offset) of the chain over its root's contiguous layout, or None."""
    ops = []
    for layer in chain:
        more = _ops(layer, net)
        if more is None:
            return None
        ops += more
    view = Strided(chain[0].inputs[0].shape)
    if not view.run(ops):
        return None
    strided = view.view()
    return None if strided is None else (tuple(ops),) + strided


def fold_view_chains(net: Network, stats: dict | None = None) -> Network:
    """Cancel identity chains, collapse reshape-only chains, and make the chains that feed
    attention's q, k and v one strided VIEW (see the module doc)."""
    g = Graph(net)
    rewrites = {}
    for layer in net.layers:
        if layer.kind not in _MOVES:
            continue
        out = layer.outputs[0]
        users = g.uses.get(out.name, [])
        if users and all(u.kind in _MOVES for u, _ in users) and out.name not in g.outputs:
            continue  # not a chain's end: only other moves read it
        chain = _chain(out)
        if not chain:
            continue
        root = chain[0].inputs[0]
        composite = _composite(chain, net)
        if composite is None:
            continue
        ops, strides, offset = composite
        shape = tuple(out.shape)
        contiguous = offset == 0 and math.prod(shape) == math.prod(root.shape) and all(
            st == c for st, c, d in zip(strides, contiguous_strides(shape), shape) if d != 1)
        is_output = out.name in g.outputs
        if contiguous and shape == tuple(root.shape) and not is_output:  # the identity: cancel
            rewrites[id(layer)] = rewrite(chain, (lambda r: lambda c: c.mapped(r))(root))
        elif contiguous and len(chain) >= 2:
            params = ShuffleParams(reshape_dims=shape, zero_is_placeholder=False)
            rewrites[id(layer)] = _emit(LayerKind.SHUFFLE, params, root, chain)
        elif (not contiguous and users and not is_output
              and all(u.kind == LayerKind.ATTENTION and all(i < 3 for i, t in enumerate(u.inputs) if t is out)
                      for u, _ in users)
              and not (len(chain) == 1 and chain[0].kind == LayerKind.GATHER)):
            rewrites[id(layer)] = _emit(LayerKind.VIEW, ViewParams(shape, ops), root, chain)
    return replace(net, rewrites, set(), stats, "fold_view_chains")


def _emit(kind, params, root: Tensor, chain: list[Layer]):
    return rewrite(chain, lambda c: c.add_merged(kind, params, [c.mapped(root)], chain).outputs[0])


def sink_reshape_into_matmul(net: Network, stats: dict | None = None) -> Network:
    """reshape(x [..., K] -> [M, K]) -> matmul(W) -> reshape([M, N] -> [..., N]) => matmul(x):
    a GEMM with a constant weight is row-wise, so flattening its rows and restoring them is
    a no-op; dropping both keeps a transposed ``x`` a view (the GEMM reads it in memory order).
    Also when the first reshape merges trailing dims into K: x is reshaped only there."""
    g = Graph(net)
    rewrites, drop = {}, set()
    for mm in net.layers:
        if mm.kind != LayerKind.MATRIX_MULTIPLY or mm.params.op0 != MatrixOperation.NONE:
            continue
        w = net.constant_value(mm.inputs[1])
        r1 = mm.inputs[0].producer
        if w is None or w.ndim != 2 or r1 is None or r1.kind != LayerKind.SHUFFLE or g.single_use(r1.outputs[0]) is not mm:
            continue
        p = r1.params
        x, flat, y = r1.inputs[0], r1.outputs[0], mm.outputs[0]
        if p.first_transpose is not None or p.second_transpose is not None or not all(
                _static(t.shape) for t in (x, flat, y)) or len(flat.shape) != 2:
            continue
        r2 = g.single_use(y)
        if r2 is None or r2.kind != LayerKind.SHUFFLE or r2.params.first_transpose is not None \
                or r2.params.second_transpose is not None or not _static(r2.outputs[0].shape):
            continue
        k = flat.shape[1]
        split = next((j for j in range(len(x.shape) - 1, -1, -1) if math.prod(x.shape[j:]) == k), None)
        lead = tuple(x.shape[:split]) if split is not None else None
        if lead is None or len(lead) == 0 or tuple(r2.outputs[0].shape) != lead + (y.shape[1],):
            continue
        if any(t is not None and t.producer is not None and t.producer is r1 for t in mm.inputs[1:]):
            continue
        rewrites[id(r2)] = _sunk(mm, r1, r2, x, lead, k)
        drop.update((id(r1), id(mm)))
    return replace(net, rewrites, drop, stats, "sink_reshape_into_matmul")


def _sunk(mm: Layer, r1: Layer, r2: Layer, x: Tensor, lead: tuple, k: int):
    def emit(c: NetworkCopier) -> Tensor:
        a = c.mapped(x)
        if tuple(x.shape) != lead + (k,):
            a = c.add_beside(LayerKind.SHUFFLE, ShuffleParams(reshape_dims=lead + (k,), zero_is_placeholder=False),
                             [a], [r1, mm, r2], name=r1.name).outputs[0]
        return c.add_merged(mm.kind, mm.params, [a] + [c.mapped(t) for t in mm.inputs[1:]], [r1, mm, r2],
                            name=mm.name).outputs[0]
    return rewrite([r1, mm, r2], emit)
