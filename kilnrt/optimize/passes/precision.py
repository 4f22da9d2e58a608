"""Precision lowering: run the float32 parts of a network in FP16 or BF16.

The engine's I/O keeps its declared types (casts at the edges, as TensorRT's reformat
layers); float32 constants are converted once; casts and fills that target float32 are
retargeted.  Layers pinned to float32 (``layer.precision = DataType.FLOAT``) keep it:
their float inputs are cast up and their outputs back down.
"""
from __future__ import annotations

import dataclasses

from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.layers import SHAPE_INPUTS, CastParams, ConstantParams, LayerKind
from kilnrt.network.rewrite import NetworkCopier


def _shape_only_constants(net: Network) -> set[str]:
    """Constants read only as shape inputs (their values matter, not their precision)."""
    uses: dict[str, bool] = {}
    for layer in net.layers:
        shape_inputs = SHAPE_INPUTS.get(layer.kind, frozenset())
        for i, t in enumerate(layer.inputs):
            if t is not None:
                uses[t.name] = uses.get(t.name, True) and i in shape_inputs
    return {name for name, only in uses.items() if only}


def lower_precision(net: Network, dtype: DataType, stats: dict | None = None) -> Network:
    """float32 -> ``dtype`` everywhere but the engine's I/O and pinned layers."""
    net.infer()
    low = dtype
    c = NetworkCopier(net)
    count = 0
    for t in net.inputs:
        if t.dtype == DataType.FLOAT:
            cast = c.net.add_layer(LayerKind.CAST, CastParams(low), [c.mapped(t)], name=f"{t.name}/to_{low.name}",
                                   origin=(t.name,))
            c.alias(t, cast.outputs[0])
    keep = _shape_only_constants(net)
    for layer in net.layers:
        p = layer.params
        if layer.kind == LayerKind.CONSTANT and p.weights.dtype == DataType.FLOAT.numpy \
                and layer.outputs[0].name not in keep and layer.precision != DataType.FLOAT:
            new = c.copy(layer)
            new.params = ConstantParams(p.weights.astype(low.numpy))
            count += 1
        elif layer.kind == LayerKind.CAST and p.to == DataType.FLOAT and layer.precision != DataType.FLOAT:
            c.copy(layer).params = CastParams(low)
        elif layer.kind == LayerKind.FILL and p.dtype == DataType.FLOAT and layer.precision != DataType.FLOAT:
            c.copy(layer).params = dataclasses.replace(p, dtype=low)
        elif layer.kind == LayerKind.POINTWISE and layer.precision != DataType.FLOAT:
            from kilnrt.optimize.passes.pointwise import retarget_casts  # a fused region: its casts, as above

            c.copy(layer).params = retarget_casts(p, DataType.FLOAT, low)
        elif layer.precision == DataType.FLOAT:
            ins = []
            for t in layer.inputs:
                m = c.mapped(t)
                if m is not None and m.dtype == low:
                    m = c.net.add_layer(LayerKind.CAST, CastParams(DataType.FLOAT), [m],
                                        name=f"{layer.name}/{m.name}/to_FLOAT", origin=layer.origin).outputs[0]
                ins.append(m)
            new = c.copy(layer, ins)
            for old_t, new_t in zip(layer.outputs, new.outputs):
                if old_t.dtype == DataType.FLOAT:
                    new_t.name = f"{old_t.name}/fp32"
                    back = c.net.add_layer(LayerKind.CAST, CastParams(low), [new_t], name=f"{old_t.name}/to_{low.name}",
                                           origin=layer.origin, output_names=[old_t.name])
                    c.alias(old_t, back.outputs[0])
        else:
            c.copy(layer)
    for t in net.outputs:
        internal = c.mapped(t)
        if t.dtype == DataType.FLOAT and internal.dtype != DataType.FLOAT:
            internal.name = c.net.unique_name(f"{t.name}/{low.name}")
            cast = c.net.add_layer(LayerKind.CAST, CastParams(DataType.FLOAT), [internal],
                                   name=f"{t.name}/to_FLOAT", origin=(t.name,), output_names=[t.name])
            c.alias(t, cast.outputs[0])
    if stats is not None:
        stats["lower_precision"] = count
    return c.finish()
