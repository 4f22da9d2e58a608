"""Compile every candidate's Triton kernels in parallel before tactics are timed.

Timing a layer's candidates compiles their kernels on first launch, one after another; in a
cold build that was most of the time (Swin-T on an H200: 187 kernels, about 80 s of a 126 s
build).  Here the builder first runs each candidate that the timing pass will run, once, on
example inputs, inside :func:`kilnrt.kernels.compile_pool.discover`, which records the
kernels instead of compiling them; worker processes then compile them all at once
(:func:`~kilnrt.kernels.compile_pool.compile_all`), and the timing pass loads each one
from Triton's cache.

A layer's inputs are tried in each layout that some candidate of its producer writes (NCHW
and NHWC), since the timing pass feeds it the layout of whichever candidate wins there; a
kernel still missed compiles on launch as before.  A layer whose kind, parameters, example
inputs and candidates match one already run (a repeated block) is not run again: it launches the same
kernels, and its timings will come from the timing cache.  Candidates whose timings are all in the
timing cache are not timed again, so only the fastest of them is run (to learn its layout),
and not even that where the cache holds the layouts it wrote; when every layer is cached (a
warm build), nothing is compiled here.
"""
from __future__ import annotations

import itertools
import logging
import time

from kilnrt.builder.examples import example_inputs, written_layouts
from kilnrt.builder.search import candidates_to_run, example_signature
from kilnrt.builder.timing import TimingCache
from kilnrt.kernels.registry import tactics_for
from kilnrt.network.layers import LayerKind

log = logging.getLogger("kilnrt.builder")


def precompile(net, config, shapes, ctx, search, cache, workers: int) -> dict | None:
    """Discover and compile the Triton kernels the timing pass will launch; returns the
    counts and times for ``build_info`` (None when nothing was done)."""
    if config.device != "cuda" or shapes is None or not search.timed or workers < 2:
        return None
    from kilnrt.kernels import compile_pool

    if not compile_pool.available():
        return None
    t0 = time.perf_counter()
    layouts: dict[str, set] = {}   # activation -> the layouts some producer candidate writes
    runs = fresh = repeats = 0   # candidate runs; layers to be timed; layers like one already run
    # (example signature, candidates) -> the layouts each output was written in: a layer whose
    # kind, params, example inputs and candidates match one already run (a repeated block)
    # launches the same kernels, and the timing pass will find its timings in the cache; only
    # its layouts are recorded again
    written_by: dict[tuple, list[set]] = {}
    with compile_pool.discover() as found:
        for layer in net.layers:
            if layer.kind == LayerKind.CONSTANT:
                continue
            candidates = tactics_for(layer, config.device, ctx)
            for variant in _layout_variants(layer, layouts):
                ins = example_inputs(layer, ctx, shapes, variant)
                if ins is None:
                    break
                signature = example_signature(layer, ins)
                seen = (signature, tuple(c.name for c in candidates))   # the same kernels only with the same candidates
                if seen in written_by:
                    repeats += 1
                    _merge_layouts(layer, written_by[seen], layouts)
                    continue
                to_run, timed = candidates_to_run(layer, candidates, ins, cache, config.device, search, signature)
                fresh += timed
                written = [set() for _ in layer.outputs]
                known = None if timed or len(to_run) != 1 or cache is None else \
                    cache.formats.get(TimingCache.key(signature, config.device, to_run[0].name))
                if known is not None:   # a cached winner whose layouts the cache holds: nothing to run
                    to_run = []
                    _add_layouts(written, known)
                for cand in to_run:
                    runs += 1
                    try:
                        outs = cand.run(cand.prepare(layer, ctx), ins)
                    except Exception as exc:  # noqa: BLE001 - the timing pass reports real failures
                        log.debug("discovery run of %s on %s failed: %s", cand.name, layer.name, exc)
                        continue
                    _add_layouts(written, written_layouts(outs))
                written_by[seen] = written
                _merge_layouts(layer, written, layouts)
    discovered_s = time.perf_counter() - t0
    # every timing cached (a warm build): the few chosen kernels are most likely in Triton's
    # cache already, and loading them one by one beats starting workers
    stats = compile_pool.compile_all(found, workers if fresh else 0)
    stats.update(discovery_runs=runs, discovery_s=round(discovered_s, 2), timed_layers=fresh, repeated_layers=repeats)
    return stats


def _add_layouts(written: list[set], layouts: list) -> None:
    """Add one run's layouts (``examples.written_layouts``, or the timing cache's copy of them)
    to the sets of layouts each output was written in."""
    for w, layout in zip(written, layouts):
        if layout is not None:
            w.add(layout)


def _merge_layouts(layer, written: list[set], layouts: dict[str, set]) -> None:
    """The layouts ``layer``'s outputs were written in, into the build's by-tensor record."""
    for t, w in zip(layer.outputs, written):
        if w:
            layouts.setdefault(t.name, set()).update(w)


def _layout_variants(layer, layouts: dict[str, set]) -> list[dict]:
    """Each combination of the layouts this layer's inputs may arrive in (at most 4: the first
    two inputs written in several layouts, two layouts each)."""
    names = [t.name for t in layer.inputs if t is not None and len(layouts.get(t.name, ())) > 1][:2]
    fixed = {t.name: next(iter(layouts[t.name])) for t in layer.inputs
             if t is not None and len(layouts.get(t.name, ())) == 1}
    if not names:
        return [fixed]
    # row-major and NHWC first, then memory orders: a tensor written in several orders keeps row-major
    choices = [sorted(layouts[n], key=lambda v: (not isinstance(v, bool), repr(v)))[:2] for n in names]
    return [dict(fixed, **dict(zip(names, combo))) for combo in itertools.product(*choices)]
