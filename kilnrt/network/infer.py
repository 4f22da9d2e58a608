"""Shape and type inference by symbolic shape rules.

Every tensor gets a dtype and a shape whose dims are ints or sympy expressions over the
network's named input dims (:mod:`kilnrt.network.symbolic`), from one rule per layer kind
(:mod:`kilnrt.network.shape_rules`).  Values that are known at build time travel along:
constants, and the shape computations an exporter writes (``Shape -> Gather -> Concat ->
Reshape``) as expressions, so a reshape to ``[batch, seq, 12, 64]`` keeps its symbols.
A size that depends on data becomes a fresh symbol.

Inference is incremental: an importer appends layers and reads their outputs' shapes as
it goes; only the new layers are inferred.
"""
from __future__ import annotations

import itertools
import logging
from typing import Mapping, Sequence

import numpy as np

from kilnrt.network import symbolic as S
from kilnrt.network.dtypes import DataType
from kilnrt.network.shape_rules import RULES, Info, ShapeRuleError

log = logging.getLogger("kilnrt.infer")


class InferenceContext:
    """What a rule may ask of the inference: fresh data-dependent symbols, and subgraphs."""

    def __init__(self, counter) -> None:
        self._counter = counter
        self.layer_name = ""

    def fresh(self):
        return S.symbol(f"{S.DATA_PREFIX}{self.layer_name}#{next(self._counter)}")

    def subgraph(self, graph, inputs: Sequence[Info | None], num_outputs: int) -> list[Info]:
        """The outputs of a branch or loop body for its bound inputs."""
        infos: dict[str, Info | None] = dict(zip(graph.inputs, inputs))
        try:
            for sub in graph.layers:
                layer = _SubLayer(sub, f"{self.layer_name}/{len(infos)}")
                ins = [None if n is None else infos.get(n) for n in sub.inputs]
                for name, info in zip(sub.outputs, infer_layer(self, layer, ins)):
                    infos[name] = info
            out = [infos.get(n) for n in graph.outputs]
            if all(o is not None for o in out):
                return out[:num_outputs]
        except Exception as exc:  # noqa: BLE001 - fall back on the declared types
            log.debug("subgraph of %s: %s", self.layer_name, exc)
        out = []
        for i in range(num_outputs):
            dtype, rank = graph.output_types[i] if i < len(graph.output_types) else (None, -1)
            out.append(Info(dtype, None if rank < 0 else tuple(self.fresh() for _ in range(rank))))
        return out


class _SubLayer:
    def __init__(self, sub, name: str) -> None:
        self.kind, self.params, self.name = sub.kind, sub.params, name
        self.outputs = list(sub.outputs)
        self.output_types: dict = {}


def infer_layer(ctx: InferenceContext, layer, ins: Sequence[Info | None]) -> list[Info]:
    """One layer's outputs from its inputs' Info (unknown outputs if the rule cannot tell)."""
    ctx.layer_name = layer.name
    fn = RULES.get(layer.kind)
    n = len(layer.outputs)
    outs: list[Info] | None = None
    if fn is not None:
        try:
            outs = [o if o is not None else Info(None, None) for o in fn(ctx, layer, ins)]
        except (ShapeRuleError, ArithmeticError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            log.debug("layer %s (%s): shape rule failed: %s", layer.name, layer.kind.value, exc)
            outs = None
    if outs is None:
        dtype = next((i.dtype for i in ins if i is not None), None)
        outs = [Info(dtype, None) for _ in range(n)]
    outs = (outs + [Info(None, None)] * n)[:n]
    for i, dtype in getattr(layer, "output_types", {}).items():
        if dtype is not None and i < n:
            outs[i] = Info(dtype, outs[i].shape, None)
    return outs


def input_info(t) -> Info:
    shape = None if t._shape is None else tuple(S.from_public(d, t.name, i) for i, d in enumerate(t._shape))
    return Info(t._dtype, shape)


def infer_network(network) -> None:
    """Fill ``dtype`` and ``shape`` of every layer output; incremental over appended layers."""
    done = network._inferred
    start = len(done)
    if start == len(network.layers) and start:
        return
    infos: dict[str, Info] = network._info
    if start == 0:
        infos.clear()
        network._fresh = itertools.count()
        for t in network.inputs:
            infos[t.name] = input_info(t)
    ctx = InferenceContext(network._fresh)
    ranges = network.symbol_ranges
    for layer in network.layers[start:]:
        ins = [None if t is None else infos.get(t.name) for t in layer.inputs]
        for t, info in zip(layer.outputs, infer_layer(ctx, layer, ins)):
            if ranges and info.shape is not None:
                info.shape = tuple(S.simplify(d, ranges) for d in info.shape)
            infos[t.name] = info
            t._dtype = info.dtype
            t._shape = None if info.shape is None else tuple(S.public(d) for d in info.shape)
        done.add(id(layer))


def tensor_info(network, tensor) -> Info | None:
    """A tensor's symbolic Info (dtype, dims as ints or sympy expressions, known value)."""
    network.infer()
    return network._info.get(tensor.name)


def known_value(network, tensor):
    """The value of a tensor if it is the same whatever the inputs (constant-derived), else None
    (a torch tensor, as the importers read it)."""
    info = tensor_info(network, tensor)
    if info is None or info.value is None:
        return None
    value = np.asarray(info.value)
    if value.dtype == object:
        return None
    from kilnrt.network.dtypes import numpy_to_torch

    if info.dtype is not None and value.dtype != np.dtype(info.dtype.numpy):
        try:
            value = value.astype(info.dtype.numpy)
        except TypeError:
            return None
    return numpy_to_torch(np.ascontiguousarray(value))


def input_bindings(network, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Symbol values for concrete input shapes (raises ValueError if an input's rank differs
    or one symbol gets two sizes)."""
    bindings: dict[str, int] = {}
    for t in network.inputs:
        if t.name not in input_shapes or t.shape is None:
            continue
        given = tuple(int(d) for d in input_shapes[t.name])
        if len(given) != len(t.shape):
            raise ValueError(f"input {t.name!r} has rank {len(t.shape)} {t.shape}, given {given}")
        for i, d in enumerate(t.shape):
            dim = S.from_public(d, t.name, i)
            if isinstance(dim, int):
                continue
            if dim.is_Symbol:
                if dim.name in bindings and bindings[dim.name] != given[i]:
                    raise ValueError(f"dim {dim.name!r} is {bindings[dim.name]} in one input and {given[i]} in "
                                     f"{t.name!r} (dim {i})")
                bindings[dim.name] = given[i]
    return bindings


def concrete_shapes(network, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[tuple[int, ...], DataType] | None]:
    """Every tensor's concrete (shape, dtype) for concrete input shapes, None where data-dependent."""
    network.infer()
    bindings = input_bindings(network, input_shapes)
    out: dict[str, tuple[tuple[int, ...], DataType] | None] = {}
    for t in network.inputs:
        if t.name in input_shapes:
            out[t.name] = (tuple(int(d) for d in input_shapes[t.name]), t.dtype)
    for name, info in network._info.items():
        if name in out:
            continue
        if info.shape is None or info.dtype is None:
            out[name] = None
            continue
        dims = [S.substitute(d, bindings) for d in info.shape]
        out[name] = None if any(d is None for d in dims) else (tuple(dims), info.dtype)
    return out
