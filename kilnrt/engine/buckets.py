"""Which tactic bucket an input-shape set runs (the builder's side: kilnrt.builder.buckets)."""
from __future__ import annotations

import math
from typing import Mapping, Sequence


def nearest_bucket(points: Sequence[Mapping[str, Sequence[int]]], shapes: Mapping[str, Sequence[int]]) -> int:
    """The index of the bucket point nearest ``shapes``: the least sum over every input dim of
    |log(dim) - log(point's dim)|, so batch 2 is as near batch 1 as batch 4 is to batch 8.
    A tie goes to the earlier point (opt's is first)."""
    best, best_d = 0, math.inf
    for i, point in enumerate(points):
        d = 0.0
        for name, dims in point.items():
            got = shapes.get(name)
            if got is None:
                continue
            d += sum(abs(math.log(max(a, 1)) - math.log(max(b, 1))) for a, b in zip(got, dims))
        if d < best_d - 1e-9:
            best, best_d = i, d
    return best


class BucketChooser:
    """:func:`nearest_bucket` for each distinct input-shape set, remembered (a few hundred)."""

    LIMIT = 512

    def __init__(self, points: Sequence[Mapping[str, Sequence[int]]]) -> None:
        self.points = [{k: tuple(v) for k, v in p.items()} for p in points]
        self._seen: dict[tuple, int] = {}

    def __call__(self, shapes: Mapping[str, Sequence[int]]) -> int:
        key = tuple(tuple(shapes[n]) if n in shapes else None for n in self.points[0])
        b = self._seen.get(key)
        if b is None:
            if len(self._seen) >= self.LIMIT:
                self._seen.clear()
            b = self._seen[key] = nearest_bucket(self.points, shapes)
        return b
