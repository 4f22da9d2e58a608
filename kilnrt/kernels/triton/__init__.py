"""kilnrt's own Triton kernels, registered as CUDA tactics beside the PyTorch/cuDNN/cuBLAS ones.

* ``cuda.softmax.triton``: softmax / log-softmax over the last axis (:mod:`.softmax`).
* ``cuda.normalization.triton``, ``cuda.normalization.triton_split``: LayerNorm, RMSNorm,
  InstanceNorm and one-group GroupNorm over trailing axes, a row in one program or split over
  many (:mod:`.norm`).
* ``cuda.activation.triton``, ``cuda.elementwise.triton``, ``cuda.unary.triton``: kernels
  generated from an expression tree (:mod:`.pointwise`), the generator that pointwise-region
  fusion reuses.
* ``cuda.pooling.triton_nhwc``: 2-D max/average pooling on channels-last tensors (:mod:`.pool`).
* ``cuda.reduce.triton_spatial``: mean / sum over the spatial axes, the pixels split over
  programs at small batches (:mod:`.reduce`).
* ``cuda.squeeze_excitation.triton``: a squeeze-excitation gate (pool, two 1x1 convolutions and
  their activations) in two kernels (:mod:`.squeeze_excitation`).
* ``cuda.pointwise.triton``: a fused pointwise region as one generated kernel (:mod:`.region`).
* ``cuda.matrix_multiply.triton_<tiles>``: GEMM with bias and activation (exact GELU included) in
  its epilogue, one tactic per tile configuration (:mod:`.gemm`).
* ``cuda.convolution.cudnn_nhwc_triton_epilogue``: cuDNN convolution, then bias + residual +
  activation in one generated pass (:mod:`.conv_epilogue`).
* ``cuda.convolution.triton_depthwise_<tiles>``: depthwise convolution on channels-last tensors
  with bias, residual and activation in the same kernel (:mod:`.depthwise`).
* ``cuda.convolution.triton_gemm_<tiles>``: 1x1 convolution as the GEMM above, with bias,
  residual and activation in its epilogue (:mod:`.conv_gemm`).
* ``cuda.convolution.triton_implicit_<tiles>``: any dense 2-D convolution on channels-last
  tensors as an implicit GEMM with the same epilogue, the reduction split over programs when
  a batch-1 layer has few output tiles (:mod:`.conv_implicit`).
* ``cuda.quantize.triton``: per-tensor QuantizeLinear to INT8/UINT8/FP8 in one pass (:mod:`.quantize`).
* ``cuda.attention.triton_<tiles>``: flash-style attention for short sequences, Q/K/V read
  through their strides, boolean or additive masks, causal, grouped-query (:mod:`.attention`).

On Hopper and later the kernels launch with programmatic dependent launch
(:func:`programmatic_launch`): the next kernel's programs are scheduled while the previous
one drains, and wait for it before touching memory.

Every kernel loads its inputs, computes in float32 and stores in the output's dtype; the
tactics accept float16, bfloat16 and float32 and decline everything else, so the PyTorch
tactic runs it instead.  On a CPU machine the kernels run on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``, set before triton is imported), which is how the tests run.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from kilnrt.network.dtypes import DataType

# the tensor types these kernels read and write (math is always float32)
FLOAT_TYPES = frozenset({DataType.FLOAT, DataType.HALF, DataType.BF16})
TORCH_FLOATS = (torch.float16, torch.bfloat16, torch.float32)   # the same, as torch dtypes at run time

# a row kernel keeps up to this many elements of one or more rows in registers
MAX_ROW = 32768
_ROW_BLOCK_ELEMS = 2048


def row_blocks(n_rows: int, n_cols: int, per_thread: int = 8) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for a kernel that holds whole rows of ``n_cols`` in
    registers: one row per program for long rows, several rows per program for short ones,
    about ``per_thread`` elements per thread (at most 16 warps)."""
    block_n = triton.next_power_of_2(max(n_cols, 1))
    block_m = max(1, min(_ROW_BLOCK_ELEMS // block_n, triton.next_power_of_2(max(n_rows, 1))))
    num_warps = min(16, max(1, block_m * block_n // (32 * per_thread)))
    return block_m, block_n, num_warps


@functools.cache
def programmatic_launch(device_index: int) -> bool:
    """Whether kernels on this GPU launch with programmatic dependent launch (Hopper and later):
    a kernel's programs may be scheduled while the kernel before it in the stream is still
    finishing, and each waits (:func:`wait_for_previous_kernel`) before it touches memory, so
    only the launch latency overlaps.  ``KILNRT_PDL=0`` turns it off."""
    if os.environ.get("TRITON_INTERPRET") == "1" or os.environ.get("KILNRT_PDL") == "0":
        return False
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def launch_options(t: torch.Tensor) -> dict:
    """The keyword arguments a kernel launch on ``t``'s device adds: ``USE_PDL`` (the kernel's
    constexpr) and Triton's ``launch_pdl``."""
    pdl = t.is_cuda and programmatic_launch(t.device.index if t.device.index is not None
                                            else torch.cuda.current_device())
    return {"USE_PDL": pdl, "launch_pdl": pdl}


@triton.jit
def wait_for_previous_kernel(USE_PDL: tl.constexpr):
    """The first statement of a kernel launched with :func:`launch_options`: wait until the
    kernel before it has finished and its writes are visible (every read and write comes
    after), then let the next kernel's programs be scheduled."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


# the tactic modules register themselves on import (after the helpers above, which they use)
from kilnrt.kernels.triton import norm, pointwise, pool, reduce, softmax  # noqa: E402,F401
from kilnrt.kernels.triton import region  # noqa: E402,F401  (cuda.pointwise.triton: fused pointwise regions)
from kilnrt.kernels.triton import gemm  # noqa: E402,F401  (cuda.matrix_multiply.triton_*)
from kilnrt.kernels.triton import conv_epilogue  # noqa: E402,F401  (cuda.convolution.cudnn_nhwc_triton_epilogue)
from kilnrt.kernels.triton import depthwise  # noqa: E402,F401  (cuda.convolution.triton_depthwise_*)
from kilnrt.kernels.triton import conv_gemm  # noqa: E402,F401  (cuda.convolution.triton_gemm_*)
from kilnrt.kernels.triton import conv_implicit  # noqa: E402,F401  (cuda.convolution.triton_implicit_*)
from kilnrt.kernels.triton import squeeze_excitation  # noqa: E402,F401  (cuda.squeeze_excitation.triton)
from kilnrt.kernels.triton import attention  # noqa: E402,F401  (cuda.attention.triton_*)
from kilnrt.kernels.triton import gemm_int8  # noqa: E402,F401  (cuda.quantized_matrix_multiply.triton_*)
from kilnrt.kernels.triton import quantize  # noqa: E402,F401  (cuda.quantize.triton)
