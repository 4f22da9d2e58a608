"""Reading Caffe's files: the text ``deploy.prototxt`` and the binary ``.caffemodel``.

Legacy V1 layers (``layers { type: CONVOLUTION }``) are turned into ``layer`` messages here, so
the rest of the importer sees one kind.  Layers that a TEST-phase net excludes (``include {
phase: TRAIN }``) are dropped, as Caffe drops them.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from kilnrt.caffe import schema
from kilnrt.caffe.layers import unsupported
from kilnrt.errors import ErrorCode, KilnError

# V1's enum names -> the type strings of the current format (the supported ones and a few common)
V1_NAMES = {"CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution", "POOLING": "Pooling",
            "INNER_PRODUCT": "InnerProduct", "RELU": "ReLU", "SIGMOID": "Sigmoid", "TANH": "TanH",
            "SOFTMAX": "Softmax", "CONCAT": "Concat", "ELTWISE": "Eltwise", "DROPOUT": "Dropout",
            "FLATTEN": "Flatten", "SPLIT": "Split", "LRN": "LRN", "POWER": "Power", "DATA": "Data",
            "SOFTMAX_LOSS": "SoftmaxWithLoss", "ACCURACY": "Accuracy"}
TEST = 1
# NVIDIA Caffe's raw_data_type -> how its raw_data bytes read (little-endian, as it writes them)
RAW_DTYPES = {"FLOAT16": "<f2", "FLOAT": "<f4", "DOUBLE": "<f8"}


def _read(source: Any, binary: bool) -> tuple[bytes | str, str]:
    """(content, a name for messages) from a path, bytes or (for a prototxt) its text."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return (data if binary else data.decode("utf-8")), "<bytes>"
    if isinstance(source, str) and not binary and ("{" in source or ":" in source) and not os.path.exists(source):
        return source, "<text>"      # a prototxt's text always holds a "name: value"
    if not isinstance(source, (str, os.PathLike)):
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"expected a path or bytes for a Caffe "
                                                    f"{'model' if binary else 'prototxt'}, got {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"Caffe file {path!r} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    return (data if binary else data.decode("utf-8")), path


def read_deploy(source: Any):
    """A NetParameter from a deploy.prototxt (a path, its text or its bytes)."""
    text, where = _read(source, binary=False)
    try:
        net = text_format.Parse(text, schema.NetParameter())
    except text_format.ParseError as e:
        raise _unreadable(text, where, e) from None
    return _upgrade(net, where)


def _unreadable(text: str, where: str, error: text_format.ParseError) -> KilnError:
    """The error for a prototxt the schema rejects.  A field outside it is most often the parameter
    message of a layer type kilnrt does not support (Crop's ``crop_param``, Slice's ``slice_param``):
    a second, lenient parse that skips unknown fields finds those layers so that the error names
    them and their types, as for any unsupported layer.  That parse only names them."""
    message = str(error).rstrip(".")
    try:
        lenient = _upgrade(text_format.Parse(text, schema.NetParameter(), allow_unknown_field=True), where)
    except (text_format.ParseError, KilnError):
        lenient = None
    found = None if lenient is None else unsupported(
        lenient, f". ({where} does not parse either: {message}; kilnrt's schema holds the fields of the "
                 "supported layer types only)")
    return found or KilnError(ErrorCode.INVALID_MODEL,
                              f"{where}: not a Caffe prototxt kilnrt can read: {message}. kilnrt's schema "
                              "(kilnrt/caffe/schema.py) holds the fields of the supported layers; a field of "
                              "another layer type, or one a deploy file does not need, is not in it")


def read_model(source: Any):
    """A NetParameter from a .caffemodel (a path or its bytes)."""
    data, where = _read(source, binary=True)
    net = schema.NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError as e:
        raise KilnError(ErrorCode.INVALID_MODEL, f"{where}: not a Caffe binary model ({e})") from None
    if not net.layer and not net.layers:
        raise KilnError(ErrorCode.INVALID_MODEL, f"{where}: a .caffemodel with no layers (is it a binary "
                                                 "NetParameter? a prototxt goes in the deploy argument)")
    return _upgrade(net, where)


def _upgrade(net, where: str):
    """V1 ``layers`` become ``layer``; layers excluded from the TEST phase are dropped."""
    if net.layers:
        if net.layer:
            raise KilnError(ErrorCode.INVALID_MODEL, f"{where}: has both 'layer' and legacy 'layers'; use one")
        for old in net.layers:
            new = net.layer.add(name=old.name, bottom=old.bottom, top=old.top, blobs=old.blobs,
                                include=old.include, exclude=old.exclude)
            kind = schema.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"].values_by_number[old.type].name
            new.type = V1_NAMES.get(kind, f"V1:{kind}")
            for field, _, _ in schema.V1_PARAMS:
                if old.HasField(field):
                    getattr(new, field).CopyFrom(getattr(old, field))
        del net.layers[:]
    keep = [layer for layer in net.layer if _in_test_phase(layer, where)]
    del net.layer[:]
    net.layer.extend(keep)
    return net


def _in_test_phase(layer, where: str) -> bool:
    for rule in (*layer.include, *layer.exclude):
        if rule.HasField("min_level") or rule.HasField("max_level") or rule.stage or rule.not_stage:
            raise KilnError(ErrorCode.UNSUPPORTED_NODE_ATTR,
                            f"{where}: include/exclude rules by level or stage are not supported; "
                            "kilnrt keeps a layer by its phase only", layer=layer.name)
    if layer.include:
        return any(not r.HasField("phase") or r.phase == TEST for r in layer.include)
    return not any(not r.HasField("phase") or r.phase == TEST for r in layer.exclude)


def _values(blob, layer: str) -> np.ndarray:
    """A BlobProto's values: ``data``, ``double_data`` or NVIDIA Caffe's ``raw_data`` bytes."""
    if len(blob.data) or len(blob.double_data) or not blob.HasField("raw_data"):
        return np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    kind = schema.BlobProto.DESCRIPTOR.fields_by_name["raw_data_type"].enum_type.values_by_number[
        blob.raw_data_type].name
    dtype = RAW_DTYPES.get(kind)
    if dtype is None:
        raise KilnError(ErrorCode.UNSUPPORTED_NODE_DATATYPE, f"a weight blob stores raw_data of type {kind}; "
                        f"kilnrt reads {', '.join(RAW_DTYPES)} weights", layer=layer)
    if len(blob.raw_data) % np.dtype(dtype).itemsize:
        raise KilnError(ErrorCode.INVALID_MODEL, f"a weight blob's raw_data ({kind}) holds {len(blob.raw_data)} "
                                                 f"bytes, not a whole number of values", layer=layer)
    return np.frombuffer(blob.raw_data, dtype=dtype).astype(np.float32)


def blob_array(blob, layer: str) -> np.ndarray:
    """A BlobProto's values as float32, in the shape it declares (``shape`` or legacy N, C, H, W)."""
    values = _values(blob, layer)
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))
        shape = tuple(d for d in shape if d) or (values.size,)   # legacy blobs left unset dims at 0
    if int(np.prod(shape, dtype=np.int64)) != values.size:
        raise KilnError(ErrorCode.INVALID_MODEL, f"a weight blob declares shape {shape} "
                                                 f"but holds {values.size} values", layer=layer)
    return values.reshape(shape)


def weights_by_layer(model) -> dict[str, list[np.ndarray]]:
    """Each layer's blobs from a .caffemodel's NetParameter, by layer name."""
    return {layer.name: [blob_array(b, layer.name) for b in layer.blobs] for layer in model.layer if layer.blobs}
