"""Caffe models in: ``deploy.prototxt`` (text) plus ``.caffemodel`` (binary weights) -> Network.

    network = kilnrt.caffe.parse("deploy.prototxt", "net.caffemodel", outputs=["prob"])
    engine = kilnrt.build(network)

``kilnrt.trt.CaffeParser`` is TensorRT's interface over the same code; docs/trt.md says what
is supported.  The protobuf schema is kilnrt's own (``schema.py``) with Caffe's field numbers.
"""
from kilnrt.caffe.layers import supported_types
from kilnrt.caffe.parser import BlobNameToTensor, parse, populate

__all__ = ["BlobNameToTensor", "parse", "populate", "supported_types"]
