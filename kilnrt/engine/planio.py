"""Engine <-> plan bytes (the container format lives in :mod:`kilnrt.engine.plan`)."""
from __future__ import annotations

import torch

from kilnrt.builder.concat import check_tactics, concat_plans
from kilnrt.builder.memory import MemoryPlan
from kilnrt.engine import refit
from kilnrt.engine.engine import TENSOR_FORMATS, Engine, EngineLayer, IOTensor
from kilnrt.engine.plan import FORMAT_VERSION, pack, unpack
from kilnrt.engine.plan_schema import check_header
from kilnrt.engine.serialize import decode_params, encode_params
from kilnrt.errors import ErrorCode, PlanError
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind


def engine_to_bytes(engine: Engine) -> bytes:
    weights: dict = {}
    kernels = dict(engine.kernels)
    header = _header(engine, weights, "")
    if engine.profile_engines is not None:   # one engine per optimization profile: profile i's under "profile<i>/"
        subs = []
        for i, sub in enumerate(engine.profile_engines[1:], start=1):
            subs.append(_header(sub, weights, f"profile{i}/"))
            kernels.update(sub.kernels)
        header["profile_engines"] = subs
    return pack(header, weights, kernels)


def _header(engine: Engine, weights: dict, prefix: str) -> dict:
    """The header of one engine; its constants and array params go into ``weights`` under ``prefix``."""
    for name, array in engine.constants.items():
        weights[prefix + name] = array
    counter = [0]

    def put(array):
        key = f"{prefix}param/{counter[0]}"
        counter[0] += 1
        weights[key] = array
        return key

    layers = []
    for l in engine.layers:
        layers.append({
            "name": l.name, "kind": l.kind.value, "params": encode_params(l.params, put),
            "inputs": l.inputs, "outputs": l.outputs, "origin": list(l.origin), "tactic": l.tactic,
            "precision": l.precision.name if l.precision else None, "output_dtypes": l.output_dtypes,
            "output_shapes": [None if s is None else list(s) for s in l.output_shapes],
            "input_dtypes": l.input_dtypes,
            "input_shapes": [None if s is None else list(s) for s in l.input_shapes],
            "timing_ms": l.timing_ms, "candidates": l.candidates, "output_formats": l.output_formats,
            "writes_into": None if l.writes_into is None else list(l.writes_into),
            "bucket_tactics": {str(b): t for b, t in sorted(l.bucket_tactics.items())},
        })
    header = {
        "format_version": FORMAT_VERSION, "kilnrt_version": engine.version, "name": engine.name,
        "device": engine.device, "device_name": engine.device_name, "portable": engine.portable,
        "io": [t.to_json() for t in engine.io], "layers": layers, "constants": sorted(engine.constants),
        "profiles": [{k: [list(s) for s in v] for k, v in p.items()} for p in engine.profiles],
        "memory": engine.memory.to_json() if engine.memory is not None else None,
        "build_info": engine.build_info, "tensors": engine.tensors,
        "bucket_shapes": None if engine.bucket_shapes is None else
        [{k: list(v) for k, v in p.items()} for p in engine.bucket_shapes],
    }
    if engine.refit_source is not None:
        header["refit"] = refit.to_record(engine.refit_source, weights, prefix)
    return header


def current_device_name(device: str) -> str | None:
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return None


def _formats(value) -> list[str | None]:
    """A layer's ``output_formats`` from a plan header (absent in older plans)."""
    formats = list(value or [])
    bad = [f for f in formats if f is not None and f not in TENSOR_FORMATS]
    if bad:
        raise ValueError(f"unknown tensor format(s) {bad!r}; known: {', '.join(TENSOR_FORMATS)}")
    return formats


def _writes_into(value) -> tuple[str, int, int] | None:
    """A layer's ``writes_into`` from a plan header: [concatenation output, axis, start] (absent
    in older plans)."""
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 3 or not isinstance(value[0], str)
            or any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in value[1:])):
        raise ValueError(f"writes_into must be [tensor name, axis, start] (non-negative ints), got {value!r}")
    return value[0], value[1], value[2]


def _bucket_shapes(value, io: list[IOTensor]) -> list[dict[str, tuple]] | None:
    """An engine's ``bucket_shapes`` from a plan header: a list of {input: shape}, each naming
    every input with a shape of its rank (absent in older plans)."""
    if value is None:
        return None
    inputs = {t.name: t for t in io if t.mode == "input"}
    if not isinstance(value, list) or len(value) < 2:
        raise ValueError(f"bucket_shapes must be a list of at least two input-shape tables, got {value!r}")
    out = []
    for p in value:
        if not isinstance(p, dict) or set(p) != set(inputs):
            raise ValueError(f"each bucket point must give a shape for every input ({', '.join(inputs)}), got {p!r}")
        for name, shape in p.items():
            if (not isinstance(shape, list) or len(shape) != len(inputs[name].shape)
                    or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape)):
                raise ValueError(f"bucket point shape of {name!r} must be {len(inputs[name].shape)} "
                                 f"non-negative ints, got {shape!r}")
        out.append({k: tuple(v) for k, v in p.items()})
    return out


def _bucket_tactics(value, buckets: int) -> dict[int, str]:
    """A layer's ``bucket_tactics`` from a plan header: {"<bucket>": tactic name}, each bucket in
    [1, buckets) (absent in older plans)."""
    if not value:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"bucket_tactics must be an object, got {value!r}")
    out = {}
    for k, name in value.items():
        if not (isinstance(k, str) and k.isdigit() and 1 <= int(k) < buckets) or not isinstance(name, str):
            raise ValueError(f"bucket_tactics entry {k!r}: {name!r} must name a bucket in [1, {buckets}) "
                             "and a tactic")
        out[int(k)] = name
    return out


def engine_from_bytes(data: bytes, *, check_device: bool = True) -> Engine:
    from kilnrt import __version__

    header, weights, kernels = unpack(data)
    if not isinstance(header, dict):
        raise PlanError(ErrorCode.PLAN_CORRUPT, f"the plan's header is a JSON {type(header).__name__}, not an object")
    if header.get("kilnrt_version") != __version__:
        raise PlanError(ErrorCode.PLAN_VERSION,
                        f"the plan was built by kilnrt {header.get('kilnrt_version')}; this is kilnrt {__version__}. "
                        "Plans are specific to the kilnrt version that built them: rebuild it")
    device = header.get("device")
    if check_device and device not in ("cpu",):
        here = current_device_name(device)
        if here is None:
            raise PlanError(ErrorCode.PLAN_DEVICE,
                            f"the plan was built for {device} ({header.get('device_name')}), "
                            f"but this machine has no {device} device; build a cpu plan here instead")
        if here != header.get("device_name") and not header.get("portable"):
            raise PlanError(ErrorCode.PLAN_DEVICE,
                            f"the plan was built for {header.get('device_name')}, but this GPU is {here}; "
                            "plans are specific to the GPU model: rebuild it on this GPU (or build with --portable)")
    check_header(header)
    for i, sub in enumerate(header.get("profile_engines") or [], start=1):
        check_header(sub, f"profile_engines[{i - 1}].")
    try:
        engine = _engine_from_header(header, weights, kernels, "", device)
        subs = header.get("profile_engines")
        if subs is not None:
            if not isinstance(subs, list) or len(subs) + 1 != len(engine.profiles):
                raise ValueError(f"the plan has {len(engine.profiles)} profiles but "
                                 f"{len(subs) + 1 if isinstance(subs, list) else 'no list of'} profile engines")
            engine.profile_engines = [engine] + [_engine_from_header(h, weights, kernels, f"profile{i}/", device)
                                                 for i, h in enumerate(subs, start=1)]
    except PlanError:
        raise
    except RecursionError:
        raise PlanError(ErrorCode.PLAN_CORRUPT, "the plan's header is nested too deeply to be a kilnrt plan") from None
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise PlanError(ErrorCode.PLAN_CORRUPT, f"the plan's header is malformed: {type(exc).__name__}: {exc}") from None
    for one in engine.profile_engines or [engine]:
        _check_engine_tactics(one, device)
    return engine


def _engine_from_header(header: dict, weights: dict, kernels: dict, prefix: str, device: str) -> Engine:
    if not isinstance(header, dict):
        raise ValueError(f"a profile engine's header is a {type(header).__name__}, not an object")
    io = [IOTensor.from_json(t) for t in header["io"]]
    buckets = _bucket_shapes(header.get("bucket_shapes"), io)
    layers = []
    for d in header["layers"]:
        kind = LayerKind(d["kind"])
        layers.append(EngineLayer(
            name=d["name"], kind=kind, params=decode_params(kind, d["params"], weights),
            inputs=list(d["inputs"]), outputs=list(d["outputs"]), origin=tuple(d["origin"]),
            tactic=d["tactic"], precision=DataType[d["precision"]] if d.get("precision") else None,
            output_dtypes=list(d.get("output_dtypes") or []),
            output_shapes=[None if s is None else tuple(s) for s in d.get("output_shapes") or []],
            input_dtypes=list(d.get("input_dtypes") or []),
            input_shapes=[None if s is None else tuple(s) for s in d.get("input_shapes") or []],
            timing_ms=d.get("timing_ms"), candidates=dict(d.get("candidates") or {}),
            output_formats=_formats(d.get("output_formats")), writes_into=_writes_into(d.get("writes_into")),
            bucket_tactics=_bucket_tactics(d.get("bucket_tactics"), len(buckets or ()))))
    concat_plans(layers)   # every writes_into names a slice of a later concatenation (ValueError if not)
    constants = {name: weights[prefix + name] for name in header["constants"]}
    engine = Engine(
        name=header["name"], device=device, device_name=header["device_name"],
        io=io, layers=layers, constants=constants, bucket_shapes=buckets,
        profiles=[{k: tuple(tuple(s) for s in v) for k, v in p.items()} for p in header["profiles"]],
        memory=MemoryPlan.from_json(header["memory"]) if header.get("memory") else None,
        build_info=header.get("build_info") or {}, tensors=header.get("tensors") or {},
        portable=bool(header.get("portable")), kernels=kernels, version=header["kilnrt_version"])
    engine.refit_source = refit.from_record(header.get("refit"), weights)
    return engine


def _check_engine_tactics(engine: Engine, device: str) -> None:
    from kilnrt.kernels.registry import get_tactic

    for layer in engine.layers:
        if not isinstance(layer.tactic, str):
            raise PlanError(ErrorCode.PLAN_CORRUPT, f"layer {layer.name!r} names tactic {layer.tactic!r}, not a string")
        for name in (layer.tactic, *layer.bucket_tactics.values()):
            tactic = get_tactic(name)  # unknown tactic names are refused at load, not at first run
            if tactic.kind != layer.kind or tactic.device != device:
                raise PlanError(ErrorCode.PLAN_CORRUPT,
                                f"layer {layer.name!r} ({layer.kind.value}, {device}) names tactic {name!r}, "
                                f"which runs {tactic.kind.value} layers on {tactic.device}")
        if layer.writes_into is not None and layer.bucket_tactics:
            raise PlanError(ErrorCode.PLAN_CORRUPT, f"layer {layer.name!r} writes into a concatenation, "
                                                    "so it cannot have bucket tactics")
    try:
        check_tactics(engine.layers, device)
    except ValueError as exc:
        raise PlanError(ErrorCode.PLAN_CORRUPT, f"the plan's header is malformed: {exc}") from None
