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

    def __repr__(self) -> str:
        return f"<tactic {self.name}>"


class FunctionTactic(Tactic):
    """A tactic made from a function ``fn(params, *inputs) -> Tensor | tuple[Tensor, ...]``."""

    def __init__(self, name: str, kind: LayerKind, device: str, fn: Callable[..., Any],
                 supports: Callable[[Layer, TacticContext], bool] | None = None) -> None:
        self.name, self.kind, self.device, self.fn = name, kind, device, fn
        self._supports = supports

    def supports(self, layer: Layer, ctx: TacticContext) -> bool:
        return True if self._supports is None else bool(self._supports(layer, ctx))

    def run(self, state: Any, inputs: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        out = self.fn(state, *inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]


_TACTICS: dict[str, Tactic] = {}
_REFERENCE: dict[LayerKind, Callable[..., Any]] = {}


def register(tactic: Tactic) -> Tactic:
    if not tactic.name:
        raise ValueError("a tactic needs a dotted name such as 'cpu.convolution.torch'")
    if tactic.name in _TACTICS:
        raise ValueError(f"tactic {tactic.name!r} is registered twice")
    _TACTICS[tactic.name] = tactic
    return tactic


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
