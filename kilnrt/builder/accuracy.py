"""The INT8 accuracy guard: keep the most sensitive layers in float until the outputs'
error on held-back calibration batches fits a budget.

TensorRT leaves finding the layers that break INT8 to the user (with Polygraphy).  With
``accuracy_budget`` (a relative L2 error of all float outputs together, e.g. 0.05), the
builder holds back the last calibration batch from the statistics and, if quantizing every
layer misses the budget there:

1. measures each layer's *sensitivity*: the error with that layer alone in INT8;
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


def guard(net, amax: dict[str, float], held: list, budget: float, device: str):
    """(quantized network, report) meeting ``budget`` on ``held`` batches where it can."""
    if not held:
        raise CalibrationError("accuracy_budget needs a held-back calibration batch: give at least two batches "
                               "(the last one is held back to measure the error)")
    t0 = time.perf_counter()
    refs = [NetworkRunner(net, device).run(b) for b in held]

    def error(skip: frozenset[str]) -> float:
        qnet = quantize_calibrated(net, amax, skip=skip)
        runner = NetworkRunner(qnet, device)
        return output_error([runner.run(b) for b in held], refs)

    names = [l.name for l in quantizable_layers(net, amax)]
    everything = frozenset(names)
    full = error(frozenset())
    report = {"budget": budget, "error_all_int8": round(full, 6), "kept_float": [], "error": round(full, 6)}
    if full <= budget or not names:
        report["seconds"] = round(time.perf_counter() - t0, 3)
        return quantize_calibrated(net, amax), report
    sensitivity = {n: error(everything - {n}) for n in names}
    order = sorted(names, key=sensitivity.get, reverse=True)
    lo, hi = 1, len(order)                  # the fewest kept-float layers that meet the budget
    errors = {}
    while lo < hi:
        mid = (lo + hi) // 2
        errors[mid] = error(frozenset(order[:mid]))
        if errors[mid] <= budget:
            hi = mid
        else:
            lo = mid + 1
    kept = order[:lo]
    final = errors.get(lo)
    if final is None:
        final = error(frozenset(kept))
    report.update(kept_float=[{"layer": n, "sensitivity": round(sensitivity[n], 6)} for n in kept],
                  error=round(final, 6), seconds=round(time.perf_counter() - t0, 3))
    if final > budget:
        log.warning("INT8 accuracy guard: even with %d of %d layers in float the error is %.4g, above the budget "
                    "%.4g", len(kept), len(names), final, budget)
    log.info("INT8 accuracy guard: error %.4g with every layer in INT8, %.4g with %d layers kept in float "
             "(budget %.4g): %s", full, final, len(kept), budget, ", ".join(kept))
    return quantize_calibrated(net, amax, skip=frozenset(kept)), report
