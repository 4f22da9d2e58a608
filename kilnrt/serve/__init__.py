"""Serving kilnrt engines: Triton Inference Server through PyTriton (KServe's model server where
PyTriton cannot run), KServe v2 over HTTP and gRPC, dynamic batching; Ray Serve for more than one
machine.  See docs/serving.md."""
from kilnrt.serve.config import ModelSettings, parse_model_args
from kilnrt.serve.models import RequestError, ServedModel, load_engine, load_models
from kilnrt.serve.server import choose_backend, serve

__all__ = ["ModelSettings", "parse_model_args", "RequestError", "ServedModel", "load_engine", "load_models",
           "choose_backend", "serve"]
