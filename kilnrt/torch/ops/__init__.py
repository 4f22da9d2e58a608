"""The built-in ATen importers, one module per family; importing them fills the table."""
from kilnrt.torch.ops import math, tensor, nn  # nn uses tensor's helpers

__all__ = ["math", "nn", "tensor"]
