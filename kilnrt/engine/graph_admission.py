"""Which shape sets a full CUDA-graph cache takes in.

A context captures one CUDA graph per shape set and keeps the most recent ``max_graphs``.  A
workload that cycles through more shape sets than that (a dynamic batcher's every size from 1
to 64, a text model's every sequence length) would, with plain least-recently-used eviction,
capture a graph on nearly every call: a warm-up run, a captured run and the graph's
instantiation, many times the cost of running the engine once.  So a full cache admits a
newcomer only when it has been asked for more often than the graph it would evict (the
least recently used), as TinyLFU does for caches whose entries are expensive to make; a
shape set that is not admitted runs without a graph.  Every ``16 x max_graphs`` requests all
counts are halved (and those at one dropped), so they follow what is asked for now, not what
was asked for an hour ago: a shape that becomes common gets its graph within a few such
windows.
"""
from __future__ import annotations

from typing import Hashable


class Admission:
    """Counts of how often each key was asked for, and the admission decision."""

    def __init__(self, capacity: int) -> None:
        self.counts: dict[Hashable, int] = {}
        self.window = max(64, 16 * capacity)   # requests between two halvings of the counts
        self._left = self.window

    def seen(self, key: Hashable) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        self._left -= 1
        if not self._left:
            self.counts = {k: c // 2 for k, c in counts.items() if c > 1}
            self._left = self.window

    def admits(self, key: Hashable, victim: Hashable) -> bool:
        """Whether ``key`` may take the place of ``victim`` (the entry that would be evicted)."""
        return self.counts.get(key, 0) > self.counts.get(victim, 0)
