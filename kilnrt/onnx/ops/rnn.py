"""Importers for recurrent ops: RNN, GRU, LSTM (one RNN layer each)."""
from __future__ import annotations

from kilnrt.errors import ErrorCode
from kilnrt.network.layers import LayerKind, RNNParams
from kilnrt.onnx.registry import importer

# ONNX's default alpha/beta of the activations that take them
_DEFAULT_ALPHA_BETA = {"affine": (1.0, 0.0), "leakyrelu": (0.01, 0.0), "thresholdedrelu": (1.0, 0.0),
                       "scaledtanh": (1.0, 1.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, 0.0)}
_USES_BETA = {"affine", "scaledtanh", "hardsigmoid"}
_SUPPORTED = ("Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid",
              "Elu", "Softsign", "Softplus")
_DEFAULT_ACTIVATIONS = {"rnn": ("Tanh",), "gru": ("Sigmoid", "Tanh"), "lstm": ("Sigmoid", "Tanh", "Tanh")}


def _activation_args(ctx, cell: str, dirs: int, activations, alpha, beta):
    """Per-activation (names, alphas, betas); ONNX's alpha/beta lists feed only the activations that use them."""
    names = list(activations) if activations else list(_DEFAULT_ACTIVATIONS[cell]) * dirs
    need = len(_DEFAULT_ACTIVATIONS[cell]) * dirs
    ctx.require(len(names) == need, ErrorCode.INVALID_NODE,
                f"activations lists {len(names)} functions; {cell.upper()} with {dirs} direction(s) needs {need}")
    lower = [n.lower() for n in names]
    unknown = [n for n, low in zip(names, lower) if low not in {s.lower() for s in _SUPPORTED}]
    ctx.require(not unknown, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"activations {unknown} are not supported; supported: {', '.join(_SUPPORTED)}")
    alphas, betas = list(alpha or ()), list(beta or ())
    out_a, out_b = [], []
    for low in lower:
        a, b = _DEFAULT_ALPHA_BETA.get(low, (0.0, 0.0))
        if low in _DEFAULT_ALPHA_BETA and alphas:
            a = float(alphas.pop(0))
        if low in _USES_BETA and betas:
            b = float(betas.pop(0))
        out_a.append(a)
        out_b.append(b)
    return tuple(lower), tuple(out_a), tuple(out_b)


def _recurrent(ctx, node, cell, inputs, *, activation_alpha, activation_beta, activations, clip, direction,
               hidden_size, layout=0, linear_before_reset=0, input_forget=0):
    ctx.require(direction in ("forward", "reverse", "bidirectional"), ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"direction={direction!r}; supported: forward, reverse, bidirectional")
    ctx.require(layout in (0, 1), ErrorCode.UNSUPPORTED_NODE_ATTR, f"layout={layout}; supported: 0, 1")
    if hidden_size is None:
        rshape = inputs[2].shape
        ctx.require(rshape is not None and isinstance(rshape[-1], int), ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                    "hidden_size is not given and R's last dim is not known at build time")
        hidden_size = rshape[-1]
    dirs = 2 if direction == "bidirectional" else 1
    names, alphas, betas = _activation_args(ctx, cell, dirs, activations, activation_alpha, activation_beta)
    params = RNNParams(cell=cell, hidden_size=int(hidden_size), direction=direction, activations=names,
                       activation_alpha=alphas, activation_beta=betas,
                       clip=None if clip is None else float(clip), linear_before_reset=bool(linear_before_reset),
                       input_forget=bool(input_forget), batch_first=bool(layout))
    layer = ctx.add(LayerKind.RNN, params, list(inputs), num_outputs=3 if cell == "lstm" else 2)
    return layer.outputs


@importer("RNN", since=7)
def rnn(ctx, node, x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
        activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None, layout=0):
    """RNN: Ht = f(Xt W^T + Ht-1 R^T + Wb + Rb), forward, reverse or bidirectional."""
    return _recurrent(ctx, node, "rnn", [x, w, r, b, sequence_lens, initial_h],
                      activation_alpha=activation_alpha, activation_beta=activation_beta, activations=activations,
                      clip=clip, direction=direction, hidden_size=hidden_size, layout=layout)


@importer("GRU", since=7)
def gru(ctx, node, x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
        activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None, layout=0,
        linear_before_reset=0):
    """GRU: gates z, r, h; linear_before_reset applies R_h before the reset gate."""
    return _recurrent(ctx, node, "gru", [x, w, r, b, sequence_lens, initial_h],
                      activation_alpha=activation_alpha, activation_beta=activation_beta, activations=activations,
                      clip=clip, direction=direction, hidden_size=hidden_size, layout=layout,
                      linear_before_reset=linear_before_reset)


@importer("LSTM", since=7)
def lstm(ctx, node, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *,
         activation_alpha=None, activation_beta=None, activations=None, clip=None, direction="forward",
         hidden_size=None, input_forget=0, layout=0):
    """LSTM: gates i, o, f, c with optional peepholes; input_forget couples f = 1 - i."""
    return _recurrent(ctx, node, "lstm", [x, w, r, b, sequence_lens, initial_h, initial_c, p],
                      activation_alpha=activation_alpha, activation_beta=activation_beta, activations=activations,
                      clip=clip, direction=direction, hidden_size=hidden_size, layout=layout,
                      input_forget=input_forget)
