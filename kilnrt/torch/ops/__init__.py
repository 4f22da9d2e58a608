"""The built-in ATen importers, one module per family; importing them fills the table."""
from kilnrt.torch.ops import math, nn, tensor

__all__ = ["math", "nn", "tensor"]
