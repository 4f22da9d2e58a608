"""Tactic timing and the persistent timing cache.

A timing is keyed by (layer signature, input shapes and dtypes, device name, library
versions, tactic name), so a second build of the same or a similar model reuses it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import threading
import time
from typing import Any, Callable

import torch

from kilnrt import __version__

log = logging.getLogger("kilnrt.builder")


def device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


def library_versions() -> str:
    """kilnrt's, torch's and (where installed) Triton's versions: part of every timing key."""
    try:
        import triton
    except ImportError:
        return f"kilnrt {__version__}, torch {torch.__version__}"
    return f"kilnrt {__version__}, torch {torch.__version__}, triton {triton.__version__}"


def layer_signature(layer, shapes: list) -> str:
    from kilnrt.engine.serialize import encode_params

    params = encode_params(layer.params, None) if layer.kind.value != "constant" else {}
    blob = json.dumps([layer.kind.value, params, shapes], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# 2: keys mark which inputs are constants, and the file keeps the written layouts (formats)
TIMING_CACHE_VERSION = 2


class TimingCache:
    """Timings in milliseconds by key; saved as JSON.  Beside them, by the same key, the layouts
    the tactic wrote its outputs in (``formats``: per output True for NHWC, a memory order for
    a permuted tensor of rank 5 or more, False for another layout, None for what is not a
    tensor): a warm build learns a cached winner's layouts from here instead of running it
    before its kernels are compiled."""

    def __init__(self, entries: dict[str, float] | None = None,
                 formats: dict[str, list] | None = None) -> None:
        self.entries: dict[str, float] = dict(entries or {})
        self.formats: dict[str, list] = dict(formats or {})
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(signature: str, device: str, tactic: str) -> str:
        return f"{signature}|{device_name(device)}|{library_versions()}|{tactic}"

    def get(self, key: str) -> float | None:
        v = self.entries.get(key)
        if v is None:
            self.misses += 1
        else:
            self.hits += 1
        return v

    def put(self, key: str, ms: float) -> None:
        self.entries[key] = float(ms)

    def serialize(self) -> bytes:
        return json.dumps({"format": "kilnrt-timing-cache", "version": TIMING_CACHE_VERSION,
                           "entries": self.entries, "formats": self.formats}, indent=0, sort_keys=True).encode()

    @classmethod
    def deserialize(cls, blob: bytes) -> "TimingCache":
        data = json.loads(bytes(blob).decode())
        if data.get("format") != "kilnrt-timing-cache":
            raise ValueError("not a kilnrt timing cache")
        if data.get("version") != TIMING_CACHE_VERSION:   # keyed otherwise: none of its keys would match
            log.info("a timing cache of version %s (this kilnrt keys version %d): starting an empty one",
                     data.get("version"), TIMING_CACHE_VERSION)
            return cls()
        formats = data.get("formats", {})
        if not isinstance(formats, dict) or not all(
                isinstance(v, list) and all(_layout_ok(f) for f in v) for v in formats.values()):
            raise ValueError("a kilnrt timing cache whose 'formats' is not "
                             "{key: [true | false | null | [dim, ...], ...]}")
        return cls(data.get("entries", {}),
                   {k: [tuple(f) if isinstance(f, list) else f for f in v] for k, v in formats.items()})

    @classmethod
    def load(cls, path: str) -> "TimingCache":
        if not os.path.exists(path):
            return cls()
        with open(path, "rb") as f:
            return cls.deserialize(f.read())

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(self.serialize())
        os.replace(tmp, path)

    def combine(self, other: "TimingCache", ignore_mismatch: bool = False) -> bool:
        self.entries.update(other.entries)
        self.formats.update(other.formats)
        return True

    def reset(self) -> bool:
        self.entries.clear()
        self.formats.clear()
        return True


def _layout_ok(f) -> bool:
    """A written layout as a timing cache stores it: NHWC or not, unknown, or a memory order
    (a permutation of the dims, kilnrt.builder.examples.memory_order)."""
    if f is None or isinstance(f, bool):
        return True
    return isinstance(f, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in f) \
        and sorted(f) == list(range(len(f)))


class _ThreadStreams:
    """The owner of this thread's timing streams (one per device): they go back to
    :func:`~kilnrt.engine.cudagraph.owned_stream`'s idle list when the thread ends."""

    def __init__(self) -> None:
        self.streams: dict[int, torch.cuda.Stream] = {}


_THREAD = threading.local()


def timing_stream() -> torch.cuda.Stream:
    """This thread's stream for timing captures on the current device: its own (no other
    thread's kernels can be taken into a capture on it, as they could on one of PyTorch's 32
    pooled streams), one for the thread's life (a cold build times hundreds of captures)."""
    holder = getattr(_THREAD, "holder", None)
    if holder is None:
        holder = _THREAD.holder = _ThreadStreams()
    device = torch.cuda.current_device()
    stream = holder.streams.get(device)
    if stream is None:
        from kilnrt.engine.cudagraph import owned_stream

        stream = holder.streams[device] = owned_stream(holder)
    return stream


def time_cuda_graph(fn: Callable[[], Any], iters: int = 10, repeat: int = 1, warmup: int = 3) -> float:
    """Median ms of one call of ``fn`` replayed from a CUDA graph, as engines run (the
    benchmark suite times every peer this way too). Raises if ``fn`` cannot be captured.

    The capture runs on this thread's own stream (:func:`timing_stream`) in thread-local
    mode, as engines capture: other threads may launch, allocate and synchronize meanwhile
    (``tests/test_cuda_concurrency.py``).  The capture lock keeps kilnrt's eager runs on other
    threads out of it (they read engine state a capture may be changing)."""
    from kilnrt.engine.capture_lock import CAPTURES
    from kilnrt.engine.cudagraph import CAPTURE_MODE, capturing

    side = timing_stream()
    with CAPTURES.capture() as alone:
        if not alone:
            raise RuntimeError("time_cuda_graph cannot capture now: inside a run or capture on this thread, or "
                               "other threads' eager runs did not finish within KILNRT_CAPTURE_WAIT_S")
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph: library handles, lazy init
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with capturing(graph, torch.cuda.graph_pool_handle(), side, CAPTURE_MODE):
            for _ in range(repeat):
                fn()
    for _ in range(warmup):
        graph.replay()
    samples = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / repeat)
    return statistics.median(samples)


def event_median_ms(fn: Callable[[], Any], iters: int) -> float:
    """The median GPU time of ``fn()`` in ms over ``iters`` calls, each between two CUDA events."""
    samples = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def time_callable(fn: Callable[[], Any], device: str, *, warmup: int = 3, iters: int = 10) -> float:
    """Median milliseconds of ``fn``: on the GPU replayed from a CUDA graph when it can be
    captured (launch overhead then counts as it does in an engine), else with CUDA events;
    perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        try:
            return time_cuda_graph(fn, iters, repeat=8)
        except Exception:  # noqa: BLE001 - host work inside: time it eagerly instead
            torch.cuda.synchronize()
        return event_median_ms(fn, iters)
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)
