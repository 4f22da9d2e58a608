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


def strided_rows(out: torch.Tensor) -> torch.Tensor | None:
    """``out [..., N]`` as a ``[rows, N]`` view of the same memory when its last dim is dense
    (stride 1) and its leading dims step through memory by one row stride (a column slice of a
    row-major matrix: row stride = the full width); None when they do not."""
    if out.dim() == 0 or (out.stride(-1) != 1 and out.shape[-1] > 1):
        return None
    lead = [(size, stride) for size, stride in zip(out.shape[:-1], out.stride()[:-1]) if size != 1]
    rows = 1
    for size, _ in lead:
        rows *= size
    ldc = lead[-1][1] if lead else max(out.shape[-1], 1)
    expected = ldc
    for size, stride in reversed(lead):
        if stride != expected:
            return None
        expected *= size
    if ldc < out.shape[-1]:
        return None
    return out.as_strided((rows, out.shape[-1]), (ldc, 1))
