"""Every exception kilnrt raises.

User errors derive from :class:`KilnError` and carry a code, the node or layer they
concern, its op and opset, and a message that says what is wrong, what was given and
what would be right.  :class:`InternalError` always means a bug in kilnrt itself.
"""
from __future__ import annotations


class ErrorCode:
    """The codes a :class:`KilnError` carries (onnx-tensorrt's names where they exist)."""

    UNSUPPORTED_NODE = "UNSUPPORTED_NODE"
    UNSUPPORTED_NODE_ATTR = "UNSUPPORTED_NODE_ATTR"
    UNSUPPORTED_NODE_INPUT = "UNSUPPORTED_NODE_INPUT"
    UNSUPPORTED_NODE_DATATYPE = "UNSUPPORTED_NODE_DATATYPE"
    UNSUPPORTED_NODE_DYNAMIC = "UNSUPPORTED_NODE_DYNAMIC"
    UNSUPPORTED_NODE_SHAPE = "UNSUPPORTED_NODE_SHAPE"
    INVALID_NODE = "INVALID_NODE"
    INVALID_MODEL = "INVALID_MODEL"
    INVALID_NETWORK = "INVALID_NETWORK"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    INVALID_SHAPE = "INVALID_SHAPE"
    INVALID_DTYPE = "INVALID_DTYPE"
    INVALID_PROFILE = "INVALID_PROFILE"
    UNKNOWN_TENSOR = "UNKNOWN_TENSOR"
    NO_TACTIC = "NO_TACTIC"
    PLAN_TRUNCATED = "PLAN_TRUNCATED"
    PLAN_CORRUPT = "PLAN_CORRUPT"
    PLAN_NOT_A_PLAN = "PLAN_NOT_A_PLAN"
    PLAN_VERSION = "PLAN_VERSION"
    PLAN_DEVICE = "PLAN_DEVICE"
    PLAN_UNKNOWN_TACTIC = "PLAN_UNKNOWN_TACTIC"
    PLAN_SIGNATURE = "PLAN_SIGNATURE"
    PLAN_OVER_BUDGET = "PLAN_OVER_BUDGET"
    RUNTIME = "RUNTIME"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    CALIBRATION = "CALIBRATION"


class KilnError(Exception):
    """A user-facing error: bad input, unsupported model, foreign plan, wrong shapes."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        node: str | None = None,
        op: str | None = None,
        opset: int | None = None,
        layer: str | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.node = node
        self.op = op
        self.opset = opset
        self.layer = layer
        super().__init__(self.describe())

    def describe(self) -> str:
        where = ""
        if self.node is not None or self.op is not None:
            bits = [b for b in (self.op, f"opset {self.opset}" if self.opset else None) if b]
            where = f"node '{self.node}'" if self.node is not None else "node"
            if bits:
                where += f" ({', '.join(bits)})"
            where += ": "
        elif self.layer is not None:
            where = f"layer '{self.layer}': "
        return f"[{self.code}] {where}{self.message}"


class UnsupportedNodeError(KilnError):
    """An ONNX node kilnrt cannot import (unknown op, attribute, dtype or opset)."""


class ImportErrors(KilnError):
    """Several import errors found together; ``errors`` holds each one."""

    def __init__(self, errors: list[KilnError]) -> None:
        self.errors = list(errors)
        lines = [e.describe() for e in self.errors]
        super().__init__(
            self.errors[0].code if len(self.errors) == 1 else ErrorCode.UNSUPPORTED_NODE,
            f"{len(self.errors)} problem(s) found while importing the model:\n  " + "\n  ".join(lines),
        )

    def describe(self) -> str:  # the message already lists every error with its location
        return self.message


class ShapeError(KilnError):
    """A tensor's shape is not what a layer, profile or binding allows."""


class DTypeError(KilnError):
    """A tensor's data type is not what a layer or binding allows."""


class NetworkError(KilnError):
    """A network that is not well formed (dangling tensor, no outputs, cycle...)."""


class BuildError(KilnError):
    """The builder could not produce an engine (no tactic, bad profile...)."""


class PlanError(KilnError):
    """A plan file that is truncated, corrupt, from another version or for another device."""


class ExecutionError(KilnError):
    """Running an engine failed because of its inputs or bindings."""


class InternalError(Exception):
    """A kilnrt bug: an invariant broke. Please report it with the model that caused it."""
