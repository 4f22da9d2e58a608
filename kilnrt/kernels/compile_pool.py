"""Compile Triton kernels in parallel, before they are first launched.

A build launches every candidate kernel of every layer once to time it, and each launch of a
new specialization compiles it: about 0.4 s of one core each (ptxas alone 0.25 s), hundreds
of them in a model, one after another.  This module splits that into two steps:

1. :func:`discover`: inside it, a launch whose kernel is not compiled yet records what
   Triton would compile (the kernel and its specialization: signature, constants, options,
   target) and launches nothing.  The builder runs its candidates once this way.
2. :func:`compile_all`: the recorded kernels are compiled by worker processes, forked from
   this one, each calling ``triton.compile`` with the recorded target, so that none of them
   touches the GPU.  They write Triton's on-disk cache; the timing pass that follows loads
   each kernel from there in milliseconds.

Nothing depends on the first step being complete: a kernel it missed (a specialization the
timing pass reaches with other strides, say) is compiled on first launch as before, and a
worker that fails leaves its kernel to the same path.  Uses Triton's ``jit_cache_hook``; on
a Triton without it, :func:`available` is False and builds compile as they always did.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import json
import logging
import multiprocessing
import os
import time
import warnings

log = logging.getLogger("kilnrt.builder")

# the kernels to compile, and those whose workers build the launcher of their signature, set
# before the workers are forked (they read them from their copy)
_REQUESTS: list[tuple] = []
_LAUNCHERS: set[int] = set()


def available() -> bool:
    try:
        import triton.compiler
        from triton import knobs
    except ImportError:
        return False
    return hasattr(triton.compiler, "ASTSource") and hasattr(knobs, "runtime") \
        and hasattr(knobs.runtime, "jit_cache_hook") and "fork" in multiprocessing.get_all_start_methods()


class Discovered:
    """The kernels recorded by :func:`discover`, one per (kernel, specialization)."""

    def __init__(self) -> None:
        self.requests: dict[tuple, tuple] = {}
        self.target = None   # the GPU's Triton target, asked once
        self.unrecorded = 0  # compiles the hook could not record (they ran as usual)

    def __len__(self) -> int:
        return len(self.requests)

    def hook(self, *, key=None, fn=None, compile=None, **_) -> bool:
        """Triton's ``jit_cache_hook``: record the kernel, and say it is handled (nothing is
        compiled or launched)."""
        try:
            jit_fn = fn.jit_function
            data = json.loads(compile["specialization_data"])
            options = {k: tuple(v) if isinstance(v, list) else v for k, v in data["options"].items()}
            if self.target is None:
                from triton.runtime import driver

                self.target = driver.active.get_current_target()
            request = (jit_fn, compile["signature"], compile["constants"], compile["configs"][0], options,
                       self.target)
        except Exception as exc:  # noqa: BLE001 - an unexpected Triton: let it compile as usual
            if not self.unrecorded:
                log.info("cannot record a Triton compile (%s: %s): such kernels compile on launch",
                         type(exc).__name__, exc)
            self.unrecorded += 1
            return False
        self.requests.setdefault((id(jit_fn), repr(key)), request)
        return True


@contextlib.contextmanager
def discover():
    """Inside: launches of kernels that are not compiled yet are recorded, not run."""
    from triton import knobs

    found = Discovered()
    previous = knobs.runtime.jit_cache_hook
    knobs.runtime.jit_cache_hook = found.hook
    try:
        yield found
    finally:
        knobs.runtime.jit_cache_hook = previous


def _compile_one(index: int) -> str | None:
    """In a worker: compile request ``index`` into Triton's cache, and its launcher where it is
    the first request of its signature (:func:`_build_launcher`); None, or the error."""
    try:
        from triton import compile as triton_compile
        from triton.compiler import ASTSource

        jit_fn, signature, constants, attrs, options, target = _REQUESTS[index]
        kernel = triton_compile(ASTSource(jit_fn, signature, constants, attrs), target=target, options=options)
    except Exception as exc:  # noqa: BLE001 - reported; the kernel compiles on launch instead
        return f"{getattr(_REQUESTS[index][0], '__name__', '?')}: {type(exc).__name__}: {str(exc)[:200]}"
    if index in _LAUNCHERS:
        _build_launcher(kernel)
    return None


def _build_launcher(kernel) -> None:
    """Build the kernel's host-side launcher into Triton's cache.  Triton up to 3.6 generates a
    C launcher for each kernel signature and compiles it with the C compiler when a kernel of
    that signature is first loaded: in the building process, one after another, about 0.3 s
    each (18 of them, 5.5 s, in an H200 build of maxvit_t).  Constructing it here compiles it in
    the worker instead; the building process then loads it from the cache.  (Newer Triton has
    one generic launcher, and this costs nothing.)  Nothing touches the GPU."""
    try:
        from triton.runtime import driver

        driver.active.launcher_cls(kernel.src, kernel.metadata)
    except Exception as exc:  # noqa: BLE001 - the launcher is then built on first load, as before
        log.debug("building the launcher of %s in a worker failed: %s", getattr(kernel, "name", "?"), exc)


def _launcher_owners(requests: list[tuple]) -> set[int]:
    """The index of the first request of each kernel signature (the ordered argument types,
    constexprs marked: all a launcher is generated from), whose worker also builds the
    launcher: one build per launcher, not one per kernel."""
    seen: dict[tuple, int] = {}
    for i, (_, signature, *_rest) in enumerate(requests):
        seen.setdefault(tuple(str(t) for t in signature.values()), i)
    return set(seen.values())


def default_workers() -> int:
    """``KILNRT_COMPILE_WORKERS``, else the CPUs this process may use."""
    env = os.environ.get("KILNRT_COMPILE_WORKERS")
    if env:
        return max(0, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def compile_all(found: Discovered, workers: int) -> dict:
    """Compile every recorded kernel with ``workers`` forked processes; returns counts and time."""
    global _REQUESTS, _LAUNCHERS
    t0 = time.perf_counter()
    requests = list(found.requests.values())
    by_kernel = collections.Counter(getattr(r[0], "__name__", "?") for r in requests)
    stats = {"kernels": len(requests), "workers": 0, "failed": 0, "seconds": 0.0, "unrecorded": found.unrecorded,
             "by_kernel": dict(by_kernel.most_common())}
    if not requests or workers < 2:
        return stats
    workers = min(workers, len(requests))
    _REQUESTS, _LAUNCHERS = requests, _launcher_owners(requests)
    stats["launchers"] = len(_LAUNCHERS)
    try:
        with warnings.catch_warnings():   # fork with threads: the workers only compile (no CUDA, no locks)
            warnings.simplefilter("ignore", DeprecationWarning)
            with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                errors = [e for e in pool.map(_compile_one, range(len(requests)), chunksize=1) if e]
    except Exception as exc:  # noqa: BLE001 - a broken pool: the kernels compile on launch instead
        log.warning("parallel Triton compilation failed (%s: %s); kernels compile one by one on first launch",
                    type(exc).__name__, exc)
        errors = ["pool"]
    finally:
        _REQUESTS, _LAUNCHERS = [], set()
    for e in errors[:3]:
        log.debug("parallel compile: %s", e)
    stats.update(workers=workers, failed=len(errors), seconds=round(time.perf_counter() - t0, 2))
    log.info("compiled %d Triton kernels with %d processes in %.1f s (%d failed: compiled on launch)",
             len(requests), workers, stats["seconds"], len(errors))
    return stats
