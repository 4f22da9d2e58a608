"""The plan header's schema, checked before anything is built from it.

A header that passes is consistent: every field has its type and range, every tensor a layer
reads is an engine input, a constant or an earlier layer's output, every output is made by a
layer, the I/O table and profiles agree, the memory plan's numbers are sane.  A header that
does not pass is refused with a :class:`~kilnrt.errors.PlanError` naming the field.  Layer
params are checked against their dataclass annotations when decoded
(:mod:`kilnrt.engine.serialize`); dim expression trees when evaluated
(:mod:`kilnrt.network.symbolic`).

:func:`check_header` checks the JSON before anything is decoded; :func:`check_engine` checks
the decoded engine: every tactic exists, runs its layer's kind on the plan's device and can do
what the plan says (write into a concatenation), and the engine's memory (weights plus the
activations its layers make at the profiles' largest shapes) fits in the memory budget
(:mod:`kilnrt.engine.plan_budget`).  These are the only places a plan is validated.
"""
from __future__ import annotations

import math

from typing import Any

from kilnrt.errors import ErrorCode, PlanError
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import QUANTIZED_KINDS, LayerKind

IO_MODES = ("input", "output")
MAX_DIM = 1 << 40


class _Bad(Exception):
    pass


def _fail(where: str, message: str):
    raise _Bad(f"{where}: {message}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str(v, where: str) -> str:
    if not isinstance(v, str):
        _fail(where, f"must be a string, got {type(v).__name__}")
    return v


def _list(v, where: str) -> list:
    if not isinstance(v, list):
        _fail(where, f"must be a list, got {type(v).__name__}")
    return v


def _dict(v, where: str) -> dict:
    if not isinstance(v, dict):
        _fail(where, f"must be an object, got {type(v).__name__}")
    return v


def _dims(v, where: str, low: int = -1) -> list:
    for d in _list(v, where):
        if not _is_int(d) or not low <= d < MAX_DIM:
            _fail(where, f"dims must be integers in [{low}, 2^40), got {d!r}")
    return v


def _dtype(v, where: str, optional: bool = False) -> None:
    if v is None and optional:
        return
    if not isinstance(v, str) or v not in DataType.__members__:
        _fail(where, f"{v!r} is not a data type")


def check_header(header: Any, prefix: str = "") -> None:
    """Raise PlanError unless ``header`` (one engine's, or the plan's with its profile engines
    when ``prefix`` is empty) is well formed and consistent."""
    try:
        _check(header, prefix)
        if not prefix:
            subs = header.get("profile_engines")
            if subs is not None:
                _list(subs, "profile_engines")
                if len(subs) + 1 != len(header["profiles"]):
                    _fail("profile_engines", f"the plan has {len(header['profiles'])} profiles but "
                                             f"{len(subs) + 1} profile engines")
                for i, sub in enumerate(subs):
                    _check(sub, f"profile_engines[{i}].")
    except _Bad as exc:
        raise PlanError(ErrorCode.PLAN_CORRUPT, f"the plan's header is malformed: {exc}") from None
    except RecursionError:
        raise PlanError(ErrorCode.PLAN_CORRUPT, "the plan's header is nested too deeply to be a kilnrt plan") from None


def _check(h: Any, prefix: str) -> None:
    _dict(h, prefix + "header")
    for key in ("name", "device", "device_name"):
        _str(h.get(key), prefix + key)
    if h["device"] not in ("cpu", "cuda"):
        _fail(prefix + "device", f"{h['device']!r} is not cpu or cuda")
    io = _list(h.get("io"), prefix + "io")
    names: dict[str, str] = {}
    for i, t in enumerate(io):
        w = f"{prefix}io[{i}]"
        _dict(t, w)
        name = _str(t.get("name"), w + ".name")
        if name in names:
            _fail(w, f"the name {name!r} appears twice")
        if t.get("mode") not in IO_MODES:
            _fail(w + ".mode", f"{t.get('mode')!r} is not input or output")
        names[name] = t["mode"]
        _dtype(t.get("dtype"), w + ".dtype")
        shape = _dims(t.get("shape"), w + ".shape")
        symbolic = _list(t.get("symbolic", []), w + ".symbolic")
        if symbolic and len(symbolic) != len(shape):
            _fail(w + ".symbolic", f"has {len(symbolic)} dims, the shape {len(shape)}")
        for d in symbolic:
            if not (isinstance(d, str) or (_is_int(d) and -1 <= d < MAX_DIM)):
                _fail(w + ".symbolic", f"{d!r} is neither a dim name nor a size")
    inputs = {n for n, m in names.items() if m == "input"}
    outputs = [n for n, m in names.items() if m == "output"]
    if not outputs:
        _fail(prefix + "io", "the engine has no output")
    constants = set()
    for k, c in enumerate(_list(h.get("constants"), prefix + "constants")):
        constants.add(_str(c, f"{prefix}constants[{k}]"))
    defined = set(inputs) | constants
    buckets = _bucket_shapes(h.get("bucket_shapes"), {t["name"]: t for t in io if t["mode"] == "input"},
                             prefix + "bucket_shapes")
    for i, layer in enumerate(_list(h.get("layers"), prefix + "layers")):
        _layer(layer, f"{prefix}layers[{i}]", defined, buckets)
    for n in outputs:
        if n not in defined:
            _fail(prefix + "io", f"output {n!r} is made by no layer")
    profiles = _list(h.get("profiles"), prefix + "profiles")
    shapes = {t["name"]: t["shape"] for t in io if t["mode"] == "input"}
    for p, prof in enumerate(profiles):
        for name, triple in _dict(prof, f"{prefix}profiles[{p}]").items():
            w = f"{prefix}profiles[{p}][{name!r}]"
            if name not in shapes:
                _fail(w, "names no engine input")
            if len(_list(triple, w)) != 3:
                _fail(w, "must be [min, opt, max]")
            lo, opt, hi = (_dims(s, w, 0) for s in triple)
            if not len(lo) == len(opt) == len(hi) == len(shapes[name]):
                _fail(w, f"ranks differ from the input's rank {len(shapes[name])}")
            if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
                _fail(w, "needs min <= opt <= max in every dim")
    for name in shapes:
        if any(d < 0 for d in shapes[name]) and profiles and not all(name in p for p in profiles):
            _fail(prefix + "profiles", f"dynamic input {name!r} has no range in every profile")
    if h.get("memory") is not None:
        _memory(h["memory"], prefix + "memory")
    _build_info(h.get("build_info", {}), prefix + "build_info")
    tensors = h.get("tensors", {})
    for name, info in _dict(tensors, prefix + "tensors").items():
        w = f"{prefix}tensors[{name!r}]"
        _dict(info, w)
        _dtype(info.get("dtype"), w + ".dtype", optional=True)
        for key in ("opt_shape",):
            if info.get(key) is not None:
                _dims(info[key], f"{w}.{key}", 0)
        if info.get("dims") is not None:
            _list(info["dims"], w + ".dims")
        if info.get("shape") is not None:
            _list(info["shape"], w + ".shape")


def _layer(layer: Any, w: str, defined: set[str], buckets: int) -> None:
    _dict(layer, w)
    _str(layer.get("name"), w + ".name")
    kind = layer.get("kind")
    if not isinstance(kind, str) or kind not in {k.value for k in LayerKind}:
        _fail(w + ".kind", f"{kind!r} is not a layer kind")
    _str(layer.get("tactic"), w + ".tactic")
    _dict(layer.get("params"), w + ".params")
    for k, n in enumerate(_list(layer.get("inputs"), w + ".inputs")):
        if n is None:
            continue
        _str(n, f"{w}.inputs[{k}]")
        if n not in defined:
            _fail(f"{w}.inputs[{k}]", f"{n!r} is not an engine input, a constant, or an earlier layer's output")
    outs = _list(layer.get("outputs"), w + ".outputs")
    if not outs:
        _fail(w + ".outputs", "a layer makes at least one tensor")
    for k, n in enumerate(outs):
        _str(n, f"{w}.outputs[{k}]")
        if n in defined:
            _fail(f"{w}.outputs[{k}]", f"{n!r} is defined twice")
        defined.add(n)
    for k, o in enumerate(_list(layer.get("origin", []), w + ".origin")):
        _str(o, f"{w}.origin[{k}]")
    if layer.get("precision") is not None:
        _dtype(layer["precision"], w + ".precision")
    for key in ("output_dtypes", "input_dtypes"):
        for k, d in enumerate(_list(layer.get(key) or [], f"{w}.{key}")):
            _dtype(d, f"{w}.{key}[{k}]", optional=True)
    for key in ("output_shapes", "input_shapes"):
        for k, s in enumerate(_list(layer.get(key) or [], f"{w}.{key}")):
            if s is not None:
                _dims(s, f"{w}.{key}[{k}]")
    if layer.get("timing_ms") is not None and not isinstance(layer["timing_ms"], (int, float)):
        _fail(w + ".timing_ms", "must be a number")
    for name, ms in _dict(layer.get("candidates") or {}, w + ".candidates").items():
        if not isinstance(ms, (int, float)) or isinstance(ms, bool):
            _fail(f"{w}.candidates[{name!r}]", "must be a number")
    from kilnrt.engine.engine import TENSOR_FORMATS

    for k, f in enumerate(_list(layer.get("output_formats") or [], w + ".output_formats")):
        if f is not None and f not in TENSOR_FORMATS:
            _fail(f"{w}.output_formats[{k}]", f"{f!r} is not a tensor format; known: {', '.join(TENSOR_FORMATS)}")
    into = layer.get("writes_into")
    if into is not None and (not isinstance(into, list) or len(into) != 3 or not isinstance(into[0], str)
                             or not all(_is_int(v) and v >= 0 for v in into[1:])):
        _fail(w + ".writes_into", f"must be [tensor name, axis, start] (non-negative integers), got {into!r}")
    tactics = _dict(layer.get("bucket_tactics") or {}, w + ".bucket_tactics")
    for k, name in tactics.items():
        if not (k.isdigit() and 1 <= int(k) < buckets) or not isinstance(name, str):
            _fail(f"{w}.bucket_tactics[{k!r}]", f"{name!r} must name a bucket in [1, {buckets}) and a tactic")
    if into is not None and tactics:
        _fail(w, "a layer that writes into a concatenation cannot have bucket tactics")


def _bucket_shapes(value: Any, inputs: dict[str, dict], w: str) -> int:
    """The number of tactic buckets (0 without): ``bucket_shapes`` is a list of at least two
    {input: shape}, each naming every input with a shape of its rank."""
    if value is None:
        return 0
    if len(_list(value, w)) < 2:
        _fail(w, f"must list at least two input-shape tables, got {len(value)}")
    for k, point in enumerate(value):
        if set(_dict(point, f"{w}[{k}]")) != set(inputs):
            _fail(f"{w}[{k}]", f"must give a shape for every input ({', '.join(inputs)})")
        for name, shape in point.items():
            rank = len(inputs[name]["shape"])
            if (not isinstance(shape, list) or len(shape) != rank
                    or not all(_is_int(d) and 0 <= d < MAX_DIM for d in shape)):
                _fail(f"{w}[{k}][{name!r}]", f"must be {rank} non-negative ints, got {shape!r}")
    return len(value)


def _memory(m: Any, w: str) -> None:
    _dict(m, w)
    for key in ("arena_bytes", "naive_bytes"):
        if not _is_int(m.get(key)) or m[key] < 0:
            _fail(f"{w}.{key}", "must be a non-negative integer")
    for key in ("offsets", "sizes"):
        for name, v in _dict(m.get(key), f"{w}.{key}").items():
            if not _is_int(v) or v < 0:
                _fail(f"{w}.{key}[{name!r}]", "must be a non-negative integer")
    for name, v in _dict(m.get("lifetimes"), w + ".lifetimes").items():
        if len(_list(v, f"{w}.lifetimes[{name!r}]")) != 2 or not all(_is_int(x) for x in v):
            _fail(f"{w}.lifetimes[{name!r}]", "must be [first step, last step]")
    _list(m.get("unknown"), w + ".unknown")


def _build_info(b: Any, w: str) -> None:
    """The build record the runtime and the inspector read."""
    _dict(b, w)
    for k, f in enumerate(_list(b.get("flags", []), w + ".flags")):
        _str(f, f"{w}.flags[{k}]")
    for key in ("seconds",):
        if key in b and (not isinstance(b[key], (int, float)) or isinstance(b[key], bool)):
            _fail(f"{w}.{key}", "must be a number")
    for key in ("layers_in", "layers_out", "constants", "optimization_level"):
        if key in b and not _is_int(b[key]):
            _fail(f"{w}.{key}", "must be an integer")
    for k, p in enumerate(_list(b.get("passes", []), w + ".passes")):
        _dict(p, f"{w}.passes[{k}]")
        _str(p.get("pass"), f"{w}.passes[{k}].pass")
        for key in ("layers_before", "layers_after"):
            if not _is_int(p.get(key)):
                _fail(f"{w}.passes[{k}].{key}", "must be an integer")
    for key in ("concat_elimination", "timing_cache", "tactic_buckets", "int8", "profiles"):
        if b.get(key) is not None and not isinstance(b[key], (dict, list)):
            _fail(f"{w}.{key}", "must be an object or a list")


def _check_outputs_agree(engine: Any) -> None:
    """Raise PlanError unless each output in the I/O table has the dtype, rank and fixed dims
    that the layer producing it recorded (an output the table understates would otherwise be
    found only at run time)."""
    produced = {name: (layer, k) for layer in engine.layers for k, name in enumerate(layer.outputs)}
    for io in engine.io:
        if io.mode != "output" or io.name not in produced:
            continue
        layer, k = produced[io.name]
        shape = layer.output_shapes[k] if layer.output_shapes and k < len(layer.output_shapes) else None
        dtype = layer.output_dtypes[k] if layer.output_dtypes and k < len(layer.output_dtypes) else None
        declared = tuple(io.shape)
        if dtype is not None and dtype != io.dtype.name:
            raise PlanError(ErrorCode.PLAN_CORRUPT,
                            f"the plan's I/O table gives output {io.name!r} dtype {io.dtype.name}, but layer "
                            f"{layer.name!r}, which produces it, writes {dtype}")
        if shape is not None and (len(shape) != len(declared) or
                                  any(d >= 0 and r >= 0 and d != r for d, r in zip(declared, shape))):
            raise PlanError(ErrorCode.PLAN_CORRUPT,
                            f"the plan's I/O table gives output {io.name!r} shape {declared}, but layer "
                            f"{layer.name!r}, which produces it, records {tuple(shape)}")


_EIGHT_BIT_INPUTS = ("INT8", "UINT8", "FP8")
_FLOATS = ("FLOAT", "HALF", "BF16")


def _check_quantized(layer: Any) -> None:
    """Raise PlanError unless an 8-bit layer's quantization is one the kernels define: a finite
    positive input scale, an 8-bit input type, and a float output, or an INT8/FP8 one with a
    finite positive output scale (``QuantizedOutput``)."""
    p = layer.params
    scale, out_scale = getattr(p, "input_scale", None), getattr(p, "output_scale", None)
    in_type, out_type = getattr(p, "input_type", None), getattr(p, "output_type", None)
    def real(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    ok = (real(scale) and scale > 0 and real(out_scale) and out_scale >= 0
          and getattr(in_type, "name", None) in _EIGHT_BIT_INPUTS
          and (getattr(out_type, "name", None) in ("INT8", "FP8") if out_scale > 0 else
               out_type is None or getattr(out_type, "name", None) in _FLOATS))
    if not ok:
        raise PlanError(ErrorCode.PLAN_CORRUPT,
                        f"layer {layer.name!r} ({layer.kind.value}) has a quantization no kernel defines: input "
                        f"{in_type} scale {scale!r}, output {out_type} scale {out_scale!r}")


def check_engine(engine: Any, device: str, budget: int | None = None) -> None:
    """Raise PlanError unless every tactic of the decoded ``engine`` (and its profile engines)
    exists, runs its layer's kind on ``device`` and can write where the plan says, and its
    memory fits in ``budget`` bytes (None: :func:`kilnrt.engine.plan_budget.default_budget`)."""
    from kilnrt.engine.concat_plan import check_tactics
    from kilnrt.engine.plan_budget import check_budget
    from kilnrt.kernels.registry import get_tactic

    engines = engine.profile_engines or [engine]
    for one in engines:
        for layer in one.layers:
            if layer.kind in QUANTIZED_KINDS:
                _check_quantized(layer)
            for name in (layer.tactic, *layer.bucket_tactics.values()):
                tactic = get_tactic(name)  # unknown tactic names are refused at load, not at first run
                if tactic.kind != layer.kind or tactic.device != device:
                    raise PlanError(ErrorCode.PLAN_CORRUPT,
                                    f"layer {layer.name!r} ({layer.kind.value}, {device}) names tactic {name!r}, "
                                    f"which runs {tactic.kind.value} layers on {tactic.device}")
        _check_outputs_agree(one)
        try:
            check_tactics(one.layers, device)
        except ValueError as exc:
            raise PlanError(ErrorCode.PLAN_CORRUPT, f"the plan's header is malformed: {exc}") from None
    check_budget(engine, budget)
