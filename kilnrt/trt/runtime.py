"""TensorRT's Builder, BuilderConfig and Runtime behaviour over kilnrt's: context managers,
``IHostMemory`` results, and None (with the error sent to the logger) where TensorRT fails softly."""
from __future__ import annotations

from typing import Any

from kilnrt.builder import Builder as _Builder, BuilderConfig as _BuilderConfig, build_engine
from kilnrt.engine import Runtime as _Runtime
from kilnrt.errors import KilnError
from kilnrt.network.dtypes import DataType
from kilnrt.trt.logger import ILogger, Severity, attach, report


class _Closeable:
    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class IHostMemory(bytes, _Closeable):
    """A serialized engine: ``bytes`` with TensorRT's ``nbytes`` and ``dtype``."""

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> DataType:
        return DataType.UINT8


class BuilderConfig(_BuilderConfig, _Closeable):
    __doc__ = _BuilderConfig.__doc__


class Builder(_Builder, _Closeable):
    """``Builder(logger)``: kilnrt's log records go to ``logger``; failed builds return None."""

    def __init__(self, logger: ILogger | None = None) -> None:
        super().__init__(logger)
        attach(logger)

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def build_serialized_network(self, network, config) -> IHostMemory | None:
        try:
            return IHostMemory(build_engine(network, config).serialize())
        except KilnError as exc:
            report(self.logger, Severity.ERROR, exc.describe())
            return None


class Runtime(_Runtime, _Closeable):
    """``Runtime(logger)``: ``deserialize_cuda_engine`` returns None for a bad plan, as TensorRT does."""

    def __init__(self, logger: ILogger | None = None) -> None:
        super().__init__(logger)
        attach(logger)

    def deserialize_cuda_engine(self, serialized_engine: Any):
        try:
            return super().deserialize_cuda_engine(bytes(serialized_engine))
        except KilnError as exc:
            report(self.logger, Severity.ERROR, exc.describe())
            return None

    deserialize_engine = deserialize_cuda_engine
