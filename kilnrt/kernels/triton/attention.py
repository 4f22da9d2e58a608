"""``cuda.attention.triton_<tiles>``: scaled dot-product attention as one Triton kernel.

Flash-style: each program takes ``BLOCK_M`` queries of one (batch, head), walks the keys
``BLOCK_N`` at a time with an online softmax (running max and sum in float32, exp2 with the
scale folded in), and writes ``softmax(q k^T * scale + mask) v`` once.  Q, K and V are read
through their strides, so the views an exporter makes around attention (slices of one QKV
projection, reshapes, transposes) cost no copy; the output is laid out ``[B, Sq, H, Dv]`` in
memory (returned as the ``[B, H, Sq, Dv]`` view), so the usual transpose + reshape back to
``[B, Sq, H * Dv]`` is a view too.  A mask is boolean (True attends) or additive, broadcast to
``[B, H, Sq, T]`` through its strides, keys at or past ``T`` masked; causal masking is
top-left aligned (no past keys: offset 0); ``Hq`` a multiple of ``Hkv`` is grouped-query attention; fully masked
rows give zeros -- :func:`kilnrt.kernels.cpu.attention.attention`'s semantics.

It exists for the short sequences of encoders (BERT's 128 tokens, ViT's 197), where PyTorch's
fused kernels are tuned for long ones: every tile configuration is a tactic the builder times
against ``cuda.attention.sdpa``.  Float16 and bfloat16 only.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kilnrt.kernels.registry import Tactic, register
from kilnrt.kernels.triton import launch_options, wait_for_previous_kernel
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256


@triton.jit
def _attention(q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr,
               sqb, sqh, sqs, sqd, skb, skh, sks, skd, svb, svh, svs, svd, smb, smh, smq, smk, sob, soh, sos, sod,
               H, GROUP, SQ, SKV, T, causal_offset, qk_scale, mask_scale,
               D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               KV_BLOCKS: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr,  # MASK: none, bool, add
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP  # grouped-query attention: GROUP query heads share one key/value head
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + h * sqh + rm[:, None] * sqs + rd[None, :] * sqd,
                mask=(rm[:, None] < SQ) & (rd[None, :] < D), other=0.0)
    k_base = k_ptr + b.to(tl.int64) * skb + hk * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hk * svh
    m_base = mask_ptr + b.to(tl.int64) * smb + h * smh
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    for j in range(KV_BLOCKS):  # a compile-time count: ceil(SKV / BLOCK_N)
        rn = j * BLOCK_N + tl.arange(0, BLOCK_N)
        k = tl.load(k_base + rn[None, :] * sks + rd[:, None] * skd, mask=(rn[None, :] < SKV) & (rd[:, None] < D),
                    other=0.0)
        s = tl.dot(q, k) * qk_scale  # log2 domain: exp2(s) == exp(q.k * scale)
        valid = (rn < SKV)[None, :]
        if MASK == "bool":
            keep = tl.load(m_base + rm[:, None] * smq + rn[None, :] * smk,
                           mask=(rm[:, None] < SQ) & (rn[None, :] < T), other=0)
            valid = valid & (keep != 0)
        elif MASK == "add":  # scaled into the log2 domain too
            valid = valid & (rn < T)[None, :]
            s += tl.load(m_base + rm[:, None] * smq + rn[None, :] * smk,
                         mask=(rm[:, None] < SQ) & (rn[None, :] < T), other=0.0).to(tl.float32) * mask_scale
        if CAUSAL:  # query i sits at position i + causal_offset
            valid = valid & (rn[None, :] <= rm[:, None] + causal_offset)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row masked so far adds nothing
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + rn[:, None] * svs + rdv[None, :] * svd, mask=(rn[:, None] < SKV) & (rdv[None, :] < DV),
                    other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # fully masked rows: zeros
    tl.store(o_ptr + b.to(tl.int64) * sob + h * soh + rm[:, None] * sos + rdv[None, :] * sod,
             out.to(o_ptr.dtype.element_ty), mask=(rm[:, None] < SQ) & (rdv[None, :] < DV))


def _mask_4d(mask: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """``mask`` broadcast to ``[B, H, Sq, T]`` (stride 0 on the broadcast dims), T its own last dim."""
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    mask = mask.expand(shape + (mask.shape[-1],))
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
              scale: float | None, config: dict) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` for ``q [B, Hq, Sq, D]``, ``k [B, Hkv, Skv, D]``,
    ``v [B, Hkv, Skv, Dv]`` (any strides), as a ``[B, Hq, Sq, Dv]`` view of ``[B, Sq, Hq, Dv]``."""
    batch, hq, sq, d = q.shape
    hkv, skv, dv = k.shape[1], k.shape[2], v.shape[3]
    o = torch.empty((batch, sq, hq, dv), dtype=q.dtype, device=q.device).permute(0, 2, 1, 3)
    if o.numel() == 0:
        return o
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    if mask is None:
        kind, m, t, m_strides = "none", q, skv, (0, 0, 0, 0)
    else:
        m = _mask_4d(mask, (batch, hq, sq))
        kind, t, m_strides = ("bool" if m.dtype == torch.uint8 else "add"), m.shape[-1], m.stride()
    grid = (triton.cdiv(sq, config["BLOCK_M"]), batch * hq)
    _attention[grid](q, k, v, m, o, *q.stride(), *k.stride(), *v.stride(), *m_strides, *o.stride(),
                     hq, hq // hkv, sq, skv, t, 0, scale * LOG2E, LOG2E, D=d, DV=dv,
                     BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_DV=max(16, triton.next_power_of_2(dv)),
                     KV_BLOCKS=triton.cdiv(skv, config["BLOCK_N"]), MASK=kind, CAUSAL=causal, **config,
                     **launch_options(o))
    return o


class TritonAttention(Tactic):
    kind = LayerKind.ATTENTION
    device = "cuda"

    def __init__(self, block_m: int, block_n: int, warps: int, stages: int) -> None:
        self.config = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
        self.name = f"cuda.attention.triton_{block_m}x{block_n}_w{warps}_s{stages}"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        q, k, v = layer.inputs[:3]
        mask = layer.inputs[3] if len(layer.inputs) > 3 else None
        extra = layer.inputs[4:] if len(layer.inputs) > 4 else []
        if (len(layer.outputs) != 1 or any(t is not None for t in extra) or p.softcap != 0.0 or p.left_window >= 0
                or p.right_window >= 0 or p.qk_output_mode >= 0
                or p.softmax_precision not in (None, DataType.FLOAT, q.dtype)):  # float32 softmax: ours
            return False
        if any(t is None or t.dtype not in (DataType.HALF, DataType.BF16) or t.shape is None or len(t.shape) != 4
               for t in (q, k, v)) or k.dtype != q.dtype or v.dtype != q.dtype:
            return False
        d, dv, hq, hkv = q.shape[3], v.shape[3], q.shape[1], k.shape[1]
        if not all(isinstance(x, int) and x > 0 for x in (d, dv, hq, hkv)) or hq % hkv:
            return False
        if mask is not None and (mask.shape is None or len(mask.shape) > 4 or mask.dtype not in
                                 (DataType.BOOL, DataType.HALF, DataType.BF16, DataType.FLOAT)):
            return False
        return d <= MAX_HEAD_DIM and dv <= MAX_HEAD_DIM

    def run(self, p, inputs):
        q, k, v = inputs[:3]
        mask = inputs[3] if len(inputs) > 3 else None
        return [attention(q, k, v, mask, p.causal, p.scale, self.config)]


# (BLOCK_M, BLOCK_N, warps, stages): 16-32 query rows give a batch-1 encoder enough programs;
# 64-128 for large batches, where each program reuses its K/V loads over more queries.
CONFIGS = [(16, 64, 4, 2), (32, 64, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 4, 2)]
for _cfg in CONFIGS:
    register(TritonAttention(*_cfg))
