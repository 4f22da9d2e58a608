"""Builder, BuilderConfig, OptimizationProfile, timing cache and memory planning."""
from kilnrt.builder import refit as _refit  # noqa: F401 - gives the engine its refit folding
from kilnrt.builder.builder import Builder, build_engine
from kilnrt.builder.config import (BuilderConfig, BuilderFlag, MemoryPoolType, OptimizationProfile,
                                   ProfilingVerbosity)
from kilnrt.builder.timing import TimingCache

__all__ = ["Builder", "BuilderConfig", "BuilderFlag", "MemoryPoolType", "OptimizationProfile",
           "ProfilingVerbosity", "TimingCache", "build_engine"]
