"""The Pythonic entry points: :func:`build` and :func:`load`."""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

from kilnrt.builder.buckets import check_bucket_points
from kilnrt.builder import BuilderConfig, BuilderFlag, OptimizationProfile, TimingCache, build_engine
from kilnrt.device import resolve_device
from kilnrt.engine import Engine, load
from kilnrt.errors import ErrorCode, KilnError
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network

log = logging.getLogger("kilnrt")
_WARNED: set[str] = set()

ProfileSpec = Mapping[str, Sequence[int] | Sequence[Sequence[int]]]


def _profiles(profiles: Any) -> list[OptimizationProfile]:
    if profiles is None:
        return []
    if isinstance(profiles, (OptimizationProfile, Mapping)):
        profiles = [profiles]
    out = []
    for p in profiles:
        out.append(p if isinstance(p, OptimizationProfile) else OptimizationProfile.from_dict(p))
    return out


def to_network(model: Any) -> Network:
    """A Network from an ONNX path / bytes / ModelProto, or the Network itself (Caffe: kilnrt.caffe.parse)."""
    if isinstance(model, Network):
        return model
    import torch

    if isinstance(model, torch.nn.Module):
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        f"got a PyTorch module ({type(model).__name__}); compile it with "
                        "kilnrt.compile(module, example_inputs), which goes through torch.export, not ONNX")
    if isinstance(model, str) and model.endswith(".prototxt"):
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        f"{model} is a Caffe net: it needs its weights and output blobs, so build "
                        "kilnrt.caffe.parse(deploy, caffemodel, outputs=[...]) (import kilnrt.caffe), a Network, with "
                        "kilnrt.build")
    from kilnrt.onnx import parse

    return parse(model)


def keep_onnx_for_refit(network: Network, model: Any) -> None:
    """Record the ONNX model (path, bytes or ModelProto) ``network`` was parsed from: a REFIT build
    of it parses the model again at refit, redoing the importer's folds (BatchNormalization)."""
    import onnx

    from kilnrt.builder.refit import remember_onnx

    if isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    elif not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    remember_onnx(network, model)


def build(model: Any, *, fp16: bool = False, bf16: bool = False, tf32: bool = True,
          profiles: Any = None, device: str | None = None, optimization_level: int = 3,
          timing_cache: str | TimingCache | None = None, portable: bool = False,
          workspace: int | None = None, progress: bool = False, verbose: bool = False,
          tactic_buckets: Any = ("min",), int8: bool = False, calibration: Any = None,
          calibration_method: str = "entropy", calibration_cache: str | None = None,
          accuracy_budget: float | None = None, layer_precisions: Any = None, fp8: bool = False,
          refit: bool = False) -> Engine:
    """Build an engine from an ONNX model (path, bytes, ModelProto) or a :class:`Network`.

    ``profiles``: for dynamic inputs, ``{"input": (min_shape, opt_shape, max_shape)}`` (or a
    single shape, or a list of such dicts for several profiles).  ``timing_cache``: a path
    (read, then written back) or a :class:`TimingCache`.  ``tactic_buckets``: the points of a
    dynamic profile, besides opt, where each layer's tactics are tuned again ("min", "max"; ``()``
    for opt only; see docs/shapes.md).  ``int8``: quantize convolutions and matrix multiplies
    to INT8 with ranges from ``calibration`` (an iterable of feeds, ``{input: array}``; method
    "entropy", "minmax" or "percentile") and/or ``calibration_cache`` (TensorRT's text format,
    read if it exists, else written); ``accuracy_budget``: keep the most sensitive layers in
    float until the outputs' relative L2 error on the last (held-back) calibration batch fits
    it; see docs/int8.md.  ``fp8``: the same in FP8 E4M3 (GPUs of compute capability 8.9 or
    later; emulated on the CPU); with ``int8`` too and an ``accuracy_budget``, each layer takes
    whichever of INT8 and FP8 is the more accurate for it.  ``layer_precisions``: layers to keep in FP32 in an FP16/BF16 build,
    ``{"Conv_3": "fp32"}`` or trtexec's ``"Conv_3:fp32,/blk/*:fp32"`` (a layer's name or its ONNX
    node's; see docs/debugging.md).  ``refit``: the engine takes new weights later
    (``engine.refit({name: array})``, TensorRT's ``BuilderFlag.REFIT``; docs/refit.md).
    ``device``: "cuda" or "cpu"; None (the default) builds for
    the GPU when one is visible, else the CPU (``KILNRT_DEVICE`` overrides).
    """
    if verbose:
        logging.getLogger("kilnrt").setLevel(logging.DEBUG)
    device = resolve_device(device)
    log.info("building for %s", device)
    network = to_network(model)
    if refit and not isinstance(model, Network):
        keep_onnx_for_refit(network, model)
    constrained = None
    if layer_precisions:   # pinned and lowered before the optimizer, so no fusion crosses a pin
        from kilnrt.optimize.passes.precision import constrain_layers

        if int8 or fp8:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, "layer_precisions with fp8=True or int8=True is not "
                                                        "supported yet; "
                                                        "keep layers in float through the model's Q/DQ placement")
        low = (DataType.HALF if fp16 else DataType.BF16 if bf16 else None) if device == "cuda" else None
        network, constrained = constrain_layers(network, layer_precisions, low)
        if not (fp16 or bf16) and "fp32" not in _WARNED:
            _WARNED.add("fp32")
            log.warning("layer_precisions without fp16/bf16: every layer runs in FP32 already")
        fp16, bf16 = (False, False) if low is not None else (fp16, bf16)
    config = BuilderConfig()
    config.device = device
    config.progress = progress
    config.builder_optimization_level = int(optimization_level)
    config.tactic_buckets = check_bucket_points(tactic_buckets)
    for flag, on in ((BuilderFlag.FP16, fp16), (BuilderFlag.BF16, bf16), (BuilderFlag.TF32, tf32),
                     (BuilderFlag.PORTABLE, portable), (BuilderFlag.INT8, int8), (BuilderFlag.FP8, fp8),
                     (BuilderFlag.REFIT, refit)):
        (config.set_flag if on else config.clear_flag)(flag)
    if workspace is not None:
        from kilnrt.builder import MemoryPoolType

        config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, workspace)
    if accuracy_budget is not None and not (int8 or fp8):
        raise KilnError(ErrorCode.INVALID_ARGUMENT, "accuracy_budget was given but int8=False; it bounds the "
                                                    "error of an INT8 (or FP8) build: pass int8=True (or fp8=True) "
                                                    "with calibration")
    config.int8_accuracy_budget = accuracy_budget
    if calibration is not None or calibration_cache is not None:
        if not (int8 or fp8):
            raise KilnError(ErrorCode.INVALID_ARGUMENT, "calibration data was given but int8=False; "
                                                        "pass int8=True (or fp8=True) to quantize with it")
        from kilnrt.builder.int8 import BatchCalibrator

        config.int8_calibrator = BatchCalibrator(calibration if calibration is not None else [],
                                                 calibration_method, cache=calibration_cache)
    for p in _profiles(profiles):
        config.add_optimization_profile(p)
    cache_path = timing_cache if isinstance(timing_cache, str) else None
    if cache_path is not None:
        config.set_timing_cache(TimingCache.load(cache_path))
    elif isinstance(timing_cache, TimingCache):
        config.set_timing_cache(timing_cache)
    engine = build_engine(network, config)
    if constrained is not None:
        engine.build_info["layer_precisions"] = constrained
        if constrained["lowered"]:
            engine.build_info["flags"] = sorted({*engine.build_info.get("flags", ()),
                                                 "fp16" if constrained["lowered"] == "HALF" else "bf16"})
    if cache_path is not None:
        config.timing_cache.save(cache_path)
    return engine


def compile(module: Any, example_inputs: Any = (), **options: Any) -> Any:
    """A PyTorch module as a kilnrt engine with the module's signature (``kilnrt.torch.compile``:
    torch.export, the ATen importer table, :func:`build`); see docs/pytorch.md."""
    from kilnrt.torch import compile as compile_module

    return compile_module(module, example_inputs, **options)


__all__ = ["build", "compile", "load", "to_network"]
