"""Tactic buckets: a second tuned choice per layer for another part of a dynamic profile.

The builder times each layer's candidates at the profile's ``opt`` shape and keeps the
fastest (:func:`kilnrt.builder.builder.select_tactics`).  Every candidate is valid over the
whole [min, max] range, but the one fastest at ``opt`` can be much slower elsewhere: a
convolution tile chosen for batch 16 leaves most of the GPU idle at batch 1.  TensorRT keeps
one choice per profile; kilnrt also times the candidates at each *bucket point* of a dynamic
profile (``BuilderConfig.tactic_buckets``: by default its ``min`` shape) and, for a layer
where another tactic beats opt's choice there by at least :data:`MIN_GAIN` (and
:data:`MIN_GAIN_MS`), keeps that tactic for the bucket (``EngineLayer.bucket_tactics``).

An alternative is kept only where it writes its outputs in the same layout as opt's choice
(so the layers after it see what they were tuned on) and where the layer does not store
into a concatenation's buffer.  At run time each input-shape set uses the tactics of the
nearest point (:func:`kilnrt.engine.buckets.nearest_bucket`); the CUDA graph of that shape
set captures them.  Weights that a tactic transforms in ``prepare`` are held once per tactic
kept.
"""
from __future__ import annotations

import logging
import time

from kilnrt.builder.examples import example_inputs, written_layouts
from kilnrt.builder.search import TacticSearch, choose_tactic
from kilnrt.errors import BuildError, ErrorCode
from kilnrt.kernels.registry import tactics_for
from kilnrt.network.infer import concrete_shapes
from kilnrt.network.layers import LayerKind

log = logging.getLogger("kilnrt.builder")

BUCKET_POINTS = ("min", "max")   # the profile shapes a bucket can be tuned at
MIN_GAIN = 0.10                  # an alternative must be this much faster at its point ...
MIN_GAIN_MS = 0.002              # ... and save at least this many ms per call there
MIN_LEVEL = 3                    # optimization levels below this tune at opt only


def check_bucket_points(points) -> tuple[str, ...]:
    """``points`` ("min", "max", a sequence of them, or None/() for none) as a checked tuple."""
    points = () if points is None else (points,) if isinstance(points, str) else tuple(points)
    bad = [p for p in points if p not in BUCKET_POINTS]
    if bad:
        raise BuildError(ErrorCode.INVALID_ARGUMENT,
                         f"tactic_buckets names {bad!r}; each bucket point is one of {', '.join(BUCKET_POINTS)} "
                         "(the profile shape its tactics are tuned at), or pass () for opt-only tuning")
    return tuple(dict.fromkeys(points))


def bucket_shapes(net, profiles: list[dict[str, tuple]], points, level: int) -> list[dict[str, tuple]]:
    """The input shapes of each bucket point, opt's first: [opt, min, ...]. Only [opt] where
    the profile's points coincide, or below :data:`MIN_LEVEL`; [] without exactly one profile."""
    if len(profiles) != 1 or not profiles[0]:
        return []
    prof = profiles[0]

    def at(k: int) -> dict[str, tuple]:   # k: 0 min, 1 opt, 2 max
        return {t.name: tuple(prof[t.name][k]) if t.name in prof else tuple(t.shape) for t in net.inputs}

    shapes = [at(1)]
    if level < MIN_LEVEL:
        return shapes
    for point in check_bucket_points(points):
        one = at(BUCKET_POINTS.index(point) * 2)
        if one not in shapes:
            shapes.append(one)
    return shapes


def tune_buckets(net, layers, ctx, points: list[dict[str, tuple]], cache, device: str,
                 search: TacticSearch, layouts: dict | None = None) -> dict:
    """For each bucket point after opt's, time every layer's candidates there and record in
    ``layer.bucket_tactics`` the ones worth keeping (module docstring). Returns a summary for
    the engine's build info."""
    t0 = time.perf_counter()
    by_name = {l.name: l for l in layers}
    # the layouts opt's chosen tactics write (select_tactics), memory orders of rank 5 and up
    # included; else what the engine layers record (NHWC or not)
    if layouts is None:
        layouts = {n: f == "channels_last" for l in layers for n, f in zip(l.outputs, l.output_formats) if f}
    kept, saved_ms = [], []
    for b, point in enumerate(points[1:], start=1):
        shapes = concrete_shapes(net, point)
        saved = 0.0
        for layer in net.layers:
            if layer.kind == LayerKind.CONSTANT:
                continue
            el = by_name[layer.name]
            candidates = tactics_for(layer, device, ctx)
            if len(candidates) < 2:
                continue
            ins = example_inputs(layer, ctx, shapes, layouts)
            if ins is None:
                continue
            best, timings = choose_tactic(layer, candidates, ctx, ins, cache, device, search)
            here = timings.get(el.tactic)
            if best.name == el.tactic or here is None or best.name not in timings:
                continue
            gain = here - timings[best.name]
            if gain < MIN_GAIN * here or gain < MIN_GAIN_MS:
                continue
            if not _same_layouts(best, layer, ctx, ins, el.output_formats, written_layouts):
                log.debug("bucket %d: %s would run %s, but it writes another layout", b, layer.name, best.name)
                continue
            el.bucket_tactics[b] = best.name
            saved += gain
            log.info("bucket %d: layer %s runs %s (%.4f ms) instead of %s (%.4f ms)", b, layer.name,
                     best.name, timings[best.name], el.tactic, here)
        kept.append(sum(1 for l in layers if b in l.bucket_tactics))
        saved_ms.append(round(saved, 4))
    return {"shapes": [{k: list(v) for k, v in p.items()} for p in points],
            "layers": kept, "saved_ms": saved_ms, "seconds": round(time.perf_counter() - t0, 3)}


def _same_layouts(tactic, layer, ctx, ins, formats, written_layouts) -> bool:
    """Whether ``tactic`` writes each output in the layout ``formats`` records for opt's choice."""
    try:
        outs = tactic.run(tactic.prepare(layer, ctx), ins)
    except Exception:  # noqa: BLE001 - it ran while being timed; a failure now disqualifies it
        return False
    return all(f is None or nhwc is None or nhwc == (f == "channels_last")
               for nhwc, f in zip(written_layouts(outs), formats))


def drop_for_concats(layers) -> None:
    """An in-place producer of a concatenation keeps opt's tactic in every bucket (the slice it
    writes was checked for that tactic only)."""
    for l in layers:
        if l.writes_into is not None:
            l.bucket_tactics.clear()
