"""kilnrt engines as a Ray Serve deployment: one deployment per model, each replica one engine and
one execution context (and, on CUDA, ``num_gpus`` of a GPU), replicas placed by Ray on any node of
the cluster, a fixed replica count or Ray Serve's autoscaling.

    kilnrt serve --ray --model digits=examples/digits.onnx --replicas 2
    kilnrt serve --ray --model resnet=resnet50.plan --device cuda           # one replica per GPU
    kilnrt serve --ray --model resnet=resnet50.plan --autoscale 1:8 --ray-address auto

or from Python, on the cluster ``ray.init()`` connects to::

    from kilnrt.serve import ModelSettings
    from kilnrt.serve.ray_deployment import RayOptions, deploy
    handles = deploy([ModelSettings("digits", "examples/digits.onnx")], RayOptions(replicas=2))
    handles["digits"].infer.remote({"input": x}).result()                   # -> {"logits": ...}

Clients reach the models through Ray Serve's HTTP proxy with the KServe v2 REST protocol (JSON
and the binary-tensor extension, what ``tritonclient.http`` sends): ``POST
/v2/models/NAME/infer``, ``GET /v2/models/NAME`` (metadata), ``.../ready``, ``.../config``,
``GET /v2/health/live|ready``.  Tensors are read and written by :mod:`kilnrt.serve.binary_http`
(BYTES tensors and other datatypes numpy lacks by KServe's v2 codec), as on the KServe path.

On the gRPC port, Ray Serve's gRPC proxy speaks KServe v2 gRPC (``inference.GRPCInferenceService``,
what ``tritonclient.grpc`` sends), registered with tritonclient's generated servicer function; each
replica implements the RPCs by name (``ModelInfer``, ``ModelMetadata``, ...).  Ray routes a gRPC
call to an application by the ``application`` metadata key, or to the only application there is:
one model is deployed as one application (its HTTP health routes included), so a plain client
works; with several models a client names the model's application
(``tritonclient.grpc``'s ``headers={"application": NAME}``).  Requests that reach one replica
are stacked by kilnrt's dynamic batcher.  Each replica counts requests, refusals and batch sizes
with ``ray.serve.metrics`` (Ray's Prometheus export, ``ray_kilnrt_*``).  See docs/serving.md for
clusters and Kubernetes.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from kilnrt.errors import ErrorCode, KilnError
from kilnrt.serve.config import DEFAULT_MAX_BATCH, ModelSettings
from kilnrt.serve.v2_grpc import TRITON_SERVICER, GrpcProblem, grpc_abort, grpc_feeds

log = logging.getLogger("kilnrt.serve")

AUTOSCALING_KEYS = ("min_replicas", "initial_replicas", "max_replicas", "target_ongoing_requests",
                    "metrics_interval_s", "look_back_period_s", "upscale_delay_s", "downscale_delay_s",
                    "upscaling_factor", "downscaling_factor", "smoothing_factor")


@dataclasses.dataclass
class RayOptions:
    """How every model's deployment is scaled and placed."""

    replicas: int | None = None              # None: one per GPU of the cluster on CUDA, else 1
    autoscaling: dict[str, Any] | None = None   # Ray Serve's autoscaling_config (replaces ``replicas``)
    gpus_per_replica: float | None = None    # None: 1 on CUDA, 0 on the CPU; 0.5 puts two on a GPU
    cpus_per_replica: float = 1.0
    max_ongoing_requests: int | None = None  # per replica; None: the model's max batch (so it can fill one)
    max_request_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.replicas is not None and (isinstance(self.replicas, bool) or not isinstance(self.replicas, int)
                                          or self.replicas < 1):
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"Ray replicas must be an integer >= 1, got {self.replicas!r}")
        if self.autoscaling is not None:
            if self.replicas is not None:
                raise KilnError(ErrorCode.INVALID_ARGUMENT, "give Ray either a replica count or autoscaling, not "
                                                            "both (autoscaling sets the count)")
            unknown = sorted(set(self.autoscaling) - set(AUTOSCALING_KEYS))
            if unknown:
                raise KilnError(ErrorCode.INVALID_ARGUMENT, f"autoscaling: unknown key(s) {', '.join(unknown)}; "
                                                            f"known: {', '.join(AUTOSCALING_KEYS)}")
            low, high = self.autoscaling.get("min_replicas", 1), self.autoscaling.get("max_replicas", 1)
            if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high and high >= 1):
                raise KilnError(ErrorCode.INVALID_ARGUMENT, f"autoscaling: need 0 <= min_replicas <= max_replicas "
                                                            f"and max_replicas >= 1, got {low} and {high}")
        for key in ("gpus_per_replica", "cpus_per_replica"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{key} must be a number >= 0, got {value!r}")


def deployment_options(settings: ModelSettings, options: RayOptions, cluster_gpus: float = 0.0) -> dict[str, Any]:
    """The keyword arguments of ``serve.deployment`` for ``settings`` (``cluster_gpus``: the GPUs
    Ray sees, for one replica per GPU)."""
    gpus = options.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if settings.device == "cuda" else 0.0
    if settings.device == "cpu" and gpus:
        log.warning("model %r: device cpu with %g GPU(s) per replica; the GPUs are reserved but not used",
                    settings.name, gpus)
    if settings.device == "cuda" and not gpus:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"model {settings.name!r}: device cuda needs a share of a GPU "
                                                    "per replica (gpus_per_replica > 0), or Ray hides the GPUs")
    out: dict[str, Any] = {"name": f"kilnrt-{settings.name}",
                           "ray_actor_options": {"num_cpus": options.cpus_per_replica, "num_gpus": gpus}}
    max_batch = settings.max_batch if settings.max_batch is not None else DEFAULT_MAX_BATCH
    out["max_ongoing_requests"] = options.max_ongoing_requests or max(max_batch, 8)
    if options.autoscaling is not None:
        out["autoscaling_config"] = dict(options.autoscaling)
    elif options.replicas is not None:
        out["num_replicas"] = options.replicas
    elif settings.device == "cuda":
        per_gpu = math.floor(cluster_gpus / gpus) if gpus else 0
        if per_gpu < 1:
            raise KilnError(ErrorCode.RUNTIME, f"model {settings.name!r}: the Ray cluster has {cluster_gpus:g} GPU(s), "
                                               f"not enough for one replica of {gpus:g} GPU(s)")
        out["num_replicas"] = per_gpu
    else:
        out["num_replicas"] = 1
    return out


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": message})


class RayMetrics:
    """The KServe path's counters (:class:`kilnrt.serve.metrics.ServeMetrics`, same names) as
    ``ray.serve.metrics``: Ray adds the tags deployment, replica and application, and exports them
    as ``ray_kilnrt_inference_requests_total`` and so on through each node's metrics export port.
    Outside a Ray replica (a plain object in a test) nothing is recorded."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        from kilnrt.serve.metrics import BATCH_BUCKETS

        self.requests = Counter("kilnrt_inference_requests", "inference requests accepted", tag_keys=("model",))
        self.items = Counter("kilnrt_inference_items", "batch items in accepted requests", tag_keys=("model",))
        self.failures = Counter("kilnrt_inference_failures", "requests refused or failed",
                                tag_keys=("model", "reason"))
        self.batches = Histogram("kilnrt_engine_batch_size", "batch size of each engine run (after dynamic "
                                 "batching)", boundaries=list(BATCH_BUCKETS), tag_keys=("model",))

    def request(self, model: str, batch: int) -> None:
        self.requests.inc(1, tags={"model": model})
        self.items.inc(batch, tags={"model": model})

    def failure(self, model: str, reason: str) -> None:
        self.failures.inc(1, tags={"model": model, "reason": reason})

    def batch(self, model: str, size: int) -> None:
        self.batches.observe(size, tags={"model": model})


class _NoMetrics:
    def request(self, model: str, batch: int) -> None: ...
    def failure(self, model: str, reason: str) -> None: ...
    def batch(self, model: str, size: int) -> None: ...


class KilnrtReplica:
    """One replica: one engine, one execution context, a dynamic batcher in front of it, and the
    KServe v2 REST routes under ``/v2/models/NAME``."""

    def __init__(self, settings: dict[str, Any], timing_cache_dir: str | None = None, plan_key: bytes | None = None,
                 max_request_bytes: int = 64 << 20) -> None:
        from pathlib import Path

        from kilnrt.serve.batching import ModelRequests
        from kilnrt.serve.models import ServedModel

        self.settings = ModelSettings(**{**settings, "instances": 1})
        self.model = ServedModel.from_settings(self.settings, Path(timing_cache_dir) if timing_cache_dir else None,
                                               plan_key)
        self.max_request_bytes = max_request_bytes
        self.prefix = f"/v2/models/{self.model.name}"
        self.health = KilnrtHealth([self.model.name])     # one model, one application: /v2 is here too
        try:
            from ray import serve

            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 -- outside Ray (a plain object in a test): no replica id
            self.replica_id = "local"
        self.metrics = RayMetrics() if self.replica_id != "local" else _NoMetrics()
        self.requests = ModelRequests(self.model, instances=1, metrics=self.metrics,
                                      executor=ThreadPoolExecutor(1, thread_name_prefix=f"kilnrt-{self.model.name}"))

    # -- Python callers (a DeploymentHandle) ------------------------------------------------
    async def infer(self, feeds: dict, outputs: Sequence[str] = ()) -> dict:
        """The ``outputs`` named (all where none are) of ``feeds``, batched with other requests;
        raises RequestError, before anything runs, for a request the model cannot take."""
        return await self.requests.infer(feeds, outputs)

    def replica(self) -> str:
        """This replica's id (which replica answered)."""
        return self.replica_id

    # -- HTTP (KServe v2 REST) --------------------------------------------------------------
    async def __call__(self, request):
        from starlette.responses import JSONResponse

        path = request.url.path
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            return await self.health(request)       # /v2, /v2/health/..., another model's name
        rest = path[len(self.prefix):]
        rest = rest.rstrip("/")
        if rest.startswith("/versions/"):                    # /versions/1/infer -> /infer
            rest = "/" + rest.split("/", 3)[3] if rest.count("/") >= 3 else ""
        if request.method == "GET" and rest == "":
            return JSONResponse(self.model.metadata())
        if request.method == "GET" and rest == "/ready":
            return JSONResponse({"name": self.model.name, "ready": True})
        if request.method == "GET" and rest == "/config":
            return JSONResponse(self.model.config())
        if request.method == "POST" and rest == "/infer":
            return await self._infer_http(request)
        return _error(404, f"no route {request.method} {path}; model {self.model.name!r} answers GET "
                           f"{self.prefix}, {self.prefix}/ready, {self.prefix}/config and POST {self.prefix}/infer")

    async def _infer_http(self, request):
        from starlette.responses import Response

        from kilnrt.serve.binary_http import NotReadHere, RequestProblem, encode_response, parse_request, output_names
        from kilnrt.serve.models import RequestError

        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_request_bytes:
            self.metrics.failure(self.model.name, "invalid_request")
            return _error(413, f"request body of {declared} bytes is over the server's limit of "
                               f"{self.max_request_bytes} bytes")
        body = await request.body()
        if len(body) > self.max_request_bytes:          # a chunked body declares no length
            self.metrics.failure(self.model.name, "invalid_request")
            return _error(413, f"request body of {len(body)} bytes is over the server's limit of "
                               f"{self.max_request_bytes} bytes")
        header = request.headers.get("inference-header-content-length")
        try:
            json_length = int(header) if header is not None else len(body)
            if not 0 < json_length <= len(body):
                raise ValueError(f"Inference-Header-Content-Length {json_length} for a body of {len(body)} bytes")
        except ValueError as exc:
            self.metrics.failure(self.model.name, "invalid_request")
            return _error(400, f"cannot read the request: {exc}")
        # read by kilnrt (kilnrt.serve.binary_http).  A datatype it leaves to KServe's codec (BYTES, one
        # numpy lacks) is one no kilnrt engine takes: refused here, never through KServe's codec, whose
        # protos cannot load next to tritonclient's (gRPC would then fail on this replica for good)
        try:
            request_read = parse_request(bytearray(body), json_length)
        except RequestProblem as exc:
            self.metrics.failure(self.model.name, "invalid_request")
            return _error(400, f"cannot read the request: {exc.message}")
        except NotReadHere:
            self.metrics.failure(self.model.name, "invalid_request")
            return _error(400, f"cannot read the request: an input's datatype is not one model "
                               f"{self.model.name!r} takes; its inputs: "
                               + ", ".join(f"{t.name} {t.datatype}" for t in self.model.inputs))
        try:
            outputs = await self.infer(request_read["feeds"], output_names(request_read))
            _, headers, content = encode_response(self.model.name, request_read, outputs)
        except RequestError as exc:
            return _error(400, exc.message)
        except RequestProblem as exc:
            return _error(exc.status, exc.message)
        headers = {k.decode(): v.decode() for k, v in headers if k != b"content-length"}
        headers["kilnrt-replica"] = self.replica_id
        return Response(content, media_type=headers.pop("content-type"), headers=headers)

    # -- gRPC (KServe v2, inference.GRPCInferenceService; Ray's proxy calls these by RPC name) ----
    def _not_found(self, name: str) -> GrpcProblem:
        return GrpcProblem("NOT_FOUND", f"Model with name {name} does not exist (this application serves "
                                        f"{self.model.name!r}; with several models, name the model's application "
                                        "in the gRPC metadata key 'application')")

    async def ServerLive(self, request, grpc_context=None):  # noqa: N802 -- RPC names
        from tritonclient.grpc import service_pb2

        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, grpc_context=None):  # noqa: N802
        from tritonclient.grpc import service_pb2

        return service_pb2.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, grpc_context=None):  # noqa: N802
        from tritonclient.grpc import service_pb2

        from kilnrt import __version__

        return service_pb2.ServerMetadataResponse(name="kilnrt", version=__version__, extensions=[])

    async def ModelReady(self, request, grpc_context=None):  # noqa: N802
        from tritonclient.grpc import service_pb2

        if request.name != self.model.name:
            return grpc_abort(grpc_context, self._not_found(request.name), service_pb2.ModelReadyResponse())
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, grpc_context=None):  # noqa: N802
        from tritonclient.grpc import service_pb2

        if request.name != self.model.name:
            return grpc_abort(grpc_context, self._not_found(request.name), service_pb2.ModelMetadataResponse())
        meta = self.model.metadata()
        tensors = [[service_pb2.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"],
                                                                      shape=t["shape"]) for t in meta[key]]
                   for key in ("inputs", "outputs")]
        return service_pb2.ModelMetadataResponse(name=meta["name"], versions=meta["versions"],
                                                 platform=meta["platform"], inputs=tensors[0], outputs=tensors[1])

    async def ModelConfig(self, request, grpc_context=None):  # noqa: N802
        from google.protobuf import json_format
        from tritonclient.grpc import model_config_pb2, service_pb2

        if request.name != self.model.name:
            return grpc_abort(grpc_context, self._not_found(request.name), service_pb2.ModelConfigResponse())
        config = json_format.ParseDict(self.model.config(), model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
        return service_pb2.ModelConfigResponse(config=config)

    async def ModelInfer(self, request, grpc_context=None):  # noqa: N802
        """KServe v2 ``ModelInfer``: the same checks and batcher as HTTP; outputs as raw bytes."""
        import numpy as np
        from tritonclient.grpc import service_pb2
        from tritonclient.utils import serialize_byte_tensor

        from kilnrt.serve.models import RequestError

        if request.model_name != self.model.name:
            return grpc_abort(grpc_context, self._not_found(request.model_name), service_pb2.ModelInferResponse())
        try:
            if request.ByteSize() > self.max_request_bytes:
                raise GrpcProblem("RESOURCE_EXHAUSTED", f"request of {request.ByteSize()} bytes is over the "
                                                        f"server's limit of {self.max_request_bytes} bytes")
            feeds = grpc_feeds(request)
        except GrpcProblem as problem:
            self.metrics.failure(self.model.name, "invalid_request")
            return grpc_abort(grpc_context, problem, service_pb2.ModelInferResponse())
        try:
            outputs = await self.infer(feeds, [o.name for o in request.outputs])
        except RequestError as exc:
            return grpc_abort(grpc_context, GrpcProblem("INVALID_ARGUMENT", exc.message),
                               service_pb2.ModelInferResponse())
        specs = {t.name: t for t in self.model.outputs}
        response = service_pb2.ModelInferResponse(model_name=self.model.name, model_version=request.model_version,
                                                  id=request.id)
        for name, value in outputs.items():
            datatype = specs[name].datatype
            response.outputs.add(name=name, datatype=datatype, shape=list(value.shape))
            if datatype == "BYTES":
                data = serialize_byte_tensor(np.asarray(value, dtype=np.object_))
                response.raw_output_contents.append(data.item() if data.size else b"")
            else:
                response.raw_output_contents.append(np.ascontiguousarray(value).tobytes())
        if grpc_context is not None:
            grpc_context.set_trailing_metadata([("kilnrt-replica", self.replica_id)])
        return response


class KilnrtHealth:
    """``/v2``: server health and metadata, and a v2 error for models that are not served."""

    def __init__(self, models: list[str]) -> None:
        self.models = sorted(models)

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        from kilnrt import __version__

        path = request.url.path.rstrip("/")
        if path.endswith("/health/live") or path.endswith("/health/ready"):
            return JSONResponse({"live": True} if path.endswith("live") else {"ready": True})
        if path.endswith("/v2") or path == "":
            return JSONResponse({"name": "kilnrt", "version": __version__, "extensions": ["binary_tensor_data"],
                                 "models": self.models})
        if "/models/" in path:
            name = path.split("/models/", 1)[1].split("/")[0]
            return _error(404, f"Model with name {name} does not exist (served: {', '.join(self.models)})")
        return _error(404, f"no route {request.method} {request.url.path}")

    # gRPC, with the metadata ``application: kilnrt-health`` (several models): the server's RPCs
    ServerLive = KilnrtReplica.ServerLive
    ServerReady = KilnrtReplica.ServerReady
    ServerMetadata = KilnrtReplica.ServerMetadata

    async def _no_model(self, request, grpc_context=None):
        from tritonclient.grpc import service_pb2

        name = getattr(request, "model_name", "") or request.name
        return grpc_abort(grpc_context, GrpcProblem("NOT_FOUND", f"Model with name {name} does not exist here; "
                                                                  f"name its application in the gRPC metadata key "
                                                                  f"'application' (served: {', '.join(self.models)})"),
                           service_pb2.ModelInferResponse())

    ModelReady = ModelMetadata = ModelConfig = ModelInfer = _no_model


def build_applications(settings: list[ModelSettings], options: RayOptions, *, timing_cache_dir: str | None = None,
                       plan_key: bytes | None = None, cluster_gpus: float = 0.0, single: bool = False):
    """``[(app name, route prefix, Application)]``: one per model, and ``/v2`` for health; or, with
    ``single`` (one model, alone on the cluster's Serve), the model's application at ``/v2``,
    health included, so that a gRPC client needs no 'application' metadata (its replicas then
    answer the health probes too, which count as requests for autoscaling)."""
    from ray import serve

    apps = []
    single = single and len(settings) == 1
    for s in settings:
        if s.instances != 1:
            log.warning("model %r: instances=%d; under Ray each replica is one execution context, so "
                        "instances is not used (scale with replicas or autoscaling)", s.name, s.instances)
        deployment = serve.deployment(**deployment_options(s, options, cluster_gpus))(KilnrtReplica)
        app = deployment.bind(s.as_dict(), timing_cache_dir, plan_key, options.max_request_bytes)
        apps.append((s.name, "/v2" if single else f"/v2/models/{s.name}", app))
    if single:                         # the model's replicas answer /v2 and /v2/health too
        return apps
    health = serve.deployment(name="kilnrt-health", num_replicas=1,
                              ray_actor_options={"num_cpus": 0})(KilnrtHealth).bind([s.name for s in settings])
    apps.append(("kilnrt-health", "/v2", health))
    return apps


def app_builder(args: dict[str, Any]):
    """A Ray Serve *application builder* for config files (``serve run``, KubeRay's RayService):
    ``import_path: kilnrt.serve.ray_deployment:app_builder`` with ``args``: ``model``
    (``NAME=PATH``, one model per application), and optionally ``replicas``, ``autoscaling`` (a
    dict), ``gpus_per_replica``, ``device``, ``precision``, ``max_batch``, ``timing_cache_dir``.
    Give the application ``route_prefix: /v2/models/NAME``."""
    from kilnrt.serve.config import parse_model_args

    known = {"model", "replicas", "autoscaling", "gpus_per_replica", "cpus_per_replica", "device", "precision",
             "max_batch", "timing_cache_dir", "cluster_gpus"}
    unknown = sorted(set(args) - known)
    if unknown or "model" not in args:
        what = f"unknown key(s) {', '.join(unknown)}" if unknown else "no model"
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"app_builder args: {what}; known: {', '.join(sorted(known))} "
                                                    "(model is required)")
    (settings,) = parse_model_args([args["model"]], device=args.get("device"), precision=args.get("precision"),
                                   max_batch=args.get("max_batch"))
    options = RayOptions(replicas=args.get("replicas"), autoscaling=args.get("autoscaling"),
                         gpus_per_replica=args.get("gpus_per_replica"),
                         cpus_per_replica=args.get("cpus_per_replica", 1.0))
    cluster_gpus = args.get("cluster_gpus")
    if cluster_gpus is None and settings.device == "cuda" and options.replicas is None and not options.autoscaling:
        import ray

        cluster_gpus = ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0
    apps = build_applications([settings], options, timing_cache_dir=args.get("timing_cache_dir"),
                              cluster_gpus=float(cluster_gpus or 0.0))
    return apps[0][2]


def deploy(settings: list[ModelSettings], options: RayOptions | None = None, *, http_host: str = "127.0.0.1",
           http_port: int = 8000, grpc_port: int | None = None, metrics_port: int | None = None,
           address: str | None = None, timing_cache_dir: str | None = None,
           plan_key: bytes | None = None) -> dict[str, Any]:
    """Deploy every model on the Ray cluster at ``address`` (None: the one ``ray.init()`` finds or
    starts); returns a DeploymentHandle per model, once every replica is up.  ``grpc_port``: Ray
    Serve's gRPC proxy speaks KServe v2 gRPC there (None or 0: no gRPC).  Ray starts its proxies
    once per cluster: ports and servicers of a Serve instance already running are kept.
    ``metrics_port``: where a Ray instance started here exports its Prometheus metrics (Ray's
    ``_metrics_export_port``; a cluster joined keeps its own)."""
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    options = options or RayOptions()
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")   # no usage report over the network unless asked
        local = address is None and not os.environ.get("RAY_ADDRESS")
        ray.init(address=address, **({"_metrics_export_port": metrics_port} if local and metrics_port else {}))
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if grpc_port and importlib.util.find_spec("tritonclient") is None:
        log.warning("Ray Serve: no gRPC: its servicer is tritonclient's (pip install 'tritonclient[grpc]'); HTTP only")
        grpc_port = None
    grpc_options = gRPCOptions(port=grpc_port, grpc_servicer_functions=[TRITON_SERVICER]) if grpc_port else None
    serve.start(http_options={"host": http_host, "port": http_port}, grpc_options=grpc_options)
    others = set(serve.status().applications) - {s.name for s in settings} - {"kilnrt-health"}
    single = len(settings) == 1 and not others
    handles = {}
    for name, prefix, app in build_applications(settings, options, timing_cache_dir=timing_cache_dir,
                                                plan_key=plan_key, cluster_gpus=cluster_gpus, single=single):
        handles[name] = serve.run(app, name=name, route_prefix=prefix)
        log.warning("Ray Serve: %s at http://%s:%d%s", name, http_host, http_port, prefix)
    if grpc_port:
        log.warning("Ray Serve: KServe v2 gRPC on port %d%s", grpc_port, "" if single else
                    " (name the model's application in the gRPC metadata key 'application')")
    handles.pop("kilnrt-health", None)
    return handles


def run_ray(settings: list[ModelSettings], options: RayOptions, *, http_port: int, grpc_port: int | None = None,
            metrics_port: int | None = None, address: str | None = None, http_host: str = "0.0.0.0", timing_cache_dir: str | None = None,
            plan_key: bytes | None = None) -> None:
    """``kilnrt serve --ray``: deploy, then serve until SIGINT/SIGTERM."""
    import signal
    import threading

    import ray
    from ray import serve

    deploy(settings, options, http_host=http_host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
           address=address, timing_cache_dir=timing_cache_dir, plan_key=plan_key)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):       # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    states = {n: str(getattr(a.status, "value", a.status)) for n, a in serve.status().applications.items()}
    log.warning("Ray Serve: %s", json.dumps(states))
    try:
        stop.wait()
    finally:
        log.warning("Ray Serve: stopping")
        serve.shutdown()
        ray.shutdown()
