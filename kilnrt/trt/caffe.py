"""TensorRT's ``CaffeParser`` over :mod:`kilnrt.caffe` (TensorRT 7/8 API; TensorRT 10 removed it).

    parser = trt.CaffeParser()
    blobs = parser.parse(deploy="deploy.prototxt", model="net.caffemodel", network=network, dtype=trt.float32)
    network.mark_output(blobs.find("prob"))
"""
from __future__ import annotations

from typing import Any

from kilnrt.caffe import BlobNameToTensor, populate
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.trt.strict import Strict, deprecated


class CaffeParser(Strict):
    """``parse(deploy, model, network, dtype)`` fills ``network`` and returns the blob table.

    An unsupported layer or a bad file raises :class:`~kilnrt.errors.KilnError` (TensorRT returns
    None and logs); an unknown layer type is reported before anything is added to the network.
    """

    _TRT_NAME = "CaffeParser"
    _IGNORED = {"protobuf_buffer_size": "kilnrt reads any size", "plugin_factory_v2": "no Caffe plugin layers",
                "plugin_namespace": "no Caffe plugin layers", "error_recorder": "errors are raised as KilnError"}

    def __init__(self) -> None:
        deprecated("CaffeParser", "an ONNX export of the model with OnnxParser")
        self._seal()

    def __enter__(self) -> "CaffeParser":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def parse(self, deploy: Any, model: Any, network: Network, dtype: DataType = DataType.FLOAT) -> BlobNameToTensor:
        """``deploy``: a path to a deploy.prototxt; ``model``: a path to a .caffemodel, or None."""
        return populate(network, deploy, model, dtype)

    def parse_buffer(self, deploy_buffer: Any, model_buffer: Any, network: Network,
                     dtype: DataType = DataType.FLOAT) -> BlobNameToTensor:
        """The same from the files' contents (bytes)."""
        return populate(network, bytes(deploy_buffer), None if model_buffer is None else bytes(model_buffer), dtype)
