"""Where kilnrt builds and runs when the caller does not say: the GPU when there is one.

``KILNRT_DEVICE`` (``cpu`` or ``cuda``) overrides the choice, for a process that must stay
on one device (the test suite keeps its CPU tests on the CPU this way).  Raw pointers bound
to an engine are checked against it: :func:`pointer_kind` asks the CUDA driver whether an
address is GPU memory.
"""
from __future__ import annotations

import ctypes
import functools
import os

import torch

from kilnrt.errors import ErrorCode, KilnError

DEVICES = ("cpu", "cuda")


def default_device() -> str:
    """``KILNRT_DEVICE`` if set, else ``"cuda"`` when a CUDA GPU is visible, else ``"cpu"``."""
    env = os.environ.get("KILNRT_DEVICE", "").strip().lower()
    if env:
        if env not in DEVICES:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"KILNRT_DEVICE={env!r}; use cpu or cuda (or unset it: "
                                                        "CUDA when a GPU is visible, else the CPU)")
        return env
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> str:
    """``device``, or :func:`default_device` for None; refuses anything but cpu and cuda."""
    if device is None:
        return default_device()
    if device not in DEVICES:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"device={device!r}; supported: 'cpu', 'cuda' "
                                                    "(None: CUDA when a GPU is visible)")
    return device


RUN_ADVICE = ("run smaller shapes, or free the GPU memory held elsewhere (other engines and their contexts' "
              "CUDA graphs: KILNRT_GRAPH_CACHE_BYTES bounds a context's; other processes)")


def out_of_memory(said: str, where: str, advice: str = RUN_ADVICE) -> str:
    """The message of an out-of-memory error: ``where`` it happened, what the allocator
    ``said`` (its first sentence), how much the GPU has free now (after this process's cached
    blocks went back to it), ``advice``."""
    said = said.splitlines()[0].split(". GPU ")[0] if said else "OutOfMemoryError"
    free = ""
    if torch.cuda.is_available():
        try:
            if not torch.cuda.is_current_stream_capturing():   # PyTorch refuses it during a capture
                torch.cuda.empty_cache()   # this process's cached blocks go back: the process stays usable
            have, total = torch.cuda.mem_get_info()
            free = f"; the GPU has {have / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB now"
        except RuntimeError:   # another thread capturing: the figure is left out
            pass
    return f"out of GPU memory {where} ({said}){free}; {advice}"


@functools.cache
def _pointer_attribute():
    try:
        fn = ctypes.CDLL("libcuda.so.1").cuPointerGetAttribute
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
    fn.restype = ctypes.c_int
    return fn


_MEMORY_TYPE = 2                                   # CU_POINTER_ATTRIBUTE_MEMORY_TYPE
_KINDS = {1: "host", 2: "device", 3: "array", 4: "unified"}


def pointer_kind(ptr: int) -> str:
    """What the CUDA driver knows of address ``ptr``: ``"device"``, ``"host"`` (pinned),
    ``"unified"``, or ``"unknown"`` (ordinary host memory, or no CUDA in this process)."""
    fn = _pointer_attribute() if torch.cuda.is_available() else None
    if fn is None:
        return "unknown"
    kind = ctypes.c_uint(0)
    if fn(ctypes.byref(kind), _MEMORY_TYPE, ptr) != 0:
        return "unknown"
    return _KINDS.get(kind.value, "unknown")
