"""The builder's INT8/FP8 step: ranges from a calibration cache, a calibrator, or
``ITensor.set_dynamic_range``, then the quantization of the layers that have them.

Explicit Q/DQ networks need none of this: their quantized layers were made by the optimizer
(``fold_qdq``).  With ``BuilderFlag.INT8`` (or ``BuilderFlag.FP8``) set, every convolution and
matrix multiply with constant weights whose input gets a range runs in INT8 (FP8 E4M3); the
others stay in float (FP16 where FP16 is allowed too), and the build info lists them.  With
both flags the layers run in INT8, unless the accuracy guard (``accuracy_budget``) measures FP8
to be the more accurate for a layer.  INT8 or FP8 with no source of ranges and no Q/DQ is an
error, not an FP32 engine.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Mapping

from kilnrt.builder.calibration import (METHODS, CalibrationAlgoType, CalibrationError, amax_of,
                                        calibrator_batches, collect, read_cache, write_cache)
from kilnrt.builder.config import BuilderConfig, BuilderFlag
from kilnrt.errors import BuildError, ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.layers import QUANTIZED_KINDS
from kilnrt.optimize.passes.quantization import (Quantization, quantizable_inputs, quantizable_layers,
                                                 quantize_calibrated)

log = logging.getLogger("kilnrt.builder")



class BatchCalibrator:
    """A calibrator over an iterable of feeds (``{input name: array}``), for
    ``kilnrt.build(..., int8=True, calibration=batches)``; ``method``: entropy, minmax or
    percentile; ``cache``: a path read if it exists, written after calibrating."""

    def __init__(self, batches: Iterable[Mapping[str, Any]], method: str = "entropy", percentile: float = 99.99,
                 cache: str | None = None) -> None:
        if method not in METHODS:
            raise BuildError(ErrorCode.INVALID_ARGUMENT, f"calibration method {method!r}: use one of "
                                                         f"{', '.join(METHODS)}")
        if not 0 < percentile <= 100:
            raise BuildError(ErrorCode.INVALID_ARGUMENT, f"percentile must be in (0, 100], got {percentile}")
        if isinstance(batches, Mapping):
            batches = [batches]
        self._batches = iter(batches)
        self.algorithm = METHODS[method]
        self.percentile = percentile
        self.cache = cache

    def get_algorithm(self) -> CalibrationAlgoType:
        return self.algorithm

    def get_quantile(self) -> float:
        return self.percentile / 100.0

    def get_batch_size(self) -> int:
        return 1

    def get_batch(self, names):
        return next(self._batches, None)

    def read_calibration_cache(self) -> bytes | None:
        import os

        if self.cache and os.path.exists(self.cache):
            with open(self.cache, "rb") as f:
                return f.read()
        return None

    def write_calibration_cache(self, data: bytes) -> None:
        if self.cache:
            with open(self.cache, "wb") as f:
                f.write(data)


class RememberingCalibrator:
    """Wraps a calibrator so that a build of several profiles calibrates once: the cache the
    first profile's build writes is what the later ones read (as TensorRT calibrates once per
    engine)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.written: bytes | None = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read_calibration_cache(self):
        return self.written if self.written is not None else self.inner.read_calibration_cache()

    def write_calibration_cache(self, data: bytes) -> None:
        self.written = bytes(data)
        self.inner.write_calibration_cache(data)


def quantization_types(config: BuilderConfig) -> tuple[DataType | None, DataType | None]:
    """(the type calibrated layers get, the other type the accuracy guard may choose per layer)
    from the builder flags; FP8 needs E4M3 tensor cores on CUDA (compute capability 8.9+)."""
    int8, fp8 = BuilderFlag.INT8 in config.flags, BuilderFlag.FP8 in config.flags
    if fp8 and config.device == "cuda":
        import torch

        cc = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
        if cc is not None and cc < (8, 9):
            raise BuildError(ErrorCode.INVALID_ARGUMENT,
                             f"BuilderFlag.FP8 needs FP8 tensor cores (compute capability 8.9 or later: Ada, Hopper, "
                             f"Blackwell); this GPU is sm_{cc[0]}{cc[1]}. Use INT8 or FP16 instead")
    if int8:
        return DataType.INT8, (DataType.FP8 if fp8 else None)
    return (DataType.FP8 if fp8 else None), None


def apply_int8(net: Network, config: BuilderConfig,
               profiles: list[dict[str, tuple]]) -> tuple[Network, dict | None, Quantization | None]:
    """``net`` with its calibrated layers in INT8 (or FP8), what was done (for the build info), and
    the decisions a refit repeats with new weights (None when nothing was calibrated)."""
    explicit = sum(1 for l in net.layers if l.kind in QUANTIZED_KINDS)
    to, alternative = quantization_types(config)
    if to is None:
        if config.int8_calibrator is not None:
            log.warning("an INT8 calibrator was set, but neither BuilderFlag.INT8 nor BuilderFlag.FP8 was: the "
                        "calibrator is not used")
        return net, ({"explicit_layers": explicit} if explicit else None), None
    t0 = time.perf_counter()
    watch = quantizable_inputs(net)
    amax: dict[str, float] = {}
    peaks: dict[str, float] = {}     # the largest magnitudes, FP8's ranges when INT8's are thresholds
    source, held = None, []
    calibrator = config.int8_calibrator
    budget = config.int8_accuracy_budget
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise BuildError(ErrorCode.INVALID_ARGUMENT, f"accuracy_budget must be a positive relative error "
                                                     f"(0.05 = 5% of the outputs' L2 norm), got {budget!r}")
    if alternative is not None and budget is None:
        log.warning("BuilderFlag.FP8 with BuilderFlag.INT8 and no accuracy budget: every layer is INT8 (the "
                    "accuracy guard is what chooses FP8 for a layer); set accuracy_budget, or drop INT8 for FP8")
    if budget is not None and calibrator is None:
        raise BuildError(ErrorCode.INVALID_ARGUMENT, "accuracy_budget needs calibration batches to measure the "
                                                     "error on; set a calibrator (or calibration=batches)")
    if calibrator is not None:
        amax, source, held, peaks = _calibrate(net, calibrator, watch, config, profiles,
                                               holdback=int(budget is not None), largest=to == DataType.FP8,
                                               fp8=DataType.FP8 in (to, alternative))
    user = {t.name: max(abs(t.dynamic_range[0]), abs(t.dynamic_range[1]))
            for t in net.tensors.values() if getattr(t, "dynamic_range", None)}
    amax.update(user)   # ranges set on tensors win over calibration, as in TensorRT
    fp8_amax = {**amax, **{k: v for k, v in peaks.items() if k not in user}}
    if user:
        source = f"{source} + {len(user)} set ranges" if source else f"{len(user)} ranges set on tensors"
    if not amax and not explicit:
        raise BuildError(ErrorCode.INVALID_ARGUMENT,
                         f"{to.name} was allowed, but nothing gives the ranges to quantize with: set "
                         "config.int8_calibrator (or kilnrt.build(..., calibration=batches)), call "
                         "tensor.set_dynamic_range(lo, hi) on the activations, or build a model with "
                         "Quantize/DequantizeLinear nodes")
    stats: dict = {}
    report = None
    candidates = [l.name for l in quantizable_layers(net, amax)]
    if budget is not None:
        from kilnrt.builder.accuracy import guard

        net, report = guard(net, amax, held, float(budget), config.device, to, alternative, fp8_amax)
        stats["quantize_calibrated"] = sum(1 for l in net.layers if l.kind in QUANTIZED_KINDS) - explicit
    else:
        net = quantize_calibrated(net, amax, stats, to=to, fp8_amax=fp8_amax)
    quantized = [l.name for l in net.layers if l.kind in QUANTIZED_KINDS]
    fp8 = sum(1 for l in net.layers if l.kind in QUANTIZED_KINDS and l.params.input_type == DataType.FP8)
    kept = [name for name in watch if name not in amax]
    info = {"source": source or "Q/DQ in the model", "explicit_layers": explicit, "type": to.name,
            "calibrated_layers": stats.get("quantize_calibrated", 0), "int8_layers": len(quantized) - fp8,
            "fp8_layers": fp8, "inputs_without_range": kept, "guard": report,
            "seconds": round(time.perf_counter() - t0, 3)}
    log.info("%s: %d layers quantized (%d INT8, %d FP8; %s); %d quantizable inputs had no range and stay float",
             to.name, len(quantized), len(quantized) - fp8, fp8, info["source"], len(kept))
    if config.device == "cpu" and fp8:
        log.info("FP8 on the CPU: the reference kernels emulate E4M3 (the numbers a GPU gives, not its speed)")
    made = {l.name: l.params.input_type for l in net.layers if l.kind in QUANTIZED_KINDS}
    decisions = Quantization(to, {name: made.get(name) for name in candidates}, amax, fp8_amax)
    return net, info, decisions


def _calibrate(net, calibrator, watch, config, profiles, holdback: int = 0, largest: bool = False,
               fp8: bool = False):
    """(amax per tensor, where it came from, held-back batches for the accuracy guard, the largest
    magnitude per tensor where histograms were collected: none from a cache).  With
    ``largest`` (FP8) the range is the largest magnitude seen, whatever the calibrator's
    algorithm: E4M3's exponent covers what INT8's clipping thresholds trade away."""
    algorithm = CalibrationAlgoType(int(calibrator.get_algorithm()))
    if largest and algorithm != CalibrationAlgoType.MINMAX_CALIBRATION:
        log.info("FP8: ranges are each tensor's largest magnitude (MINMAX_CALIBRATION), not the calibrator's %s",
                 algorithm.name)
        algorithm = CalibrationAlgoType.MINMAX_CALIBRATION
    shapes = _input_shapes(net, profiles)
    check = _shape_checker(net, profiles)
    cached = calibrator.read_calibration_cache()
    if cached:
        algo_name, amax = read_cache(cached)
        log.info("calibration: ranges of %d tensors from the calibration cache (%s)", len(amax), algo_name)
        if fp8 and "MinMax" not in algo_name:
            log.warning("FP8 layers take their ranges from the calibration cache, written by %s: clipping "
                        "thresholds, not the largest magnitudes FP8 is calibrated with otherwise; calibrate "
                        "without a cache, or with a MinMax one, to keep the outliers", algo_name)
        held = []
        if holdback:   # the guard still needs a batch to measure on
            _, _, held = collect(net, calibrator_batches(calibrator, shapes, config.device), [], config.device,
                                 check_shape=check, holdback=holdback)
        return amax, f"calibration cache ({algo_name}, {len(amax)} tensors)", held, {}
    hists, count, held = collect(net, calibrator_batches(calibrator, shapes, config.device), watch, config.device,
                                 check_shape=check, holdback=holdback)
    if count == 0:
        raise CalibrationError("the calibrator's first get_batch() returned None: there is no calibration data "
                               "(give at least one batch, or a calibration cache)" if not held else
                               "accuracy_budget holds the last calibration batch back, and there was only one: "
                               "give at least two batches")
    quantile = float(calibrator.get_quantile()) if hasattr(calibrator, "get_quantile") else 0.9999
    amax = {name: amax_of(h, algorithm, quantile) for name, h in hists.items() if h.amax > 0}
    calibrator.write_calibration_cache(write_cache(amax, algorithm))
    log.info("calibration: calibrated %d tensors on %d batches (%s)", len(amax), count, algorithm.name)
    peaks = {name: h.amax for name, h in hists.items() if h.amax > 0}
    return amax, f"{algorithm.name} over {count} batches", held, peaks


def _input_shapes(net, profiles) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Each input's shape for a calibrator's raw pointers: the first profile's opt, or its static shape."""
    out = {}
    for t in net.inputs:
        shape = profiles[0][t.name][1] if profiles and t.name in profiles[0] else t.shape
        out[t.name] = (tuple(int(d) if isinstance(d, int) else -1 for d in shape), t.dtype)
    return out


def _shape_checker(net, profiles):
    inputs = {t.name: t for t in net.inputs}

    def check(name: str, shape: tuple[int, ...], k: int) -> None:
        declared = inputs[name].shape
        ok = len(shape) == len(declared) and all(not isinstance(d, int) or d < 0 or d == s
                                                 for d, s in zip(declared, shape))
        if ok and profiles and name in profiles[0]:
            ok = any(all(lo <= s <= hi for s, lo, hi in zip(shape, p[name][0], p[name][2]))
                     for p in profiles if name in p)
        if not ok:
            rng = (f"; the optimization profile allows {tuple(profiles[0][name][0])} to {tuple(profiles[0][name][2])}"
                   if profiles and name in profiles[0] else "")
            raise CalibrationError(f"calibration batch {k}: input {name!r} has shape {shape}, but the network takes "
                                   f"{tuple(declared)}{rng}")

    return check
