"""The IR: :class:`Tensor`, :class:`Layer` and :class:`Network`.

A network is a list of layers in topological order.  Tensors are named edges; a tensor
is produced by exactly one layer (or is a network input).  Shapes may hold symbolic dims
(strings such as ``"batch"`` or ``"2*seq"``) or -1 for sizes that depend on data; they are
inferred on demand by one symbolic shape rule per layer kind (see :mod:`kilnrt.network.infer`).
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable, Sequence

import numpy as np

from kilnrt.errors import ErrorCode, NetworkError
from kilnrt.network.definition import ALIASES, NetworkDefinition, trt_input_index
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import PARAMS, LayerKind

Dim = int | str
Shape = tuple[Dim, ...]


def _as_dtype(dtype: Any) -> DataType:
    if isinstance(dtype, DataType):
        return dtype
    if isinstance(dtype, str) and dtype in DataType.__members__:
        return DataType[dtype]
    try:
        import torch

        if isinstance(dtype, torch.dtype):
            return DataType.from_torch(dtype)
    except ImportError:  # pragma: no cover
        pass
    try:
        return DataType.from_numpy(dtype)
    except TypeError:
        raise NetworkError(ErrorCode.INVALID_ARGUMENT,
                           f"dtype {dtype!r} is not a kilnrt DataType; use one of "
                           + ", ".join(d.name for d in DataType)) from None


class Tensor:
    """A named value flowing between layers."""

    def __init__(self, network: "Network", name: str, dtype: DataType | None = None,
                 shape: Sequence[Dim] | None = None) -> None:
        self._network = network
        self._name = name
        self._dtype = dtype
        self._shape = None if shape is None else tuple(shape)
        self.producer: Layer | None = None
        self.location = "device"
        self.allowed_formats = None
        self.dynamic_range: tuple[float, float] | None = None

    # -- TensorRT's ITensor names ----------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._network._rename(self, value)

    @property
    def is_network_input(self) -> bool:
        return self in self._network.inputs

    @property
    def is_network_output(self) -> bool:
        return self in self._network.outputs

    @property
    def dtype(self) -> DataType | None:
        if self._dtype is None and self.producer is not None:
            self._network.infer()
        return self._dtype

    @dtype.setter
    def dtype(self, value: DataType) -> None:
        self._dtype = value
        if self.is_network_input:
            self._network._changed()

    @property
    def shape(self) -> Shape | None:
        """Dims: int (static), str (an input's symbol or an expression over them, ``"2*seq"``)
        or -1 (depends on data). None: unknown rank.  :meth:`symbolic_shape` gives the dims as
        sympy expressions."""
        if self._shape is None and self.producer is not None:
            self._network.infer()
        return self._shape

    @shape.setter
    def shape(self, value: Sequence[Dim]) -> None:
        self._shape = tuple(value)
        if self.is_network_input:
            self._network._changed()

    @property
    def symbolic_shape(self) -> tuple | None:
        """The dims as ints and sympy expressions over the network's input dims."""
        from kilnrt.network.infer import input_info, tensor_info

        info = tensor_info(self._network, self)
        return (info or input_info(self)).shape

    def set_dynamic_range(self, low: float, high: float) -> bool:
        self.dynamic_range = (float(low), float(high))
        return True

    def reset_dynamic_range(self) -> None:
        self.dynamic_range = None

    @property
    def is_shape_tensor(self) -> bool:
        return False

    @property
    def is_execution_tensor(self) -> bool:
        return True

    def set_dimension_name(self, index: int, name: str | None) -> None:
        """Name dim ``index`` of a network input (a symbolic dim; dims with one name are equal)."""
        if not self.is_network_input:
            raise NetworkError(ErrorCode.INVALID_ARGUMENT,
                               f"set_dimension_name applies to network inputs; {self._name!r} is not one")
        dims = list(self._shape or ())
        dims[index] = name if name else -1
        self.shape = dims

    def get_dimension_name(self, index: int) -> str | None:
        d = (self.shape or ())[index]
        return d if isinstance(d, str) else None

    @property
    def has_known_dims(self) -> bool:
        """Rank known and every dim an int or an expression over input dims (none depends on
        data): two such tensors with equal ``shape`` have equal shapes at run time."""
        shape = self.shape
        return shape is not None and all(not (isinstance(d, int) and d < 0) for d in shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) and d >= 0 for d in self.shape)

    def __repr__(self) -> str:
        dt = self._dtype.name if self._dtype else "?"
        return f"Tensor({self._name!r}, {dt}, {self._shape})"


class Layer:
    """One operation of a network: a kind, its params, input and output tensors."""

    def __init__(self, network: "Network", kind: LayerKind, params: Any,
                 inputs: Sequence[Tensor | None], name: str, origin: Sequence[str] = ()) -> None:
        object.__setattr__(self, "_network", network)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "inputs", list(inputs))
        object.__setattr__(self, "outputs", [])
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "origin", tuple(origin) or (name,))
        object.__setattr__(self, "precision", None)
        object.__setattr__(self, "output_types", {})
        object.__setattr__(self, "metadata", {})

    # -- TensorRT's ILayer names -----------------------------------------------------
    @property
    def type(self) -> LayerKind:
        return self.kind

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> Tensor | None:
        return self.inputs[index]

    def get_output(self, index: int) -> Tensor:
        return self.outputs[index]

    def set_input(self, index: int, tensor: Tensor) -> None:
        """Replace input ``index`` (TensorRT's positions where they differ from kilnrt's, see
        :func:`~kilnrt.network.definition.trt_input_index`)."""
        index = trt_input_index(self, index, tensor)
        while len(self.inputs) <= index:
            self.inputs.append(None)
        self.inputs[index] = tensor
        net = self._network
        if tensor is not None and tensor.producer is not None and \
                net.layers.index(tensor.producer) > net.layers.index(self):
            net._sort_layers()  # TensorRT lets a layer read a tensor made by a later-added layer
        net._changed()

    def set_output_type(self, index: int, dtype: DataType) -> None:
        self.output_types[index] = dtype

    def get_output_type(self, index: int) -> DataType | None:
        return self.output_types.get(index, self.outputs[index].dtype)

    @property
    def precision_is_set(self) -> bool:
        return self.precision is not None

    def reset_precision(self) -> None:
        object.__setattr__(self, "precision", None)

    # Params fields read and write as attributes, as TensorRT's layer classes do
    # (``conv.stride_nd = (2, 2)``); TensorRT attributes that are not fields go through ALIASES.
    def __getattr__(self, key: str) -> Any:
        alias = ALIASES.get((self.__dict__.get("kind"), key))
        if alias is not None and alias.get is not None:
            return alias.get(self)
        params = self.__dict__.get("params")
        if params is not None and key in getattr(params, "__dataclass_fields__", {}):
            return getattr(params, key)
        raise AttributeError(f"{type(self).__name__} of kind {self.__dict__.get('kind')} has no attribute {key!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        if key in ("name", "precision", "metadata", "origin", "__class__"):
            object.__setattr__(self, key, value)
            return
        if key == "params":
            object.__setattr__(self, "params", value)
            self._network._changed()
            return
        alias = ALIASES.get((self.kind, key))
        if alias is not None and alias.set is not None:
            alias.set(self, value)
            return
        fields = getattr(self.params, "__dataclass_fields__", {})
        if key in fields:
            import dataclasses

            if isinstance(value, list) or (isinstance(value, tuple) and type(value) is not tuple):
                value = tuple(value)
            object.__setattr__(self, "params", dataclasses.replace(self.params, **{key: value}))
            self._network._changed()
            return
        raise AttributeError(f"layer {self.name!r} ({self.kind.value}) has no settable attribute {key!r}; "
                             f"its params are: {', '.join(fields) or 'none'}")

    def __repr__(self) -> str:
        ins = ", ".join(t.name if t is not None else "-" for t in self.inputs)
        outs = ", ".join(t.name for t in self.outputs)
        return f"Layer({self.name!r}, {self.kind.value}, [{ins}] -> [{outs}])"


class Network(NetworkDefinition):
    """A network definition: inputs, layers in topological order, outputs.

    Build one by hand with the ``add_*`` methods (TensorRT's ``INetworkDefinition``, see
    :mod:`kilnrt.network.definition`), from ONNX with :func:`kilnrt.onnx.parse`, or copy one
    with :meth:`clone`.
    """

    def __init__(self, name: str = "network") -> None:
        self.name = name
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self.layers: list[Layer] = []
        self.tensors: dict[str, Tensor] = {}
        self.opset: int | None = None
        self._names = itertools.count()
        self._inferred: set[int] = set()
        self._info: dict[str, Any] = {}      # tensor name -> symbolic Info (network/infer.py)
        self._fresh = itertools.count()      # numbers the data-dependent symbols
        # symbol -> (min, max) over the optimization profiles; inference resolves the Min, Max and
        # Piecewise dims these decide (the builder sets it from the profiles)
        self._symbol_ranges: dict[str, tuple[int, int]] = {}

    # -- building ---------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        if base not in self.tensors and not any(l.name == base for l in self.layers[-1:]):
            return base
        while True:
            candidate = f"{base}_{next(self._names)}"
            if candidate not in self.tensors:
                return candidate

    def add_input(self, name: str, dtype: Any, shape: Sequence[Dim]) -> Tensor:
        """A network input; ``dtype`` a DataType (or numpy/torch dtype), -1 or a name for dynamic dims."""
        if name in self.tensors:
            raise NetworkError(ErrorCode.INVALID_NETWORK, f"a tensor named {name!r} already exists")
        t = Tensor(self, name, _as_dtype(dtype), shape)
        self.tensors[name] = t
        self.inputs.append(t)
        self._changed()
        return t

    def add_layer(self, kind: LayerKind, params: Any, inputs: Sequence[Tensor | None], *,
                  num_outputs: int = 1, name: str | None = None, origin: Sequence[str] = (),
                  output_names: Sequence[str] | None = None) -> Layer:
        """Append a layer; its output tensors are created and named after it."""
        if not isinstance(params, PARAMS[kind]):
            raise NetworkError(ErrorCode.INVALID_NETWORK,
                               f"{kind.value} layer needs {PARAMS[kind].__name__}, got {type(params).__name__}")
        for t in inputs:
            if t is not None and (t._network is not self or self.tensors.get(t.name) is not t):
                raise NetworkError(ErrorCode.INVALID_NETWORK,
                                   f"input tensor {t.name!r} of layer {name or kind.value} is not part of this network")
        lname = name or f"{kind.value}_{len(self.layers)}"
        layer = Layer(self, kind, params, inputs, lname, origin)
        for i in range(num_outputs):
            base = output_names[i] if output_names else (lname if num_outputs == 1 else f"{lname}:{i}")
            oname = base if base not in self.tensors else self.unique_name(base)
            out = Tensor(self, oname)
            out.producer = layer
            self.tensors[oname] = out
            layer.outputs.append(out)
        self.layers.append(layer)
        return layer

    def mark_output(self, tensor: Tensor) -> None:
        if tensor not in self.outputs:
            self.outputs.append(tensor)

    def unmark_output(self, tensor: Tensor) -> None:
        self.outputs.remove(tensor)

    def remove_tensor(self, tensor: Tensor) -> None:
        """Remove an unused network input (TensorRT's ``remove_tensor``)."""
        if tensor.name in self.consumers() or tensor.is_network_output:
            raise NetworkError(ErrorCode.INVALID_NETWORK, f"tensor {tensor.name!r} is still used; it cannot be removed")
        if tensor in self.inputs:
            self.inputs.remove(tensor)
        self.tensors.pop(tensor.name, None)
        self._changed()

    def adopt(self, other: "Network") -> None:
        """Take over ``other``'s inputs, layers, tensors and outputs, leaving ``other`` empty.

        How a parser fills a network the caller created (TensorRT's ``OnnxParser(network)``).
        """
        if self.layers or self.inputs:
            raise NetworkError(ErrorCode.INVALID_NETWORK,
                               f"network {self.name!r} already has {len(self.inputs)} inputs and "
                               f"{len(self.layers)} layers; parse into an empty network")
        for t in other.tensors.values():
            t._network = self
        for layer in other.layers:
            object.__setattr__(layer, "_network", self)
        self.inputs, self.outputs, self.layers, self.tensors = other.inputs, other.outputs, other.layers, other.tensors
        self.opset, self._names = other.opset, other._names
        if self.name == "network":
            self.name = other.name
        other.inputs, other.outputs, other.layers, other.tensors = [], [], [], {}
        other._changed()
        self._changed()

    # TensorRT 10 networks are always explicit-batch; these exist so that scripts run unchanged.
    @property
    def has_implicit_batch_dimension(self) -> bool:
        return False

    @property
    def flags(self) -> int:
        return 0

    def get_flag(self, flag: Any) -> bool:
        return False

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def _rename(self, tensor: Tensor, new: str) -> None:
        if new == tensor._name:
            return
        if new in self.tensors:
            raise NetworkError(ErrorCode.INVALID_NETWORK, f"a tensor named {new!r} already exists")
        del self.tensors[tensor._name]
        info = self._info.pop(tensor._name, None)
        tensor._name = new
        self.tensors[new] = tensor
        if info is not None:
            self._info[new] = info
        elif tensor in self.inputs:
            self._changed()

    @property
    def symbol_ranges(self) -> dict[str, tuple[int, int]]:
        return self._symbol_ranges

    @symbol_ranges.setter
    def symbol_ranges(self, ranges) -> None:
        self._symbol_ranges = {str(k): (int(v[0]), int(v[1])) for k, v in dict(ranges).items()}
        self._changed()

    def _changed(self) -> None:
        self._inferred.clear()
        self._info.clear()
        for layer in self.layers:  # inferred shapes and types are stale: redone on the next read
            for t in layer.outputs:
                t._shape = None
                t._dtype = None

    def _sort_layers(self) -> None:
        """Restore topological order, moving as little as possible (producers first)."""
        order: list[Layer] = []
        state: dict[int, int] = {}  # id -> 1 visiting, 2 done

        def visit(layer: Layer) -> None:
            mark = state.get(id(layer))
            if mark == 2:
                return
            if mark == 1:
                raise NetworkError(ErrorCode.INVALID_NETWORK, f"layer {layer.name!r} is part of a cycle")
            state[id(layer)] = 1
            for t in layer.inputs:
                if t is not None and t.producer is not None:
                    visit(t.producer)
            state[id(layer)] = 2
            order.append(layer)

        for layer in list(self.layers):
            visit(layer)
        self.layers[:] = order

    # -- TensorRT's INetworkDefinition queries -----------------------------------------
    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_input(self, index: int) -> Tensor:
        return self.inputs[index]

    def get_output(self, index: int) -> Tensor:
        return self.outputs[index]

    def get_layer(self, index: int) -> Layer:
        return self.layers[index]

    def __iter__(self) -> Iterable[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    # -- analysis ---------------------------------------------------------------------
    def infer(self) -> None:
        """Fill every tensor's dtype and shape (cached until the network changes)."""
        from kilnrt.network.infer import infer_network

        infer_network(self)

    def consumers(self) -> dict[str, list[tuple[Layer, int]]]:
        uses: dict[str, list[tuple[Layer, int]]] = {}
        for layer in self.layers:
            for i, t in enumerate(layer.inputs):
                if t is not None:
                    uses.setdefault(t.name, []).append((layer, i))
        return uses

    def constant_value(self, tensor: Tensor | None) -> np.ndarray | None:
        """The value of a tensor produced directly by a CONSTANT layer, else None."""
        if tensor is None or tensor.producer is None or tensor.producer.kind != LayerKind.CONSTANT:
            return None
        return tensor.producer.params.weights

    def clone(self) -> "Network":
        """A structural copy (layers, tensors); weights are shared, not copied."""
        from kilnrt.network.rewrite import copy_network

        return copy_network(self)

    def summary(self) -> str:
        lines = [f"Network {self.name!r}: {len(self.inputs)} inputs, {len(self.layers)} layers, "
                 f"{len(self.outputs)} outputs"]
        for t in self.inputs:
            lines.append(f"  input  {t.name}: {t.dtype.name if t.dtype else '?'} {t.shape}")
        for t in self.outputs:
            lines.append(f"  output {t.name}: {t.dtype.name if t.dtype else '?'} {t.shape}")
        return "\n".join(lines)
