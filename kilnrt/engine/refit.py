"""Refit: give a REFIT engine new values for named weights, without choosing tactics again.

A REFIT build keeps a :class:`RefitSource`: the network exactly as the optimizer received
it (after profile specialization), the optimization level and precision it was built with,
and, for a network parsed from ONNX, the ONNX graph (its float initializers kept apart as
arrays).  A refit then redoes every fold that derives engine constants from the weights:

1. ONNX: the model is parsed again with the new initializers, which redoes the importer's
   own folds (BatchNormalization's scale and shift); every float constant whose value
   changed replaces the constant of the same name in the kept network.  A network built
   through the API takes the new arrays directly.
2. The optimizer passes run again on that network (constant folding, Conv/BatchNorm
   folding, epilogue fusions, FP16 casts), as the build ran them.
3. The result must have the engine's structure (the same constants with the same shapes
   and types, the same layers); its constants and array params replace the engine's, and
   the program is prepared again on next use, which redoes the tactics' prepare-time weight
   transforms (layouts, transposes).

Tactic choices, the memory plan and the I/O table stay as built: no timing, no rebuild.
Weights whose new values change what the optimizer can fold (a multiply by one that was
removed) are refused with an error that says so.

Steps 1 and 2, and what a build keeps, are :mod:`kilnrt.builder.refit`'s: the runtime never
re-optimizes.  This module holds the kept source and its plan record, checks the new
weights, and applies step 3 to the engine.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import numpy as np

from kilnrt.errors import DTypeError, ErrorCode, KilnError, PlanError, ShapeError
from kilnrt.network.definition import Weights
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.layers import ConstantParams, LayerKind


@dataclasses.dataclass
class RefitSource:
    """What a REFIT engine keeps to fold new weights the way its build folded the old ones."""

    network: Network                        # the optimizer's input network, with the build's weights
    level: int                              # builder optimization level
    values: dict[str, np.ndarray]           # refittable weight name -> its current value
    low_precision: DataType | None = None   # FP16/BF16 lowering the build applied, if any
    onnx: bytes | None = None               # the ONNX model without its refittable initializers
    quantization: Any = None                # a calibrated INT8/FP8 build's decisions: to, types, amax, fp8_amax
    pipeline: str | None = None             # the optimizer's passes that built it (None: a plan from before the field)

    @property
    def names(self) -> list[str]:
        return sorted(self.values)


# -- at build time ------------------------------------------------------------------------
def _is_float(array: np.ndarray) -> bool:
    try:
        return DataType.from_numpy(array.dtype).is_floating
    except TypeError:
        return False


def _all_constants(net: Network) -> dict[str, np.ndarray]:
    return {l.outputs[0].name: l.params.weights for l in net.layers if l.kind == LayerKind.CONSTANT}


# -- refitting ----------------------------------------------------------------------------
def check_weights(source: RefitSource, weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The new weights as numpy arrays, each a known name with its weight's shape and dtype."""
    out = {}
    for name, value in weights.items():
        if name not in source.values:
            import difflib

            near = difflib.get_close_matches(str(name), source.names, n=3)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
            shown = ", ".join(source.names[:12]) + (", ..." if len(source.names) > 12 else "")
            raise KilnError(ErrorCode.UNKNOWN_TENSOR,
                            f"the engine has no refittable weight named {name!r}{hint} Refittable weights "
                            f"({len(source.names)}): {shown}")
        array = _as_array(name, value)
        old = source.values[name]
        if tuple(array.shape) != tuple(old.shape):
            raise ShapeError(ErrorCode.INVALID_SHAPE,
                             f"weight {name!r} has shape {tuple(old.shape)}, got shape {tuple(array.shape)}; "
                             "refit keeps every weight's shape (rebuild for a different shape)")
        if array.dtype != old.dtype:
            raise DTypeError(ErrorCode.INVALID_DTYPE,
                             f"weight {name!r} is {old.dtype}, got {array.dtype}; convert it first, "
                             f"e.g. array.astype(np.{old.dtype.name})")
        out[name] = np.ascontiguousarray(array)
    return out


def _as_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, Weights):
        value = value.numpy()
    if hasattr(value, "detach"):  # a torch tensor
        from kilnrt.network.dtypes import torch_to_numpy

        return torch_to_numpy(value.detach().cpu())
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception as exc:  # noqa: BLE001 - report what was given
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"weight {name!r}: cannot read a "
                                                        f"{type(value).__name__} as an array ({exc})") from None
    if value.dtype == object:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"weight {name!r}: give a numeric numpy array or torch tensor, "
                                                    f"got a {type(value).__name__} of objects")
    return value


# The folding (parse again, optimize again) is the builder's: kilnrt.builder.refit gives it
# here when imported (``import kilnrt`` imports it), so the runtime never imports the optimizer.
_REFOLDER: Callable[[Any, dict[str, np.ndarray]], tuple[dict[str, np.ndarray], dict[str, Any]]] | None = None


def set_refolder(fn) -> None:
    """``fn(engine, new weights) -> (new constants, layer name -> new params)`` for one engine
    (one profile), raising BuildError when the engine's structure does not come out again."""
    global _REFOLDER
    _REFOLDER = fn


def refit_engine(engine, weights: Mapping[str, Any]) -> list[str]:
    """Replace named weights of a REFIT engine (every profile's) and return their names.
    Nothing changes unless every profile refolds to the engine's structure."""
    source = getattr(engine, "refit_source", None)
    if source is None:
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        f"engine {engine.name!r} was not built refittable: build it with "
                        "config.set_flag(BuilderFlag.REFIT) to refit its weights")
    new = check_weights(source, weights)
    if not new:
        return []
    engines = engine.profile_engines or [engine]
    if _REFOLDER is None:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, "refit needs kilnrt's builder to fold the new weights: "
                                                    "import kilnrt (or kilnrt.builder) first")
    results = [_REFOLDER(e, new) for e in engines]
    for e, (constants, params) in zip(engines, results):
        e.constants.update(constants)
        for layer in e.layers:
            layer.params = params[layer.name]
        e.refit_source.values.update(new)
        e.reset_program()
    return sorted(new)


# -- plans --------------------------------------------------------------------------------
def to_record(source: RefitSource, weights: dict, prefix: str) -> dict:
    """The plan header entry of a refit source; arrays go into ``weights``, once each (an
    array the plan holds already, as an engine constant or another profile's, is shared)."""
    from kilnrt.engine.serialize import encode_params

    owned = {id(a): k for k, a in weights.items()}   # arrays the plan already holds (engine constants too)

    def put(array: np.ndarray, name: str) -> str:
        key = owned.get(id(array))
        if key is None:
            key = f"refit/{name}" if f"refit/{name}" not in weights else f"{prefix}refit/{name}"
            n = 0
            while key in weights:
                n += 1
                key = f"{prefix}refit/{name}#{n}"
            weights[key] = array
            owned[id(array)] = key
        return key

    net = source.network
    counter = iter(range(1 << 62))
    layers = []
    for l in net.layers:
        if l.kind == LayerKind.CONSTANT:
            params = {"weights": {"weight": put(l.params.weights, "const/" + l.outputs[0].name)}}
        else:
            params = encode_params(l.params, lambda a: put(a, f"param/{next(counter)}"))
        layers.append({"name": l.name, "kind": l.kind.value, "params": params,
                       "inputs": [None if t is None else t.name for t in l.inputs],
                       "outputs": [t.name for t in l.outputs], "origin": list(l.origin),
                       "precision": l.precision.name if l.precision else None,
                       "output_types": {str(i): d.name for i, d in l.output_types.items()}})
    record = {
        "level": source.level, "low_precision": source.low_precision.name if source.low_precision else None,
        "network": {"name": net.name, "opset": net.opset,
                    "symbol_ranges": {k: list(v) for k, v in net.symbol_ranges.items()},
                    "inputs": [{"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape)} for t in net.inputs],
                    "layers": layers, "outputs": [t.name for t in net.outputs]},
        "values": {name: put(a, "weight/" + name) for name, a in sorted(source.values.items())},
        "onnx": None,
        "pipeline": source.pipeline,
    }
    if source.onnx is not None:
        record["onnx"] = put(np.frombuffer(source.onnx, dtype=np.uint8), "onnx")
    q = source.quantization
    if q is not None:
        record["quantization"] = {"to": q.to.name, "types": {n: t.name if t else None for n, t in q.types.items()},
                                  "amax": {n: float(v) for n, v in q.amax.items()},
                                  "fp8_amax": {n: float(v) for n, v in q.fp8_amax.items()}}
    return record


def from_record(record: Any, weights: dict) -> RefitSource | None:
    """A refit source from a plan header entry (None: the engine is not refittable); a
    malformed entry raises PlanError."""
    if record is None:
        return None
    try:
        return _from_record(record, weights)
    except PlanError:
        raise
    except KilnError as exc:
        raise PlanError(ErrorCode.PLAN_CORRUPT, f"the plan's refit data is malformed: {exc.describe()}") from None
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise PlanError(ErrorCode.PLAN_CORRUPT,
                        f"the plan's refit data is malformed: {type(exc).__name__}: {exc}") from None


def _weight(weights: dict, key: Any) -> np.ndarray:
    if not isinstance(key, str) or key not in weights:
        raise ValueError(f"refit data names missing weights {key!r}")
    return weights[key]


def _from_record(record: dict, weights: dict) -> RefitSource:
    from kilnrt.engine.serialize import decode_params

    if not isinstance(record, dict):
        raise TypeError(f"expected an object, got a {type(record).__name__}")
    level = record["level"]
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 5:
        raise ValueError(f"level must be an int in [0, 5], got {level!r}")
    low = DataType[record["low_precision"]] if record.get("low_precision") is not None else None
    d = record["network"]
    net = Network(str(d["name"]))
    opset = d.get("opset")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool)):
        raise ValueError(f"opset must be an int, got {opset!r}")
    net.opset = opset
    ranges = {}
    for sym, pair in dict(d.get("symbol_ranges") or {}).items():
        lo, hi = (int(v) for v in pair)
        ranges[str(sym)] = (lo, hi)
    net.symbol_ranges = ranges
    for t in d["inputs"]:
        shape = [v if isinstance(v, (int, str)) and not isinstance(v, bool) else _bad_dim(v) for v in t["shape"]]
        net.add_input(str(t["name"]), DataType[t["dtype"]], shape)
    for spec in d["layers"]:
        kind = LayerKind(spec["kind"])
        ins = [None if n is None else net.tensors[n] for n in spec["inputs"]]
        if kind == LayerKind.CONSTANT:
            params = ConstantParams(_weight(weights, spec["params"]["weights"]["weight"]))
        else:
            params = decode_params(kind, spec["params"], weights)
        outs = [str(n) for n in spec["outputs"]]
        layer = net.add_layer(kind, params, ins, num_outputs=len(outs), name=str(spec["name"]),
                              origin=tuple(str(o) for o in spec["origin"]), output_names=outs)
        if [t.name for t in layer.outputs] != outs:
            raise ValueError(f"layer {spec['name']!r} redefines a tensor of {outs}")
        if spec.get("precision") is not None:
            layer.precision = DataType[spec["precision"]]
        for i, dt in dict(spec.get("output_types") or {}).items():
            layer.output_types[int(i)] = DataType[dt]
    for n in d["outputs"]:
        net.mark_output(net.tensors[n])
    values = {str(n): _weight(weights, k) for n, k in dict(record["values"]).items()}
    onnx_bytes = None
    if record.get("onnx") is not None:
        onnx_bytes = _weight(weights, record["onnx"]).tobytes()
    pipeline = record.get("pipeline")
    if pipeline is not None and not isinstance(pipeline, str):
        raise ValueError(f"the refit pipeline must be a string, got {type(pipeline).__name__}")
    return RefitSource(net, level, values, low, onnx_bytes, _quantization(record.get("quantization")), pipeline)


def _quantization(d: Any):
    """A refit record's INT8/FP8 decisions, checked: the types INT8/FP8 (or null), ranges finite
    and positive."""
    if d is None:
        return None
    eight = {"INT8": DataType.INT8, "FP8": DataType.FP8}

    def ranges(m: Any) -> dict[str, float]:
        out = {str(k): float(v) for k, v in dict(m).items()}
        if any(not (math.isfinite(v) and v > 0) for v in out.values()):
            raise ValueError("refit ranges must be finite and positive")
        return out

    types = {str(n): None if t is None else eight[t] for n, t in dict(d["types"]).items()}
    return QuantizationRecord(eight[d["to"]], types, ranges(d["amax"]), ranges(d["fp8_amax"]))


@dataclasses.dataclass
class QuantizationRecord:
    """A calibrated build's decisions as a plan keeps them (the fields of
    ``optimize.passes.quantization.Quantization``, which the builder applies at refit)."""

    to: DataType
    types: dict[str, DataType | None]
    amax: dict[str, float]
    fp8_amax: dict[str, float]


def _bad_dim(v: Any):
    raise ValueError(f"an input dim must be an int or a name, got {v!r}")


# -- where a network came from ------------------------------------------------------------
