"""Whole-engine CUDA graphs: one graph per concrete input-shape set, captured on first
use and replayed after, so a run costs one graph launch however many layers it has.

Shape computations run on the host before launch (:mod:`kilnrt.engine.shape_program`), so
a dynamic-shape engine captures like a static one.  The graphs of one context share one
memory pool (one activation arena, as large as the largest shape set needs).  The cache is
bounded by a count and by the bytes the graphs' inputs and outputs hold
(:class:`GraphCacheConfig`); the least recently used graph goes first.  A network whose run
needs the host mid-way (data-dependent shapes) cannot be captured; it runs eagerly, and the
fallback is logged once per shape set.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections import OrderedDict
from typing import Mapping

import torch

log = logging.getLogger("kilnrt.runtime")


@dataclasses.dataclass
class GraphCacheConfig:
    """Bounds of a context's CUDA-graph cache: ``max_graphs`` shape sets (env
    ``KILNRT_GRAPH_CACHE_SIZE``, default 32) and ``max_bytes`` of graph-owned inputs and
    outputs (env ``KILNRT_GRAPH_CACHE_BYTES``, default 4 GiB)."""

    max_graphs: int = dataclasses.field(default_factory=lambda: int(os.environ.get("KILNRT_GRAPH_CACHE_SIZE", 32)))
    max_bytes: int = dataclasses.field(
        default_factory=lambda: int(os.environ.get("KILNRT_GRAPH_CACHE_BYTES", 4 << 30)))


@dataclasses.dataclass
class GraphStats:
    captures: int = 0             # graphs captured (one per new shape set)
    replays: int = 0
    evictions: int = 0
    eager_runs: int = 0           # runs of shape sets that could not be captured
    last_capture_ms: float = 0.0  # the first call at the newest shape set, capture included
    fallback_reason: str = ""     # why the newest uncaptured shape set could not be captured


class GraphCache:
    def __init__(self, program, config: GraphCacheConfig | None = None) -> None:
        self.program = program
        self.config = config or GraphCacheConfig()
        self.graphs: OrderedDict[tuple, tuple | None] = OrderedDict()
        self.stats = GraphStats()
        self._pool = torch.cuda.graph_pool_handle()
        self._bytes: dict[tuple, int] = {}

    @staticmethod
    def key(feeds: Mapping[str, torch.Tensor]) -> tuple:
        return tuple((n, tuple(t.shape), t.dtype) for n, t in sorted(feeds.items()))

    @property
    def bytes(self) -> int:
        return sum(self._bytes.values())

    def run(self, feeds: Mapping[str, torch.Tensor], stream: torch.cuda.Stream) -> dict[str, torch.Tensor]:
        key = self.key(feeds)
        entry = self.graphs.get(key, False)
        if entry is False:
            t0 = time.perf_counter()
            entry = self.graphs[key] = self._capture(feeds, stream)
            self._evict(keep=key)
            if entry is not None:
                self.stats.captures += 1
                self.stats.last_capture_ms = (time.perf_counter() - t0) * 1e3
        else:
            self.graphs.move_to_end(key)
        if entry is None:
            self.stats.eager_runs += 1
            with torch.cuda.stream(stream):
                return self.program.execute(feeds)
        graph, static_in, static_out, _ = entry
        with torch.cuda.stream(stream):
            for name, t in feeds.items():
                if t.data_ptr() != static_in[name].data_ptr():
                    static_in[name].copy_(t, non_blocking=True)
            graph.replay()
        self.stats.replays += 1
        return static_out

    def _evict(self, keep: tuple) -> None:
        while len(self.graphs) > 1 and (len(self.graphs) > self.config.max_graphs or
                                        self.bytes > self.config.max_bytes):
            old = next(k for k in self.graphs if k != keep)
            del self.graphs[old]
            self._bytes.pop(old, None)
            self.stats.evictions += 1

    def _capture(self, feeds: Mapping[str, torch.Tensor], stream: torch.cuda.Stream):
        static_in = {n: torch.empty_like(t, device="cuda") for n, t in feeds.items()}
        for n, t in feeds.items():
            static_in[n].copy_(t)
        side = torch.cuda.Stream()
        side.wait_stream(stream)
        try:
            with torch.cuda.stream(side):
                self.program.execute(static_in)  # warm-up: library handles, autotuning, lazy init
            stream.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with warnings.catch_warnings():  # a failed capture warns of an empty graph: we log instead
                warnings.simplefilter("ignore")
                with torch.cuda.graph(graph, pool=self._pool, stream=side):
                    static_out = self.program.execute(static_in)
            stream.wait_stream(side)
        except Exception as exc:  # noqa: BLE001 - host syncs inside the run: no graph
            torch.cuda.synchronize()
            self.stats.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log.info("engine %s runs without a CUDA graph for shapes %s: %s", self.program.engine.name,
                     [s for _, s, _ in self.key(feeds)], str(exc).splitlines()[0][:200])
            return None
        key = self.key(feeds)
        self._bytes[key] = sum(t.numel() * t.element_size() for t in list(static_in.values()) + list(static_out.values()))
        # the shape program's device values this graph reads: kept alive with it, whatever the
        # program's own cache of them drops
        reads = self.program.host_values(static_in)[1]
        return graph, static_in, static_out, reads
