"""Pattern fusions for transformer blocks: GEMM bias/activation epilogues, attention.

Each rule matches a small subgraph as ONNX exporters write it, checks that every
intermediate tensor has one consumer (and is not an output), and replaces the subgraph
with one layer that keeps the sources in ``origin``.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.network.layers import (ActivationType, AttentionParams, ConstantParams, ElementWiseOperation as E,
                                   LayerKind, MatrixOperation, ShuffleParams, UnaryOperation)
from kilnrt.network.rewrite import NetworkCopier, pin_conflict
from kilnrt.optimize.passes.match import Emit, Graph, add_fused, fused, replace, rewrite


_GEMM_ACTIVATIONS = {ActivationType.RELU, ActivationType.GELU_ERF, ActivationType.GELU_TANH, ActivationType.TANH,
                     ActivationType.SIGMOID, ActivationType.SILU, ActivationType.HARD_SWISH}


def _with_activation(params, act: Layer | None):
    """``params`` with ``act``'s activation, or None when ``act`` is no activation a GEMM epilogue takes."""
    if act is None or act.kind != LayerKind.ACTIVATION or act.params.type not in _GEMM_ACTIVATIONS:
        return None
    return dataclasses.replace(params, activation=act.params.type, activation_alpha=act.params.alpha,
                               activation_beta=act.params.beta)


def fuse_matmul_epilogue(net: Network, stats: dict | None = None) -> Network:
    """matmul(a, W) + bias [-> act] => matmul(a, W, bias, act): cuBLASLt's bias epilogue; and
    matmul(a, W, bias) [-> reshapes] -> act => matmul(a, W, bias, act) [-> reshapes] (a bias
    fuse_matmul_scale folded in; an activation is elementwise, so it goes before a reshape)."""
    g = Graph(net)
    rewrites, drop = {}, set()
    for mm in net.layers:
        if mm.kind != LayerKind.MATRIX_MULTIPLY or len(mm.inputs) > 3 or mm.params.activation is not None:
            continue
        w = net.constant_value(mm.inputs[1])
        if w is None or w.ndim != 2 or mm.params.op0 != MatrixOperation.NONE \
                or mm.params.op1 not in (MatrixOperation.NONE, MatrixOperation.TRANSPOSE):
            continue
        if len(mm.inputs) == 3:   # its bias is in already: only an activation to take, maybe past reshapes
            act = g.single_use(mm.outputs[0])
            while act is not None and act.kind == LayerKind.SHUFFLE and act.params.first_transpose is None \
                    and act.params.second_transpose is None:
                act = g.single_use(act.outputs[0])
            params = _with_activation(mm.params, act)
            if mm.inputs[2] is not None and params is not None and act.outputs[0].name not in g.outputs \
                    and pin_conflict([mm, act], [mm.outputs[0]]) is None:   # both rewrites, or neither
                rewrites[id(mm)] = rewrite([mm, act], lambda c, mm=mm, act=act, params=params: c.add_merged(
                    LayerKind.MATRIX_MULTIPLY, params, [c.mapped(t) for t in mm.inputs], [mm, act],
                    outputs=[mm.outputs[0]]).outputs[0])
                rewrites[id(act)] = rewrite([act], lambda c, t=act.inputs[0]: c.mapped(t))
            continue
        n = w.shape[0] if mm.params.op1 == MatrixOperation.TRANSPOSE else w.shape[1]
        add = g.single_use(mm.outputs[0])
        if not g.is_op(add, E.SUM):
            continue
        bias_t = g.other(add, mm.outputs[0])
        bias = net.constant_value(bias_t)
        if bias is None or bias.size != n or bias.shape[-1:] != (n,) or bias_t.dtype != mm.outputs[0].dtype:
            continue
        chain, params = [mm, add], mm.params
        act = g.single_use(add.outputs[0])
        with_act = _with_activation(params, act)
        if with_act is not None:
            params = with_act
            chain.append(act)
        rewrites[id(chain[-1])] = fused(LayerKind.MATRIX_MULTIPLY, params, [mm.inputs[0], mm.inputs[1], bias_t], chain)
        drop.update(id(l) for l in chain[:-1])
    return replace(net, rewrites, drop, stats, "fuse_matmul_epilogue")


def _nan_guard(g: Graph, p: Tensor) -> list[Layer]:
    """``where(isnan(p), 0, p)`` over softmax probabilities ``p`` (PyTorch's export of SDPA with
    a boolean mask: fully masked rows become zeros): its two layers, or [] if absent."""
    readers = [layer for layer, _ in g.uses.get(p.name, [])]
    if len(readers) != 2 or p.name in g.outputs:
        return []
    isnan = next((l for l in readers if l.kind == LayerKind.UNARY and l.params.op == UnaryOperation.ISNAN), None)
    select = next((l for l in readers if l.kind == LayerKind.SELECT), None)
    if isnan is None or select is None or g.single_use(isnan.outputs[0]) is not select:
        return []
    cond, then, other = select.inputs
    if cond is not isnan.outputs[0] or other is not p or g.scalar(then) != 0.0:
        return []
    return [isnan, select]


def fuse_attention(net: Network, stats: dict | None = None) -> Network:
    """softmax(q @ k^T * scale [+ mask]) @ v => attention(q, k, v, mask, scale): one fused
    (flash / memory-efficient) kernel instead of materializing the scores. A NaN guard after
    the softmax (fully masked rows to zeros) is absorbed: the attention layer zeros them too.
    q, k^T and v are [..., heads, seq, dim] of any rank from 3: the attention layer takes
    them as [batch, heads, seq, dim], its batch the leading dims merged (a view of how
    window attention lays them out), and its output is reshaped back (see :func:`_as_4d`);
    only where the attention layer reads the heads and the mask as the products and the
    addition broadcast them (:func:`_heads_fit`, :func:`_mask_fits`, :func:`_mask_over_keys`)."""
    g = Graph(net)
    rewrites, drop = {}, set()
    for sm in net.layers:
        if sm.kind != LayerKind.SOFTMAX or sm.params.log:
            continue
        x = sm.inputs[0]
        if x.shape is None or len(x.shape) < 3 or sm.params.axis not in (-1, len(x.shape) - 1):
            continue
        rank = len(x.shape)
        guard = _nan_guard(g, sm.outputs[0])
        probs = guard[-1].outputs[0] if guard else sm.outputs[0]
        pv = g.single_use(probs)
        if pv is None or pv.kind != LayerKind.MATRIX_MULTIPLY or pv.inputs[0] is not probs \
                or len(pv.inputs) > 2 or pv.params.activation is not None or pv.params.op0 != MatrixOperation.NONE \
                or pv.params.op1 != MatrixOperation.NONE:
            continue
        chain, scale = [sm, *guard, pv], 1.0
        found = _score_terms(g, x, sm)
        if found is None:
            continue
        scores, mask, added = found
        mask = _mask_over_keys(g, mask, x)
        if mask is False:
            continue
        chain[:0] = added
        node = scores.producer
        if (g.is_op(node, E.DIV) or g.is_op(node, E.PROD)) and g.single_use(node.outputs[0]) in chain:
            c = g.scalar(node.inputs[1])
            if c is None or c == 0:
                continue
            scale = 1.0 / c if node.params.op == E.DIV else c
            chain.insert(0, node)
            node = node.inputs[0].producer
        if node is None or node.kind != LayerKind.MATRIX_MULTIPLY or len(node.inputs) > 2 \
                or node.params.activation is not None or node.params.op0 != MatrixOperation.NONE \
                or g.single_use(node.outputs[0]) not in chain:
            continue
        q, kt = node.inputs
        v = pv.inputs[1]
        chain.insert(0, node)
        # PyTorch's export of scaled_dot_product_attention scales q and k^T by sqrt(scale)
        # each; torchvision's MaxViT scales k alone
        operands, muls = [], []
        for operand in (q, kt):
            mul = operand.producer
            c = None
            if g.is_op(mul, E.PROD) and g.single_use(operand) is node:
                c = g.scalar(mul.inputs[1]) if g.scalar(mul.inputs[1]) is not None else g.scalar(mul.inputs[0])
            if c is not None:
                muls.append(mul)
                scale *= c
                operand = mul.inputs[0] if g.net.constant_value(mul.inputs[0]) is None else mul.inputs[1]
            operands.append(operand)
        chain[:0] = muls
        q, kt = operands
        if any(t.shape is None or len(t.shape) != rank for t in (q, kt, v)) or pv.outputs[0].shape is None:
            continue
        k_transposed = node.params.op1 != MatrixOperation.TRANSPOSE
        if not _heads_fit(q, kt, v) or not _mask_fits(mask, scores):
            continue
        inputs = [q, kt, v] + ([mask] if mask is not None else [])   # a gathered mask: an array, made a constant
        shapes = _as_4d(inputs, pv.outputs[0].shape)
        if shapes is None:
            continue
        rewrites[id(pv)] = _attention(inputs, shapes, k_transposed, float(scale), chain)
        drop.update(id(l) for l in chain[:-1])
    return replace(net, rewrites, drop, stats, "fuse_attention")


def _heads_fit(q: Tensor, kt: Tensor, v: Tensor) -> bool:
    """Whether the attention layer reads q, k and v as the matrix products did: the batch
    dims the same in all three, and K/V heads that its grouped-query rule (each K/V head
    serves ``hq / hkv`` query heads) maps to q's heads as the products broadcast them: as
    many, or one (a head dim of 1 in q alone, or K/V heads that differ, it cannot read)."""
    rank = len(q.shape)
    k_heads = kt.shape[rank - 3]
    if tuple(q.shape[:rank - 3]) != tuple(kt.shape[:rank - 3]) or tuple(v.shape[:rank - 3]) != tuple(q.shape[:rank - 3]):
        return False
    if v.shape[rank - 3] != k_heads:
        return False
    return k_heads == q.shape[rank - 3] or k_heads == 1


def _mask_fits(mask, scores: Tensor) -> bool:
    """Whether ``mask`` adds to the scores without broadcasting them to a larger shape (the
    attention layer's output has q's shape): no more dims than the scores, and no dim of
    more than 1 where the scores have 1."""
    if mask is None:
        return True
    m, sc = tuple(mask.shape), scores.shape
    if sc is None or len(m) > len(sc):
        return False
    return all(not (d_s == 1 and d_m != 1) for d_m, d_s in zip(m[::-1], tuple(sc)[::-1]))


# the most elements a mask gathered from several constant terms may have (float32: 16 MiB)
MAX_GATHERED_MASK = 1 << 22


def _score_terms(g: Graph, x: Tensor, sm: Layer) -> tuple[Tensor, Tensor | np.ndarray | None, list[Layer]] | None:
    """What the softmax input ``x`` adds to the scores: ``(scores, mask, layers)``, ``scores``
    the tensor the terms are added to, ``mask`` None, a tensor, or an array gathered from
    constants, ``layers`` the additions and reshapes between (in network order).

    One addition of any tensor is the mask as it is (BERT's, an exporter's SDPA).  Several
    constant additions, or constants added across plain reshapes (Swin's shifted windows:
    ``scores + bias``, viewed 5-D ``[batch, windows, heads, n, n]``, ``+ shift mask``, viewed
    back), are gathered into one constant in ``x``'s shape, each broadcast to its addition's
    shape and laid out by the reshapes after it, dims along which it does not vary kept at 1.
    Static shapes, the scores in ``x``'s shape, and at most :data:`MAX_GATHERED_MASK` elements."""
    cur, layers, terms, other, crossed = x, [], [], None, False
    while True:
        p, reader = cur.producer, (layers[-1] if layers else sm)
        if p is None or g.single_use(cur) is not reader:
            break
        if g.is_op(p, E.SUM):
            values = [g.net.constant_value(t) for t in p.inputs]
            if sum(v is not None for v in values) == 1:
                i = 0 if values[0] is not None else 1
                terms.append((values[i], p.inputs[i], p.outputs[0].shape))
                layers.append(p)
                cur = p.inputs[1 - i]
                continue
            if other is None and not terms and not crossed and all(v is None for v in values):
                qk_side = next((t for t in p.inputs if t.producer is not None and
                                t.producer.kind in (LayerKind.MATRIX_MULTIPLY, LayerKind.ELEMENTWISE)
                                and g.single_use(t) is p), None)
                if qk_side is None:
                    return None
                other = g.other(p, qk_side)
                layers.append(p)
                cur = qk_side
                continue
            break
        if p.kind == LayerKind.SHUFFLE and p.params.first_transpose is None and p.params.second_transpose is None \
                and p.inputs[0].is_static and p.outputs[0].is_static:
            crossed = True
            layers.append(p)
            cur = p.inputs[0]
            continue
        break
    layers.reverse()
    if not crossed and len(terms) + (other is not None) <= 1:   # one addition, or none
        return cur, (other if other is not None else (terms[0][1] if terms else None)), layers
    if other is not None or not x.is_static or tuple(cur.shape or ()) != tuple(x.shape):
        return None
    if not terms:   # reshapes that cancel, nothing added
        return cur, None, layers
    total = np.zeros((), np.float64)
    for value, _, shape in terms:
        if math.prod(shape) > MAX_GATHERED_MASK:
            return None
        total = total + np.broadcast_to(np.asarray(value, np.float64), shape).reshape(x.shape)
    total = np.broadcast_to(total, x.shape)
    for axis in range(total.ndim):   # keep a dim the mask does not vary along at 1
        first = total.take([0], axis=axis)
        if total.shape[axis] > 1 and np.array_equal(total, np.broadcast_to(first, total.shape)):
            total = first
    dtype = np.float64 if x.dtype == DataType.DOUBLE else np.float32
    return cur, np.ascontiguousarray(total, dtype=dtype), layers


def _mask_over_keys(g: Graph, mask, x: Tensor):
    """``mask`` as the attention layer reads it: that layer pads a mask's last dim shorter than
    the keys as masked (ONNX Attention), where an addition broadcasts a last dim of 1.  Such a
    constant mask is broadcast over the keys here; False (no fusion) for another tensor, or
    when the shapes are unknown."""
    if mask is None:
        return None
    shape = mask.shape
    if shape is None or x.shape is None:
        return False
    if len(shape) == 0 or shape[-1] == x.shape[-1]:
        return mask
    if shape[-1] != 1 or not isinstance(x.shape[-1], int):
        return False
    value = mask if isinstance(mask, np.ndarray) else g.net.constant_value(mask)
    if value is None or value.size * x.shape[-1] > MAX_GATHERED_MASK:
        return False
    return np.ascontiguousarray(np.broadcast_to(value, tuple(value.shape[:-1]) + (x.shape[-1],)))


def _reshape_dims(dims) -> tuple[int, ...] | None:
    """``dims`` as a reshape's target: the one unknown (symbolic) dim as -1; None when more than one is unknown."""
    unknown = [i for i, d in enumerate(dims) if not isinstance(d, int)]
    if len(unknown) > 1:
        return None
    return tuple(-1 if i in unknown else d for i, d in enumerate(dims))


def _as_4d(inputs: list[Tensor], out_shape) -> list | None:
    """The reshapes around an attention layer over ``[..., heads, seq, dim]`` tensors of rank
    other than 4: for each of q, k^T, v (and the mask) the target that makes it 4-D, its
    leading dims merged into one batch dim (None: leave it as it is), then the target that
    gives the output back its own shape.  None when the leading dims of q, k and v differ,
    when a mask's leading dims are neither all 1 (broadcast) nor q's own, or when a shape
    has more than one unknown dim."""
    q, kt, v = inputs[:3]
    rank = len(q.shape)
    if rank == 4:
        return [None] * (len(inputs) + 1)
    lead = tuple(q.shape[:rank - 3])
    if tuple(kt.shape[:rank - 3]) != lead or tuple(v.shape[:rank - 3]) != lead:
        return None
    merged = math.prod(lead) if all(isinstance(d, int) for d in lead) else None  # None: unknown, -1
    shapes = [_reshape_dims((merged,) + tuple(t.shape[rank - 3:])) for t in (q, kt, v)]
    if len(inputs) > 3:
        m = inputs[3].shape
        if m is None or len(m) > rank:
            return None
        full = (1,) * (rank - len(m)) + tuple(m)
        if all(d == 1 for d in full[:rank - 3]):
            # broadcast over the merged batch: as it is up to rank 4, its leading ones dropped above
            shapes.append(None if len(m) <= 4 else _reshape_dims((1,) + full[rank - 3:]))
            if len(m) > 4 and shapes[-1] is None:
                return None
        elif full[:rank - 3] == lead and merged is not None:
            shapes.append(_reshape_dims((merged,) + full[rank - 3:]))
            if shapes[-1] is None:
                return None
        else:
            return None
    shapes.append(_reshape_dims(tuple(out_shape)))
    return None if any(s is None for s in shapes[:3]) or shapes[-1] is None else shapes


def _attention(inputs: list[Tensor], shapes: list, k_transposed: bool, scale: float, chain: list[Layer]) -> Emit:
    """Emits the ATTENTION layer: its inputs reshaped to 4-D where ``shapes`` says, K
    transposed back when the graph multiplied by Kᵀ, and the output reshaped back."""

    def emit(c: NetworkCopier) -> Tensor:
        ins = [c.mapped(t) if not isinstance(t, np.ndarray) else
               c.net.add_layer(LayerKind.CONSTANT, ConstantParams(t), [], origin=chain[0].origin,
                               name=c.net.unique_name(f"{chain[0].name}/mask")).outputs[0] for t in inputs]
        for i, dims in enumerate(shapes[:-1]):
            if dims is not None:
                ins[i] = c.add_beside(LayerKind.SHUFFLE, ShuffleParams(reshape_dims=dims, zero_is_placeholder=False),
                                      [ins[i]], chain, name=f"{chain[0].name}/as_4d").outputs[0]
        if k_transposed:
            ins[1] = c.add_beside(LayerKind.SHUFFLE, ShuffleParams(first_transpose=(0, 1, 3, 2)), [ins[1]], chain,
                                  name=f"{chain[0].name}/k").outputs[0]
        if shapes[-1] is None:
            return add_fused(c, LayerKind.ATTENTION, AttentionParams(scale=scale), ins, chain)
        y = c.add_beside(LayerKind.ATTENTION, AttentionParams(scale=scale), ins, chain,
                         name=f"{chain[0].name}/attention").outputs[0]
        return c.add_merged(LayerKind.SHUFFLE, ShuffleParams(reshape_dims=shapes[-1], zero_is_placeholder=False),
                            [y], chain).outputs[0]

    return rewrite(chain, emit)


def fuse_add_norm(net: Network, stats: dict | None = None) -> Network:
    """norm(a + b) => norm(a, residual=b): the residual add of a transformer block inside the
    LayerNorm / RMSNorm kernel (one pass over the activations instead of two).  Where the sum
    is read after the norm too (a pre-norm transformer's residual stream), the fused layer also
    outputs it (``sum_output``)."""
    g = Graph(net)
    position = {id(layer): i for i, layer in enumerate(net.layers)}
    rewrites, drop = {}, set()
    for norm in net.layers:
        if norm.kind != LayerKind.NORMALIZATION or norm.params.num_groups != 1 or len(norm.inputs) > 3 \
                or norm.params.sum_output:
            continue
        add, out = norm.inputs[0].producer, norm.inputs[0]
        if not g.is_op(add, E.SUM) or id(add) in drop or any(t is out for t in norm.inputs[1:]):
            continue
        a, b = add.inputs
        if a.shape is None or a.shape != out.shape or b.shape != out.shape or a.dtype != b.dtype:
            continue  # no broadcasting inside the kernel
        ins = [a] + list(norm.inputs[1:]) + [None] * (3 - len(norm.inputs)) + [b]
        if g.single_use(out) is norm:
            rewrites[id(norm)] = fused(LayerKind.NORMALIZATION, norm.params, ins, [add, norm])
        elif all(position[id(user)] > position[id(norm)] for user, _ in g.uses[out.name] if user is not norm):
            rewrites[id(norm)] = _add_norm_with_sum(norm, add, ins)  # the sum's other readers follow the norm
        else:
            continue
        drop.add(id(add))
    return replace(net, rewrites, drop, stats, "fuse_add_norm")


def _add_norm_with_sum(norm: Layer, add: Layer, ins: list[Tensor | None]) -> Emit:
    """The fused layer with outputs (norm's, add's), in the norm's place; returns the norm's."""
    params = dataclasses.replace(norm.params, sum_output=True)

    outputs = [norm.outputs[0], add.outputs[0]]

    def emit(c: NetworkCopier) -> Tensor:
        return c.add_merged(LayerKind.NORMALIZATION, params, [c.mapped(t) for t in ins], [add, norm], outputs).outputs[0]

    return rewrite([add, norm], emit, outputs)
