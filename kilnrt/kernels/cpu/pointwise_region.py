"""CPU kernel of a fused pointwise region (POINTWISE): its steps, each run by the reference
kernel of the layer it came from, so the region computes exactly what the layers did."""
from __future__ import annotations

import torch

from kilnrt.kernels.registry import kernel, reference_kernel
from kilnrt.network.layers import LayerKind, PointwiseParams


def evaluate_steps(p: PointwiseParams, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every value of the region: its inputs, then each step's result in order."""
    values = list(inputs)
    for kind, params, operands in p.ops:
        values.append(reference_kernel(kind)(params, *[values[i] for i in operands]))
    return values


def step_dtypes(p: PointwiseParams, input_dtypes: list[torch.dtype]) -> list[torch.dtype]:
    """The dtype of each step's result, for inputs of ``input_dtypes``: found by running the
    steps on host scalars of 1, or on meta scalars where that fails (a host kernel missing for
    a dtype, such as float8; an integer step dividing by a zero an earlier step made).  Host
    scalars first, because PyTorch's first arithmetic on meta tensors imports TorchDynamo,
    1.5-3 s of a build that needs none of it."""
    try:
        values = evaluate_steps(p, [torch.ones((), dtype=d) for d in input_dtypes])
    except Exception:  # noqa: BLE001 - meta scalars give the dtypes without running a kernel
        values = evaluate_steps(p, [torch.empty((), dtype=d, device="meta") for d in input_dtypes])
    return [v.dtype for v in values[p.num_inputs:]]


@kernel(LayerKind.POINTWISE)
def pointwise(p: PointwiseParams, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    values = evaluate_steps(p, list(inputs))
    outs = tuple(values[p.num_inputs + j] for j in p.outputs)
    return outs[0] if len(outs) == 1 else outs
