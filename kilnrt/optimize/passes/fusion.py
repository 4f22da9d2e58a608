"""Vertical fusion into anchors (convolution, matrix multiply)."""
from __future__ import annotations

import dataclasses

import numpy as np

from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.kernels.cpu.linalg import normalize_axes
from kilnrt.network.layers import (ActivationType, ConstantParams, ElementWiseOperation, LayerKind, MatrixOperation,
                                   PaddingMode, ReduceOperation, ScaleMode,
                                   SqueezeExcitationParams)
from kilnrt.network.rewrite import NetworkCopier, pin_conflict
from kilnrt.optimize.passes.match import Emit, Graph, add_fused, fused, replace, rewrite


def fuse_conv_scale(net: Network, stats: dict | None = None) -> Network:
    """conv(x, w, b) -> scale(shift, s) => conv(x, w * s, b * s + shift): folds BatchNormalization."""
    g = Graph(net)
    rewrites, drop = {}, set()
    for layer in net.layers:
        if layer.kind != LayerKind.CONVOLUTION:
            continue
        w = net.constant_value(layer.inputs[1])
        b = net.constant_value(layer.inputs[2]) if len(layer.inputs) > 2 else None
        nxt = g.single_use(layer.outputs[0])
        if w is None or (len(layer.inputs) > 2 and layer.inputs[2] is not None and b is None) or nxt is None:
            continue
        if nxt.kind != LayerKind.SCALE or nxt.params.mode != ScaleMode.CHANNEL or nxt.params.channel_axis != 1:
            continue
        k = w.shape[0]
        weights = _scale_weights(net, nxt, k)
        if weights is None:
            continue
        s, sh = weights
        bias = np.zeros(k, np.float64) if b is None else np.asarray(b, np.float64)
        new_w = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        new_b = (bias * s + sh).astype(w.dtype)
        rewrites[id(nxt)] = _folded_conv(layer, [layer, nxt], layer.inputs[0], new_w, new_b)
        drop.add(id(layer))
    return replace(net, rewrites, drop, stats, "fuse_conv_scale")


def fuse_conv_input_scale(net: Network, stats: dict | None = None) -> Network:
    """scale(x, shift, s) -> conv(., w, b) => conv(x, w * s, b + w . shift): folds a
    BatchNormalization *before* a convolution (a pre-norm: MaxViT's MBConv blocks,
    BN -> 1x1 conv) into the convolution's weights, by input channel.  Only where the
    convolution pads nothing, so every product it makes reads a scaled input (padding would
    read zeros where the unfolded network reads ``shift``), unless the shift is zero."""
    g = Graph(net)
    rewrites, drop = {}, set()
    for sc in net.layers:
        if sc.kind != LayerKind.SCALE or sc.params.mode != ScaleMode.CHANNEL or sc.params.channel_axis != 1:
            continue
        conv = g.single_use(sc.outputs[0])
        x = sc.inputs[0]
        if conv is None or conv.kind != LayerKind.CONVOLUTION or conv.inputs[0] is not sc.outputs[0] \
                or len(conv.inputs) > 3 or x.shape is None or len(x.shape) < 3 or not isinstance(x.shape[1], int):
            continue
        w = net.constant_value(conv.inputs[1])
        bias_t = conv.inputs[2] if len(conv.inputs) > 2 else None
        b = net.constant_value(bias_t) if bias_t is not None else None
        p = conv.params
        channels, groups = x.shape[1], p.num_groups
        if w is None or not np.issubdtype(w.dtype, np.floating) or (bias_t is not None and b is None) \
                or channels % groups or w.shape[1] != channels // groups or w.shape[0] % groups:
            continue
        weights = _scale_weights(net, sc, channels)
        if weights is None or (np.any(weights[1]) and _pads(p)):
            continue
        # each output channel's row of per-input-channel factors: its group's slice
        s, shift = (np.repeat(v.reshape(groups, -1), w.shape[0] // groups, axis=0) for v in weights)  # [K, C/g]
        w64 = w.astype(np.float64)
        window = (slice(None), slice(None)) + (None,) * (w.ndim - 2)
        new_w = w64 * s[window]
        bias = np.zeros(w.shape[0]) if b is None else np.asarray(b, np.float64).reshape(-1)
        new_b = bias + (w64 * shift[window]).reshape(w.shape[0], -1).sum(axis=1)
        rewrites[id(conv)] = _folded_conv(conv, [sc, conv], x, new_w.astype(w.dtype), new_b.astype(w.dtype))
        drop.add(id(sc))
    return replace(net, rewrites, drop, stats, "fuse_conv_input_scale")


def _pads(p) -> bool:
    """Whether a convolution with params ``p`` may read padding."""
    if p.padding_mode in (PaddingMode.SAME_UPPER, PaddingMode.SAME_LOWER):
        return any(k != 1 for k in p.kernel_size_nd)  # a one-wide window is never padded to keep the size
    return p.padding_mode != PaddingMode.EXPLICIT_ROUND_DOWN or any(p.pre_padding) or any(p.post_padding)


def _scale_weights(net: Network, layer: Layer, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A per-channel SCALE layer's (scale, shift) as float64 vectors of ``channels``; None if it
    has a power or a weight that is not a constant."""
    ins = layer.inputs + [None] * (4 - len(layer.inputs))
    shift = net.constant_value(ins[1]) if ins[1] is not None else None
    scale = net.constant_value(ins[2]) if ins[2] is not None else None
    if ins[3] is not None or (ins[1] is not None and shift is None) or (ins[2] is not None and scale is None):
        return None
    vector = lambda v, default: np.full(channels, default, np.float64) if v is None else \
        np.broadcast_to(np.asarray(v, np.float64).reshape(-1), (channels,))  # noqa: E731
    return vector(scale, 1.0), vector(shift, 0.0)


def _keeps_last_dim(layer: Layer, n: int) -> bool:
    """A plain reshape whose input and output both end in a static dim of ``n``: element
    (..., j) stays in column j."""
    p, x, y = layer.params, layer.inputs[0], layer.outputs[0]
    return (layer.kind == LayerKind.SHUFFLE and p.first_transpose is None and p.second_transpose is None
            and x.shape is not None and y.shape is not None and len(x.shape) > 0 and len(y.shape) > 0
            and x.shape[-1] == n and y.shape[-1] == n)


def fuse_matmul_scale(net: Network, stats: dict | None = None) -> Network:
    """matmul(a, W[, b]) [+ b'] -> reshapes that keep the last dim -> scale(shift, s) along it
    => matmul(a, W * s, (b + b') * s + shift) -> the reshapes: folds a BatchNormalization over
    a linear layer's output features (``BatchNorm1d`` on ``[tokens, features]``, as LeViT has
    after every linear layer) into its weights and a bias, as fuse_conv_scale does for
    convolutions."""
    g = Graph(net)
    rewrites = {}
    for mm in net.layers:
        if mm.kind != LayerKind.MATRIX_MULTIPLY or mm.params.activation is not None \
                or mm.params.op0 != MatrixOperation.NONE or len(mm.inputs) not in (2, 3) \
                or mm.params.op1 not in (MatrixOperation.NONE, MatrixOperation.TRANSPOSE):
            continue
        w = net.constant_value(mm.inputs[1])
        bias_t = mm.inputs[2] if len(mm.inputs) == 3 else None
        b = net.constant_value(bias_t) if bias_t is not None else None
        if w is None or w.ndim != 2 or not np.issubdtype(w.dtype, np.floating) or (bias_t is not None and b is None):
            continue
        transposed = mm.params.op1 == MatrixOperation.TRANSPOSE
        n = w.shape[0] if transposed else w.shape[1]
        out = mm.outputs[0]
        if b is not None and (b.size != n or b.shape[-1:] != (n,)):
            continue
        nxt = g.single_use(out)
        add = None   # a bias added as its own layer (an exporter's Gemm, before fuse_matmul_epilogue)
        if g.is_op(nxt, ElementWiseOperation.SUM):
            other_t = g.other(nxt, out)
            other = net.constant_value(other_t)
            if other is None or other_t is out or other.size != n or other.shape[-1:] != (n,) \
                    or out.shape is None or other.ndim > len(out.shape):
                continue
            add, b = nxt, (other.reshape(-1) if b is None else b.reshape(-1) + other.reshape(-1))
            nxt = g.single_use(add.outputs[0])
        while nxt is not None and _keeps_last_dim(nxt, n):
            nxt = g.single_use(nxt.outputs[0])
        if nxt is None or nxt.kind != LayerKind.SCALE or nxt.params.mode != ScaleMode.CHANNEL \
                or nxt.outputs[0].name in g.outputs:
            continue
        x = nxt.inputs[0]
        if x.shape is None or not x.shape or nxt.params.channel_axis % len(x.shape) != len(x.shape) - 1 \
                or x.shape[-1] != n:
            continue
        weights = _scale_weights(net, nxt, n)
        absorbed = [mm] + ([add] if add is not None else []) + [nxt]
        if weights is None or pin_conflict(absorbed, [out]) is not None:
            continue
        s, shift = weights
        w64 = w.astype(np.float64) * (s[:, None] if transposed else s[None, :])
        new_b = (np.zeros(n) if b is None else np.asarray(b, np.float64).reshape(-1)) * s + shift
        rewrites[id(mm)] = _folded_matmul(mm, absorbed, w64.astype(w.dtype), new_b.astype(w.dtype))
        if add is not None:
            rewrites[id(add)] = rewrite([add], lambda c, t=out: c.mapped(t))
        rewrites[id(nxt)] = rewrite([nxt], lambda c, t=x: c.mapped(t))
    return replace(net, rewrites, set(), stats, "fuse_matmul_scale")   # each absorbed layer is rewritten itself


def _folded_constants(c: NetworkCopier, anchor: Layer, w: np.ndarray, b: np.ndarray) -> tuple[Tensor, Tensor]:
    """A fold's new weights and bias as constants named after ``anchor``."""
    return tuple(c.net.add_layer(LayerKind.CONSTANT, ConstantParams(v), [], origin=anchor.origin,
                                 name=c.net.unique_name(f"{anchor.name}/{what}")).outputs[0]
                 for what, v in (("weights", w), ("bias", b)))


def _folded_matmul(mm: Layer, absorbed: list[Layer], w: np.ndarray, b: np.ndarray) -> Emit:
    """The matmul with the folded weights and bias, named after and pinned as ``absorbed`` (the
    matmul, its bias add, its scale: checked by the caller), writing the matmul's output."""

    def emit(c: NetworkCopier) -> Tensor:
        wt, bt = _folded_constants(c, mm, w, b)
        return c.add_merged(LayerKind.MATRIX_MULTIPLY, mm.params, [c.mapped(mm.inputs[0]), wt, bt], absorbed,
                            outputs=[mm.outputs[0]]).outputs[0]

    return rewrite([mm], emit)


def _folded_conv(conv: Layer, absorbed: list[Layer], x: Tensor, w: np.ndarray, b: np.ndarray) -> Emit:
    """Emits the folded weights and bias as new constants, then the convolution reading ``x``
    and them, standing for ``absorbed`` (the convolution and its norm, in network order)."""

    def emit(c: NetworkCopier) -> Tensor:
        wt, bt = _folded_constants(c, conv, w, b)
        return add_fused(c, LayerKind.CONVOLUTION, conv.params, [c.mapped(x), wt, bt], absorbed)

    return rewrite(absorbed, emit)


# activations a convolution epilogue may absorb
EPILOGUE_ACTIVATIONS = {ActivationType.RELU, ActivationType.SIGMOID, ActivationType.TANH, ActivationType.LEAKY_RELU,
                        ActivationType.CLIP, ActivationType.GELU_ERF, ActivationType.GELU_TANH, ActivationType.SILU,
                        ActivationType.HARD_SWISH, ActivationType.ELU}


# the convolutions an epilogue fuses into: how many inputs come before the residual
_INPUTS_BEFORE_RESIDUAL = {LayerKind.CONVOLUTION: 3,                # x, w, bias
                           LayerKind.QUANTIZED_CONVOLUTION: 4}      # x, w int8, w scale, bias


def fuse_conv_epilogue(net: Network, stats: dict | None = None) -> Network:
    """conv(x) [+ r] [-> act] => conv(x, residual=r, activation=act): one kernel where the
    library has it (cuDNN conv+bias+add+ReLU), one region otherwise.

    The fused layer takes the place of the last absorbed layer, where the residual is
    sure to have been computed.
    """
    g = Graph(net)
    rewrites, drop = {}, set()
    for conv in net.layers:
        slots = _INPUTS_BEFORE_RESIDUAL.get(conv.kind)
        if slots is None or conv.params.activation is not None or len(conv.inputs) > slots:
            continue
        out, chain, residual, params = conv.outputs[0], [conv], None, conv.params
        nxt = g.single_use(out)
        if g.is_op(nxt, ElementWiseOperation.SUM):
            other = g.other(nxt, out)
            if other is not out and other.shape is not None and other.shape == out.shape and out.has_known_dims \
                    and other.dtype == out.dtype and net.constant_value(other) is None:
                residual = other
                chain.append(nxt)
                nxt = g.single_use(nxt.outputs[0])
        if nxt is not None and nxt.kind == LayerKind.ACTIVATION and nxt.params.type in EPILOGUE_ACTIVATIONS:
            params = dataclasses.replace(params, activation=nxt.params.type, activation_alpha=nxt.params.alpha,
                                         activation_beta=nxt.params.beta)
            chain.append(nxt)
        if len(chain) == 1 or id(chain[-1]) in rewrites:  # nothing to absorb, or two convs feed one add
            continue
        ins = list(conv.inputs) + [None] * (slots - len(conv.inputs)) + ([residual] if residual is not None else [])
        rewrites[id(chain[-1])] = fused(conv.kind, params, ins, chain)
        drop.update(id(l) for l in chain[:-1])
    return replace(net, rewrites, drop, stats, "fuse_conv_epilogue")


def move_residual_bias(net: Network, stats: dict | None = None) -> Network:
    """conv2(x, bias=b2, residual=conv1(z, bias=b1)) => conv2(x, bias=b1 + b2, residual=conv1(z)):
    a ResNet downsample convolution's bias joins its consumer's bias, where cuDNN's fused
    conv+bias+add+ReLU adds it for free.  A bias-free convolution needs no separate bias pass
    (channels-last, PyTorch adds a bias in its own broadcast kernel).  Only when conv1 has no
    activation and conv2 is its only reader."""
    g = Graph(net)
    rewrites, drop = {}, set()
    for conv2 in net.layers:
        if conv2.kind != LayerKind.CONVOLUTION or len(conv2.inputs) < 4 or conv2.inputs[3] is None:
            continue
        r = conv2.inputs[3]
        conv1 = r.producer
        if conv1 is None or conv1.kind != LayerKind.CONVOLUTION or conv1.params.activation is not None \
                or len(conv1.inputs) != 3 or g.single_use(r) is not conv2 or id(conv1) in rewrites:
            continue
        b1 = net.constant_value(conv1.inputs[2])
        b2 = net.constant_value(conv2.inputs[2]) if conv2.inputs[2] is not None else np.zeros_like(b1)
        if b1 is None or b2 is None or b1.shape != b2.shape or b1.dtype != b2.dtype:
            continue
        both = [conv1, conv2]   # refused together where their precisions differ: the bias moves
        rewrites[id(conv1)] = _without_bias(conv1, both)
        rewrites[id(conv2)] = _with_bias(conv2, (b1 + b2).astype(b1.dtype), both)
    return replace(net, rewrites, drop, stats, "move_residual_bias")


def _without_bias(conv: Layer, both: list[Layer]) -> Emit:
    return rewrite(both, lambda c: c.copy(conv, [c.mapped(t) for t in conv.inputs[:2]]).outputs[0],
                   [l.outputs[0] for l in both])


def _with_bias(conv: Layer, bias: np.ndarray, both: list[Layer]) -> Emit:
    def emit(c: NetworkCopier) -> Tensor:
        bt = c.net.add_layer(LayerKind.CONSTANT, ConstantParams(bias), [], name=c.net.unique_name(f"{conv.name}/bias"),
                             origin=conv.origin).outputs[0]
        ins = [c.mapped(conv.inputs[0]), c.mapped(conv.inputs[1]), bt] + [c.mapped(t) for t in conv.inputs[3:]]
        return c.copy(conv, ins).outputs[0]
    return rewrite(both, emit, [l.outputs[0] for l in both])


def fuse_squeeze_excitation(net: Network, stats: dict | None = None) -> Network:
    """mean_hw(x) -> 1x1 conv [+ act] -> 1x1 conv + gate => one SQUEEZE_EXCITATION layer: the gate
    of an SE block (EfficientNet, MobileNetV3, RegNet), whose product with ``x`` stays a layer of
    its own.  Unfused, the pool and the two tiny convolutions (with their epilogues) are five to
    seven kernels of a few microseconds each at batch 1; fused, one Triton kernel computes both
    convolutions from the pool's partial sums.  Runs after the epilogue fusion, which gave the
    convolutions their activations."""
    g = Graph(net)
    rewrites, drop = {}, set()
    for pool in net.layers:
        x = pool.inputs[0] if pool.inputs else None
        if pool.kind != LayerKind.REDUCE or pool.params.op != ReduceOperation.AVG or not pool.params.keep_dims \
                or len(pool.inputs) != 1 or x.shape is None or len(x.shape) != 4 \
                or pool.params.axes is None or sorted(normalize_axes(pool.params.axes, 4)) != [2, 3]:
            continue
        fc1 = g.single_use(pool.outputs[0])
        if not _pointwise_conv(net, fc1, x.shape[1]):
            continue
        fc2 = g.single_use(fc1.outputs[0])
        if not _pointwise_conv(net, fc2, fc1.params.num_output_maps) or fc2.params.num_output_maps != x.shape[1] \
                or fc2.params.activation is None:
            continue
        p1, p2 = fc1.params, fc2.params
        params = SqueezeExcitationParams(p1.activation, p2.activation, p1.activation_alpha, p1.activation_beta,
                                         p2.activation_alpha, p2.activation_beta)
        bias = [fc.inputs[2] if len(fc.inputs) > 2 else None for fc in (fc1, fc2)]
        rewrites[id(fc2)] = fused(LayerKind.SQUEEZE_EXCITATION, params,
                                  [x, fc1.inputs[1], bias[0], fc2.inputs[1], bias[1]], [pool, fc1, fc2])
        drop.update((id(pool), id(fc1)))
    return replace(net, rewrites, drop, stats, "fuse_squeeze_excitation")


def _pointwise_conv(net: Network, conv: Layer | None, channels) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped convolution of ``channels`` inputs with constant
    weights (and bias), without a residual."""
    if conv is None or conv.kind != LayerKind.CONVOLUTION or len(conv.inputs) > 3:
        return False
    p = conv.params
    w = net.constant_value(conv.inputs[1])
    if w is None or w.shape != (p.num_output_maps, channels, 1, 1) or p.num_groups != 1:
        return False
    if len(conv.inputs) > 2 and conv.inputs[2] is not None and net.constant_value(conv.inputs[2]) is None:
        return False
    return all(s == 1 for s in p.stride_nd) and not any(p.pre_padding) and not any(p.post_padding)
