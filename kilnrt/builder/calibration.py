"""INT8 calibration: each quantizable activation's range, from sample batches or a cache.

The builder runs the optimized FP32 network on the calibration batches (the reference
kernels, on the build device), watches the inputs of the convolutions and matrix multiplies
that :func:`kilnrt.optimize.passes.quantization.quantize_calibrated` can quantize, and turns
what it saw into each one's ``amax`` (the magnitude that maps to 127):

- ``ENTROPY_CALIBRATION_2`` (the default) and ``ENTROPY_CALIBRATION``: the threshold whose
  128-level quantization of the histogram of |x| loses the least information (the smallest
  KL divergence), TensorRT's entropy method, but never below the 99.9th percentile of |x|
  (see :meth:`Histogram.entropy`).  kilnrt runs the same search for both names.
- ``MINMAX_CALIBRATION``: the largest |x| seen.
- ``LEGACY_CALIBRATION``: the ``get_quantile()`` quantile of |x| (``get_regression_cutoff``
  is not used).
- ``percentile`` (the Pythonic API only): the given percentile of |x|.

Batches come from a calibrator with TensorRT's interface (``get_batch(names)`` until it
returns None; arrays, tensors, or device pointers on CUDA) or from any iterable of feeds
(``kilnrt.build(..., int8=True, calibration=batches)``).  The result is written and read as
TensorRT's calibration cache text: a ``TRT-<version>-<Algorithm>`` line, then one
``tensor: <hex of the float32 scale amax/127, big-endian>`` line per tensor.
"""
from __future__ import annotations

import enum
import logging
import math
import struct
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from kilnrt.errors import ErrorCode, KilnError
from kilnrt.network.dtypes import numpy_to_torch

log = logging.getLogger("kilnrt.builder")

HIST_BINS = 2048          # histogram bins over the first batch's range; more as larger values come
MAX_BINS = 1 << 16        # beyond this the bins merge pairwise (the width doubles)
QUANT_LEVELS = 128        # the positive levels of symmetric INT8
ENTROPY_FLOOR = 0.999     # the entropy threshold is at least this quantile of |x| (see Histogram.entropy)
CACHE_VERSION = "TRT-100300"


class CalibrationAlgoType(enum.IntEnum):
    LEGACY_CALIBRATION = 0
    ENTROPY_CALIBRATION = 1
    ENTROPY_CALIBRATION_2 = 2
    MINMAX_CALIBRATION = 3


CACHE_NAMES = {CalibrationAlgoType.LEGACY_CALIBRATION: "LegacyCalibration",
               CalibrationAlgoType.ENTROPY_CALIBRATION: "EntropyCalibration",
               CalibrationAlgoType.ENTROPY_CALIBRATION_2: "EntropyCalibration2",
               CalibrationAlgoType.MINMAX_CALIBRATION: "MinMaxCalibration"}
METHODS = {"entropy": CalibrationAlgoType.ENTROPY_CALIBRATION_2, "minmax": CalibrationAlgoType.MINMAX_CALIBRATION,
           "percentile": CalibrationAlgoType.LEGACY_CALIBRATION}


class CalibrationError(KilnError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.CALIBRATION, message)


# ----------------------------------------------------------------------------- statistics
class Histogram:
    """|x| of one tensor over every batch: the largest value, and a histogram whose bins keep
    the first batch's width (HIST_BINS over its range) and grow in number as larger values
    come, merging pairwise beyond MAX_BINS."""

    def __init__(self) -> None:
        self.amax = 0.0
        self.width = 0.0
        self.counts = np.zeros(0, np.float64)

    def add(self, x: torch.Tensor) -> None:
        a = x.detach().abs().float().reshape(-1)
        a = a[torch.isfinite(a)]
        if a.numel() == 0:
            return
        top = float(a.max())
        self.amax = max(self.amax, top)
        if self.amax == 0.0:
            return
        if self.width == 0.0:
            self.width = self.amax / HIST_BINS
        need = max(int(math.ceil(self.amax / self.width)), 1)
        while need > MAX_BINS:
            self._merge_pairs()
            need = max(int(math.ceil(self.amax / self.width)), 1)
        if need > self.counts.size:
            self.counts = np.concatenate([self.counts, np.zeros(need - self.counts.size)])
        n = self.counts.size
        hist = torch.histc(a, bins=n, min=0.0, max=n * self.width)
        self.counts += hist.double().cpu().numpy()

    def _merge_pairs(self) -> None:
        if self.counts.size % 2:
            self.counts = np.concatenate([self.counts, [0.0]])
        self.counts = self.counts.reshape(-1, 2).sum(axis=1)
        self.width *= 2

    def quantile(self, q: float) -> float:
        total = self.counts.sum()
        if total == 0:
            return self.amax
        cum = np.cumsum(self.counts)
        idx = min(int(np.searchsorted(cum, q * total)), self.counts.size - 1)
        below = cum[idx - 1] if idx else 0.0
        inside = (q * total - below) / self.counts[idx] if self.counts[idx] else 1.0
        # values spread evenly within a bin: the bin's upper edge alone is up to a bin too high
        return min((idx + min(max(inside, 0.0), 1.0)) * self.width, self.amax)

    def entropy(self) -> float:
        """The threshold with the least KL divergence between the histogram clipped there and
        its 128-level quantization (TensorRT's entropy calibration). The first bin counts as
        the second does: half of a ReLU's outputs are exactly 0, and that one bin would
        otherwise pull the threshold down to where little else is resolved.  And the threshold
        is at least the :data:`ENTROPY_FLOOR` quantile of |x|: on a tensor of few distinct
        values (an image of 17 gray levels) the search otherwise settles below most of them
        (kilnrt's addition to the method)."""
        counts = self.counts.copy()
        n = counts.size
        if n > 1:
            counts[0] = counts[1]   # the spike of exact zeros (a ReLU's output) would decide the search alone
        if n <= QUANT_LEVELS or counts.sum() == 0:
            return self.amax
        best_kl, best_i = math.inf, n
        step = max(1, (n - QUANT_LEVELS) // 1024)   # at most ~1024 candidate thresholds
        for i in range(QUANT_LEVELS, n + 1, step):
            kl = _kl_at(counts, i)
            if kl < best_kl:
                best_kl, best_i = kl, i
        return min(max((best_i + 0.5) * self.width, self.quantile(ENTROPY_FLOOR)), self.amax)


def _kl_at(counts: np.ndarray, i: int) -> float:
    """KL(P || Q): P the first ``i`` bins with the outliers added to the last, Q those bins
    merged into 128 levels and spread back evenly over each level's nonzero bins."""
    p = counts[:i].copy()
    p[-1] += counts[i:].sum()
    src = counts[:i]
    nonzero = (src != 0).astype(np.float64)
    starts = np.linspace(0, i, QUANT_LEVELS + 1).astype(np.int64)[:-1]   # strictly increasing: i >= 128
    lengths = np.diff(np.append(starts, i))
    level_sum = np.add.reduceat(src, starts)
    level_nonzero = np.add.reduceat(nonzero, starts)
    per_bin = np.divide(level_sum, level_nonzero, out=np.zeros_like(level_sum), where=level_nonzero > 0)
    q = np.repeat(per_bin, lengths) * nonzero
    ps, qs = p.sum(), q.sum()
    if ps == 0 or qs == 0:
        return math.inf
    p, q = p / ps, q / qs
    mask = p > 0
    if np.any(q[mask] == 0):
        return math.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def amax_of(hist: Histogram, algorithm: CalibrationAlgoType, quantile: float = 0.9999) -> float:
    if algorithm == CalibrationAlgoType.MINMAX_CALIBRATION:
        return hist.amax
    if algorithm == CalibrationAlgoType.LEGACY_CALIBRATION:
        return hist.quantile(quantile)
    return hist.entropy()


# ----------------------------------------------------------------------------- the cache
def write_cache(amax: Mapping[str, float], algorithm: CalibrationAlgoType) -> bytes:
    lines = [f"{CACHE_VERSION}-{CACHE_NAMES[algorithm]}"]
    for name, a in amax.items():
        lines.append(f"{name}: {struct.pack('>f', a / 127.0).hex()}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def read_cache(data: bytes | str) -> tuple[str, dict[str, float]]:
    """(algorithm name, {tensor: amax}) of a calibration cache; CalibrationError if malformed."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, (bytes, bytearray, memoryview)) else str(data)
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines or not lines[0].startswith("TRT-") or lines[0].count("-") < 2:
        raise CalibrationError("the calibration cache does not start with a 'TRT-<version>-<Algorithm>' line; "
                               "it is not a TensorRT-format calibration cache (delete it to calibrate again)")
    algo = lines[0].split("-", 2)[2].strip()
    out: dict[str, float] = {}
    for k, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        value = value.strip()
        try:
            if not sep or not name.strip() or len(value) != 8:
                raise ValueError
            scale = struct.unpack(">f", bytes.fromhex(value))[0]
        except ValueError:
            raise CalibrationError(f"calibration cache line {k} is {line[:80]!r}; expected 'tensor: <8 hex digits "
                                   "of a float32 scale>'") from None
        if not (math.isfinite(scale) and scale > 0):
            raise CalibrationError(f"calibration cache line {k}: the scale of {name.strip()!r} is {scale}; "
                                   "it must be a positive finite number")
        out[name.strip()] = scale * 127.0
    return algo, out


# ----------------------------------------------------------------------------- batches
def calibrator_batches(calibrator, inputs: Mapping[str, tuple[tuple[int, ...], Any]], device: str
                       ) -> Iterable[dict[str, torch.Tensor]]:
    """The feeds of a TensorRT-style calibrator: ``get_batch(names)`` until it returns None
    (or an empty list).  ``inputs``: name -> (shape of a raw device pointer's batch, DataType)."""
    names = list(inputs)
    while True:
        batch = calibrator.get_batch(names)
        if not batch:
            return
        if isinstance(batch, Mapping):
            yield dict(batch)
            continue
        if len(batch) != len(names):
            raise CalibrationError(f"get_batch({names}) returned {len(batch)} buffers; it must return one per "
                                   f"input, in that order (or None when there are no more batches)")
        feeds = {}
        for name, buf in zip(names, batch):
            if isinstance(buf, (int, np.integer)) and not isinstance(buf, bool):
                if device != "cuda" or int(buf) == 0:
                    raise CalibrationError(f"get_batch returned the pointer {int(buf):#x} for {name!r}; pointers are "
                                           "read only on a CUDA build, as device memory: on the CPU return arrays")
                from kilnrt.engine.context import _from_pointer

                shape, dtype = inputs[name]
                feeds[name] = _from_pointer(int(buf), shape, dtype, "cuda")
            else:
                feeds[name] = buf
        yield feeds


def _as_tensor(v, device: torch.device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.to(device)
    return numpy_to_torch(np.asarray(v)).to(device)


class NetworkRunner:
    """Runs a float network on the reference kernels, on one device, layer by layer, freeing
    each value after its last use; ``watch(name, value)`` sees every tensor as it is made."""

    def __init__(self, net, device: str) -> None:
        self.net = net
        self.device = torch.device(device)
        self.consts = {l.outputs[0].name: numpy_to_torch(l.params.weights).to(self.device)
                       for l in net.layers if l.kind.value == "constant"}
        self.last_use: dict[str, int] = {}
        for i, layer in enumerate(net.layers):
            for t in layer.inputs:
                if t is not None:
                    self.last_use[t.name] = i
        self.outputs = {t.name for t in net.outputs}

    def run(self, feeds: Mapping[str, Any], watch=None) -> dict[str, torch.Tensor]:
        from kilnrt.kernels.registry import run_layer

        values = {t.name: _as_tensor(feeds[t.name], self.device) for t in self.net.inputs}
        if watch is not None:
            for n, v in values.items():
                watch(n, v)
        values.update(self.consts)
        with torch.no_grad():
            for i, layer in enumerate(self.net.layers):
                if layer.kind.value == "constant":
                    continue
                outs = run_layer(layer, [None if t is None else values[t.name] for t in layer.inputs])
                # a shape layer's reference kernel answers on the host: the next layer may mix it
                # with device tensors (a dynamic network's shape arithmetic, calibrated on CUDA)
                outs = [v.to(self.device) if isinstance(v, torch.Tensor) and v.device != self.device else v
                        for v in outs]
                for t, v in zip(layer.outputs, outs):
                    values[t.name] = v
                    if watch is not None:
                        watch(t.name, v)
                for t in layer.inputs:
                    if t is not None and self.last_use.get(t.name) == i and t.name not in self.consts \
                            and t.name not in self.outputs:
                        values.pop(t.name, None)
        return {t.name: values[t.name] for t in self.net.outputs}


def collect(net, batches: Iterable[Mapping[str, Any]], watch: list[str], device: str,
            check_shape=None, holdback: int = 0) -> tuple[dict[str, Histogram], int, list]:
    """Run ``net`` (float, reference kernels) on each batch but the last ``holdback``: a
    :class:`Histogram` per watched tensor, the number of batches observed, and the held-back
    batches (on the host, for the accuracy guard).  ``check_shape(name, shape, index)`` raises
    for a batch shape the network cannot take."""
    from collections import deque

    runner = NetworkRunner(net, device)
    hists = {name: Histogram() for name in watch}
    inputs = [t.name for t in net.inputs]
    pending: deque = deque()
    count = 0

    def observe(name, value):
        if name in hists:
            hists[name].add(value)

    for k, feeds in enumerate(batches):
        missing = [n for n in inputs if n not in feeds]
        if missing:
            raise CalibrationError(f"calibration batch {k} has no value for input(s) {missing}; "
                                   f"each batch gives every network input: {inputs}")
        host = {n: _as_tensor(feeds[n], torch.device("cpu")).clone() for n in inputs}
        if check_shape is not None:
            for n, v in host.items():
                check_shape(n, tuple(v.shape), k)
        pending.append(host)
        if len(pending) > holdback:
            runner.run(pending.popleft(), observe)
            count += 1
    return hists, count, list(pending)
