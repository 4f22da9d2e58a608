"""CPU kernel for normalization layers (LayerNorm, InstanceNorm, GroupNorm, RMSNorm)."""
from __future__ import annotations

import torch

from kilnrt.kernels.cpu.linalg import normalize_axes
from kilnrt.kernels.registry import kernel
from kilnrt.network.layers import LayerKind, NormalizationParams


@kernel(LayerKind.NORMALIZATION)
def normalization(p: NormalizationParams, x: torch.Tensor, scale: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, residual: torch.Tensor | None = None
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    if residual is not None:
        x = x + residual
    y = _normalize(p, x, scale, bias)
    return (y, x) if p.sum_output else y


def _normalize(p: NormalizationParams, x: torch.Tensor, scale: torch.Tensor | None,
               bias: torch.Tensor | None) -> torch.Tensor:
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(compute)
    if p.num_groups > 1:
        shape = xf.shape
        g = xf.reshape(shape[0], p.num_groups, -1)
        dims: tuple[int, ...] = (2,)
    else:
        g = xf
        dims = normalize_axes(p.axes, xf.dim())
    if p.rms:
        y = g * torch.rsqrt(g.pow(2).mean(dim=dims, keepdim=True) + p.epsilon)
    else:
        var, mean = torch.var_mean(g, dim=dims, keepdim=True, unbiased=False)
        y = (g - mean) * torch.rsqrt(var + p.epsilon)
    if p.num_groups > 1:
        y = y.reshape(shape)
    if scale is not None:
        y = y * scale.to(compute)
    if bias is not None:
        y = y + bias.to(compute)
    return y.to(x.dtype)
