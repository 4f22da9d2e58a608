"""The host-side shape program of an engine.

Everything whose value follows from the input *shapes* alone, not from their data, is
evaluated on the host before anything is launched, and cached per distinct input-shape set:
Shape and the arithmetic on it, Range and ConstantOfShape sizes, Reshape targets, Slice
bounds, Expand and Tile sizes, Resize sizes, and the tensors built from them (position ids,
the index grids and causal masks that exporters spell out with Range/Expand/Compare).  It is
the per-shape-set counterpart of constant folding.  The device program then reads those
values (the ones it reads as data are uploaded once per shape set) and never waits for the
host, so it can be captured as one CUDA graph per shape set.

Which layers belong here is decided from the engine's symbolic tensor dims (the builder
records each tensor's dims as expression trees, :mod:`kilnrt.network.symbolic`): a layer of a
kind in :data:`HOST_KINDS` whose inputs are constants or other host values, or a Shape layer
whose input's dims follow from the input dims (not from data), and whose output is no larger
than :data:`MAX_HOST_ELEMENTS` at the profiles' largest shapes.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any, Mapping

import torch

from kilnrt.errors import ErrorCode, ExecutionError, KilnError
from kilnrt.network import symbolic as S
from kilnrt.network.layers import LayerKind, shape_input_positions

# kinds whose layers may run on the host when all their inputs are host values
HOST_KINDS = frozenset({
    LayerKind.SHAPE, LayerKind.ELEMENTWISE, LayerKind.UNARY, LayerKind.CAST, LayerKind.GATHER,
    LayerKind.CONCATENATION, LayerKind.SLICE, LayerKind.SQUEEZE, LayerKind.UNSQUEEZE, LayerKind.SHUFFLE,
    LayerKind.FILL, LayerKind.REDUCE, LayerKind.SELECT, LayerKind.IDENTITY, LayerKind.EXPAND, LayerKind.TILE,
})
MAX_HOST_ELEMENTS = 1 << 20     # larger results (at the profiles' max shapes) stay on the device
CACHE_ENTRIES = 64              # shape sets whose host values are kept


class ShapeProgram:
    def __init__(self, engine, run_layer) -> None:
        self.engine = engine
        self._run_layer = run_layer
        self.dims: dict[str, list | None] = {name: info.get("dims") for name, info in engine.tensors.items()}
        self.symbols: list[tuple[str, int, str]] = []   # (input, dim index, symbol name)
        for t in engine.io:
            if t.mode != "input":
                continue
            dims = [S.from_public(d, t.name, i) for i, d in enumerate(t.symbolic or t.shape)]
            self.dims[t.name] = [S.to_tree(d) for d in dims]
            for i, dim in enumerate(dims):
                if not isinstance(dim, int) and dim.is_Symbol:
                    self.symbols.append((t.name, i, dim.name))
        self._largest = [self.bindings({n: s[2] for n, s in p.items()}) for p in engine.profiles] or [{}]
        host: set[str] = set()
        constants = set(engine.constants)
        self.layers: list[Any] = []          # the engine layers the host runs, in order
        for layer in engine.layers:
            if self._on_host(layer, host, constants):
                self.layers.append(layer)
                host.update(layer.outputs)
        self.host_names = frozenset(host)
        self.host_layer_names = frozenset(l.name for l in self.layers)
        # host values that device layers (or the engine's outputs) read as data: uploaded once per shape set
        self.uploads: set[str] = {t.name for t in engine.io if t.mode == "output" and t.name in host}
        for layer in engine.layers:
            if layer.name in self.host_layer_names:
                continue
            shape_positions = shape_input_positions(layer)
            self.uploads.update(n for i, n in enumerate(layer.inputs) if n in host and i not in shape_positions)
        self._cache: OrderedDict[tuple, tuple[dict, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def _largest_size(self, name: str) -> int | None:
        """A tensor's element count at the profiles' largest input shapes (None: unknown)."""
        sizes = []
        for bindings in self._largest:
            shape = self.shape_of(name, bindings)
            if shape is None:
                return None
            sizes.append(math.prod(shape))
        return max(sizes)

    def _input_dims_known(self, name: str) -> bool:
        """Whether a tensor's dims follow from the input dims alone (no data-dependent symbol)."""
        dims = self.dims.get(name)
        return dims is not None and not any(_data_dependent(d) for d in dims)

    def _on_host(self, layer, host: set[str], constants: set[str]) -> bool:
        if layer.kind not in HOST_KINDS or getattr(layer, "writes_into", None) is not None:
            return False
        if layer.kind == LayerKind.SHAPE:
            return self._input_dims_known(layer.inputs[0])
        for n in layer.inputs:
            if n is not None and n not in host and n not in constants:
                return False
        for n in layer.outputs:
            size = self._largest_size(n)
            if size is None or size > MAX_HOST_ELEMENTS:
                return False
        return True

    def bindings(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        return {sym: int(shapes[name][i]) for name, i, sym in self.symbols if name in shapes}

    def shape_of(self, name: str, bindings: Mapping[str, int]) -> tuple[int, ...] | None:
        """A tensor's concrete shape for the given symbol values (None: depends on data)."""
        dims = self.dims.get(name)
        if dims is None:
            return None
        try:
            return tuple(int(S.evaluate(d, bindings)) for d in dims)
        except (KeyError, ValueError, TypeError, ArithmeticError, RecursionError):
            return None   # unbound (data-dependent) or malformed: unknown until the layers run

    def values(self, shapes: Mapping[str, tuple[int, ...]], constants: Mapping[str, torch.Tensor],
               device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """For these input shapes: every host layer's output as a CPU tensor, and the ones device
        layers read as data (``uploads``) on ``device``; both cached together per shape set
        (least recently used first).  The device copies are made on the first call, which is
        the warm-up before a CUDA-graph capture, never inside it."""
        if not self.layers:
            return {}, {}
        key = tuple(sorted(shapes.items()))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        bindings = self.bindings(shapes)
        values: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            if layer.kind == LayerKind.SHAPE:
                shape = self.shape_of(layer.inputs[0], bindings)
                if shape is None:
                    raise ExecutionError(ErrorCode.RUNTIME, f"the shape of {layer.inputs[0]!r} is unknown",
                                         layer=layer.name)
                outs = [torch.tensor(shape, dtype=torch.int64)]
            else:
                args = [None if n is None else values.get(n, constants.get(n)) for n in layer.inputs]
                try:
                    outs = self._run_layer(_Detached(layer), args)
                except KilnError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a host layer that cannot run on these shapes
                    raise ExecutionError(ErrorCode.RUNTIME, f"the shape program failed for input shapes {shapes}: "
                                                            f"{type(exc).__name__}: {exc}", layer=layer.name) from exc
            values.update(zip(layer.outputs, outs))
        uploads = {n: values[n] if device.type == "cpu" else values[n].to(device) for n in self.uploads}
        with self._lock:
            self._cache[key] = (values, uploads)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return values, uploads


class _Detached:
    """What the reference kernels read of a layer: its kind and params."""

    def __init__(self, layer) -> None:
        self.kind, self.params = layer.kind, layer.params


def _data_dependent(tree) -> bool:
    if isinstance(tree, dict):
        return tree["s"].startswith(S.DATA_PREFIX)
    if isinstance(tree, list):
        return any(_data_dependent(a) for a in tree[1:])
    return False


def _data_symbols(tree, out: set) -> set:
    if isinstance(tree, dict):
        if tree["s"].startswith(S.DATA_PREFIX):
            out.add(tree["s"])
    elif isinstance(tree, list):
        for a in tree[1:]:
            _data_symbols(a, out)
    return out


def synchronizing_layers(engine, program: ShapeProgram | None = None) -> list[tuple[str, str]]:
    """The layers a run must wait on the host for, with why: those whose output size depends
    on data (NonZero, Unique, NMS-like: a data-dependent dim appears in their outputs), control
    flow (the branch or trip count is read on the host), and those reading as a shape value a
    tensor the device computes.  Every other layer runs inside the shape set's CUDA graph."""
    program = program or ShapeProgram(engine, run_layer=None)
    recorded = any(info.get("dims") is not None for info in engine.tensors.values())   # older plans: no dims
    out = []
    for layer in engine.layers:
        if layer.name in program.host_layer_names:
            continue
        if layer.kind in (LayerKind.CONDITIONAL, LayerKind.LOOP):
            out.append((layer.name, "control flow: the branch or the trip count is read on the host"))
            continue
        seen = set()
        for n in layer.inputs:
            if n is not None:
                for d in program.dims.get(n) or []:
                    _data_symbols(d, seen)
        made = set()
        for n in layer.outputs:
            dims = program.dims.get(n)
            if dims is None and recorded:   # rank unknown until it runs
                made.add("?")
            for d in dims or []:
                _data_symbols(d, made)
        if made - seen:
            out.append((layer.name, "its output size depends on the data"))
            continue
        positions = shape_input_positions(layer)
        device_made = [n for i, n in enumerate(layer.inputs) if i in positions and n is not None
                       and n not in program.host_names and n not in engine.constants]
        if device_made:
            out.append((layer.name, f"reads {', '.join(map(repr, device_made))} as a shape value made on the device"))
    return out
