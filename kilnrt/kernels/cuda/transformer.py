"""CUDA tactics for transformer layers: cuBLASLt GEMM with bias (and GELU) epilogue, fused
attention (PyTorch's scaled-dot-product attention: flash / memory-efficient kernels, and
cuDNN's pinned), native LayerNorm."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kilnrt.kernels.cpu.epilogue import conv_epilogue
from kilnrt.kernels.cpu.linalg import normalize_axes
from kilnrt.kernels.gemm_rows import restore_rows, rows_in_memory_order
from kilnrt.kernels.registry import Tactic, static_dims, tactic
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import ActivationType, LayerKind, MatrixOperation


@tactic
class CublasLtLinear(Tactic):
    """``x @ W + bias`` with a constant 2-D ``W`` as ``F.linear`` (W pre-transposed once),
    so the bias is added in the GEMM's epilogue; ReLU also runs in the epilogue."""

    name = "cuda.matrix_multiply.cublaslt"
    kind = LayerKind.MATRIX_MULTIPLY
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        w = ctx.constant(layer, 1)
        return (w is not None and w.dim() == 2 and layer.params.op0 == MatrixOperation.NONE
                and layer.params.op1 in (MatrixOperation.NONE, MatrixOperation.TRANSPOSE)
                and layer.inputs[0] is not None and layer.inputs[0].shape is not None
                and len(layer.inputs[0].shape) >= 2)

    def prepare(self, layer, ctx):
        w = ctx.constant(layer, 1)
        weight = w.contiguous() if layer.params.op1 == MatrixOperation.TRANSPOSE else w.t().contiguous()  # [N, K]
        bias = ctx.constant(layer, 2) if len(layer.inputs) > 2 else None
        return layer.params, weight, bias

    def run(self, state, inputs):
        p, weight, bias = state
        x = inputs[0]
        if bias is None and len(inputs) > 2:
            bias = inputs[2]
        if p.activation == ActivationType.RELU and bias is not None and x.dim() == 2:
            return [torch._addmm_activation(bias, x, weight.t())]
        a, lead, inverse = rows_in_memory_order(x)  # a transposed view is read as it lies
        y = F.linear(a, weight, bias)
        return [restore_rows(conv_epilogue(p, y), lead, inverse)]


@tactic
class CublasLtGeluLinear(CublasLtLinear):
    """``gelu(x @ W + bias)`` in one cuBLASLt GEMM: the GELU+bias epilogue
    (``CUBLASLT_EPILOGUE_GELU_BIAS``) runs on the float32 accumulator before the one rounding
    to float16/bfloat16, so the GELU costs no pass over the output (BERT-base's FFN on H200:
    36 us against 32 + 16 us for the GEMM and a GELU kernel).

    cuBLASLt computes GELU in its tanh form, which differs from the exact (erf) form by at most
    4.7e-4 (at x = 2.7), under half a float16 ulp there.  An erf-form GELU takes this tactic only
    at half precision, where the result is closer to the exact float64 GELU than rounding the
    GEMM to float16 and applying erf to that (relative L2 2.8e-4 against 3.0e-4, measured on
    H200 at BERT's shapes); float32 layers keep the exact form.
    """

    name = "cuda.matrix_multiply.cublaslt_gelu"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        x, y = layer.inputs[0], layer.outputs[0]
        if p.activation not in (ActivationType.GELU_ERF, ActivationType.GELU_TANH) or not super().supports(layer, ctx):
            return False
        if len(layer.inputs) > 2 and layer.inputs[2] is not None:  # a per-output-column constant only
            w, b = ctx.constant(layer, 1), ctx.constant(layer, 2)
            n = w.shape[0] if p.op1 == MatrixOperation.TRANSPOSE else w.shape[1]
            if b is None or b.dim() == 0 or b.numel() != n or b.shape[-1] != n:
                return False
        return x.dtype in (DataType.HALF, DataType.BF16) and y.dtype == x.dtype

    def prepare(self, layer, ctx):
        p, weight, bias = super().prepare(layer, ctx)
        n = weight.shape[0]
        bias = (torch.zeros(n, dtype=weight.dtype, device=weight.device) if bias is None
                else bias.reshape(n).to(weight.dtype).contiguous())
        return p, weight, bias

    def run(self, state, inputs):
        _, weight, bias = state
        a, lead, inverse = rows_in_memory_order(inputs[0])
        y = torch._addmm_activation(bias, a, weight.t(), use_gelu=True)
        return [restore_rows(y, lead, inverse)]


@tactic
class SdpaAttention(Tactic):
    """Fused attention: PyTorch picks flash, memory-efficient or cuDNN attention by shape."""

    name = "cuda.attention.sdpa"
    kind = LayerKind.ATTENTION
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        extra = layer.inputs[4:] if len(layer.inputs) > 4 else []
        return (len(layer.outputs) == 1 and all(t is None for t in extra) and p.softcap == 0.0
                and p.left_window < 0 and p.right_window < 0 and p.qk_output_mode < 0
                and not (p.causal and len(layer.inputs) > 3 and layer.inputs[3] is not None))

    def prepare(self, layer, ctx):
        """The params, and whether fully masked query rows must be zeroed after the call: not
        when the mask is absent, or a constant that masks no row fully."""
        mask = ctx.constant(layer, 3) if len(layer.inputs) > 3 else None
        may_mask_rows = len(layer.inputs) > 3 and layer.inputs[3] is not None
        if mask is not None:
            may_mask_rows = bool(fully_masked_rows(mask).any())
        return layer.params, may_mask_rows

    def run(self, state, inputs):
        p, may_mask_rows = state
        q, k, v = inputs[:3]
        mask = inputs[3] if len(inputs) > 3 else None
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        gqa = q.shape[1] != k.shape[1]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=p.causal and mask is None,
                                             scale=p.scale, enable_gqa=gqa)
        if may_mask_rows and mask is not None:
            # kilnrt's attention gives a query that may see no key zeros (PyTorch's exported
            # boolean-mask SDPA guards with where(isnan(p), 0, p)); SDPA's kernels leave a
            # uniform average or NaN there
            out = out.masked_fill(fully_masked_rows(mask), 0)
        return [out]


def fully_masked_rows(mask: torch.Tensor) -> torch.Tensor:
    """``[..., 1]``: True where a query row of ``mask`` (boolean keep-mask or additive) lets no
    key through."""
    if mask.dtype == torch.bool:
        return ~mask.any(-1, keepdim=True)
    return torch.isneginf(mask.amax(-1, keepdim=True))


@tactic
class CudnnSdpaAttention(SdpaAttention):
    """PyTorch's SDPA with only cuDNN's fused attention enabled. PyTorch's default order puts
    cuDNN after the math fallback, so the plain ``sdpa`` tactic never picks it; pinned, the
    builder times it like any other. Inputs cuDNN declines fail the timing run, so it is not
    chosen for them; static shapes only, so the shape it runs at is the one it was timed at."""

    name = "cuda.attention.sdpa_cudnn"

    def supports(self, layer, ctx) -> bool:
        return super().supports(layer, ctx) and all(t is None or static_dims(t.shape) for t in layer.inputs[:4])

    def run(self, state, inputs):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return super().run(state, inputs)


@tactic
class NativeLayerNorm(Tactic):
    """LayerNorm over the trailing axes with ``F.layer_norm`` (one kernel, fp32 statistics)."""

    name = "cuda.normalization.layer_norm"
    kind = LayerKind.NORMALIZATION
    device = "cuda"

    def supports(self, layer, ctx) -> bool:
        p = layer.params
        x = layer.inputs[0]
        if p.num_groups != 1 or p.rms or x is None or x.shape is None:
            return False
        rank = len(x.shape)
        axes = normalize_axes(p.axes, rank)
        if axes != tuple(range(rank - len(axes), rank)):
            return False
        shape = tuple(x.shape[rank - len(axes):])
        for i in (1, 2):
            t = layer.inputs[i] if i < len(layer.inputs) else None
            if t is not None and (t.shape is None or tuple(t.shape) != shape):
                return False
        return static_dims(shape)

    def run(self, p, inputs):
        x = inputs[0]
        scale = inputs[1] if len(inputs) > 1 else None
        bias = inputs[2] if len(inputs) > 2 else None
        if len(inputs) > 3 and inputs[3] is not None:
            x = x + inputs[3]
        n = len(p.axes) if p.axes is not None else x.dim()
        shape = tuple(x.shape[x.dim() - n:])
        y = F.layer_norm(x, shape, None if scale is None else scale.to(x.dtype),
                         None if bias is None else bias.to(x.dtype), p.epsilon)
        return [y, x] if p.sum_output else [y]
