"""``cuda.matrix_multiply.triton_<config>``: ``act(x @ W + bias)`` as one Triton kernel.

The GEMM's epilogue applies the bias and the activation to the float32 accumulator before
the single store, so an exact (erf) GELU after a projection needs no kernel of its own
(cuBLASLt's epilogues offer only the tanh approximation).  Offered for GEMMs of at most
``MAX_ROWS`` rows (batch-1 transformers), where it competes with cuBLASLt; see CONFIGS.

Every tile configuration is its own tactic, so the builder times each on the layer's
shapes, keeps the fastest (cuBLASLt included) and the plan records which; nothing is
autotuned at run time.  ``W`` is a constant (stored ``[K, N]`` once at build); ``x`` is
any ``[..., K]`` tensor, read in its memory order (see :func:`rows_in_memory_order`).
Half and bfloat16 only: float32 would run on tensor cores only as TF32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilnrt.kernels.gemm_rows import restore_rows, rows_in_memory_order
from kilnrt.kernels.registry import Tactic, register
from kilnrt.kernels.triton.pointwise import tanh
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import ActivationType as A, LayerKind, MatrixOperation

_ACTIVATIONS = {None: "none", A.RELU: "relu", A.GELU_ERF: "gelu_erf", A.GELU_TANH: "gelu_tanh",
                A.TANH: "tanh", A.SIGMOID: "sigmoid", A.SILU: "silu"}


@triton.jit
def _gemm(a_ptr, w_ptr, bias_ptr, c_ptr, M, N, K: tl.constexpr, stride_am, stride_ak,
          HAS_BIAS: tl.constexpr, ACT: tl.constexpr, EVEN_K: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # K is a compile-time constant (a layer's weight fixes it; Triton's interpreter also needs it)
    # grouped launch order: GROUP_M row-blocks share each column block of W while it is in L2
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    group_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_m
    pid_n = (pid % width) // group_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # out-of-range rows/cols read a valid row/col (wrapped); their results are never stored
    ram = tl.max_contiguous(tl.multiple_of(rm % M, BLOCK_M), BLOCK_M)
    rbn = tl.max_contiguous(tl.multiple_of(rn % N, BLOCK_N), BLOCK_N)
    a_ptrs = a_ptr + ram[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
    w_ptrs = w_ptr + rk[:, None] * N + rbn[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_left = K - k0
            a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0.0)
            w = tl.load(w_ptrs, mask=rk[:, None] < k_left, other=0.0)
        acc = tl.dot(a, w, acc)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rbn).to(tl.float32)[None, :]
    if ACT == "relu":
        acc = tl.maximum(acc, 0.0)
    elif ACT == "gelu_erf":
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    elif ACT == "gelu_tanh":  # 0.5 * (1 + tanh(u)) == sigmoid(2u)
        acc = acc * tl.sigmoid(1.5957691216057308 * (acc + 0.044715 * acc * acc * acc))
    elif ACT == "tanh":
        acc = tanh(acc)
    elif ACT == "sigmoid":
        acc = tl.sigmoid(acc)
    elif ACT == "silu":
        acc = acc * tl.sigmoid(acc)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    c_ptrs = c_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


class TritonGemm(Tactic):
    kind = LayerKind.MATRIX_MULTIPLY
    device = "cuda"

    def __init__(self, block_m: int, block_n: int, block_k: int, stages: int, warps: int, group_m: int = 8):
        self.config = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
                           num_stages=stages, num_warps=warps)
        self.name = f"cuda.matrix_multiply.triton_{block_m}x{block_n}x{block_k}_s{stages}_w{warps}"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        x, w_t = layer.inputs[0], layer.inputs[1]
        w = ctx.constant(layer, 1)
        if (w is None or w.dim() != 2 or p.op0 != MatrixOperation.NONE or p.activation not in _ACTIVATIONS
                or p.op1 not in (MatrixOperation.NONE, MatrixOperation.TRANSPOSE)):
            return False
        if x is None or x.shape is None or len(x.shape) < 2 or x.dtype not in (DataType.HALF, DataType.BF16):
            return False
        if w_t.dtype != x.dtype or (len(layer.inputs) > 2 and layer.inputs[2] is not None
                                    and ctx.constant(layer, 2) is None):
            return False
        k, n = (w.shape[1], w.shape[0]) if p.op1 == MatrixOperation.TRANSPOSE else tuple(w.shape)
        bias = ctx.constant(layer, 2) if len(layer.inputs) > 2 else None
        if bias is not None and bias.numel() != n:
            return False
        rows = 1
        for d in x.shape[:-1]:
            rows = rows * d if isinstance(d, int) and d > 0 else MAX_ROWS + 1  # dynamic: assume many
        # 16-byte aligned rows for the tensor-core loads; tiny GEMMs are cuBLAS's
        return k % 8 == 0 and n % 8 == 0 and k >= 16 and n >= 16 and rows <= MAX_ROWS

    def prepare(self, layer, ctx):
        p = layer.params
        w = ctx.constant(layer, 1)
        weight = (w.t() if p.op1 == MatrixOperation.TRANSPOSE else w).contiguous()  # [K, N]
        bias = ctx.constant(layer, 2) if len(layer.inputs) > 2 else None
        if bias is not None:
            bias = bias.reshape(-1).to(weight.dtype).contiguous()
        return weight, bias, _ACTIVATIONS[p.activation]

    def run(self, state, inputs):
        weight, bias, act = state
        x = inputs[0]
        k, n = weight.shape
        a, lead, inverse = rows_in_memory_order(x)
        m = a.shape[0]
        c = torch.empty((m, n), dtype=x.dtype, device=x.device)
        cfg = self.config
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
        if m > 0:
            _gemm[grid](a, weight, bias if bias is not None else weight, c, m, n, k, a.stride(0), a.stride(1),
                        HAS_BIAS=bias is not None, ACT=act, EVEN_K=k % cfg["BLOCK_K"] == 0, **cfg)
        return [restore_rows(c, lead, inverse)]


# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps).  Measured on an H200 (benchmarks/gemm_check.py):
# on BERT/ViT shapes with thousands of rows cuBLASLt's GEMM plus a separate activation kernel
# stays ahead of these (Triton's main loop runs at ~65% of cuBLAS's there), so the tactics are
# offered for the short, latency-bound GEMMs of batch-1 transformers only, where narrow tiles
# give enough programs to fill the GPU and cuBLAS picks split-K with a reduction kernel.
CONFIGS = [(64, 128, 64, 3, 4), (64, 64, 128, 4, 4), (64, 32, 128, 4, 4), (32, 64, 128, 4, 4), (16, 64, 256, 3, 4)]
MAX_ROWS = 2048
for _cfg in CONFIGS:
    register(TritonGemm(*_cfg))
