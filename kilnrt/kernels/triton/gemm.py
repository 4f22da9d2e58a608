"""``cuda.matrix_multiply.triton_<config>``: ``act(x @ W + bias)`` as one Triton kernel.

The GEMM's epilogue applies the bias and the activation to the float32 accumulator before
the single store, so an exact (erf) GELU after a projection needs no kernel of its own
(cuBLASLt's epilogues offer only the tanh approximation).  It competes with cuBLASLt on
every GEMM with a constant weight; see CONFIGS.  The same kernel runs 1x1 convolutions
(:mod:`.conv_gemm`), with a residual added in the epilogue too.

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

from kilnrt.kernels.gemm_rows import restore_rows, rows_in_memory_order, strided_rows
from kilnrt.kernels.registry import Tactic, register, static_dims
from kilnrt.kernels.triton import launch_options, wait_for_previous_kernel
from kilnrt.kernels.triton.epilogue import EPILOGUE_ACTIVATIONS, activate
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind, MatrixOperation


@triton.jit
def store_epilogue(acc, rm, rn, M, N, ldc, bias_ptr, res_ptr, c_ptr, alpha, beta,
                   HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr):
    """``c[rm, rn] = act(acc + bias[rn] + res[rm, rn])`` for a ``[M, N]`` output whose rows are
    ``ldc`` elements apart: ``N`` for a matrix of its own, more for a column slice of a wider
    one (a concatenation's buffer).  The residual is a ``[M, N]`` row-major matrix."""
    acc = apply_epilogue(acc, rm, rn, M, N, bias_ptr, res_ptr, alpha, beta, HAS_BIAS, HAS_RES, ACT)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(c_ptr + rm[:, None].to(tl.int64) * ldc + rn[None, :], acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def apply_epilogue(acc, rm, rn, M, N, bias_ptr, res_ptr, alpha, beta,
                   HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr):
    """``act(acc + bias[rn] + res[rm, rn])`` in float32, not stored (:func:`store_epilogue`)."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:  # added before the activation
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        acc += tl.load(res_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], mask=mask, other=0.0).to(tl.float32)
    return activate(acc, ACT, alpha, beta)


@triton.jit
def _gemm(a_ptr, w_ptr, bias_ptr, res_ptr, c_ptr, M, N, K, stride_am, stride_ak, ldc, alpha, beta,
          HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, EVEN_K: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
          USE_PDL: tl.constexpr):
    # K is a run-time argument: one compiled kernel serves every K of a tile configuration and
    # epilogue (a network's 1x1 convolutions and projections have dozens of Ks; each was a
    # compile of its own when K was a constant)
    wait_for_previous_kernel(USE_PDL)
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
    store_epilogue(acc, rm, rn, M, N, ldc, bias_ptr, res_ptr, c_ptr, alpha, beta, HAS_BIAS, HAS_RES, ACT)


def gemm(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
         act: str, alpha: float, beta: float, config: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """``act(a @ weight + bias + residual)`` as a new row-major ``[M, N]`` tensor: ``a`` is any
    ``[M, K]`` matrix whose rows are K-contiguous, ``weight`` a contiguous ``[K, N]``,
    ``bias`` ``[N]`` and ``residual`` a contiguous ``[M, N]``.  With ``out`` (an ``[M, N]`` view
    with unit column stride, rows ``out.stride(0)`` apart) the result is stored there instead."""
    m, (k, n) = a.shape[0], weight.shape
    c = torch.empty((m, n), dtype=a.dtype, device=a.device) if out is None else out
    assert c.shape == (m, n) and (c.stride(1) == 1 or n == 1) and c.stride(0) >= n, "out: [M, N], unit column stride"
    if m > 0:
        grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
        _gemm[grid](a, weight, bias if bias is not None else weight, residual if residual is not None else c, c,
                    m, n, k, a.stride(0), a.stride(1), c.stride(0), float(alpha), float(beta),
                    HAS_BIAS=bias is not None, HAS_RES=residual is not None, ACT=act,
                    EVEN_K=k % config["BLOCK_K"] == 0, **config, **launch_options(c))
    return c


def gemm_shape_ok(k: int, n: int) -> bool:
    """16-byte aligned rows for the tensor-core loads; tiny GEMMs are cuBLAS's."""
    return k % 8 == 0 and n % 8 == 0 and k >= 16 and n >= 16


def config_dict(block_m: int, block_n: int, block_k: int, stages: int, warps: int, group_m: int = 8) -> dict:
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, num_stages=stages,
                num_warps=warps)


def config_name(block_m: int, block_n: int, block_k: int, stages: int, warps: int) -> str:
    return f"{block_m}x{block_n}x{block_k}_s{stages}_w{warps}"


class TiledTactic(Tactic):
    """A tactic for one tile configuration of a GEMM-shaped kernel, named ``prefix`` + tiles."""
    prefix = ""

    def __init__(self, *tiles: int) -> None:
        self.config = config_dict(*tiles)
        self.name = f"{self.prefix}{config_name(*tiles)}"


class TritonGemm(TiledTactic):
    kind = LayerKind.MATRIX_MULTIPLY
    device = "cuda"
    prefix = "cuda.matrix_multiply.triton_"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        x, w_t = layer.inputs[0], layer.inputs[1]
        w = ctx.constant(layer, 1)
        if (w is None or w.dim() != 2 or p.op0 != MatrixOperation.NONE or p.activation not in EPILOGUE_ACTIVATIONS
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
        return gemm_shape_ok(k, n)

    def prepare(self, layer, ctx):
        p = layer.params
        w = ctx.constant(layer, 1)
        weight = (w.t() if p.op1 == MatrixOperation.TRANSPOSE else w).contiguous()  # [K, N]
        bias = ctx.constant(layer, 2) if len(layer.inputs) > 2 else None
        if bias is not None:
            bias = bias.reshape(-1).to(weight.dtype).contiguous()
        return weight, bias, EPILOGUE_ACTIVATIONS[p.activation], p.activation_alpha, p.activation_beta

    def run(self, state, inputs):
        weight, bias, act, alpha, beta = state
        a, lead, inverse = rows_in_memory_order(inputs[0])
        return [restore_rows(gemm(a, weight, bias, None, act, alpha, beta, self.config), lead, inverse)]

    def can_write_into(self, layer, ctx, out) -> bool:
        """Into any view whose rows are one stride apart: a column slice of a row-major buffer
        (a concatenation along the last axis), or whole rows of one (along a leading axis)."""
        x = layer.inputs[0]
        return x.dtype is not None and out.dtype == x.dtype.torch and static_dims(out.shape) \
            and strided_rows(out) is not None

    def run_into(self, state, inputs, out) -> None:
        weight, bias, act, alpha, beta = state
        gemm(logical_rows(inputs[0]), weight, bias, None, act, alpha, beta, self.config, out=strided_rows(out))


def logical_rows(x: torch.Tensor) -> torch.Tensor:
    """``x [..., K]`` as ``[rows, K]`` in its logical row order (the order of an output view's
    rows): a view when its rows are in that order in memory, else a copy (a transposed view)."""
    a, _, inverse = rows_in_memory_order(x)
    return a if inverse is None else x.reshape(-1, x.shape[-1])


# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps), each timed by the builder on the layer's shapes.
# Narrow tiles for the short, latency-bound GEMMs of batch-1 transformers (enough programs to
# fill the GPU, where cuBLAS picks split-K with a reduction kernel); 128x128 tiles for long
# ones, where a fused epilogue (exact GELU) saves a pass over the output that cuBLASLt would
# need.  On compute-bound shapes cuBLASLt's plain GEMM usually stays ahead, and is kept.
CONFIGS = [(64, 128, 64, 3, 4), (64, 64, 128, 4, 4), (64, 32, 128, 4, 4), (32, 64, 128, 4, 4), (16, 64, 256, 3, 4),
           (128, 128, 64, 3, 4), (128, 128, 64, 4, 8)]
for _cfg in CONFIGS:
    register(TritonGemm(*_cfg))
