"""Refit's folding, at build time and at refit time: what a REFIT build keeps
(:func:`keep_for_refit`), and the new engine constants and layer params for new weights
(:func:`refitted`): the ONNX model parsed again with them, and the optimizer run again, as the
build ran it.  :mod:`kilnrt.engine.refit` holds the data (the kept source, its plan record,
the weight checks) and applies the result to the engine; it reaches :func:`refitted` through
the registration at the end of this module, so that the runtime never imports the
optimizer or the ONNX importer.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import weakref
from typing import Any

import numpy as np

from kilnrt.engine import refit as engine_refit
from kilnrt.engine.refit import RefitSource, _all_constants, _is_float
from kilnrt.errors import BuildError, ErrorCode
from kilnrt.network.graph import Network
from kilnrt.network.layers import ConstantParams, LayerKind, shape_input_positions


def _weight_constants(net: Network) -> dict[str, np.ndarray]:
    """Float CONSTANT layers that some layer reads as data (not only as a shape input)."""
    data_reads: set[str] = set()
    for layer in net.layers:
        shape_inputs = shape_input_positions(layer)
        for i, t in enumerate(layer.inputs):
            if t is not None and i not in shape_inputs:
                data_reads.add(t.name)
    return {l.outputs[0].name: l.params.weights for l in net.layers
            if l.kind == LayerKind.CONSTANT and _is_float(l.params.weights) and l.outputs[0].name in data_reads}



def keep_for_refit(network: Network, prepared: Network, level: int, onnx_model: Any = None) -> RefitSource:
    """The refit source of a build: ``prepared`` is the network the optimizer is about to run
    on; ``onnx_model`` the ModelProto ``network`` was parsed from, if known."""
    net = prepared.clone() if prepared is network else prepared
    source = _onnx_source(net, level, onnx_model) if onnx_model is not None else None
    if source is None:
        source = RefitSource(net, level, _weight_constants(net))
    source.pipeline = pipeline_fingerprint()
    return source


def pipeline_fingerprint() -> str:
    """The optimizer's passes and their levels, hashed: a refit folds the new weights with
    the passes of the kilnrt that runs it, which may fold differently from those that built
    the plan."""
    from kilnrt.optimize import PIPELINE

    text = ";".join(f"{name}@{level}" for name, _, level in PIPELINE)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
        from kilnrt.optimize.passes.quantization import quantize_calibrated

        # the new weights quantized with the build's ranges and types
        net = optimize(quantize_calibrated(net, q.amax, to=q.to, types=q.types, fp8_amax=q.fp8_amax), 0)
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
    try:
        return _refitted(engine, new)
    except BuildError as exc:
        if engine.refit_source.pipeline == pipeline_fingerprint():
            raise
        raise BuildError(ErrorCode.INVALID_ARGUMENT,
                         f"{exc.message}. This plan was built by a kilnrt whose "
                         "optimizer had other passes than this one's, which fold the weights differently: rebuild "
                         "the engine from the model with this kilnrt, then refit it") from None


def _refitted(engine, new: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
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



_ONNX_SOURCES: "weakref.WeakKeyDictionary[Network, Any]" = weakref.WeakKeyDictionary()


def remember_onnx(network: Network, model: Any) -> None:
    """Record the ONNX ModelProto ``network`` was parsed from, so that a REFIT build of it
    can redo the importer's folds (``trt.OnnxParser`` calls this)."""
    _ONNX_SOURCES[network] = model


def onnx_model_of(network: Network) -> Any:
    return _ONNX_SOURCES.get(network)


engine_refit.set_refolder(refitted)
