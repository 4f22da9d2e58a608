"""The builder's INT8 step: ranges from a calibration cache, a calibrator, or
``ITensor.set_dynamic_range``, then the quantization of the layers that have them.

Explicit Q/DQ networks need none of this: their quantized layers were made by the optimizer
(``fold_qdq``).  With ``BuilderFlag.INT8`` set, every convolution and matrix multiply with
constant weights whose input gets a range runs in INT8; the others stay in float (FP16
where FP16 is allowed too), and the build info lists them.  INT8 with no source of ranges
and no Q/DQ is an error, not an FP32 engine.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Mapping

from kilnrt.builder.calibration import (METHODS, CalibrationAlgoType, CalibrationError, amax_of,
                                        calibrator_batches, collect, read_cache, write_cache)
from kilnrt.builder.config import BuilderConfig, BuilderFlag
from kilnrt.errors import BuildError, ErrorCode
from kilnrt.network.graph import Network
from kilnrt.network.layers import LayerKind
from kilnrt.optimize.passes.quantization import quantizable_inputs, quantize_calibrated

log = logging.getLogger("kilnrt.builder")

QUANTIZED_KINDS = (LayerKind.QUANTIZED_CONVOLUTION, LayerKind.QUANTIZED_MATRIX_MULTIPLY)


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


def apply_int8(net: Network, config: BuilderConfig, profiles: list[dict[str, tuple]]) -> tuple[Network, dict | None]:
    """``net`` with its calibrated layers in INT8, and what was done (for the build info)."""
    explicit = sum(1 for l in net.layers if l.kind in QUANTIZED_KINDS)
    if BuilderFlag.INT8 not in config.flags:
        if config.int8_calibrator is not None:
            log.warning("an INT8 calibrator was set, but BuilderFlag.INT8 was not: the calibrator is not used")
        return net, ({"explicit_layers": explicit} if explicit else None)
    t0 = time.perf_counter()
    watch = quantizable_inputs(net)
    amax: dict[str, float] = {}
    source, held = None, []
    calibrator = config.int8_calibrator
    budget = config.int8_accuracy_budget
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise BuildError(ErrorCode.INVALID_ARGUMENT, f"accuracy_budget must be a positive relative error "
                                                     f"(0.05 = 5% of the outputs' L2 norm), got {budget!r}")
    if budget is not None and calibrator is None:
        raise BuildError(ErrorCode.INVALID_ARGUMENT, "accuracy_budget needs calibration batches to measure the "
                                                     "error on; set a calibrator (or calibration=batches)")
    if calibrator is not None:
        amax, source, held = _calibrate(net, calibrator, watch, config, profiles, holdback=int(budget is not None))
    user = {t.name: max(abs(t.dynamic_range[0]), abs(t.dynamic_range[1]))
            for t in net.tensors.values() if getattr(t, "dynamic_range", None)}
    amax.update(user)   # ranges set on tensors win over calibration, as in TensorRT
    if user:
        source = f"{source} + {len(user)} set ranges" if source else f"{len(user)} ranges set on tensors"
    if not amax and not explicit:
        raise BuildError(ErrorCode.INVALID_ARGUMENT,
                         "INT8 was allowed, but nothing gives the ranges to quantize with: set "
                         "config.int8_calibrator (or kilnrt.build(..., calibration=batches)), call "
                         "tensor.set_dynamic_range(lo, hi) on the activations, or build a model with "
                         "Quantize/DequantizeLinear nodes")
    stats: dict = {}
    report = None
    if budget is not None:
        from kilnrt.builder.accuracy import guard

        net, report = guard(net, amax, held, float(budget), config.device)
        stats["quantize_calibrated"] = sum(1 for l in net.layers if l.kind in QUANTIZED_KINDS) - explicit
    else:
        net = quantize_calibrated(net, amax, stats)
    quantized = [l.name for l in net.layers if l.kind in QUANTIZED_KINDS]
    kept = [name for name in watch if name not in amax]
    info = {"source": source or "Q/DQ in the model", "explicit_layers": explicit,
            "calibrated_layers": stats.get("quantize_calibrated", 0), "int8_layers": len(quantized),
            "inputs_without_range": kept, "guard": report, "seconds": round(time.perf_counter() - t0, 3)}
    log.info("INT8: %d layers quantized (%s); %d quantizable inputs had no range and stay float",
             len(quantized), info["source"], len(kept))
    if config.device == "cuda" and quantized:
        log.warning("INT8 on cuda: kilnrt's %d INT8 layers are not faster than FP16 yet (their kernels quantize "
                    "float inputs themselves; BERT-base ran at 0.54x FP16's speed on an H200): build FP16 for "
                    "speed (docs/int8.md)", len(quantized))
    return net, info


def _calibrate(net, calibrator, watch, config, profiles, holdback: int = 0):
    """(amax per tensor, where it came from, held-back batches for the accuracy guard)."""
    algorithm = CalibrationAlgoType(int(calibrator.get_algorithm()))
    shapes = _input_shapes(net, profiles)
    check = _shape_checker(net, profiles)
    cached = calibrator.read_calibration_cache()
    if cached:
        algo_name, amax = read_cache(cached)
        log.info("INT8: ranges of %d tensors from the calibration cache (%s)", len(amax), algo_name)
        held = []
        if holdback:   # the guard still needs a batch to measure on
            _, _, held = collect(net, calibrator_batches(calibrator, shapes, config.device), [], config.device,
                                 check_shape=check, holdback=holdback)
        return amax, f"calibration cache ({algo_name}, {len(amax)} tensors)", held
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
    log.info("INT8: calibrated %d tensors on %d batches (%s)", len(amax), count, algorithm.name)
    return amax, f"{algorithm.name} over {count} batches", held


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
