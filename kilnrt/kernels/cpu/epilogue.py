"""Fused epilogues of anchor layers (convolution, matrix multiply): an added tensor (residual
or bias), then an activation."""
from __future__ import annotations

import torch

from kilnrt.network.layers import ActivationParams


def conv_epilogue(p, y: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``act(y + residual)`` for an anchor whose params carry ``activation`` (or None)."""
    if residual is not None:
        y = y + residual
    if p.activation is not None:
        from kilnrt.kernels.cpu.pointwise import activation

        y = activation(ActivationParams(p.activation, p.activation_alpha, p.activation_beta), y)
    return y
