"""``kilnrt.compile(module, example_inputs)``: ``torch.export`` -> ATen graph -> Network -> Engine.

torch.export captures the module with PyTorch's own symbolic shapes.  Its graph is decomposed
into core ATen except for the ops kilnrt imports whole (``linear``, ``layer_norm``,
``scaled_dot_product_attention``...), converted through the importer table (no ONNX on the
way), and built.  Every ``torch.export.Dim`` becomes a named dim of its input, and its range
the optimization profile: min and max from the range torch.export proved, opt the example's size.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Mapping

import torch

from kilnrt.device import resolve_device
from kilnrt.errors import ErrorCode, KilnError
from kilnrt.torch import registry
from kilnrt.torch.convert import graph_to_network
from kilnrt.torch.module import CallSpec, CompiledModule, forward_parameters

# options of kilnrt.build that kilnrt.compile passes on
BUILD_OPTIONS = ("bf16", "tf32", "optimization_level", "timing_cache", "portable", "workspace", "progress",
                 "verbose", "tactic_buckets", "calibration", "calibration_method", "calibration_cache",
                 "accuracy_budget", "fp8")


def decomposition_table() -> dict:
    """torch.export's default decompositions, less the ops kilnrt imports whole."""
    table = torch.export.default_decompositions()
    for op in registry.supported_overloads():
        if op in table:
            del table[op]
    return table


def _is_data_dependent(exc: BaseException) -> bool:
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    while exc is not None:
        if isinstance(exc, GuardOnDataDependentSymNode) or "data-dependent" in str(exc).lower() \
                or "data dependent" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _dim_names(module: torch.nn.Module, args: tuple, kwargs: dict, dynamic_shapes: Any,
               ep: "torch.export.ExportedProgram") -> dict[str, str]:
    """sympy symbol name -> the name of the ``torch.export.Dim`` the user gave it (where it can be told)."""
    if dynamic_shapes is None:
        return {}
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
    except TypeError:
        return {}
    if isinstance(dynamic_shapes, Mapping):
        per_name = dict(dynamic_shapes)
    else:
        per_name = dict(zip(list(bound)[:len(dynamic_shapes)], dynamic_shapes))
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    names: dict[str, str] = {}
    for arg, spec in per_name.items():
        node = placeholders.get(arg)
        val = node.meta.get("val") if node is not None else None
        if not isinstance(val, torch.Tensor) or spec is None:
            continue
        items = spec.items() if isinstance(spec, Mapping) else enumerate(spec)
        for index, dim in items:
            name = getattr(dim, "__name__", None)
            size = val.shape[int(index)] if int(index) < val.dim() else None
            if name and isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
                names.setdefault(str(size.node.expr), name)
    return names


def _profile(ep, net, example: dict[str, torch.Tensor], dim_names: dict[str, str]) -> dict | None:
    """The optimization profile from torch.export's proven ranges (min, max) and the example (opt)."""
    ranges = {str(sym): vr for sym, vr in ep.range_constraints.items()}
    profile = {}
    for t in net.inputs:
        if all(isinstance(d, int) for d in t.shape):
            continue
        lo, opt, hi = [], [], []
        for i, d in enumerate(t.shape):
            if isinstance(d, int):
                lo.append(d), opt.append(d), hi.append(d)
                continue
            symbol = next((s for s, n in dim_names.items() if n == d), d)
            vr = ranges.get(symbol)
            try:
                low, high = int(vr.lower), int(vr.upper)
            except (TypeError, ValueError, AttributeError, OverflowError):
                raise KilnError(ErrorCode.INVALID_PROFILE,
                                f"input {t.name!r} dim {i} ({d}) has no upper bound "
                                f"(torch.export's range: {vr}); an engine needs one: "
                                f"give the Dim a max, e.g. Dim({d!r}, min=1, max=64)") from None
            lo.append(low), opt.append(min(max(int(example[t.name].shape[i]), low), high)), hi.append(high)
        profile[t.name] = (tuple(lo), tuple(opt), tuple(hi))
    return profile or None


def export_program(module: torch.nn.Module, args: tuple, kwargs: dict, dynamic_shapes: Any):
    """The module's ExportedProgram, decomposed to the ops kilnrt imports."""
    ep = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    return ep.run_decompositions(decomposition_table())


def _weights(ep) -> dict[str, torch.Tensor]:
    """Placeholder name -> tensor for parameters, buffers and lifted constants."""
    sig = ep.graph_signature
    out = {}
    state = ep.state_dict
    for name, target in list(sig.inputs_to_parameters.items()) + list(sig.inputs_to_buffers.items()):
        out[name] = state[target] if target in state else ep.constants[target]
    for name, target in sig.inputs_to_lifted_tensor_constants.items():
        out[name] = ep.constants[target]
    return out


def _inputs_device(args: tuple, kwargs: Mapping[str, Any]) -> str | None:
    """Where the example inputs live ("cuda" or "cpu"), or None when none is a tensor."""
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    if not tensors:
        return None
    return "cuda" if any(t.is_cuda for t in tensors) else "cpu"


def compile(module: torch.nn.Module, example_inputs: Any = (), *, example_kwargs: Mapping[str, Any] | None = None,
            dynamic_shapes: Any = None, fp16: bool = False, int8: bool = False, device: str | None = None,
            fallback: bool = True, **build_options: Any) -> torch.nn.Module:
    """A module that runs ``module`` as a kilnrt engine; see docs/pytorch.md.

    ``example_inputs``: a tensor or a tuple of positional args (``example_kwargs`` for keyword
    args).  ``dynamic_shapes``: torch.export's (``torch.export.Dim`` with min and max).  With a
    data-dependent Python branch, torch.export cannot capture one graph: with ``fallback`` (the
    default) kilnrt warns and compiles the module through ``torch.compile(backend="kilnrt")``
    instead; ``fallback=False`` raises.  ``device``: "cuda" or "cpu"; None (the default): where
    the example inputs are (with no tensor among them, the GPU when one is visible).  Other
    options go to :func:`kilnrt.build`.
    """
    if not isinstance(module, torch.nn.Module):
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"kilnrt.compile takes a torch.nn.Module; got {type(module).__name__}"
                                                    " (kilnrt.build takes ONNX models)")
    unknown = sorted(set(build_options) - set(BUILD_OPTIONS))
    if unknown:
        hint = ("; give dynamic ranges as torch.export.Dim(name, min=, max=) in dynamic_shapes"
                if "profiles" in unknown else "")
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        f"kilnrt.compile does not take {', '.join(unknown)}{hint}; it takes dynamic_shapes, fp16, "
                        f"int8, device, fallback and {', '.join(BUILD_OPTIONS)}")
    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    kwargs = dict(example_kwargs or {})
    device = resolve_device(device if device is not None else _inputs_device(args, kwargs))
    name = type(module).__name__
    try:
        ep = export_program(module, args, kwargs, dynamic_shapes)
    except KilnError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.export's errors are many; say which and why
        if _is_data_dependent(exc):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not fallback:
                raise KilnError(ErrorCode.UNSUPPORTED_NODE_DYNAMIC,
                                f"torch.export cannot capture {name} as one graph: its control flow depends on "
                                f"tensor values ({first}); rewrite the branch with torch.cond, or use "
                                "torch.compile(model, backend='kilnrt'), which runs the branch in Python") from exc
            return _fallback(module, name, first, fp16=fp16, device=device, int8=int8, **build_options)
        raise KilnError(ErrorCode.INVALID_MODEL,
                        f"torch.export could not capture {name}: {type(exc).__name__}: {exc}") from exc
    return _build(module, ep, args, kwargs, dynamic_shapes, name, fp16=fp16, int8=int8, device=device,
                  **build_options)


def _build(module, ep, args, kwargs, dynamic_shapes, name, **options) -> CompiledModule:
    from kilnrt.api import build
    from torch.export.graph_signature import ConstantArgument, InputKind, OutputKind, TensorArgument

    sig = ep.graph_signature
    mutated = [s.target for s in sig.output_specs if s.kind != OutputKind.USER_OUTPUT]
    if mutated:
        raise KilnError(ErrorCode.UNSUPPORTED_NODE, f"{name} changes its state when it runs ({', '.join(map(str, mutated))}"
                                                    "); an engine cannot: call module.eval() before compiling")
    dim_names = _dim_names(module, args, kwargs, dynamic_shapes, ep)
    converted = graph_to_network(ep.graph, constants=_weights(ep), dim_names=dim_names, name=name)
    leaves = []
    for s in sig.input_specs:
        if s.kind != InputKind.USER_INPUT:
            continue
        if isinstance(s.arg, TensorArgument):
            leaves.append(("input", s.arg.name))
        elif isinstance(s.arg, ConstantArgument):
            leaves.append(("const", s.arg.value))
        else:
            raise KilnError(ErrorCode.UNSUPPORTED_NODE_INPUT,
                            f"input {s.arg.name!r} is a {type(s.arg).__name__}; kilnrt takes tensor inputs "
                            "(numbers are built in as constants)")
    example = dict(zip([ref for kind, ref in leaves if kind == "input"],
                       [x for x in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]))
    # an input the forward never reads is not an engine input: the call accepts and ignores it
    leaves = [("unused", ref) if kind == "input" and ref not in converted.inputs else (kind, ref)
              for kind, ref in leaves]
    profile = _profile(ep, converted.network, example, dim_names)
    engine = build(converted.network, profiles=profile, **options)
    spec = CallSpec(ep.call_spec.in_spec, ep.call_spec.out_spec, leaves, converted.outputs,
                    forward_parameters(module), len(args), list(kwargs))
    return CompiledModule(engine, spec, name)


def _fallback(module, name, reason, **options) -> torch.nn.Module:
    warnings.warn(f"kilnrt.compile: torch.export cannot capture {name} as one graph (its control flow depends on "
                  f"tensor values: {reason}); compiling it with torch.compile(backend='kilnrt') instead: the graph "
                  "pieces run as kilnrt engines and the branch in Python. Such a module cannot be saved; rewrite "
                  "the branch with torch.cond for one engine, or pass fallback=False to make this an error",
                  stacklevel=3)
    from kilnrt.torch.backend import DynamoCompiledModule

    return DynamoCompiledModule(module, options)
