"""``cuda.<kind>.torch``: the reference kernels, run on CUDA tensors.

Kernels that create tensors (FILL) make them on the device; SHAPE stays on the host
(its values are read on the host, like TensorRT's shape tensors).
"""
from __future__ import annotations

import math

import torch

from kilnrt.kernels import cpu  # noqa: F401  (registers the reference kernels)
from kilnrt.kernels.cpu.shape import host_values
from kilnrt.kernels.registry import _REFERENCE, _TACTICS, FunctionTactic, register
from kilnrt.network.layers import FillOperation, FillParams, LayerKind

_DEVICE_SPECIFIC = {LayerKind.FILL, LayerKind.CONVOLUTION}


def _fill(p: FillParams, a, b=None, c=None):
    if p.op == FillOperation.CONSTANT:
        return torch.full([int(d) for d in host_values(a)], p.value, dtype=p.dtype.torch, device="cuda")
    start, limit, delta = (host_values(t)[0] for t in (a, b, c))
    n = max(int(math.ceil((limit - start) / delta)), 0)
    out = torch.arange(n, dtype=torch.float64 if p.dtype.is_floating else torch.int64, device="cuda")
    return (out * delta + start).to(p.dtype.torch)


for _kind, _fn in list(_REFERENCE.items()):
    if _kind in _DEVICE_SPECIFIC:
        continue
    _cpu = _TACTICS.get(f"cpu.{_kind.value}.torch")   # its run_into, where it has one (writes_into)
    _cpu = _cpu if getattr(_cpu, "fn", None) is _fn else None
    register(FunctionTactic(f"cuda.{_kind.value}.torch", _kind, "cuda", _fn,
                            into=getattr(_cpu, "into", None), into_ok=getattr(_cpu, "into_ok", None)))
register(FunctionTactic("cuda.fill.torch", LayerKind.FILL, "cuda", _fill))


