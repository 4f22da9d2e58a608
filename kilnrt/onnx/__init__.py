"""ONNX -> Network: one importer per ONNX op, registered by op type and opset."""
from kilnrt.onnx.parser import check_model, load_model, parse
from kilnrt.onnx.registry import importer, lookup, supported_ops

__all__ = ["parse", "load_model", "check_model", "importer", "lookup", "supported_ops"]
