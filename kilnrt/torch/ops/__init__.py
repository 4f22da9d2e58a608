"""The built-in ATen importers, one module per family; importing them fills the table."""
from kilnrt.torch.ops import math, tensor, nn, indexing, control, resample  # nn and indexing use tensor's helpers

__all__ = ["control", "indexing", "math", "nn", "resample", "tensor"]
