"""The Pythonic entry points: :func:`build` and :func:`load`."""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from kilnrt.builder.buckets import check_bucket_points
from kilnrt.builder import BuilderConfig, BuilderFlag, OptimizationProfile, TimingCache, build_engine
from kilnrt.engine import Engine, load
from kilnrt.errors import ErrorCode, KilnError
from kilnrt.network.graph import Network

ProfileSpec = Mapping[str, Sequence[int] | Sequence[Sequence[int]]]


def _profiles(profiles: Any) -> list[OptimizationProfile]:
    if profiles is None:
        return []
    if isinstance(profiles, (OptimizationProfile, Mapping)):
        profiles = [profiles]
    out = []
    for p in profiles:
        out.append(p if isinstance(p, OptimizationProfile) else OptimizationProfile.from_dict(p))
    return out


def to_network(model: Any) -> Network:
    """A Network from an ONNX path / bytes / ModelProto, or the Network itself."""
    if isinstance(model, Network):
        return model
    from kilnrt.onnx import parse

    return parse(model)


def build(model: Any, *, fp16: bool = False, bf16: bool = False, tf32: bool = True,
          profiles: Any = None, device: str = "cpu", optimization_level: int = 3,
          timing_cache: str | TimingCache | None = None, portable: bool = False,
          workspace: int | None = None, progress: bool = False, verbose: bool = False,
          tactic_buckets: Any = ("min",)) -> Engine:
    """Build an engine from an ONNX model (path, bytes, ModelProto) or a :class:`Network`.

    ``profiles``: for dynamic inputs, ``{"input": (min_shape, opt_shape, max_shape)}`` (or a
    single shape, or a list of such dicts for several profiles).  ``timing_cache``: a path
    (read, then written back) or a :class:`TimingCache`.  ``tactic_buckets``: the points of a
    dynamic profile, besides opt, where each layer's tactics are tuned again ("min", "max"; ``()``
    for opt only; see docs/shapes.md).
    """
    if verbose:
        logging.getLogger("kilnrt").setLevel(logging.DEBUG)
    if device not in ("cpu", "cuda"):
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"device={device!r}; supported: 'cpu', 'cuda'")
    network = to_network(model)
    config = BuilderConfig()
    config.device = device
    config.progress = progress
    config.builder_optimization_level = int(optimization_level)
    config.tactic_buckets = check_bucket_points(tactic_buckets)
    for flag, on in ((BuilderFlag.FP16, fp16), (BuilderFlag.BF16, bf16), (BuilderFlag.TF32, tf32),
                     (BuilderFlag.PORTABLE, portable)):
        (config.set_flag if on else config.clear_flag)(flag)
    if workspace is not None:
        from kilnrt.builder import MemoryPoolType

        config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, workspace)
    for p in _profiles(profiles):
        config.add_optimization_profile(p)
    cache_path = timing_cache if isinstance(timing_cache, str) else None
    if cache_path is not None:
        config.set_timing_cache(TimingCache.load(cache_path))
    elif isinstance(timing_cache, TimingCache):
        config.set_timing_cache(timing_cache)
    engine = build_engine(network, config)
    if cache_path is not None:
        config.timing_cache.save(cache_path)
    return engine


__all__ = ["build", "load", "to_network"]
