"""Serving through KServe's model server (the ``kserve`` package): the same KServe v2 protocol
over HTTP (FastAPI/uvicorn) and gRPC (``inference.GRPCInferenceService``, the service
tritonclient speaks), with kilnrt's own dynamic batcher in front of each engine, Triton's
model-config endpoint and RPC added, a bound on request size, and Prometheus metrics.

This is the fallback where PyTriton cannot run (docs/serving.md says where and why).
"""
from __future__ import annotations

import contextlib
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from kilnrt.serve.batching import ModelRequests
from kilnrt.serve.binary_http import BinaryInfer, RequestProblem, encode_response
from kilnrt.serve.metrics import ServeMetrics
from kilnrt.serve.models import RequestError, ServedModel

log = logging.getLogger("kilnrt.serve")


@contextlib.contextmanager
def _argv_for_kserve() -> Iterator[None]:
    """kserve parses ``sys.argv`` when imported; keep kilnrt's own flags away from it."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "kilnrt"]
    try:
        yield
    finally:
        sys.argv = saved


def import_kserve():
    with _argv_for_kserve():
        import kserve
        import kserve.model_server  # noqa: F401  (the FastAPI app and the parsed defaults)
    return kserve


def _model_class(kserve):
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferResponse

    class Response(InferResponse):
        """KServe's infer response, whose REST form carries NaN and infinities as Triton writes
        them: ``NaN``, ``Infinity``, ``-Infinity`` (rapidjson's kWriteNanAndInfFlag), which
        tritonclient reads back.  KServe writes JSON with orjson, which makes them null (read
        back as NaN, an infinity's sign lost), so a response holding one is written by kilnrt's
        encoder, the one binary-extension requests get (``arrays``: the outputs; ``request``: as
        :func:`~kilnrt.serve.binary_http.parse_request` gives it).  KServe sends those bytes as
        they are, without a content type (it sends its binary responses so too)."""

        def __init__(self, *args, arrays, request, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.arrays = arrays
            self.request = request

        def to_rest(self):
            if all(np.isfinite(v).all() for v in self.arrays.values() if v.dtype.kind == "f"):
                return super().to_rest()
            _, headers, payload = encode_response(self.model_name, self.request, self.arrays)
            json_length = dict(headers).get(b"inference-header-content-length")
            return payload, None if json_length is None else int(json_length)

    class KilnrtModel(kserve.Model):
        """One kilnrt engine as a KServe v2 model."""

        def __init__(self, served: ServedModel, executor: ThreadPoolExecutor, metrics: ServeMetrics) -> None:
            super().__init__(served.name)
            self.served = served
            self.metrics = metrics
            self.requests = ModelRequests(served, instances=served.settings.instances, executor=executor,
                                          metrics=metrics)
            self.ready = True

        def load(self) -> bool:
            self.ready = True
            return True

        def get_input_types(self):
            return self.served.metadata()["inputs"]

        def get_output_types(self):
            return self.served.metadata()["outputs"]

        async def infer(self, feeds, outputs=()):
            """The ``outputs`` named (all where none are) of one request's ``feeds``, through the
            dynamic batcher where there is one; raises ``InvalidInput`` for a request the model
            cannot take, before it runs (counted as refused)."""
            try:
                return await self.requests.infer(feeds, outputs)
            except RequestError as exc:
                raise InvalidInput(exc.message) from None

        async def infer_binary_http(self, feeds, outputs):
            """:meth:`infer` for :class:`~kilnrt.serve.binary_http.BinaryInfer`."""
            try:
                return await self.infer(feeds, outputs)
            except InvalidInput as exc:
                raise RequestProblem(exc.reason) from None

        async def predict(self, payload, headers=None, response_headers=None):
            try:
                feeds = {i.name: i.as_numpy() for i in payload.inputs}
            except Exception as exc:   # data that does not match its declared datatype or shape
                self.metrics.failure(self.name, "invalid_request")
                raise InvalidInput(f"model {self.name!r}: cannot read the request's tensors: {exc}") from None
            outputs = await self.infer(feeds, [o.name for o in payload.request_outputs or ()])
            specs = {t.name: t for t in self.served.outputs}
            infer_outputs = []
            for n, v in outputs.items():
                # raw bytes here; KServe turns them into JSON where a REST client asks for it (an
                # ndarray in ``data`` trips KServe's gRPC encoder, which tests it for truth)
                out = InferOutput(name=n, shape=list(v.shape), datatype=specs[n].datatype)
                out.set_data_from_numpy(v, binary_data=True)
                infer_outputs.append(out)
            # for a response with NaN or infinities (Response): of the outputs a request names, those
            # that say binary_data are binary (as KServe reads them), else binary_data_output says
            request = {"id": payload.id, "binary_default": payload.use_binary_outputs,
                       "outputs": [{"name": o.name, "parameters": {"binary_data": bool(o.binary_data)}}
                                   for o in payload.request_outputs] if payload.request_outputs else None}
            return Response(response_id=payload.id or "", model_name=self.name, infer_outputs=infer_outputs,
                            use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs,
                            arrays=outputs, request=request)

    return KilnrtModel


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 with a JSON error, whether it
    declares its length or streams it (the rest of it is not read)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send, int(declared))
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(seen)
            return message

        async def tracked_send(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge as exc:
            if not started:
                await self._refuse(send, exc.size)

    async def _refuse(self, send, size: int) -> None:
        import json

        body = json.dumps({"error": f"request body of {size} bytes is over the server's limit of "
                                    f"{self.limit} bytes (kilnrt serve --max-request-bytes)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class DefaultJsonContentType:
    """ASGI middleware: an infer request without a content type and without the binary extension's
    ``Inference-Header-Content-Length`` is JSON (tritonclient sends its JSON form so); KServe would
    read such a body as binary and refuse it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") == "POST":
            names = {k.lower() for k, _ in scope.get("headers") or ()}
            if b"content-type" not in names and b"inference-header-content-length" not in names:
                scope = dict(scope, headers=[*scope.get("headers", ()), (b"content-type", b"application/json")])
        return await self.app(scope, receive, send)


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _add_routes(app, models: dict[str, ServedModel]) -> None:
    """Triton's model-configuration endpoint, which KServe lacks."""
    from fastapi.responses import JSONResponse

    async def model_config(model_name: str, model_version: str | None = None):
        model = models.get(model_name)
        if model is None:
            return JSONResponse(status_code=404, content={"error": f"Model with name {model_name} does not exist."})
        return JSONResponse(model.config())

    async def unreadable_request(request, exc):
        # FastAPI answers a body it cannot parse with 422 and {"detail": ...}; the v2 protocol's
        # error is 400 with {"error": "..."}, as Triton sends
        problems = "; ".join(f"{'/'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in exc.errors())
        return JSONResponse(status_code=400, content={"error": f"cannot read the request: {problems}"})

    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(RequestValidationError, unreadable_request)
    app.add_api_route("/v2/models/{model_name}/config", model_config, methods=["GET"])
    app.add_api_route("/v2/models/{model_name}/versions/{model_version}/config", model_config, methods=["GET"])


def _triton_config_messages():
    """Triton's ``ModelConfigRequest`` and ``ModelConfigResponse`` message classes, from the protos
    tritonclient ships, in a descriptor pool of their own: those protos and KServe's both define the
    ``inference`` package's messages, so ``import tritonclient.grpc`` fails ("duplicate symbol") in a
    process that runs KServe's gRPC server.  Each generated ``*_pb2.py`` module adds its proto to the
    default pool as one serialized descriptor; it is read from there."""
    import ast
    import importlib.resources

    from google.protobuf import descriptor_pool, message_factory

    folder = importlib.resources.files("tritonclient") / "grpc"
    pool = descriptor_pool.DescriptorPool()
    for module in ("model_config_pb2.py", "service_pb2.py"):      # service.proto imports model_config.proto
        tree = ast.parse(folder.joinpath(module).read_text())
        pool.AddSerializedFile(next(node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
                                    and getattr(node.func, "attr", None) == "AddSerializedFile"))
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
                 for name in ("ModelConfigRequest", "ModelConfigResponse"))


def _model_config_rpc(models: dict[str, ServedModel]):
    """A gRPC handler for Triton's ``ModelConfig`` RPC of ``inference.GRPCInferenceService``, which
    KServe's servicer lacks: the config ``GET /v2/models/NAME/config`` answers (Triton's JSON form of
    the ``ModelConfig`` message), as that message.  None, with a warning, where tritonclient's protos
    cannot be read (it is not installed, say): the RPC is then UNIMPLEMENTED, as in KServe."""
    import grpc
    from google.protobuf import json_format
    from kserve.errors import ModelNotFound

    try:
        request_class, response_class = _triton_config_messages()
    except Exception as exc:  # noqa: BLE001 - an RPC the server can do without: serve, and say why
        log.warning("gRPC ModelConfig is not served (HTTP GET /v2/models/NAME/config is): tritonclient's protos "
                    "cannot be read: %s: %s", type(exc).__name__, exc)
        return None

    async def model_config(request, context):
        model = models.get(request.name)
        if model is None:
            raise ModelNotFound(request.name)      # NOT_FOUND, through KServe's interceptor
        response = response_class()
        json_format.ParseDict(model.config(), response.config)
        return response

    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        "ModelConfig": grpc.unary_unary_rpc_method_handler(model_config, request_deserializer=request_class.FromString,
                                                           response_serializer=response_class.SerializeToString)})


def _grpc_server_class(handlers):
    """KServe's gRPC server, with ``handlers`` (generic RPC handlers) added to its ``grpc.aio``
    server as it is made: KServe's ``GRPCServer.start`` makes that server (``self._server = ...``),
    adds its servicer and starts it in one go, so the assignment is where to add more."""
    from kserve.protocol.grpc.server import GRPCServer

    class KilnrtGRPCServer(GRPCServer):
        @property
        def _server(self):
            return self.__dict__.get("_aio_server")

        @_server.setter
        def _server(self, server) -> None:
            if server is not None:
                server.add_generic_rpc_handlers(handlers)
            self.__dict__["_aio_server"] = server

    return KilnrtGRPCServer


def run_kserve(models: list[ServedModel], *, http_port: int, grpc_port: int, metrics_port: int | None,
               max_request_bytes: int, workers_per_model: int | None = None) -> None:
    """Serve ``models`` until SIGINT/SIGTERM (blocks)."""
    kserve = import_kserve()
    import kserve.model_server as model_server

    metrics = ServeMetrics()
    if metrics_port:
        metrics.start_http_server(metrics_port)
    threads = sum(m.settings.instances for m in models) + 2
    executor = ThreadPoolExecutor(max_workers=workers_per_model or threads, thread_name_prefix="kilnrt-serve")
    model_class = _model_class(kserve)
    served = [model_class(m, executor, metrics) for m in models]
    app = model_server.app
    app.add_middleware(BinaryInfer, models={m.name: m.infer_binary_http for m in served},
                       refused=lambda name: metrics.failure(name, "invalid_request"))
    app.add_middleware(DefaultJsonContentType)
    app.add_middleware(BodyLimit, limit=max_request_bytes)
    _add_routes(app, {m.name: m for m in models})
    model_config_rpc = _model_config_rpc({m.name: m for m in models})
    if model_config_rpc is not None:
        model_server.GRPCServer = _grpc_server_class((model_config_rpc,))   # what ModelServer.start makes
    model_server.args.grpc_max_receive_message_length = max_request_bytes
    model_server.args.grpc_max_send_message_length = max(max_request_bytes, 64 << 20)
    server = kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, enable_latency_logging=False,
                                enable_docs_url=False, max_threads=4, grace_period=5)
    log.info("KServe model server: HTTP %d, gRPC %d, metrics %s", http_port, grpc_port,
             metrics_port or f"{http_port}/metrics")
    server.start(served)
