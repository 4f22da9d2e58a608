"""The CUDA backend's tactics.

* ``cuda.<kind>.torch``: every CPU reference kernel is written in device-agnostic PyTorch
  ops, so each also runs on CUDA tensors (cuDNN, cuBLAS and PyTorch's CUDA kernels).
* library-specific tactics (cuDNN channels-last convolution, cuBLAS GEMM) and our own
  Triton kernels, registered beside them; the builder times the candidates and keeps
  the fastest.
"""
from kilnrt.kernels.cuda import conv, generic, pool, quantized, transformer, views  # noqa: F401

try:  # Triton kernels need the triton package (always there on GPU machines)
    import kilnrt.kernels.triton  # noqa: F401  (cuda.softmax/normalization/activation/elementwise/unary.triton)
except ImportError:  # pragma: no cover - CPU machines without triton
    pass
