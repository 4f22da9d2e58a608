"""Concatenation elimination: the layers that produce a concatenation's inputs store their
results straight into their slices of its output buffer, so no copy runs for them.

Decided at build, after tactics are chosen (:func:`eliminate_concats`).  An input of a
CONCATENATION layer is *written in place* when

* a layer with one output produces it, and that output's only use is this one input of this
  concatenation (not fed twice, not also a network output, not read by another layer);
* the concatenation's output and input shapes are static (fixed at build; with a dynamic
  profile the slices would move from run to run, so ``torch.cat`` stays), and its dtype is the
  producer's;
* the producer's chosen tactic can store into the slice: ``Tactic.can_write_into`` is asked
  with a ``meta`` tensor laid out exactly as the slice will be (shape, dtype, strides).

The buffer's memory format is chosen once per concatenation: the one the builder recorded for
its output (what its consumers were timed with) unless the other one lets more inputs be
written in place (a channels-last buffer sliced on channels gives an NHWC convolution its
pixel rows; a row-major buffer sliced on its last axis gives a GEMM its rows).  It becomes the
concatenation's recorded output format.  Inputs that are not written in place are copied into
their slices by the concatenation's own step, so elimination may be partial.

The decision is data on the producers, ``EngineLayer.writes_into = (concat output, axis,
start)``; :func:`concat_plans` reads it back (for the runtime, the inspector and plan
loading) and refuses an inconsistent one.
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

log = logging.getLogger("kilnrt.builder")

_MEMORY_FORMATS = {"linear": torch.contiguous_format, "channels_last": torch.channels_last}


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
        return _MEMORY_FORMATS[self.format]

    @property
    def first_producer(self) -> int:
        return min(i for i in self.producers if i is not None)

    def empty(self, device: torch.device | str) -> torch.Tensor:
        """The output buffer, uninitialized (every element is written before the concatenation ends)."""
        return torch.empty(self.shape, dtype=self.dtype.torch, device=device, memory_format=self.memory_format)


def _layout(layer: EngineLayer) -> tuple[int, tuple[int, ...], list[tuple[int, int]]] | None:
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


def _uses(layers: Sequence[EngineLayer]) -> dict[str, int]:
    uses: dict[str, int] = {}
    for l in layers:
        for n in l.inputs:
            if n is not None:
                uses[n] = uses.get(n, 0) + 1
    return uses


def _candidates(layers: Sequence[EngineLayer], index: int, keep: set[str], uses: dict[str, int],
                producer: dict[str, int]) -> list[int | None]:
    """For each input of concatenation ``layers[index]``: the index of a producer that may write
    it in place as far as the graph goes (one output, used once, by this layer only), or None."""
    concat = layers[index]
    out = []
    for k, name in enumerate(concat.inputs):
        i = producer.get(name) if name is not None else None
        p = layers[i] if i is not None else None
        ok = (p is not None and name not in keep and uses.get(name) == 1 and len(p.outputs) == 1
              and p.writes_into is None and p.kind != LayerKind.CONCATENATION
              and p.output_dtypes[:1] == concat.output_dtypes[:1]
              and p.output_shapes[:1] == [tuple(concat.input_shapes[k])])
        out.append(i if ok else None)
    return out


def eliminate_concats(layers: list[EngineLayer], device: torch.device | str, keep: set[str]) -> dict[str, Any]:
    """Decide, for every concatenation, which inputs their producers write in place; records it
    on the producers (``writes_into``) and the buffer's format on the concatenation.  ``keep``:
    the network's inputs, outputs and constants.  Returns counts for the build report."""
    uses = _uses(layers)
    producer = {n: i for i, l in enumerate(layers) for n in l.outputs}
    ctx = TacticContext(torch.device(device))   # can_write_into looks at shapes and strides only
    stats = {"concatenations": 0, "eliminated": 0, "partial": 0, "inputs_in_place": 0, "inputs_copied": 0,
             "not_static": 0, "tactics_switched": 0}
    for index, concat in enumerate(layers):
        if concat.kind != LayerKind.CONCATENATION or len(concat.outputs) != 1:
            continue
        stats["concatenations"] += 1
        layout = _layout(concat)
        if layout is None:
            stats["not_static"] += 1
            stats["inputs_copied"] += len(concat.inputs)
            continue
        axis, shape, slices = layout
        candidates = _candidates(layers, index, keep, uses, producer)
        recorded = (concat.output_formats[0] if concat.output_formats else None) or "linear"
        formats = [recorded] + [f for f in _MEMORY_FORMATS if f != recorded and (len(shape) == 4 or f == "linear")]
        dtype = DataType[concat.output_dtypes[0]].torch
        saved = [None if concat.timing_ms is None else concat.timing_ms * size / shape[axis]
                 for _, size in slices]   # each input's share of the measured copy
        best: tuple[str, list[str | None]] | None = None   # (buffer format, each input's writer tactic)
        for fmt in formats:
            buf = torch.empty(shape, dtype=dtype, device="meta", memory_format=_MEMORY_FORMATS[fmt])
            ok = [None if i is None else _writer(layers[i], ctx, buf.narrow(axis, *slices[k]), saved[k])
                  for k, i in enumerate(candidates)]
            if best is None or sum(w is not None for w in ok) > sum(w is not None for w in best[1]):
                best = (fmt, ok)
        fmt, writers = best
        ok = [w is not None for w in writers]
        if not any(ok):
            stats["inputs_copied"] += len(concat.inputs)
            continue
        for k, i in enumerate(candidates):
            if ok[k]:
                layer = layers[i]
                if writers[k] != layer.tactic:
                    log.info("%s: %s (%.4f ms) instead of %s (%.4f ms), as it writes its slice of %s in place",
                             layer.name, writers[k], layer.candidates[writers[k]], layer.tactic,
                             layer.timing_ms, concat.name)
                    layer.tactic, layer.timing_ms = writers[k], layer.candidates[writers[k]]
                    stats["tactics_switched"] += 1
                layer.writes_into = (concat.outputs[0], axis, slices[k][0])
                if len(shape) == 4:
                    layer.output_formats = [fmt]   # what it writes is the buffer's layout
        concat.output_formats = [fmt]
        stats["eliminated" if all(ok) else "partial"] += 1
        stats["inputs_in_place"] += sum(ok)
        stats["inputs_copied"] += len(ok) - sum(ok)
        log.info("concatenation %s: %d of %d inputs written in place (%s buffer)", concat.name, sum(ok), len(ok), fmt)
    return stats


def _can_write(layer: EngineLayer, ctx: TacticContext, view: torch.Tensor, tactic: str | None = None) -> bool:
    """Whether ``tactic`` (default: the layer's chosen one) can store the layer's output into ``view``."""
    tactic = tactic or layer.tactic
    try:
        return bool(get_tactic(tactic).can_write_into(layer.as_network_layer(), ctx, view))
    except Exception as exc:  # noqa: BLE001 - a tactic that cannot tell keeps its own output
        log.debug("%s (%s) cannot say whether it writes into a slice: %s", layer.name, tactic, exc)
        return False


def _writer(layer: EngineLayer, ctx: TacticContext, view: torch.Tensor, saved_ms: float | None) -> str | None:
    """The tactic that writes ``layer``'s output into ``view``: its chosen one when that can;
    else the fastest other candidate the build timed that can, when its time is below the chosen
    one's plus ``saved_ms`` (this input's share of the concatenation's measured copy); else None."""
    if _can_write(layer, ctx, view):
        return layer.tactic
    if saved_ms is None or layer.timing_ms is None:
        return None
    for name, ms in sorted(layer.candidates.items(), key=lambda kv: kv[1]):
        if ms >= layer.timing_ms + saved_ms:
            return None
        if name != layer.tactic and _can_write(layer, ctx, view, name):
            return name
    return None


def concat_plans(layers: Sequence[EngineLayer]) -> dict[int, ConcatPlan]:
    """The concatenations that producers write into, by layer index, from the producers'
    ``writes_into``.  Raises ValueError when a ``writes_into`` does not describe a slice that
    :func:`eliminate_concats` could have chosen (a corrupt plan)."""
    producer = {n: i for i, l in enumerate(layers) for n in l.outputs}
    uses = _uses(layers)
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
        layout = _layout(concat)
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
        axis, shape, slices = _layout(concat)
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
            if i is not None and not _can_write(layers[i], ctx, buf.narrow(plan.axis, *plan.slices[k])):
                raise ValueError(f"layer {layers[i].name!r} writes into {plan.output!r}, but its tactic "
                                 f"{layers[i].tactic} cannot store into that slice")


def memory_steps(layers: Sequence[EngineLayer]) -> list[tuple[list[str], list[str]]]:
    """(inputs, outputs) per layer for :func:`kilnrt.builder.memory.plan_memory`: an in-place
    producer's output is its slice of the concatenation's buffer (no memory of its own), and the
    buffer lives from its first producer to the concatenation's last reader."""
    plans = concat_plans(layers)
    sliced = {layers[i].outputs[0]: p.output for p in plans.values() for i in p.producers if i is not None}
    steps = []
    for l in layers:
        outs = [sliced.get(n, n) for n in l.outputs]
        steps.append(([n for n in l.inputs if n and n not in sliced], outs))
    return steps


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
