"""Output shapes of an engine for given input shapes, by running its layers on meta tensors."""
from __future__ import annotations

from typing import Mapping

import torch

from kilnrt.network.dtypes import numpy_to_torch
from kilnrt.kernels.registry import run_layer


def engine_output_shapes(engine, feeds: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    values: dict[str, torch.Tensor | None] = {}
    for name, array in engine.constants.items():
        t = numpy_to_torch(array)
        values[name] = t if t.numel() <= 4096 else t.to("meta")
    values.update(feeds)
    for layer in engine.layers:
        ins = [None if n is None else values.get(n) for n in layer.inputs]
        if any(n is not None and values.get(n) is None for n in layer.inputs):
            outs = [None] * len(layer.outputs)
        else:
            try:
                outs = run_layer(layer, ins)
            except Exception:  # noqa: BLE001 - data-dependent
                outs = [None] * len(layer.outputs)
        values.update(zip(layer.outputs, outs))
    return {t.name: tuple(values[t.name].shape) for t in engine.io
            if t.mode == "output" and values.get(t.name) is not None}
