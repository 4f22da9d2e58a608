"""Copying networks layer by layer, the way passes rebuild them, and the one rule for the
precision constraints of a layer that replaces others (:func:`merged_pins`)."""
from __future__ import annotations

from typing import NamedTuple, Sequence

from kilnrt.errors import InternalError
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Layer, Network, Tensor


class Pins(NamedTuple):
    """The precision constraints of a layer that replaces others: ``layer.precision`` and
    ``layer.output_types`` (by the new layer's output index)."""
    precision: DataType | None
    output_types: dict[int, DataType]


def pin_conflict(absorbed: Sequence[Layer], outputs: Sequence[Tensor]) -> str | None:
    """Why no one layer can keep the precision constraints of ``absorbed`` while writing
    ``outputs`` (tensors of ``absorbed`` that stay visible), or None when one can.

    TensorRT's rule under OBEY_PRECISION_CONSTRAINTS, which kilnrt always applies: a fusion
    may take layers with no precision set and layers pinned to one precision (the fused
    layer then has that precision), but not layers pinned to different precisions; and a
    tensor the fusion hides may have an output type set only if it is that precision (a
    pinned FP32 convolution writing FP32 into its fused ReLU: yes; writing FP16: no)."""
    pins = {l.precision for l in absorbed if l.precision is not None}
    if len(pins) > 1:
        return "precisions " + " and ".join(sorted(p.name for p in pins)) + " differ"
    precision = next(iter(pins), None)
    visible = {t.name for t in outputs}
    for layer in absorbed:
        for i, dtype in layer.output_types.items():
            if layer.outputs[i].name not in visible and dtype != precision:
                return f"output {layer.outputs[i].name!r} of {layer.name!r} has type {dtype.name} set " \
                       f"and the fusion would not write it"
    return None


def merged_pins(absorbed: Sequence[Layer], outputs: Sequence[Tensor]) -> Pins:
    """The precision constraints of the layer replacing ``absorbed`` and writing ``outputs``:
    the one precision any of them is pinned to, and each output's type where its producer set
    one. A pass must not merge layers :func:`pin_conflict` refuses."""
    reason = pin_conflict(absorbed, outputs)
    if reason is not None:
        raise InternalError(f"merging {' + '.join(l.name for l in absorbed)}: {reason}")
    types = {}
    for j, t in enumerate(outputs):
        producer = next(l for l in absorbed if any(o is t for o in l.outputs))
        i = next(i for i, o in enumerate(producer.outputs) if o is t)
        if i in producer.output_types:
            types[j] = producer.output_types[i]
    return Pins(_precision(absorbed), types)


def _precision(absorbed: Sequence[Layer]) -> DataType | None:
    pins = {l.precision for l in absorbed if l.precision is not None}
    if len(pins) > 1:
        raise InternalError(f"merging {' + '.join(l.name for l in absorbed)}: precisions differ")
    return next(iter(pins), None)


class NetworkCopier:
    """Builds a new network from an old one: copy layers, or put new ones in their place.

    ``mapped(t)`` gives the new tensor for an old one; ``alias(old, new)`` makes later
    consumers of ``old`` read ``new`` instead (how a pass removes a layer).
    """

    def __init__(self, source: Network) -> None:
        self.source = source
        self.net = Network(source.name)
        self.net.opset = source.opset
        self.net.symbol_ranges = dict(source.symbol_ranges)
        self._map: dict[str, Tensor] = {}
        for t in source.inputs:
            self._map[t.name] = self.net.add_input(t.name, t._dtype, t._shape)
            self._map[t.name].dynamic_range = t.dynamic_range

    def mapped(self, t: Tensor | None) -> Tensor | None:
        return None if t is None else self._map[t.name]

    def alias(self, old: Tensor, new: Tensor) -> None:
        """Later consumers of ``old`` read ``new``; a range set on ``old`` (INT8) moves to it
        where ``new`` has none."""
        self._map[old.name] = new
        if old.dynamic_range is not None and new.dynamic_range is None:
            new.dynamic_range = old.dynamic_range

    def copy(self, layer: Layer, inputs: Sequence[Tensor | None] | None = None) -> Layer:
        ins = [self.mapped(t) for t in layer.inputs] if inputs is None else list(inputs)
        new = self.net.add_layer(layer.kind, layer.params, ins, num_outputs=len(layer.outputs),
                                 name=layer.name, origin=layer.origin,
                                 output_names=[t.name for t in layer.outputs])
        object.__setattr__(new, "precision", layer.precision)
        new.output_types.update(layer.output_types)
        new.metadata.update(layer.metadata)
        for old_t, new_t in zip(layer.outputs, new.outputs):
            self._map[old_t.name] = new_t
            new_t.dynamic_range = old_t.dynamic_range
        return new

    def add_merged(self, kind, params, inputs: Sequence[Tensor | None], absorbed: Sequence[Layer],
                   outputs: Sequence[Tensor] | None = None, name: str | None = None) -> Layer:
        """The layer replacing ``absorbed`` (a fusion): named after them (or ``name``), keeping their origins
        and their precision constraints (:func:`merged_pins`), writing ``outputs`` (default:
        the last absorbed layer's first output) under their names; later readers of those
        tensors read the new layer's."""
        outputs = [absorbed[-1].outputs[0]] if outputs is None else list(outputs)
        pins = merged_pins(absorbed, outputs)
        new = self.net.add_layer(kind, params, inputs, num_outputs=len(outputs),
                                 name=name or " + ".join(l.name for l in absorbed),
                                 origin=tuple(o for l in absorbed for o in l.origin),
                                 output_names=[t.name for t in outputs])
        object.__setattr__(new, "precision", pins.precision)
        new.output_types.update(pins.output_types)
        for old, t in zip(outputs, new.outputs):
            self.alias(old, t)
        return new

    def add_beside(self, kind, params, inputs: Sequence[Tensor | None], absorbed: Sequence[Layer],
                   name: str) -> Layer:
        """A layer a fusion adds next to the one replacing ``absorbed`` (K transposed back for
        attention, a reshape it still needs): their precision (not their output types), a
        fresh name based on ``name``, their first layer's origin."""
        new = self.net.add_layer(kind, params, inputs, name=self.net.unique_name(name), origin=absorbed[0].origin)
        object.__setattr__(new, "precision", _precision(absorbed))
        return new

    def finish(self) -> Network:
        for t in self.source.outputs:
            self.net.mark_output(self._map[t.name])
        return self.net


def copy_network(source: Network) -> Network:
    c = NetworkCopier(source)
    for layer in source.layers:
        c.copy(layer)
    return c.finish()
