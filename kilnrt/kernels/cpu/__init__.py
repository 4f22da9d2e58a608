"""The CPU backend: one kernel per layer kind, in PyTorch CPU ops.

These kernels are also the *reference* implementations: shape inference and constant
folding evaluate them, and every other tactic is tested against them.
"""
from kilnrt.kernels.cpu import (attention, control, conv, index, linalg, norm, plugin, pointwise, quantize, rnn,  # noqa: F401
                                shape, signal, vision)
