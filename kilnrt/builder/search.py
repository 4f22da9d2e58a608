"""How hard the builder looks for each layer's fastest tactic, by optimization level.

TensorRT's ``builder_optimization_level`` trades build time for engine speed; kilnrt's
levels do the same in two places: which optimizer passes run (``kilnrt/optimize/pipeline.py``)
and, here, how the tactics a layer supports are searched on the device:

- 0: no timing; the first supported tactic that runs on the layer's example inputs.
- 1: only the first configuration each tactic class registers is timed (one Triton GEMM
  tiling, not twenty), 5 samples each.
- 2: every candidate, 5 samples each.
- 3 (default): every candidate, 10 samples each.
- 4: as 3, then the candidates within 10% of the fastest are timed again, 2 more rounds
  in alternating order, and compared on the median of their rounds' times, so a close call
  is not decided by one noisy measurement.
- 5: as 4, for the candidates within 25% of the fastest, 4 more rounds.

A sample is one CUDA-graph replay of 8 back-to-back calls, divided by 8 (see
:func:`kilnrt.builder.timing.time_callable`). Timings found in the timing cache are used at
every level; levels 4 and 5 time their close calls again and store the refined number.
"""
from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass

import torch

from kilnrt.builder.examples import MIN_ORDERED_RANK, memory_order
from kilnrt.builder.timing import TimingCache, layer_signature, time_callable
from kilnrt.device import out_of_memory
from kilnrt.errors import BuildError, ErrorCode
from kilnrt.network.layers import LayerKind

log = logging.getLogger("kilnrt.builder")

LEVELS = range(0, 6)


@dataclass(frozen=True)
class TacticSearch:
    """The tactic search of one optimization level (module docstring)."""
    timed: bool               # False: the first candidate that runs, nothing timed
    one_per_class: bool       # time only the first registered configuration of each tactic class
    samples: int              # timing samples per candidate; the median is its time
    recheck_within: float     # candidates within this fraction of the fastest are timed again ...
    recheck_rounds: int       # ... this many more rounds


SEARCH = {
    0: TacticSearch(timed=False, one_per_class=False, samples=0, recheck_within=0.0, recheck_rounds=0),
    1: TacticSearch(timed=True, one_per_class=True, samples=5, recheck_within=0.0, recheck_rounds=0),
    2: TacticSearch(timed=True, one_per_class=False, samples=5, recheck_within=0.0, recheck_rounds=0),
    3: TacticSearch(timed=True, one_per_class=False, samples=10, recheck_within=0.0, recheck_rounds=0),
    4: TacticSearch(timed=True, one_per_class=False, samples=10, recheck_within=0.10, recheck_rounds=2),
    5: TacticSearch(timed=True, one_per_class=False, samples=10, recheck_within=0.25, recheck_rounds=4),
}


def search_for_level(level: int) -> TacticSearch:
    if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
        raise BuildError(ErrorCode.INVALID_ARGUMENT,
                         f"builder optimization level must be an integer from 0 to 5 (3 is the default), "
                         f"got {level!r}")
    return SEARCH[level]


def first_per_class(candidates: list) -> list:
    """The first candidate of each tactic class, in registry order."""
    seen, kept = set(), []
    for c in candidates:
        if type(c) not in seen:
            seen.add(type(c))
            kept.append(c)
    return kept


def first_that_runs(layer, candidates, ctx, ins):
    """Level 0: the first candidate that prepares and runs on ``ins`` without an error."""
    for cand in candidates:
        try:
            cand.run(cand.prepare(layer, ctx), ins)
        except Exception as exc:  # noqa: BLE001 - a tactic that fails here is not chosen
            log.debug("tactic %s failed on %s: %s", cand.name, layer.name, exc)
            continue
        return cand
    return candidates[0]


def example_signature(layer, ins) -> str:
    """The timing cache's key for ``layer`` on example inputs ``ins``: per input its shape,
    dtype, layout, and whether it is a constant (a tactic may need a constant weight, and
    prepares one ahead: a GEMM on an activation is not timed as one on a weight)."""
    return layer_signature(layer, [None if a is None else
                                   [list(a.shape), str(a.dtype), _layout_key(a), _constant(t)]
                                   for t, a in zip(layer.inputs, ins)])


def _layout_key(a) -> bool | list[int]:
    """NHWC or not for rank 4 and below; the memory order from rank 5 (examples.memory_order)."""
    if a.dim() >= MIN_ORDERED_RANK:
        order = memory_order(a)
        return False if order is None else list(order)
    return a.dim() == 4 and not a.is_contiguous()


def _constant(t) -> bool:
    producer = getattr(t, "producer", None)
    return producer is not None and producer.kind == LayerKind.CONSTANT


def candidates_to_run(layer, candidates, ins, cache: TimingCache | None, device: str,
                      search: TacticSearch, signature: str | None = None) -> tuple[list, bool]:
    """(the candidates :func:`choose_tactic` will run on ``ins``, whether any of them is timed):
    those without a cached timing, and the fastest cached one (it may win, and the chosen
    tactic is run to learn its layout).  ``signature``: ``example_signature(layer, ins)``
    where the caller has it already."""
    if search.one_per_class:
        candidates = first_per_class(candidates)
    if len(candidates) <= 1 or not search.timed or cache is None:
        return list(candidates if search.timed else candidates[:1]), len(candidates) > 1 and search.timed
    signature = signature or example_signature(layer, ins)
    timed = {c.name: cache.entries.get(TimingCache.key(signature, device, c.name)) for c in candidates}
    cached = [c for c in candidates if timed[c.name] is not None]
    run = [c for c in candidates if timed[c.name] is None]
    fresh = bool(run)
    if cached:
        run.append(min(cached, key=lambda c: timed[c.name]))
    return run, fresh


def choose_tactic(layer, candidates, ctx, ins, cache: TimingCache | None, device: str, search: TacticSearch):
    """(chosen tactic, {tactic name: ms}) for ``layer`` among ``candidates`` on example inputs ``ins``."""
    if search.one_per_class:
        candidates = first_per_class(candidates)
    if len(candidates) == 1:
        return candidates[0], {}
    if not search.timed:
        return first_that_runs(layer, candidates, ctx, ins), {}
    signature = example_signature(layer, ins)
    states, timings, out_of_memory_in = {}, {}, []
    for cand in candidates:
        key = TimingCache.key(signature, device, cand.name)
        ms = cache.get(key) if cache is not None else None
        if ms is None:
            try:
                state = cand.prepare(layer, ctx)
                ms = _time(cand, state, ins, device, search.samples)
                if search.recheck_rounds:  # kept for the second look; otherwise freed now
                    states[cand.name] = state
            except Exception as exc:  # noqa: BLE001 - a tactic that fails here is not chosen
                log.debug("tactic %s failed on %s: %s", cand.name, layer.name, exc)
                if isinstance(exc, torch.OutOfMemoryError):
                    out_of_memory_in.append((cand.name, str(exc)))
                continue
            if cache is not None:
                cache.put(key, ms)
        timings[cand.name] = ms
        log.debug("  %-40s %-36s %.4f ms", layer.name[:40], cand.name, ms)
    if not timings and out_of_memory_in:
        shapes = ", ".join(f"{tuple(t.shape)}:{str(t.dtype).replace('torch.', '')}" for t in ins if t is not None)
        raise BuildError(ErrorCode.OUT_OF_MEMORY, out_of_memory(
            out_of_memory_in[0][1], f"timing every tactic of layer {layer.name!r} on inputs [{shapes}] "
            f"({', '.join(name for name, _ in out_of_memory_in)})",
            "tactics are timed at the profile's opt shapes: build with a smaller opt (or max), or free the "
            "GPU memory held elsewhere"))
    if not timings:
        return candidates[0], {}
    if search.recheck_rounds:
        _recheck_close_calls(layer, candidates, ctx, ins, states, timings, cache, signature, device, search)
    best = min(timings, key=timings.get)
    log.info("layer %s: chose %s (%.4f ms) of %d candidates", layer.name, best, timings[best], len(timings))
    return next(c for c in candidates if c.name == best), timings


def _time(cand, state, ins, device: str, samples: int) -> float:
    return time_callable(lambda: cand.run(state, ins), device, iters=samples)


def _recheck_close_calls(layer, candidates, ctx, ins, states, timings, cache, signature, device, search) -> None:
    """Levels 4-5: time the candidates near the fastest again, rounds in alternating order,
    and replace each one's time by the median of its rounds' times (in place)."""
    fastest = min(timings.values())
    close = [c for c in candidates if c.name in timings and timings[c.name] <= fastest * (1 + search.recheck_within)]
    if len(close) < 2:
        return
    samples = {c.name: [timings[c.name]] for c in close}
    for r in range(search.recheck_rounds):
        for cand in (close if r % 2 else close[::-1]):
            try:
                if cand.name not in states:
                    states[cand.name] = cand.prepare(layer, ctx)
                samples[cand.name].append(_time(cand, states[cand.name], ins, device, search.samples))
            except Exception as exc:  # noqa: BLE001 - it ran in the first round; keep that time
                log.debug("tactic %s failed on %s when timed again: %s", cand.name, layer.name, exc)
    for name, values in samples.items():
        timings[name] = statistics.median(values)
        if cache is not None:
            cache.put(TimingCache.key(signature, device, name), timings[name])
    log.debug("  %s: timed %d close candidates %d more rounds", layer.name, len(close), search.recheck_rounds)
