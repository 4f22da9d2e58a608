"""The tactic library's registry: every implementation of every layer kind, by name.

A tactic is one way to run one layer kind on one device.  The builder sees tactics only
through :func:`tactics_for`; a plan names its tactics, and loading looks them up with
:func:`get_tactic` (never code from the file).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch

from kilnrt.errors import ErrorCode, PlanError
from kilnrt.network.graph import Layer
from kilnrt.network.layers import LayerKind


@dataclasses.dataclass
class TacticContext:
    """What a tactic may look at while deciding and preparing: the device and constant inputs."""

    device: torch.device
    constants: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def constant(self, layer: Layer, index: int) -> torch.Tensor | None:
        t = layer.inputs[index] if index < len(layer.inputs) else None
        return None if t is None else self.constants.get(t.name)


def static_dims(shape) -> bool:
    """True when every dim of ``shape`` is a known positive int (not symbolic, not -1): what a
    tactic that needs shapes fixed at build time checks in ``supports``."""
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


class Tactic:
    """One implementation of one layer kind on one device.

    ``supports(layer, ctx)`` says whether it can run this layer; ``prepare(layer, ctx)``
    does the once-per-build work (weight transforms) and returns the state that
    ``run(state, inputs)`` uses on every inference.  ``run`` returns the output tensors.

    A tactic with one output may also offer to store it straight into a strided view that
    the runtime gives it (a slice of a concatenation's output buffer, so the concatenation
    copies nothing): ``can_write_into(layer, ctx, out)`` answers for a ``meta`` tensor with
    the view's exact shape, dtype and strides, at build time; ``run_into(state, inputs, out)``
    then writes into such a view on every inference, where ``run`` would allocate.
    """

    name: str = ""
    kind: LayerKind
    device: str = "cpu"

    def supports(self, layer: Layer, ctx: TacticContext) -> bool:
        return True

    def prepare(self, layer: Layer, ctx: TacticContext) -> Any:
        return layer.params

    def run(self, state: Any, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        raise NotImplementedError

    def can_write_into(self, layer: Layer, ctx: TacticContext, out: torch.Tensor) -> bool:
        """Whether :meth:`run_into` can store this layer's single output into views laid out
        like ``out`` (a ``meta`` tensor: its shape, dtype and strides are the view's)."""
        return False

    def run_into(self, state: Any, inputs: Sequence[torch.Tensor | None], out: torch.Tensor) -> None:
        """Like :meth:`run`, but store the single output into ``out`` (a view of another
        tensor, as :meth:`can_write_into` accepted at build) and return nothing."""
        raise NotImplementedError(f"tactic {self.name} does not write into a given tensor")

    def __repr__(self) -> str:
        return f"<tactic {self.name}>"


class FunctionTactic(Tactic):
    """A tactic made from a function ``fn(params, *inputs) -> Tensor | tuple[Tensor, ...]``.

    ``into(params, out, *inputs)``, where given, is its :meth:`run_into` (storing into ``out``),
    and ``into_ok(layer, out)`` its :meth:`can_write_into` (see :func:`writes_into`)."""

    def __init__(self, name: str, kind: LayerKind, device: str, fn: Callable[..., Any],
                 supports: Callable[[Layer, TacticContext], bool] | None = None,
                 into: Callable[..., None] | None = None,
                 into_ok: Callable[[Layer, torch.Tensor], bool] | None = None) -> None:
        self.name, self.kind, self.device, self.fn = name, kind, device, fn
        self._supports = supports
        self.into, self.into_ok = into, into_ok

    def supports(self, layer: Layer, ctx: TacticContext) -> bool:
        return True if self._supports is None else bool(self._supports(layer, ctx))

    def run(self, state: Any, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        out = self.fn(state, *inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def can_write_into(self, layer: Layer, ctx: TacticContext, out: torch.Tensor) -> bool:
        return self.into is not None and len(layer.outputs) == 1 and bool(self.into_ok(layer, out))

    def run_into(self, state: Any, inputs: Sequence[torch.Tensor | None], out: torch.Tensor) -> None:
        if self.into is None:
            super().run_into(state, inputs, out)
        self.into(state, out, *inputs)


_TACTICS: dict[str, Tactic] = {}
_REFERENCE: dict[LayerKind, Callable[..., Any]] = {}


def register(tactic: Tactic) -> Tactic:
    if not tactic.name:
        raise ValueError("a tactic needs a dotted name such as 'cpu.convolution.torch'")
    if tactic.name in _TACTICS:
        raise ValueError(f"tactic {tactic.name!r} is registered twice")
    _TACTICS[tactic.name] = tactic
    return tactic


def unregister(name: str) -> None:
    """Remove a tactic: a plugin's kernel, when the plugin is deregistered or replaced."""
    _TACTICS.pop(name, None)


def tactic(cls: type[Tactic]) -> type[Tactic]:
    """Class decorator: ``@tactic class CudaConvCudnn(Tactic): name = 'cuda.convolution.cudnn'``."""
    register(cls())
    return cls


def kernel(kind: LayerKind, *, device: str = "cpu", variant: str = "torch",
           supports: Callable[[Layer, TacticContext], bool] | None = None,
           reference: bool | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Function decorator registering ``fn(params, *inputs)`` as tactic ``{device}.{kind}.{variant}``.

    The CPU torch kernel of a kind is also its *reference*: the implementation that
    shape inference and constant folding evaluate, and that other tactics are tested against.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        register(FunctionTactic(f"{device}.{kind.value}.{variant}", kind, device, fn, supports))
        if reference or (reference is None and device == "cpu" and variant == "torch"):
            _REFERENCE[kind] = fn
        return fn

    return wrap


def writes_into(kind: LayerKind, *, when: Callable[[Layer, torch.Tensor], bool]
                ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Function decorator giving the reference tactic ``cpu.{kind}.torch`` a :meth:`~Tactic.run_into`:
    ``fn(params, out, *inputs)`` stores the layer's result into ``out``; ``when(layer, out)``
    says (at build, ``out`` a ``meta`` tensor laid out as the view will be) whether it can.
    ``cuda.{kind}.torch`` (the same function on CUDA tensors) takes it too."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        target = _TACTICS.get(f"cpu.{kind.value}.torch")
        if not isinstance(target, FunctionTactic):
            raise ValueError(f"writes_into({kind.value}) needs the kernel cpu.{kind.value}.torch registered first")
        target.into, target.into_ok = fn, when
        return fn

    return wrap


def _load_builtin() -> None:
    import kilnrt.kernels.cpu  # noqa: F401  (registers the CPU kernels)


def _load_device(device: str) -> None:
    _load_builtin()
    if device == "cuda":
        import kilnrt.kernels.cuda  # noqa: F401


def tactics_for(layer: Layer, device: str, ctx: TacticContext) -> list[Tactic]:
    _load_device(device)
    return [t for t in _TACTICS.values() if t.kind == layer.kind and t.device == device and t.supports(layer, ctx)]


def get_tactic(name: str) -> Tactic:
    _load_device(name.split(".", 1)[0])
    if name not in _TACTICS:
        if name.split(".")[1:2] == ["plugin"] and name.count(".") > 2:   # a user plugin's kernel
            from kilnrt.kernels.plugin import missing_kernel_error

            raise missing_kernel_error(name)
        raise PlanError(ErrorCode.PLAN_UNKNOWN_TACTIC,
                        f"the plan uses tactic {name!r}, which this kilnrt does not have; "
                        f"rebuild the plan with this kilnrt version")
    return _TACTICS[name]


def all_tactics() -> dict[str, Tactic]:
    _load_builtin()
    return dict(_TACTICS)


def reference_kernel(kind: LayerKind) -> Callable[..., Any]:
    _load_builtin()
    if kind not in _REFERENCE:
        from kilnrt.errors import InternalError

        raise InternalError(f"no reference kernel registered for layer kind {kind.value}")
    return _REFERENCE[kind]


def run_layer(layer, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """Run a layer's CPU reference kernel (constant folding, host-side shape computations).
    Inputs may be real or meta tensors: any meta data input makes every data input meta."""
    from kilnrt.network.dtypes import numpy_to_torch
    from kilnrt.network.layers import shape_input_positions

    if layer.kind == LayerKind.CONSTANT:
        return [numpy_to_torch(layer.params.weights)]
    shape_inputs = shape_input_positions(layer)
    if any(t is not None and t.device.type == "meta" for i, t in enumerate(inputs) if i not in shape_inputs):
        inputs = [t if (t is None or i in shape_inputs) else t.to("meta") for i, t in enumerate(inputs)]
    out = reference_kernel(layer.kind)(layer.params, *inputs)
    return list(out) if isinstance(out, (tuple, list)) else [out]
