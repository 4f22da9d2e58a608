"""CPU kernel for recurrent layers (RNN, GRU, LSTM), one time step at a time."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import LayerKind, RNNParams

ACTIVATIONS = {
    "relu": lambda x, a, b: torch.relu(x),
    "tanh": lambda x, a, b: torch.tanh(x),
    "sigmoid": lambda x, a, b: torch.sigmoid(x),
    "affine": lambda x, a, b: a * x + b,
    "leakyrelu": lambda x, a, b: F.leaky_relu(x, a),
    "thresholdedrelu": lambda x, a, b: torch.where(x > a, x, torch.zeros_like(x)),
    "scaledtanh": lambda x, a, b: a * torch.tanh(b * x),
    "hardsigmoid": lambda x, a, b: torch.clamp(a * x + b, 0, 1),
    "elu": lambda x, a, b: torch.where(x > 0, x, a * torch.expm1(x)),
    "softsign": lambda x, a, b: x / (1 + x.abs()),
    "softplus": lambda x, a, b: F.softplus(x),
}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def _run_direction(p: RNNParams, d: int, x, w, r, bias, lens, h, c, peep, reverse: bool):
    """One direction over x [S, B, I]; returns y [S, B, H], final h, final c."""
    n_act = {"rnn": 1, "gru": 2, "lstm": 3}[p.cell]
    acts = []
    for k in range(n_act):
        i = d * n_act + k
        acts.append(lambda v, name=p.activations[i], a=p.activation_alpha[i], b=p.activation_beta[i]:
                    ACTIVATIONS[name](v, a, b))
    hs = p.hidden_size
    wb, rb = (bias[: bias.shape[0] // 2], bias[bias.shape[0] // 2:]) if bias is not None else (0, 0)
    xw = torch.matmul(x, w.t()) + wb                       # [S, B, G*H], all steps at once
    clip = (lambda v: v.clamp(-p.clip, p.clip)) if p.clip is not None else (lambda v: v)
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    ys = [None] * x.shape[0]
    for t in steps:
        if p.cell == "gru":
            rz = xw[t] + torch.matmul(h, r.t()) + rb
            z = acts[0](clip(rz[:, :hs]))
            rr = acts[0](clip(rz[:, hs:2 * hs]))
            rh, rbh = r[2 * hs:], (rb[2 * hs:] if bias is not None else 0)
            if p.linear_before_reset:
                pre = xw[t][:, 2 * hs:] + rr * (torch.matmul(h, rh.t()) + rbh)
            else:
                pre = xw[t][:, 2 * hs:] + torch.matmul(rr * h, rh.t()) + rbh
            new_h, new_c = (1 - z) * acts[1](clip(pre)) + z * h, c
        elif p.cell == "lstm":
            g = xw[t] + torch.matmul(h, r.t()) + rb
            gi, go, gf, gc = g[:, :hs], g[:, hs:2 * hs], g[:, 2 * hs:3 * hs], g[:, 3 * hs:]
            pi, po, pf = (peep[:hs], peep[hs:2 * hs], peep[2 * hs:]) if peep is not None else (0, 0, 0)
            i_gate = acts[0](clip(gi + pi * c))
            f_gate = 1 - i_gate if p.input_forget else acts[0](clip(gf + pf * c))
            new_c = f_gate * c + i_gate * acts[1](clip(gc))
            o_gate = acts[0](clip(go + po * new_c))
            new_h = o_gate * acts[2](new_c)
        else:
            new_h, new_c = acts[0](clip(xw[t] + torch.matmul(h, r.t()) + rb)), c
        if lens is not None:
            live = (t < lens).reshape(-1, 1)
            h = torch.where(live, new_h, h)
            c = torch.where(live, new_c, c) if c is not None else None
            ys[t] = torch.where(live, new_h, torch.zeros_like(new_h))
        else:
            h, c, ys[t] = new_h, new_c, new_h
    return torch.stack(ys), h, c


@kernel(LayerKind.RNN)
def rnn(p: RNNParams, x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, bias: torch.Tensor | None = None,
        sequence_lens: torch.Tensor | None = None, initial_h: torch.Tensor | None = None,
        initial_c: torch.Tensor | None = None, peepholes: torch.Tensor | None = None):
    if p.batch_first:
        x = x.transpose(0, 1)
        initial_h = None if initial_h is None else initial_h.transpose(0, 1)
        initial_c = None if initial_c is None else initial_c.transpose(0, 1)
    dirs = 2 if p.direction == "bidirectional" else 1
    batch = x.shape[1]
    zeros = torch.zeros((dirs, batch, p.hidden_size), dtype=x.dtype, device=x.device)
    h0 = zeros if initial_h is None else initial_h
    c0 = zeros if initial_c is None else initial_c
    lens = None if sequence_lens is None else sequence_lens.to(torch.int64)
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = p.direction == "reverse" or d == 1
        y, h, c = _run_direction(p, d, x, w[d], r[d], None if bias is None else bias[d], lens, h0[d],
                                 c0[d] if p.cell == "lstm" else None,
                                 None if peepholes is None else peepholes[d], reverse)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    y = torch.stack(ys, dim=1)                              # [S, D, B, H]
    y_h = torch.stack(hs)                                   # [D, B, H]
    if p.batch_first:
        y, y_h = y.permute(2, 0, 1, 3), y_h.transpose(0, 1)
    if p.cell != "lstm":
        return y, y_h
    y_c = torch.stack(cs)
    return y, y_h, (y_c.transpose(0, 1) if p.batch_first else y_c)
