""":class:`CompiledModule`: an engine behind the signature of the PyTorch module it came from.

The call is flattened with PyTorch's pytree (args and kwargs as the module was exported with),
the tensors go to the engine by name, and the outputs come back in the module's own structure
(tuples, lists, dicts).  :meth:`CompiledModule.save` writes one plan file: the engine, and in its
build record the pytree specs as JSON (``torch.utils._pytree.treespec_dumps``), never pickle.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Any

import torch
from torch.utils import _pytree as pytree

from kilnrt.engine import Engine
from kilnrt.errors import ErrorCode, KilnError, PlanError
from kilnrt.torch.convert import Output

FORMAT = 1


@dataclasses.dataclass
class CallSpec:
    """How a call maps onto the engine: the pytree specs, which leaves are engine inputs (by name)
    and which were constants when the module was exported, and the outputs."""

    in_spec: Any                      # TreeSpec of (args, kwargs)
    out_spec: Any                     # TreeSpec of the outputs
    leaves: list[tuple[str, Any]]     # per flat input leaf: ("input", engine name), ("const", value), or
    #                                   ("unused", name): a tensor the forward never reads
    outputs: list[Output]
    parameters: list[str]             # the forward's parameter names (to bind a call)
    num_args: int                     # how many were passed positionally in the example
    kwarg_names: list[str] = dataclasses.field(default_factory=list)   # and by keyword, in its order

    def to_json(self) -> dict:
        for kind, value in self.leaves:
            if kind == "const" and not isinstance(value, (int, float, bool, str, type(None))):
                raise KilnError(ErrorCode.INVALID_ARGUMENT,
                                f"the module was exported with a non-tensor input {value!r}; only tensors, numbers "
                                "and strings can be saved with a compiled module")
        return {"format": FORMAT, "in_spec": pytree.treespec_dumps(self.in_spec),
                "out_spec": pytree.treespec_dumps(self.out_spec), "leaves": [list(x) for x in self.leaves],
                "outputs": [dataclasses.asdict(o) for o in self.outputs], "parameters": list(self.parameters),
                "num_args": self.num_args, "kwarg_names": list(self.kwarg_names)}

    @classmethod
    def from_json(cls, d: dict) -> "CallSpec":
        try:
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}, this kilnrt reads {FORMAT}")
            return cls(pytree.treespec_loads(d["in_spec"]), pytree.treespec_loads(d["out_spec"]),
                       [(str(k), v) for k, v in d["leaves"]],
                       [Output(o["kind"], o.get("name"), o.get("value")) for o in d["outputs"]],
                       [str(p) for p in d["parameters"]], int(d["num_args"]), [str(k) for k in d["kwarg_names"]])
        except Exception as exc:  # noqa: BLE001 - a damaged record is the plan's error
            raise PlanError(ErrorCode.PLAN_CORRUPT, f"the plan's PyTorch call record is unreadable: {exc}") from None


class CompiledModule(torch.nn.Module):
    """A kilnrt engine called like the module it was compiled from (``kilnrt.compile``)."""

    def __init__(self, engine: Engine, spec: CallSpec, name: str = "module") -> None:
        super().__init__()
        self.engine = engine
        self.spec = spec
        self.module_name = name

    def _flatten(self, args: tuple, kwargs: dict) -> list:
        spec = self.spec
        names = spec.parameters
        if len(args) > len(names):
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{self.module_name} takes {len(names)} arguments "
                                                        f"({', '.join(names)}); got {len(args)} positional")
        bound = dict(zip(names, args))
        for k, v in kwargs.items():
            if k in bound:
                raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{self.module_name} got argument {k!r} twice")
            bound[k] = v
        want = names[:spec.num_args] + spec.kwarg_names
        unknown = sorted(set(bound) - set(want))
        missing = [n for n in want if n not in bound]
        if unknown or missing:
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"{self.module_name} was compiled for arguments ({', '.join(want)}); "
                            + (f"missing: {', '.join(missing)}" if missing else "")
                            + ("; " if missing and unknown else "")
                            + (f"not compiled for: {', '.join(unknown)} (compile with an example that passes them)"
                               if unknown else ""))
        call = (tuple(bound[n] for n in names[:spec.num_args]), {k: bound[k] for k in spec.kwarg_names})
        flat, got = pytree.tree_flatten(call)
        if got != spec.in_spec:
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"{self.module_name} was compiled for inputs structured as {spec.in_spec}; got {got}")
        return flat

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        flat = self._flatten(args, kwargs)
        feeds = {}
        for value, (kind, ref) in zip(flat, self.spec.leaves):
            if kind == "input":
                if not isinstance(value, torch.Tensor):
                    raise KilnError(ErrorCode.INVALID_ARGUMENT,
                                    f"input {ref!r} must be a torch.Tensor; got {type(value).__name__}")
                feeds[ref] = value
            elif kind == "const" and not _equal(value, ref):
                raise KilnError(ErrorCode.INVALID_ARGUMENT,
                                f"{self.module_name} was compiled with a non-tensor input equal to {ref!r}, which "
                                f"the engine has built in; got {value!r}: compile again with that value")
        results = self.engine.run(feeds) if feeds else self.engine.run({})
        flat_out = []
        for o in self.spec.outputs:
            if o.kind == "tensor":
                flat_out.append(results[o.name])
            elif o.kind == "int":
                flat_out.append(int(results[o.name]))
            else:
                flat_out.append(o.value)
        return pytree.tree_unflatten(flat_out, self.spec.out_spec)

    def save(self, path: str, *, key: bytes | str | None = None) -> None:
        """One plan file holding the engine and the call record; :func:`load` reads it back."""
        self.engine.build_info["torch"] = json.loads(json.dumps(self.spec.to_json()))
        self.engine.build_info["torch"]["name"] = self.module_name
        self.engine.save(path, key=key)

    def extra_repr(self) -> str:
        return repr(self.engine)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values that do not compare differ
        return False


def load(path: str, *, key: bytes | str | None = None) -> CompiledModule:
    """A :class:`CompiledModule` from a file written by :meth:`CompiledModule.save`."""
    from kilnrt.engine import load as load_engine

    engine = load_engine(path, key=key)
    record = engine.build_info.get("torch")
    if not isinstance(record, dict):
        raise PlanError(ErrorCode.PLAN_NOT_A_PLAN,
                        f"{path!r} is a kilnrt plan but not a compiled PyTorch module (it has no call record); "
                        "load it with kilnrt.load")
    return CompiledModule(engine, CallSpec.from_json(record), str(record.get("name", "module")))


def forward_parameters(module: torch.nn.Module) -> list[str]:
    """The names of ``module.forward``'s parameters, in order (no *args / **kwargs)."""
    params = inspect.signature(module.forward).parameters.values()
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
