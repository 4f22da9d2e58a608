"""Compiled Triton kernels travel inside plans.

A build records the entries that Triton's on-disk cache gained while the builder timed and
compiled kernels; the plan stores them (base64) in its kernels section; loading a plan
writes any that are missing back into the local Triton cache, so the first run finds them
compiled instead of compiling again.  They are data for Triton's loader (machine code and
metadata keyed by a hash of source, options and GPU) — like the kernels in a TensorRT plan
— never host code, and a plan is only accepted on the GPU model it was built for.
"""
from __future__ import annotations

import base64
import logging
import os
import time

log = logging.getLogger("kilnrt.engine")

PREFIX = "triton-cache/"
_MAX_FILE = 64 << 20
# kernel artifacts only: GPU machine code, intermediate IRs and their metadata. Host code
# that Triton's cache also holds (compiled launchers: .so, sources: .c/.py) is never stored
# nor installed, so a plan cannot make the host run anything.
ALLOWED_SUFFIXES = (".json", ".cubin", ".ptx", ".ttir", ".ttgir", ".llir")


def triton_cache_dir() -> str | None:
    try:
        from triton import knobs
    except ImportError:
        return None
    return knobs.cache.dir


def snapshot() -> float:
    """A point in time to collect the cache entries written after."""
    return time.time()


def collect(since: float) -> dict[str, str]:
    """Every Triton cache file written after ``since``, as plan kernel entries."""
    root = triton_cache_dir()
    out: dict[str, str] = {}
    if root is None or not os.path.isdir(root):
        return out
    for entry in os.scandir(root):
        if not entry.is_dir() or entry.stat().st_mtime < since - 1:
            continue
        for f in os.scandir(entry.path):
            if f.is_file() and f.name.endswith(ALLOWED_SUFFIXES) and f.stat().st_size <= _MAX_FILE:
                with open(f.path, "rb") as fh:
                    out[f"{PREFIX}{entry.name}/{f.name}"] = base64.b64encode(fh.read()).decode("ascii")
    return out


def install(kernels: dict[str, str]) -> int:
    """Write a plan's Triton cache entries that the local cache lacks; returns how many."""
    root = triton_cache_dir()
    if root is None:
        return 0
    written = 0
    for key, data in kernels.items():
        if not key.startswith(PREFIX):
            continue
        rel = key[len(PREFIX):]
        parts = rel.split("/")
        if len(parts) != 2 or any(p in ("", ".", "..") or os.sep in p for p in parts) \
                or not parts[1].endswith(ALLOWED_SUFFIXES):
            log.warning("ignoring a malformed kernel entry %r in the plan", key)
            continue
        path = os.path.join(root, *parts)
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(base64.b64decode(data))
        os.replace(tmp, path)
        written += 1
    return written
