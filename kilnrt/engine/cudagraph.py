"""Whole-engine CUDA graphs: one graph per concrete input-shape set, captured on first
use and replayed after, so a run costs one graph launch however many layers it has.

The graph's private memory pool is the context's activation arena: every activation
address is fixed at capture.  A network whose run needs the host mid-way (data-dependent
shapes) cannot be captured; it runs eagerly, and the fallback is logged once.
"""
from __future__ import annotations

import logging
import warnings
from typing import Mapping

import torch

log = logging.getLogger("kilnrt.runtime")


class GraphCache:
    def __init__(self, program) -> None:
        self.program = program
        self.graphs: dict[tuple, tuple | None] = {}

    @staticmethod
    def key(feeds: Mapping[str, torch.Tensor]) -> tuple:
        return tuple((n, tuple(t.shape), t.dtype) for n, t in sorted(feeds.items()))

    def run(self, feeds: Mapping[str, torch.Tensor], stream: torch.cuda.Stream) -> dict[str, torch.Tensor]:
        key = self.key(feeds)
        if key not in self.graphs:
            self.graphs[key] = self._capture(feeds, stream)
        entry = self.graphs[key]
        if entry is None:
            with torch.cuda.stream(stream):
                return self.program.execute(feeds)
        graph, static_in, static_out = entry
        with torch.cuda.stream(stream):
            for name, t in feeds.items():
                static_in[name].copy_(t, non_blocking=True)
            graph.replay()
        return static_out

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
                with torch.cuda.graph(graph, stream=side):
                    static_out = self.program.execute(static_in)
            stream.wait_stream(side)
        except Exception as exc:  # noqa: BLE001 - host syncs inside the run: no graph
            torch.cuda.synchronize()
            log.info("engine %s runs without a CUDA graph for shapes %s: %s", self.program.engine.name,
                     [s for _, s, _ in self.key(feeds)], str(exc).splitlines()[0][:200])
            return None
        return graph, static_in, static_out
