"""Whole-engine CUDA graphs: one graph per concrete input-shape set, captured on first
use and replayed after, so a run costs one graph launch however many layers it has.

Shape computations run on the host before launch (:mod:`kilnrt.engine.shape_program`), so
a dynamic-shape engine captures like a static one.  The graphs of one context share one
memory pool (one activation arena, as large as the largest shape set needs), until a capture
fails: later graphs then go to a new pool (:class:`GraphPool`).  The cache is
bounded by a count and by the bytes the graphs' inputs and outputs hold
(:class:`GraphCacheConfig`); the least recently used graph goes first.  A network whose run
needs the host mid-way (data-dependent shapes) cannot be captured; it runs eagerly, and the
fallback is logged once per shape set.

Two caches use these graphs:

- :class:`GraphCache` serves ``engine.run`` / ``context.run``: inputs arrive in new tensors
  on every call, so each graph owns static inputs and outputs, and a run copies the inputs
  in and the caller gets copies of the outputs.
- :class:`BoundGraphs` serves ``execute_async_v3`` on buffers bound with
  ``set_tensor_address``: the graph reads the bound inputs and writes the bound outputs
  where they are, so a call is one graph launch (:func:`launch`) with nothing copied.  A
  graph is keyed by the bound addresses, shapes and dtypes; binding other buffers captures
  another one.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import time
import warnings
import weakref
from collections import OrderedDict
from typing import Mapping

import torch

from kilnrt.device import out_of_memory
from kilnrt.engine.capture_lock import CAPTURES
from kilnrt.engine.graph_admission import Admission
from kilnrt.errors import ErrorCode, ExecutionError, KilnError

log = logging.getLogger("kilnrt.runtime")

# A capture forbids unsafe calls (cudaMalloc, a sync) on the capturing thread only: in the
# default ("global") mode, another thread's context that allocates or syncs while this one
# captures fails, and breaks this capture too.  Eager runs on other threads wait for the
# capture (kilnrt.engine.capture_lock).
CAPTURE_MODE = "thread_local"


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
    declined: int = 0             # runs without a graph at shape sets a full cache did not admit
    last_capture_ms: float = 0.0  # the first call at the newest shape set, capture included
    fallback_reason: str = ""     # why the newest uncaptured shape set could not be captured


@functools.cache
def _driver():
    """The CUDA driver library with the calls used here typed, or None where it cannot be loaded."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
        for name in ("cuGraphLaunch", "cuCtxGetCurrent", "cuStreamCreate"):
            getattr(driver, name).restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    driver.cuGraphLaunch.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return driver


_DRIVER = _driver() if torch.cuda.is_available() else None
_LAUNCH = _DRIVER.cuGraphLaunch if _DRIVER is not None else None   # cuGraphLaunch(exec, stream)


# Handles of owned streams that nothing uses now, by device.  An owned stream is never
# destroyed (PyTorch's caching allocator remembers the streams its blocks were used on and
# calls the driver with them later); once its owner is gone it goes back here, and the next
# owner takes it, so as many streams are made as are ever in use at once.  The owner, not the
# stream object, is watched: PyTorch's CUDA stream objects take weak references but never
# clear them when they die (torch 2.11), so a finalizer on one never runs and its weak
# reference outlives the object (with finalizers on stream objects, the H200 showed "context
# is destroyed" errors and segfaults at interpreter exit).
_IDLE_STREAMS: dict[int, list[int]] = {}


def owned_stream(owner: object) -> torch.cuda.Stream:
    """A non-blocking CUDA stream that no one else uses while ``owner`` lives, for captures.
    ``torch.cuda.Stream()`` hands out one of 32 pooled streams round-robin, so two contexts
    (or a context and the caller) can get the same one; a capture on it would then take in
    the other's kernels, and their work would never run.  Made with the driver, and handed to
    the next caller once ``owner`` (a plain Python object that takes weak references, which
    keeps the returned stream) is garbage; never destroyed.  A pooled stream where the driver
    cannot be reached."""
    driver = _driver()
    if driver is None:
        return torch.cuda.Stream()
    device = torch.cuda.current_device()
    idle = _IDLE_STREAMS.setdefault(device, [])
    try:
        handle = idle.pop()   # atomic under the GIL: one taker per handle
    except IndexError:
        handle = _new_stream(driver)
    weakref.finalize(owner, idle.append, handle).atexit = False
    return torch.cuda.ExternalStream(handle, device=device)


def _new_stream(driver) -> int:
    ctx = ctypes.c_void_p()
    if driver.cuCtxGetCurrent(ctypes.byref(ctx)) == 0 and not ctx.value:   # a thread the runtime has not set up
        torch.cuda.current_stream().synchronize()   # a runtime call: makes the device's context current
    handle = ctypes.c_void_p()
    err = driver.cuStreamCreate(ctypes.byref(handle), 1)   # CU_STREAM_NON_BLOCKING
    if err:
        raise RuntimeError(f"cuStreamCreate failed with CUDA driver error {err}")
    return handle.value


if hasattr(torch._C, "_cuda_getCurrentRawStream") and hasattr(torch._C, "_cuda_getDevice"):
    def current_raw_stream() -> int:
        """The current CUDA stream's handle (two C calls: a fraction of a microsecond)."""
        return torch._C._cuda_getCurrentRawStream(torch._C._cuda_getDevice())
else:
    def current_raw_stream() -> int:
        return torch.cuda.current_stream().cuda_stream


def launcher(graph: "torch.cuda.CUDAGraph"):
    """A callable ``f(raw_stream)`` that launches ``graph`` on that stream: one driver call
    on its instantiated executable where the driver can be reached, else ``graph.replay()``
    with the stream made current (a few microseconds more of host time)."""
    exec_handle = graph.raw_cuda_graph_exec() if _LAUNCH is not None else 0
    if exec_handle:
        def launch(stream: int) -> None:
            err = _LAUNCH(exec_handle, stream)
            if err:
                raise RuntimeError(f"cuGraphLaunch failed with CUDA driver error {err}")
        return launch

    def replay(stream: int) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            graph.replay()
    return replay


@contextlib.contextmanager
def capturing(graph: "torch.cuda.CUDAGraph", pool: tuple, stream: torch.cuda.Stream, mode: str = CAPTURE_MODE):
    """``torch.cuda.graph(graph, pool, stream)`` (its empty-graph warning silenced) that leaves
    PyTorch as it found it when the capture fails.  A failed capture makes ``capture_end``
    raise before it has done its bookkeeping (torch 2.11), and seen on the H200 that left: the
    capture stream current for the rest of the thread (a freed 4.8 GiB input, allocated on it
    afterwards, stayed reserved after ``empty_cache``); the allocator still recording into
    ``pool`` (its next capture refuses, and the pool is never freed); and the CUDA random
    generator in capture mode, so the next ``torch.randn`` on the GPU raised "Offset increment
    outside graph capture encountered unexpectedly".  Each is undone here
    (:func:`_undo_failed_capture`), and the capture's own error goes on."""
    before = torch.cuda.current_stream()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode=mode):
                yield
    except BaseException:
        _undo_failed_capture(before, pool, stream, mode)
        raise


def _undo_failed_capture(before: torch.cuda.Stream, pool: tuple, stream: torch.cuda.Stream, mode: str) -> None:
    """Each step on its own: one that fails is logged, and the others still run."""
    try:
        device = torch.cuda.current_device()
        end = getattr(torch._C, "_cuda_endAllocateToPool", None)
        release = getattr(torch._C, "_cuda_releasePool", None)
        if end is not None:
            try:
                end(device, pool)
            except RuntimeError:
                # capture_end ended the recording itself; if it failed after that (before the
                # graph counted as captured), the pool keeps the failed graph's share: a leak
                pass
            else:
                if release is not None:
                    release(device, pool)   # the failed graph's share of the pool, which it never gives back
    except Exception as exc:  # noqa: BLE001 - PyTorch's private allocator calls: report, go on
        log.warning("after a failed CUDA-graph capture, its memory pool could not be released: %s", exc)
    finally:
        torch.cuda.set_stream(before)
    # an empty capture runs the random generator's capture prologue and epilogue: out of capture mode
    try:
        torch.cuda.synchronize()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.cuda.graph(torch.cuda.CUDAGraph(), stream=stream, capture_error_mode=mode):
                pass
    except Exception as exc:  # noqa: BLE001 - the capture's own error matters more
        log.warning("after a failed CUDA-graph capture, CUDA's random generator may still be in capture mode: %s",
                    exc)
    finally:
        torch.cuda.set_stream(before)


class GraphPool:
    """The CUDA-graph memory pool that a context's graphs share, which a failed capture leaves
    for a new one.  Seen on the H200 (torch 2.11) after a failed capture, even once
    :func:`capturing` had ended the caching allocator's recording and given the failed
    graph's share back: the next capture into the same pool was refused, "beginAllocateToPool:
    already recording to mempool_id" (PyTorch's pinned-host allocator records into the pool
    too, and Python cannot end that recording), or "use_count > 0 INTERNAL ASSERT FAILED" where
    the failed capture had been the pool's only user.  Either way the context ran every new
    shape set eagerly for good.

    So after a failed capture, later graphs go to a new pool.  The graphs captured before keep
    the old one, and its memory, until they are freed: each failure can cost one more
    activation arena while older graphs live (a pool with no graph left is freed by PyTorch's
    next ``empty_cache``, which every capture calls).  The failed graphs are kept as long as
    this object: in PyTorch's source, the pinned-host allocator's leftover recording holds a
    filter that reads its graph object, which must not be freed under it."""

    def __init__(self) -> None:
        self.handle = torch.cuda.graph_pool_handle()
        self._failed: list = []

    @contextlib.contextmanager
    def capture(self, graph: "torch.cuda.CUDAGraph", stream: torch.cuda.Stream):
        """:func:`capturing` into this pool; a failure moves later captures to a new pool."""
        try:
            with capturing(graph, self.handle, stream):
                yield
        except BaseException:
            self._failed.append(graph)
            self.handle = torch.cuda.graph_pool_handle()
            raise


def _raise_if_out_of_memory(exc: Exception, where: str) -> None:
    """A capture that ran out of memory is an error, not a shape set to run eagerly from now on
    (the memory may be back by the next call)."""
    if isinstance(exc, KilnError) and exc.code == ErrorCode.OUT_OF_MEMORY:
        raise exc
    if isinstance(exc, torch.OutOfMemoryError):
        raise ExecutionError(ErrorCode.OUT_OF_MEMORY, out_of_memory(str(exc), where)) from None


class GraphCache:
    def __init__(self, program, config: GraphCacheConfig | None = None, pool: GraphPool | None = None) -> None:
        self.program = program
        self.config = config or GraphCacheConfig()
        self.graphs: OrderedDict[tuple, tuple | None] = OrderedDict()
        self.stats = GraphStats()
        self._pool = pool if pool is not None else GraphPool()
        self._bytes: dict[tuple, int] = {}
        self.generation = 0   # bumped by every eviction: a run's remembered graph may be gone
        self._side = None     # the stream graphs are captured on (made on the first capture)
        self.admission = Admission(self.config.max_graphs)   # run() and the context's replays count

    @staticmethod
    def key(feeds: Mapping[str, torch.Tensor]) -> tuple:
        return tuple((n, tuple(t.shape), t.dtype) for n, t in sorted(feeds.items()))

    @property
    def bytes(self) -> int:
        return sum(self._bytes.values())

    def run(self, feeds: Mapping[str, torch.Tensor], stream: torch.cuda.Stream | None = None,
            key: tuple | None = None) -> dict[str, torch.Tensor]:
        """Run on ``stream`` (None: the current one); ``key``: :meth:`key` of ``feeds`` if the
        caller has it."""
        key = key or self.key(feeds)
        self.admission.seen(key)
        entry = self.graphs.get(key, False)
        if entry is False and not self._admits(key):
            self.stats.declined += 1
            return self._eager(feeds, stream)
        if entry is False:
            stream = stream or torch.cuda.current_stream()
            t0 = time.perf_counter()
            with CAPTURES.capture() as alone:
                # not alone: inside another run on this thread; run eagerly, capture next time
                entry = self._capture(feeds, stream) if alone else None
            if alone:
                self.graphs[key] = entry
                self._evict(keep=key)
            if entry is not None:
                self.stats.captures += 1
                self.stats.last_capture_ms = (time.perf_counter() - t0) * 1e3
        else:
            self.graphs.move_to_end(key)
        if entry is None:
            self.stats.eager_runs += 1
            return self._eager(feeds, stream)
        graph, static_in, static_out, _, launch = entry
        if stream is None:
            for name, t in feeds.items():
                static_in[name].copy_(t, non_blocking=True)
            launch(current_raw_stream())
        else:
            with torch.cuda.stream(stream):
                for name, t in feeds.items():
                    static_in[name].copy_(t, non_blocking=True)
            launch(stream.cuda_stream)
        self.stats.replays += 1
        return static_out

    def _eager(self, feeds: Mapping[str, torch.Tensor], stream: torch.cuda.Stream | None) -> dict[str, torch.Tensor]:
        """A run without a graph, on ``stream`` (None: the current one)."""
        if stream is None:
            return self.program.execute(feeds)
        with torch.cuda.stream(stream):
            return self.program.execute(feeds)

    def _admits(self, key: tuple) -> bool:
        """Room for one more graph (by count, and by bytes with the new graph taken to be as
        large as the largest one held), or ``key`` asked for more often than the least recently
        used entry (:class:`~kilnrt.engine.graph_admission.Admission`).  An entry that holds no
        graph (a shape set that could not be captured) always gives way."""
        if not self.graphs:
            return True
        largest = max(self._bytes.values(), default=0)
        if len(self.graphs) < self.config.max_graphs and self.bytes + largest <= self.config.max_bytes:
            return True
        victim = next(iter(self.graphs))
        return self.graphs[victim] is None or self.admission.admits(key, victim)

    def _evict(self, keep: tuple) -> None:
        while len(self.graphs) > 1 and (len(self.graphs) > self.config.max_graphs or
                                        self.bytes > self.config.max_bytes):
            old = next(k for k in self.graphs if k != keep)
            del self.graphs[old]
            self._bytes.pop(old, None)
            self.stats.evictions += 1
            self.generation += 1

    def _capture(self, feeds: Mapping[str, torch.Tensor], stream: torch.cuda.Stream):
        said = None
        try:   # the graph's own inputs
            static_in = {n: torch.empty_like(t, device="cuda") for n, t in feeds.items()}
        except torch.OutOfMemoryError as exc:
            said = str(exc)
        if said is not None:
            raise ExecutionError(ErrorCode.OUT_OF_MEMORY, out_of_memory(
                said, "allocating the CUDA graph's copy of the inputs of engine.run"))
        for n, t in feeds.items():
            static_in[n].copy_(t)
        if self._side is None:
            self._side = owned_stream(self)
        side = self._side
        side.wait_stream(stream)
        try:
            with torch.cuda.stream(side):
                self.program.execute(static_in)  # warm-up: library handles, autotuning, lazy init
            stream.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with self._pool.capture(graph, side):
                static_out = self.program.execute(static_in)
            stream.wait_stream(side)
        except Exception as exc:  # noqa: BLE001 - host syncs inside the run: no graph
            torch.cuda.synchronize()
            _raise_if_out_of_memory(exc, "capturing engine.run's CUDA graph")
            self.stats.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log.info("engine %s runs without a CUDA graph for shapes %s: %s", self.program.engine.name,
                     [s for _, s, _ in self.key(feeds)], str(exc).splitlines()[0][:200])
            return None
        key = self.key(feeds)
        self._bytes[key] = sum(t.numel() * t.element_size() for t in list(static_in.values()) + list(static_out.values()))
        # the shape program's device values this graph reads: kept alive with it, whatever the
        # program's own cache of them drops
        reads = self.program.host_values(static_in)[1]
        return graph, static_in, static_out, reads, launcher(graph)


class BoundGraph:
    """One captured run on bound buffers: launching it reads the bound inputs and writes the
    bound outputs in place."""
    __slots__ = ("graph", "launch", "output_shapes", "keep")

    def __init__(self, graph, launch, output_shapes: dict[str, tuple[int, ...]], keep: tuple) -> None:
        self.graph, self.launch, self.output_shapes, self.keep = graph, launch, output_shapes, keep


class BoundGraphs:
    """The graphs of ``execute_async_v3`` on bound buffers, by (program, bound addresses,
    shapes and dtypes); least recently used first out, at most ``config.max_graphs``."""

    def __init__(self, config: GraphCacheConfig | None = None, pool: GraphPool | None = None) -> None:
        self.config = config or GraphCacheConfig()
        self.graphs: OrderedDict[tuple, BoundGraph | None] = OrderedDict()
        self.stats = GraphStats()
        self._pool = pool if pool is not None else GraphPool()
        self._side = owned_stream(self)
        self._programs: dict[int, object] = {}   # optimization profile -> the program its graphs ran

    def use(self, profile: int, program) -> None:
        """Drop profile ``profile``'s graphs if they were captured with another program than
        ``program`` (a refit made a new one: the old graphs read the old weights).  Keys start
        with the profile."""
        old = self._programs.get(profile)
        if old is not None and old is not program:
            for key in [k for k in self.graphs if k[0] == profile]:
                del self.graphs[key]
        self._programs[profile] = program

    @staticmethod
    def key(program, feeds: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> tuple:
        return (id(program),
                tuple((n, t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype) for n, t in feeds.items()),
                tuple((n, t.data_ptr(), t.numel(), t.dtype) for n, t in targets.items()))

    def get(self, key: tuple):
        """The graph for ``key``; None where that run could not be captured; False if not seen."""
        entry = self.graphs.get(key, False)
        if entry is not False:
            self.graphs.move_to_end(key)
        return entry

    def capture(self, key: tuple, program, feeds: Mapping[str, torch.Tensor], write, stream: torch.cuda.Stream):
        """Capture ``program`` on ``feeds`` followed by ``write(outputs)`` (which stores the
        outputs into the bound buffers and raises if they do not fit).  An eager run first
        (lazy initialization, and the size checks before anything is captured).  Returns the
        :class:`BoundGraph`, or None (logged) when the run cannot be captured."""
        with CAPTURES.capture() as alone:
            # not alone: inside another run on this thread; run eagerly, capture next time
            return self._capture(key, program, feeds, write, stream) if alone else None

    def _capture(self, key: tuple, program, feeds: Mapping[str, torch.Tensor], write, stream: torch.cuda.Stream):
        t0 = time.perf_counter()
        side = self._side
        side.wait_stream(stream)
        with torch.cuda.stream(side):
            outputs = program.execute(feeds)
            write(outputs)   # a buffer too small raises here, before any capture
        output_shapes = {n: tuple(v.shape) for n, v in outputs.items()}
        del outputs
        try:
            graph = torch.cuda.CUDAGraph()
            with self._pool.capture(graph, side):
                write(program.execute(feeds))
            stream.wait_stream(side)
        except Exception as exc:  # noqa: BLE001 - host syncs inside the run: no graph
            torch.cuda.synchronize()
            _raise_if_out_of_memory(exc, "capturing execute_async_v3's CUDA graph")
            self.stats.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log.info("engine %s runs bound buffers without a CUDA graph: %s", program.engine.name,
                     str(exc).splitlines()[0][:200])
            self.graphs[key] = None
            return None
        entry = BoundGraph(graph, launcher(graph), output_shapes,
                           (program.host_values(feeds)[1], dict(feeds)))
        self.graphs[key] = entry
        self.stats.captures += 1
        self.stats.last_capture_ms = (time.perf_counter() - t0) * 1e3
        while len(self.graphs) > self.config.max_graphs:
            self.graphs.popitem(last=False)
            self.stats.evictions += 1
        return entry
