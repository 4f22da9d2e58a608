"""kilnrt: a deep-learning inference optimizer and runtime, in the spirit of TensorRT.

    engine = kilnrt.build("model.onnx", fp16=True)
    engine.save("model.plan")
    outputs = kilnrt.load("model.plan").run({"input": array})
"""
__version__ = "0.1.0"

from kilnrt.api import build, compile, load, to_network  # noqa: E402
from kilnrt.builder import (Builder, BuilderConfig, BuilderFlag, MemoryPoolType,  # noqa: E402
                            OptimizationProfile, TimingCache)
from kilnrt.engine import Engine, ExecutionContext, Runtime  # noqa: E402
from kilnrt.errors import (InternalError, KilnError, PlanError, ShapeError,  # noqa: E402
                           UnsupportedNodeError)
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Layer, Network, Tensor  # noqa: E402
from kilnrt.network.layers import LayerKind  # noqa: E402

__all__ = [
    "__version__", "build", "compile", "load", "to_network", "Builder", "BuilderConfig", "BuilderFlag",
    "MemoryPoolType", "OptimizationProfile", "TimingCache", "Engine", "ExecutionContext", "Runtime",
    "KilnError", "PlanError", "ShapeError", "UnsupportedNodeError", "InternalError", "DataType",
    "Layer", "Network", "Tensor", "LayerKind",
]
