"""ATen importers for neural-network layers: convolution, linear, pooling, normalization,
softmax, attention, embedding."""
from __future__ import annotations

import numpy as np
import torch

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import (ActivationParams, ActivationType, AttentionParams, ConvolutionParams, DeconvolutionParams, ElementWiseOperation as E,
                                   GatherParams, LayerKind, MatrixMultiplyParams, MatrixOperation, NormalizationParams,
                                   PaddingMode, PoolingParams, PoolingType, ReduceOperation, ReduceParams, ScaleMode,
                                   ScaleParams, SoftmaxParams, SqueezeParams, UnaryOperation as U)
from kilnrt.torch.ops.tensor import dim_size
from kilnrt.torch.registry import aten

A = torch.ops.aten


def _tuple(v, n: int) -> tuple[int, ...]:
    """An int or a list of ints as an n-tuple (torch repeats a single value)."""
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    v = tuple(int(x) for x in v)
    return v * n if len(v) == 1 and n > 1 else v


def _static_weight_shape(ctx, w) -> tuple[int, ...]:
    shape = w.shape
    ctx.require(shape is not None and all(isinstance(d, int) for d in shape), ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                f"the weight shape must be known at build time; {w.name!r} has shape {shape}")
    return tuple(shape)


def _conv(ctx, x, w, b, stride, padding, dilation, groups, transposed=False, output_padding=0):
    wshape = _static_weight_shape(ctx, w)
    n = len(wshape) - 2
    ks = tuple(wshape[2:])
    st, dil = _tuple(stride, n), _tuple(dilation, n)
    if isinstance(padding, str):
        ctx.require(padding in ("valid", "same") and not transposed, ErrorCode.UNSUPPORTED_NODE_ATTR,
                    f"padding={padding!r}; supported: 'valid', 'same' or explicit sizes")
        if padding == "valid":
            pre = post = (0,) * n
        else:  # torch puts the odd extra element at the end
            total = [d * (k - 1) for d, k in zip(dil, ks)]
            pre, post = tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
    else:
        pre = post = _tuple(padding, n)
    if transposed:
        params = DeconvolutionParams(num_output_maps=int(wshape[1]) * int(groups), kernel_size_nd=ks, stride_nd=st,
                                     pre_padding=pre, post_padding=post, dilation_nd=dil, num_groups=int(groups),
                                     output_padding=_tuple(output_padding, n))
        return ctx.out(LayerKind.DECONVOLUTION, params, x, w, b)
    params = ConvolutionParams(num_output_maps=int(wshape[0]), kernel_size_nd=ks, stride_nd=st, pre_padding=pre,
                               post_padding=post, dilation_nd=dil, num_groups=int(groups),
                               padding_mode=PaddingMode.EXPLICIT_ROUND_DOWN)
    return ctx.out(LayerKind.CONVOLUTION, params, x, w, b)


@aten(A.conv1d.default, A.conv2d.default, A.conv3d.default, A.conv1d.padding, A.conv2d.padding, A.conv3d.padding)
def conv(ctx, input, weight, bias, stride, padding, dilation, groups):
    """conv1d/2d/3d: a CONVOLUTION layer (explicit, 'valid' or 'same' padding)."""
    return _conv(ctx, input, weight, bias, stride, padding, dilation, groups)


@aten(A.conv_transpose1d.default, A.conv_transpose2d.input, A.conv_transpose3d.input)
def conv_transpose(ctx, input, weight, bias, stride, padding, output_padding, groups, dilation):
    """conv_transpose1d/2d/3d: a DECONVOLUTION layer."""
    return _conv(ctx, input, weight, bias, stride, padding, dilation, groups, True, output_padding)


@aten(A.convolution.default)
def convolution(ctx, input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    """convolution: a CONVOLUTION layer, or DECONVOLUTION when transposed."""
    return _conv(ctx, input, weight, bias, stride, padding, dilation, groups, bool(transposed), output_padding)


@aten(A.linear.default)
def linear(ctx, input, weight, bias=None):
    """linear: input @ weight^T (a matrix multiply by the transposed weight) + bias."""
    y = ctx.out(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(op1=MatrixOperation.TRANSPOSE), input, weight)
    return y if bias is None else ctx.elementwise(E.SUM, y, bias)


@aten(A.mm.default, A.bmm.default, A.matmul.default)
def matmul(ctx, self, mat2=None, other=None):
    """mm, bmm, matmul: a MATRIX_MULTIPLY layer (numpy's matmul broadcasting)."""
    b = mat2 if mat2 is not None else other
    return ctx.out(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(), self, b)


@aten(A.addmm.default)
def addmm(ctx, self, mat1, mat2, beta=1, alpha=1):
    """addmm: beta * self + alpha * (mat1 @ mat2)."""
    y = ctx.out(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(), mat1, mat2)
    dtype = ctx.dtype(y).numpy
    if alpha != 1:
        y = ctx.elementwise(E.PROD, y, ctx.constant(np.asarray(alpha, dtype)))
    if beta == 0:
        return y
    bias = self if beta == 1 else ctx.elementwise(E.PROD, self, ctx.constant(np.asarray(beta, dtype)))
    return ctx.elementwise(E.SUM, y, bias)


def _pool(ctx, kind, x, kernel_size, stride, padding, dilation, ceil_mode, exclude_pad=True):
    n = len(_tuple(kernel_size, 1)) if not isinstance(kernel_size, int) else ctx.rank(x) - 2
    ks = _tuple(kernel_size, n)
    st = _tuple(stride, n) if stride not in (None, [], ()) else ks
    pad = _tuple(padding, n)
    mode = PaddingMode.EXPLICIT_ROUND_UP if ceil_mode else PaddingMode.EXPLICIT_ROUND_DOWN
    params = PoolingParams(kind, ks, st, pad, pad, _tuple(dilation, n), mode, exclude_pad)
    return ctx.out(LayerKind.POOLING, params, x)


@aten(A.max_pool1d.default, A.max_pool2d.default, A.max_pool3d.default)
def max_pool(ctx, self, kernel_size, stride, padding, dilation, ceil_mode):
    """max_pool1d/2d/3d: a max POOLING layer."""
    return _pool(ctx, PoolingType.MAX, self, kernel_size, stride, padding, dilation, ceil_mode)


@aten(A.max_pool2d_with_indices.default, A.max_pool3d_with_indices.default)
def max_pool_with_indices(ctx, self, kernel_size, stride, padding, dilation, ceil_mode):
    """max_pool2d/3d_with_indices: a max POOLING layer (the indices output is not supported)."""
    return [_pool(ctx, PoolingType.MAX, self, kernel_size, stride, padding, dilation, ceil_mode), None]


@aten(A.avg_pool1d.default, A.avg_pool2d.default, A.avg_pool3d.default)
def avg_pool(ctx, self, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override=None):
    """avg_pool1d/2d/3d: an average POOLING layer."""
    ctx.require(divisor_override is None, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"divisor_override={divisor_override} is not supported; supported: None")
    return _pool(ctx, PoolingType.AVERAGE, self, kernel_size, stride, padding, 1, ceil_mode, not count_include_pad)


@aten(A.adaptive_avg_pool1d.default, A.adaptive_avg_pool2d.default, A.adaptive_avg_pool3d.default,
      A._adaptive_avg_pool2d.default, A._adaptive_avg_pool3d.default)
def adaptive_avg_pool(ctx, self, output_size):
    """adaptive_avg_pool: a mean REDUCE for output size 1, else an average POOLING of equal windows."""
    rank = ctx.rank(self)
    n = len(output_size)
    out = tuple(int(s) for s in output_size)
    spatial = tuple(range(rank - n, rank))
    if all(s == 1 for s in out):
        return ctx.out(LayerKind.REDUCE, ReduceParams(ReduceOperation.AVG, spatial, True), self)
    dims = [self.shape[a] for a in spatial]
    ctx.require(all(isinstance(d, int) and d % o == 0 for d, o in zip(dims, out)), ErrorCode.UNSUPPORTED_NODE_SHAPE,
                f"output size {out} from input size {tuple(dims)}: kilnrt needs each input size known at build "
                "time and a multiple of its output size (or an output size of 1)")
    ks = tuple(d // o for d, o in zip(dims, out))
    return ctx.out(LayerKind.POOLING, PoolingParams(PoolingType.AVERAGE, ks, ks, (0,) * n, (0,) * n, (1,) * n), self)


def _ones(ctx, x, shape, value=1.0):
    return ctx.constant(np.full(tuple(int(s) for s in shape), value, dtype=ctx.dtype(x).numpy))


def _batch_norm(ctx, x, weight, bias, running_mean, running_var, eps):
    ctx.require(running_mean is not None and running_var is not None, ErrorCode.UNSUPPORTED_NODE_INPUT,
                "batch norm without running statistics normalizes with the batch's own: call module.eval() "
                "before compiling (kilnrt builds inference engines)")
    values = [ctx.value(t) if t is not None else None for t in (weight, bias, running_mean, running_var)]
    dtype = ctx.dtype(x).numpy
    m, v = values[2], values[3]
    if m is not None and v is not None and (weight is None or values[0] is not None) \
            and (bias is None or values[1] is not None):
        s = np.ones_like(m, dtype=np.float64) if weight is None else np.asarray(values[0], np.float64)
        b = np.zeros_like(m, dtype=np.float64) if bias is None else np.asarray(values[1], np.float64)
        k = s / np.sqrt(np.asarray(v, np.float64) + eps)
        shift = b - np.asarray(m, np.float64) * k
        return ctx.out(LayerKind.SCALE, ScaleParams(ScaleMode.CHANNEL, 1), x, ctx.constant(shift.astype(dtype)),
                       ctx.constant(k.astype(dtype)), None)
    tail = [1] * (ctx.rank(x) - 2)
    mean, var = (ctx.reshape(t, [-1] + tail) for t in (running_mean, running_var))
    std = ctx.unary(U.SQRT, ctx.elementwise(E.SUM, var, ctx.constant(np.asarray(eps, dtype))))
    y = ctx.elementwise(E.DIV, ctx.elementwise(E.SUB, x, mean), std)
    if weight is not None:
        y = ctx.elementwise(E.PROD, y, ctx.reshape(weight, [-1] + tail))
    if bias is not None:
        y = ctx.elementwise(E.SUM, y, ctx.reshape(bias, [-1] + tail))
    return y


@aten(A.batch_norm.default)
def batch_norm(ctx, input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled=True):
    """batch_norm (inference): a per-channel SCALE layer from the running statistics (cudnn_enabled: a hint)."""
    ctx.require(not training, ErrorCode.UNSUPPORTED_NODE_ATTR,
                "batch norm in training mode updates its running statistics: call module.eval() before compiling")
    return _batch_norm(ctx, input, weight, bias, running_mean, running_var, float(eps))


@aten(A._native_batch_norm_legit_no_training.default)
def native_batch_norm_no_training(ctx, input, weight, bias, running_mean, running_var, momentum, eps):
    """_native_batch_norm_legit_no_training: a per-channel SCALE layer (output 0 only)."""
    return [_batch_norm(ctx, input, weight, bias, running_mean, running_var, float(eps)), None, None]


def _layer_norm(ctx, x, normalized_shape, weight, bias, eps, rms=False):
    rank = ctx.rank(x)
    n = len(normalized_shape)
    if weight is None:
        weight = _ones(ctx, x, normalized_shape)
    return ctx.out(LayerKind.NORMALIZATION, NormalizationParams(tuple(range(rank - n, rank)), float(eps), rms=rms),
                   x, weight, bias)


@aten(A.layer_norm.default)
def layer_norm(ctx, input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    """layer_norm: a NORMALIZATION layer over the last len(normalized_shape) dims (cudnn_enable: a hint)."""
    return _layer_norm(ctx, input, normalized_shape, weight, bias, eps)


@aten(A.native_layer_norm.default)
def native_layer_norm(ctx, input, normalized_shape, weight, bias, eps):
    """native_layer_norm: a NORMALIZATION layer (output 0 only)."""
    return [_layer_norm(ctx, input, normalized_shape, weight, bias, eps), None, None]


@aten(A.rms_norm.default)
def rms_norm(ctx, input, normalized_shape, weight=None, eps=None):
    """rms_norm: an RMS NORMALIZATION layer (eps None: the dtype's machine epsilon, as torch)."""
    if eps is None:
        eps = float(torch.finfo(ctx.dtype(input).torch).eps)
    return _layer_norm(ctx, input, normalized_shape, weight, None, eps, rms=True)


@aten(A.group_norm.default)
def group_norm(ctx, input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    """group_norm: a grouped NORMALIZATION layer (cudnn_enabled: a hint)."""
    rank = ctx.rank(input)
    channels = input.shape[1]
    ctx.require(isinstance(channels, int), ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                "group_norm needs the channel count known at build time")
    tail = [1] * (rank - 2)
    s = _ones(ctx, input, [channels]) if weight is None else weight
    b = _ones(ctx, input, [channels], 0.0) if bias is None else bias
    params = NormalizationParams.group_norm(rank, eps, num_groups)
    return ctx.out(LayerKind.NORMALIZATION, params, input, ctx.reshape(s, [-1] + tail), ctx.reshape(b, [-1] + tail))


@aten(A.native_group_norm.default)
def native_group_norm(ctx, input, weight, bias, N, C, HxW, group, eps):
    """native_group_norm: a grouped NORMALIZATION layer (output 0 only)."""
    return [group_norm(ctx, input, group, weight, bias, eps), None, None]


def _softmax(ctx, x, dim, log, dtype=None):
    if dtype is not None:
        x = ctx.cast(x, DataType.from_torch(dtype))
    return ctx.out(LayerKind.SOFTMAX, SoftmaxParams(axis=ctx.axis(int(dim), ctx.rank(x)), log=log), x)


@aten(A.softmax.int)
def softmax(ctx, self, dim, dtype=None):
    """softmax: a SOFTMAX layer."""
    return _softmax(ctx, self, dim, False, dtype)


@aten(A.log_softmax.int)
def log_softmax(ctx, self, dim, dtype=None):
    """log_softmax: a log SOFTMAX layer."""
    return _softmax(ctx, self, dim, True, dtype)


@aten(A._softmax.default, A._log_softmax.default)
def softmax_core(ctx, self, dim, half_to_float):
    """_softmax / _log_softmax: a (log) SOFTMAX layer."""
    ctx.require(not half_to_float, ErrorCode.UNSUPPORTED_NODE_ATTR, "half_to_float=True is not supported")
    return _softmax(ctx, self, dim, "log" in ctx.node.target.__name__)


def _attention(ctx, q, k, v, mask, dropout_p, is_causal, scale):
    ctx.require(dropout_p == 0, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"dropout_p={dropout_p}: kilnrt builds inference engines; use dropout_p=0 (or module.eval())")
    rank = ctx.rank(q)
    ctx.require(rank in (3, 4) and ctx.rank(k) == rank and ctx.rank(v) == rank, ErrorCode.UNSUPPORTED_NODE_SHAPE,
                f"query, key and value must all be 3-D or all 4-D; got ranks {rank}, {ctx.rank(k)}, {ctx.rank(v)}")
    if is_causal:  # torch aligns the causal mask top-left, kilnrt bottom-right: equal when Sq == Skv
        ctx.require(q.shape[-2] == k.shape[-2], ErrorCode.UNSUPPORTED_NODE_SHAPE,
                    f"is_causal with query length {q.shape[-2]} and key length {k.shape[-2]}: kilnrt supports "
                    "causal attention when they are equal; pass an explicit attn_mask instead")
    if mask is not None and rank == 3:
        mask = ctx.unsqueeze(mask, [0]) if ctx.rank(mask) >= 2 else mask
    if rank == 3:
        q, k, v = (ctx.unsqueeze(t, [1]) for t in (q, k, v))
    if mask is not None and ctx.dtype(mask) not in (DataType.BOOL, ctx.dtype(q)):
        mask = ctx.cast(mask, ctx.dtype(q))
    params = AttentionParams(causal=bool(is_causal), scale=None if scale is None else float(scale))
    y = ctx.add(LayerKind.ATTENTION, params, [q, k, v, mask], num_outputs=3).outputs[0]
    if rank == 3:
        y = ctx.out(LayerKind.SQUEEZE, SqueezeParams((1,)), y)
    return y


@aten(A.scaled_dot_product_attention.default)
def scaled_dot_product_attention(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """scaled_dot_product_attention: an ATTENTION layer (bool or additive masks, causal, grouped heads)."""
    return _attention(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale)  # heads: Hq % Hkv == 0


@aten(A._scaled_dot_product_flash_attention_for_cpu.default)
def sdpa_flash_cpu(ctx, query, key, value, dropout_p=0.0, is_causal=False, attn_mask=None, scale=None):
    """_scaled_dot_product_flash_attention_for_cpu: an ATTENTION layer (output 0 only)."""
    return [_attention(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale), None]


@aten(A._scaled_dot_product_efficient_attention.default)
def sdpa_efficient(ctx, query, key, value, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, scale=None):
    """_scaled_dot_product_efficient_attention: an ATTENTION layer (output 0 only)."""
    return [_attention(ctx, query, key, value, attn_bias, dropout_p, is_causal, scale), None, None, None]


@aten(A._scaled_dot_product_flash_attention.default)
def sdpa_flash(ctx, query, key, value, dropout_p=0.0, is_causal=False, return_debug_mask=False, scale=None):
    """_scaled_dot_product_flash_attention: an ATTENTION layer (output 0 only)."""
    return [_attention(ctx, query, key, value, None, dropout_p, is_causal, scale)] + [None] * 8


def _self_attention(ctx, x, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias):
    """Multi-head self-attention of x [B, S, E] with packed q/k/v projections, as PyTorch's fast paths."""
    qkv = linear(ctx, x, qkv_weight, qkv_bias)
    e = x.shape[-1]
    ctx.require(isinstance(e, int) and e % int(num_heads) == 0, ErrorCode.UNSUPPORTED_NODE_SHAPE,
                f"the embedding size ({e}) must be known at build time and a multiple of num_heads ({num_heads})")
    b, s = dim_size(ctx, x, 0), dim_size(ctx, x, 1)
    heads = []
    for i in range(3):
        part = _slice_last(ctx, qkv, i * e, (i + 1) * e)
        heads.append(ctx.transpose(ctx.reshape(part, [b, s, int(num_heads), e // int(num_heads)]), [0, 2, 1, 3]))
    y = ctx.add(LayerKind.ATTENTION, AttentionParams(), heads, num_outputs=3).outputs[0]
    y = ctx.reshape(ctx.transpose(y, [0, 2, 1, 3]), [b, s, e])
    return linear(ctx, y, proj_weight, proj_bias)


def _slice_last(ctx, x, start, end):
    from kilnrt.network.layers import SliceParams

    vec = lambda v: ctx.constant(np.asarray([v], np.int64))  # noqa: E731
    return ctx.out(LayerKind.SLICE, SliceParams(), x, vec(start), vec(end), vec(-1), vec(1))


@aten(A._transformer_encoder_layer_fwd.default)
def transformer_encoder_layer(ctx, src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                              use_gelu, norm_first, eps, norm_weight_1, norm_bias_1, norm_weight_2, norm_bias_2,
                              ffn_weight_1, ffn_bias_1, ffn_weight_2, ffn_bias_2, mask=None, mask_type=None):
    """_transformer_encoder_layer_fwd (nn.TransformerEncoderLayer's fast path, no mask): attention, norms, MLP."""
    ctx.require(mask is None, ErrorCode.UNSUPPORTED_NODE_INPUT,
                "the fused encoder layer with a mask is not supported (it runs in PyTorch)")
    ctx.require(ctx.rank(src) == 3, ErrorCode.UNSUPPORTED_NODE_SHAPE, "src must be [batch, seq, embed]")

    def norm(x, w, b):
        return _layer_norm(ctx, x, [embed_dim], w, b, eps)

    def mlp(x):
        h = linear(ctx, x, ffn_weight_1, ffn_bias_1)
        h = ctx.out(LayerKind.ACTIVATION, ActivationParams(ActivationType.GELU_ERF if use_gelu else ActivationType.RELU), h)
        return linear(ctx, h, ffn_weight_2, ffn_bias_2)

    def attn(x):
        return _self_attention(ctx, x, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias)

    if norm_first:
        x = ctx.elementwise(E.SUM, src, attn(norm(src, norm_weight_1, norm_bias_1)))
        return ctx.elementwise(E.SUM, x, mlp(norm(x, norm_weight_2, norm_bias_2)))
    x = norm(ctx.elementwise(E.SUM, src, attn(src)), norm_weight_1, norm_bias_1)
    return norm(ctx.elementwise(E.SUM, x, mlp(x)), norm_weight_2, norm_bias_2)


@aten(A.embedding.default)
def embedding(ctx, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    """embedding: a GATHER of the weight's rows (padding_idx only matters for gradients)."""
    return ctx.out(LayerKind.GATHER, GatherParams(0), weight, indices)

