"""Engine <-> plan bytes (the container format lives in :mod:`kilnrt.engine.plan`; what a plan
must satisfy, in :mod:`kilnrt.engine.plan_schema`)."""
from __future__ import annotations

import torch

from kilnrt.engine.memory_plan import MemoryPlan
from kilnrt.engine import refit
from kilnrt.engine.engine import Engine, EngineLayer, IOTensor
from kilnrt.engine.plan import FORMAT_VERSION, pack, unpack
from kilnrt.engine.plan_schema import check_engine, check_header
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


def _bucket_shapes(value) -> list[dict[str, tuple]] | None:
    return None if value is None else [{k: tuple(v) for k, v in p.items()} for p in value]


def load_plan(data: bytes, *, key: bytes | str | None = None, check_device: bool = True,
              memory_budget: int | str | None = None) -> Engine:
    """An engine from plan bytes: with ``key``, only a plan signed with it; refused unless its
    memory fits in ``memory_budget`` bytes (see :mod:`kilnrt.engine.plan_budget`)."""
    from kilnrt.engine.plan import strip_signature, verify

    data = verify(data, key) if key is not None else strip_signature(bytes(data))
    return engine_from_bytes(data, check_device=check_device, memory_budget=memory_budget)


def engine_from_bytes(data: bytes, *, check_device: bool = True, memory_budget: int | str | None = None) -> Engine:
    """Unpack, validate (:mod:`kilnrt.engine.plan_schema`: the header, then the decoded
    engine), decode."""
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
    try:
        engine = _engine_from_header(header, weights, kernels, "", device)
        subs = header.get("profile_engines")
        if subs is not None:
            engine.profile_engines = [engine] + [_engine_from_header(h, weights, kernels, f"profile{i}/", device)
                                                 for i, h in enumerate(subs, start=1)]
    except PlanError:
        raise
    except RecursionError:
        raise PlanError(ErrorCode.PLAN_CORRUPT, "the plan's header is nested too deeply to be a kilnrt plan") from None
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise PlanError(ErrorCode.PLAN_CORRUPT, f"the plan's header is malformed: {type(exc).__name__}: {exc}") from None
    check_engine(engine, device, memory_budget)
    return engine


def _engine_from_header(header: dict, weights: dict, kernels: dict, prefix: str, device: str) -> Engine:
    io = [IOTensor.from_json(t) for t in header["io"]]
    buckets = _bucket_shapes(header.get("bucket_shapes"))
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
            output_formats=list(d.get("output_formats") or []),
            writes_into=None if d.get("writes_into") is None else tuple(d["writes_into"]),
            bucket_tactics={int(b): t for b, t in (d.get("bucket_tactics") or {}).items()}))
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
