"""The INT8 accuracy guard: keep the most sensitive layers in float until the outputs'
error on held-back calibration batches fits a budget.

TensorRT leaves finding the layers that break INT8 to the user (with Polygraphy).  With
``accuracy_budget`` (a relative L2 error of all float outputs together, e.g. 0.05), the
builder holds back the last calibration batch from the statistics and, if quantizing every
layer misses the budget there:

1. measures each layer's *sensitivity*: the error with that layer alone in INT8 (with both
   INT8 and FP8 allowed, alone in each, and the layer takes the type with the smaller error);
2. keeps the most sensitive layers in float, the fewest that meet the budget (a bisection
   over the layers sorted by sensitivity, checked at the end).

The build info (``build_info["int8"]["guard"]``), the build log and ``kilnrt inspect``
name the layers kept and their sensitivities.
"""
from __future__ import annotations

import logging
import time

import torch

from kilnrt.builder.calibration import CalibrationError, NetworkRunner
from kilnrt.network.dtypes import DataType
from kilnrt.optimize.passes.quantization import quantizable_layers, quantize_calibrated

log = logging.getLogger("kilnrt.builder")


def output_error(runs: list[dict[str, torch.Tensor]], refs: list[dict[str, torch.Tensor]]) -> float:
    """sqrt(sum |got - ref|^2 / sum |ref|^2) over every float output of every batch."""
    num = den = 0.0
    for got, ref in zip(runs, refs):
        for name, r in ref.items():
            if not r.dtype.is_floating_point:
                continue
            r64, g64 = r.double(), got[name].double()
            num += float(((g64 - r64) ** 2).sum())
            den += float((r64 ** 2).sum())
    return (num / den) ** 0.5 if den > 0 else (0.0 if num == 0 else float("inf"))


def guard(net, amax: dict[str, float], held: list, budget: float, device: str, to: DataType = DataType.INT8,
          alternative: DataType | None = None, fp8_amax: dict[str, float] | None = None):
    """(quantized network, report) meeting ``budget`` on ``held`` batches where it can.  Layers are
    in ``to`` (INT8 or FP8); with an ``alternative`` (FP8 when both flags are set) each layer takes
    whichever of the two gives the smaller error alone; the most sensitive then stay float."""
    if not held:
        raise CalibrationError("accuracy_budget needs a held-back calibration batch: give at least two batches "
                               "(the last one is held back to measure the error)")
    t0 = time.perf_counter()
    refs = [NetworkRunner(net, device).run(b) for b in held]

    def error(types: dict[str, DataType | None]) -> float:
        runner = NetworkRunner(quantize_calibrated(net, amax, fp8_amax=fp8_amax, to=to, types=types), device)
        return output_error([runner.run(b) for b in held], refs)

    names = [l.name for l in quantizable_layers(net, amax)]
    alone = {n: {None: 0.0} for n in names}         # each layer's error with only it quantized

    def measure_alone(kinds) -> None:
        floats = dict.fromkeys(names)
        for kind in kinds:
            for n in names:
                alone[n][kind] = error({**floats, n: kind})

    if alternative is not None:   # each layer takes the type with the smaller error alone
        measure_alone((to, alternative))
        chosen = {n: min((k for k in alone[n] if k is not None), key=alone[n].get) for n in names}
    else:
        chosen = dict.fromkeys(names, to)
    full = error(chosen)
    kinds = sorted({k.name for k in chosen.values()})
    report = {"budget": budget, "types": kinds, "error_all_int8": round(full, 6), "kept_float": [],
              "error": round(full, 6)}
    if alternative is not None:
        report["chosen"] = {n: k.name for n, k in chosen.items()}
    if full <= budget or not names:
        report["seconds"] = round(time.perf_counter() - t0, 3)
        return quantize_calibrated(net, amax, fp8_amax=fp8_amax, to=to, types=chosen), report
    if alternative is None:       # only when the budget is missed: one run per layer
        measure_alone((to,))
    sensitivity = {n: alone[n][chosen[n]] for n in names}
    order = sorted(names, key=sensitivity.get, reverse=True)

    def keeping(count: int) -> dict[str, DataType | None]:
        return {**chosen, **dict.fromkeys(order[:count])}

    lo, hi = 1, len(order)                  # the fewest kept-float layers that meet the budget
    errors = {}
    while lo < hi:
        mid = (lo + hi) // 2
        errors[mid] = error(keeping(mid))
        if errors[mid] <= budget:
            hi = mid
        else:
            lo = mid + 1
    kept = order[:lo]
    final = errors.get(lo)
    if final is None:
        final = error(keeping(lo))
    report.update(kept_float=[{"layer": n, "sensitivity": round(sensitivity[n], 6)} for n in kept],
                  error=round(final, 6), seconds=round(time.perf_counter() - t0, 3))
    label = "/".join(kinds)
    if final > budget:
        log.warning("%s accuracy guard: even with %d of %d layers in float the error is %.4g, above the budget "
                    "%.4g", label, len(kept), len(names), final, budget)
    log.info("%s accuracy guard: error %.4g with every layer quantized, %.4g with %d layers kept in float "
             "(budget %.4g): %s", label, full, final, len(kept), budget, ", ".join(kept))
    return quantize_calibrated(net, amax, fp8_amax=fp8_amax, to=to, types=keeping(lo)), report
