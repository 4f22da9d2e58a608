"""Importers for attention ops: Attention and FlexAttention (ATTENTION layers), RotaryEmbedding,
LinearAttention."""
from __future__ import annotations

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import (AttentionParams, ConcatenationParams, ElementWiseOperation as E, ExpandParams,
                                   GatherParams, LayerKind, MatrixMultiplyParams, MatrixOperation, PluginParams,
                                   ShuffleParams, SliceParams, SoftmaxParams)
from kilnrt.onnx.registry import importer

_SOFTMAX_PRECISIONS = (1, 10, 11, 16)   # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _split_heads(ctx, x, num_heads: int):
    """[B, S, H * D] -> [B, H, S, D]."""
    return ctx.out(LayerKind.SHUFFLE, ShuffleParams(reshape_dims=(0, 0, int(num_heads), -1),
                                                    second_transpose=(0, 2, 1, 3)), x)


def _merge_heads(ctx, x):
    """[B, H, S, D] -> [B, S, H * D]."""
    return ctx.out(LayerKind.SHUFFLE, ShuffleParams(first_transpose=(0, 2, 1, 3), reshape_dims=(0, 0, -1)), x)


def _attention(ctx, node, q, k, v, attn_mask, past_key, past_value, nonpad_kv_seqlen, *, is_causal,
               kv_num_heads, q_num_heads, qk_matmul_output_mode, scale, softcap, softmax_precision,
               left_window_size=-1, right_window_size=-1):
    rank = ctx.rank(q)
    ctx.require(rank in (3, 4) and ctx.rank(k) == rank and ctx.rank(v) == rank, ErrorCode.UNSUPPORTED_NODE_SHAPE,
                f"Q, K and V must all be 3-D or all 4-D; got ranks {rank}, {ctx.rank(k)}, {ctx.rank(v)}")
    ctx.require(qk_matmul_output_mode in (0, 1, 2, 3), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"qk_matmul_output_mode={qk_matmul_output_mode}; supported: 0, 1, 2, 3")
    ctx.require(softmax_precision is None or softmax_precision in _SOFTMAX_PRECISIONS,
                ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"softmax_precision={softmax_precision}; "
                "supported: 1 (FLOAT), 10 (FLOAT16), 11 (DOUBLE), 16 (BFLOAT16)")
    ctx.require((past_key is None) == (past_value is None), ErrorCode.INVALID_NODE,
                "past_key and past_value must be given together")
    ctx.require(left_window_size >= -1 and right_window_size >= -1, ErrorCode.INVALID_NODE,
                f"window sizes must be -1 or >= 0; got left={left_window_size}, right={right_window_size}")
    if rank == 3:
        ctx.require(q_num_heads and kv_num_heads, ErrorCode.INVALID_NODE,
                    "3-D Q, K, V need the q_num_heads and kv_num_heads attributes")
        q = _split_heads(ctx, q, q_num_heads)
        k, v = _split_heads(ctx, k, kv_num_heads), _split_heads(ctx, v, kv_num_heads)
    want_qk = len(node.output) > 3 and bool(node.output[3])
    params = AttentionParams(
        causal=bool(is_causal), scale=None if scale is None else float(scale), softcap=float(softcap or 0.0),
        left_window=int(left_window_size), right_window=int(right_window_size),
        softmax_precision=None if softmax_precision is None else DataType.from_onnx(int(softmax_precision)),
        qk_output_mode=int(qk_matmul_output_mode) if want_qk else -1)
    layer = ctx.add(LayerKind.ATTENTION, params, [q, k, v, attn_mask, past_key, past_value, nonpad_kv_seqlen],
                    num_outputs=4 if want_qk else 3)
    y, *rest = layer.outputs
    if rank == 3:
        y = _merge_heads(ctx, y)
    return [y, *rest]


@importer("Attention", since=23)
def attention_v23(ctx, node, q, k, v, attn_mask=None, past_key=None, past_value=None, *, is_causal=0,
                  kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0,
                  softmax_precision=None):
    """Attention: one ATTENTION layer (3-D inputs are split into heads around it)."""
    return _attention(ctx, node, q, k, v, attn_mask, past_key, past_value, None, is_causal=is_causal,
                      kv_num_heads=kv_num_heads, q_num_heads=q_num_heads,
                      qk_matmul_output_mode=qk_matmul_output_mode, scale=scale, softcap=softcap,
                      softmax_precision=softmax_precision)


@importer("Attention", since=24)
def attention_v24(ctx, node, q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *,
                  is_causal=0, kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None,
                  softcap=0.0, softmax_precision=None):
    """Attention: adds nonpad_kv_seqlen (an external KV cache with per-batch valid lengths)."""
    return _attention(ctx, node, q, k, v, attn_mask, past_key, past_value, nonpad_kv_seqlen, is_causal=is_causal,
                      kv_num_heads=kv_num_heads, q_num_heads=q_num_heads,
                      qk_matmul_output_mode=qk_matmul_output_mode, scale=scale, softcap=softcap,
                      softmax_precision=softmax_precision)


@importer("Attention", since=25)
def attention(ctx, node, q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *,
              is_causal=0, kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0,
              softmax_precision=None, left_window_size=-1, right_window_size=-1):
    """Attention: adds sliding windows (left_window_size / right_window_size)."""
    ctx.require(ctx.rank(q) == 3 or (q_num_heads is None and kv_num_heads is None), ErrorCode.INVALID_NODE,
                "q_num_heads and kv_num_heads must not be given for 4-D inputs")
    return _attention(ctx, node, q, k, v, attn_mask, past_key, past_value, nonpad_kv_seqlen, is_causal=is_causal,
                      kv_num_heads=kv_num_heads, q_num_heads=q_num_heads,
                      qk_matmul_output_mode=qk_matmul_output_mode, scale=scale, softcap=softcap,
                      softmax_precision=softmax_precision, left_window_size=left_window_size,
                      right_window_size=right_window_size)


def _last_axis_slice(ctx, x, start: int, end: int, step: int = 1):
    i64 = lambda v: ctx.constant(np.asarray([v], np.int64))  # noqa: E731
    return ctx.out(LayerKind.SLICE, SliceParams(), x, i64(start), i64(end), i64(-1), i64(step))


@importer("RotaryEmbedding", since=23)
def rotary_embedding(ctx, node, x, cos_cache, sin_cache, position_ids=None, *, interleaved=0, num_heads=0,
                     rotary_embedding_dim=0):
    """RotaryEmbedding: decomposed into gather, slice, multiply-add and concat layers.

    x is [B, H, S, D] or [B, S, H * D] (with num_heads); the first ``rotary_embedding_dim``
    channels of each head are rotated, as halves or (interleaved) as even/odd pairs.
    """
    rank = ctx.rank(x)
    ctx.require(rank in (3, 4), ErrorCode.UNSUPPORTED_NODE_SHAPE, f"input has rank {rank}; supported: 3, 4")
    ctx.require(rank == 4 or num_heads, ErrorCode.INVALID_NODE, "a 3-D input needs the num_heads attribute")
    half = (cos_cache.shape or (None,))[-1]
    if rotary_embedding_dim:
        half = int(rotary_embedding_dim) // 2
    ctx.require(isinstance(half, int) and half > 0, ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                "the rotated width must be known at build time (rotary_embedding_dim or cos_cache's last dim)")
    if rank == 3:
        x = ctx.reshape(x, [0, 0, int(num_heads), -1])       # [B, S, H, D]
    head_axis = 2 if rank == 3 else 1
    if position_ids is not None:
        cos_cache = ctx.out(LayerKind.GATHER, GatherParams(0), cos_cache, position_ids)
        sin_cache = ctx.out(LayerKind.GATHER, GatherParams(0), sin_cache, position_ids)
    cos, sin = ctx.unsqueeze(cos_cache, [head_axis]), ctx.unsqueeze(sin_cache, [head_axis])
    if interleaved:
        x1, x2 = _last_axis_slice(ctx, x, 0, 2 * half, 2), _last_axis_slice(ctx, x, 1, 2 * half, 2)
    else:
        x1, x2 = _last_axis_slice(ctx, x, 0, half), _last_axis_slice(ctx, x, half, 2 * half)
    real = ctx.elementwise(E.SUB, ctx.elementwise(E.PROD, cos, x1), ctx.elementwise(E.PROD, sin, x2))
    imag = ctx.elementwise(E.SUM, ctx.elementwise(E.PROD, sin, x1), ctx.elementwise(E.PROD, cos, x2))
    if interleaved:
        pairs = ctx.out(LayerKind.CONCATENATION, ConcatenationParams(4),
                        ctx.unsqueeze(real, [4]), ctx.unsqueeze(imag, [4]))
        rotated = ctx.reshape(pairs, [0, 0, 0, -1])
    else:
        rotated = ctx.out(LayerKind.CONCATENATION, ConcatenationParams(3), real, imag)
    head = (x.shape or (None,))[-1]
    if not (isinstance(head, int) and head == 2 * half):
        rest = _last_axis_slice(ctx, x, 2 * half, np.iinfo(np.int64).max)
        rotated = ctx.out(LayerKind.CONCATENATION, ConcatenationParams(3), rotated, rest)
    return ctx.reshape(rotated, [0, 0, -1]) if rank == 3 else rotated


_UPDATE_RULES = ("linear", "gated", "delta", "gated_delta")


@importer("LinearAttention", since=27)
def linear_attention(ctx, node, query, key, value, past_state=None, decay=None, beta=None, *, chunk_size=64,
                     kv_num_heads=None, q_num_heads=None, scale=0.0, update_rule="gated_delta"):
    """LinearAttention: the built-in LinearAttention plugin (a recurrence over the sequence)."""
    ctx.require(update_rule in _UPDATE_RULES, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"update_rule={update_rule!r}; supported: {', '.join(_UPDATE_RULES)}")
    ctx.require(q_num_heads and kv_num_heads and q_num_heads % kv_num_heads == 0, ErrorCode.INVALID_NODE,
                f"q_num_heads ({q_num_heads}) must be a positive multiple of kv_num_heads ({kv_num_heads})")
    gated, delta = update_rule in ("gated", "gated_delta"), update_rule in ("delta", "gated_delta")
    ctx.require((decay is not None) == gated, ErrorCode.INVALID_NODE,
                f"update_rule {update_rule!r} {'needs' if gated else 'forbids'} the decay input")
    ctx.require((beta is not None) == delta, ErrorCode.INVALID_NODE,
                f"update_rule {update_rule!r} {'needs' if delta else 'forbids'} the beta input")
    ctx.require(all(ctx.rank(t) == 3 for t in (query, key, value)), ErrorCode.UNSUPPORTED_NODE_SHAPE,
                "query, key and value must be 3-D [B, T, H * D]")
    params = PluginParams("LinearAttention", "1", (("update_rule", update_rule), ("q_num_heads", int(q_num_heads)),
                                                   ("kv_num_heads", int(kv_num_heads)), ("scale", float(scale))))
    return ctx.add(LayerKind.PLUGIN, params, [query, key, value, past_state, decay, beta], num_outputs=2).outputs


def inline_subgraph(ctx, graph, inputs: list):
    """Import the nodes of an ONNX subgraph (a graph attribute) with its inputs bound to
    ``inputs``; returns its output tensors.  The subgraph's names shadow the outer graph's
    only while it is imported; its layers are named ``<outer node>/<inner node>``."""
    from onnx import helper

    from kilnrt.onnx import registry
    from kilnrt.onnx.parser import import_node

    outer = (ctx.node, ctx.node_name, ctx._layer_count)
    saved_tensors, saved_inits = dict(ctx.tensors), dict(ctx.initializers)
    try:
        for init in graph.initializer:
            ctx.initializers[init.name] = init
            ctx.tensors.pop(init.name, None)
        for vi, t in zip(graph.input, inputs):
            ctx.tensors[vi.name] = t
        for i, node in enumerate(graph.node):
            ctx.require(registry.lookup(node.op_type, ctx.opset, node.domain) is not None,
                        ErrorCode.UNSUPPORTED_NODE,
                        f"subgraph {graph.name!r} uses op {node.op_type}, which kilnrt does not support")
            inner = helper.make_node(node.op_type, node.input, node.output,
                                     name=f"{outer[1]}/{node.name or f'{node.op_type}_{i}'}", domain=node.domain)
            inner.attribute.extend(node.attribute)
            import_node(ctx, inner, i)
        return [ctx.get(o.name) for o in graph.output]
    finally:
        ctx.tensors, ctx.initializers = saved_tensors, saved_inits
        ctx.node, ctx.node_name, ctx._layer_count = outer


def _repeat_heads(ctx, t, repeat: int):
    """[B, H, S, D] -> [B, H * repeat, S, D], each head repeated ``repeat`` times in place."""
    _, h, s, d = t.shape
    ctx.require(isinstance(d, int) or isinstance(s, int), ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                "repeating K/V heads needs their sequence length or head size at build time")
    shape = ctx.constant(np.asarray([1, 1, repeat, 1, 1], np.int64))
    t = ctx.out(LayerKind.EXPAND, ExpandParams(), ctx.unsqueeze(t, [2]), shape)
    return ctx.reshape(t, [0, h * repeat, -1, d] if isinstance(d, int) else [0, h * repeat, s, -1])


@importer("FlexAttention", since=1, domain="ai.onnx.preview")
def flex_attention(ctx, node, q, k, v, *, scale=None, score_mod=None, prob_mod=None, softmax_precision=None):
    """FlexAttention: one ATTENTION layer; with score_mod / prob_mod subgraphs, matmul, softmax and the
    inlined subgraphs (each maps the [B, Hq, L, S] scores or probabilities to new ones)."""
    ctx.require(all(ctx.rank(t) == 4 for t in (q, k, v)), ErrorCode.UNSUPPORTED_NODE_SHAPE,
                "Q, K and V must be 4-D")
    dtype = ctx.dtype(q)
    if softmax_precision is not None:
        ctx.require(softmax_precision in _SOFTMAX_PRECISIONS, ErrorCode.UNSUPPORTED_NODE_ATTR,
                    f"softmax_precision={softmax_precision}; supported: 1, 10, 11, 16")
        compute = DataType.from_onnx(int(softmax_precision))
    else:
        compute = DataType.DOUBLE if dtype == DataType.DOUBLE else DataType.FLOAT
    head = q.shape[3]
    ctx.require(scale is not None or isinstance(head, int), ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                "the head size must be known at build time when scale is not given")
    scale = float(scale) if scale is not None else 1.0 / float(np.sqrt(head))
    if score_mod is None and prob_mod is None:
        params = AttentionParams(scale=scale, softmax_precision=None if compute == dtype else compute)
        return ctx.add(LayerKind.ATTENTION, params, [q, k, v], num_outputs=3).outputs[0]
    hq, hkv = q.shape[1], k.shape[1]
    ctx.require(isinstance(hq, int) and isinstance(hkv, int) and hq % hkv == 0, ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                f"the head counts must be known at build time, and Q's a multiple of K's; got {hq}, {hkv}")
    if hq != hkv:
        k, v = _repeat_heads(ctx, k, hq // hkv), _repeat_heads(ctx, v, hq // hkv)
    root = ctx.constant(np.asarray(np.sqrt(np.float32(scale)), dtype.numpy))
    scores = ctx.out(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(MatrixOperation.NONE, MatrixOperation.TRANSPOSE),
                     ctx.elementwise(E.PROD, q, root), ctx.elementwise(E.PROD, k, root))
    scores = ctx.cast(scores, compute) if compute != dtype else scores
    if score_mod is not None:
        scores = inline_subgraph(ctx, score_mod, [scores])[0]
    probs = ctx.out(LayerKind.SOFTMAX, SoftmaxParams(-1), scores)
    if prob_mod is not None:
        probs = inline_subgraph(ctx, prob_mod, [probs])[0]
    y = ctx.out(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(), probs,
                ctx.cast(v, compute) if compute != dtype else v)
    return ctx.cast(y, dtype) if compute != dtype else y
