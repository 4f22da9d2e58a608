"""TensorRT's Python names over kilnrt: port a TensorRT 10 script with ``import kilnrt.trt as trt``.

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    parser.parse_from_file("model.onnx")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    plan = builder.build_serialized_network(network, config)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)

This module holds names only; docs/trt.md lists each one and what differs from TensorRT.
"""
from __future__ import annotations

import enum
import functools
import operator
from typing import Any, Sequence

from kilnrt import __version__  # noqa: F401  (the names below are re-exported)
from kilnrt.builder import MemoryPoolType, OptimizationProfile, ProfilingVerbosity, TimingCache
from kilnrt.builder.config import BuilderFlag
from kilnrt.engine import Engine, ExecutionContext, TensorIOMode
from kilnrt.engine.inspector import EngineInspector, LayerInformationFormat
from kilnrt.errors import ErrorCode
from kilnrt.network.definition import (Dims, Dims2, Dims3, Dims4, DimsHW, InterpolationMode, Permutation,
                                       ResizeCoordinateTransformation, ResizeRoundMode, ResizeSelector,
                                       SampleMode, Weights)
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.network.layers import (ActivationType, ElementWiseOperation, GatherMode, LayerKind,
                                   MatrixOperation, PaddingMode, PoolingType, ReduceOperation, ScaleMode,
                                   ScatterMode, TopKOperation, UnaryOperation)
from kilnrt.trt.interfaces import (CalibrationAlgoType, IInt8Calibrator, IInt8EntropyCalibrator,
                                   IInt8EntropyCalibrator2, IInt8LegacyCalibrator, IInt8MinMaxCalibrator,
                                   IOutputAllocator, IProfiler, Profiler)
from kilnrt.caffe import BlobNameToTensor as IBlobNameToTensor
from kilnrt.trt.caffe import CaffeParser
from kilnrt.trt.logger import ILogger, Logger
from kilnrt.trt.parser import OnnxParser, OnnxParserFlag, ParserError
from kilnrt.trt import plugin  # noqa: F401  (trt.plugin.register / impl / autotune)
from kilnrt.trt.plugin_registry import (PluginCreator, PluginField, PluginFieldCollection, PluginFieldType,
                                        PluginRegistry, TensorRTPhase, get_plugin_registry)
from kilnrt.trt.refitter import Refitter, WeightsRole
from kilnrt.trt.runtime import (Builder, BuilderConfig, ICudaEngine, IEngineInspector, IExecutionContext,
                                IHostMemory, INetworkDefinition, IOptimizationProfile, Runtime)


class NetworkDefinitionCreationFlag(enum.IntEnum):
    """Accepted for compatibility; every kilnrt network is explicit-batch and (so far) weakly typed."""

    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


# data types, as TensorRT's module-level aliases
float32 = DataType.FLOAT
float16 = DataType.HALF
bfloat16 = DataType.BF16
int8 = DataType.INT8
uint8 = DataType.UINT8
int32 = DataType.INT32
int64 = DataType.INT64
bool = DataType.BOOL  # noqa: A001 - TensorRT's name
fp8 = DataType.FP8

LayerType = LayerKind
ResizeMode = InterpolationMode
ILayer = Layer
# every layer is a kilnrt Layer; ``layer.__class__ = trt.IConvolutionLayer`` (a TensorRT downcast) is a no-op
(IActivationLayer, ICastLayer, IConcatenationLayer, IConstantLayer, IConvolutionLayer, IDeconvolutionLayer,
 IDequantizeLayer, IEinsumLayer, IElementWiseLayer, IGatherLayer, IIdentityLayer, ILRNLayer,
 IMatrixMultiplyLayer, INonZeroLayer, INormalizationLayer, IOneHotLayer, IPaddingLayer, IPoolingLayer,
 IQuantizeLayer, IReduceLayer, IResizeLayer, IScaleLayer, IScatterLayer, ISelectLayer, IShapeLayer,
 IShuffleLayer, ISliceLayer, ISoftMaxLayer, ITopKLayer, IUnaryLayer) = (Layer,) * 30
ITensor = Tensor
IBuilder = Builder
IBuilderConfig = BuilderConfig
IRuntime = Runtime
IRefitter = Refitter
ITimingCache = TimingCache
IPluginCreatorV3One = IPluginCreator = PluginCreator
IPluginRegistry = PluginRegistry
IOnnxParser = OnnxParser
ICaffeParser = CaffeParser


def volume(shape: Sequence[int]) -> int:
    """The number of elements of a shape (1 for a scalar)."""
    return functools.reduce(operator.mul, (int(d) for d in shape), 1)


def nptype(dtype: DataType) -> type:
    """The numpy scalar type of a DataType (``trt.nptype(trt.float32) is np.float32``)."""
    return dtype.numpy.type


def init_libnvinfer_plugins(logger: Any = None, namespace: str = "") -> bool:
    """Accepted for compatibility: kilnrt's built-in plugins are always registered."""
    return True


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("annotations", "enum", "functools",
                                                                   "operator", "Any", "Sequence")]
