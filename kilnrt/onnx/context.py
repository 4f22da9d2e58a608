"""What an importer works with: the network under construction and the current node."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx

from kilnrt.errors import ErrorCode, UnsupportedNodeError
from kilnrt.network.dtypes import DataType, torch_to_numpy
from kilnrt.network.graph import Network, Tensor
from kilnrt.network.layers import (CastParams, ConstantParams, ElementWiseOperation, ElementWiseParams,
                                   LayerKind, ShapeParams, ShuffleParams, UnaryOperation, UnaryParams,
                                   UnsqueezeParams)


class ImportContext:
    def __init__(self, network: Network, opset: int, model_dir: str | None = None) -> None:
        self.net = network
        self.opset = opset
        self.model_dir = model_dir
        self.tensors: dict[str, Tensor] = {}          # ONNX name -> tensor
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.node: onnx.NodeProto | None = None
        self.node_name = ""
        self._layer_count = 0
        self.unavailable: dict[str, str] = {}   # ONNX outputs an importer did not produce

    # -- errors -------------------------------------------------------------------
    def error(self, code: str, message: str) -> UnsupportedNodeError:
        op = self.node.op_type if self.node is not None else None
        return UnsupportedNodeError(code, message, node=self.node_name, op=op, opset=self.opset)

    def require(self, cond: Any, code: str, message: str) -> None:
        """Raise an import error naming the current node unless ``cond`` holds."""
        if not cond:
            raise self.error(code, message)

    # -- tensors ------------------------------------------------------------------
    def get(self, name: str) -> Tensor | None:
        if name == "":
            return None
        if name in self.unavailable:
            raise self.error(ErrorCode.UNSUPPORTED_NODE_INPUT, self.unavailable[name])
        if name not in self.tensors and name in self.initializers:
            from kilnrt.onnx.tensors import tensor_array

            array = tensor_array(self.initializers[name], self.model_dir, f"initializer {name!r}")
            try:
                DataType.from_numpy(array.dtype)
            except TypeError as exc:
                raise self.error(ErrorCode.UNSUPPORTED_NODE_DATATYPE, f"initializer {name!r}: {exc}") from None
            self.tensors[name] = self._constant(array, name)
        if name not in self.tensors:
            raise self.error(ErrorCode.INVALID_NODE, f"input {name!r} is not produced by any earlier node, "
                                                     "initializer or graph input (is the graph topologically sorted?)")
        return self.tensors[name]

    def _constant(self, array: np.ndarray, name: str) -> Tensor:
        name = self.net.unique_name(name)
        layer = self.net.add_layer(LayerKind.CONSTANT, ConstantParams(np.asarray(array)), [], name=name,
                                   origin=(name,))
        return layer.outputs[0]

    def constant(self, value: Any, dtype: Any = None, name: str | None = None) -> Tensor:
        """A CONSTANT layer holding ``value`` (numpy-convertible)."""
        array = np.asarray(value, dtype=dtype)
        base = name or f"{self.node_name or 'const'}/const"
        return self._constant(array, base)

    def value(self, t: Tensor | None) -> np.ndarray | None:
        """The value of ``t`` if it is known at import time (constants and what folds from them)."""
        if t is None:
            return None
        const = self.net.constant_value(t)
        if const is not None:
            return const
        from kilnrt.network.infer import known_value

        v = known_value(self.net, t)
        return None if v is None else torch_to_numpy(v)

    def require_value(self, t: Tensor, what: str) -> np.ndarray:
        v = self.value(t)
        self.require(v is not None, ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                     f"{what} must be a constant (or fold to one), but it is computed at run time")
        return v

    # -- layers -------------------------------------------------------------------
    def add(self, kind: LayerKind, params: Any, inputs: Sequence[Tensor | None], *, num_outputs: int = 1):
        """Add a layer for the current node; returns the layer."""
        base = self.node_name or kind.value
        name = base if self._layer_count == 0 and base not in {l.name for l in self.net.layers[-64:]} \
            else f"{base}/{kind.value}_{self._layer_count}"
        self._layer_count += 1
        return self.net.add_layer(kind, params, inputs, num_outputs=num_outputs, name=name,
                                  origin=(self.node_name,))

    def out(self, kind: LayerKind, params: Any, *inputs: Tensor | None) -> Tensor:
        """Add a single-output layer and return its output."""
        return self.add(kind, params, list(inputs)).outputs[0]

    # -- small helpers importers share ------------------------------------------------
    def elementwise(self, op: ElementWiseOperation, a: Tensor, b: Tensor) -> Tensor:
        return self.out(LayerKind.ELEMENTWISE, ElementWiseParams(op), a, b)

    def unary(self, op: UnaryOperation, x: Tensor) -> Tensor:
        return self.out(LayerKind.UNARY, UnaryParams(op), x)

    def cast(self, x: Tensor, to: DataType) -> Tensor:
        return self.out(LayerKind.CAST, CastParams(to), x)

    def shape_of(self, x: Tensor) -> Tensor:
        return self.out(LayerKind.SHAPE, ShapeParams(), x)

    def reshape(self, x: Tensor, dims: Sequence[int] | Tensor, zero_is_placeholder: bool = True) -> Tensor:
        if isinstance(dims, Tensor):
            return self.out(LayerKind.SHUFFLE, ShuffleParams(zero_is_placeholder=zero_is_placeholder), x, dims)
        return self.out(LayerKind.SHUFFLE, ShuffleParams(reshape_dims=tuple(int(d) for d in dims),
                                                         zero_is_placeholder=zero_is_placeholder), x)

    def transpose(self, x: Tensor, perm: Sequence[int]) -> Tensor:
        return self.out(LayerKind.SHUFFLE, ShuffleParams(first_transpose=tuple(int(p) for p in perm)), x)

    def unsqueeze(self, x: Tensor, axes: Sequence[int]) -> Tensor:
        return self.out(LayerKind.UNSQUEEZE, UnsqueezeParams(tuple(int(a) for a in axes)), x)

    def rank(self, x: Tensor) -> int:
        shape = x.shape
        self.require(shape is not None, ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                     f"the rank of input {x.name!r} must be known at build time")
        return len(shape)

    def dtype(self, x: Tensor) -> DataType:
        dt = x.dtype
        self.require(dt is not None, ErrorCode.UNSUPPORTED_NODE_DATATYPE,
                     f"the data type of {x.name!r} could not be inferred")
        return dt
