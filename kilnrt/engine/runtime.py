"""Runtime: loads plans (TensorRT's ``IRuntime``)."""
from __future__ import annotations

import os
from typing import Any

from kilnrt.engine.engine import Engine
from kilnrt.errors import ErrorCode, PlanError


class Runtime:
    def __init__(self, logger: Any = None) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> Engine:
        return Engine.deserialize(bytes(data))

    deserialize_engine = deserialize_cuda_engine


def load(plan: Any, *, key: bytes | str | None = None) -> Engine:
    """Load a plan from a path, bytes, or a file object; with ``key``, only a plan signed with
    it (``engine.save(path, key=...)``) loads."""
    if isinstance(plan, (bytes, bytearray, memoryview)):
        return Engine.deserialize(bytes(plan), key=key)
    if hasattr(plan, "read"):
        return Engine.deserialize(plan.read(), key=key)
    path = os.fspath(plan)
    if not os.path.exists(path):
        raise PlanError(ErrorCode.PLAN_NOT_A_PLAN, f"plan file {path!r} does not exist")
    with open(path, "rb") as f:
        return Engine.deserialize(f.read(), key=key)
