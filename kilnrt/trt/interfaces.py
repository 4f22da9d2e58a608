"""Base classes users subclass in TensorRT scripts: calibrators, profilers, output allocators."""
from __future__ import annotations

from typing import Any, Sequence

from kilnrt.builder.calibration import CalibrationAlgoType


class IInt8Calibrator:
    """Base of INT8 calibrators (TensorRT 10 names).

    With ``BuilderFlag.INT8`` and ``config.int8_calibrator = calibrator``, the builder first
    asks ``read_calibration_cache()``; without a cache it calls ``get_batch(input names)``
    until it returns None (each batch: one array, tensor or, on CUDA, device pointer per
    name), runs the FP32 network on the batches, and gives the result to
    ``write_calibration_cache`` in TensorRT's text format (``kilnrt.builder.calibration``).
    """

    def __init__(self) -> None:
        pass

    def get_batch_size(self) -> int:
        return 1

    def get_batch(self, names: Sequence[str]) -> list[Any] | None:
        return None

    def read_calibration_cache(self) -> bytes | None:
        return None

    def write_calibration_cache(self, cache: bytes) -> None:
        return None

    def get_algorithm(self) -> CalibrationAlgoType:
        return CalibrationAlgoType.ENTROPY_CALIBRATION_2


class IInt8EntropyCalibrator2(IInt8Calibrator):
    def get_algorithm(self) -> CalibrationAlgoType:
        return CalibrationAlgoType.ENTROPY_CALIBRATION_2


class IInt8EntropyCalibrator(IInt8Calibrator):
    def get_algorithm(self) -> CalibrationAlgoType:
        return CalibrationAlgoType.ENTROPY_CALIBRATION


class IInt8MinMaxCalibrator(IInt8Calibrator):
    def get_algorithm(self) -> CalibrationAlgoType:
        return CalibrationAlgoType.MINMAX_CALIBRATION


class IInt8LegacyCalibrator(IInt8Calibrator):
    def get_algorithm(self) -> CalibrationAlgoType:
        return CalibrationAlgoType.LEGACY_CALIBRATION

    def get_quantile(self) -> float:
        return 0.9999

    def get_regression_cutoff(self) -> float:
        return 1.0

    def read_histogram_cache(self, length: int = 0) -> bytes | None:
        return None

    def write_histogram_cache(self, data: bytes, length: int = 0) -> None:
        return None


class IProfiler:
    """Set ``context.profiler`` to one: ``report_layer_time`` is called after each layer runs."""

    def __init__(self) -> None:
        pass

    def report_layer_time(self, layer_name: str, ms: float) -> None:
        raise NotImplementedError


class Profiler(IProfiler):
    """Prints each layer's time, as TensorRT's default ``Profiler`` does."""

    def report_layer_time(self, layer_name: str, ms: float) -> None:
        print(f"{layer_name}: {ms:.4f} ms")


class IOutputAllocator:
    """For outputs whose shape is known only after running (``context.set_output_allocator``)."""

    def __init__(self) -> None:
        pass

    def reallocate_output(self, tensor_name: str, memory: Any, size: int, alignment: int) -> Any:
        return None

    def reallocate_output_async(self, tensor_name: str, memory: Any, size: int, alignment: int,
                                stream: int = 0) -> Any:
        return self.reallocate_output(tensor_name, memory, size, alignment)

    def notify_shape(self, tensor_name: str, shape: Sequence[int]) -> None:
        return None
