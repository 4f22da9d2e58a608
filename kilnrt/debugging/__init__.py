"""Precision debugging in the spirit of Polygraphy: compare every intermediate tensor with
ONNX Runtime (:mod:`kilnrt.debugging.layerwise`) and find the layers a reduced-precision
build must keep in FP32 (:mod:`kilnrt.debugging.precision`). See docs/debugging.md."""
