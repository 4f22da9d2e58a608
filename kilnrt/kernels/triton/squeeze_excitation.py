"""``cuda.squeeze_excitation.triton``: a squeeze-excitation gate (SQUEEZE_EXCITATION layer) in two kernels.

``gate(W2 · act(W1 · mean_hw(x) + b1) + b2)`` for each image.  Unfused, this is a pool and two
1x1 convolutions on 1x1 images: at batch 1 each is a GEMV of a few microseconds plus an
epilogue pass, five to seven kernels per block, sixteen blocks in EfficientNet-B0.

1. :func:`kilnrt.kernels.triton.reduce.partial_sums` sums the pixels of each image, split
   over programs (at most :data:`MAX_SPLITS` parts), into float32 partial sums ``[N, splits, C]``.
2. ``_se_gate``: program ``(group, n)`` adds up the partials of image ``n``, computes the whole
   hidden vector ``h = act(W1 · mean + b1)`` (``S`` values, S the squeezed width) and then the
   gate for its group of output channels.  At small batches the channels are split over several
   programs, each recomputing ``h`` (W1 is read from L2 again: cheaper than a third kernel); at
   large batches one program per image computes every channel.

Math is float32; the gate is stored in the input's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilnrt.kernels.registry import Tactic, reference_kernel, tactic
from kilnrt.kernels.triton import FLOAT_TYPES, TORCH_FLOATS, launch_options, wait_for_previous_kernel
from kilnrt.kernels.triton.epilogue import EPILOGUE_ACTIVATIONS, activate
from kilnrt.kernels.triton.reduce import TARGET_PROGRAMS, partial_sums
from kilnrt.network.layers import LayerKind

MAX_SQUEEZED = 256     # S held in registers as one block
MAX_SPLITS = 64        # partial sums per image: the gate kernel adds them up in one [64, BLOCK_K] tile


@triton.jit  # C, S and the channels per program are constants: constant-bound loops are pipelined
def _se_gate(part_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, y_ptr, splits, scale, alpha1, beta1, alpha2, beta2,
             C: tl.constexpr, S: tl.constexpr, PER_GROUP: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr,
             ACT1: tl.constexpr, ACT2: tl.constexpr, BLOCK_SPLIT: tl.constexpr, BLOCK_S: tl.constexpr,
             BLOCK_K: tl.constexpr, BLOCK_CO: tl.constexpr, USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
    group, n = tl.program_id(0), tl.program_id(1)
    rs = tl.arange(0, BLOCK_S)
    s_ok = rs < S
    rsplit = tl.arange(0, BLOCK_SPLIT)
    parts = part_ptr + n * splits * C
    # h = act(W1 @ mean + b1), W1 [S, C] row-major, BLOCK_K channels at a time; the products are
    # summed over K once, after the loop (a reduction per iteration would cost more than the loads)
    acc = tl.zeros([BLOCK_S, BLOCK_K], tl.float32)
    for k0 in range(0, C, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < C
        part = tl.load(parts + rsplit[:, None] * C + rk[None, :], mask=(rsplit < splits)[:, None] & k_ok[None, :],
                       other=0.0)
        w1 = tl.load(w1_ptr + rs[:, None] * C + rk[None, :], mask=s_ok[:, None] & k_ok[None, :], other=0.0)
        acc += w1.to(tl.float32) * tl.sum(part, axis=0)[None, :]
    h = tl.sum(acc, axis=1) * scale
    if HAS_B1:
        h += tl.load(b1_ptr + rs, mask=s_ok, other=0.0).to(tl.float32)
    h = tl.where(s_ok, activate(h, ACT1, alpha1, beta1), 0.0)
    # gate = act2(W2 @ h + b2) for this program's channels, W2 [C, S] row-major
    for c0 in range(0, PER_GROUP, BLOCK_CO):
        rc = group * PER_GROUP + c0 + tl.arange(0, BLOCK_CO)
        c_ok = rc < C
        w2 = tl.load(w2_ptr + rc[:, None] * S + rs[None, :], mask=c_ok[:, None] & s_ok[None, :], other=0.0)
        out = tl.sum(w2.to(tl.float32) * h[None, :], axis=1)
        if HAS_B2:
            out += tl.load(b2_ptr + rc, mask=c_ok, other=0.0).to(tl.float32)
        out = activate(out, ACT2, alpha2, beta2)
        tl.store(y_ptr + n * C + rc, out.to(y_ptr.dtype.element_ty), mask=c_ok)


def se_gate(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
            b2: torch.Tensor | None, act1: str, act2: str, alphas: tuple[float, float, float, float],
            plan: tuple[int, int, int] | None = None, groups: int | None = None) -> torch.Tensor:
    """The gate ``[N, C, 1, 1]`` of 4-D ``x``; ``w1`` is ``[S, C]``, ``w2`` ``[C, S]``, both contiguous.
    ``plan`` overrides the pooling's ``spatial_plan``, ``groups`` the number of programs per
    image (tests force several splits, and one program looping over every channel)."""
    n, c, h, w = x.shape
    s = w1.shape[0]
    y = torch.empty((n, c, 1, 1), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    pixels = h * w
    parts, splits = partial_sums(x, plan, MAX_SPLITS)
    block_s, block_split = max(triton.next_power_of_2(s), 2), triton.next_power_of_2(splits)
    block_co = max(16, min(64, 4096 // block_s))                  # [CO, S] tiles of <= 4096
    block_k = max(16, min(triton.next_power_of_2(c), 256, 4096 // max(block_s, block_split)))  # [S | splits, K]
    groups = groups or max(1, min(triton.cdiv(c, block_co), triton.cdiv(TARGET_PROGRAMS, n)))
    per_group = triton.cdiv(triton.cdiv(c, groups), block_co) * block_co
    groups = triton.cdiv(c, per_group)
    _se_gate[(groups, n)](
        parts, w1, b1 if b1 is not None else w1, w2, b2 if b2 is not None else w2, y, splits,
        1.0 / pixels if pixels else float("nan"), *alphas, C=c, S=s, PER_GROUP=per_group, HAS_B1=b1 is not None,
        HAS_B2=b2 is not None, ACT1=act1, ACT2=act2, BLOCK_SPLIT=block_split,
        BLOCK_S=block_s, BLOCK_K=block_k, BLOCK_CO=block_co, num_warps=4, **launch_options(y))
    return y


@tactic
class TritonSqueezeExcitation(Tactic):
    """SE gates of float16/bfloat16/float32 4-D tensors with constant weights, up to
    :data:`MAX_SQUEEZED` squeezed channels, activations the GEMM epilogue has."""

    name = "cuda.squeeze_excitation.triton"
    kind = LayerKind.SQUEEZE_EXCITATION
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        p, x = layer.params, layer.inputs[0]
        if x is None or x.shape is None or len(x.shape) != 4 or x.dtype not in FLOAT_TYPES:
            return False
        if p.activation not in EPILOGUE_ACTIVATIONS or p.gate not in EPILOGUE_ACTIVATIONS:
            return False
        c = x.shape[1]
        w1, w2 = ctx.constant(layer, 1), ctx.constant(layer, 3)
        if w1 is None or w2 is None or w1.dim() != 4 or not isinstance(c, int):
            return False
        s = w1.shape[0]
        if tuple(w1.shape) != (s, c, 1, 1) or tuple(w2.shape) != (c, s, 1, 1) or s > MAX_SQUEEZED:
            return False
        return all(i >= len(layer.inputs) or layer.inputs[i] is None or ctx.constant(layer, i) is not None
                   for i in (2, 4))

    def prepare(self, layer, ctx):
        p = layer.params
        w1, b1, w2, b2 = (ctx.constant(layer, i) for i in range(1, 5))
        flat = lambda t: None if t is None else t.reshape(t.shape[0], -1).contiguous()  # noqa: E731
        return (p, flat(w1), None if b1 is None else b1.reshape(-1).contiguous(), flat(w2),
                None if b2 is None else b2.reshape(-1).contiguous())

    def run(self, state, inputs):
        p, w1, b1, w2, b2 = state
        x = inputs[0]
        if x.dim() != 4 or x.dtype not in TORCH_FLOATS or x[0].numel() >= 2**31:  # not what the build saw
            return [reference_kernel(LayerKind.SQUEEZE_EXCITATION)(p, *inputs)]
        return [se_gate(x, w1, b1, w2, b2, EPILOGUE_ACTIVATIONS[p.activation], EPILOGUE_ACTIVATIONS[p.gate],
                        (p.activation_alpha, p.activation_beta, p.gate_alpha, p.gate_beta))]
