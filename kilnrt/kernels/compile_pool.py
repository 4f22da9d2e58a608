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

import concurrent.futures as cf
import contextlib
import json
import logging
import multiprocessing
import os
import time
import warnings

log = logging.getLogger("kilnrt.builder")

# the kernels to compile, set before the workers are forked (they read it from their copy)
_REQUESTS: list[tuple] = []


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
    """In a worker: compile request ``index`` into Triton's cache; None, or the error."""
    try:
        from triton import compile as triton_compile
        from triton.compiler import ASTSource

        jit_fn, signature, constants, attrs, options, target = _REQUESTS[index]
        triton_compile(ASTSource(jit_fn, signature, constants, attrs), target=target, options=options)
        return None
    except Exception as exc:  # noqa: BLE001 - reported; the kernel compiles on launch instead
        return f"{getattr(_REQUESTS[index][0], '__name__', '?')}: {type(exc).__name__}: {str(exc)[:200]}"


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
    global _REQUESTS
    t0 = time.perf_counter()
    requests = list(found.requests.values())
    stats = {"kernels": len(requests), "workers": 0, "failed": 0, "seconds": 0.0, "unrecorded": found.unrecorded}
    if not requests or workers < 2:
        return stats
    workers = min(workers, len(requests))
    _REQUESTS = requests
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
        _REQUESTS = []
    for e in errors[:3]:
        log.debug("parallel compile: %s", e)
    stats.update(workers=workers, failed=len(errors), seconds=round(time.perf_counter() - t0, 2))
    log.info("compiled %d Triton kernels with %d processes in %.1f s (%d failed: compiled on launch)",
             len(requests), workers, stats["seconds"], len(errors))
    return stats
