"""TensorRT's ``Refitter`` over :mod:`kilnrt.engine.refit`: new weights for a REFIT engine.

    refitter = trt.Refitter(engine, logger)
    refitter.set_named_weights("conv1.weight", trt.Weights(new_kernel))
    assert not refitter.get_missing_weights()
    refitter.refit_cuda_engine()

Weights are named as in the ONNX model (its initializers) or, for a network built through
the API, as its constant tensors.  kilnrt keeps every original weight, so a refit never
needs weights that were not changed: ``get_missing_weights()`` is empty.
"""
from __future__ import annotations

import enum
from typing import Any

import numpy as np

from kilnrt.engine.refit import check_weights
from kilnrt.errors import ErrorCode, KilnError
from kilnrt.network.definition import Weights
from kilnrt.trt.logger import ILogger, Severity, report
from kilnrt.trt.strict import ERROR_RECORDER, Strict


class WeightsRole(enum.IntEnum):
    """Which weights of a layer ``Refitter.set_weights`` replaces: the layer's constant input."""

    KERNEL = 0
    BIAS = 1
    SHIFT = 2
    SCALE = 3
    CONSTANT = 4
    ANY = 5


# (role, layer kind name) -> the input position of that constant in kilnrt's layer
_ROLE_INPUT = {WeightsRole.KERNEL: 1, WeightsRole.BIAS: 2, WeightsRole.SHIFT: 1, WeightsRole.SCALE: 2}


class Refitter(Strict):
    """``Refitter(engine, logger)``: collect new weights, then ``refit_cuda_engine()``.

    As in TensorRT, a rejected weight makes ``set_named_weights`` return False and the
    reason goes to the logger; ``refit_cuda_engine`` returns False when the refit fails."""

    _TRT_NAME = "Refitter"
    _IGNORED = {"error_recorder": ERROR_RECORDER}

    def __init__(self, engine: Any, logger: ILogger | None = None) -> None:
        if not getattr(engine, "refittable", False):
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"engine {getattr(engine, 'name', engine)!r} is not refittable: build it with "
                            "config.set_flag(trt.BuilderFlag.REFIT)")
        self.engine = engine
        self.logger = logger
        self.max_threads = 1
        self.weights_validation = True   # shapes and dtypes are always checked
        self._pending: dict[str, np.ndarray] = {}
        self._seal()

    # -- naming weights --------------------------------------------------------------
    def get_all_weights(self) -> list[str]:
        """Every refittable weight's name."""
        return list(self.engine.refittable_weights)

    def get_missing_weights(self) -> list[str]:
        """Weights that must be given before ``refit_cuda_engine``: none, since the engine
        keeps the current value of every weight it folded."""
        return []

    def get_all(self) -> tuple[list[str], list[WeightsRole]]:
        names = self.get_all_weights()
        return names, [WeightsRole.CONSTANT] * len(names)

    def get_missing(self) -> tuple[list[str], list[WeightsRole]]:
        return [], []

    # -- setting weights -------------------------------------------------------------
    def set_named_weights(self, name: str, weights: Any, location: Any = None) -> bool:
        try:
            array = _array(weights)
            old = self.engine.refit_source.values.get(name)
            if old is not None and getattr(array, "size", None) == old.size and array.shape != old.shape:
                array = array.reshape(old.shape)   # TensorRT's Weights are flat: a count, not a shape
            self._pending.update(check_weights(self.engine.refit_source, {name: array}))
            return True
        except KilnError as exc:
            report(self.logger, Severity.ERROR, exc.describe())
            return False

    def set_weights(self, layer_name: str, role: WeightsRole, weights: Any) -> bool:
        """TensorRT's (layer, role) addressing: the constant the layer reads at that role's
        input (KERNEL: 1, BIAS: 2 of a convolution; SHIFT: 1, SCALE: 2 of a scale layer)."""
        name = self._weight_of(layer_name, WeightsRole(role))
        if name is None:
            report(self.logger, Severity.ERROR,
                   f"layer {layer_name!r} has no refittable {WeightsRole(role).name} weights; use "
                   f"set_named_weights with one of: {', '.join(self.get_all_weights())}")
            return False
        return self.set_named_weights(name, weights)

    def _weight_of(self, layer_name: str, role: WeightsRole) -> str | None:
        net = self.engine.refit_source.network
        layer = next((l for l in net.layers if l.name == layer_name), None)
        index = _ROLE_INPUT.get(role)
        if layer is None or index is None or index >= len(layer.inputs) or layer.inputs[index] is None:
            return None
        name = layer.inputs[index].name
        return name if name in self.engine.refit_source.values else None

    def unset_named_weights(self, name: str) -> bool:
        return self._pending.pop(name, None) is not None

    def get_named_weights(self, name: str) -> Weights:
        if name in self._pending:
            return Weights(self._pending[name])
        values = self.engine.refit_source.values
        if name not in values:
            raise KilnError(ErrorCode.UNKNOWN_TENSOR, f"the engine has no refittable weight named {name!r}")
        return Weights(values[name])

    def get_weights_prototype(self, name: str) -> Weights:
        """Weights with the shape and type ``name`` needs (zeros)."""
        current = self.get_named_weights(name).numpy()
        return Weights(np.zeros_like(current))

    def get_weights_location(self, name: str) -> Any:
        return None

    # -- refitting -------------------------------------------------------------------
    def refit_cuda_engine(self) -> bool:
        try:
            self.engine.refit(self._pending)
        except KilnError as exc:
            report(self.logger, Severity.ERROR, exc.describe())
            return False
        self._pending.clear()
        return True

    def refit_cuda_engine_async(self, stream_handle: int = 0) -> bool:
        return self.refit_cuda_engine()

    def __enter__(self) -> "Refitter":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _array(weights: Any) -> Any:
    if isinstance(weights, Weights):
        return weights.numpy()
    if isinstance(weights, np.ndarray) or hasattr(weights, "detach"):
        return weights
    return np.asarray(weights)
