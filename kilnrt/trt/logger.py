"""TensorRT's ``ILogger`` / ``Logger``, bridged to Python's :mod:`logging` (the ``kilnrt`` logger)."""
from __future__ import annotations

import enum
import logging
import sys

from kilnrt.trt.strict import Strict


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


_TO_LOGGING = {Severity.INTERNAL_ERROR: logging.CRITICAL, Severity.ERROR: logging.ERROR,
               Severity.WARNING: logging.WARNING, Severity.INFO: logging.INFO, Severity.VERBOSE: logging.DEBUG}


def _severity(levelno: int) -> Severity:
    for sev in (Severity.VERBOSE, Severity.INFO, Severity.WARNING, Severity.ERROR):
        if levelno <= _TO_LOGGING[sev]:
            return sev
    return Severity.INTERNAL_ERROR


class ILogger:
    """Base class for loggers: override ``log(severity, msg)``."""

    Severity = Severity
    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    def __init__(self) -> None:
        pass

    def log(self, severity: Severity, msg: str) -> None:
        raise NotImplementedError


class Logger(ILogger, Strict):
    """Prints messages at ``min_severity`` or more severe to stderr, as TensorRT's Logger does."""

    def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = Severity(min_severity)
        self._seal()

    def log(self, severity: Severity, msg: str) -> None:
        if Severity(severity) <= self.min_severity:
            print(f"[kilnrt] [{Severity(severity).name[0]}] {msg}", file=sys.stderr)


class _Forward(logging.Handler):
    """Sends the ``kilnrt`` logger's records to the most recently attached TensorRT logger."""

    def __init__(self) -> None:
        super().__init__()
        self.target: ILogger | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.target is not None:
            self.target.log(_severity(record.levelno), record.getMessage())


_FORWARD = _Forward()


def attach(logger: ILogger | None) -> None:
    """Route kilnrt's log records to ``logger`` (what passing a logger to Builder/Runtime does)."""
    if logger is None:
        return
    base = logging.getLogger("kilnrt")
    if _FORWARD not in base.handlers:
        base.addHandler(_FORWARD)
    _FORWARD.target = logger
    level = _TO_LOGGING[Severity(getattr(logger, "min_severity", Severity.VERBOSE))]
    _FORWARD.setLevel(level)
    if base.getEffectiveLevel() > level:  # only ever more verbose: other users of logging keep theirs
        base.setLevel(level)


def report(logger: ILogger | None, severity: Severity, msg: str) -> None:
    if logger is not None:
        logger.log(severity, msg)
