"""Layer precision constraints, mixed-precision builds, and the search for the layers an
FP16/BF16 build must keep in FP32.

* ``parse_layer_precisions("Conv_3:fp32,/blk/*:fp32")`` reads trtexec's ``--layerPrecisions``
  grammar (a name may hold one ``*`` wildcard; later entries override earlier ones) and
  :func:`fp32_layers` finds the layers it names: a name matches a layer by its own name or
  by the ONNX node it came from (``layer.origin``), so a constraint on an ONNX node holds for
  every layer the importer made of it (both live in :mod:`kilnrt.optimize.passes.precision`,
  which the builder uses too, and are re-exported here).
* :func:`mixed_precision` rewrites a network so that every float layer but the kept ones
  computes in FP16/BF16 (casts at each reduced layer's edges), and :func:`build_reduced`
  builds it: a kept layer reads and writes FP32, like TensorRT's ``--layerPrecisions`` with
  ``--layerOutputTypes``. (kilnrt's own ``fp16=True, layer_precisions=...`` build pins and
  lowers instead: :func:`kilnrt.optimize.passes.precision.constrain_layers`.) On the CPU, whose backend runs FP16/BF16 builds in FP32, this is also how a reduced-precision
  build is shown at all: torch's float16/bfloat16 CPU kernels compute it.
* :func:`find_fp32_layers` is the search: given a predicate "does the build pass with
  these nodes kept in FP32", it finds a small set of nodes that makes it pass.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from kilnrt.errors import ErrorCode, KilnError
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.layers import LayerKind
from kilnrt.optimize.passes.precision import PRECISIONS, fp32_layers, node_order, parse_layer_precisions

__all__ = ["PRECISIONS", "REDUCED", "NotAPrecisionProblem", "SearchResult", "build_reduced", "find_fp32_layers",
           "format_layer_precisions", "fp32_layers", "layers_of", "mixed_precision", "node_order",
           "parse_layer_precisions", "read_layer_precisions"]

log = logging.getLogger("kilnrt.debugging")

REDUCED = {"fp16": DataType.HALF, "bf16": DataType.BF16}


# ----------------------------------------------------------------------------- constraints
def read_layer_precisions(value: str | None) -> dict[str, str]:
    """A spec string, or a JSON file written by ``kilnrt debug precision`` (its ``layer_precisions``)."""
    if value is None:
        return {}
    if value.endswith(".json") or os.path.isfile(value):
        try:
            with open(value) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"layer precisions: cannot read the file {value!r}: {exc}") from None
        table = data.get("layer_precisions") if isinstance(data, dict) else None
        if not isinstance(table, dict):
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"layer precisions: {value!r} has no 'layer_precisions' object "
                            "(write it with kilnrt debug precision --save FILE)")
        return parse_layer_precisions([f"{k}:{v}" for k, v in table.items()])
    return parse_layer_precisions(value)


def format_layer_precisions(nodes: Iterable[str], word: str = "fp32") -> str:
    """trtexec's ``--layerPrecisions`` value for ``nodes``."""
    return ",".join(f"{n}:{word}" for n in nodes)


def layers_of(network: Network, nodes: Iterable[str]) -> set[str]:
    """The names of the layers made from the ONNX ``nodes``."""
    nodes = set(nodes)
    return {l.name for l in network.layers if l.kind != LayerKind.CONSTANT and nodes.intersection(l.origin)}


# ----------------------------------------------------------------------------- building
_FLOAT_PARAMS = (LayerKind.CAST, LayerKind.FILL)   # layers whose params name FLOAT: they stay as they are


def mixed_precision(network: Network, dtype: DataType, keep: Iterable[str]) -> Network:
    """``network`` with every float layer but those named in ``keep`` computed in ``dtype``.

    Each reduced layer reads its float inputs cast to ``dtype`` and its float outputs are cast
    back to FLOAT (exact: every FP16/BF16 value is an FP32 value), so the values are rounded
    where a reduced-precision build rounds them, and a kept layer reads and writes FP32, as
    TensorRT does with ``--layerPrecisions=L:fp32 --layerOutputTypes=L:fp32``. Build the
    result without --fp16/--bf16."""
    from kilnrt.network.layers import CastParams, shape_input_positions
    from kilnrt.network.rewrite import NetworkCopier

    keep = set(keep)
    network.infer()
    c = NetworkCopier(network)
    low_of: dict[str, Any] = {}

    def low(t, m):
        if t.name not in low_of:
            low_of[t.name] = c.net.add_layer(LayerKind.CAST, CastParams(dtype), [m], name=f"{t.name}/to_{dtype.name}",
                                             origin=(t.producer.origin if t.producer is not None else (t.name,))
                                             ).outputs[0]
        return low_of[t.name]

    for layer in network.layers:
        floats_out = [t.dtype == DataType.FLOAT for t in layer.outputs]
        if layer.name in keep or layer.kind == LayerKind.CONSTANT or layer.kind in _FLOAT_PARAMS or not any(floats_out):
            c.copy(layer)
            continue
        shape_inputs = shape_input_positions(layer)
        ins = []
        for i, t in enumerate(layer.inputs):
            m = c.mapped(t)
            if m is not None and i not in shape_inputs and m.dtype == DataType.FLOAT:
                m = low(t, m)
            ins.append(m)
        new = c.copy(layer, ins)
        for old_t, new_t, was_float in zip(layer.outputs, new.outputs, floats_out):
            if was_float and new_t.dtype == dtype:
                new_t.name = c.net.unique_name(f"{old_t.name}/{dtype.name}")
                up = c.net.add_layer(LayerKind.CAST, CastParams(DataType.FLOAT), [new_t], name=f"{old_t.name}/to_FLOAT",
                                     origin=layer.origin, output_names=[old_t.name])
                c.alias(old_t, up.outputs[0])
    return c.finish()


_warned: set[str] = set()


def build_reduced(network: Network, precision: str | None, *, device: str = "cpu", keep: Iterable[str] = (),
                  **build_kwargs: Any):
    """Build with ``precision`` ("fp16", "bf16" or None) allowed and the layers named in
    ``keep`` in FP32. With layers kept, or on the CPU (whose backend runs FP16/BF16 builds in
    FP32, hiding what they do), the network goes through :func:`mixed_precision` and is built
    in FP32 (on the CPU with a warning, once, that says so); otherwise it is kilnrt's own
    reduced-precision build."""
    import kilnrt

    build_kwargs.pop("fp16", None)
    build_kwargs.pop("bf16", None)
    keep = set(keep)
    if precision is None:
        return kilnrt.build(network, device=device, **build_kwargs)
    if precision not in REDUCED:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"precision {precision!r}; use one of {', '.join(REDUCED)}")
    if device != "cpu" and not keep:
        return kilnrt.build(network, device=device, **{precision: True}, **build_kwargs)
    if device == "cpu" and precision not in _warned:
        _warned.add(precision)
        log.warning("the CPU backend runs %s builds in FP32; to show what %s does, every layer%s was lowered to %s "
                    "before the build and runs on torch's %s CPU kernels", precision.upper(), precision.upper(),
                    " not kept in FP32" if keep else "", precision.upper(),
                    str(REDUCED[precision].torch).replace("torch.", ""))
    return kilnrt.build(mixed_precision(network.clone(), REDUCED[precision], keep), device=device, **build_kwargs)


# ----------------------------------------------------------------------------- the search
class NotAPrecisionProblem(KilnError):
    """Even with every layer in FP32 the build does not meet the tolerance."""


@dataclass
class SearchResult:
    nodes: list[str]                       # the nodes kept in FP32 (empty: the reduced build passes as is)
    evaluations: int
    trials: list[tuple[tuple[str, ...], bool]] = field(default_factory=list)   # (pinned nodes, passed), in order


def find_fp32_layers(units: Sequence[str], passes: Callable[[frozenset], bool]) -> SearchResult:
    """A small set of ``units`` whose pinning to FP32 makes ``passes`` true.

    Checks that all pinned passes (else :class:`NotAPrecisionProblem`) and that none pinned
    fails (else the result is empty). Then, one culprit at a time: binary-search the
    shortest prefix of ``units`` (topological order) that, added to the culprits found so
    far, passes; its last unit is a culprit (the prefix one shorter fails). Stop when the
    culprits alone pass, then drop any culprit the others pass without. About
    ``log2(len(units))`` builds per culprit.
    """
    units = list(units)
    seen: dict[frozenset, bool] = {}
    trials: list[tuple[tuple[str, ...], bool]] = []

    def check(pinned: Iterable[str]) -> bool:
        key = frozenset(pinned)
        if key not in seen:
            seen[key] = bool(passes(key))
            trials.append((tuple(u for u in units if u in key), seen[key]))
        return seen[key]

    if not check(units):
        raise NotAPrecisionProblem(ErrorCode.INVALID_ARGUMENT,
                                   "the build misses the tolerance even with every layer in FP32, so no choice of "
                                   "FP32 layers can fix it: compare the FP32 build (kilnrt compare --all-outputs) "
                                   "or loosen --rtol/--atol")
    if check(()):
        return SearchResult([], len(seen), trials)
    kept: list[str] = []
    while True:
        lo, hi = 0, len(units)          # kept + units[:lo] fails, kept + units[:hi] passes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if check([*kept, *units[:mid]]):
                hi = mid
            else:
                lo = mid
        kept.append(units[hi - 1])
        if check(kept):
            break
    for unit in list(kept):
        rest = [u for u in kept if u != unit]
        if rest and check(rest):
            kept = rest
    order = {u: i for i, u in enumerate(units)}
    return SearchResult(sorted(kept, key=order.__getitem__), len(seen), trials)
