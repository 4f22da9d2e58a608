"""The memory a plan asks for, checked at load against a budget.

A plan's weights are in the file; its activations are made at run time by its layers, so a
plan can ask for far more memory than its size (a 160 KB plan whose params ask for 37 GB).
:func:`check_budget` measures what the engine will really allocate: it walks the layers in
order at each optimization profile's largest input shapes (or the static shapes) on *meta*
tensors, which have shapes and data types but no memory, through the same reference
kernels that compute every layer's output shape, and keeps the peak of the activations alive
at once (each is released after its last reader, as the runtime does).  Values the layers
read as shapes (reshape targets, slice bounds, sizes) are computed for real, but only after
a meta run has shown them to be small; what a kernel makes from nothing (Fill, Range) is
made on the meta device.  A layer whose kernel cannot run on meta tensors (a plugin that
reads an input's values) is measured by its shape rule.  A layer whose output size depends
on data (NonZero, NMS, loops) cannot be measured before it runs: its outputs, and what
follows from them, are not counted.

The budget is, in order: the ``memory_budget`` given to :func:`kilnrt.load` (or set on a
:class:`~kilnrt.engine.runtime.Runtime`), the environment variable ``KILNRT_MEMORY_BUDGET``
(bytes, or with a K/M/G/T suffix: ``8G``), else the device's memory: the memory available
now (``MemAvailable``) on the CPU, the free memory of the current GPU for CUDA plans.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from kilnrt.errors import ErrorCode, KilnError, PlanError
from kilnrt.network.layers import LayerKind, shape_input_positions

ENV = "KILNRT_MEMORY_BUDGET"
HOST_ELEMENTS = 1 << 16          # shape values larger than this stay meta (never computed at load)
UNMEASURED = frozenset({LayerKind.LOOP, LayerKind.CONDITIONAL})   # may run any number of times
_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_budget(value: Any, what: str = "memory_budget") -> int:
    """Bytes from an int or a string such as ``"8G"`` / ``"512M"`` / ``"1000000"``."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, str):
        text = value.strip().upper().removesuffix("B").removesuffix("I")
        scale = _SUFFIX.get(text[-1:], 1)
        text = text[:-1] if text[-1:] in _SUFFIX else text
        try:
            value = int(float(text) * scale)
        except ValueError:
            value = None
    if not isinstance(value, int) or value <= 0:
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        f"{what} must be a positive number of bytes (an int, or a string like '8G'), got {value!r}")
    return value


def device_memory(device: str) -> int | None:
    """The memory available to a plan on ``device`` now, or None if it cannot be told."""
    if device == "cuda":
        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def default_budget(device: str) -> tuple[int | None, str]:
    """(bytes, where the number came from) when the caller gave none."""
    if os.environ.get(ENV):
        return parse_budget(os.environ[ENV], ENV), f"${ENV}"
    return device_memory(device), f"the {device} memory available"


def weight_bytes(engine: Any) -> int:
    """Bytes of the constants and array params of ``engine`` and its profile engines."""
    total, seen = 0, set()
    for one in engine.profile_engines or [engine]:
        for name, array in one.constants.items():
            if id(array) not in seen:
                seen.add(id(array))
                total += int(array.nbytes)
        for layer in one.layers:
            for value in vars(layer.params).values() if hasattr(layer.params, "__dict__") else ():
                if hasattr(value, "nbytes") and id(value) not in seen:
                    seen.add(id(value))
                    total += int(value.nbytes)
    return total


def shape_sets(engine: Any, profiles: list[dict]) -> list[dict[str, tuple[int, ...]]]:
    """The input shapes to measure at: each profile's max (static inputs at their shape); the
    static shapes when there are no profiles; none when a dynamic input has no range."""
    inputs = [t for t in engine.io if t.mode == "input"]
    out = []
    for p in profiles or [{}]:
        shapes = {t.name: tuple(p[t.name][2]) if t.name in p else tuple(t.shape) for t in inputs}
        if all(d >= 0 for s in shapes.values() for d in s):
            out.append(shapes)
    return out


def activation_peak(engine: Any, shapes: dict[str, tuple[int, ...]], stop_at: int | None = None) -> int:
    """Peak bytes of the inputs and activations alive at once when ``engine`` runs at
    ``shapes``; stops early once it passes ``stop_at``."""
    from kilnrt.kernels.registry import run_layer
    from kilnrt.network.dtypes import numpy_to_torch

    values: dict[str, torch.Tensor | None] = {}
    for name, array in engine.constants.items():
        t = numpy_to_torch(array)
        values[name] = t if t.numel() <= HOST_ELEMENTS else t.to("meta")
    keep = set(values) | {t.name for t in engine.io if t.mode == "output"}
    live = 0
    for t in engine.io:
        if t.mode == "input":
            values[t.name] = torch.empty(shapes[t.name], dtype=t.dtype.torch, device="meta")
            live += _nbytes(values[t.name])
    last_use = {n: i for i, layer in enumerate(engine.layers) for n in layer.inputs if n is not None}
    peak = live
    for i, layer in enumerate(engine.layers):
        outs = _measure(layer, [None if n is None else values.get(n, None) for n in layer.inputs], run_layer)
        for k, (name, out) in enumerate(zip(layer.outputs, outs)):
            values[name] = out
            if out is not None:
                declared = layer.output_dtypes[k] if k < len(layer.output_dtypes) else None
                live += _nbytes(out, declared)
        peak = max(peak, live)
        if stop_at is not None and peak > stop_at:
            return peak
        for n in set(layer.inputs):
            if n is not None and last_use.get(n) == i and n not in keep and values.get(n) is not None:
                live -= _nbytes(values.pop(n))   # released after its last reader
    return peak


def _measure(layer, ins: list, run_layer) -> list:
    """The layer's outputs at these inputs: meta tensors, or small real shape values."""
    if layer.kind in UNMEASURED or any(n is not None and t is None for n, t in zip(layer.inputs, ins)):
        return [None] * len(layer.outputs)
    shape_inputs = shape_input_positions(layer)
    if any(t is not None and t.device.type == "meta" for i, t in enumerate(ins) if i in shape_inputs):
        return [None] * len(layer.outputs)   # a size that comes from data
    try:
        meta = [t if (t is None or i in shape_inputs) else t.to("meta") for i, t in enumerate(ins)]
        # Tensors a kernel makes from nothing (Fill's torch.full, Range's arange) are meta
        # too: only shape inputs stay real, so without this a Fill whose shape is a small
        # real value would allocate its whole output here, before the budget is compared.
        with torch.device("meta"):
            outs = run_layer(layer, meta)
        real = [t for t in ins if t is not None]
        reads_values = layer.kind != LayerKind.SHAPE   # Shape reads only its input's shape
        if (not reads_values or all(t.device.type != "meta" for t in real)) and \
                all(isinstance(o, torch.Tensor) and o.numel() <= HOST_ELEMENTS for o in outs):
            outs = run_layer(layer, ins)   # a small value that later layers may read as a shape
    except KilnError:
        raise
    except Exception:  # noqa: BLE001 - not computable on meta tensors: the shape rule, else not measured
        return _by_shape_rule(layer, ins)
    return [o if isinstance(o, torch.Tensor) else None for o in outs] + [None] * (len(layer.outputs) - len(outs))


def _by_shape_rule(layer, ins: list) -> list:
    """Meta outputs shaped by the layer's shape rule (the builder's shape inference), for a
    kernel that cannot run on meta tensors: a plugin that reads the values of an input its
    params do not mark as a shape input (Col2Im's image shape).  An output whose rule gives
    no numeric shape (data-dependent, or the rule failed) is None: not measured."""
    import itertools

    from kilnrt.network.dtypes import DataType, torch_to_numpy
    from kilnrt.network.infer import InferenceContext, infer_layer
    from kilnrt.network.shape_rules import MAX_VALUE_ELEMENTS, Info

    try:
        infos = []
        for t in ins:
            if t is None:
                infos.append(None)
                continue
            value = torch_to_numpy(t) if t.device.type != "meta" and t.numel() <= MAX_VALUE_ELEMENTS else None
            infos.append(Info(DataType.from_torch(t.dtype), tuple(t.shape), value))
        outs = []
        for info in infer_layer(InferenceContext(itertools.count()), layer, infos):
            shape = info.shape
            if info.dtype is None or shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
                outs.append(None)
            else:
                outs.append(torch.empty(shape, dtype=info.dtype.torch, device="meta"))
        return outs
    except KilnError:
        raise
    except Exception:  # noqa: BLE001 - no shape to be had before it runs: not measured
        return [None] * len(layer.outputs)


def _nbytes(t: torch.Tensor, declared: Any = None) -> int:
    size = t.element_size()
    if declared is not None:
        try:
            from kilnrt.network.dtypes import DataType

            size = max(size, DataType[declared].torch.itemsize)
        except (KeyError, AttributeError, TypeError):
            pass
    return t.numel() * size


def check_budget(engine: Any, budget: int | None = None) -> None:
    """Raise PlanError if ``engine``'s weights plus its peak activations exceed ``budget``."""
    source = "the budget given"
    if budget is None:
        budget, source = default_budget(engine.device)
        if budget is None:
            return
    else:
        budget = parse_budget(budget)
    weights = weight_bytes(engine)
    if weights > budget:
        raise _over(weights, 0, budget, source, None)
    engines = engine.profile_engines or [engine]
    for p, one in enumerate(engines):
        profiles = [engine.profiles[p]] if engine.profile_engines else engine.profiles
        for shapes in shape_sets(one, profiles):
            peak = activation_peak(one, shapes, stop_at=budget - weights)
            if weights + peak > budget:
                raise _over(weights, peak, budget, source, shapes)


def _over(weights: int, peak: int, budget: int, source: str, shapes: dict | None) -> PlanError:
    at = "" if not shapes else " at input shapes " + ", ".join(f"{n}={list(s)}" for n, s in shapes.items())
    return PlanError(ErrorCode.PLAN_OVER_BUDGET,
                     f"the plan asks for {_size(weights + peak)} ({weights} bytes of weights + {peak} bytes of "
                     f"activations{at}), more than the memory budget of {_size(budget)} ({source}); "
                     f"raise it with kilnrt.load(..., memory_budget=BYTES) or ${ENV}, or rebuild with smaller "
                     "profile shapes")


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"
