"""Concatenations that producers write into, as a plan records them: what the runtime
allocates and where each producer stores (:func:`concat_plans`), the check a plan's claims
get at load (:func:`check_tactics`), and the inspector's view (:func:`describe`).

The builder decides which producers write in place (:mod:`kilnrt.builder.concat`); the
decision is data on the producers, ``EngineLayer.writes_into = (concat output, axis, start)``,
which this module reads back and refuses when it is inconsistent.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import torch

from kilnrt.engine.engine import EngineLayer
from kilnrt.kernels.registry import TacticContext, get_tactic, static_dims
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind

log = logging.getLogger("kilnrt.engine")

MEMORY_FORMATS = {"linear": torch.contiguous_format, "channels_last": torch.channels_last}

@dataclasses.dataclass(frozen=True)
class ConcatPlan:
    """One concatenation whose output some producers write: what the runtime allocates and where
    each input goes (``slices[i] = (start, size)`` along ``axis``; ``in_place[i]``: its producer
    wrote it, else the concatenation copies it)."""

    index: int                         # the concatenation's position in the engine's layers
    output: str
    axis: int
    shape: tuple[int, ...]
    dtype: DataType
    format: str                        # "linear" | "channels_last"
    slices: tuple[tuple[int, int], ...]
    in_place: tuple[bool, ...]
    producers: tuple[int | None, ...]  # layer index of each in-place input's producer

    @property
    def memory_format(self) -> torch.memory_format:
        return MEMORY_FORMATS[self.format]

    @property
    def first_producer(self) -> int:
        return min(i for i in self.producers if i is not None)

    def empty(self, device: torch.device | str) -> torch.Tensor:
        """The output buffer, uninitialized (every element is written before the concatenation ends)."""
        return torch.empty(self.shape, dtype=self.dtype.torch, device=device, memory_format=self.memory_format)


def static_layout(layer: EngineLayer) -> tuple[int, tuple[int, ...], list[tuple[int, int]]] | None:
    """(axis, output shape, slices) of a concatenation whose shapes (and dtype) are all known
    at build, else None."""
    if (not layer.output_shapes or not static_dims(layer.output_shapes[0]) or not layer.output_shapes[0]
            or len(layer.input_shapes) != len(layer.inputs)):
        return None
    if not layer.output_dtypes or layer.output_dtypes[0] is None:
        return None
    shape = tuple(layer.output_shapes[0])
    axis = layer.params.axis % len(shape)
    slices, start = [], 0
    for s in layer.input_shapes:
        if not static_dims(s) or len(s) != len(shape):
            return None
        slices.append((start, int(s[axis])))
        start += int(s[axis])
    return (axis, shape, slices) if start == shape[axis] else None


def reader_counts(layers: Sequence[EngineLayer]) -> dict[str, int]:
    uses: dict[str, int] = {}
    for l in layers:
        for n in l.inputs:
            if n is not None:
                uses[n] = uses.get(n, 0) + 1
    return uses


def can_write(layer: EngineLayer, ctx: TacticContext, view: torch.Tensor, tactic: str | None = None) -> bool:
    """Whether ``tactic`` (default: the layer's chosen one) can store the layer's output into ``view``."""
    tactic = tactic or layer.tactic
    try:
        return bool(get_tactic(tactic).can_write_into(layer.as_network_layer(), ctx, view))
    except Exception as exc:  # noqa: BLE001 - a tactic that cannot tell keeps its own output
        log.debug("%s (%s) cannot say whether it writes into a slice: %s", layer.name, tactic, exc)
        return False


def concat_plans(layers: Sequence[EngineLayer]) -> dict[int, ConcatPlan]:
    """The concatenations that producers write into, by layer index, from the producers'
    ``writes_into``.  Raises ValueError when a ``writes_into`` does not describe a slice that
    :func:`kilnrt.builder.concat.eliminate_concats` could have chosen (a corrupt plan)."""
    producer = {n: i for i, l in enumerate(layers) for n in l.outputs}
    uses = reader_counts(layers)
    claims: dict[int, dict[int, int]] = {}    # concat index -> {input position: producer index}
    for i, l in enumerate(layers):
        if l.writes_into is None:
            continue
        name, axis, start = l.writes_into
        c = producer.get(name)
        concat = layers[c] if c is not None else None
        if concat is None or concat.kind != LayerKind.CONCATENATION or c <= i:
            raise ValueError(f"layer {l.name!r} writes into {name!r}, which no later concatenation produces")
        if len(l.outputs) != 1 or uses.get(l.outputs[0]) != 1 or l.outputs[0] not in concat.inputs:
            raise ValueError(f"layer {l.name!r} writes into {name!r}, but its output is not an input "
                             f"that only that concatenation reads")
        layout = static_layout(concat)
        k = concat.inputs.index(l.outputs[0])
        if layout is None or layout[0] != axis or layout[2][k][0] != start:
            raise ValueError(f"layer {l.name!r} writes into {name!r} along axis {axis} from {start}; the "
                             f"concatenation's static layout puts that input elsewhere (or has none)")
        if l.output_dtypes[:1] != concat.output_dtypes[:1]:
            raise ValueError(f"layer {l.name!r} writes {l.output_dtypes[:1]} into {name!r} of "
                             f"{concat.output_dtypes[:1]}")
        claims.setdefault(c, {})[k] = i
    plans = {}
    for c, by_input in claims.items():
        concat = layers[c]
        axis, shape, slices = static_layout(concat)
        fmt = (concat.output_formats[0] if concat.output_formats else None) or "linear"
        if fmt == "channels_last" and len(shape) != 4:
            raise ValueError(f"concatenation {concat.name!r} has a channels_last buffer of rank {len(shape)}")
        plans[c] = ConcatPlan(c, concat.outputs[0], axis, shape, DataType[concat.output_dtypes[0]], fmt,
                              tuple(slices), tuple(k in by_input for k in range(len(concat.inputs))),
                              tuple(by_input.get(k) for k in range(len(concat.inputs))))
    return plans


def check_tactics(layers: Sequence[EngineLayer], device: torch.device | str) -> None:
    """Raise ValueError unless each in-place producer's tactic can write into its slice (a plan
    that says so about a tactic that cannot is corrupt)."""
    ctx = TacticContext(torch.device(device))
    for plan in concat_plans(layers).values():
        buf = torch.empty(plan.shape, dtype=plan.dtype.torch, device="meta", memory_format=plan.memory_format)
        for k, i in enumerate(plan.producers):
            if i is not None and not can_write(layers[i], ctx, buf.narrow(plan.axis, *plan.slices[k])):
                raise ValueError(f"layer {layers[i].name!r} writes into {plan.output!r}, but its tactic "
                                 f"{layers[i].tactic} cannot store into that slice")


def describe(layers: Sequence[EngineLayer]) -> dict[str, dict[str, Any]]:
    """For the inspector, by layer name: ``{"writes_into": {...}}`` on each in-place producer and
    ``{"concat": {...}}`` on each concatenation with one (its inputs written in place and copied)."""
    out: dict[str, dict[str, Any]] = {}
    for plan in concat_plans(layers).values():
        concat = layers[plan.index]
        for k, i in enumerate(plan.producers):
            if i is not None:
                start, size = plan.slices[k]
                out[layers[i].name] = {"writes_into": {"tensor": plan.output, "axis": plan.axis, "start": start,
                                                       "end": start + size}}
        n, k = len(plan.in_place), sum(plan.in_place)
        out[concat.name] = {"concat": {"inputs": n, "in_place": k, "copied": n - k, "eliminated": k == n,
                                       "format": plan.format}}
    return out
