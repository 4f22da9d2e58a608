"""KServe v2 gRPC for the Ray Serve replicas (:mod:`kilnrt.serve.ray_deployment`): the servicer
function Ray's gRPC proxy registers (tritonclient's generated one), what makes tritonclient's
messages picklable between Ray's proxy and its replicas, and requests' tensors as numpy arrays.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import math
import sys

# Ray Serve's gRPC proxy imports this by name; it registers tritonclient's generated KServe v2
# servicer (tritonclient.grpc.service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server)
TRITON_SERVICER = "kilnrt.serve.v2_grpc.add_grpc_inference_servicer"

# tritonclient's generated messages say they live in the top-level modules ``grpc_service_pb2`` and
# ``model_config_pb2`` (the names protoc gave them), which do not exist: Ray pickles each request
# from its proxy to a replica by that name, and fails ("Can't pickle <class
# 'grpc_service_pb2.ServerLiveRequest'>: import of module 'grpc_service_pb2' failed").  Those two
# names are made to import tritonclient's modules, when first imported (not here: importing them
# loads the ``inference.*`` protos, and KServe's v2 codec cannot load next to them), and only
# where no such module is found otherwise.
_TRITON_PROTO_MODULES = {"grpc_service_pb2": "tritonclient.grpc.service_pb2",
                         "model_config_pb2": "tritonclient.grpc.model_config_pb2"}


class _TritonProtoAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name in _TRITON_PROTO_MODULES:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(_TRITON_PROTO_MODULES[spec.name])

    def exec_module(self, module) -> None:
        pass


if not any(isinstance(f, _TritonProtoAlias) for f in sys.meta_path):
    sys.meta_path.append(_TritonProtoAlias())


def add_grpc_inference_servicer(servicer, server) -> None:
    """Ray Serve's ``grpc_servicer_functions`` entry: tritonclient's generated
    ``add_GRPCInferenceServiceServicer_to_server`` (importing this module makes its messages
    picklable, above)."""
    from tritonclient.grpc.service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server

    add_GRPCInferenceServiceServicer_to_server(servicer, server)


class GrpcProblem(Exception):
    """A gRPC request refused with ``code`` (a ``grpc.StatusCode`` name) and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


# KServe v2 gRPC: the ``InferTensorContents`` field of each datatype (FP16/BF16 only as raw bytes)
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def grpc_feeds(request) -> dict:
    """The numpy arrays of a ``ModelInferRequest`` (raw_input_contents or typed contents)."""
    import numpy as np
    from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

    feeds = {}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise GrpcProblem("INVALID_ARGUMENT", f"cannot read the request: {len(request.inputs)} inputs but "
                                              f"{len(raw)} raw_input_contents")
    for k, tensor in enumerate(request.inputs):
        shape = [int(d) for d in tensor.shape]
        if tensor.name in feeds:
            raise GrpcProblem("INVALID_ARGUMENT", f"cannot read the request: input {tensor.name!r} is given twice")
        if any(d < 0 for d in shape):
            raise GrpcProblem("INVALID_ARGUMENT", f"cannot read the request: input {tensor.name!r} has shape "
                                                  f"{shape}; dims must not be negative")
        dtype = triton_to_np_dtype(tensor.datatype) if tensor.datatype != "BF16" else None
        if dtype is None:
            raise GrpcProblem("INVALID_ARGUMENT", f"cannot read the request: input {tensor.name!r} has datatype "
                                                  f"{tensor.datatype!r}, which is not read here")
        if raw and tensor.HasField("contents"):
            raise GrpcProblem("INVALID_ARGUMENT", f"cannot read the request: input {tensor.name!r} has both "
                                                  "contents and raw_input_contents")
        try:
            if raw:
                if tensor.datatype == "BYTES":
                    value = deserialize_bytes_tensor(raw[k])
                else:
                    value = np.frombuffer(raw[k], dtype=dtype)
            else:
                field = _CONTENTS.get(tensor.datatype)
                if field is None:
                    raise ValueError(f"datatype {tensor.datatype} is sent only in raw_input_contents")
                value = np.array(list(getattr(tensor.contents, field)), dtype=dtype)
            if value.size != math.prod(shape):
                raise ValueError(f"{value.size} values for {math.prod(shape)} elements")
            feeds[tensor.name] = value.reshape(shape)
        except Exception as exc:  # noqa: BLE001 - whatever cannot be read is the client's error (OverflowError, struct.error, ...)
            raise GrpcProblem("INVALID_ARGUMENT", f"cannot read the request: input {tensor.name!r} "
                                                  f"{tensor.datatype}{shape}: {exc}") from None
    return feeds


def grpc_abort(grpc_context, problem: GrpcProblem, empty):
    """Set ``problem``'s status on Ray's gRPC context (the proxy returns it); ``empty`` back."""
    import grpc

    if grpc_context is None:            # called as a plain method (no Ray proxy): raise instead
        raise problem
    grpc_context.set_code(getattr(grpc.StatusCode, problem.code))
    grpc_context.set_details(problem.message)
    return empty
