"""The builder: Network + BuilderConfig -> Engine.

validate -> optimize (passes) -> infer shapes -> choose a tactic per layer (timing the
candidates on the device, with a timing cache) -> let producers write into their slices of
concatenations (:mod:`kilnrt.builder.concat`) -> plan activation memory -> Engine.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from kilnrt.builder.concat import eliminate_concats, memory_steps
from kilnrt.builder.buckets import bucket_shapes, drop_for_concats, tune_buckets
from kilnrt.builder.config import BuilderConfig, BuilderFlag, OptimizationProfile
from kilnrt.builder.examples import example_inputs, output_format, record_layouts
from kilnrt.builder.int8 import RememberingCalibrator, apply_int8
from kilnrt.builder.memory import plan_memory
from kilnrt.builder.precompile import precompile
from kilnrt.builder.ranges import check_ranges, symbol_ranges
from kilnrt.builder.search import choose_tactic, example_signature, search_for_level
from kilnrt.builder.timing import TimingCache, device_name
from kilnrt.device import out_of_memory
from kilnrt.engine import kernel_cache
from kilnrt.engine.engine import Engine, EngineLayer, IOTensor
from kilnrt.errors import BuildError, ErrorCode, KilnError, NetworkError, ShapeError
from kilnrt.kernels.precision import tf32_mode
from kilnrt.kernels.registry import TacticContext, tactics_for
from kilnrt.kernels.compile_pool import default_workers as default_compile_workers
from kilnrt.network.dtypes import DataType, numpy_to_torch
from kilnrt.network.graph import Network
from kilnrt.network import symbolic
from kilnrt.network.infer import concrete_shapes
from kilnrt.network.layers import QUANTIZED_KINDS, LayerKind

log = logging.getLogger("kilnrt.builder")


class Builder:
    """TensorRT's ``IBuilder``: creates networks, configs and profiles, and builds engines."""

    def __init__(self, logger: Any = None) -> None:
        self.logger = logger
        self.max_threads = None   # TensorRT's: here, the processes that compile kernels (None: all CPUs)

    def create_network(self, flags: int = 0) -> Network:
        return Network()

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    @property
    def platform_has_fast_fp16(self) -> bool:
        return torch.cuda.is_available()

    @property
    def platform_has_fast_int8(self) -> bool:
        """False: INT8 builds work (calibrated or Q/DQ) on 8-bit tensor-core kernels, but a whole
        network is barely faster than in FP16 yet (BERT-base 1.02x on an H200; docs/int8.md)."""
        return False

    @property
    def platform_has_tf32(self) -> bool:
        return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8

    def build_engine_with_config(self, network: Network, config: BuilderConfig) -> Engine:
        return build_engine(network, self._with_threads(config))

    def _with_threads(self, config: BuilderConfig) -> BuilderConfig:
        if self.max_threads is not None and config.compile_workers is None:
            config.compile_workers = int(self.max_threads)
        return config

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
        """Build and serialize; like TensorRT, returns None (and logs the error) on failure."""
        try:
            return build_engine(network, self._with_threads(config)).serialize()
        except KilnError as exc:
            log.error("%s", exc)
            if self.logger is not None and hasattr(self.logger, "log"):
                self.logger.log(getattr(type(self.logger), "ERROR", 1), str(exc))
            return None

    def is_network_supported(self, network: Network, config: BuilderConfig) -> bool:
        try:
            validate_network(network)
            return True
        except KilnError:
            return False


def validate_network(net: Network) -> None:
    if not net.outputs:
        raise NetworkError(ErrorCode.INVALID_NETWORK, "the network has no outputs: call mark_output(tensor)")
    for t in net.inputs:
        if t.dtype is None or t.shape is None:
            raise NetworkError(ErrorCode.INVALID_NETWORK, f"input {t.name!r} needs a dtype and a shape")
    produced = {t.name for t in net.inputs}
    for layer in net.layers:
        for t in layer.inputs:
            if t is not None and t.name not in produced:
                raise NetworkError(ErrorCode.INVALID_NETWORK,
                                   f"layer {layer.name!r} reads {t.name!r} before any layer produces it")
        produced.update(t.name for t in layer.outputs)


def _dynamic(shape) -> bool:
    return any(not isinstance(d, int) or d < 0 for d in shape)


def _profiles(net: Network, config: BuilderConfig) -> list[dict[str, tuple]]:
    out = []
    names = {t.name: t for t in net.inputs}
    for i, prof in enumerate(config.profiles):
        for name in prof.shapes:
            if name not in names:
                raise ShapeError(ErrorCode.INVALID_PROFILE,
                                 f"optimization profile {i} names {name!r}, which is not a network input; "
                                 f"inputs: {', '.join(names)}")
        entry = {}
        for t in net.inputs:
            if t.name in prof.shapes:
                lo, opt, hi = prof.shapes[t.name]
                if len(opt) != len(t.shape):
                    raise ShapeError(ErrorCode.INVALID_PROFILE,
                                     f"optimization profile {i}: input {t.name!r} has rank {len(t.shape)} "
                                     f"(shape {t.shape}), but the profile gives rank {len(opt)} ({opt})")
                for k, d in enumerate(t.shape):
                    if isinstance(d, int) and d >= 0 and not (lo[k] == opt[k] == hi[k] == d):
                        raise ShapeError(ErrorCode.INVALID_PROFILE,
                                         f"optimization profile {i}: input {t.name!r} dim {k} is fixed at {d}, "
                                         f"but the profile gives min/opt/max {lo[k]}/{opt[k]}/{hi[k]}")
                entry[t.name] = (lo, opt, hi)
            elif _dynamic(t.shape):
                raise ShapeError(ErrorCode.INVALID_PROFILE,
                                 f"optimization profile {i} gives no shapes for dynamic input {t.name!r} "
                                 f"{t.shape}; call profile.set_shape({t.name!r}, min, opt, max)")
        out.append(entry)
    return out


def _opt_shapes(net: Network, profiles: list[dict[str, tuple]]) -> dict[str, tuple[int, ...]] | None:
    shapes = {}
    for t in net.inputs:
        if profiles and t.name in profiles[0]:
            shapes[t.name] = tuple(profiles[0][t.name][1])
        elif not _dynamic(t.shape):
            shapes[t.name] = tuple(t.shape)
        else:
            return None
    return shapes


def tactic_context(net: Network, config: BuilderConfig) -> TacticContext:
    device = torch.device(config.device)
    constants = {l.outputs[0].name: numpy_to_torch(l.params.weights).to(device)
                 for l in net.layers if l.kind == LayerKind.CONSTANT}
    return TacticContext(device, constants)


MAX_TENSOR_ELEMENTS = 1 << 40

# flags kilnrt accepts but that change nothing, and what it does instead (warned once each)
UNHONOURED_FLAGS = {
    BuilderFlag.STRICT_TYPES: "kilnrt always obeys the precision set on a layer (layer.precision)",
    BuilderFlag.OBEY_PRECISION_CONSTRAINTS: "kilnrt always obeys the precision set on a layer (layer.precision)",
    BuilderFlag.PREFER_PRECISION_CONSTRAINTS: "kilnrt always obeys the precision set on a layer (layer.precision)",
    BuilderFlag.DEBUG: "use kilnrt compare or a context profiler to look at layers",
    BuilderFlag.DIRECT_IO: "kilnrt's I/O tensors are always in their declared layout",
    BuilderFlag.SPARSE_WEIGHTS: "kilnrt has no structured-sparsity kernels: weights run dense",
}
_WARNED: set = set()


def _warn_unhonoured(flags) -> None:
    for flag in sorted(flags & UNHONOURED_FLAGS.keys(), key=lambda f: f.value):
        if flag not in _WARNED:
            _WARNED.add(flag)
            log.warning("BuilderFlag.%s has no effect in kilnrt: %s", flag.name, UNHONOURED_FLAGS[flag])


def _keep_for_refit(network: Network, net: Network, config: BuilderConfig):
    """With BuilderFlag.REFIT: what the engine keeps to fold new weights (kilnrt.builder.refit)."""
    if BuilderFlag.REFIT not in config.flags:
        return None
    from kilnrt.builder.refit import keep_for_refit, onnx_model_of

    return keep_for_refit(network, net, config.builder_optimization_level, onnx_model_of(network))


def _check_sizes(shapes: dict) -> None:
    """Every tensor's size at the opt shapes is a real size: non-negative dims, fewer than
    2^40 elements (a malformed model's 2^40-wide pads would otherwise overflow the planner)."""
    for name, v in shapes.items():
        if v is None:
            continue
        dims = [int(d) for d in v[0]]
        count = math.prod(dims)
        if any(d < 0 for d in dims) or count >= MAX_TENSOR_ELEMENTS:
            raise BuildError(ErrorCode.INVALID_NETWORK,
                             f"tensor {name!r} would have shape {tuple(dims)} at the profile's opt shapes "
                             f"({count} elements); check the model's shapes and attributes")


def _timing_cache(config: BuilderConfig) -> TimingCache | None:
    """The cache the tactic search reads and fills: the config's, else one for this build only
    (as in TensorRT), so that a layer just like one already timed (a repeated block) takes its
    timings instead of being timed again; None with DISABLE_TIMING_CACHE."""
    if BuilderFlag.DISABLE_TIMING_CACHE in config.flags:
        return None
    return config.timing_cache if config.timing_cache is not None else TimingCache()


def select_tactics(net: Network, config: BuilderConfig, shapes: dict | None, progress: Any = None,
                   ctx: TacticContext | None = None, cache: TimingCache | None = None,
                   layouts: dict | None = None) -> list[EngineLayer]:
    """Each layer's tactic, timed through ``cache`` (None: the config's own, or none with
    DISABLE_TIMING_CACHE).  ``layouts``, where given, is filled with the layout each
    activation's chosen tactic writes (examples.written_layouts), for the bucket points'
    timing."""
    ctx = ctx or tactic_context(net, config)
    cache = cache if cache is not None else _timing_cache(config)
    search = search_for_level(config.builder_optimization_level)
    layers = []
    layouts = {} if layouts is None else layouts   # activation -> the layout its chosen tactic writes
    for layer in net.layers:
        if layer.kind == LayerKind.CONSTANT:
            continue
        candidates = tactics_for(layer, config.device, ctx)
        if not candidates:
            raise BuildError(ErrorCode.NO_TACTIC,
                             f"no {config.device} tactic supports this {layer.kind.value} layer "
                             f"(from ONNX node(s) {', '.join(layer.origin)}) with input dtypes "
                             f"{[t.dtype.name if t is not None and t.dtype else None for t in layer.inputs]}",
                             layer=layer.name)
        chosen, timings = candidates[0], {}
        ins = example_inputs(layer, ctx, shapes, layouts) if shapes is not None and config.device != "cpu" else None
        if ins is not None:
            chosen, timings = choose_tactic(layer, candidates, ctx, ins, cache, config.device, search)
        if ins is not None:
            written = record_layouts(layer, chosen, ctx, ins, layouts)
            if cache is not None and written is not None:
                _remember_formats(cache, layer, ins, config.device, chosen.name, written)
        layers.append(EngineLayer(
            name=layer.name, kind=layer.kind, params=layer.params,
            inputs=[None if t is None else t.name for t in layer.inputs],
            outputs=[t.name for t in layer.outputs], origin=layer.origin, tactic=chosen.name,
            precision=_precision(layer),
            output_dtypes=[t.dtype.name if t.dtype else None for t in layer.outputs],
            output_shapes=[_engine_shape(t) for t in layer.outputs],
            input_dtypes=[t.dtype.name if t is not None and t.dtype else None for t in layer.inputs],
            input_shapes=[None if t is None else _engine_shape(t) for t in layer.inputs],
            timing_ms=timings.get(chosen.name), candidates=timings,
            output_formats=[output_format(layouts.get(t.name)) for t in layer.outputs]))
        if progress is not None:
            progress()
    return layers


def _remember_formats(cache: TimingCache, layer, ins, device: str, tactic: str, written: list) -> None:
    """Keep the layouts the chosen tactic wrote, for a warm build's kernel discovery.  They are
    a hint, so a layer that cannot be keyed is left out rather than failing the build."""
    try:
        cache.formats[TimingCache.key(example_signature(layer, ins), device, tactic)] = written
    except (TypeError, ValueError) as exc:
        log.debug("no timing-cache key for %s: %s", layer.name, exc)


def _precision(layer) -> DataType | None:
    """What the inspector shows as a layer's precision: INT8 or FP8 for the 8-bit layers."""
    if layer.kind in QUANTIZED_KINDS:
        return DataType.FP8 if layer.params.input_type == DataType.FP8 else DataType.INT8
    return layer.precision


def _engine_shape(t) -> tuple | None:
    return None if t.shape is None else tuple(d if isinstance(d, int) else -1 for d in t.shape)


def _low_precision(config: BuilderConfig) -> DataType | None:
    """The reduced precision the builder lowers float32 layers to, if any (GPU only)."""
    wanted = DataType.HALF if BuilderFlag.FP16 in config.flags else (
        DataType.BF16 if BuilderFlag.BF16 in config.flags else None)
    if wanted is not None and config.device == "cpu":
        log.warning("%s was allowed, but the CPU backend runs every layer in FP32", wanted.name)
        return None
    return wanted


def specialize_static_profiles(net: Network, profiles: list[dict[str, tuple]]) -> Network:
    """Fix the dims that the (single) profile pins (min == max), so shape computations fold."""
    if len(profiles) != 1:
        return net
    fixed = {}
    for t in net.inputs:
        lo, _, hi = profiles[0].get(t.name, (None, None, None))
        if lo is not None and _dynamic(t.shape):
            dims = tuple(l if l == h else d for l, h, d in zip(lo, hi, t.shape))
            if dims != tuple(t.shape):
                fixed[t.name] = dims
    if not fixed:
        return net
    clone = net.clone()
    for t in clone.inputs:
        if t.name in fixed:
            t.shape = fixed[t.name]
    return clone


def build_engine(network: Network, config: BuilderConfig | None = None) -> Engine:
    """Build ``network``; with several optimization profiles, each profile is optimized and its
    tactics are chosen on its own (as TensorRT does), and the engine runs the one that the
    execution context's active profile names (:func:`_build_per_profile`)."""
    config = config or BuilderConfig()
    said = None
    try:
        if len(config.profiles) > 1:
            return _build_per_profile(network, config)
        return _build_one(network, config)
    except torch.OutOfMemoryError as exc:   # raised below, once the build's tensors are gone
        said = str(exc)
    raise BuildError(ErrorCode.OUT_OF_MEMORY, out_of_memory(
        said, "while building", "the builder makes example inputs and times tactics at each profile's opt "
        "shapes: build with a smaller opt (or max), or free the GPU memory held elsewhere"))


def _build_per_profile(network: Network, config: BuilderConfig) -> Engine:
    """One engine per profile, held by the first: ``engine.profile_engines[i]`` runs profile i.
    The I/O table keeps a dim fixed only where every profile fixes it to the same size."""
    import copy

    validate_network(network)
    profiles = _profiles(network, config)   # all of them checked before any build
    t0 = time.perf_counter()
    engines = []
    calibrator = RememberingCalibrator(config.int8_calibrator) if config.int8_calibrator is not None else None
    for prof in config.profiles:
        one = copy.copy(config)
        one.profiles = [prof]
        one.int8_calibrator = calibrator
        engines.append(_build_one(network, one))
    main = engines[0]
    main.profiles = profiles
    main.profile_engines = engines
    for sub in engines[1:]:
        sub.profiles = profiles
    for k, io in enumerate(main.io):
        others = [e.io[k] for e in engines[1:]]
        io.shape = tuple(d if all(o.shape[i] == d for o in others) else -1 for i, d in enumerate(io.shape))
        if io.mode == "input":
            io.symbolic = tuple(network.tensors[io.name].shape)
    main.build_info["seconds"] = round(time.perf_counter() - t0, 3)
    main.build_info["profiles"] = [{"layers": len(e.layers), "seconds": e.build_info.get("seconds")}
                                   for e in engines]
    return main


def _build_one(network: Network, config: BuilderConfig) -> Engine:
    from kilnrt.optimize import optimize
    from kilnrt.optimize.passes.quantization import quantize_once

    t0 = time.perf_counter()
    since = kernel_cache.snapshot()
    validate_network(network)
    search_for_level(config.builder_optimization_level)  # a bad level fails before any work
    _warn_unhonoured(config.flags)
    profiles = _profiles(network, config)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise BuildError(ErrorCode.INVALID_ARGUMENT, "device 'cuda' was asked for, but no CUDA GPU is available")
    layers_in = len(network.layers)
    passes: list = []
    net = specialize_static_profiles(network, profiles)
    ranges = symbol_ranges(net, profiles)
    if ranges:   # inference resolves the Min/Max/Piecewise dims the ranges decide
        net = net.clone() if net is network else net
        net.symbol_ranges = ranges
        check_ranges(net, ranges)
    refit = _keep_for_refit(network, net, config)
    net = optimize(net, config.builder_optimization_level, report=passes)
    net, int8, quantization = apply_int8(net, config, profiles)
    if int8 and int8.get("calibrated_layers"):
        net = optimize(net, 0)   # the float weights the INT8 layers replaced are dead now
    low = _low_precision(config)
    if low is not None:
        from kilnrt.optimize.passes.precision import lower_precision

        net = lower_precision(net, low)
        net = optimize(net, 0)
    once: dict = {}
    net = quantize_once(net, once)   # no 8-bit layer: the network as it is
    if int8:
        int8["quantized_once"] = once.get("quantize_once", 0)
    net.infer()
    opt = _opt_shapes(net, profiles)
    shapes = concrete_shapes(net, opt) if opt is not None else None
    if shapes is not None:
        _check_sizes(shapes)

    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(1 for l in net.layers if l.kind != LayerKind.CONSTANT), desc="kilnrt: tactics",
                   unit="layer", leave=False)
    points = bucket_shapes(net, profiles, config.tactic_buckets, config.builder_optimization_level) \
        if shapes is not None and config.device != "cpu" else []
    buckets = None
    phases = {"optimize_s": round(time.perf_counter() - t0, 2)}
    try:
        with tf32_mode(BuilderFlag.TF32 in config.flags):
            ctx = tactic_context(net, config)
            t1 = time.perf_counter()
            workers = config.compile_workers if config.compile_workers is not None else default_compile_workers()
            cache = _timing_cache(config)
            precompiled = precompile(net, config, shapes, ctx, search_for_level(config.builder_optimization_level),
                                     cache, workers)
            phases["compile_s"] = round(time.perf_counter() - t1, 2)
            t1 = time.perf_counter()
            layouts: dict = {}
            layers = select_tactics(net, config, shapes, (lambda: bar.update(1)) if bar else None, ctx, cache,
                                    layouts)
            phases["tactics_s"] = round(time.perf_counter() - t1, 2)
            if len(points) > 1:
                buckets = tune_buckets(net, layers, ctx, points, cache, config.device,
                                       search_for_level(config.builder_optimization_level), layouts)
    finally:
        if bar is not None:
            bar.close()

    constants = {l.outputs[0].name: l.params.weights for l in net.layers if l.kind == LayerKind.CONSTANT}
    io_names = {t.name for t in net.inputs} | {t.name for t in net.outputs}
    concats = eliminate_concats(layers, config.device, io_names | set(constants))
    drop_for_concats(layers)
    memory = None
    if shapes is not None:
        sizes = {name: (None if v is None else int(np.prod(v[0], dtype=np.int64)) * v[1].itemsize)
                 for name, v in shapes.items()}
        memory = plan_memory(memory_steps(layers), sizes, io_names | set(constants))
    io = []
    for t in net.inputs:
        io.append(IOTensor(t.name, "input", t.dtype, tuple(d if isinstance(d, int) else -1 for d in t.shape),
                           tuple(t.shape)))
    for t in net.outputs:
        shape = t.shape if t.shape is not None else ()
        if t.dtype is None:
            probe = shapes.get(t.name) if shapes else None
            if probe is None:
                raise BuildError(ErrorCode.INVALID_NETWORK, f"the data type of output {t.name!r} could not be inferred")
            t._dtype = probe[1]
        io.append(IOTensor(t.name, "output", t.dtype,
                           tuple(d if isinstance(d, int) else -1 for d in shape) if t.shape is not None else (-1,),
                           tuple(shape)))
    tensors = {}
    for layer in net.layers:
        for t in layer.outputs:
            concrete = shapes.get(t.name) if shapes else None
            dims = t.symbolic_shape
            tensors[t.name] = {"dtype": t.dtype.name if t.dtype else None,
                               "shape": None if t.shape is None else list(t.shape),
                               "opt_shape": list(concrete[0]) if concrete else None,
                               "dims": None if dims is None else [symbolic.to_tree(d) for d in dims]}
    build_info = {
        "seconds": round(time.perf_counter() - t0, 3), "layers_in": layers_in,
        "layers_out": len(layers), "constants": len(constants), "passes": passes,
        "optimization_level": config.builder_optimization_level, "concat_elimination": concats,
        "tactic_buckets": buckets, "int8": int8, "phases": phases, "parallel_compile": precompiled,
        "flags": sorted(f.value for f in config.flags),
        "timing_cache": None if config.timing_cache is None else
        {"hits": config.timing_cache.hits, "misses": config.timing_cache.misses},
    }
    engine = Engine(name=network.name, device=config.device, device_name=device_name(config.device), io=io,
                    layers=layers,
                    bucket_shapes=points if any(l.bucket_tactics for l in layers) else None, constants=constants, profiles=profiles, memory=memory, build_info=build_info,
                    tensors=tensors, portable=BuilderFlag.PORTABLE in config.flags,
                    kernels=kernel_cache.collect(since) if config.device == "cuda" else {})
    if refit is not None:
        refit.low_precision = low
        refit.quantization = quantization
        engine.refit_source = refit
    log.info("built %s: %d layers -> %d engine layers in %.2f s", network.name, layers_in, len(layers),
             build_info["seconds"])
    return engine
