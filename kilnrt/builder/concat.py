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
start)``; :func:`kilnrt.engine.concat_plan.concat_plans` reads it back (for the runtime, the
inspector and plan loading) and refuses an inconsistent one.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from kilnrt.engine.concat_plan import MEMORY_FORMATS, can_write, concat_plans, reader_counts, static_layout
from kilnrt.engine.engine import EngineLayer
from kilnrt.kernels.registry import TacticContext
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind

log = logging.getLogger("kilnrt.builder")


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
    uses = reader_counts(layers)
    producer = {n: i for i, l in enumerate(layers) for n in l.outputs}
    ctx = TacticContext(torch.device(device))   # can_write_into looks at shapes and strides only
    stats = {"concatenations": 0, "eliminated": 0, "partial": 0, "inputs_in_place": 0, "inputs_copied": 0,
             "not_static": 0, "tactics_switched": 0}
    for index, concat in enumerate(layers):
        if concat.kind != LayerKind.CONCATENATION or len(concat.outputs) != 1:
            continue
        stats["concatenations"] += 1
        layout = static_layout(concat)
        if layout is None:
            stats["not_static"] += 1
            stats["inputs_copied"] += len(concat.inputs)
            continue
        axis, shape, slices = layout
        candidates = _candidates(layers, index, keep, uses, producer)
        recorded = (concat.output_formats[0] if concat.output_formats else None) or "linear"
        formats = [recorded] + [f for f in MEMORY_FORMATS if f != recorded and (len(shape) == 4 or f == "linear")]
        dtype = DataType[concat.output_dtypes[0]].torch
        saved = [None if concat.timing_ms is None else concat.timing_ms * size / shape[axis]
                 for _, size in slices]   # each input's share of the measured copy
        best: tuple[str, list[str | None]] | None = None   # (buffer format, each input's writer tactic)
        for fmt in formats:
            buf = torch.empty(shape, dtype=dtype, device="meta", memory_format=MEMORY_FORMATS[fmt])
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


def _writer(layer: EngineLayer, ctx: TacticContext, view: torch.Tensor, saved_ms: float | None) -> str | None:
    """The tactic that writes ``layer``'s output into ``view``: its chosen one when that can;
    else the fastest other candidate the build timed that can, when its time is below the chosen
    one's plus ``saved_ms`` (this input's share of the concatenation's measured copy); else None."""
    if can_write(layer, ctx, view):
        return layer.tactic
    if saved_ms is None or layer.timing_ms is None:
        return None
    for name, ms in sorted(layer.candidates.items(), key=lambda kv: kv[1]):
        if ms >= layer.timing_ms + saved_ms:
            return None
        if name != layer.tactic and can_write(layer, ctx, view, name):
            return name
    return None


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


