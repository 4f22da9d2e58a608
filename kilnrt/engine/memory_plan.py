"""The activation memory plan an engine records (made by :func:`kilnrt.builder.memory.plan_memory`):
byte offsets in one arena, sizes and lifetimes, as plan data."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class MemoryPlan:
    offsets: dict[str, int]            # activation -> byte offset in the arena
    sizes: dict[str, int]              # activation -> bytes
    lifetimes: dict[str, tuple[int, int]]
    arena_bytes: int                   # peak with reuse
    naive_bytes: int                   # without reuse
    unknown: list[str]                 # data-dependent activations, allocated at run time

    def to_json(self) -> dict:
        return {"arena_bytes": self.arena_bytes, "naive_bytes": self.naive_bytes,
                "offsets": self.offsets, "sizes": self.sizes,
                "lifetimes": {k: list(v) for k, v in self.lifetimes.items()}, "unknown": self.unknown}

    @classmethod
    def from_json(cls, d: dict) -> "MemoryPlan":
        return cls(dict(d["offsets"]), dict(d["sizes"]), {k: tuple(v) for k, v in d["lifetimes"].items()},
                   int(d["arena_bytes"]), int(d["naive_bytes"]), list(d["unknown"]))
