"""One lock, per process, between CUDA-graph captures and eager runs on other threads.

A thread's first cuBLAS or cuDNN call creates that thread's library handles, and a library
may allocate or synchronize the device as it does; while another thread captures a graph,
that fails both ("operation not permitted when stream is capturing").  So a capture (its
warm-up run included) holds the lock alone, and eager runs share it: they wait while a
capture is under way, a capture waits for the eager runs in progress, and a waiting capture
goes before eager runs that come after it.  Graph replays take no lock: they launch the graph
and copy (allocating at most from torch's caching allocator, which thread-local capture mode
allows on other threads).  A thread that holds the lock alone may run eagerly inside it (a
capture's warm-up run); a thread inside an eager run or a capture that asks to capture (a
plugin running another engine) is told no, and runs eagerly.

No wait is unbounded.  An eager run that waits for another thread which itself runs an
engine eagerly (a plugin handing work to a thread pool) would otherwise deadlock while a
capture waits between them: the helper waits for the capture, the capture for the outer run.
So after ``patience_s`` (``KILNRT_CAPTURE_WAIT_S``, default 10 s; ``inf`` waits for ever) an
eager run goes anyway (it may then break the capture, which falls back to an eager run and
tries again on a later call, or fail itself, as a library call made during a capture can),
and a capture that still waits gives up for this call (the caller runs eagerly).  For
``patience_s`` after a capture gave up, captures do not wait at all (their callers run
eagerly), so that the pattern does not stall every call.  Each time out is logged as a
warning, and counted in ``timeouts``.

What it does not cover: building an engine's program (weights to the device, tactics
prepared: the first run, before ``Program.execute``), and CUDA work of the caller's own on
other threads.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

log = logging.getLogger("kilnrt.runtime")


class CaptureLock:
    def __init__(self, patience_s: float | None = None) -> None:
        self.patience_s = _patience_from_env() if patience_s is None else patience_s
        self.timeouts = 0          # waits that ran out of patience (eager runs that went, captures given up)
        self._quiet_until = 0.0    # captures skip waiting until then (monotonic), after one gave up
        self._cond = threading.Condition()
        self._running = 0          # eager runs under way
        self._capturing = None     # the capturing thread's ident
        self._waiting = 0          # captures waiting for the eager runs to finish
        self._mine = threading.local()   # .depth: this thread's eager runs under way

    @contextlib.contextmanager
    def eager(self):
        me = threading.get_ident()
        depth = getattr(self._mine, "depth", 0)
        with self._cond:
            # the capture's own runs, and a run inside a run (a plugin running another
            # engine), pass: waiting there would wait for this thread itself
            inside = self._capturing == me or depth > 0
            if not inside:
                if not self._wait_while(lambda: self._capturing is not None or self._waiting):
                    self._gave_up("an eager run went on beside a CUDA-graph capture on another thread "
                                  "(the capture may fail and run eagerly)")
                self._running += 1
        self._mine.depth = depth + 1
        try:
            yield
        finally:
            self._mine.depth = depth
            if not inside:
                with self._cond:
                    self._running -= 1
                    if not self._running:
                        self._cond.notify_all()

    @contextlib.contextmanager
    def capture(self):
        """Yields True once this thread may capture alone; False, at once, where this thread
        is inside a capture or an eager run already (a plugin running another engine: it
        would wait for itself) or a capture gave up less than ``patience_s`` ago; False also
        when the wait runs out of patience.  On False the caller runs eagerly instead."""
        me = threading.get_ident()
        with self._cond:
            nested = self._capturing == me or getattr(self._mine, "depth", 0) > 0
            alone = False
            if not nested and time.monotonic() >= self._quiet_until:
                self._waiting += 1
                try:
                    alone = self._wait_while(lambda: self._capturing is not None or self._running)
                finally:
                    self._waiting -= 1
                    if self._capturing is None:   # interrupted or given up: eager runs may go
                        self._cond.notify_all()
                if alone:
                    self._capturing = me
                else:
                    self._quiet_until = time.monotonic() + self.patience_s
                    self._gave_up("a CUDA-graph capture gave up waiting for eager runs on other threads "
                                  "(this call runs eagerly; a later one captures)")
        if not alone:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self._capturing = None
                self._cond.notify_all()

    def _wait_while(self, busy) -> bool:
        """Wait (holding ``_cond``) until ``busy()`` is false: True, or False after ``patience_s``."""
        deadline = time.monotonic() + self.patience_s
        while busy():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._cond.wait(min(left, threading.TIMEOUT_MAX))
        return True

    def _gave_up(self, what: str) -> None:
        self.timeouts += 1
        log.warning("%s after waiting %.1f s (KILNRT_CAPTURE_WAIT_S); a run that waits for another thread's "
                    "kilnrt run, such as a plugin using a thread pool, does this", what, self.patience_s)


def _patience_from_env() -> float:
    text = os.environ.get("KILNRT_CAPTURE_WAIT_S", "10")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:   # NaN too
        log.warning("KILNRT_CAPTURE_WAIT_S=%r is not a number of seconds above 0 (inf: no limit); using 10", text)
        return 10.0
    return value


CAPTURES = CaptureLock()
