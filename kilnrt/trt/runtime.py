"""TensorRT's Builder, BuilderConfig, Runtime, engine and context behaviour over kilnrt's:
context managers, ``IHostMemory`` results, None (with the error sent to the logger) where
TensorRT fails softly, TensorRT 7/8 calls (:mod:`kilnrt.trt.legacy`), and attributes
checked (:mod:`kilnrt.trt.strict`)."""
from __future__ import annotations

import copy
from typing import Any

from kilnrt.builder import (Builder as _Builder, BuilderConfig as _BuilderConfig, BuilderFlag, MemoryPoolType,
                            OptimizationProfile, build_engine)
from kilnrt.engine import Engine, ExecutionContext, Runtime as _Runtime
from kilnrt.engine.inspector import EngineInspector
from kilnrt.errors import ErrorCode, KilnError, ShapeError
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.trt.legacy import BindingContext, BindingEngine
from kilnrt.trt.logger import ILogger, Severity, attach, report
from kilnrt.trt.strict import DLA, ERROR_RECORDER, GPU_ALLOCATOR, Strict, deprecated, warn_once


class _Closeable:
    __slots__ = ()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class IHostMemory(bytes, _Closeable):
    """A serialized engine: ``bytes`` with TensorRT's ``nbytes`` and ``dtype``."""

    __slots__ = ()   # no attributes can be added

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> DataType:
        return DataType.UINT8


# -- networks and profiles -------------------------------------------------------------------
class INetworkDefinition(Network, Strict):
    """The network ``Builder.create_network`` returns: a :class:`kilnrt.Network` with checked attributes."""

    _TRT_NAME = "INetworkDefinition"
    _IGNORED = {"error_recorder": ERROR_RECORDER}

    def __init__(self, flags: int = 0) -> None:
        super().__init__()
        self._creation_flags = int(flags)
        self._seal()


class IOptimizationProfile(OptimizationProfile, Strict):
    __doc__ = OptimizationProfile.__doc__
    _TRT_NAME = "IOptimizationProfile"

    def __init__(self) -> None:
        super().__init__()
        self._seal()


# -- building ------------------------------------------------------------------------------
class BuilderConfig(_BuilderConfig, Strict, _Closeable):
    __doc__ = _BuilderConfig.__doc__
    _TRT_NAME = "IBuilderConfig"
    _IGNORED = {
        "error_recorder": ERROR_RECORDER,
        "algorithm_selector": "kilnrt times every candidate tactic and keeps the fastest; see its choices "
                              "with engine.create_engine_inspector()",
        "DLA_core": DLA, "default_device_type": DLA,
        "profile_stream": "kilnrt times tactics on its own stream",
        "engine_capability": "kilnrt builds standard engines only",
        "hardware_compatibility_level": "use BuilderFlag.PORTABLE for a plan that loads on other GPUs",
        "max_aux_streams": "kilnrt runs each engine on one stream",
        "runtime_platform": "plans load where kilnrt runs",
        "plugins_to_serialize": "plans store plugin names, never their code",
    }
    _REMOVED = {"max_batch_size": "builder.max_batch_size (TensorRT 7/8) or an optimization profile",
                "min_timing_iterations": "avg_timing_iterations"}

    def __init__(self) -> None:
        super().__init__()
        self._seal()

    @property
    def max_workspace_size(self) -> int:
        deprecated("IBuilderConfig.max_workspace_size", "set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size)")
        return self.get_memory_pool_limit(MemoryPoolType.WORKSPACE)

    @max_workspace_size.setter
    def max_workspace_size(self, size: int) -> None:
        deprecated("IBuilderConfig.max_workspace_size", "set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size)")
        self.set_memory_pool_limit(MemoryPoolType.WORKSPACE, size)


class Builder(_Builder, Strict, _Closeable):
    """``Builder(logger)``: kilnrt's log records go to ``logger``; failed builds return None."""

    _TRT_NAME = "Builder"
    _IGNORED = {"error_recorder": ERROR_RECORDER, "gpu_allocator": GPU_ALLOCATOR}
    _REMOVED = {
        "fp16_mode": "config.set_flag(trt.BuilderFlag.FP16)",
        "int8_mode": "config.set_flag(trt.BuilderFlag.INT8)",
        "strict_type_constraints": "config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)",
        "int8_calibrator": "config.int8_calibrator",
        "debug_sync": "kilnrt compare, or a context profiler",
        "refittable": "config.set_flag(trt.BuilderFlag.REFIT)",
        "average_find_iterations": "config.avg_timing_iterations",
        "min_find_iterations": "config.avg_timing_iterations",
    }

    def __init__(self, logger: ILogger | None = None) -> None:
        super().__init__(logger)
        attach(logger)
        self._max_batch_size: int | None = None
        self._max_workspace_size: int | None = None
        self._seal()

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    # -- TensorRT 7/8 ----------------------------------------------------------------
    @property
    def max_batch_size(self) -> int:
        deprecated("Builder.max_batch_size", "an optimization profile (profile.set_shape(name, min, opt, max))")
        return self._max_batch_size or 1

    @max_batch_size.setter
    def max_batch_size(self, size: int) -> None:
        deprecated("Builder.max_batch_size", "an optimization profile (profile.set_shape(name, min, opt, max))")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {size!r}")
        self._max_batch_size = size

    @property
    def max_workspace_size(self) -> int:
        deprecated("Builder.max_workspace_size", "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size)")
        return self._max_workspace_size or 0

    @max_workspace_size.setter
    def max_workspace_size(self, size: int) -> None:
        deprecated("Builder.max_workspace_size", "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size)")
        self._max_workspace_size = int(size)

    def build_engine(self, network: Network, config: BuilderConfig) -> "ICudaEngine | None":
        """TensorRT 8's build straight to an engine; None (the error logged) on failure."""
        deprecated("Builder.build_engine", "build_serialized_network(network, config), then "
                   "Runtime(logger).deserialize_cuda_engine(plan)")
        return self._build(network, config)

    def build_cuda_engine(self, network: Network) -> "ICudaEngine | None":
        """TensorRT 7's build with the builder's own settings (max_batch_size, max_workspace_size)."""
        deprecated("Builder.build_cuda_engine", "build_serialized_network(network, config)")
        config = self.create_builder_config()
        if self._max_workspace_size is not None:
            config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, self._max_workspace_size)
        return self._build(network, config)

    def build_engine_with_config(self, network: Network, config: BuilderConfig) -> Engine:
        mapped = self._batch_profile(network, config)
        engine = build_engine(network, mapped)
        if mapped is not config:
            engine.build_info["max_batch_size"] = self._max_batch_size
        return _facade_engine(engine)

    def build_serialized_network(self, network, config) -> IHostMemory | None:
        engine = self._build(network, config)
        return None if engine is None else IHostMemory(engine.serialize())

    def _build(self, network: Network, config: BuilderConfig) -> "ICudaEngine | None":
        try:
            return self.build_engine_with_config(network, config)
        except KilnError as exc:
            report(self.logger, Severity.ERROR, exc.describe())
            return None

    def _batch_profile(self, network: Network, config: BuilderConfig) -> _BuilderConfig:
        """``max_batch_size`` (TensorRT 7/8's implicit batch) as an optimization profile: every
        input whose leading dim is dynamic takes batches 1..max_batch_size (opt: the max),
        its other dims fixed.  Nothing changes where the config has profiles or no input has a
        dynamic leading dim (TensorRT 8 ignores max_batch_size for explicit-batch networks)."""
        n = self._max_batch_size
        if n is None:
            return config
        inputs = [t for t in network.inputs if t.shape and not (isinstance(t.shape[0], int) and t.shape[0] >= 0)]
        if config.profiles or not inputs:
            warn_once("max_batch_size ignored",
                      "Builder.max_batch_size = %d has no effect here: %s", n,
                      "the config has optimization profiles" if config.profiles else
                      "no network input has a dynamic leading (batch) dim")
            return config
        profile = OptimizationProfile()
        for t in inputs:
            rest = t.shape[1:]
            if any(not (isinstance(d, int) and d >= 0) for d in rest):
                raise ShapeError(ErrorCode.INVALID_PROFILE,
                                 f"Builder.max_batch_size gives input {t.name!r} {tuple(t.shape)} a batch range, but "
                                 "its other dims are dynamic too; add an optimization profile with set_shape instead")
            profile.set_shape(t.name, (1, *rest), (n, *rest), (n, *rest))
        mapped = copy.copy(config)
        mapped.profiles = [profile]
        return mapped


def _facade_engine(engine: Engine) -> "ICudaEngine":
    """The same engine, with TensorRT's facade behaviour (no copy: only the class changes)."""
    if not isinstance(engine, ICudaEngine):
        engine.__class__ = ICudaEngine
        engine._seal()
    return engine


# -- running -------------------------------------------------------------------------------
class ICudaEngine(BindingEngine, Engine, Strict):
    """A :class:`kilnrt.Engine` as TensorRT's ``ICudaEngine``, with TensorRT 8's binding API."""

    _TRT_NAME = "ICudaEngine"
    _IGNORED = {"error_recorder": ERROR_RECORDER, "weight_streaming_budget": "kilnrt keeps every weight on the device"}
    _REMOVED = {"get_location": "the engine's device (tensors live where the engine runs)",
                "create_execution_context_without_device_memory": "create_execution_context()"}

    def create_execution_context(self, strategy: Any = None) -> "IExecutionContext":
        return IExecutionContext(self)

    def create_engine_inspector(self) -> "IEngineInspector":
        return IEngineInspector(self)


class IExecutionContext(BindingContext, ExecutionContext, Strict):
    """A :class:`kilnrt.ExecutionContext` as TensorRT's ``IExecutionContext``."""

    _TRT_NAME = "IExecutionContext"
    _IGNORED = {
        "error_recorder": ERROR_RECORDER,
        "nvtx_verbosity": "kilnrt emits no NVTX ranges; use a context profiler",
        "persistent_cache_limit": "kilnrt does not set aside L2 cache",
        "enqueue_emits_profile": "a profiler set on the context always reports every run",
        "temporary_allocator": GPU_ALLOCATOR,
    }

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._seal()


class IEngineInspector(EngineInspector, Strict):
    __doc__ = EngineInspector.__doc__
    _TRT_NAME = "IEngineInspector"

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._seal()


class Runtime(_Runtime, Strict, _Closeable):
    """``Runtime(logger)``: ``deserialize_cuda_engine`` returns None for a bad plan, as TensorRT does."""

    _TRT_NAME = "Runtime"
    _IGNORED = {"error_recorder": ERROR_RECORDER, "gpu_allocator": GPU_ALLOCATOR, "DLA_core": DLA,
                "max_threads": "kilnrt loads plans on the calling thread",
                "engine_host_code_allowed": "plans never carry host code in kilnrt",
                "temporary_directory": "kilnrt writes no temporary files when loading plans",
                "tempfile_control_flags": "kilnrt writes no temporary files when loading plans"}

    def __init__(self, logger: ILogger | None = None) -> None:
        super().__init__(logger)
        attach(logger)
        self._seal()

    def deserialize_cuda_engine(self, serialized_engine: Any) -> ICudaEngine | None:
        try:
            return _facade_engine(super().deserialize_cuda_engine(bytes(serialized_engine)))
        except KilnError as exc:
            report(self.logger, Severity.ERROR, exc.describe())
            return None

    deserialize_engine = deserialize_cuda_engine


__all__ = ["Builder", "BuilderConfig", "BuilderFlag", "ICudaEngine", "IEngineInspector", "IExecutionContext",
           "IHostMemory", "INetworkDefinition", "IOptimizationProfile", "Runtime"]
