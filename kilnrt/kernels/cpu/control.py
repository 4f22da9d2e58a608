"""CPU kernels for control flow: CONDITIONAL (if-then-else) and LOOP (ONNX Loop and Scan).

A body is a :class:`Subgraph` run layer by layer with the reference kernels, on the device
of the values it is given.  With meta values (shape inference) a conditional whose condition
is known runs its branch, and a loop whose trip count and condition are known runs its
iterations, so output shapes stay exact; otherwise the rank rules give rank and dtype.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from kilnrt.errors import ErrorCode, ExecutionError
from kilnrt.kernels.cpu.shape import rank_rule
from kilnrt.kernels.registry import kernel, reference_kernel
from kilnrt.network.dtypes import numpy_to_torch
from kilnrt.network.layers import ConditionalParams, LayerKind, LoopParams, Subgraph, shape_input_positions

MAX_META_ITERATIONS = 4096   # shape inference unrolls at most this many iterations


def _is_meta(t: torch.Tensor | None) -> bool:
    return t is not None and t.device.type == "meta"


def run_subgraph(g: Subgraph, bound: Mapping[str, torch.Tensor | None], device: torch.device) -> list[torch.Tensor]:
    """Evaluate a body on ``bound`` values (by input name); returns its outputs."""
    env: dict[str, torch.Tensor | None] = dict(bound)
    for layer in g.layers:
        if layer.kind == LayerKind.CONSTANT:
            value = numpy_to_torch(layer.params.weights)
            outs: Sequence[torch.Tensor] = [value.to(device) if device.type not in ("cpu", "meta") else value]
        else:
            shape_inputs = shape_input_positions(layer)
            ins = [None if n is None else env[n] for n in layer.inputs]
            ins = [t.cpu() if (i in shape_inputs and t is not None and not _is_meta(t)) else t
                   for i, t in enumerate(ins)]
            if any(_is_meta(t) for i, t in enumerate(ins) if i not in shape_inputs):
                ins = [t if (t is None or i in shape_inputs) else t.to("meta") for i, t in enumerate(ins)]
            out = reference_kernel(layer.kind)(layer.params, *ins)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
        env.update(zip(layer.outputs, outs))
    return [env[n] for n in g.outputs]


def _device(values: Sequence[torch.Tensor | None]) -> torch.device:
    for v in values:
        if v is not None and not _is_meta(v):
            return v.device
    return torch.device("cpu")


def _flag(t: torch.Tensor) -> bool:
    return bool(t.reshape(-1)[0].item())


# ----------------------------------------------------------------------------- conditional
def _conditional_ranks(p: ConditionalParams, cond, *captured):
    return [(rank, dtype.torch) for dtype, rank in p.then_branch.output_types]


@kernel(LayerKind.CONDITIONAL)
@rank_rule(_conditional_ranks)
def conditional(p: ConditionalParams, cond: torch.Tensor, *captured: torch.Tensor | None):
    if _is_meta(cond):
        raise NotImplementedError("the branch is chosen at run time")
    branch = p.then_branch if _flag(cond) else p.else_branch
    return tuple(run_subgraph(branch, dict(zip(branch.inputs, captured)), _device(captured)))


# ----------------------------------------------------------------------------- loop
def _loop_ranks(p: LoopParams, *inputs):
    types = list(p.body.output_types[1:] if p.counter_inputs else p.body.output_types)
    carried = types[:p.num_carried]
    scanned = types[p.num_carried:]
    return ([(rank, dtype.torch) for dtype, rank in carried]
            + [(rank + 1 if rank >= 0 else -1, dtype.torch) for dtype, rank in scanned])


@kernel(LayerKind.LOOP)
@rank_rule(_loop_ranks)
def loop(p: LoopParams, trip_count: torch.Tensor | None, cond: torch.Tensor | None, *rest: torch.Tensor | None):
    if _is_meta(trip_count) or _is_meta(cond):
        raise NotImplementedError("the number of iterations is known only at run time")
    n_scan = len(p.scan_input_axes)
    carried = list(rest[:p.num_carried])
    scans = rest[p.num_carried:p.num_carried + n_scan]
    captured = list(rest[p.num_carried + n_scan:])
    device = _device(rest)
    limit = None if trip_count is None else int(trip_count.reshape(-1)[0].item())
    for s, axis in zip(scans, p.scan_input_axes):
        length = s.shape[axis % s.dim()]
        limit = length if limit is None else min(limit, length)
    if limit is None and cond is None:
        raise ExecutionError(ErrorCode.RUNTIME, "the loop has neither a trip count nor a condition: it would not end")
    if limit is not None and limit > MAX_META_ITERATIONS and any(_is_meta(t) for t in rest):
        raise NotImplementedError("too many iterations to unroll for shape inference")
    going = True if cond is None else _flag(cond)
    steps: list[list[torch.Tensor]] = [[] for _ in p.scan_output_axes]
    i = 0
    while going and (limit is None or i < limit):
        slices = [s.select(axis % s.dim(), (s.shape[axis % s.dim()] - 1 - i) if rev else i)
                  for s, axis, rev in zip(scans, p.scan_input_axes, p.scan_input_reverse)]
        counters = ([torch.tensor(i, dtype=torch.int64, device=device), torch.tensor(going, device=device)]
                    if p.counter_inputs else [])
        feed = counters + carried + slices + captured
        out = run_subgraph(p.body, dict(zip(p.body.inputs, feed)), device)
        if p.counter_inputs:
            if cond is not None:
                if _is_meta(out[0]):
                    raise NotImplementedError("the loop condition is computed from data")
                going = _flag(out[0])
            out = out[1:]
        carried = out[:p.num_carried]
        for k, y in enumerate(out[p.num_carried:]):
            steps[k].append(y)
        i += 1
    return tuple(carried) + tuple(_stack(p, k, ys, device) for k, ys in enumerate(steps))


def _stack(p: LoopParams, k: int, ys: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    if p.scan_output_reverse and p.scan_output_reverse[k]:
        ys = ys[::-1]
    if not ys:  # no iteration ran: an empty result of the body output's rank and dtype
        dtype, rank = p.body.output_types[(1 if p.counter_inputs else 0) + p.num_carried + k]
        return torch.empty((0,) * max(rank + 1, 1), dtype=dtype.torch, device=device)
    axis = p.scan_output_axes[k] % (ys[0].dim() + 1)
    return torch.stack(ys, axis)
