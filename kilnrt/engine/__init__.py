"""Engines, plan files, the runtime, execution contexts and the inspector."""
from kilnrt.engine.context import ExecutionContext
from kilnrt.engine.engine import Engine, TensorIOMode
from kilnrt.engine.runtime import Runtime, load

__all__ = ["Engine", "ExecutionContext", "Runtime", "TensorIOMode", "load"]
