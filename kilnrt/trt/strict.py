"""Facade objects accept only the attributes kilnrt knows: nothing is silently accepted.

TensorRT's Python objects refuse unknown attributes, so a misspelt or unsupported setting
(``context.error_recorder = r``, ``builder.fp16_mode = True``) never passes unnoticed.  A
facade class lists

* ``_IGNORED``: TensorRT attributes kilnrt stores but does not act on, with what it does
  instead: setting one warns once;
* ``_REMOVED``: TensorRT 7/8 names kilnrt does not provide, with their TensorRT 10
  replacement: reading or setting one raises AttributeError saying what to use.

Any other unknown attribute raises AttributeError naming the close matches.  Subclasses a
user writes (a logger, a calibrator) are free to add attributes, as in TensorRT.
"""
from __future__ import annotations

import difflib
import logging
from typing import Any, Mapping

log = logging.getLogger("kilnrt.trt")

_WARNED: set[str] = set()


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message, *args)


def deprecated(old: str, replacement: str) -> None:
    """Warn once that ``old`` is TensorRT 7/8 API, naming its TensorRT 10 replacement."""
    warn_once(old, "%s is TensorRT 7/8 API, removed in TensorRT 10; kilnrt runs it, but use %s",
              old, replacement)


class Strict:
    """Mixin: after ``_seal()``, setting an attribute the object does not have raises."""

    _IGNORED: Mapping[str, str] = {}
    _REMOVED: Mapping[str, str] = {}

    def _seal(self) -> None:
        object.__setattr__(self, "_sealed", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if (name.startswith("_") or not self.__dict__.get("_sealed") or name in self.__dict__
                or hasattr(type(self), name) or not type(self).__module__.startswith("kilnrt.")):
            super().__setattr__(name, value)
            return
        if name in self._IGNORED:
            warn_once(f"{type(self).__name__}.{name}", "%s.%s is accepted but has no effect in kilnrt: %s",
                      _trt_name(self), name, self._IGNORED[name])
            super().__setattr__(name, value)
            return
        raise AttributeError(_unknown(self, name))

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails
        if name.startswith("__") or not type(self).__module__.startswith("kilnrt."):
            raise AttributeError(name)
        if name in self._IGNORED:   # readable (None) until set, as TensorRT's defaults
            return None
        raise AttributeError(_unknown(self, name))


def _trt_name(obj: Any) -> str:
    return getattr(type(obj), "_TRT_NAME", type(obj).__name__)


def _unknown(obj: Any, name: str) -> str:
    what = _trt_name(obj)
    if name in obj._REMOVED:
        return f"{what}.{name} is TensorRT 7/8 API that kilnrt does not provide; use {obj._REMOVED[name]}"
    known = [n for n in dir(type(obj)) if not n.startswith("_")] + \
        [n for n in obj.__dict__ if not n.startswith("_")] + list(obj._IGNORED)
    near = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
    return f"{what} has no attribute {name!r}{hint} (kilnrt.trt refuses attributes it does not know, " \
           "so that no setting is silently ignored; docs/trt.md lists what is supported)"


# what kilnrt does instead of attributes TensorRT objects share
ERROR_RECORDER = "kilnrt raises kilnrt.errors.KilnError (with a code and message) instead of recording errors; " \
    "facade calls that return None/False in TensorRT also log the error to the Logger"
GPU_ALLOCATOR = "kilnrt allocates device memory through PyTorch's caching allocator"
DLA = "kilnrt has no DLA support: every layer runs on the engine's device"
