"""The CPU backend: one kernel per layer kind, in PyTorch CPU ops.

These kernels are also the *reference* implementations: shape inference and constant
folding evaluate them, and every other tactic is tested against them.
"""
from kilnrt.kernels.cpu import (attention, control, conv, index, linalg, norm, plugin, pointwise, quantize, quantized,  # noqa: F401
                                rnn,
                                shape, signal, vision)
from kilnrt.kernels.cpu import pointwise_region  # noqa: F401,E402  (fused regions: after the kernels its steps use)
