"""The engine inspector: what a built engine is made of, as text, JSON and rich tables.

    inspector = engine.create_engine_inspector()
    print(inspector.get_engine_information(LayerInformationFormat.JSON))   # TensorRT's names
    info = describe_engine(engine)          # a JSON-ready dict: layers, I/O, memory, build info
    rich.print(layer_table(engine), summary_table(engine))

Per layer: name, kind, tactic, precision, input and output tensors (shape, dtype, memory
format: ``linear`` or ``channels_last``, None where unknown), the source ONNX nodes it came
from (``Conv_12 + Relu_13``), and its time when known: the chosen tactic's build-time
measurement, or the per-layer times of a profiled run (:class:`LayerTimer` as a context's
``profiler``).  Concatenation elimination shows on both ends: a producer "writes into slice
[a:b] of <concatenation output>", and the concatenation is "eliminated" or "copies k of n
inputs" (``writes_into`` and ``concat`` in the JSON).
"""
from __future__ import annotations

import enum
import json
import statistics
from typing import Any, Mapping

import numpy as np

from kilnrt.kernels.registry import static_dims


class LayerInformationFormat(enum.Enum):
    ONELINE = "oneline"
    JSON = "json"


class LayerTimer:
    """A profiler (``context.profiler = LayerTimer()``) that keeps every layer's times in ms."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def report_layer_time(self, layer_name: str, ms: float) -> None:
        self.samples.setdefault(layer_name, []).append(float(ms))

    def median_ms(self) -> dict[str, float]:
        return {name: statistics.median(v) for name, v in self.samples.items() if v}


# ----------------------------------------------------------------------------- the data
def _io(engine) -> dict[str, Any]:
    return {t.name: t for t in engine.io}


def _tensor_formats(engine) -> dict[str, str | None]:
    """Each layer output's memory format as its tactic writes it (see ``EngineLayer.output_formats``)."""
    return {name: fmt for l in engine.layers for name, fmt in zip(l.outputs, l.output_formats)}


def tensor_info(engine, name: str | None) -> dict[str, Any] | None:
    """``{"name", "shape", "dtype", "kind", "format"}`` of a tensor of the engine (I/O, constant
    or activation). I/O bindings and constants are linear; an activation's format is its
    producer's (:func:`layer_info`)."""
    if name is None:
        return None
    io = _io(engine).get(name)
    if io is not None:
        return {"name": name, "shape": list(io.symbolic or io.shape), "dtype": io.dtype.name, "kind": io.mode,
                "format": "linear"}
    if name in engine.constants:
        w = np.asarray(engine.constants[name])
        from kilnrt.network.dtypes import DataType

        try:
            dt = DataType.from_numpy(w.dtype).name
        except TypeError:
            dt = str(w.dtype)
        return {"name": name, "shape": list(w.shape), "dtype": dt, "kind": "constant", "format": "linear"}
    t = engine.tensors.get(name) or {}
    shape = t.get("shape")
    return {"name": name, "shape": None if shape is None else list(shape), "dtype": t.get("dtype"),
            "kind": "activation", "opt_shape": t.get("opt_shape"), "format": None}


def _neutral(shape) -> bool:
    """A 4-D shape whose NCHW and NHWC layouts are the same memory (H*W == 1 or C == 1)."""
    return shape is not None and len(shape) == 4 and static_dims(shape) \
        and (shape[2] * shape[3] == 1 or shape[1] == 1)


def layout_summary(engine) -> dict[str, Any]:
    """Where the engine's 4-D activations are channels-last (NHWC) and where the layout changes.

    ``formats``: how many 4-D layer outputs each tactic wrote in each format (``None``: unknown,
    as in CPU builds); ``changes``: the layers whose 4-D output is in another format than one
    of their 4-D inputs (engine inputs are linear), i.e. the layers whose tactic converts the
    layout as it reads, with the names of the inputs converted.  Shapes whose two layouts are
    the same memory (``[N, C, 1, 1]``) count as neither."""
    formats = {**{t.name: "linear" for t in engine.io if t.mode == "input"}, **_tensor_formats(engine)}
    shapes: dict[str, Any] = {t.name: t.shape for t in engine.io if t.mode == "input"}
    counts: dict[str, int] = {}
    changes = []
    for l in engine.layers:
        for k, name in enumerate(l.outputs):
            shapes[name] = l.output_shapes[k] if k < len(l.output_shapes) else None
        if not l.outputs or shapes.get(l.outputs[0]) is None or len(shapes[l.outputs[0]]) != 4:
            continue
        out_shape, out_fmt = shapes[l.outputs[0]], formats.get(l.outputs[0])
        counts[out_fmt or "unknown"] = counts.get(out_fmt or "unknown", 0) + 1
        if out_fmt is None or _neutral(out_shape):
            continue
        converted = [n for n in l.inputs if n is not None and n in formats and shapes.get(n) is not None
                     and len(shapes[n]) == 4 and not _neutral(shapes[n])
                     and formats[n] is not None and formats[n] != out_fmt]
        if converted:
            changes.append({"layer": l.name, "inputs": converted, "from": formats[converted[0]], "to": out_fmt})
    return {"formats": counts, "changes": changes}


def layout_text(summary: dict[str, Any]) -> str | None:
    """The summary in a line: None when the engine has no 4-D activations."""
    counts = summary["formats"]
    if not counts:
        return None
    names = {"channels_last": "NHWC", "linear": "linear", "unknown": "unknown format"}
    text = ", ".join(f"{n} {names.get(f, f)}" for f, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    if set(counts) == {"unknown"}:
        return f"{text} (the build ran no tactic: CPU)"
    changes = summary["changes"]
    where = "; ".join(f"{c['layer']} ({names.get(c['from'], c['from'])} -> {names.get(c['to'], c['to'])})"
                      for c in changes[:6]) + (f"; {len(changes) - 6} more" if len(changes) > 6 else "")
    return f"{text}; layout converted in {len(changes)} layer(s)" + (f": {where}" if changes else "")


def _concats(engine) -> dict[str, dict[str, Any]]:
    from kilnrt.engine.concat_plan import describe

    return describe(engine.layers)


def concat_text(info: dict[str, Any]) -> str | None:
    """What concatenation elimination did to a layer, in words (None: nothing)."""
    into, concat = info.get("writes_into"), info.get("concat")
    if into is not None:
        return f"writes into slice [{into['start']}:{into['end']}] of {into['tensor']} (axis {into['axis']})"
    if concat is not None:
        if concat["eliminated"]:
            return f"eliminated: all {concat['inputs']} inputs written in place"
        return f"copies {concat['copied']} of {concat['inputs']} inputs ({concat['in_place']} written in place)"
    return None


def layer_info(engine, index: int, timings: Mapping[str, float] | None = None,
               formats: Mapping[str, str | None] | None = None,
               concats: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One layer, JSON-ready; ``formats`` is :func:`_tensor_formats` and ``concats``
    :func:`kilnrt.engine.concat_plan.describe` (each computed when not given)."""
    layer = engine.layers[index]
    formats = _tensor_formats(engine) if formats is None else formats
    concats = _concats(engine) if concats is None else concats
    ins = [tensor_info(engine, n) for n in layer.inputs if n is not None]
    for info in ins:
        info["format"] = formats.get(info["name"], info["format"])
    outs = []
    for k, name in enumerate(layer.outputs):
        info = tensor_info(engine, name)
        info["format"] = layer.output_formats[k] if k < len(layer.output_formats) else None
        if k < len(layer.output_dtypes) and layer.output_dtypes[k]:
            info["dtype"] = layer.output_dtypes[k]
        if info.get("shape") is None and k < len(layer.output_shapes) and layer.output_shapes[k] is not None:
            info["shape"] = list(layer.output_shapes[k])
        outs.append(info)
    precision = layer.precision.name if layer.precision is not None else \
        next((o["dtype"] for o in outs if o.get("dtype")), None)
    measured = (timings or {}).get(layer.name)
    return {
        "index": index, "name": layer.name, "kind": layer.kind.name, "tactic": layer.tactic,
        "precision": precision,
        "inputs": ins,
        "outputs": outs,
        "origin": list(layer.origin), "origin_text": " + ".join(layer.origin),
        "build_time_ms": layer.timing_ms, "time_ms": measured,
        "candidates": dict(layer.candidates),
        "writes_into": concats.get(layer.name, {}).get("writes_into"),
        "concat": concats.get(layer.name, {}).get("concat"),
        "bucket_tactics": {str(b): t for b, t in sorted(layer.bucket_tactics.items())},
    }


def shapes_summary(engine) -> dict[str, Any]:
    """Where shapes are computed: the layers of the host-side shape program (run once per
    input-shape set, before launch), and the layers a run must wait on the host for."""
    from kilnrt.engine.shape_program import ShapeProgram, synchronizing_layers

    program = ShapeProgram(engine, run_layer=None)
    return {"host_layers": [l.name for l in program.layers],
            "synchronizing": [{"layer": name, "why": why} for name, why in synchronizing_layers(engine, program)]}


def shapes_text(summary: dict[str, Any]) -> str:
    sync = summary["synchronizing"]
    text = f"{len(summary['host_layers'])} layers run on the host once per input-shape set; "
    if not sync:
        return text + "no layer synchronizes (one CUDA graph per shape set)"
    return text + f"{len(sync)} synchronize: " + "; ".join(f"{s['layer']} ({s['why']})" for s in sync)


def describe_engine(engine, timings: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Everything the inspector knows about ``engine``, as a JSON-ready dict."""
    memory = engine.memory
    build = dict(engine.build_info)
    formats = _tensor_formats(engine)
    concats = _concats(engine)
    return {
        "name": engine.name, "device": engine.device, "device_name": engine.device_name,
        "kilnrt_version": engine.version, "portable": engine.portable,
        "io": [{"name": t.name, "mode": t.mode, "dtype": t.dtype.name, "shape": list(t.symbolic or t.shape)}
               for t in engine.io],
        "profiles": [{name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for name, s in p.items()}
                     for p in engine.profiles],
        "num_layers": len(engine.layers),
        "weights_bytes": engine.weights_bytes,
        "activation_bytes": None if memory is None else int(memory.arena_bytes),
        "naive_activation_bytes": None if memory is None else int(memory.naive_bytes),
        "build": build,
        "layout": layout_summary(engine),
        "shapes": shapes_summary(engine),
        "profile_engines": None if engine.profile_engines is None else
        [{"profile": i, "layers": len(e.layers)} for i, e in enumerate(engine.profile_engines)],
        "layers": [layer_info(engine, i, timings, formats, concats) for i in range(len(engine.layers))],
    }


# ----------------------------------------------------------------------------- TensorRT's API
_TRT_TYPES = {"FLOAT": "FP32", "HALF": "FP16", "DOUBLE": "FP64", "INT8": "Int8", "UINT8": "UInt8",
              "INT32": "Int32", "INT64": "Int64", "BOOL": "Bool", "INT4": "Int4"}
# TensorRT's words; "Channel major" is its HWC family: here NHWC (channels-last strides)
_TRT_FORMATS = {"linear": "Row major linear {} format", "channels_last": "Channel major {} format"}


def _trt_format(info: dict[str, Any]) -> str:
    dtype = _TRT_TYPES.get(info.get("dtype"), info.get("dtype"))
    return _TRT_FORMATS.get(info.get("format"), "{}").format(dtype)


def _trt_tensor(info: dict[str, Any]) -> dict[str, Any]:
    return {"Name": info["name"], "Location": "Device", "Dimensions": info.get("shape"),
            "Format/Datatype": _trt_format(info)}


def _trt_layer(info: dict[str, Any]) -> dict[str, Any]:
    out = {"Name": info["name"], "LayerType": info["kind"].title().replace("_", ""),
           "Inputs": [_trt_tensor(t) for t in info["inputs"]],
           "Outputs": [_trt_tensor(t) for t in info["outputs"]],
           "TacticName": info["tactic"], "Precision": info["precision"], "Origin": info["origin_text"]}
    if info.get("time_ms") is not None or info.get("build_time_ms") is not None:
        out["TimeMs"] = info["time_ms"] if info.get("time_ms") is not None else info["build_time_ms"]
    if concat_text(info):
        out["ConcatElimination"] = concat_text(info)
    if info.get("bucket_tactics"):
        out["BucketTactics"] = info["bucket_tactics"]
    return out


def format_shape(shape: Any) -> str:
    return "?" if shape is None else "[" + ",".join(str(d) for d in shape) + "]"


def _oneline(info: dict[str, Any]) -> str:
    ins = ", ".join(f"{t['name']}{format_shape(t.get('shape'))}:{t.get('dtype')}" for t in info["inputs"])
    outs = ", ".join(f"{t['name']}{format_shape(t.get('shape'))}:{t.get('dtype')}" for t in info["outputs"])
    note = "; ".join(n for n in (concat_text(info), bucket_text(info)) if n)
    return (f"{info['name']} [{info['kind']}, {info['tactic']}] ({ins}) -> ({outs}) from {info['origin_text']}"
            + (f"; {note}" if note else ""))


def bucket_text(info: dict[str, Any]) -> str:
    """The tactics a layer runs in other buckets than opt's: "bucket 1: cuda.conv.x"."""
    return ", ".join(f"bucket {b}: {t}" for b, t in (info.get("bucket_tactics") or {}).items())


def int8_text(build: dict[str, Any]) -> str:
    """What the INT8/FP8 step did: how many layers run in INT8 and FP8, from which ranges, and the
    layers the accuracy guard kept in float."""
    info = build.get("int8")
    if not info:
        return ""
    if "int8_layers" not in info:
        return f"{info.get('explicit_layers', 0)} INT8 layers from the model's Q/DQ nodes"
    fp8 = info.get("fp8_layers") or 0
    counts = f"{info['int8_layers']} INT8 layers" + (f" + {fp8} FP8 layers" if fp8 else "")
    text = f"{counts} ({info['source']})"
    if info.get("inputs_without_range"):
        text += f"; {len(info['inputs_without_range'])} quantizable inputs had no range (float)"
    guard = info.get("guard")
    if guard:
        kept = guard["kept_float"]
        types = "/".join(guard.get("types") or ["INT8"])
        text += (f"; accuracy guard: error {guard['error_all_int8']:.4g} all-{types}, {guard['error']:.4g} with "
                 f"{len(kept)} layers kept in float (budget {guard['budget']:.4g})")
        if kept:
            text += ": " + ", ".join(f"{k['layer']} ({k['sensitivity']:.3g})" for k in kept)
    return text


def buckets_text(build: dict[str, Any]) -> str:
    """The build's tactic buckets: their points and how many layers run another tactic there."""
    buckets = build.get("tactic_buckets")
    if not buckets:
        return ""
    parts = []
    for b, point in enumerate(buckets["shapes"]):
        shapes = " ".join(f"{k}{format_shape(v)}" for k, v in point.items())
        if b == 0:
            parts.append(f"bucket 0 (opt) {shapes}")
        else:
            parts.append(f"bucket {b} {shapes}: {buckets['layers'][b - 1]} layers run another tactic "
                         f"(saving {buckets['saved_ms'][b - 1]:.3f} ms as timed)")
    return "; ".join(parts) + f"; tuned in {buckets['seconds']} s"


class EngineInspector:
    """TensorRT's ``IEngineInspector``: ``get_layer_information`` / ``get_engine_information``.

    Set ``execution_context`` to a context whose ``profiler`` is a :class:`LayerTimer` to see
    measured per-layer times.
    """

    def __init__(self, engine, timings: Mapping[str, float] | None = None) -> None:
        self.engine = engine
        self.execution_context = None
        self.error_recorder = None
        self._timings = dict(timings or {})

    def timings(self) -> dict[str, float]:
        profiler = getattr(self.execution_context, "profiler", None)
        measured = profiler.median_ms() if isinstance(profiler, LayerTimer) else {}
        return {**self._timings, **measured}

    def get_layer_information(self, layer_index: int,
                              format: LayerInformationFormat = LayerInformationFormat.ONELINE) -> str:
        info = layer_info(self.engine, layer_index, self.timings())
        if format == LayerInformationFormat.JSON:
            return json.dumps(_trt_layer(info))
        return _oneline(info)

    def get_engine_information(self, format: LayerInformationFormat = LayerInformationFormat.ONELINE) -> str:
        data = describe_engine(self.engine, self.timings())
        if format == LayerInformationFormat.JSON:
            return json.dumps({"Layers": [_trt_layer(l) for l in data["layers"]],
                               "Bindings": [t["name"] for t in data["io"]]})
        return "\n".join(_oneline(l) for l in data["layers"])


# ----------------------------------------------------------------------------- rich tables
def format_bytes(n: int | None) -> str:
    if n is None:
        return "unknown (dynamic shapes, no profile)"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _tensor_text(t: dict[str, Any]) -> str:
    nhwc = " NHWC" if t.get("format") == "channels_last" else ""   # linear (or unknown) goes unsaid
    return f"{t['name']} {format_shape(t.get('shape'))} {t.get('dtype') or ''}{nhwc}"


def _add_row(table, *cells: str) -> None:
    """A table row whose text is shown as written: a symbolic shape such as ``[batch,3]`` or a
    name from a plan is not read as rich markup."""
    table.add_row(*(shown(c) for c in cells))


def shown(text: str) -> str:
    """``text`` safe for a terminal through rich: markup escaped, control characters (an escape
    sequence in a plan's layer name, say) written as Python escapes."""
    from rich.markup import escape

    return escape("".join(ch if ch.isprintable() or ch == "\n" else repr(ch)[1:-1] for ch in str(text)))


def layer_table(engine, timings: Mapping[str, float] | None = None, *, title: str | None = None):
    """A :class:`rich.table.Table` with one row per engine layer."""
    from rich.table import Table

    data = describe_engine(engine, timings)
    table = Table(title=title or shown(f"{engine.name}: {len(engine.layers)} layers on {engine.device_name}"),
                  show_lines=False)
    for col, kw in (("#", {"justify": "right"}), ("layer", {}), ("kind", {}), ("tactic", {}),
                    ("precision", {}), ("inputs", {}), ("outputs", {}), ("from ONNX nodes", {}),
                    ("time ms", {"justify": "right"})):
        table.add_column(col, **kw)
    for l in data["layers"]:
        t = l["time_ms"] if l["time_ms"] is not None else l["build_time_ms"]
        note = "\n".join(n for n in (concat_text(l), bucket_text(l)) if n)
        _add_row(table, str(l["index"]), l["name"], l["kind"].lower(), l["tactic"] + (f"\n{note}" if note else ""),
                      l["precision"] or "",
                      "\n".join(_tensor_text(i) for i in l["inputs"]), "\n".join(_tensor_text(o) for o in l["outputs"]),
                      l["origin_text"], "" if t is None else f"{t:.4f}")
    return table


def summary_table(engine):
    """A :class:`rich.table.Table` summarizing I/O, profiles, memory and the build."""
    from rich.table import Table

    data = describe_engine(engine)
    table = Table(title="engine summary", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    _add_row(table, "device", f"{data['device']} ({data['device_name']})")
    for t in data["io"]:
        _add_row(table, t["mode"], f"{t['name']} {t['dtype']} {format_shape(t['shape'])}")
    for i, prof in enumerate(data["profiles"]):
        for name, s in prof.items():
            _add_row(table, f"profile {i}", f"{name}: min {format_shape(s['min'])} opt {format_shape(s['opt'])} "
                                          f"max {format_shape(s['max'])}")
    _add_row(table, "layers", str(data["num_layers"]))
    _add_row(table, "weights", format_bytes(data["weights_bytes"]))
    act, naive = data["activation_bytes"], data["naive_activation_bytes"]
    reuse = f" (without reuse: {format_bytes(naive)})" if act is not None and naive is not None else ""
    _add_row(table, "activations", format_bytes(act) + reuse)
    if data["profile_engines"]:
        _add_row(table, "profile engines", ", ".join(f"profile {p['profile']}: {p['layers']} layers"
                                                   for p in data["profile_engines"]))
    _add_row(table, "shapes", shapes_text(data["shapes"]))
    layout = layout_text(data["layout"])
    if layout:
        _add_row(table, "4-D layouts", layout)
    build = data["build"]
    if build:
        _add_row(table, "build", f"{build.get('seconds', '?')} s, optimization level "
                               f"{build.get('optimization_level', '?')}, flags {', '.join(build.get('flags', [])) or '-'}")
        _add_row(table, "layers in -> out", f"{build.get('layers_in', '?')} network layers -> "
                                          f"{build.get('layers_out', '?')} engine layers "
                                          f"(+{build.get('constants', 0)} constants)")
        passes = [p for p in build.get("passes", []) if p.get("rewrites") or p["layers_before"] != p["layers_after"]]
        for p in passes:
            _add_row(table, f"pass {p['pass']}", f"{p['layers_before']} -> {p['layers_after']} layers, "
                                               f"{p.get('rewrites', 0)} rewrites")
        concats = build.get("concat_elimination")
        if concats and concats.get("concatenations"):
            _add_row(table, "concatenations", f"{concats['concatenations']}: {concats['eliminated']} eliminated, "
                                            f"{concats['partial']} partly; {concats['inputs_in_place']} inputs "
                                            f"written in place, {concats['inputs_copied']} copied"
                                            + (f"; {concats['tactics_switched']} producers took a tactic that "
                                               f"writes in place" if concats.get("tactics_switched") else ""))
        if buckets_text(build):
            _add_row(table, "tactic buckets", buckets_text(build))
        if int8_text(build):
            _add_row(table, "INT8", int8_text(build))
        cache = build.get("timing_cache")
        if cache:
            _add_row(table, "timing cache", f"{cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses")
    return table


__all__ = ["EngineInspector", "LayerInformationFormat", "LayerTimer", "bucket_text", "buckets_text", "concat_text", "int8_text", "describe_engine", "layer_info",
           "layout_summary", "layout_text", "shapes_summary", "shapes_text", "tensor_info", "layer_table", "summary_table", "format_bytes", "format_shape"]
