"""What a layer converter works with: the network being filled, the blob table and the weights."""
from __future__ import annotations

from typing import Any

import numpy as np

from kilnrt.errors import ErrorCode, KilnError
from kilnrt.network.graph import Network, Tensor
from kilnrt.network.layers import ConstantParams, LayerKind


class Context:
    """One Caffe layer's view: ``bottoms``, ``blobs`` (weights), ``add`` and ``fail``."""

    def __init__(self, network: Network, tensors: dict[str, Tensor], weights: dict[str, list[np.ndarray]]) -> None:
        self.network = network
        self.tensors = tensors          # blob name -> the tensor that last wrote it
        self.weights = weights
        self.layer: Any = None

    # -- about the current layer -----------------------------------------------------
    def fail(self, message: str, code: str = ErrorCode.UNSUPPORTED_NODE_ATTR) -> KilnError:
        return KilnError(code, f"Caffe {self.layer.type} layer: {message}",
                         layer=self.layer.name)

    def bottoms(self, count: int | None = None) -> list[Tensor]:
        names = list(self.layer.bottom)
        if count is not None and len(names) != count:
            raise self.fail(f"expects {count} bottom blob(s), got {len(names)}", ErrorCode.INVALID_NODE)
        missing = [n for n in names if n not in self.tensors]
        if missing:
            raise self.fail(f"bottom blob(s) {missing} are produced by no earlier layer and are no input",
                            ErrorCode.INVALID_NODE)
        return [self.tensors[n] for n in names]

    def blobs(self, least: int, most: int) -> list[np.ndarray]:
        found = self.weights.get(self.layer.name) or []
        if not least <= len(found) <= most:
            where = "the .caffemodel (matched by layer name)" if self.weights else "the model (no .caffemodel given)"
            raise self.fail(f"needs {least}{'' if least == most else f' to {most}'} weight blob(s); "
                            f"{where} has {len(found)}", ErrorCode.INVALID_MODEL)
        return found

    def blob(self, array: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise self.fail(f"the {what} blob has shape {array.shape} ({array.size} values); "
                            f"expected {shape}", ErrorCode.INVALID_MODEL)
        return np.ascontiguousarray(array.reshape(shape), dtype=np.float32)

    # -- building ----------------------------------------------------------------------
    def shape(self, t: Tensor) -> tuple[int, ...]:
        shape = t.shape
        if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise self.fail(f"the shape of {t.name!r} is not static ({shape}); Caffe nets have fixed shapes")
        return tuple(shape)

    def const(self, array: np.ndarray, what: str) -> Tensor:
        layer = self.network.add_layer(LayerKind.CONSTANT, ConstantParams(np.ascontiguousarray(array)), [],
                                       name=f"{self.layer.name}/{what}", origin=(self.layer.name,))
        return layer.outputs[0]

    def add(self, kind: LayerKind, params: Any, inputs: list, suffix: str = "", outputs: int = 1):
        """The new layer's output tensor (a list of them when ``outputs`` > 1)."""
        layer = self.network.add_layer(kind, params, inputs, name=self.layer.name + suffix, num_outputs=outputs,
                                       origin=(self.layer.name,))
        return layer.outputs[0] if outputs == 1 else list(layer.outputs)

    def axis(self, axis: int, rank: int, what: str = "axis") -> int:
        if not -rank <= axis < rank:
            raise self.fail(f"{what} {axis} is out of range for a rank-{rank} blob", ErrorCode.INVALID_NODE)
        return axis % rank
