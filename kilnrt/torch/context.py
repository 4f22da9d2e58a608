"""What an ATen importer works with: the network under construction and the current FX node."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from kilnrt.errors import ErrorCode, UnsupportedNodeError
from kilnrt.network.dtypes import DataType, torch_to_numpy
from kilnrt.network.graph import Network, Tensor
from kilnrt.network.layers import (CastParams, ConcatenationParams, ConstantParams, ElementWiseOperation,
                                   ElementWiseParams, LayerKind, ShapeParams, ShuffleParams, UnaryOperation,
                                   UnaryParams, UnsqueezeParams)
from kilnrt.torch.registry import target_name


class TorchImportContext:
    def __init__(self, network: Network) -> None:
        self.net = network
        self.node: torch.fx.Node | None = None
        self._layer_count = 0

    # -- errors -------------------------------------------------------------------
    def error(self, code: str, message: str) -> UnsupportedNodeError:
        node = self.node
        return UnsupportedNodeError(code, message, node=None if node is None else node.name,
                                    op=None if node is None else target_name(node.target))

    def require(self, cond: Any, code: str, message: str) -> None:
        """Raise an import error naming the current node unless ``cond`` holds."""
        if not cond:
            raise self.error(code, message)

    # -- the node's metadata ---------------------------------------------------------
    @property
    def meta(self) -> Any:
        """The current node's example value (a FakeTensor, a tuple of them, a SymInt...)."""
        return None if self.node is None else self.node.meta.get("val")

    def out_dtype(self, index: int = 0) -> DataType | None:
        """The dtype torch records for output ``index`` of the current node."""
        val = self.meta
        if isinstance(val, (tuple, list)):
            val = val[index] if index < len(val) else None
        if isinstance(val, torch.Tensor):
            return DataType.from_torch(val.dtype)
        return None

    # -- tensors ------------------------------------------------------------------
    def constant(self, value: Any, dtype: Any = None) -> Tensor:
        """A CONSTANT layer holding ``value`` (numpy- or torch-convertible)."""
        if isinstance(value, torch.Tensor):
            array = torch_to_numpy(value.detach().cpu())
        else:
            array = np.asarray(value, dtype=dtype)
        if dtype is not None and array.dtype != np.dtype(dtype):
            array = array.astype(dtype)
        base = f"{self.node.name if self.node is not None else 'const'}/const"
        name = self.net.unique_name(base)
        return self.net.add_layer(LayerKind.CONSTANT, ConstantParams(np.asarray(array, order="C")), [], name=name,
                                  origin=(name,)).outputs[0]

    def value(self, t: Any) -> np.ndarray | None:
        """The value of ``t`` if known at build time (python numbers, constants, what folds from them)."""
        if t is None:
            return None
        if isinstance(t, (int, float, bool, np.ndarray, np.number)):
            return np.asarray(t)
        if not isinstance(t, Tensor):
            return None
        const = self.net.constant_value(t)
        if const is not None:
            return const
        from kilnrt.network.infer import known_value

        v = known_value(self.net, t)
        return None if v is None else torch_to_numpy(v)

    def int_value(self, v: Any) -> int | None:
        """``v`` as a python int when known at build time, else None (a size computed at run time)."""
        if isinstance(v, (bool, np.bool_)):
            return None
        if isinstance(v, (int, np.integer)):
            return int(v)
        known = self.value(v)
        if known is not None and known.size == 1 and np.issubdtype(known.dtype, np.integer):
            return int(known.reshape(()))
        return None

    def tensor(self, v: Any, dtype: DataType | None = None) -> Tensor:
        """``v`` as a tensor: a Tensor as is (cast to ``dtype`` when given), a python number as a constant."""
        if isinstance(v, Tensor):
            return v if dtype is None or self.dtype(v) == dtype else self.cast(v, dtype)
        if dtype is None:
            dtype = DataType.BOOL if isinstance(v, bool) else DataType.INT64 if isinstance(v, int) else DataType.FLOAT
        return self.constant(np.asarray(v, dtype=dtype.numpy))

    def int_vector(self, values: Sequence[Any]) -> Tensor:
        """A 1-D int64 tensor of ``values`` (ints and int64 scalar tensors): a constant when all are known."""
        known = [self.int_value(v) for v in values]
        if all(k is not None for k in known):
            return self.constant(np.asarray(known, dtype=np.int64))
        parts = [self.constant(np.asarray([k], np.int64)) if k is not None
                 else self.reshape(self.cast(v, DataType.INT64) if self.dtype(v) != DataType.INT64 else v, [1])
                 for k, v in zip(known, values)]
        return self.out(LayerKind.CONCATENATION, ConcatenationParams(0), *parts)

    # -- layers -------------------------------------------------------------------
    def add(self, kind: LayerKind, params: Any, inputs: Sequence[Tensor | None], *, num_outputs: int = 1):
        """Add a layer for the current node; returns the layer."""
        base = self.node.name if self.node is not None else kind.value
        name = base if self._layer_count == 0 and base not in self.net.tensors else \
            self.net.unique_name(f"{base}/{kind.value}_{self._layer_count}")
        self._layer_count += 1
        origin = (base,) if self.node is not None else ()
        return self.net.add_layer(kind, params, inputs, num_outputs=num_outputs, name=name, origin=origin)

    def out(self, kind: LayerKind, params: Any, *inputs: Tensor | None) -> Tensor:
        """Add a single-output layer and return its output."""
        return self.add(kind, params, list(inputs)).outputs[0]

    def elementwise(self, op: ElementWiseOperation, a: Tensor, b: Tensor) -> Tensor:
        return self.out(LayerKind.ELEMENTWISE, ElementWiseParams(op), a, b)

    def unary(self, op: UnaryOperation, x: Tensor) -> Tensor:
        return self.out(LayerKind.UNARY, UnaryParams(op), x)

    def cast(self, x: Tensor, to: DataType) -> Tensor:
        return self.out(LayerKind.CAST, CastParams(to), x)

    def shape_of(self, x: Tensor) -> Tensor:
        return self.out(LayerKind.SHAPE, ShapeParams(), x)

    def reshape(self, x: Tensor, dims: Sequence[Any] | Tensor) -> Tensor:
        """Reshape to ``dims`` (ints, -1 once, or size tensors); a 0 is a real zero, as in torch."""
        if not isinstance(dims, Tensor):
            known = [self.int_value(d) for d in dims]
            if all(k is not None for k in known):
                return self.out(LayerKind.SHUFFLE, ShuffleParams(reshape_dims=tuple(known), zero_is_placeholder=False),
                                x)
            dims = self.int_vector(dims)
        return self.out(LayerKind.SHUFFLE, ShuffleParams(zero_is_placeholder=False), x, dims)

    def transpose(self, x: Tensor, perm: Sequence[int]) -> Tensor:
        return self.out(LayerKind.SHUFFLE, ShuffleParams(first_transpose=tuple(int(p) for p in perm)), x)

    def unsqueeze(self, x: Tensor, axes: Sequence[int]) -> Tensor:
        return self.out(LayerKind.UNSQUEEZE, UnsqueezeParams(tuple(int(a) for a in axes)), x)

    def rank(self, x: Tensor) -> int:
        shape = x.shape
        self.require(shape is not None, ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                     f"the rank of {x.name!r} must be known at build time")
        return len(shape)

    def dtype(self, x: Tensor) -> DataType:
        dt = x.dtype
        self.require(dt is not None, ErrorCode.UNSUPPORTED_NODE_DATATYPE,
                     f"the data type of {x.name!r} could not be inferred")
        return dt

    def axis(self, dim: int, rank: int) -> int:
        """``dim`` (negative counts from the end) checked against ``rank``."""
        self.require(-max(rank, 1) <= dim < max(rank, 1), ErrorCode.INVALID_NODE,
                     f"dim {dim} is out of range for a tensor of rank {rank}")
        return dim % max(rank, 1)
