"""Runtime: loads plans (TensorRT's ``IRuntime``)."""
from __future__ import annotations

import os
from typing import Any

from kilnrt.engine.engine import Engine
from kilnrt.errors import ErrorCode, PlanError


class Runtime:
    """Loads plans.  ``memory_budget`` (bytes, or a string such as ``"8G"``; None: the
    ``KILNRT_MEMORY_BUDGET`` variable, else the device's available memory) bounds what a plan
    may ask for (:mod:`kilnrt.engine.plan_budget`)."""

    def __init__(self, logger: Any = None, *, memory_budget: int | str | None = None) -> None:
        self.logger = logger
        self.memory_budget = memory_budget

    def deserialize_cuda_engine(self, data: bytes) -> Engine:
        from kilnrt.engine.planio import load_plan

        return load_plan(bytes(data), memory_budget=self.memory_budget)

    deserialize_engine = deserialize_cuda_engine


def load(plan: Any, *, key: bytes | str | None = None, memory_budget: int | str | None = None) -> Engine:
    """Load a plan from a path, bytes, or a file object; with ``key``, only a plan signed with
    it (``engine.save(path, key=...)``) loads.  A plan whose weights and activations need more
    than ``memory_budget`` bytes is refused (default: ``KILNRT_MEMORY_BUDGET``, else the
    device's available memory)."""
    from kilnrt.engine.planio import load_plan

    if isinstance(plan, (bytes, bytearray, memoryview)):
        return load_plan(bytes(plan), key=key, memory_budget=memory_budget)
    if hasattr(plan, "read"):
        return load_plan(plan.read(), key=key, memory_budget=memory_budget)
    path = os.fspath(plan)
    if not os.path.exists(path):
        raise PlanError(ErrorCode.PLAN_NOT_A_PLAN, f"plan file {path!r} does not exist")
    with open(path, "rb") as f:
        return load_plan(f.read(), key=key, memory_budget=memory_budget)
