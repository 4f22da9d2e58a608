"""Seeded random inputs for a zoo model, from its manifest entry (numpy only)."""
from __future__ import annotations

import numpy as np


def concrete_shape(shape: list, dims: dict) -> tuple:
    """``["batch", "seq"]`` with ``{"batch": 3, "seq": 13}`` -> ``(3, 13)``."""
    return tuple(int(dims[d]) if isinstance(d, str) else int(d) for d in shape)


def make_feeds(inputs: list, dims: dict, seed: int) -> dict:
    """One array per input: floats standard normal, ids uniform in [low, high), attention
    masks right-padded (row 0 full, the other rows at least half full). Never all zeros."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = concrete_shape(spec["shape"], dims)
        if spec["kind"] == "float":
            feeds[spec["name"]] = rng.standard_normal(shape).astype(np.float32)
        elif spec["kind"] == "ids":
            feeds[spec["name"]] = rng.integers(spec["low"], spec["high"], shape).astype(np.int64)
        elif spec["kind"] == "mask":
            batch, seq = shape
            mask = np.ones(shape, dtype=np.int64)
            for row in range(1, batch):
                mask[row, rng.integers(max(1, (seq + 1) // 2), seq + 1):] = 0
            feeds[spec["name"]] = mask
        else:
            raise ValueError(f"unknown input kind {spec['kind']!r}")
    return feeds


def rel_l2(actual, expected) -> float:
    """||actual - expected|| / ||expected|| in float64 (0 when both are zero)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return float("inf")
    den = np.linalg.norm(e)
    num = np.linalg.norm(a - e)
    return float(num / den) if den > 0 else float(num)
