"""Copying networks layer by layer, the way passes rebuild them."""
from __future__ import annotations

from typing import Sequence

from kilnrt.network.graph import Layer, Network, Tensor


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

    def finish(self) -> Network:
        for t in self.source.outputs:
            self.net.mark_output(self._map[t.name])
        return self.net


def copy_network(source: Network) -> Network:
    c = NetworkCopier(source)
    for layer in source.layers:
        c.copy(layer)
    return c.finish()
