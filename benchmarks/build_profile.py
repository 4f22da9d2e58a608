"""Where a cold build's time goes, and how long a warm one takes.

    python benchmarks/build_profile.py swin_t regnet_y_1_6gf --batch 1

For each zoo model (``benchmarks/zoo_models.py``): export it to ONNX, then build it in FP16
with the default options in a fresh process twice:

- cold: an empty Triton cache and no timing cache; the builder's phases (optimize, parallel
  kernel compilation, tactic timing), and with ``--cprofile`` the top functions;
- warm: a second fresh process that reuses the Triton cache and the timing cache.

Writes ``<out>/<model>-b<batch>-build.json`` (and ``.txt`` with the profile's top functions;
with ``--layers``, ``-layers.json``: every layer's shapes and each candidate's time).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def layer_record(layer) -> dict:
    """What the tactic search saw and chose for one engine layer: its kind, parameters, shapes,
    and every candidate's time (the data a cost model for pruning candidates is fitted on)."""
    params = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else
                  list(v) if isinstance(v, (tuple, list)) and all(isinstance(x, (int, float)) for x in v) else
                  getattr(v, "name", None))
              for k, v in (vars(layer.params).items() if hasattr(layer.params, "__dict__") else ())
              if k != "weights"}
    return {"name": layer.name, "kind": layer.kind.name, "params": params, "tactic": layer.tactic,
            "timing_ms": layer.timing_ms, "candidates": layer.candidates,
            "input_shapes": [None if s is None else list(s) for s in layer.input_shapes],
            "output_shapes": [None if s is None else list(s) for s in layer.output_shapes],
            "input_dtypes": layer.input_dtypes, "output_formats": layer.output_formats}


def _build_child(onnx_path: str, cache: str, profile_path: str | None, level: int,
                 layers_path: str | None = None) -> None:
    """In a fresh process: one build, timed (and profiled when ``profile_path`` is given)."""
    import cProfile
    import pstats
    import time

    sys.path.insert(0, os.path.dirname(HERE))
    import kilnrt

    prof = cProfile.Profile() if profile_path else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    engine = kilnrt.build(onnx_path, device="cuda", fp16=True, timing_cache=cache, optimization_level=level)
    if prof:
        prof.disable()
    total = time.perf_counter() - t0
    result = {"seconds": round(total, 2), "layers": len(engine.layers),
              "candidates_timed": sum(len(l.candidates or {}) for l in engine.layers),
              "engine_build_info_seconds": engine.build_info.get("seconds"),
              "phases": engine.build_info.get("phases"), "parallel_compile": engine.build_info.get("parallel_compile")}
    if layers_path:
        with open(layers_path, "w") as f:
            json.dump([layer_record(l) for l in engine.layers], f)
    if prof:
        stats = pstats.Stats(prof)
        by_name = {}
        for (file, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
            by_name[f"{os.path.relpath(file, os.path.dirname(HERE)) if 'kilnrt' in file else file}:{func}"] = \
                (nc, ct)

        def total_of(suffix: str) -> tuple[int, float]:
            hits = [(n, c) for k, (n, c) in by_name.items() if k.endswith(suffix)]
            return (sum(n for n, _ in hits), round(max((c for _, c in hits), default=0.0), 2))

        result["triton_compile"] = total_of("triton/compiler/compiler.py:compile")
        result["time_callable"] = total_of("kilnrt/builder/timing.py:time_callable")
        result["prepare_calls"] = total_of("kilnrt/builder/search.py:choose_tactic")
        result["optimize"] = total_of("kilnrt/optimize/pipeline.py:optimize")
        result["select_tactics"] = total_of("kilnrt/builder/builder.py:select_tactics")
        with open(profile_path, "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("cumulative").print_stats(60)
    print("RESULT " + json.dumps(result), flush=True)


def _child(args: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"the build failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        onnx_path, cache, profile_path, level, layers_path = argv[1:6]
        _build_child(onnx_path, cache, profile_path if profile_path != "-" else None, int(level),
                     layers_path if layers_path != "-" else None)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--level", type=int, default=3, help="builder optimization level")
    p.add_argument("--out", default=os.environ.get("OUT", tempfile.gettempdir()))
    p.add_argument("--cprofile", action="store_true", help="run the cold build under cProfile (slower)")
    p.add_argument("--layers", action="store_true",
                   help="also write <model>-b<batch>-layers.json: each layer's shapes and every candidate's time")
    p.add_argument("--no-warm", action="store_true", help="the cold build only")
    args = p.parse_args(argv)
    import torch

    sys.path.insert(0, HERE)
    from zoo import export_onnx
    from zoo_models import ZOO

    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            model, inputs = ZOO[name].make(args.batch)
            path = os.path.join(tmp, f"{name}.onnx")
            with torch.no_grad():
                exporter = export_onnx(model, inputs, path)
            del model
            env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(tmp, "triton"))
            cache = os.path.join(tmp, "timing.cache")
            stem = os.path.join(args.out, f"{name}-b{args.batch}-build")
            cold = _child([path, cache, stem + ".txt" if args.cprofile else "-", str(args.level),
                           f"{args.out}/{name}-b{args.batch}-layers.json" if args.layers else "-"], env)
            warm = None if args.no_warm else _child([path, cache, "-", str(args.level), "-"], env)
            result = {"model": name, "batch": args.batch, "exporter": exporter, "level": args.level,
                      "cold": cold, "warm": warm}
            with open(stem + ".json", "w") as f:
                json.dump(result, f, indent=1)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
