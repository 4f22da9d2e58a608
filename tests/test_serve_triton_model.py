"""kilnrt inside Triton's Python backend: the model repository kilnrt serve writes (config.pbtxt,
plan, model.py), and TritonPythonModel running the requests Triton batched together, checked
against engine.run.  The stub's ``triton_python_backend_utils`` is replaced by a stand-in here, so
this runs without Triton; tests/test_serve.py runs the real server where PyTriton is installed."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import kilnrt
from kilnrt.errors import KilnError
from kilnrt.serve.batching import split_outputs
from kilnrt.serve.config import ModelSettings
from kilnrt.serve.models import ServedModel
from kilnrt.testing import assert_close, fresh_seed

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits.onnx"
pytest.importorskip("tritonclient.grpc", reason="tritonclient writes Triton's model config (pip install -e '.[dev]')")


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _Response:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


def _stub_module():
    """What the stub's ``triton_python_backend_utils`` offers TritonPythonModel."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _Tensor
    pb.InferenceResponse = _Response
    pb.TritonError = lambda message: message
    pb.get_input_tensor_by_name = lambda request, name: _Tensor(name, request[name])
    return pb


@pytest.fixture()
def repository(tmp_path):
    from kilnrt.serve.triton_backend import write_repository

    settings = ModelSettings("digits", DIGITS, max_batch=16, instances=2, device="cpu",
                             preferred_batch_sizes=(8,), pad_batches=True)
    write_repository([ServedModel.from_settings(settings, contexts=False)], tmp_path)
    return tmp_path / "digits"


def _model_config(folder: Path) -> dict:
    """config.pbtxt as Triton hands it to the backend (JSON)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    message = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def test_repository_holds_config_plan_and_model_py(repository):
    config = _model_config(repository)
    assert config["backend"] == "python" and config["max_batch_size"] == 16
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["1", "8", "8"]}]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["10"]}]
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert config["dynamic_batching"] == {"preferred_batch_size": [8], "max_queue_delay_microseconds": "500"}   # uint64: a string in JSON
    settings = json.loads(config["parameters"]["kilnrt_settings"]["string_value"])
    assert Path(settings["path"]) == repository / "1" / "model.plan" and settings["pad_batches"] is True
    namespace: dict = {}
    exec((repository / "1" / "model.py").read_text(), namespace)      # what the stub imports
    from kilnrt.serve.triton_python_model import TritonPythonModel
    assert namespace["TritonPythonModel"] is TritonPythonModel


def test_instance_runs_batched_requests_like_engine_run(repository, monkeypatch):
    from kilnrt.serve.triton_python_model import TritonPythonModel

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _stub_module())
    instance = TritonPythonModel()
    instance.initialize({"model_config": json.dumps(_model_config(repository)), "model_instance_kind": "CPU",
                         "model_instance_device_id": "0", "model_instance_name": "digits_0_0"})
    assert instance.model.padded_batch_sizes == (1, 2, 4, 8, 16) and len(instance.model.contexts) == 1
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    requests = [{"input": rng.standard_normal((n, 1, 8, 8)).astype(np.float32)} for n in (1, 3, 2)]
    engine = kilnrt.build(str(DIGITS))
    sizes = []
    run_on = instance.model.run_on
    monkeypatch.setattr(instance.model, "run_on", lambda c, f: sizes.append(len(f["input"])) or run_on(c, f))
    responses = instance.execute(requests)                           # three requests: one run of 6 rows
    assert sizes == [6] and [r.error for r in responses] == [None] * 3
    for request, response in zip(requests, responses):
        assert_close(response.outputs["logits"], engine.run(request)["logits"], seed=seed)

    def refuse(context, feeds):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(instance.model, "run_on", refuse)
    failed = instance.execute(requests[:2])
    assert [r.error for r in failed] == ["model 'digits': RuntimeError: out of memory"] * 2
    assert all(r.outputs == {} for r in failed)


def test_outputs_without_a_row_per_item_are_not_split():
    rows = {"y": np.arange(12.0).reshape(6, 2), "total": np.ones(2)}
    with pytest.raises(KilnError, match=r"output\(s\) \{'total': \[2\]\} do not have 6 rows"):
        split_outputs(rows, [1, 3, 2])
    parts = split_outputs({"y": rows["y"]}, [1, 3, 2])
    assert [p["y"].tolist() for p in parts] == [[[0, 1]], [[2, 3], [4, 5], [6, 7]], [[8, 9], [10, 11]]]


def test_a_model_whose_batch_dim_is_in_a_later_dim_is_not_batched_dynamically(tmp_path):
    """An output (N, N): Triton's batcher would stack requests and the instance cut the (sum, sum)
    result into rows of the wrong width, so dynamic batching is refused when the repository is
    written; without it the model is written (and each request runs alone)."""
    import onnx
    from onnx import TensorProto, helper

    from kilnrt.serve.triton_backend import write_repository

    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "xt"], ["gram"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("gram", TensorProto.FLOAT, ["n", "n"])])
    path = tmp_path / "gram.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    model = ServedModel.from_settings(ModelSettings("g", path, max_batch=8, device="cpu"), contexts=False)
    with pytest.raises(KilnError, match=r"model 'g' cannot be batched dynamically: .* \{'gram': \['n', 'n'\]\}"):
        write_repository([model], tmp_path / "repo")
    model = ServedModel.from_settings(ModelSettings("g", path, max_batch=8, device="cpu", dynamic_batching=False),
                                      contexts=False)
    write_repository([model], tmp_path / "repo2")
    assert "dynamic_batching" not in _model_config(tmp_path / "repo2" / "g")


def _argmax_model(tmp_path) -> Path:
    """Logits and their argmax: an output of one value per item ([N])."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])
    outs = [helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])]
    nodes = [helper.make_node("ArgMax", ["x"], ["label"], axis=1, keepdims=0), helper.make_node("Relu", ["x"], ["y"])]
    path = tmp_path / "argmax.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 13)]),
              path)
    return path


def test_one_value_per_item_is_declared_as_one_and_reshaped(tmp_path):
    """Triton refuses a tensor without dims; [N] is declared [1] per item, reshaped to none."""
    from kilnrt.serve.triton_backend import write_repository

    model = ServedModel.from_settings(ModelSettings("am", _argmax_model(tmp_path), max_batch=8, device="cpu"),
                                      contexts=False)
    write_repository([model], tmp_path / "repo")
    outputs = {o["name"]: o for o in _model_config(tmp_path / "repo" / "am")["output"]}
    assert outputs["label"]["dims"] == ["1"] and outputs["label"]["data_type"] == "TYPE_INT64"
    assert "reshape" in outputs["label"] and not outputs["label"]["reshape"].get("shape")
    assert outputs["y"]["dims"] == ["5"] and "reshape" not in outputs["y"]


@pytest.mark.parametrize("change, message", [
    ({"data_type": "TYPE_BF16"}, "output 'logits' is BF16, which Triton's Python backend cannot hand the model"),
    ({"data_type": "TYPE_FLOAT8E4M3FN"}, "output 'logits' is FLOAT8E4M3FN"),
])
def test_types_the_python_backend_cannot_take_are_refused(change, message, monkeypatch, tmp_path):
    from kilnrt.serve import triton_backend

    model = ServedModel.from_settings(ModelSettings("digits", DIGITS, device="cpu"), contexts=False)
    config = model.config
    monkeypatch.setattr(model, "config", lambda: {**config(), "output": [{**config()["output"][0], **change}]})
    with pytest.raises(KilnError, match=message.replace("(", r"\(").replace(")", r"\)")):
        triton_backend.write_repository([model], tmp_path)


def test_a_scalar_without_a_batch_dim_is_refused(tmp_path):
    from kilnrt.serve.triton_backend import write_repository

    model = ServedModel.from_settings(ModelSettings("am", _argmax_model(tmp_path), max_batch=0, device="cpu"),
                                      contexts=False)
    model.max_batch = 0                       # as served without a batch dim: 'label' is then a scalar
    model.outputs = [dataclasses.replace(t, shape=()) if t.name == "label" else t for t in model.outputs]
    with pytest.raises(KilnError, match="output 'label' is a scalar in a model without a batch dim"):
        write_repository([model], tmp_path / "repo")


class _Timeout(Exception):
    pass


class _Server:
    """What _wait_ready sees of PyTriton's Triton: ``waits`` short waits time out, then it is ready;
    ``dies_after``: the waits after which it is no longer alive."""

    def __init__(self, waits: int, dies_after: int | None = None):
        self.waits, self.dies_after, self.calls = waits, dies_after, []

    def _wait(self, what):
        self.calls.append(what)
        if len(self.calls) <= self.waits:
            raise _Timeout

    def run(self):
        self._wait("run")

    def connect(self):
        self._wait("connect")

    def is_alive(self):
        return self.dies_after is None or len(self.calls) < self.dies_after


def test_start_waits_in_short_steps_and_stops_when_the_server_dies():
    from kilnrt.serve.triton_backend import _wait_ready

    ready = _Server(waits=2)
    _wait_ready(ready, _Timeout)
    assert ready.calls == ["run", "connect", "connect"]            # started once, then only waited for
    died = _Server(waits=5, dies_after=2)
    with pytest.raises(KilnError, match="exited while loading the models"):
        _wait_ready(died, _Timeout)
    assert died.calls == ["run", "connect"]
    with pytest.raises(KilnError, match="was not ready 0 s after it started"):
        _wait_ready(_Server(waits=5), _Timeout, timeout_s=0)


def test_serving_ends_quietly_on_a_stop_and_with_an_error_when_the_server_dies():
    import signal

    from kilnrt.serve.triton_backend import _serve_until_stopped, _Stop

    class Server:
        def __init__(self, alive_for, on_poll=None):
            self.polls, self.alive_for, self.on_poll = 0, alive_for, on_poll

        def is_alive(self):
            self.polls += 1
            if self.on_poll and self.polls == 2:
                self.on_poll()
            return self.polls <= self.alive_for

    with pytest.raises(KilnError, match="exited while serving"):       # died on its own: exit status 1
        _serve_until_stopped(Server(alive_for=2), _Stop(), poll_s=0)
    stop = _Stop()
    previous = stop.install()
    try:
        assert set(previous) == {signal.SIGTERM, signal.SIGINT}
        server = Server(alive_for=10, on_poll=lambda: signal.raise_signal(signal.SIGTERM))
        _serve_until_stopped(server, stop, poll_s=0)                   # SIGTERM: a stop asked for, no error
        assert stop.asked and server.polls == 2
        signal.raise_signal(signal.SIGTERM)                            # a second one does not cut the stop short
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)            # a job started with '&'
    try:
        previous = _Stop().install()
        assert signal.SIGINT not in previous and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])
    finally:
        signal.signal(signal.SIGINT, ignored)


needs_pytriton = pytest.mark.skipif(importlib.util.find_spec("pytriton") is None,
                                    reason="nvidia-pytriton is not installed (needs numpy<2; docs/serving.md)")


@needs_pytriton
@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_a_model_that_fails_to_load_stops_the_server_at_once(sigint, monkeypatch, tmp_path):
    """With real Triton: an instance whose model.py raises; kilnrt serve stops in seconds (PyTriton
    alone waits its whole timeout), also where SIGINT is ignored (a server started with &)."""
    import signal
    import time

    from kilnrt.serve import triton_backend
    from kilnrt.serve.launch import free_ports
    from kilnrt.serve.triton_backend import pytriton_available

    if pytriton_available():
        pytest.skip(pytriton_available())
    write = triton_backend.write_repository

    def broken(models, folder):
        write(models, folder)
        (folder / "digits" / "1" / "model.py").write_text('raise RuntimeError("broken on purpose")\n')
    monkeypatch.setattr(triton_backend, "write_repository", broken)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if sigint == "ignored" else None
    try:
        model = ServedModel.from_settings(ModelSettings("digits", DIGITS, device="cpu"), contexts=False)
        http, grpc, metrics = free_ports(3)
        start = time.monotonic()
        with pytest.raises(KilnError, match="exited while loading the models"):
            triton_backend.run_triton([model], http_port=http, grpc_port=grpc, metrics_port=metrics)
        assert time.monotonic() - start < 30
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
