"""BuilderConfig, its flags, memory pools and optimization profiles (TensorRT's names)."""
from __future__ import annotations

import enum
from typing import Mapping, Sequence

from kilnrt.device import default_device
from kilnrt.errors import ErrorCode, ShapeError


class BuilderFlag(enum.Enum):
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    FP8 = "fp8"
    TF32 = "tf32"
    STRICT_TYPES = "strict_types"
    OBEY_PRECISION_CONSTRAINTS = "obey_precision_constraints"
    PREFER_PRECISION_CONSTRAINTS = "prefer_precision_constraints"
    DEBUG = "debug"
    REFIT = "refit"
    PORTABLE = "portable"           # a plan that loads on any device of its kind (no device check)
    DIRECT_IO = "direct_io"
    SPARSE_WEIGHTS = "sparse_weights"
    DISABLE_TIMING_CACHE = "disable_timing_cache"


class MemoryPoolType(enum.Enum):
    WORKSPACE = "workspace"
    DLA_MANAGED_SRAM = "dla_managed_sram"
    DLA_LOCAL_DRAM = "dla_local_dram"
    DLA_GLOBAL_DRAM = "dla_global_dram"
    TACTIC_DRAM = "tactic_dram"


class ProfilingVerbosity(enum.Enum):
    LAYER_NAMES_ONLY = "layer_names_only"
    DETAILED = "detailed"
    NONE = "none"


class OptimizationProfile:
    """For each dynamic input, the (min, opt, max) shapes an engine must accept."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, input: str, min: Sequence[int], opt: Sequence[int], max: Sequence[int]) -> None:
        lo, mid, hi = (tuple(int(d) for d in s) for s in (min, opt, max))
        if not (len(lo) == len(mid) == len(hi)):
            raise ShapeError(ErrorCode.INVALID_PROFILE,
                             f"profile for {input!r}: min {lo}, opt {mid} and max {hi} must have the same rank")
        for a, b, c in zip(lo, mid, hi):
            if not (0 <= a <= b <= c):
                raise ShapeError(ErrorCode.INVALID_PROFILE,
                                 f"profile for {input!r}: need 0 <= min <= opt <= max in every dim; "
                                 f"got min {lo}, opt {mid}, max {hi}")
        self.shapes[input] = (lo, mid, hi)

    def get_shape(self, input: str) -> list[tuple[int, ...]]:
        return list(self.shapes.get(input, ()))

    @classmethod
    def from_dict(cls, shapes: Mapping[str, Sequence[Sequence[int]]]) -> "OptimizationProfile":
        p = cls()
        for name, value in shapes.items():
            if len(value) == 3 and not isinstance(value[0], int):
                p.set_shape(name, *value)
            else:
                p.set_shape(name, value, value, value)
        return p

    def __bool__(self) -> bool:  # an empty profile is still a profile
        return True

    def __repr__(self) -> str:
        return f"OptimizationProfile({self.shapes})"


class BuilderConfig:
    """How to build: precisions allowed, memory limits, profiles, optimization level, timing cache."""

    def __init__(self) -> None:
        self.flags: set[BuilderFlag] = {BuilderFlag.TF32}
        self.memory_pool_limits: dict[MemoryPoolType, int] = {}
        self.profiles: list[OptimizationProfile] = []
        self.builder_optimization_level = 3
        self.device = default_device()   # CUDA when a GPU is visible (KILNRT_DEVICE overrides)
        self.timing_cache = None
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.avg_timing_iterations = 1
        self.int8_calibrator = None
        # INT8: keep the most sensitive layers in float until the outputs' relative L2 error on a
        # held-back calibration batch is at most this (None: quantize every layer with a range)
        self.int8_accuracy_budget: float | None = None
        self.progress = False
        # processes that compile Triton kernels in parallel before timing (kilnrt/builder/precompile.py);
        # None: KILNRT_COMPILE_WORKERS, else every CPU this process may use; 0 or 1: compile on first launch
        self.compile_workers = None
        # profile points (besides opt) where each layer's tactics are timed again, and a faster
        # choice kept for input shapes nearer that point (kilnrt.builder.buckets)
        self.tactic_buckets: tuple[str, ...] = ("min",)

    # TensorRT's methods
    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        if size < 0:
            raise ValueError(f"memory pool limit must be >= 0 bytes, got {size}")
        self.memory_pool_limits[pool] = int(size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self.memory_pool_limits.get(pool, 1 << 62)

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def set_timing_cache(self, cache, ignore_mismatch: bool = False) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache

    def create_timing_cache(self, blob: bytes = b""):
        from kilnrt.builder.timing import TimingCache

        return TimingCache.deserialize(blob) if blob else TimingCache()
