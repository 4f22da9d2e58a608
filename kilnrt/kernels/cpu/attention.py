"""CPU kernels for attention: fused scaled dot-product attention, and the LinearAttention plugin."""
from __future__ import annotations

import math

import torch

from kilnrt.kernels.cpu.plugin import builtin_plugin
from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import AttentionParams, LayerKind, PluginParams


def _attention_bias(p: AttentionParams, mask: torch.Tensor | None, nonpad: torch.Tensor | None,
                    past_len: int, sq: int, skv: int, batch: int, device, dtype: torch.dtype) -> torch.Tensor:
    """The additive bias (0 or -inf, plus a float mask) broadcastable to [B, H, Sq, Skv]."""
    neg_inf = float("-inf")
    bias = torch.zeros((sq, skv), dtype=dtype, device=device)
    if mask is not None:
        if mask.dtype == torch.bool:
            m = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, neg_inf)
        else:
            m = mask.to(dtype)
        if m.dim() and m.shape[-1] < skv:
            pad = torch.full(tuple(m.shape[:-1]) + (skv - m.shape[-1],), neg_inf, dtype=m.dtype, device=device)
            m = torch.cat([m, pad], dim=-1)
        bias = bias + m
    windowed = p.left_window >= 0 or p.right_window >= 0
    if p.causal or windowed:
        # query i sits at absolute position i + offset; offset per batch with an external cache
        if nonpad is not None and past_len == 0:
            offset = (nonpad.to(torch.int64).reshape(-1) - sq).reshape(-1, 1, 1, 1)
        else:
            offset = torch.full((1, 1, 1, 1), past_len, dtype=torch.int64, device=device)
        i = torch.arange(sq, device=device).reshape(sq, 1)
        j = torch.arange(skv, device=device).reshape(1, skv)
        diff = i + offset - j                                  # [B or 1, 1, Sq, Skv]
        allowed = torch.ones(diff.shape, dtype=torch.bool, device=device)
        if p.causal:
            allowed = allowed & (diff >= 0)
        if p.left_window >= 0:
            allowed = allowed & (diff <= p.left_window)
        if p.right_window >= 0:
            allowed = allowed & (-diff <= p.right_window)
        bias = bias + torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, neg_inf)
    if nonpad is not None:
        j = torch.arange(skv, device=device).reshape(1, skv)
        valid = (j < nonpad.to(torch.int64).reshape(-1, 1)).reshape(batch, 1, 1, skv)
        bias = bias + torch.zeros(valid.shape, dtype=dtype, device=device).masked_fill(~valid, neg_inf)
    return bias


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Matmul accumulating in at least float32, rounded to the inputs' precision."""
    if a.dtype in (torch.float16, torch.bfloat16):
        return torch.matmul(a.float(), b.float()).to(a.dtype)
    return torch.matmul(a, b)


def _softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, computed in x's own precision (all -inf rows give NaN)."""
    if x.shape[-1] == 0:
        return x
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


@kernel(LayerKind.ATTENTION)
def attention(p: AttentionParams, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None, past_key: torch.Tensor | None = None,
              past_value: torch.Tensor | None = None, nonpad_kv_seqlen: torch.Tensor | None = None):
    present_key = k if past_key is None else torch.cat([past_key, k], dim=2)
    present_value = v if past_value is None else torch.cat([past_value, v], dim=2)
    past_len = 0 if past_key is None else past_key.shape[2]
    batch, hq, sq, d = q.shape
    hkv, skv = present_key.shape[1], present_key.shape[2]
    dtype = q.dtype
    scale = p.scale if p.scale is not None else 1.0 / math.sqrt(d)
    # Q and K are each scaled by sqrt(scale); every step rounds to the input precision, as the
    # ONNX reference does, so half-precision results agree to the last bit or two
    root = torch.tensor(math.sqrt(abs(scale)), dtype=dtype)
    qs, ks, vs = q * (root if scale >= 0 else -root), present_key * root, present_value
    if hq != hkv:
        ks = ks.repeat_interleave(hq // hkv, dim=1)
        vs = vs.repeat_interleave(hq // hkv, dim=1)
    raw = _matmul(qs, ks.transpose(-1, -2))
    scores = torch.tanh(raw / p.softcap) * p.softcap if p.softcap > 0 else raw
    bias_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    bias = _attention_bias(p, mask, nonpad_kv_seqlen, past_len, sq, skv, batch, q.device, bias_dtype)
    biased = scores + bias.to(dtype)
    logits = biased if p.softmax_precision is None else biased.to(p.softmax_precision.torch)
    probs = _softmax(logits)
    fully_masked = (torch.isneginf(bias.amax(dim=-1, keepdim=True)) if bias.shape[-1] else  # no keys: zeros
                    torch.ones(bias.shape[:-1] + (1,), dtype=torch.bool, device=bias.device))
    probs = torch.where(fully_masked, torch.zeros((), dtype=probs.dtype, device=probs.device), probs).to(dtype)
    y = _matmul(probs, vs)
    outputs = [y, present_key, present_value]
    if p.qk_output_mode >= 0:
        qk = {0: raw, 1: scores, 2: biased, 3: probs}[p.qk_output_mode]
        outputs.append(qk.to(q.dtype))
    return tuple(outputs)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, T, H * D] -> [B, H, T, D]."""
    b, t, hd = x.shape
    return x.reshape(b, t, num_heads, hd // num_heads).transpose(1, 2)


@builtin_plugin("LinearAttention")
def linear_attention(p: PluginParams, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     past_state: torch.Tensor | None = None, decay: torch.Tensor | None = None,
                     beta: torch.Tensor | None = None):
    """Recurrent linear attention (ONNX LinearAttention), one step at a time in float32.

    Fields: update_rule (linear, gated, delta, gated_delta), q_num_heads, kv_num_heads, scale
    (0: 1/sqrt(d_k)).  Per step: S *= exp(decay); v <- beta (v - S^T k) (delta rules);
    S += k v^T; out = scale q^T S (KV heads repeated for grouped queries).
    Outputs: [B, T, Hq * d_v] in the query's dtype, and the final state [B, Hkv, d_k, d_v].
    """
    hq, hkv = int(p.field("q_num_heads")), int(p.field("kv_num_heads"))
    rule = p.field("update_rule", "gated_delta")
    f32 = torch.float32
    q4, k4, v4 = _heads(query, hq).to(f32), _heads(key, hkv).to(f32), _heads(value, hkv).to(f32)
    b, _, t, d_k = q4.shape
    d_v = v4.shape[-1]
    if decay is not None:   # per head [B, T, Hkv] or per key dim [B, T, Hkv * d_k] -> [B, Hkv, T, 1 or d_k]
        per_dim = decay.shape[-1] != hkv
        decay4 = (_heads(decay, hkv) if per_dim else decay.reshape(b, t, hkv, 1).transpose(1, 2)).to(f32)
    if beta is not None:    # [B, T, Hkv or 1] -> [B, Hkv or 1, T, 1]
        beta4 = beta.reshape(b, t, beta.shape[-1], 1).transpose(1, 2).to(f32)
    state = past_state.to(f32) if past_state is not None else \
        torch.zeros((b, hkv, d_k, d_v), dtype=f32, device=query.device)
    scale = float(p.field("scale", 0.0) or 0.0) or 1.0 / math.sqrt(d_k)
    outs = []
    for i in range(t):
        k_t, v_t = k4[:, :, i], v4[:, :, i]
        if rule in ("gated", "gated_delta"):
            state = state * torch.exp(decay4[:, :, i]).unsqueeze(-1)
        if rule in ("delta", "gated_delta"):
            retrieved = torch.einsum("bhdm,bhd->bhm", state, k_t)
            v_t = beta4[:, :, i] * (v_t - retrieved)
        state = state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        read = state if hq == hkv else state.repeat_interleave(hq // hkv, dim=1)
        outs.append(scale * torch.einsum("bhd,bhdm->bhm", q4[:, :, i], read))
    out = torch.stack(outs, dim=2) if outs else torch.zeros((b, hq, 0, d_v), dtype=f32, device=query.device)
    out = out.transpose(1, 2).reshape(b, t, hq * d_v).to(query.dtype)
    return out, state.to(past_state.dtype if past_state is not None else query.dtype)
