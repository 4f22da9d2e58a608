"""Graph optimization passes and the pipeline that orders them."""
from kilnrt.optimize.pipeline import PIPELINE, optimize

__all__ = ["PIPELINE", "optimize"]
