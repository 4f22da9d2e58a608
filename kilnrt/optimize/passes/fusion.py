"""Vertical fusion into anchors (convolution, matrix multiply)."""
from __future__ import annotations

import dataclasses

import numpy as np

from kilnrt.network.graph import Network
from kilnrt.network.layers import ActivationType, ConstantParams, ElementWiseOperation, LayerKind, ScaleMode
from kilnrt.network.rewrite import NetworkCopier


def _only_consumer(net: Network, tensor, uses) -> object | None:
    users = uses.get(tensor.name, [])
    if len(users) != 1 or tensor in net.outputs:
        return None
    return users[0][0]


def fuse_conv_scale(net: Network, stats: dict | None = None) -> Network:
    """conv(x, w, b) -> scale(shift, s) => conv(x, w * s, b * s + shift): folds BatchNormalization."""
    uses = net.consumers()
    folded: dict[int, tuple] = {}      # id(scale layer) -> (conv layer, w, b)
    skip: set[int] = set()
    for layer in net.layers:
        if layer.kind != LayerKind.CONVOLUTION:
            continue
        w = net.constant_value(layer.inputs[1])
        b = net.constant_value(layer.inputs[2]) if len(layer.inputs) > 2 else None
        nxt = _only_consumer(net, layer.outputs[0], uses)
        if w is None or (len(layer.inputs) > 2 and layer.inputs[2] is not None and b is None) or nxt is None:
            continue
        if nxt.kind != LayerKind.SCALE or nxt.params.mode != ScaleMode.CHANNEL or nxt.params.channel_axis != 1:
            continue
        ins = nxt.inputs + [None] * (4 - len(nxt.inputs))
        shift = net.constant_value(ins[1]) if ins[1] is not None else None
        scale = net.constant_value(ins[2]) if ins[2] is not None else None
        if ins[3] is not None or (ins[1] is not None and shift is None) or (ins[2] is not None and scale is None):
            continue
        k = w.shape[0]
        s = np.ones(k, np.float64) if scale is None else np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (k,))
        sh = np.zeros(k, np.float64) if shift is None else np.broadcast_to(np.asarray(shift, np.float64).reshape(-1), (k,))
        bias = np.zeros(k, np.float64) if b is None else np.asarray(b, np.float64)
        new_w = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        new_b = (bias * s + sh).astype(w.dtype)
        folded[id(nxt)] = (layer, new_w, new_b)
        skip.add(id(layer))
    if not folded:
        return net
    c = NetworkCopier(net)
    for layer in net.layers:
        if id(layer) in skip:
            continue
        if id(layer) in folded:
            conv, new_w, new_b = folded[id(layer)]
            wt = c.net.add_layer(LayerKind.CONSTANT, ConstantParams(new_w), [],
                                 name=c.net.unique_name(f"{conv.name}/weights"), origin=conv.origin).outputs[0]
            bt = c.net.add_layer(LayerKind.CONSTANT, ConstantParams(new_b), [],
                                 name=c.net.unique_name(f"{conv.name}/bias"), origin=conv.origin).outputs[0]
            new = c.net.add_layer(LayerKind.CONVOLUTION, conv.params, [c.mapped(conv.inputs[0]), wt, bt],
                                  name=f"{conv.name} + {layer.name}", origin=conv.origin + layer.origin,
                                  output_names=[layer.outputs[0].name])
            c.alias(layer.outputs[0], new.outputs[0])
            if stats is not None:
                stats["fuse_conv_scale"] = stats.get("fuse_conv_scale", 0) + 1
            continue
        c.copy(layer)
    return c.finish()


# activations a convolution epilogue may absorb
EPILOGUE_ACTIVATIONS = {ActivationType.RELU, ActivationType.SIGMOID, ActivationType.TANH, ActivationType.LEAKY_RELU,
                        ActivationType.CLIP, ActivationType.GELU_ERF, ActivationType.GELU_TANH, ActivationType.SILU,
                        ActivationType.HARD_SWISH, ActivationType.ELU}


def fuse_conv_epilogue(net: Network, stats: dict | None = None) -> Network:
    """conv(x) [+ r] [-> act] => conv(x, residual=r, activation=act): one kernel where the
    library has it (cuDNN conv+bias+add+ReLU), one region otherwise.

    The fused layer takes the place of the last absorbed layer, where the residual is
    sure to have been computed.
    """
    net.infer()
    uses = net.consumers()
    fused: dict[int, tuple] = {}     # id(last absorbed layer) -> (conv, residual, act)
    absorbed: set[int] = set()
    for conv in net.layers:
        if conv.kind != LayerKind.CONVOLUTION or conv.params.activation is not None or len(conv.inputs) > 3:
            continue
        out, last, residual, act = conv.outputs[0], conv, None, None
        nxt = _only_consumer(net, out, uses)
        if nxt is not None and nxt.kind == LayerKind.ELEMENTWISE and nxt.params.op == ElementWiseOperation.SUM:
            other = nxt.inputs[1] if nxt.inputs[0] is out else nxt.inputs[0]
            if other is not out and other.shape is not None and other.shape == out.shape and out.is_static \
                    and other.dtype == out.dtype and net.constant_value(other) is None:
                residual, last = other, nxt
                nxt = _only_consumer(net, nxt.outputs[0], uses)
        if nxt is not None and nxt.kind == LayerKind.ACTIVATION and nxt.params.type in EPILOGUE_ACTIVATIONS:
            act, last = nxt, nxt
        if last is conv or id(last) in fused:  # nothing to absorb, or two convs feed one add
            continue
        fused[id(last)] = (conv, residual, act)
        absorbed.add(id(conv))
        if residual is not None and act is not None:
            absorbed.add(id(_only_consumer(net, out, uses)))
    if not fused:
        return net
    c = NetworkCopier(net)
    for layer in net.layers:
        if id(layer) in absorbed:
            continue
        if id(layer) not in fused:
            c.copy(layer)
            continue
        conv, residual, act = fused[id(layer)]
        params = conv.params
        if act is not None:
            params = dataclasses.replace(params, activation=act.params.type, activation_alpha=act.params.alpha,
                                         activation_beta=act.params.beta)
        ins = [c.mapped(t) for t in conv.inputs] + [None] * (3 - len(conv.inputs))
        if residual is not None:
            ins.append(c.mapped(residual))
        absorbed_layers = [conv] + ([layer] if act is None else
                                    ([_only_consumer(net, conv.outputs[0], uses)] if residual is not None else []) + [act])
        new = c.net.add_layer(LayerKind.CONVOLUTION, params, ins, name=" + ".join(l.name for l in absorbed_layers),
                              origin=tuple(o for l in absorbed_layers for o in l.origin),
                              output_names=[layer.outputs[0].name])
        c.alias(layer.outputs[0], new.outputs[0])
        if stats is not None:
            stats["fuse_conv_epilogue"] = stats.get("fuse_conv_epilogue", 0) + 1
    return c.finish()
