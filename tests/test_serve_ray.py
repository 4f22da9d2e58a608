"""kilnrt engines on Ray Serve: deployment options (no Ray needed), then a local Ray instance with
two replicas answering KServe v2 over HTTP and Python handle calls like ``engine.run``, bad
requests, and both replicas serving."""
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


@pytest.fixture(scope="module")
def ray_app(tmp_path_factory):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")       # no usage report over the network
    import ray
    from ray import serve

    from kilnrt.serve.launch import free_ports
    from kilnrt.serve.ray_deployment import deploy

    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False,
             configure_logging=False)
    port = free_ports(1)[0]
    try:
        settings = [ModelSettings("digits", DIGITS, max_batch=32, max_queue_delay_us=2000)]
        handles = deploy(settings, RayOptions(replicas=2, max_request_bytes=1 << 20), http_port=port,
                         timing_cache_dir=str(tmp_path_factory.mktemp("timing")))
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
