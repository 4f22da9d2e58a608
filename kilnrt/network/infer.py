"""Shape and type inference by abstract execution.

Every layer kind's CPU reference kernel is run on *meta* tensors (shape and dtype, no
data), while values that are known (constants, and shape computations derived from
them) stay real.  Symbolic input dims are given two different placeholder sizes; an
output dim that is the same in both runs is static, one that follows a symbol is that
symbol, anything else is -1.  A layer that cannot run on meta data (data-dependent
output shapes) leaves its outputs of unknown shape.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch

from kilnrt.network.dtypes import DataType, numpy_to_torch
from kilnrt.network.layers import DATA_DEPENDENT, SHAPE_INPUTS, LayerKind

log = logging.getLogger("kilnrt.infer")

# Placeholder sizes for the symbolic dims of the two probing runs: symbol j gets
# _PLACEHOLDER[run] + 16 * j.  Large enough that convolutions and pools downsample
# without reaching zero; tensors of these sizes are meta and cost nothing.
_PLACEHOLDER = (96, 160)
_MAX_REAL_ELEMENTS = 1 << 22   # a real value larger than this is demoted to meta


def _is_meta(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def run_layer(layer, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """Run a layer's reference kernel on real or meta inputs (meta if any non-shape input is)."""
    from kilnrt.kernels.registry import reference_kernel

    if layer.kind == LayerKind.CONSTANT:
        return [numpy_to_torch(layer.params.weights)]
    shape_inputs = SHAPE_INPUTS.get(layer.kind, frozenset())
    if any(_is_meta(t) for i, t in enumerate(inputs) if i not in shape_inputs):
        inputs = [t if (t is None or i in shape_inputs or _is_meta(t)) else t.to("meta")
                  for i, t in enumerate(inputs)]
    out = reference_kernel(layer.kind)(layer.params, *inputs)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def propagate(network, feeds: Mapping[str, torch.Tensor], *, start: int = 0,
              probes: dict[str, torch.Tensor | None] | None = None,
              run: int | None = None) -> dict[str, torch.Tensor | None]:
    """Run the network on ``feeds`` (real or meta tensors); returns every tensor's probe value.

    A layer that cannot run on meta tensors (data-dependent output shapes) is retried on
    zero-filled real inputs to learn its outputs' rank and dtype; in probing run ``run``
    its outputs then get placeholder sizes, so that every dim depending on it reads as -1.
    Without ``run``, or when that fails too, its outputs are None (unknown), and so are
    the outputs of the layers that depend on it.
    """
    values: dict[str, torch.Tensor | None] = dict(probes or {})
    values.update(feeds)
    for layer in network.layers[start:]:
        ins = [None if t is None else values.get(t.name) for t in layer.inputs]
        missing = any(t is not None and values.get(t.name) is None for t in layer.inputs)
        outs: list[torch.Tensor | None]
        if missing:
            outs = [None] * len(layer.outputs)
        else:
            try:
                outs = run_layer(layer, ins)
                outs = [_demote(o) for o in outs]
            except Exception as exc:  # noqa: BLE001 - data-dependent or failing layers
                log.debug("layer %s (%s): no static shape: %s", layer.name, layer.kind.value, exc)
                outs = _meta_probe(layer, ins)
                if outs is None:
                    outs = _data_dependent_probe(layer, ins, run) if run is not None else [None] * len(layer.outputs)
        for t, v in zip(layer.outputs, outs):
            values[t.name] = v
    return values


def _meta_probe(layer, inputs) -> list[torch.Tensor] | None:
    """Retry on meta data a layer that failed on real values.  Values derived from the
    placeholder sizes can be invalid for the real model (e.g. positions 0..95 gathered from
    a 64-row embedding table, when ``seq`` is really at most 64); the shapes still hold."""
    shape_inputs = SHAPE_INPUTS.get(layer.kind, frozenset())
    meta = [t if (t is None or i in shape_inputs or _is_meta(t)) else t.to("meta") for i, t in enumerate(inputs)]
    if all(a is b for a, b in zip(meta, inputs)):
        return None
    try:
        return run_layer(layer, meta)
    except Exception:  # noqa: BLE001
        return None


_DATA_DEPENDENT_SIZE = (7, 11)


def _rank_rule(layer, inputs) -> list[tuple[Any, torch.dtype]] | None:
    """The kernel's ``rank_rule(params, *inputs)``, if it has one: each output's rank and dtype
    from the inputs' ranks, dtypes and the *lengths* of shape inputs alone (like TensorRT,
    which knows a shape tensor's length at build time but not always its values).  A rule
    may give dims instead of a rank: a tuple of ints (known) and None (unknown)."""
    from kilnrt.kernels.registry import reference_kernel

    rule = getattr(reference_kernel(layer.kind), "rank_rule", None)
    if rule is None:
        return None
    try:
        return list(rule(layer.params, *inputs))
    except Exception:  # noqa: BLE001
        return None


def _data_dependent_probe(layer, inputs, run: int) -> list[torch.Tensor | None]:
    """Outputs of a layer that could not run on meta tensors, run on zero-filled real inputs.

    Kinds in ``DATA_DEPENDENT`` keep only rank and dtype (every dim a per-run placeholder,
    so whatever depends on it reads as -1); other kinds (a kernel without a meta
    implementation) keep the shapes they produced, unless the values of their shape inputs
    are unknown.  A kernel's ``rank_rule`` (see :func:`_rank_rule`) takes precedence.
    """
    size = _DATA_DEPENDENT_SIZE[run]
    ranks = _rank_rule(layer, inputs)
    if ranks is not None:
        return [torch.empty(tuple(size if d is None else d for d in r) if isinstance(r, tuple) else (size,) * r,
                            dtype=dt, device="meta") for r, dt in ranks]
    shape_inputs = SHAPE_INPUTS.get(layer.kind, frozenset())
    unknown_values = any(_is_meta(t) for i, t in enumerate(inputs) if i in shape_inputs)
    real = []
    for t in inputs:
        if t is not None and _is_meta(t):
            if t.numel() > _MAX_REAL_ELEMENTS:
                return [None] * len(layer.outputs)
            t = torch.zeros(t.shape, dtype=t.dtype)
        real.append(t)
    try:
        outs = run_layer(layer, real)
    except Exception:  # noqa: BLE001
        return [None] * len(layer.outputs)
    if layer.kind not in DATA_DEPENDENT and not unknown_values:
        return [o.to("meta") for o in outs]
    return [torch.empty((size,) * o.dim(), dtype=o.dtype, device="meta") for o in outs]


def _demote(t: torch.Tensor) -> torch.Tensor:
    if isinstance(t, torch.Tensor) and not _is_meta(t) and t.numel() > _MAX_REAL_ELEMENTS:
        return t.to("meta")
    return t


def symbol_sizes(network) -> list[dict[str, int]]:
    """For each probing run, the placeholder size of every symbolic / unknown input dim."""
    symbols: list[str] = []
    for t in network.inputs:
        for i, d in enumerate(t.shape or ()):
            name = _symbol(t, i, d)
            if name is not None and name not in symbols:
                symbols.append(name)
    return [{s: base + 16 * j for j, s in enumerate(symbols)} for base in _PLACEHOLDER]


def _symbol(t, i: int, d) -> str | None:
    if isinstance(d, str):
        return d
    if d is None or (isinstance(d, int) and d < 0):
        return f"{t.name}:{i}"
    return None


def _feeds(network, sizes: dict[str, int], device: str = "meta") -> dict[str, torch.Tensor]:
    feeds = {}
    for t in network.inputs:
        shape = [sizes[_symbol(t, i, d)] if _symbol(t, i, d) else d for i, d in enumerate(t.shape or ())]
        feeds[t.name] = torch.empty(shape, dtype=t.dtype.torch, device=device)
    return feeds


def infer_network(network) -> None:
    """Fill ``dtype`` and ``shape`` of every layer output; incremental over appended layers."""
    done = network._inferred
    start = len(done)
    if start == len(network.layers) and start:
        return
    runs = symbol_sizes(network)
    probes = network._probes
    if start == 0:
        probes.clear()
        for r in range(2):
            probes[r] = propagate(network, _feeds(network, runs[r]), run=r)
    else:
        for r in range(2):
            probes[r] = propagate(network, {}, start=start, probes=probes[r], run=r)
    by_size = [{v: k for k, v in run.items()} for run in runs]
    for layer in network.layers[start:]:
        for t in layer.outputs:
            a, b = probes[0].get(t.name), probes[1].get(t.name)
            t._dtype = DataType.from_torch(a.dtype) if a is not None else (
                DataType.from_torch(b.dtype) if b is not None else t._dtype)
            if layer.output_types.get(layer.outputs.index(t)) is not None:
                t._dtype = layer.output_types[layer.outputs.index(t)]
            if a is None or b is None or a.dim() != b.dim():
                t._shape = None
                continue
            dims = []
            for da, db in zip(a.shape, b.shape):
                if da == db:
                    dims.append(int(da))
                elif by_size[0].get(da) is not None and by_size[0].get(da) == by_size[1].get(db):
                    dims.append(by_size[0][da])
                else:
                    dims.append(-1)
            t._shape = tuple(dims)
        done.add(id(layer))


def known_value(network, tensor) -> torch.Tensor | None:
    """The value of a tensor if it is the same whatever the inputs (constant-derived), else None."""
    network.infer()
    a = network._probes.get(0, {}).get(tensor.name)
    b = network._probes.get(1, {}).get(tensor.name)
    if a is None or b is None or _is_meta(a) or _is_meta(b):
        return None
    if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
        return None
    return a


def concrete_shapes(network, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[tuple[int, ...], DataType] | None]:
    """Every tensor's concrete (shape, dtype) for concrete input shapes, None where data-dependent."""
    feeds = {t.name: torch.empty(tuple(input_shapes[t.name]), dtype=t.dtype.torch, device="meta")
             for t in network.inputs}
    values = propagate(network, feeds)
    return {k: (None if v is None else (tuple(int(d) for d in v.shape), DataType.from_torch(v.dtype)))
            for k, v in values.items()}
