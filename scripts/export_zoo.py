"""Export the CPU model zoo to ONNX for ``tests/test_zoo.py``.

Every model of ``tests/zoo/models.py`` (small configs, weights seeded with
``torch.manual_seed(0)``) is exported three ways into ``tests/data/zoo/``:

- ``<model>.static.onnx``: ``torch.onnx.export(dynamo=True)`` at the export shape;
- ``<model>.dynamic.onnx``: ``dynamo=True`` with ``dynamic_shapes`` (``torch.export.Dim``):
  dynamic batch, and dynamic sequence / sample count for text and audio;
- ``<model>.legacy.onnx``: the TorchScript exporter (``dynamo=False``), opset 17, with
  ``dynamic_axes`` on the same dims;
- for image models that take any size (``spatial`` in models.py), also
  ``<model>.dynamic_hw.onnx`` and ``<model>.legacy_hw.onnx``: batch, height and width dynamic.

Weights are embedded (no external data). ``tests/data/zoo/manifest.json`` describes each
model's inputs (names, dtypes, shapes over named dims, value ranges, vocabulary size), the
dims each file leaves dynamic, the shapes the test runs it at, and, per variant, the
export error (first line) or ONNX Runtime's relative L2 error against eager PyTorch at
those shapes. A failed export is recorded and skipped, never fatal.

Regenerate (needs ``transformers``; about 4 minutes on 2 cores)::

    python scripts/export_zoo.py                 # every model
    python scripts/export_zoo.py bert llama      # only these (the manifest keeps the others)
    python scripts/export_zoo.py --jobs 1        # one process (default: 2)

then run ``python -m pytest tests/test_zoo.py``, and update ``KNOWN_FAILURES`` there.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "tests" / "data" / "zoo"
VARIANTS = ("static", "dynamic", "legacy")
LEGACY_OPSET = 17


def _first_line(exc: BaseException) -> str:
    """``Type: first line``; for a chained error (the dynamo exporter's ConversionError),
    that of the innermost cause, which names the real problem."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {line}"[:300]


def _strip_metadata(model) -> None:
    """Drop the dynamo exporter's per-node metadata (stack traces, module paths: 2/3 of
    the bytes of a small model) and doc strings; the graph and its value_info stay."""
    def graph(g):
        g.doc_string = ""
        del g.metadata_props[:]
        for node in g.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.HasField("g"):
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)
    model.doc_string = ""
    graph(model.graph)


def _manifest_inputs(m) -> list:
    return [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape), "kind": i.kind,
             **({"low": i.low, "high": i.high} if i.kind != "float" else {})} for i in m.inputs]


def _onnx_dims(model) -> dict:
    """{input name: [int or dim name]} as the ONNX file declares them."""
    out = {}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    return out


def export_one(name: str) -> dict:
    import onnx
    import onnxruntime as ort
    import torch
    from zoo.inputs import make_feeds, rel_l2
    from zoo.models import ZooModel, all_models, spatial_variant

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    (m,) = [m for m in all_models() if m.name == name]
    inputs = _manifest_inputs(m)
    entry = {"name": m.name, "family": m.family, "vocab_size": m.vocab_size, "inputs": inputs,
             "outputs": list(m.outputs),
             "dims": {d: {"export": s.export, "tests": list(s.tests), "max": s.max} for d, s in m.dims.items()},
             "variants": {}}
    module = m.build().eval()
    names = [i["name"] for i in inputs]

    def eager(feeds):
        module.eval()
        with torch.no_grad():
            out = module(*(torch.from_numpy(feeds[n]) for n in names))
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]

    # (variant, exporter, its inputs, its dims): the *_hw variants also free height and width
    plans = [(v, v if v == "legacy" else "dynamo", inputs, m.dims) for v in VARIANTS]
    if m.spatial:
        hw_inputs, hw_dims = spatial_variant(m)
        hw_inputs = _manifest_inputs(ZooModel(m.name, m.family, m.build, hw_inputs, []))
        plans += [("dynamic_hw", "dynamo", hw_inputs, hw_dims), ("legacy_hw", "legacy", hw_inputs, hw_dims)]

    for variant, exporter, v_inputs, v_dims in plans:
        path = OUT / f"{m.name}.{variant}.onnx"
        dynamic = [] if variant == "static" else list(v_dims)
        export_dims = {d: s.export for d, s in v_dims.items()}
        shapes = ([export_dims] if variant == "static" else
                  [{d: s.tests[k] for d, s in v_dims.items()} for k in (0, 1)])
        info = {"file": path.name, "dynamic_dims": dynamic, "shapes": shapes, "error": None}
        if v_inputs is not inputs:
            info["inputs"] = v_inputs
        entry["variants"][variant] = info
        example = make_feeds(v_inputs, export_dims, seed=0)
        args = tuple(torch.from_numpy(example[n]) for n in names)
        if path.exists():
            path.unlink()
        try:
            torch.manual_seed(0)
            module.eval()   # the TorchScript exporter restores the mode it found
            if exporter == "legacy":
                buf = io.BytesIO()
                axes = {i["name"]: {k: d for k, d in enumerate(i["shape"]) if isinstance(d, str)} for i in v_inputs}
                torch.onnx.export(module, args, buf, dynamo=False, opset_version=LEGACY_OPSET,
                                  input_names=names, output_names=list(m.outputs), dynamic_axes=axes)
                model = onnx.load_from_string(buf.getvalue())
            else:
                kw = {}
                if variant != "static":
                    dims = {d: torch.export.Dim(d, min=1, max=s.max) for d, s in v_dims.items()}
                    kw["dynamic_shapes"] = tuple(
                        {k: dims[d] for k, d in enumerate(i["shape"]) if isinstance(d, str)} for i in v_inputs)
                prog = torch.onnx.export(module, args, None, dynamo=True, external_data=False,
                                         input_names=names, output_names=list(m.outputs), **kw)
                model = prog.model_proto
            declared = _onnx_dims(model)
            for i in v_inputs:
                for k, d in enumerate(i["shape"]):
                    got = declared[i["name"]][k]
                    if isinstance(d, str) and variant != "static" and isinstance(got, int):
                        raise RuntimeError(f"dim {d!r} of {i['name']} exported static ({got})")
            _strip_metadata(model)
            onnx.save(model, str(path))
        except Exception as exc:  # noqa: BLE001 - recorded in the manifest
            info["error"] = _first_line(exc)
            continue
        info["bytes"] = path.stat().st_size
        info["onnx_input_shapes"] = declared
        info["opset"] = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        # ONNX Runtime against eager PyTorch at the test shapes: is the file a valid reference?
        try:
            # graph optimizations off: the reference is the graph as the file states it
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            errs = []
            for k, dims in enumerate(shapes):
                feeds = make_feeds(v_inputs, dims, seed=100 + k)
                got = sess.run(None, {n: feeds[n] for n in names if n in declared})
                errs.append(max(rel_l2(g, e) for g, e in zip(got, eager(feeds))))
            info["ort_vs_torch"] = [float(f"{e:.3g}") for e in errs]
        except Exception as exc:  # noqa: BLE001
            info["ort_error"] = _first_line(exc)
    return entry


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from zoo.models import all_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="model names (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    opts = ap.parse_args(argv)
    names = [m.name for m in all_models()]
    unknown = set(opts.models) - set(names)
    if unknown:
        ap.error(f"unknown models {sorted(unknown)}; known: {names}")
    todo = opts.models or names
    OUT.mkdir(parents=True, exist_ok=True)
    manifest_path = OUT / "manifest.json"
    old = json.loads(manifest_path.read_text())["models"] if opts.models and manifest_path.exists() else []
    results = {e["name"]: e for e in old}
    t0 = time.time()
    with cf.ProcessPoolExecutor(max_workers=opts.jobs) as pool:
        futures = {pool.submit(export_one, n): n for n in todo}
        for fut in cf.as_completed(futures):
            n = futures[fut]
            try:
                entry = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. the model itself fails to build
                entry = {"name": n, "error": _first_line(exc), "variants": {}}
            results[n] = entry
            status = " ".join(f"{v}={'ok' if not i.get('error') and not i.get('ort_error') else 'FAIL'}"
                              for v, i in entry["variants"].items())
            print(f"[{time.time() - t0:6.1f}s] {n:20s} {status}", flush=True)
    models = [results[n] for n in names if n in results]
    total = sum(i.get("bytes", 0) for e in models for i in e["variants"].values())
    manifest = {"generator": "scripts/export_zoo.py", "legacy_opset": LEGACY_OPSET, "total_bytes": total,
                "models": models}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    failed = [(e["name"], v, i.get("error") or i.get("ort_error")) for e in models
              for v, i in e["variants"].items() if i.get("error") or i.get("ort_error")]
    print(f"{len(models)} models, {total / 1e6:.2f} MB, {time.time() - t0:.0f}s; {len(failed)} failed exports:")
    for n, v, err in failed:
        print(f"  {n}.{v}: {err}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
