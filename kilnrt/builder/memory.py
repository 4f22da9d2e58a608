"""Activation memory planning by liveness.

Each activation lives from the step that produces it to the last step that reads it.
Offsets in one arena are assigned greedily (largest first, first fit among the buffers
whose lifetimes overlap), as TensorRT does; the arena's size is the peak.
"""
from __future__ import annotations

from kilnrt.engine.memory_plan import MemoryPlan

ALIGNMENT = 256


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def plan_memory(steps: list[tuple[list[str], list[str]]], sizes: dict[str, int | None],
                keep: set[str]) -> MemoryPlan:
    """``steps``: (input names, output names) in execution order; ``keep``: names not planned
    (network inputs and outputs, constants)."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, (ins, outs) in enumerate(steps):
        for n in outs:
            if n not in keep:
                first.setdefault(n, i)
                last.setdefault(n, i)
        for n in ins:
            if n in first:
                last[n] = i
    unknown = [n for n in first if sizes.get(n) is None]
    planned = sorted((n for n in first if sizes.get(n) is not None), key=lambda n: (-sizes[n], first[n]))
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    offsets: dict[str, int] = {}
    for n in planned:
        size = _align(max(int(sizes[n]), 1))
        overlapping = sorted((o, s) for o, s, f, l in placed if not (l < first[n] or last[n] < f))
        offset = 0
        for o, s in overlapping:
            if offset + size <= o:
                break
            offset = max(offset, o + s)
        offsets[n] = offset
        placed.append((offset, size, first[n], last[n]))
    arena = max((o + s for o, s, _, _ in placed), default=0)
    naive = sum(_align(max(int(sizes[n]), 1)) for n in planned)
    return MemoryPlan(offsets, {n: int(sizes[n]) for n in planned},
                      {n: (first[n], last[n]) for n in first}, arena, naive, unknown)
