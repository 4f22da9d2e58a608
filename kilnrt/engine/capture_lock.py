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

What it does not cover: building an engine's program (weights to the device, tactics
prepared: the first run, before ``Program.execute``), and CUDA work of the caller's own on
other threads.  And an eager run that waits for another thread which itself runs an engine
eagerly (a plugin handing work to a thread pool) deadlocks while a capture waits between
them: the helper waits for the capture, the capture for the outer run.
"""
from __future__ import annotations

import contextlib
import threading


class CaptureLock:
    def __init__(self) -> None:
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
                while self._capturing is not None or self._waiting:
                    self._cond.wait()
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
        is inside a capture or an eager run already (a plugin running another engine): it
        would wait for itself, so the caller runs eagerly instead."""
        me = threading.get_ident()
        with self._cond:
            nested = self._capturing == me or getattr(self._mine, "depth", 0) > 0
            if not nested:
                self._waiting += 1
                try:
                    while self._capturing is not None or self._running:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                    if self._capturing is None:   # interrupted while waiting: eager runs may go
                        self._cond.notify_all()
                self._capturing = me
        if nested:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self._capturing = None
                self._cond.notify_all()


CAPTURES = CaptureLock()
