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
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any, Mapping

import numpy as np

from kilnrt.errors import BuildError, DTypeError, ErrorCode, KilnError, PlanError, ShapeError
from kilnrt.network.definition import Weights
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.layers import SHAPE_INPUTS, ConstantParams, LayerKind


@dataclasses.dataclass
class RefitSource:
    """What a REFIT engine keeps to fold new weights the way its build folded the old ones."""

    network: Network                        # the optimizer's input network, with the build's weights
    level: int                              # builder optimization level
    values: dict[str, np.ndarray]           # refittable weight name -> its current value
    low_precision: DataType | None = None   # FP16/BF16 lowering the build applied, if any
    onnx: bytes | None = None               # the ONNX model without its refittable initializers
    quantization: Any = None                # a calibrated INT8/FP8 build's decisions (optimize.passes.quantization)

    @property
    def names(self) -> list[str]:
        return sorted(self.values)


# -- at build time ------------------------------------------------------------------------
def _is_float(array: np.ndarray) -> bool:
    try:
        return DataType.from_numpy(array.dtype).is_floating
    except TypeError:
        return False


def _weight_constants(net: Network) -> dict[str, np.ndarray]:
    """Float CONSTANT layers that some layer reads as data (not only as a shape input)."""
    data_reads: set[str] = set()
    for layer in net.layers:
        shape_inputs = SHAPE_INPUTS.get(layer.kind, frozenset())
        for i, t in enumerate(layer.inputs):
            if t is not None and i not in shape_inputs:
                data_reads.add(t.name)
    return {l.outputs[0].name: l.params.weights for l in net.layers
            if l.kind == LayerKind.CONSTANT and _is_float(l.params.weights) and l.outputs[0].name in data_reads}


def _all_constants(net: Network) -> dict[str, np.ndarray]:
    return {l.outputs[0].name: l.params.weights for l in net.layers if l.kind == LayerKind.CONSTANT}


def keep_for_refit(network: Network, prepared: Network, level: int, onnx_model: Any = None) -> RefitSource:
    """The refit source of a build: ``prepared`` is the network the optimizer is about to run
    on; ``onnx_model`` the ModelProto ``network`` was parsed from, if known."""
    net = prepared.clone() if prepared is network else prepared
    if onnx_model is not None:
        source = _onnx_source(net, level, onnx_model)
        if source is not None:
            return source
    return RefitSource(net, level, _weight_constants(net))


def _onnx_source(net: Network, level: int, model) -> RefitSource | None:
    """A source that re-parses ``model``: its float initializers are the refittable weights.
    None where the model cannot be kept (initializers in external files)."""
    import onnx
    from onnx import numpy_helper

    constants = _all_constants(net)
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    values, keep = {}, []
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            return None
        array = numpy_helper.to_array(init)
        if init.name in constants and _is_float(array):
            same = constants[init.name]
            values[init.name] = same if same.dtype == array.dtype and same.shape == array.shape \
                and np.array_equal(same, array) else array
        else:
            keep.append(init)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    return RefitSource(net, level, values, onnx=proto.SerializeToString())


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


def _substitutions(source: RefitSource, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Constant name -> new value, for the constants of ``source.network`` the weights change."""
    if source.onnx is None:
        return values
    import onnx
    from onnx import numpy_helper

    from kilnrt.onnx.parser import parse_proto

    proto = onnx.ModelProto()
    proto.ParseFromString(source.onnx)
    proto.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in values.items())
    parsed = parse_proto(proto, name=source.network.name)
    return {n: a for n, a in _all_constants(parsed).items() if _is_float(a)}


def refold(source: RefitSource, new: dict[str, np.ndarray]) -> Network:
    """The optimized network for the current weights with ``new`` in place of theirs."""
    from kilnrt.optimize import optimize

    values = dict(source.values)
    values.update(new)
    net = source.network.clone()
    current = _all_constants(net)
    for name, array in _substitutions(source, values).items():
        old = current.get(name)
        if old is None or old is array or (old.dtype == array.dtype and old.shape == array.shape
                                           and np.array_equal(old, array, equal_nan=True)):
            continue
        if old.dtype != array.dtype or old.shape != array.shape:
            raise BuildError(ErrorCode.INVALID_ARGUMENT,
                             f"refit: constant {name!r} folded from the new weights is {array.dtype}"
                             f"{list(array.shape)}, the engine's is {old.dtype}{list(old.shape)}; rebuild the engine")
        net.tensors[name].producer.params = ConstantParams(array)
    net = optimize(net, source.level)
    q = source.quantization
    if q is not None and any(t is not None for t in q.types.values()):
        net = optimize(q.apply(net), 0)   # the new weights quantized with the build's ranges and types
    if source.low_precision is not None:
        from kilnrt.optimize.passes.precision import lower_precision

        net = optimize(lower_precision(net, source.low_precision), 0)
    from kilnrt.optimize.passes.quantization import quantize_once

    net = quantize_once(net)   # as the build did after lowering (nothing without 8-bit layers)
    net.infer()
    return net


def _skeleton(value: Any) -> Any:
    """A params value with arrays reduced to (shape, dtype) and floats to a marker: what may
    not change when weights do."""
    if isinstance(value, np.ndarray):
        return ("array", value.shape, str(value.dtype))
    if isinstance(value, float) or isinstance(value, np.floating):
        return "float" if math.isfinite(value) else repr(value)
    if isinstance(value, (tuple, list)):
        return tuple(_skeleton(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__,) + tuple((f.name, _skeleton(getattr(value, f.name)))
                                               for f in dataclasses.fields(value))
    return value


def refitted(engine, new: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(new constants, layer name -> new params) of one engine (one profile), or BuildError
    when the refolded network no longer has the engine's structure."""
    net = refold(engine.refit_source, new)
    constants = _all_constants(net)
    if set(constants) != set(engine.constants):
        gone = sorted(set(engine.constants) - set(constants))[:5]
        extra = sorted(set(constants) - set(engine.constants))[:5]
        raise BuildError(ErrorCode.INVALID_ARGUMENT,
                         "refit: with the new weights the optimizer folds the network differently (constants "
                         f"missing: {gone or 'none'}, new: {extra or 'none'}): the build used the old values, e.g. it merged "
                         "weights that were equal (two all-zero biases) or removed a multiply by ones; rebuild the "
                         "engine with the new weights")
    for name, array in constants.items():
        old = engine.constants[name]
        if old.shape != array.shape or old.dtype != array.dtype:
            raise BuildError(ErrorCode.INVALID_ARGUMENT,
                             f"refit: engine constant {name!r} would become {array.dtype}{list(array.shape)}, it is "
                             f"{old.dtype}{list(old.shape)}; rebuild the engine with the new weights")
    layers = {l.name: l for l in net.layers if l.kind != LayerKind.CONSTANT}
    params = {}
    for layer in engine.layers:
        now = layers.get(layer.name)
        if now is None or now.kind != layer.kind or _skeleton(now.params) != _skeleton(layer.params):
            raise BuildError(ErrorCode.INVALID_ARGUMENT,
                             f"refit: layer {layer.name!r} ({layer.kind.value}) comes out differently with the new "
                             "weights (the optimizer made another choice for these values); rebuild the engine")
        params[layer.name] = now.params   # the same but for floats and arrays folded from weights
    return constants, params


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
    results = [refitted(e, new) for e in engines]
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
    return RefitSource(net, level, values, low, onnx_bytes, _quantization(record.get("quantization")))


def _quantization(d: Any):
    """A refit record's INT8/FP8 decisions, checked: the types INT8/FP8 (or null), ranges finite
    and positive."""
    if d is None:
        return None
    from kilnrt.optimize.passes.quantization import Quantization

    eight = {"INT8": DataType.INT8, "FP8": DataType.FP8}

    def ranges(m: Any) -> dict[str, float]:
        out = {str(k): float(v) for k, v in dict(m).items()}
        if any(not (math.isfinite(v) and v > 0) for v in out.values()):
            raise ValueError("refit ranges must be finite and positive")
        return out

    types = {str(n): None if t is None else eight[t] for n, t in dict(d["types"]).items()}
    return Quantization(eight[d["to"]], types, ranges(d["amax"]), ranges(d["fp8_amax"]))


def _bad_dim(v: Any):
    raise ValueError(f"an input dim must be an int or a name, got {v!r}")


# -- where a network came from ------------------------------------------------------------
_ONNX_SOURCES: "weakref.WeakKeyDictionary[Network, Any]" = weakref.WeakKeyDictionary()


def remember_onnx(network: Network, model: Any) -> None:
    """Record the ONNX ModelProto ``network`` was parsed from, so that a REFIT build of it
    can redo the importer's folds (``trt.OnnxParser`` calls this)."""
    _ONNX_SOURCES[network] = model


def onnx_model_of(network: Network) -> Any:
    return _ONNX_SOURCES.get(network)
