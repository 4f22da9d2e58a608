"""ONNX op importers, one module per family. A new op is a function in one of these modules."""
from kilnrt.onnx.ops import cast, math, nn, reduce, tensor  # noqa: F401
