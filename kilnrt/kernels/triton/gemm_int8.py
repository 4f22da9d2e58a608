"""``cuda.quantized_matrix_multiply.triton_<tiles>``: an INT8 or FP8 matrix multiply as one Triton kernel.

The kernel reads the float activation tile by tile and quantizes it in registers
(``saturate(round_half_even(x / input_scale) + zero_point)``), multiplies it by the INT8
weights on the tensor cores with exact int32 sums, and applies the layer's scale, bias,
residual and activation to the accumulator before the single store: no quantize kernel before
it, no int32 matrix after it.  The activation is read once per column block, as a float GEMM
reads it; what INT8 saves is tensor-core time and half the weight traffic.

Unsigned activations (ONNX Runtime's u8 QDQ) and zero points fit the signed multiply by a
shift: ``q - zp = (q - s) + (s - zp)`` with ``s`` = 128 for UINT8 (0 for INT8), so ``q - s``
is a signed byte and ``(s - zp) * sum_k w[k, n]`` is a per-column int32 correction added to
the accumulator.  Everything stays exact.

The weights are stored ``[N, K]`` (K contiguous), the operand layout Hopper's 8-bit tensor
core instructions take.  The activation may instead arrive already quantized (int8 or FP8, the
output of a QUANTIZE layer or of a producer that quantizes in its epilogue), and is then fed to
the tensor cores as it is read: quantizing a float tile in registers costs about as much as the
multiply itself (52 against 21 µs for BERT-base's QKV GEMM on an H200).

FP8 (E4M3, Hopper and Ada) is the same kernel with float8 operands and a float32 accumulator:
the activation is quantized by a saturating cast of ``x / scale``, with no zero point.

With an output scale the epilogue requantizes ``y`` (after bias, residual and activation) for
the next quantized layer, so that the tensor between two quantized layers is 8-bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kilnrt.kernels.gemm_rows import restore_rows, rows_in_memory_order
from kilnrt.kernels.registry import register
from kilnrt.kernels.triton import launch_options, wait_for_previous_kernel
from kilnrt.kernels.triton.epilogue import EPILOGUE_ACTIVATIONS
from kilnrt.kernels.triton.gemm import TiledTactic, apply_epilogue, store_epilogue
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind, MatrixOperation

FLOAT_INPUTS = (DataType.HALF, DataType.BF16, DataType.FLOAT)
SHIFT = {DataType.INT8: 0, DataType.UINT8: 128}      # q - SHIFT is a signed byte
RANGE = {DataType.INT8: (-128, 127), DataType.UINT8: (0, 255)}


ROUNDING = tl.constexpr(12582912.0)  # 1.5 * 2**23: adding it leaves no fraction bits below 2**22


@triton.jit
def round_saturate(x, inv_scale, zero_point, lo, hi):
    """``saturate(round_half_even(x * (1 / scale)) + zero_point)`` in float32, an integer in
    ``[lo, hi]``.  A multiply, not an IEEE division (which cost 4x the GEMM's time on an H200): the
    two differ only where ``x / scale`` lies within an ulp of a rounding tie."""
    v = x.to(tl.float32) * inv_scale
    v = tl.minimum(tl.maximum(v, -1024.0), 1024.0)            # saturates below anyway
    q = (v + ROUNDING) - ROUNDING + zero_point                  # float32 adds round half to even
    return tl.minimum(tl.maximum(q, lo), hi)


@triton.jit
def quantize_tile(x, inv_scale, zero_point, lo, hi, shift):
    """:func:`round_saturate` minus ``shift``, as the signed bytes the tensor cores take (module
    docstring)."""
    return (round_saturate(x, inv_scale, zero_point, lo, hi) - shift).to(tl.int8)


FP8_MAX = tl.constexpr(448.0)  # E4M3FN's largest finite value


@triton.jit
def quantize_fp8_tile(x, inv_scale):
    """``saturate_cast_e4m3(x * (1 / scale))``: round to nearest even, clipped to +-448."""
    v = x.to(tl.float32) * inv_scale
    return tl.minimum(tl.maximum(v, -FP8_MAX), FP8_MAX).to(tl.float8e4nv)


# (if/else, not an early return: Triton compiles the statements after a taken constexpr branch's
# return too, and the two branches' types differ)
@triton.jit
def quantize_operand(a, inv_scale, zero_point, lo, hi, shift, FP8: tl.constexpr):
    if FP8:
        q = quantize_fp8_tile(a, inv_scale)
    else:
        q = quantize_tile(a, inv_scale, zero_point, lo, hi, shift)
    return q


@triton.jit
def requantize(y, out_inv_scale, OUT_Q: tl.constexpr):
    """The epilogue's Quantize: 1: symmetric INT8, 2: FP8 E4M3 (``QuantizedOutput``)."""
    if OUT_Q == 2:
        q = quantize_fp8_tile(y, out_inv_scale)
    else:
        q = quantize_tile(y, out_inv_scale, 0.0, -128.0, 127.0, 0.0)
    return q


@triton.jit
def store_output(y, rm, rn, M, N, ldc, bias_ptr, res_ptr, c_ptr, alpha, beta, out_inv_scale,
                 HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, OUT_Q: tl.constexpr):
    """:func:`store_epilogue`, requantized first when ``OUT_Q``."""
    if OUT_Q == 0:
        store_epilogue(y, rm, rn, M, N, ldc, bias_ptr, res_ptr, c_ptr, alpha, beta, HAS_BIAS, HAS_RES, ACT)
    else:
        y = apply_epilogue(y, rm, rn, M, N, bias_ptr, res_ptr, alpha, beta, HAS_BIAS, HAS_RES, ACT)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        tl.store(c_ptr + rm[:, None].to(tl.int64) * ldc + rn[None, :], requantize(y, out_inv_scale, OUT_Q),
                 mask=mask)


@triton.jit
def _gemm_int8(a_ptr, w_ptr, corr_ptr, scale_ptr, bias_ptr, res_ptr, c_ptr, M, N, K: tl.constexpr,
               stride_am, stride_ak, ldc, inv_scale, zero_point, lo, hi, shift, alpha, beta, out_inv_scale,
               A_QUANTIZED: tl.constexpr, FP8: tl.constexpr, OUT_Q: tl.constexpr, HAS_CORR: tl.constexpr,
               HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
               ACT: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, USE_PDL: tl.constexpr):
    wait_for_previous_kernel(USE_PDL)
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
    ram = tl.max_contiguous(tl.multiple_of(rm % M, BLOCK_M), BLOCK_M)
    rbn = tl.max_contiguous(tl.multiple_of(rn % N, BLOCK_N), BLOCK_N)
    a_ptrs = a_ptr + ram[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
    w_ptrs = w_ptr + rbn[None, :].to(tl.int64) * K + rk[:, None]          # [BLOCK_K, BLOCK_N], K contiguous
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32 if FP8 else tl.int32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_left = K - k0
            a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0.0)
            w = tl.load(w_ptrs, mask=rk[:, None] < k_left, other=0.0)
        if not A_QUANTIZED:
            a = quantize_operand(a, inv_scale, zero_point, lo, hi, shift, FP8)
            if not EVEN_K:  # (the masked weights are 0 too; a saturated zero point times 0 is 0)
                a = tl.where(rk[None, :] < K - k0, a, tl.zeros_like(a))
        acc = tl.dot(a, w, acc, out_dtype=acc.dtype)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K
    if HAS_CORR:
        acc += tl.load(corr_ptr + rn, mask=rn < N, other=0)[None, :]
    y = acc.to(tl.float32) * tl.load(scale_ptr + rn, mask=rn < N, other=0.0)[None, :]
    store_output(y, rm, rn, M, N, ldc, bias_ptr, res_ptr, c_ptr, alpha, beta, out_inv_scale, HAS_BIAS, HAS_RES,
                 ACT, OUT_Q)


OUT_Q = {None: 0, DataType.INT8: 1, DataType.FP8: 2}   # the epilogue's requantization


class Int8Weights:
    """What the kernel needs of a layer's 8-bit weights and quantization, made once at build:
    ``weight`` ``[N, K]`` int8 (or float8_e4m3fn for FP8), ``scale`` ``[N]`` float32 (input scale
    times weight scale), ``correction`` ``[N]`` int32 or None (module docstring), the activation's
    quantization (scale, zero point, integer range, shift), and the output's (``out_q``: 0 none,
    1 INT8, 2 FP8; ``out_inv_scale``)."""

    def __init__(self, weight_nk: torch.Tensor, weight_scale: torch.Tensor, input_scale: float, zero_point: int,
                 input_type: DataType, output_scale: float = 0.0, output_type: DataType | None = None) -> None:
        n = weight_nk.shape[0]
        self.fp8 = input_type == DataType.FP8
        self.weight = weight_nk.to(torch.float8_e4m3fn if self.fp8 else torch.int8).contiguous()
        self.scale = (weight_scale.to(torch.float64).reshape(-1) * input_scale).to(torch.float32).expand(n).contiguous()
        shift = 0 if self.fp8 else SHIFT[input_type]
        self.correction = None
        if shift != zero_point:
            colsum = self.weight.to(torch.int64).sum(dim=1)
            self.correction = ((shift - zero_point) * colsum).to(torch.int32).contiguous()
        self.inv_scale = 1.0 / float(input_scale)
        self.zero_point, self.shift = float(zero_point), float(shift)
        self.lo, self.hi = (float(v) for v in RANGE.get(input_type, (0, 0)))
        self.out_q = OUT_Q[output_type] if output_scale > 0 else 0
        self.out_inv_scale = 1.0 / output_scale if output_scale > 0 else 1.0

    def takes_quantized(self, x: torch.Tensor) -> bool:
        """Whether ``x`` arrives quantized already (a shifted int8 or an FP8 tensor)."""
        return x.dtype == self.weight.dtype


def quantized_support(p, x_dtype: DataType | None) -> bool:
    """The quantizations the Triton 8-bit kernels run: INT8/UINT8 or FP8 inputs (a pre-quantized
    input only as a signed byte whose zero point is its shift, or FP8), and outputs float or
    requantized to INT8/FP8."""
    if p.input_type == DataType.FP8:
        if p.input_zero_point != 0:
            return False
    elif p.input_type not in SHIFT:
        return False
    if x_dtype == p.input_type:
        if p.input_type == DataType.UINT8 or p.input_zero_point != SHIFT.get(p.input_type, 0):
            return False
    elif x_dtype not in FLOAT_INPUTS:
        return False
    if p.output_scale > 0:
        return p.output_type in (DataType.INT8, DataType.FP8)
    return p.output_type is None or p.output_type in FLOAT_INPUTS


def weight_dtype(p) -> torch.dtype:
    return torch.float8_e4m3fn if p.input_type == DataType.FP8 else torch.int8


def fp8_capable(device: torch.device) -> bool:
    """FP8 tensor cores: compute capability 8.9 (Ada) or later.  Off a GPU (Triton's interpreter,
    in tests) the kernel runs emulated."""
    device = torch.device(device)
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)


def gemm_int8(a: torch.Tensor, q: Int8Weights, bias: torch.Tensor | None, residual: torch.Tensor | None,
              act: str, alpha: float, beta: float, config: dict, out_dtype: torch.dtype,
              quantized_input: bool = False) -> torch.Tensor:
    """``act(scale * (quantize(a) @ weight^T + correction) + bias + residual)`` (requantized when
    ``q.out_q``) as a new row-major ``[M, N]`` tensor of ``out_dtype``; ``a`` is any ``[M, K]``
    matrix with K-contiguous rows (float, or already quantized, shifted int8 or FP8, when
    ``quantized_input``)."""
    m, (n, k) = a.shape[0], q.weight.shape
    c = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m > 0:
        grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
        dummy = q.scale
        _gemm_int8[grid](a, q.weight, q.correction if q.correction is not None else dummy, q.scale,
                         bias if bias is not None else dummy, residual if residual is not None else c, c,
                         m, n, k, a.stride(0), a.stride(1), c.stride(0), q.inv_scale, q.zero_point, q.lo, q.hi,
                         q.shift, float(alpha), float(beta), q.out_inv_scale, A_QUANTIZED=quantized_input,
                         FP8=q.fp8, OUT_Q=q.out_q, HAS_CORR=q.correction is not None, HAS_BIAS=bias is not None,
                         HAS_RES=residual is not None, ACT=act, EVEN_K=k % config["BLOCK_K"] == 0,
                         **config, **launch_options(c))
    return c


def int8_shape_ok(k: int, n: int) -> bool:
    """16-byte aligned rows of 8-bit weights and at least one 32-deep step of the 8-bit tensor-core
    instructions; tinier GEMMs are the reference kernel's."""
    return k % 16 == 0 and n % 8 == 0 and k >= 32 and n >= 16


class TritonInt8Gemm(TiledTactic):
    kind = LayerKind.QUANTIZED_MATRIX_MULTIPLY
    device = "cuda"
    prefix = "cuda.quantized_matrix_multiply.triton_"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        x = layer.inputs[0]
        w = ctx.constant(layer, 1)
        if (w is None or w.dim() != 2 or w.dtype != weight_dtype(p) or p.op0 != MatrixOperation.NONE
                or p.op1 not in (MatrixOperation.NONE, MatrixOperation.TRANSPOSE)
                or p.activation not in EPILOGUE_ACTIVATIONS):
            return False
        if x is None or x.shape is None or len(x.shape) < 2 or not quantized_support(p, x.dtype):
            return False
        if p.input_type == DataType.FP8 and not fp8_capable(ctx.device):
            return False
        if ctx.constant(layer, 2) is None:
            return False
        k, n = (w.shape[1], w.shape[0]) if p.op1 == MatrixOperation.TRANSPOSE else tuple(w.shape)
        if len(layer.inputs) > 3 and layer.inputs[3] is not None:
            bias = ctx.constant(layer, 3)
            if bias is None or bias.numel() != n:
                return False
        return int8_shape_ok(k, n)

    def prepare(self, layer, ctx):
        p = layer.params
        w = ctx.constant(layer, 1)
        weight_nk = w if p.op1 == MatrixOperation.TRANSPOSE else w.t()
        q = Int8Weights(weight_nk, ctx.constant(layer, 2), p.input_scale, p.input_zero_point, p.input_type,
                        p.output_scale, p.output_type)
        bias = ctx.constant(layer, 3) if len(layer.inputs) > 3 else None
        out_dtype = layer.outputs[0].dtype.torch
        if bias is not None:
            bias = bias.reshape(-1).to(torch.float32).contiguous()
        return q, bias, EPILOGUE_ACTIVATIONS[p.activation], p.activation_alpha, p.activation_beta, out_dtype

    def run(self, state, inputs):
        q, bias, act, alpha, beta, out_dtype = state
        a, lead, inverse = rows_in_memory_order(inputs[0])
        y = gemm_int8(a, q, bias, None, act, alpha, beta, self.config, out_dtype, q.takes_quantized(a))
        return [restore_rows(y, lead, inverse)]


# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps): 8-bit tiles go twice as deep in K as 16-bit ones
# for the same bytes; the builder times each against the other INT8 tactics on the layer's shapes.
CONFIGS = [(128, 128, 128, 3, 8), (128, 128, 64, 4, 4), (128, 256, 128, 3, 8), (64, 128, 128, 4, 4),
           (64, 64, 128, 4, 4), (32, 64, 256, 3, 4), (16, 64, 256, 3, 4)]
for _cfg in CONFIGS:
    register(TritonInt8Gemm(*_cfg))
