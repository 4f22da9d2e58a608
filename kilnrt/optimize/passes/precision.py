"""Precision lowering: run the float32 parts of a network in FP16 or BF16.

The engine's I/O keeps its declared types (casts at the edges, as TensorRT's reformat
layers); float32 constants are converted once; casts and fills that target float32 are
retargeted.  Layers pinned to float32 (``layer.precision = DataType.FLOAT``) keep it, as
TensorRT's precision constraints do: a pinned layer reads its float inputs in FP32 (cast up
where they were lowered), computes in FP32 and writes FP32 (or the type ``set_output_type``
asks for, through a cast); a lowered consumer of an FP32 tensor reads it through one cast
per tensor, a pinned one reads it as is.  Constants that a pinned layer reads stay FP32.

Layer precision constraints (trtexec's ``--layerPrecisions=Conv_3:fp32,/blk/*:fp32``) name
layers by their own name or by the ONNX node they came from: :func:`parse_layer_precisions`
reads the grammar, :func:`fp32_layers` finds the layers, :func:`constrain_layers` pins them
and, for a reduced-precision build, lowers the rest before the graph optimizations, so that
no fusion can merge a pinned layer into a lowered one.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Iterable, Mapping, Sequence

from kilnrt.errors import ErrorCode, KilnError
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.network.layers import CastParams, ConstantParams, LayerKind, shape_input_positions
from kilnrt.network.rewrite import NetworkCopier

FLOAT = DataType.FLOAT


def _shape_only_constants(net: Network) -> set[str]:
    """Constants read only as shape inputs (their values matter, not their precision)."""
    uses: dict[str, bool] = {}
    for layer in net.layers:
        shape_inputs = shape_input_positions(layer)
        for i, t in enumerate(layer.inputs):
            if t is not None:
                uses[t.name] = uses.get(t.name, True) and i in shape_inputs
    return {name for name, only in uses.items() if only}


def _pinned(layer: Layer) -> bool:
    return layer.precision == FLOAT


class _Lowering:
    """The copier plus the casts between FP32 tensors (inputs, pinned layers' outputs) and
    lowered layers, made once per tensor."""

    def __init__(self, net: Network, low: DataType) -> None:
        self.c = NetworkCopier(net)
        self.low = low
        self.fp32: set[str] = set()            # source tensors kept FP32 that lowered readers cast down
        self._down: dict[str, Tensor] = {}
        self._up: dict[str, Tensor] = {}

    def lowered_inputs(self, layer: Layer) -> list[Tensor | None]:
        """``layer``'s inputs for a lowered copy: FP32 tensors cast to the low type (not at shape inputs)."""
        shape_inputs = shape_input_positions(layer)
        ins = []
        for i, t in enumerate(layer.inputs):
            m = self.c.mapped(t)
            if m is not None and t.name in self.fp32 and i not in shape_inputs and m.dtype == FLOAT:
                if t.name not in self._down:
                    self._down[t.name] = self.c.net.add_layer(
                        LayerKind.CAST, CastParams(self.low), [m], name=self.c.net.unique_name(
                            f"{t.name}/to_{self.low.name}"),
                        origin=t.producer.origin if t.producer is not None else (t.name,)).outputs[0]
                m = self._down[t.name]
            ins.append(m)
        return ins

    def fp32_inputs(self, layer: Layer) -> list[Tensor | None]:
        """``layer``'s inputs for a pinned copy: lowered tensors cast up to FP32."""
        ins = []
        for t in layer.inputs:
            m = self.c.mapped(t)
            if m is not None and m.dtype == self.low:
                if m.name not in self._up:
                    self._up[m.name] = self.c.net.add_layer(
                        LayerKind.CAST, CastParams(FLOAT), [m], name=self.c.net.unique_name(f"{layer.name}/{m.name}/to_FLOAT"),
                        origin=layer.origin).outputs[0]
                m = self._up[m.name]
            ins.append(m)
        return ins

    def copy_pinned(self, layer: Layer) -> None:
        """Compute in FP32; an output whose type was set to FP16/BF16 is cast to it after."""
        new = self.c.copy(layer, self.fp32_inputs(layer))
        for i, (old_t, new_t) in enumerate(zip(layer.outputs, new.outputs)):
            wanted = layer.output_types.get(i)
            if wanted in (DataType.HALF, DataType.BF16) and layer.kind not in (LayerKind.CAST, LayerKind.FILL):
                new.output_types.pop(i)
                new_t.name = self.c.net.unique_name(f"{old_t.name}/fp32")
                cast = self.c.net.add_layer(LayerKind.CAST, CastParams(wanted), [new_t], name=f"{old_t.name}/to_{wanted.name}",
                                            origin=layer.origin, output_names=[old_t.name])
                self.c.alias(old_t, cast.outputs[0])
            elif old_t.dtype == FLOAT:
                self.fp32.add(old_t.name)


def lower_precision(net: Network, dtype: DataType, stats: dict | None = None) -> Network:
    """float32 -> ``dtype`` everywhere but the engine's I/O, pinned layers and their constants."""
    net.infer()
    low = dtype
    work = _Lowering(net, low)
    c = work.c
    count = 0
    work.fp32.update(t.name for t in net.inputs if t.dtype == FLOAT)   # cast where a lowered layer reads them
    keep = _shape_only_constants(net)
    read_by_pinned = {t.name for l in net.layers if _pinned(l) for t in l.inputs if t is not None}
    for layer in net.layers:
        p = layer.params
        if layer.kind == LayerKind.CONSTANT and p.weights.dtype == FLOAT.numpy:
            if layer.outputs[0].name in keep:
                c.copy(layer)
            elif _pinned(layer) or layer.outputs[0].name in read_by_pinned:
                c.copy(layer)
                work.fp32.add(layer.outputs[0].name)
            else:
                c.copy(layer).params = ConstantParams(p.weights.astype(low.numpy))
                count += 1
        elif _pinned(layer):
            work.copy_pinned(layer)
        elif layer.kind == LayerKind.CAST and p.to == FLOAT:
            c.copy(layer, work.lowered_inputs(layer)).params = CastParams(low)
        elif layer.kind == LayerKind.FILL and p.dtype == FLOAT:
            c.copy(layer, work.lowered_inputs(layer)).params = dataclasses.replace(p, dtype=low)
        elif layer.kind == LayerKind.POINTWISE:
            from kilnrt.optimize.passes.pointwise import retarget_casts  # a fused region: its casts, as above

            c.copy(layer, work.lowered_inputs(layer)).params = retarget_casts(p, FLOAT, low)
        else:
            c.copy(layer, work.lowered_inputs(layer))
    for t in net.outputs:
        internal = c.mapped(t)
        if t.dtype == FLOAT and internal.dtype != FLOAT:
            internal.name = c.net.unique_name(f"{t.name}/{low.name}")
            cast = c.net.add_layer(LayerKind.CAST, CastParams(FLOAT), [internal],
                                   name=f"{t.name}/to_FLOAT", origin=(t.name,), output_names=[t.name])
            c.alias(t, cast.outputs[0])
    if stats is not None:
        stats["lower_precision"] = count
    return c.finish()


# ----------------------------------------------------------------------------- constraints
# trtexec's precision words -> kilnrt's types
PRECISIONS = {"fp32": DataType.FLOAT, "fp16": DataType.HALF, "bf16": DataType.BF16,
              "int32": DataType.INT32, "int8": DataType.INT8}


def parse_layer_precisions(spec: str | Sequence[str] | Mapping[str, Any] | None) -> dict[str, str]:
    """trtexec's ``layerName:precision[,spec]`` (or a ``{name: precision}`` mapping) ->
    ``{name pattern: precision word}``, in order; a later entry overrides an earlier one."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        words = {DataType.FLOAT: "fp32", DataType.HALF: "fp16", DataType.BF16: "bf16"}
        spec = [f"{k}:{words.get(v, v)}" for k, v in spec.items()]
    specs = [spec] if isinstance(spec, str) else list(spec)
    out: dict[str, str] = {}
    for text in specs:
        for item in filter(None, (s.strip() for s in str(text).split(","))):
            name, sep, precision = item.rpartition(":")
            name = name.strip().strip("'\"")
            precision = precision.strip().lower()
            if not sep or not name or precision not in PRECISIONS:
                raise KilnError(ErrorCode.INVALID_ARGUMENT,
                                f"layer precisions: cannot read {item!r}; write LAYER:PRECISION with PRECISION one "
                                f"of {', '.join(PRECISIONS)}, e.g. Conv_3:fp32 (several: a comma-separated list)")
            if name.count("*") > 1:
                raise KilnError(ErrorCode.INVALID_ARGUMENT,
                                f"layer precisions: {name!r} has {name.count('*')} wildcards; a name may hold one '*'")
            out.pop(name, None)          # a later entry overrides an earlier one, and is ordered last
            out[name] = precision
    return out


def _matches(pattern: str, layer: Layer) -> bool:
    names = (layer.name, *layer.origin)
    if "*" in pattern:
        return any(fnmatch.fnmatchcase(n, pattern) for n in names)
    return pattern in names


def node_order(network: Network) -> list[str]:
    """The ONNX nodes (``layer.origin``) of the network's computing layers, in layer order."""
    return list(dict.fromkeys(n for l in network.layers if l.kind != LayerKind.CONSTANT for n in l.origin))


def fp32_layers(network: Network, constraints: dict[str, str]) -> tuple[set[str], dict[str, list[str]]]:
    """The names of the layers ``constraints`` keep in FP32, and ``{pattern: [layer names]}``.

    Only fp32 can be asked for: in a reduced-precision build a layer runs in FP32 or in the
    build's --fp16/--bf16 precision; other words raise, as does a name that matches nothing."""
    unsupported = {p: w for p, w in constraints.items() if w != "fp32"}
    if unsupported:
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        "layer precisions: kilnrt can keep layers in fp32 only (a layer runs in FP32 or in the "
                        "build's --fp16/--bf16 precision); got " + ", ".join(f"{p}:{w}" for p, w in unsupported.items()))
    matched: dict[str, list[str]] = {p: [] for p in constraints}
    for layer in network.layers:
        if layer.kind == LayerKind.CONSTANT:
            continue
        for pattern in constraints:
            if _matches(pattern, layer):
                matched[pattern].append(layer.name)
    missing = [p for p, names in matched.items() if not names]
    if missing:
        known = node_order(network)
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        f"layer precisions: no layer or ONNX node named {', '.join(map(repr, missing))}; the network's "
                        f"nodes are: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''}")
    return {n for names in matched.values() for n in names}, matched


def pin_fp32(network: Network, names: Iterable[str]) -> Network:
    """A copy of ``network`` with the layers named in ``names`` pinned to FP32."""
    names = set(names)
    net = network.clone()
    for layer in net.layers:
        if layer.name in names:
            layer.precision = FLOAT
    return net


def constrain_layers(network: Network, layer_precisions: Any, low: DataType | None) -> tuple[Network, dict]:
    """``network`` with the layers ``layer_precisions`` names pinned to FP32 and, when ``low``
    is given, every other float layer lowered to it (:func:`lower_precision`), before any
    optimization pass; and a record of what was done, for the engine's build info."""
    constraints = parse_layer_precisions(layer_precisions)
    keep, matched = fp32_layers(network, constraints)
    net = pin_fp32(network, keep)
    if low is not None:
        net = lower_precision(net, low)
    return net, {"constraints": constraints, "fp32_layers": sorted(keep),
                 "lowered": None if low is None else low.name}
