"""kilnrt engines on Ray Serve: deployment options (no Ray needed), then a local Ray instance with
two replicas answering KServe v2 over HTTP and gRPC and Python handle calls like ``engine.run``,
bad requests, both replicas serving, and kilnrt's metrics scraped from Ray's Prometheus export."""
from __future__ import annotations

import importlib.util
import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import kilnrt
from kilnrt.errors import KilnError
from kilnrt.serve.config import ModelSettings
from kilnrt.serve.ray_deployment import RayOptions, deployment_options
from kilnrt.testing import assert_close, fresh_seed

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits.onnx"


# ----------------------------------------------------------------------------- options, no Ray
def test_replica_reads_binary_tensors_without_kserves_codec(monkeypatch):
    """A replica as a plain object (no Ray): a tritonclient.http binary request is answered
    with engine.run's outputs, read and written by kilnrt.serve.binary_http; KServe's codec,
    which makes each binary input a Python list first, is not even imported (in this process
    tritonclient's gRPC protos may be loaded already, and KServe's clash with them)."""
    httpclient = pytest.importorskip("tritonclient.http")
    pytest.importorskip("starlette")
    import kilnrt.serve.kserve_backend as kserve_backend
    from kilnrt.serve.ray_deployment import KilnrtReplica

    monkeypatch.setattr(kserve_backend, "import_kserve", lambda: pytest.fail("KServe's codec was used"))
    replica = KilnrtReplica(ModelSettings("digits", DIGITS, device="cpu").as_dict())
    seed = fresh_seed()
    x = np.random.default_rng(seed).standard_normal((3, 1, 8, 8)).astype(np.float32)
    response = _binary_request(replica, x)
    assert response.status_code == 200 and response.headers["kilnrt-replica"] == "local"
    result = httpclient.InferenceServerClient.parse_response_body(
        response.body, header_length=int(response.headers["inference-header-content-length"]))
    assert_close(result.as_numpy("logits"), kilnrt.build(str(DIGITS)).run({"input": x})["logits"], seed=seed)


def _binary_request(replica, x: np.ndarray, outputs=()):
    """POST a tritonclient.http binary request for ``x`` (asking for ``outputs``) to a replica
    object; its response."""
    import asyncio

    import tritonclient.http as httpclient
    from starlette.requests import Request

    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [inp], outputs=[httpclient.InferRequestedOutput(n) for n in outputs] or None)
    headers = [(b"inference-header-content-length", str(header_length).encode()),
               (b"content-length", str(len(body)).encode())]

    async def call():
        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}
        scope = {"type": "http", "method": "POST", "path": "/v2/models/digits/infer", "headers": headers,
                 "query_string": b""}
        return await replica(Request(scope, receive))

    return asyncio.run(call())


def test_replica_refuses_an_unknown_output_before_the_model_runs():
    """Over HTTP (400, naming the output and the model's outputs) and from a handle call (a
    RequestError), before the model runs; a handle call gets the outputs it names."""
    pytest.importorskip("tritonclient.http")
    pytest.importorskip("starlette")
    import asyncio

    from kilnrt.serve.models import RequestError
    from kilnrt.serve.ray_deployment import KilnrtReplica

    replica = KilnrtReplica(ModelSettings("digits", DIGITS, device="cpu").as_dict())
    runs = []
    run_on = replica.model.run_on
    replica.model.run_on = lambda context, feeds: runs.append(len(feeds["input"])) or run_on(context, feeds)
    seed = fresh_seed()
    x = np.random.default_rng(seed).standard_normal((2, 1, 8, 8)).astype(np.float32)
    response = _binary_request(replica, x, outputs=["logits", "probs"])
    assert response.status_code == 400, response.body
    assert "has no output 'probs'; its outputs: logits FP32[-1, 10]" in json.loads(response.body)["error"]
    with pytest.raises(RequestError, match="has no output 'probs'"):
        asyncio.run(replica.infer({"input": x}, ["probs"]))
    assert runs == []
    out = asyncio.run(replica.infer({"input": x}, ["logits"]))
    assert runs == [2] and list(out) == ["logits"]
    assert_close(out["logits"], kilnrt.build(str(DIGITS)).run({"input": x})["logits"], seed=seed)


def test_deployment_options_replicas_gpus_and_autoscaling():
    cpu = ModelSettings("digits", DIGITS, max_batch=32)
    gpu = ModelSettings("resnet", DIGITS, device="cuda")
    opts = deployment_options(cpu, RayOptions(replicas=2))
    assert opts["num_replicas"] == 2 and opts["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert opts["max_ongoing_requests"] == 32 and opts["name"] == "kilnrt-digits"
    # on CUDA: a GPU per replica and, without a count, one replica per GPU of the cluster
    assert deployment_options(gpu, RayOptions(), cluster_gpus=8)["num_replicas"] == 8
    half = deployment_options(gpu, RayOptions(gpus_per_replica=0.5), cluster_gpus=4)
    assert half["num_replicas"] == 8 and half["ray_actor_options"]["num_gpus"] == 0.5
    auto = deployment_options(gpu, RayOptions(autoscaling={"min_replicas": 1, "max_replicas": 4,
                                                           "target_ongoing_requests": 16}), cluster_gpus=4)
    assert auto["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in auto
    with pytest.raises(KilnError, match="the Ray cluster has 0 GPU"):
        deployment_options(gpu, RayOptions(), cluster_gpus=0)
    with pytest.raises(KilnError, match="device cuda needs a share of a GPU"):
        deployment_options(gpu, RayOptions(gpus_per_replica=0), cluster_gpus=1)


@pytest.mark.parametrize("kwargs, message", [
    ({"replicas": 0}, "replicas must be an integer >= 1"),
    ({"replicas": 2, "autoscaling": {"max_replicas": 3}}, "either a replica count or autoscaling"),
    ({"autoscaling": {"max_replica": 3}}, "unknown key(s) max_replica"),
    ({"autoscaling": {"min_replicas": 4, "max_replicas": 2}}, "min_replicas <= max_replicas"),
    ({"gpus_per_replica": -1}, "gpus_per_replica must be a number >= 0"),
])
def test_bad_ray_options_are_named(kwargs, message):
    with pytest.raises(KilnError) as info:
        RayOptions(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("argv, message", [
    (["--replicas", "2"], "--replicas: only with --ray"),
    (["--ray", "--autoscale", "1-3"], "--autoscale '1-3': write MIN:MAX or MIN:MAX:TARGET"),
    (["--ray", "--backend", "kserve"], "--backend kserve and --ray"),
    (["--ray", "--autoscale", "3:1"], "min_replicas <= max_replicas"),
    (["--ray", "--access-token", "t0k"], "Ray Serve has none of Triton's restricted APIs"),
])
def test_serve_ray_flags_are_checked_before_anything_starts(argv, message, capsys):
    from kilnrt.cli.main import main

    assert main(["serve", "--model", f"digits={DIGITS}", *argv]) == 1
    assert message in capsys.readouterr().err.replace("\n", " ")


# ----------------------------------------------------------------------------- a local Ray instance
def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_ray = pytest.mark.skipif(not (_have("ray") and _have("kserve") and _have("starlette")),
                               reason="ray[serve] and kserve are not installed (pip install -e '.[dev]')")


PORTS: dict[str, int] = {}      # the module's Ray instance: its gRPC and metrics export ports


@pytest.fixture(scope="module")
def ray_app(tmp_path_factory):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")       # no usage report over the network
    import ray
    from ray import serve

    from kilnrt.serve.launch import free_ports
    from kilnrt.serve.ray_deployment import deploy

    port, grpc_port, metrics_port = free_ports(3)
    # metrics reported every second (Ray's default: 10 s) on a port of our own, to be scraped
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False,
             configure_logging=False, _metrics_export_port=metrics_port,
             _system_config={"metrics_report_interval_ms": 1000})
    PORTS.update(grpc=grpc_port, metrics=metrics_port)
    try:
        settings = [ModelSettings("digits", DIGITS, max_batch=32, max_queue_delay_us=2000)]
        handles = deploy(settings, RayOptions(replicas=2, max_request_bytes=1 << 20), http_port=port,
                         grpc_port=grpc_port, timing_cache_dir=str(tmp_path_factory.mktemp("timing")))
        yield f"127.0.0.1:{port}", handles["digits"]
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def engine():
    return kilnrt.build(str(DIGITS))


def _post(url: str, body: dict | bytes, headers: dict | None = None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{url}", data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _json_request(x: np.ndarray, datatype: str = "FP32", name: str = "input") -> dict:
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}]}


@needs_ray
@pytest.mark.slow
def test_two_replicas_answer_like_engine_run(ray_app, engine):
    from ray import serve

    url, handle = ray_app
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    status = serve.status().applications["digits"].deployments["kilnrt-digits"]
    assert status.replica_states.get("RUNNING") == 2, status
    # KServe v2 JSON over Ray Serve's HTTP proxy
    x = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    code, headers, body = _post(f"{url}/v2/models/digits/infer", _json_request(x))
    assert code == 200, body[:300]
    out = json.loads(body)["outputs"][0]
    assert out["name"] == "logits" and out["shape"] == [5, 10]
    assert_close(np.array(out["data"], np.float32).reshape(5, 10), engine.run({"input": x})["logits"], seed=seed)
    # tritonclient.http, binary tensors
    if _have("tritonclient"):
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(url)
        assert client.is_server_ready() and client.is_model_ready("digits")
        assert client.get_model_metadata("digits")["inputs"][0]["shape"] == [-1, 1, 8, 8]
        for n in (1, 32):
            x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
            inp = httpclient.InferInput("input", [n, 1, 8, 8], "FP32")
            inp.set_data_from_numpy(x)
            assert_close(client.infer("digits", [inp]).as_numpy("logits"), engine.run({"input": x})["logits"],
                         seed=seed)
    # concurrent handle calls, batched per replica, each answer right; both replicas answer
    xs = [rng.standard_normal((1 + k % 3, 1, 8, 8)).astype(np.float32) for k in range(24)]
    outs = [r.result(timeout_s=60) for r in [handle.infer.remote({"input": x}) for x in xs]]
    for x, out in zip(xs, outs):
        assert_close(out["logits"], engine.run({"input": x})["logits"], seed=seed)
    replicas = {handle.replica.remote().result(timeout_s=30) for _ in range(30)}
    seen = set()

    def post(x):
        code, headers, _ = _post(f"{url}/v2/models/digits/infer", _json_request(x))
        if code == 200:
            seen.add(headers.get("kilnrt-replica"))

    threads = [threading.Thread(target=post, args=(x,)) for x in xs[:16]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(replicas | seen) == 2, f"answered by {replicas | seen}"


@needs_ray
@pytest.mark.slow
def test_bad_requests_get_v2_errors_and_replicas_keep_serving(ray_app, engine):
    url, _ = ray_app
    rng = np.random.default_rng(fresh_seed())
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    cases = [(f"{url}/v2/models/nope/infer", _json_request(x), 404, "Model with name nope does not exist"),
             (f"{url}/v2/models/digits/infer", _json_request(x, name="image"), 400, "has no input 'image'"),
             (f"{url}/v2/models/digits/infer", _json_request(x.astype(np.float64), "FP64"), 400,
              "datatype FP64, expected FP32"),
             (f"{url}/v2/models/digits/infer", _json_request(rng.standard_normal((33, 1, 8, 8))), 400,
              "batch size 33 is outside [1, 32]"),
             (f"{url}/v2/models/digits/infer", {**_json_request(x), "outputs": [{"name": "probs"}]}, 400,
              "has no output 'probs'; its outputs: logits FP32[-1, 10]"),
             (f"{url}/v2/models/digits/infer", b'{"inputs": [{"name": "input", "shape": [1,', 400,
              "cannot read the request"),
             (f"{url}/v2/models/digits/infer", b" " * (2 << 20), 413, "over the server's limit of 1048576 bytes")]
    for where, body, status, message in cases:
        code, _, reply = _post(where, body)
        assert code == status and message in json.loads(reply)["error"], (where, code, reply[:300])
    code, _, reply = _post(f"{url}/v2/models/digits/infer", _json_request(x))
    assert code == 200
    got = np.array(json.loads(reply)["outputs"][0]["data"], np.float32).reshape(2, 10)
    assert_close(got, engine.run({"input": x})["logits"])


needs_grpc = pytest.mark.skipif(not _have("tritonclient.grpc"), reason="tritonclient[grpc] is not installed")


def _grpc_input(x: np.ndarray, name: str = "input", datatype: str = "FP32"):
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


@needs_ray
@needs_grpc
@pytest.mark.slow
def test_grpc_answers_like_http_and_engine_run(ray_app, engine):
    """tritonclient.grpc through Ray Serve's gRPC proxy, without any metadata (one model is one
    application), and with ``application`` named as with several models."""
    import tritonclient.grpc as grpcclient

    url, _ = ray_app
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{PORTS['grpc']}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    meta = client.get_model_metadata("digits", as_json=True)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]
    assert client.get_model_config("digits", as_json=True)["config"]["max_batch_size"] == 32
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    for n in (1, 7, 32):
        x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
        assert np.abs(x).max() > 0
        result = client.infer("digits", [_grpc_input(x)])
        got = result.as_numpy("logits")
        assert got.shape == (n, 10) and result.get_response().model_name == "digits"
        code, _, body = _post(f"{url}/v2/models/digits/infer", _json_request(x))
        assert code == 200
        over_http = np.array(json.loads(body)["outputs"][0]["data"], np.float32).reshape(n, 10)
        assert_close(got, over_http, seed=seed)
        assert_close(got, engine.run({"input": x})["logits"], seed=seed)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    named = client.infer("digits", [_grpc_input(x)], outputs=[grpcclient.InferRequestedOutput("logits")],
                         headers={"application": "digits"})
    assert_close(named.as_numpy("logits"), engine.run({"input": x})["logits"], seed=seed)


@needs_ray
@needs_grpc
@pytest.mark.slow
def test_grpc_bad_requests_get_invalid_argument_with_the_http_message(ray_app, engine):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{PORTS['grpc']}")
    rng = np.random.default_rng(fresh_seed())
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    cases = [("digits", [_grpc_input(x, name="image")], None, "INVALID_ARGUMENT", "has no input 'image'"),
             ("digits", [_grpc_input(x.astype(np.float64), datatype="FP64")], None, "INVALID_ARGUMENT",
              "datatype FP64, expected FP32"),
             ("digits", [_grpc_input(rng.standard_normal((33, 1, 8, 8)).astype(np.float32))], None,
              "INVALID_ARGUMENT", "batch size 33 is outside [1, 32]"),
             ("digits", [_grpc_input(x)], [grpcclient.InferRequestedOutput("probs")], "INVALID_ARGUMENT",
              "has no output 'probs'; its outputs: logits FP32[-1, 10]"),
             ("nope", [_grpc_input(x)], None, "NOT_FOUND", "Model with name nope does not exist")]
    for model, inputs, outputs, status, message in cases:
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, inputs, outputs=outputs)
        assert info.value.status() == f"StatusCode.{status}" and message in info.value.message(), \
            (model, info.value)
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert_close(client.infer("digits", [_grpc_input(x)]).as_numpy("logits"), engine.run({"input": x})["logits"])


def _scrape(port: int) -> dict[tuple[str, str], float]:
    """kilnrt's series on Ray's metrics export port: {(name, 'model=...,reason=...'): value}
    summed over replicas."""
    import re

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = re.match(r"(ray_kilnrt_\w+)\{(.*)\} ([0-9.eE+-]+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        key = ",".join(f"{k}={labels[k]}" for k in ("model", "reason", "le") if k in labels)
        out[(m.group(1), key)] = out.get((m.group(1), key), 0.0) + float(m.group(3))
    return out


@needs_ray
@needs_grpc
@pytest.mark.slow
def test_replicas_count_requests_failures_and_batches_in_rays_prometheus_export(ray_app):
    """Scraped from the local Ray instance's metrics export port (``_metrics_export_port``)."""
    import time

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    url, handle = ray_app
    requests = ("ray_kilnrt_inference_requests_total", "model=digits")
    items = ("ray_kilnrt_inference_items_total", "model=digits")
    failures = ("ray_kilnrt_inference_failures_total", "model=digits,reason=invalid_request")
    batches = ("ray_kilnrt_engine_batch_size_count", "model=digits")
    before = _scrape(PORTS["metrics"])          # once the earlier tests' counts are exported (every 1 s)
    for _ in range(20):
        time.sleep(2.5)
        before, previous = _scrape(PORTS["metrics"]), before
        if before == previous:
            break
    rng = np.random.default_rng(fresh_seed())
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{PORTS['grpc']}")
    for n in (1, 2, 3):                                     # 3 requests, 6 items, over gRPC
        client.infer("digits", [_grpc_input(rng.standard_normal((n, 1, 8, 8)).astype(np.float32))])
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    assert _post(f"{url}/v2/models/digits/infer", _json_request(x))[0] == 200      # 1 request, 4 items
    assert _post(f"{url}/v2/models/digits/infer", _json_request(x, name="image"))[0] == 400
    with pytest.raises(InferenceServerException):
        client.infer("digits", [_grpc_input(x, name="image")])
    handle.infer.remote({"input": x}).result(timeout_s=30)                          # 1 request, 4 items
    want = {requests: 5, items: 14, failures: 2, batches: 1}
    deadline = time.monotonic() + 40
    while True:
        now = _scrape(PORTS["metrics"])
        grown = {k: now.get(k, 0.0) - before.get(k, 0.0) for k in want}
        if all(grown[k] >= v for k, v in want.items()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert grown[requests] == 5 and grown[items] == 14 and grown[failures] == 2, grown
    assert 1 <= grown[batches] <= 5, grown
    assert now.get(("ray_kilnrt_engine_batch_size_bucket", "model=digits,le=+Inf"), 0) == now[batches]


@pytest.mark.skipif(not _have("ray"), reason="ray[serve] is not installed")
def test_app_builder_for_serve_config_files():
    from ray.serve import Application

    from kilnrt.serve.ray_deployment import app_builder

    app = app_builder({"model": f"digits={DIGITS}", "replicas": 2, "max_batch": 16})
    assert isinstance(app, Application)
    with pytest.raises(KilnError, match=r"unknown key\(s\) replica; known: .*model is required"):
        app_builder({"model": f"digits={DIGITS}", "replica": 2})
    with pytest.raises(KilnError, match="no model"):
        app_builder({"replicas": 2})


@pytest.mark.parametrize("case, message", [
    ("negative dim", "dims must not be negative"),
    ("too few values", "values for"),
    ("twice", "is given twice"),
    ("int8 out of range", "cannot read the request"),
    ("contents and raw", "both contents and raw_input_contents"),
])
def test_grpc_inputs_that_cannot_be_read_are_the_clients_error(case, message):
    """``v2_grpc.grpc_feeds`` refuses what it cannot read with INVALID_ARGUMENT (never a bare
    exception, which Ray's proxy would send as INTERNAL with its traceback)."""
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import service_pb2

    from kilnrt.serve.v2_grpc import GrpcProblem, grpc_feeds

    x = np.random.default_rng(fresh_seed()).standard_normal((2, 3)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="m")
    if case == "int8 out of range":
        tensor = request.inputs.add(name="x", datatype="INT8", shape=[2])
        tensor.contents.int_contents.extend([3, 300])
    elif case == "contents and raw":
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
        request.raw_input_contents.append(x.tobytes())
    else:
        shape = {"negative dim": [-1, 3], "too few values": [3, 3]}.get(case, [2, 3])
        request.inputs.add(name="x", datatype="FP32", shape=shape)
        request.raw_input_contents.append(x.tobytes())
        if case == "twice":
            request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
            request.raw_input_contents.append(x.tobytes())
    with pytest.raises(GrpcProblem, match=message) as info:
        grpc_feeds(request)
    assert info.value.code == "INVALID_ARGUMENT"
    good = service_pb2.ModelInferRequest(model_name="m")
    good.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    good.raw_input_contents.append(x.tobytes())
    np.testing.assert_array_equal(grpc_feeds(good)["x"], x)
