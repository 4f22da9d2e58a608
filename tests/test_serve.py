"""kilnrt serve: model settings, request checks and the dynamic batcher on their own; then a real
server (KServe's model server, and Triton through PyTriton where it is installed) answering
tritonclient over HTTP and gRPC, bad requests, and concurrent clients."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import kilnrt
from kilnrt.errors import KilnError
from kilnrt.serve.batching import DynamicBatcher
from kilnrt.serve.config import ModelSettings, parse_model_args
from kilnrt.serve.models import RequestError, ServedModel
from kilnrt.testing import assert_close, fresh_seed

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits.onnx"


@pytest.fixture(scope="module")
def digits_model():
    return ServedModel.from_settings(ModelSettings("digits", DIGITS, max_batch=32, instances=2))


def _images(rng, n):
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32)


# ----------------------------------------------------------------------------- settings
def test_model_arg_file_folder_and_repository(tmp_path):
    (only,) = parse_model_args([f"digits={DIGITS}"], instances=3)
    assert (only.name, only.path, only.instances, only.dynamic_batching) == ("digits", DIGITS, 3, True)
    repo = tmp_path / "repo"
    for name, config in (("a", {"max_batch": 8, "dynamic_batching": {"max_queue_delay_us": 100,
                                                                       "preferred_batch_sizes": [4, 8]},
                                "instances": 2}),
                         ("b", {"dynamic_batching": False, "precision": "fp16"})):
        (repo / name).mkdir(parents=True)
        (repo / name / "model.onnx").write_bytes(DIGITS.read_bytes())
        (repo / name / "config.json").write_text(json.dumps(config))
    a, b = parse_model_args([str(repo)], instances=5)
    assert (a.name, a.max_batch, a.max_queue_delay_us, a.preferred_batch_sizes, a.instances) == \
        ("a", 8, 100, (4, 8), 2)          # config.json wins over the command line
    assert (b.name, b.dynamic_batching, b.precision, b.instances) == ("b", False, "fp16", 5)
    (single,) = parse_model_args([f"other={repo / 'a'}"])
    assert single.name == "other" and single.max_batch == 8


@pytest.mark.parametrize("config, message", [
    ({"max_batch": -1}, "max_batch must be an integer >= 0"),
    ({"instances": 0}, "instances must be an integer >= 1"),
    ({"precision": "int4"}, "precision 'int4'; supported: fp32, fp16, bf16"),
    ({"batching": True}, "unknown key(s) batching"),
    ({"dynamic_batching": {"delay": 1}}, "dynamic_batching: unknown key(s) delay"),
])
def test_bad_model_config_is_named(tmp_path, config, message):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.onnx").write_bytes(DIGITS.read_bytes())
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(KilnError, match=".*" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_model_args([f"m={tmp_path / 'm'}"])


def test_bad_model_args(tmp_path):
    with pytest.raises(KilnError, match="does not exist"):
        parse_model_args(["x=nowhere.onnx"])
    with pytest.raises(KilnError, match="a file needs a name"):
        parse_model_args([str(DIGITS)])
    with pytest.raises(KilnError, match="given twice"):
        parse_model_args([f"d={DIGITS}", f"d={DIGITS}"])


# ----------------------------------------------------------------------------- the served model
def test_served_model_batches_to_profile_and_matches_engine(digits_model, tmp_path):
    assert digits_model.max_batch == 32
    assert digits_model.engine.profiles[0]["input"][2] == (32, 1, 8, 8)
    meta = digits_model.metadata()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert digits_model.config()["max_batch_size"] == 32
    seed = fresh_seed()
    x = _images(np.random.default_rng(seed), 5)
    reference = kilnrt.build(str(DIGITS)).run({"input": x})["logits"]
    assert_close(digits_model.infer({"input": x})["logits"], reference, seed=seed)
    # a plan keeps its profile's max batch; asking for more is refused
    plan = tmp_path / "digits.plan"
    digits_model.engine.save(str(plan))
    assert ServedModel.from_settings(ModelSettings("p", plan)).max_batch == 32
    with pytest.raises(KilnError, match="max_batch 64 is above the engine's profile, whose batch dim goes up to 32"):
        ServedModel.from_settings(ModelSettings("p", plan, max_batch=64))


def test_padded_batches_run_at_few_sizes_with_unpadded_results():
    """On CUDA by default (here asked for on the CPU): a batch runs padded up to a power of two
    (or max batch, or a preferred size), and its results are those of the unpadded rows."""
    model = ServedModel.from_settings(ModelSettings("d", DIGITS, max_batch=24, preferred_batch_sizes=(12,),
                                                    pad_batches=True))
    assert model.padded_batch_sizes == (1, 2, 4, 8, 12, 16, 24)
    assert ServedModel.from_settings(ModelSettings("d", DIGITS, device="cpu")).padded_batch_sizes == ()
    assert ServedModel.from_settings(ModelSettings("d", DIGITS, device="cpu", max_batch=0,
                                                   pad_batches=True)).padded_batch_sizes == ()
    seen = []
    context = model.contexts[0]                   # the only instance
    plain_run = context.run
    context.run = lambda feeds: seen.append(feeds["input"].shape[0]) or plain_run(feeds)
    seed = fresh_seed()
    reference = kilnrt.build(str(DIGITS))
    for n, padded in ((3, 4), (5, 8), (9, 12), (13, 16), (17, 24), (24, 24), (1, 1)):
        x = _images(np.random.default_rng(seed + n), n)
        out = model.infer({"input": x})["logits"]
        assert seen[-1] == padded and out.shape[0] == n
        assert_close(out, reference.run({"input": x})["logits"], seed=seed)
    # warm-up (on CUDA at start): every padded size once on every instance
    assert model.warm_up() == 7 and seen[-7:] == [1, 2, 4, 8, 12, 16, 24]
    assert ServedModel.from_settings(ModelSettings("d", DIGITS, device="cpu")).warm_up() == 0
    with pytest.raises(KilnError, match="pad_batches must be true or false"):
        ModelSettings("d", DIGITS, pad_batches="yes")


def test_padding_only_where_every_output_is_one_row_per_item(tmp_path, caplog):
    """A model with an output summed over the batch is not padded (the padding's rows would
    count); a plan whose profile starts at batch 4 pads up to 4 at least; a warm-up run that
    fails is logged and the model still serves."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    outs = [helper.make_tensor_value_info("total", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("same", TensorProto.FLOAT, ["n", 4])]
    nodes = [helper.make_node("ReduceSum", ["x", "zero"], ["total"], keepdims=0),
             helper.make_node("Relu", ["x"], ["same"])]
    path = tmp_path / "sum.onnx"
    zero = onnx.numpy_helper.from_array(np.array([0], np.int64), "zero")
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], outs, [zero]),
                                opset_imports=[helper.make_opsetid("", 13)]), path)
    with caplog.at_level("WARNING", logger="kilnrt.serve"):
        summed = ServedModel.from_settings(ModelSettings("s", path, pad_batches=True, device="cpu"))
    assert summed.padded_batch_sizes == () and "batches are not padded" in caplog.text
    feeds = {"x": np.random.default_rng(fresh_seed()).standard_normal((3, 4)).astype(np.float32)}
    np.testing.assert_allclose(summed.infer(feeds)["total"], feeds["x"].sum(0), rtol=1e-5, atol=1e-6)

    # an unnamed batch dim (None in ONNX): the outputs' first dim is the builder's symbol for it
    unnamed = tmp_path / "unnamed.onnx"
    onnx.save(helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])]), opset_imports=[helper.make_opsetid("", 13)]),
        unnamed)
    assert ServedModel.from_settings(ModelSettings("u", unnamed, pad_batches=True, device="cpu",
                                                   max_batch=8)).padded_batch_sizes == (1, 2, 4, 8)

    plan = tmp_path / "digits4.plan"
    kilnrt.build(str(DIGITS), profiles={"input": [(4, 1, 8, 8), (8, 1, 8, 8), (32, 1, 8, 8)]}).save(str(plan))
    model = ServedModel.from_settings(ModelSettings("p", plan, pad_batches=True, device="cpu"))
    assert model.padded_batch_sizes == (4, 8, 16, 32)
    seed = fresh_seed()
    x = _images(np.random.default_rng(seed), 1)                 # below the profile: padded up to it
    assert_close(model.infer({"input": x})["logits"], kilnrt.build(str(DIGITS)).run({"input": x})["logits"], seed=seed)

    context = model.contexts[0]
    plain_run = context.run
    context.run = lambda feeds: (_ for _ in ()).throw(RuntimeError("refused")) \
        if feeds["input"].shape[0] == 8 else plain_run(feeds)
    with caplog.at_level("WARNING", logger="kilnrt.serve"):
        assert model.warm_up() == 1                              # batch 4 ran, batch 8 failed: the rest skipped
    assert "warm-up at batch 8 failed" in caplog.text


@pytest.mark.parametrize("feeds, message", [
    ({"image": np.zeros((1, 1, 8, 8), np.float32)}, "has no input 'image'; its inputs: input FP32[-1, 1, 8, 8]"),
    ({}, "input(s) 'input' missing"),
    ({"input": np.zeros((1, 1, 8, 8), np.float64)}, "datatype FP64, expected FP32"),
    ({"input": np.zeros((1, 8, 8), np.float32)}, r"shape [1, 8, 8], expected [-1, 1, 8, 8]"),
    ({"input": np.zeros((2, 1, 8, 9), np.float32)}, r"shape [2, 1, 8, 9], expected"),
    ({"input": np.zeros((33, 1, 8, 8), np.float32)}, r"batch size 33 is outside [1, 32]"),
    ({"input": np.zeros((0, 1, 8, 8), np.float32)}, r"batch size 0 is outside [1, 32]"),
])
def test_request_errors_say_what_is_wrong(digits_model, feeds, message):
    with pytest.raises(RequestError) as info:
        digits_model.check_request(feeds)
    assert message in str(info.value)


def test_an_unknown_output_is_named_with_the_models_outputs(digits_model):
    x = _images(np.random.default_rng(fresh_seed()), 2)
    assert digits_model.check_request({"input": x}, ["logits"]) == 2
    with pytest.raises(RequestError) as info:
        digits_model.check_request({"input": x}, ["logits", "probs"])
    assert "model 'digits' has no output 'probs'; its outputs: logits FP32[-1, 10]" in str(info.value)


def _gram_model(tmp_path, batch) -> Path:
    """``x`` (N, 4) -> ``gram`` = x @ x.T (N, N) and ``y`` = relu(x) (N, 4): the batch dim is
    also the second dim of ``gram`` (``batch``: its name, or None for an unnamed one)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "xt"], ["gram"]), helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                              [helper.make_tensor_value_info("gram", TensorProto.FLOAT, [batch, batch]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])])
    path = tmp_path / "gram.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.mark.parametrize("batch", ["n", None])
def test_batch_dim_in_a_later_dim_is_not_padded(tmp_path, caplog, batch):
    """An output (N, N) has the batch dim first, but in its second dim too: padded, it would come
    back (N, padded size).  It is not padded (a warning says why), and answers right."""
    with caplog.at_level("WARNING", logger="kilnrt.serve"):
        model = ServedModel.from_settings(ModelSettings("g", _gram_model(tmp_path, batch), device="cpu", max_batch=8,
                                                        pad_batches=True))
    assert model.padded_batch_sizes == ()
    assert "batches are not padded: the batch dim is also in a later dim of {'gram':" in caplog.text
    x = np.random.default_rng(fresh_seed()).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(model.infer({"x": x})["gram"], x @ x.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", ["n", None])
def test_batch_dim_in_a_later_dim_is_not_batched_dynamically(tmp_path, batch):
    """Stacked from requests, an (N, N) output's rows would hold the other requests' columns:
    dynamic batching is refused at start; without it the model serves, right."""
    from kilnrt.serve.batching import ModelRequests

    path = _gram_model(tmp_path, batch)
    batched = ServedModel.from_settings(ModelSettings("g", path, device="cpu", max_batch=8))
    with pytest.raises(KilnError, match="model 'g' cannot be batched dynamically: the batch dim is also in a later "
                                        r"dim of \{'gram': "):
        ModelRequests(batched, instances=1, executor=None)
    alone = ServedModel.from_settings(ModelSettings("g", path, device="cpu", max_batch=8, dynamic_batching=False))
    x = np.random.default_rng(fresh_seed()).standard_normal((3, 4)).astype(np.float32)
    out = asyncio.run(ModelRequests(alone, instances=1, executor=None).infer({"x": x}))
    np.testing.assert_allclose(out["gram"], x @ x.T, rtol=1e-5, atol=1e-5)


def test_requests_are_checked_then_batched_or_run_alone():
    """ModelRequests, which KServe's model and a Ray replica both serve through: a request is
    checked first (one refused never runs and is counted as refused, not as accepted), then
    stacked by the dynamic batcher, or run alone where the model does not batch dynamically; it
    answers the outputs asked for (all where none are), and each run's batch size is counted."""

    class Counts:
        def __init__(self):
            self.accepted, self.refused, self.batches = [], [], []

        def request(self, model, batch):
            self.accepted.append(batch)

        def failure(self, model, reason):
            self.refused.append((model, reason))

        def batch(self, model, size):
            self.batches.append(size)

    from kilnrt.serve.batching import ModelRequests

    rng = np.random.default_rng(fresh_seed())
    xs = [_images(rng, n) for n in (1, 3, 2)]
    reference = kilnrt.build(str(DIGITS))
    for batching in (True, False):
        model = ServedModel.from_settings(ModelSettings("digits", DIGITS, device="cpu", max_batch=16,
                                                        dynamic_batching=batching, max_queue_delay_us=20000))
        counts = Counts()
        requests = ModelRequests(model, instances=1, executor=None, metrics=counts)
        assert (requests.batcher is not None) == batching

        async def main():
            refused = requests.infer({"input": xs[0]}, ["probs"])
            answers = requests.infer({"input": xs[1]}, ["logits"])
            return await asyncio.gather(refused, answers, *(requests.infer({"input": x}) for x in xs),
                                        return_exceptions=True)

        refused, *outs = asyncio.run(main())
        assert isinstance(refused, RequestError) and "has no output 'probs'" in str(refused)
        assert counts.accepted == [3, 1, 3, 2] and counts.refused == [("digits", "invalid_request")]
        assert sorted(counts.batches) == ([9] if batching else [1, 2, 3, 3]), counts.batches   # one batch, or each alone
        for x, out in zip(xs[1:2] + xs, outs):
            assert list(out) == ["logits"]
            assert_close(out["logits"], reference.run({"input": x})["logits"])


# ----------------------------------------------------------------------------- the batcher
def test_dynamic_batcher_stacks_requests_and_splits_results():
    calls = []

    def run(feeds):
        calls.append(feeds["x"].shape[0])
        time.sleep(0.01)
        return {"y": feeds["x"] * 2 + 1, "n": feeds["x"].sum(axis=(1,))}

    async def main():
        batcher = DynamicBatcher(run, max_batch=16, instances=1, max_queue_delay_s=0.02)
        rng = np.random.default_rng(fresh_seed())
        xs = [rng.standard_normal((int(rng.integers(1, 4)), 3)).astype(np.float32) for _ in range(40)]
        outs = await asyncio.gather(*(batcher.submit({"x": x}, x.shape[0]) for x in xs))
        odd = rng.standard_normal((2, 5)).astype(np.float32)   # another shape is never stacked with them
        odd_out = await batcher.submit({"x": odd}, 2)
        return xs, outs, odd, odd_out, batcher

    xs, outs, odd, odd_out, batcher = asyncio.run(main())
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out["y"], x * 2 + 1)
        np.testing.assert_array_equal(out["n"], x.sum(axis=1))
    np.testing.assert_array_equal(odd_out["y"], odd * 2 + 1)
    assert max(calls) <= 16 and sum(calls) == sum(x.shape[0] for x in xs) + 2
    assert batcher.batches_run < 41 / 2, f"40 concurrent requests ran as {batcher.batches_run} batches"


def test_dynamic_batcher_passes_errors_to_every_request():
    def run(feeds):
        raise ValueError("engine failed")

    async def main():
        batcher = DynamicBatcher(run, max_batch=8, instances=1, max_queue_delay_s=0.01)
        return await asyncio.gather(*(batcher.submit({"x": np.ones((1, 2))}, 1) for _ in range(3)),
                                    return_exceptions=True)

    assert all(isinstance(r, ValueError) for r in asyncio.run(main()))


# ----------------------------------------------------------------------------- a real server
def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


BACKENDS = [pytest.param("kserve", marks=pytest.mark.skipif(not _have("kserve"), reason="kserve not installed")),
            pytest.param("triton", marks=pytest.mark.skipif(not _have("pytriton"), reason="nvidia-pytriton not "
                                                                                          "installed"))]


def _nonfinite_model(folder: Path) -> Path:
    """``y = log(x) * [1, -1, 1, 1]`` for ``x`` (N, 4): a 0 in the first column gives -inf, in the
    second +inf, and a negative number NaN."""
    import onnx
    from onnx import TensorProto, helper

    signs = onnx.numpy_helper.from_array(np.array([1, -1, 1, 1], np.float32), "signs")
    nodes = [helper.make_node("Log", ["x"], ["log"]), helper.make_node("Mul", ["log", "signs"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [signs])
    path = folder / "nonfinite.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    pytest.importorskip("tritonclient.http")
    pytest.importorskip("tritonclient.grpc")
    from kilnrt.serve.launch import running_server

    cache = tmp_path_factory.mktemp("timing")
    nonfinite = _nonfinite_model(tmp_path_factory.mktemp("nonfinite"))
    with running_server(["--model", f"digits={DIGITS}", "--model", f"nonfinite={nonfinite}", "--backend",
                         request.param, "--instances", "2", "--max-request-bytes", str(8 << 20),
                         "--timing-cache-dir", str(cache)],
                        models=["digits", "nonfinite"]) as s:
        s.backend = request.param
        yield s


@pytest.fixture(scope="module")
def engine():
    return kilnrt.build(str(DIGITS))


def _infer(module, client, x, binary=True):
    inp = module.InferInput("input", list(x.shape), "FP32")
    if module.__name__.endswith("http"):
        inp.set_data_from_numpy(x, binary_data=binary)
        out = [module.InferRequestedOutput("logits", binary_data=binary)]
    else:
        inp.set_data_from_numpy(x)
        out = [module.InferRequestedOutput("logits")]
    return client.infer("digits", [inp], outputs=out).as_numpy("logits")


def _clients(server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    return [(httpclient, httpclient.InferenceServerClient(server.http_url)),
            (grpcclient, grpcclient.InferenceServerClient(server.grpc_url))]


def test_server_answers_http_and_grpc_like_engine_run(server, engine):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    for module, client in _clients(server):
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
        for n in (1, 7, 64):
            x = _images(rng, n)
            assert_close(_infer(module, client, x), engine.run({"input": x})["logits"], seed=seed)
    http, grpc = (c for _, c in _clients(server))
    x = _images(rng, 3)                                # JSON tensors, not the binary extension
    import tritonclient.http as httpclient
    assert_close(_infer(httpclient, http, x, binary=False), engine.run({"input": x})["logits"], seed=seed)
    meta = http.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    config = http.get_model_config("digits")
    assert config["max_batch_size"] == 64 and "dynamic_batching" in config
    assert grpc.get_model_metadata("digits").inputs[0].name == "input"


def test_nan_and_infinities_come_back_as_they_are(server, tmp_path):
    """NaN, +inf and -inf in an output reach tritonclient.http as the same values, as JSON and
    as binary data, whether the request's inputs are JSON (on KServe: its REST handler) or
    binary (kilnrt's middleware).  In JSON they are Triton's tokens, rapidjson's ``NaN``,
    ``Infinity`` and ``-Infinity``, which tritonclient's rapidjson reads back (KServe's orjson
    writes null, which comes back as NaN, an infinity's sign lost)."""
    import re
    import urllib.request

    import tritonclient.http as httpclient

    rng = np.random.default_rng(fresh_seed())
    x = rng.uniform(0.25, 4, (3, 4)).astype(np.float32)
    x[0, :3] = 0, 0, -rng.uniform(0.25, 4)
    x[2, 2] *= -1
    want = kilnrt.build(str(_nonfinite_model(tmp_path))).run({"x": x})["y"]
    assert np.isneginf(want[0, 0]) and np.isposinf(want[0, 1]) and np.isnan(want[[0, 2], 2]).all()
    assert np.isfinite(want).sum() == 8
    client = httpclient.InferenceServerClient(server.http_url)
    for binary_inputs in (False, True):
        for binary_output in (False, True):
            what = f"{server.backend}, binary inputs {binary_inputs}, binary output {binary_output}"
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary_inputs)
            outputs = [httpclient.InferRequestedOutput("y", binary_data=binary_output)]
            result = client.infer("nonfinite", [inp], outputs=outputs)
            assert ("data" in result.get_output("y")) is not binary_output, what
            got = result.as_numpy("y")
            assert got.dtype == np.float32, what
            np.testing.assert_array_equal(got, want, err_msg=what)      # NaN where NaN, each inf with its sign
            if binary_output:
                continue
            body, header_length = httpclient.InferenceServerClient.generate_request_body([inp], outputs=outputs)
            headers = ({"Inference-Header-Content-Length": str(header_length)} if header_length
                       else {"Content-Type": "application/json"})
            request = urllib.request.Request(f"http://{server.http_url}/v2/models/nonfinite/infer", body, headers)
            with urllib.request.urlopen(request, timeout=30) as r:
                text = r.read()
            assert re.findall(rb"-?Infinity|NaN|null", text) == [b"-Infinity", b"Infinity", b"NaN", b"NaN"], \
                (what, text[:400])


def test_model_config_over_grpc_is_the_http_one(server):
    """tritonclient.grpc's ``get_model_config`` (Triton's ``ModelConfig`` RPC, which KServe's
    service lacks: kilnrt adds it) answers what ``GET /v2/models/NAME/config`` does; an unknown
    model is NOT_FOUND."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2
    from tritonclient.utils import InferenceServerException

    http, grpc = (c for _, c in _clients(server))
    for name in ("digits", "nonfinite"):
        want = http.get_model_config(name)
        got = grpc.get_model_config(name).config
        assert (got.name, got.max_batch_size) == (want["name"], want["max_batch_size"]) == (name, 64)
        for tensors, wanted in ((got.input, want["input"]), (got.output, want["output"])):
            assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors] == \
                [(t["name"], t["data_type"], t["dims"]) for t in wanted], name
        batching = want["dynamic_batching"]
        assert got.HasField("dynamic_batching"), name
        assert list(got.dynamic_batching.preferred_batch_size) == batching.get("preferred_batch_size", [])
        assert got.dynamic_batching.max_queue_delay_microseconds == batching.get("max_queue_delay_microseconds", 0)
        if server.backend == "kserve":         # all of it: the HTTP config is the JSON form of this message
            assert got == json_format.ParseDict(want, model_config_pb2.ModelConfig()), name
    with pytest.raises(InferenceServerException) as info:
        grpc.get_model_config("nope")
    assert str(info.value.status()) == "StatusCode.NOT_FOUND", info.value
    if server.backend == "kserve":
        assert "Model with name nope does not exist" in str(info.value)


def test_metrics_are_exported(server, engine):
    import urllib.request

    _infer(*_clients(server)[0], _images(np.random.default_rng(1), 2))
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    name = "kilnrt_inference_requests_total" if server.backend == "kserve" else "nv_inference_request_success"
    assert name in text and 'model="digits"' in text


def _raw_http(server, head: bytes, body: bytes = b"", close_early: bool = False, timeout: float = 30) -> bytes:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=timeout) as s:
        try:
            s.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the server answered and closed before the whole body was sent: read its answer
        if close_early:
            return b""
        s.shutdown(socket.SHUT_WR) if not body else None
        chunks = []
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except (ConnectionResetError, socket.timeout):
            pass
        return b"".join(chunks)


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _post(path: str, body_length: int, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {body_length}\r\n\r\n").encode()


def test_bad_requests_get_protocol_errors_and_server_keeps_serving(server, engine):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    rng = np.random.default_rng(fresh_seed())
    cases = [("unknown model", "nope", "input", (2, 1, 8, 8), "FP32", np.float32),
             ("unknown input", "digits", "image", (2, 1, 8, 8), "FP32", np.float32),
             ("wrong dtype", "digits", "input", (2, 1, 8, 8), "FP64", np.float64),
             ("wrong shape", "digits", "input", (2, 8, 8), "FP32", np.float32),
             ("batch over max", "digits", "input", (65, 1, 8, 8), "FP32", np.float32)]
    for module, client in _clients(server):
        for what, model, name, shape, datatype, dtype in cases:
            inp = module.InferInput(name, list(shape), datatype)
            inp.set_data_from_numpy(rng.standard_normal(shape).astype(dtype))
            with pytest.raises(InferenceServerException) as info:
                client.infer(model, [inp])
            status = str(info.value.status())
            expected = ("404", "StatusCode.NOT_FOUND") if what == "unknown model" else ("400", "StatusCode.INVALID_ARGUMENT")
            assert status in expected, f"{what}: {info.value}"
    # malformed JSON, a truncated binary body, a body over the limit, a client gone mid-body
    path = "/v2/models/digits/infer"
    bad_json = b'{"inputs": [{"name": "input", "shape": [1,1,8,8], "datatype": "FP32", "data": [1, 2'
    reply = _raw_http(server, _post(path, len(bad_json)), bad_json)
    # Triton answers JSON it cannot parse with 500 (its own choice), KServe with 400; both say why
    assert reply.split(b"\r\n")[0].split()[1] == (b"400" if server.backend == "kserve" else b"500"), reply[:300]
    assert b"parse" in reply or b"JSON" in reply or b"json" in reply, reply[:300]
    header = json.dumps({"inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 512}}]}).encode()
    truncated = header + b"\0" * 100                         # 512 bytes announced, 100 sent
    reply = _raw_http(server, _post(path, len(truncated), f"Inference-Header-Content-Length: {len(header)}\r\n"),
                      truncated)
    assert b" 400 " in reply.split(b"\r\n")[0], reply[:300]
    one_gb = 1 << 30
    # 64 KiB of the announced gigabyte: it fits the socket's buffers, so the client is not still
    # sending when the server answers and closes (with 1 MiB it sometimes was: a broken pipe)
    reply = _raw_http(server, _post(path, one_gb), b"\0" * (64 << 10), timeout=5)
    if server.backend == "kserve":                         # refused from its Content-Length alone
        assert reply.split(b"\r\n")[0].split()[1] == b"413" and b"over the server's limit" in reply, reply[:300]
    else:                                                  # Triton drops the connection
        assert b" 200 " not in reply[:20], reply[:300]
    _raw_http(server, _post(path, 4 << 20), b"\0" * (1 << 20), close_early=True)
    # a gRPC message over the limit
    big = grpcclient.InferInput("input", [40000, 1, 8, 8], "FP32")
    big.set_data_from_numpy(np.ones((40000, 1, 8, 8), np.float32))
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(server.grpc_url).infer("digits", [big])
    # afterwards every protocol still answers correctly
    x = _images(rng, 4)
    for module, client in _clients(server):
        assert_close(_infer(module, client, x), engine.run({"input": x})["logits"])
    assert isinstance(httpclient.InferenceServerClient(server.http_url).is_server_live(), bool)


def _counts(server) -> dict[str, float]:
    """kilnrt's counters for model 'digits' on the KServe server's metrics port."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        lines = [line for line in r.read().decode().splitlines() if 'model="digits"' in line]
    names = {"accepted": "kilnrt_inference_requests_total{", "runs": "kilnrt_engine_batch_size_count{",
             "refused": 'kilnrt_inference_failures_total{model="digits",reason="invalid_request"}'}
    return {k: sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(n)) for k, n in names.items()}


def test_an_unknown_output_is_refused_before_the_model_runs(server):
    """A request for an output the model does not have gets the protocol's 'invalid argument'
    error naming it, over HTTP (binary and JSON) and gRPC; on KServe the message lists the
    model's outputs, and the request is counted as refused, never as accepted, and never runs."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    x = _images(np.random.default_rng(fresh_seed()), 2)
    before = _counts(server) if server.backend == "kserve" else None
    for module, client in _clients(server):
        for binary in ((True, False) if module is httpclient else (None,)):
            inp = module.InferInput("input", list(x.shape), "FP32")
            options = {} if binary is None else {"binary_data": binary}
            inp.set_data_from_numpy(x, **options)
            outputs = [module.InferRequestedOutput(n, **options) for n in ("logits", "probs")]
            with pytest.raises(InferenceServerException) as info:
                client.infer("digits", [inp], outputs=outputs)
            what = f"{module.__name__}, binary {binary}: {info.value}"
            assert str(info.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT"), what
            assert "'probs'" in str(info.value), what
            if server.backend == "kserve":
                assert "has no output 'probs'; its outputs: logits FP32[-1, 10]" in str(info.value), what
    if server.backend == "kserve":
        after = _counts(server)
        assert (after["refused"] - before["refused"], after["accepted"], after["runs"]) == \
            (3, before["accepted"], before["runs"]), (before, after)


def test_concurrent_clients_all_correct(server, engine):
    """A small version of ``benchmarks/serve_load.py --check-clients 64 --check-requests 1000``."""
    import tritonclient.http as httpclient

    seed = fresh_seed()
    x = _images(np.random.default_rng(seed), 64)
    reference = engine.run({"input": x})["logits"]
    errors, wrong = [], []

    def client(k: int) -> None:
        c = httpclient.InferenceServerClient(server.http_url)
        for i in range(25):
            n = 1 + (k + i) % 4
            rows = slice((k * 7 + i) % 60, (k * 7 + i) % 60 + n)
            try:
                got = _infer(httpclient, c, x[rows])
            except Exception as exc:  # noqa: BLE001 -- counted, reported below
                errors.append(repr(exc))
                continue
            if not np.allclose(got, reference[rows], rtol=1e-4, atol=1e-5):
                wrong.append((k, i))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert not wrong, f"{len(wrong)} wrong results (seed {seed})"
