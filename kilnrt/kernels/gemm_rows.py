"""Row-wise ops (a GEMM with a constant weight) on transposed views, without copying."""
from __future__ import annotations

import torch


def rows_in_memory_order(x: torch.Tensor):
    """``x [..., K]`` as a ``[rows, K]`` matrix without copying when its leading dims are only
    permuted in memory (a transposed view, as exporters make around attention), and the
    permutation that puts a ``[rows, N]`` result back in ``x``'s dim order.

    Returns (x2d, lead_shape_in_memory_order, inverse_perm or None).  A row-wise op
    commutes with permuting rows, so computing in memory order and viewing the result
    permuted back gives the same values as copying ``x`` first.
    """
    k = x.shape[-1]
    if x.dim() <= 2 or x.is_contiguous() or x.stride(-1) != 1:
        return x.reshape(-1, k), tuple(x.shape[:-1]), None
    lead = list(range(x.dim() - 1))
    order = sorted(lead, key=lambda d: (-x.stride(d), d))
    xp = x.permute(order + [x.dim() - 1])
    if not xp.is_contiguous():
        return x.reshape(-1, k), tuple(x.shape[:-1]), None
    inverse = [order.index(d) for d in lead]
    return xp.reshape(-1, k), tuple(xp.shape[:-1]), inverse + [x.dim() - 1]


def restore_rows(y2d: torch.Tensor, lead: tuple, inverse) -> torch.Tensor:
    y = y2d.view(lead + (y2d.shape[-1],))
    return y if inverse is None else y.permute(inverse)
