"""Options and helpers the subcommands share: shapes, build options, inputs, timing, output."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kilnrt.errors import ErrorCode, KilnError

Shapes = dict[str, tuple[int, ...]]


# ----------------------------------------------------------------------------- output
def console(stderr: bool = False):
    """A rich console; wide when not a terminal, so that tables in logs and tests do not wrap."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, stderr=stderr, width=None if stream.isatty() else 200, soft_wrap=False,
                   highlight=False)


def setup_logging(verbose: bool) -> None:
    """``--verbose``: kilnrt's debug log on stderr through rich (installed once per process)."""
    log = logging.getLogger("kilnrt")
    if verbose:
        from rich.logging import RichHandler

        if not any(getattr(h, "_kilnrt_cli", False) for h in log.handlers):
            handler = RichHandler(console=console(stderr=True), show_path=False)
            handler._kilnrt_cli = True
            log.addHandler(handler)
        log.setLevel(logging.DEBUG)


def common_options() -> argparse.ArgumentParser:
    """``--verbose``, ``--debug`` and ``--plan-key``, accepted by every subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--verbose", "-v", action="store_true", help="log what kilnrt does (debug level)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.add_argument("--plan-key", metavar="FILE", help="a file holding a plan signing key: plans written are signed "
                                                      "with it, plans read must be signed with it")
    return p


def plan_key(args: argparse.Namespace | None) -> bytes | None:
    """The bytes of ``--plan-key FILE`` (None without the option)."""
    path = getattr(args, "plan_key", None) if args is not None else None
    if path is None:
        return None
    require_file(path, "--plan-key")
    with open(path, "rb") as f:
        return f.read().strip()


# ----------------------------------------------------------------------------- shapes
def parse_shapes(specs: Sequence[str] | str | None, flag: str = "--shapes") -> Shapes:
    """``"input:1x3x224x224,mask:1x128"`` (or several such strings) -> ``{name: dims}``."""
    if specs is None:
        return {}
    if isinstance(specs, str):
        specs = [specs]
    out: Shapes = {}
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, dims = item.rpartition(":")
            name = name.strip("'\"")
            try:
                if not sep or not name:
                    raise ValueError
                out[name] = tuple(int(d) for d in dims.lower().split("x")) if dims.strip() else ()
                if any(d < 0 for d in out[name]):
                    raise ValueError
            except ValueError:
                raise KilnError(ErrorCode.INVALID_ARGUMENT,
                                f"{flag}: cannot read {item!r}; write NAME:DIMS with dims joined by 'x', "
                                f"e.g. {flag} input:1x3x224x224 (several: a comma-separated list)") from None
    return out


def add_shape_option(p: argparse.ArgumentParser, help: str = "input shapes, e.g. input:1x3x224x224") -> None:
    p.add_argument("--shapes", action="append", metavar="NAME:AxBx..", help=help)


def add_build_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("build options")
    g.add_argument("--fp16", action="store_true", help="allow FP16 layers")
    g.add_argument("--bf16", action="store_true", help="allow BF16 layers")
    add_shape_option(g, help="static shapes for dynamic inputs (min = opt = max), e.g. input:1x3x224x224")
    for which in ("min", "opt", "max"):
        g.add_argument(f"--{which}-shapes", action="append", metavar="NAME:AxBx..",
                       help=f"the {which} shapes of the optimization profile")
    g.add_argument("--timing-cache", metavar="PATH", help="timing cache file (read, then updated)")
    g.add_argument("--optimization-level", type=int, default=3, choices=range(0, 6), metavar="N",
                   help="builder optimization level 0-5 (default 3)")
    g.add_argument("--tactic-buckets", default="min", metavar="POINTS",
                   help="profile points besides opt where tactics are tuned again and kept for nearby "
                        "shapes: min, max, min,max, or none (default: min)")
    g.add_argument("--int8", action="store_true", help="quantize convolutions and matrix multiplies to INT8 "
                                                        "(needs --calib, or Q/DQ nodes in the model)")
    g.add_argument("--fp8", action="store_true", help="quantize them to FP8 E4M3 (compute capability 8.9+; "
                                                       "emulated on the CPU); with --int8, per layer by accuracy "
                                                       "under --accuracy-budget")
    g.add_argument("--calib", metavar="PATH", help="INT8 calibration: a .npz of inputs, a folder of .npz/.npy "
                                                   "batches, or a calibration cache (docs/int8.md)")
    g.add_argument("--calib-method", choices=("entropy", "minmax", "percentile"), default="entropy",
                   help="how calibration picks each range (default entropy)")
    g.add_argument("--calib-cache", metavar="PATH", help="calibration cache to read, or to write after calibrating")
    g.add_argument("--accuracy-budget", type=float, metavar="ERR",
                   help="INT8: keep the most sensitive layers in float until the outputs' relative error on "
                        "a held-back calibration batch is at most ERR")
    g.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="the device to build for (default: cuda when a GPU is visible, else cpu)")
    g.add_argument("--refit", action="store_true", help="a refittable engine: new weights later without a rebuild "
                                                         "(docs/refit.md)")
    g.add_argument("--workspace", metavar="MIB", help="workspace memory pool limit in MiB, as trtexec (a suffix "
                                                      "B/K/M/G gives another unit: 512M, 2G)")


def profiles_from(shapes: Shapes, min_shapes: Shapes, opt_shapes: Shapes, max_shapes: Shapes) -> dict | None:
    """One optimization profile: ``{name: (min, opt, max)}``; ``--shapes`` fixes all three."""
    names = list(dict.fromkeys([*shapes, *min_shapes, *opt_shapes, *max_shapes]))
    if not names:
        return None
    profile = {}
    for name in names:
        opt = opt_shapes.get(name) or shapes.get(name) or max_shapes.get(name) or min_shapes.get(name)
        lo = min_shapes.get(name) or shapes.get(name) or opt
        hi = max_shapes.get(name) or shapes.get(name) or opt
        profile[name] = (lo, opt, hi)
    return profile


def build_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`kilnrt.build` from the build options."""
    profile = profiles_from(parse_shapes(args.shapes), parse_shapes(args.min_shapes, "--min-shapes"),
                            parse_shapes(args.opt_shapes, "--opt-shapes"),
                            parse_shapes(args.max_shapes, "--max-shapes"))
    return {"fp16": args.fp16, "bf16": args.bf16, "profiles": profile, "device": args.device,
            "optimization_level": args.optimization_level, "timing_cache": args.timing_cache,
            "workspace": None if args.workspace is None else parse_size_mib(args.workspace, "--workspace"),
            "verbose": args.verbose, "refit": getattr(args, "refit", False),
            "tactic_buckets": () if args.tactic_buckets in ("", "none") else
            tuple(p.strip() for p in args.tactic_buckets.split(",")),
            **int8_kwargs(args)}


def int8_kwargs(args: argparse.Namespace, model: Any = None) -> dict[str, Any]:
    """The INT8/FP8 keywords of :func:`kilnrt.build` from ``--int8 [--fp8] --calib ...``; ``model``
    (a path or a Network) names the inputs a .npz's arrays belong to."""
    int8, fp8 = getattr(args, "int8", False), getattr(args, "fp8", False)
    if not (int8 or fp8):
        for flag in ("calib", "calib_cache", "accuracy_budget"):
            if getattr(args, flag, None) is not None:
                raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--{flag.replace('_', '-')} is for INT8 builds: add --int8")
        return {}
    out: dict[str, Any] = {"int8": int8, "calibration_method": getattr(args, "calib_method", "entropy"),
                           "accuracy_budget": getattr(args, "accuracy_budget", None)}
    if fp8:
        out["fp8"] = True
    if getattr(args, "calib_cache", None):
        out["calibration_cache"] = args.calib_cache
    if getattr(args, "calib", None):
        import kilnrt
        from kilnrt.cli.calib import calibration_kwargs
        from kilnrt.network.graph import Network

        source = model or getattr(args, "model", None)
        network = source if isinstance(source, Network) else \
            kilnrt.to_network(os.fspath(source)) if source else None
        out.update(calibration_kwargs(args.calib, [t.name for t in network.inputs] if network else []))
    return out


# ----------------------------------------------------------------------------- memory sizes
_UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MEMORY_POOLS = ("workspace", "dlaSRAM", "dlaLocalDRAM", "dlaGlobalDRAM", "tacticSharedMem")


def parse_size_mib(text: str | float, flag: str) -> int:
    """trtexec's sizes: MiB without a suffix, else B/K/M/G (base 2); decimals round down to bytes."""
    value = str(text).strip()
    unit = _UNITS.get(value[-1:].upper()) if value else None
    try:
        size = int(float(value[:-1] if unit else value) * (unit or _UNITS["M"]))
        if size < 0:
            raise ValueError
        return size
    except ValueError:
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        f"{flag}: cannot read the size {value!r}; write MiB (1024) or a number with a suffix "
                        f"B/K/M/G (512M, 2G)") from None


def parse_mem_pools(spec: str, flag: str = "--memPoolSize") -> dict[str, int]:
    """trtexec's ``pool:size[,pool:size]`` -> ``{pool: bytes}``."""
    pools: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        pool, sep, size = item.partition(":")
        if not sep or pool not in MEMORY_POOLS:
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"{flag}: cannot read {item!r}; write POOL:SIZE with POOL one of {', '.join(MEMORY_POOLS)}, "
                            "e.g. workspace:1024M")
        pools[pool] = parse_size_mib(size, f"{flag} {pool}")
    return pools


# ----------------------------------------------------------------------------- models and plans
def is_plan(path: str | os.PathLike) -> bool:
    from kilnrt.engine.plan import MAGIC

    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def require_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{what} {str(path)!r} does not exist")
    return p


def load_engine(path: str | os.PathLike, args: argparse.Namespace | None = None, **build: Any):
    """An engine from a plan file, or built from an ONNX model (with ``build`` options)."""
    import kilnrt

    require_file(path, "plan or model")
    if is_plan(path):
        return kilnrt.load(path, key=plan_key(args))
    return kilnrt.build(os.fspath(path), **build)


# ----------------------------------------------------------------------------- inputs
def load_input_files(specs: Sequence[str] | None) -> dict[str, np.ndarray]:
    """``--input name=file.npy`` values."""
    out = {}
    for spec in specs or ():
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"--input: cannot read {spec!r}; write NAME=FILE.npy, e.g. --input input=x.npy")
        require_file(path, f"--input {name}: file")
        try:
            out[name] = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--input {name}: {path!r} is not a .npy array: {exc}") from None
    return out


def engine_inputs(engine, seed: int, shapes: Shapes, files: Mapping[str, np.ndarray] | None = None) -> dict:
    """Feeds for every input: from ``files`` where given, else seeded random (see kilnrt.testing)."""
    from kilnrt.testing import seeded_inputs

    files = dict(files or {})
    names = set(engine.input_names)
    unknown = [n for n in list(files) + list(shapes) if n not in names]
    if unknown:
        raise KilnError(ErrorCode.UNKNOWN_TENSOR,
                        f"unknown input name(s) {', '.join(map(repr, unknown))}; the engine's inputs are: "
                        + ", ".join(f"{t.name} {t.dtype.name}{list(t.symbolic or t.shape)}"
                                    for t in engine.io if t.mode == "input"))
    shapes = {**{n: a.shape for n, a in files.items()}, **shapes}
    feeds = dict(seeded_inputs(engine, seed, shapes))
    feeds.update(files)
    return feeds


def batch_size(feeds: Mapping[str, Any]) -> int:
    """Items per inference: the first dim of the first input (1 for a scalar)."""
    for v in feeds.values():
        return int(v.shape[0]) if getattr(v, "ndim", 0) else 1
    return 1


# ----------------------------------------------------------------------------- timing
def time_runs(fn: Callable[[], Any], *, iterations: int, warmup: int = 0, warmup_ms: float = 0.0,
              duration_s: float = 0.0, sync: Callable[[], None] | None = None) -> list[float]:
    """Per-run latencies in ms: ``warmup`` runs (or ``warmup_ms``), then at least ``iterations``
    runs and at least ``duration_s`` seconds."""
    sync = sync or (lambda: None)
    start = time.perf_counter()
    done = 0
    while done < warmup or (time.perf_counter() - start) * 1e3 < warmup_ms:
        fn()
        sync()
        done += 1
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max(iterations, 1) or time.perf_counter() - start < duration_s:
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def latency_summary(samples_ms: Sequence[float], items_per_run: int = 1) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    total_s = float(a.sum()) / 1e3
    qps = len(a) / total_s if total_s > 0 else float("inf")
    return {"iterations": int(len(a)), "min_ms": float(a.min()), "mean_ms": float(a.mean()),
            "median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "p95_ms": float(np.percentile(a, 95)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "total_s": total_s, "throughput_qps": qps,
            "batch": int(items_per_run), "throughput_items_per_s": qps * items_per_run}


def engine_runner(engine, feeds: Mapping[str, np.ndarray]) -> tuple[Callable[[], Any], Callable[[], None]]:
    """A zero-argument run of ``engine`` on ``feeds`` (torch tensors already on the device), and a sync."""
    import torch

    from kilnrt.network.dtypes import numpy_to_torch

    device = torch.device(engine.device)
    tensors = {k: numpy_to_torch(np.ascontiguousarray(v)).to(device) for k, v in feeds.items()}
    context = engine.create_execution_context()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return (lambda: context.run(tensors)), sync


def safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "output"
