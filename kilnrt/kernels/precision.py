"""Process-wide math-mode switches that tactics run under."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 in cuBLAS and cuDNN for the duration of the block.

    TensorRT's TF32 flag is per engine; PyTorch's switches are per process, so engines set
    them while they run (on the GPU, only while a CUDA graph is captured) and restore them.
    """
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
