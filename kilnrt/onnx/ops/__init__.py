"""ONNX op importers, one module per family. A new op is a function in one of these modules."""
from kilnrt.onnx.ops import attention, cast, control, index, loss, math, nn, quantize, reduce, rnn, signal, tensor, vision  # noqa: F401
