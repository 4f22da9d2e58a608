"""kilnrt.serve.binary_http: infer requests in the v2 binary tensor extension, read into numpy
without KServe's per-element conversion. Bodies come from tritonclient's own encoder and
responses go back through its own parser, so the format is the client's, not ours."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from kilnrt.serve.binary_http import BinaryInfer, RequestProblem, encode_response, parse_request
from kilnrt.testing import fresh_seed

httpclient = pytest.importorskip("tritonclient.http")
Client = httpclient.InferenceServerClient


def _inputs(rng, binary=True):
    a = rng.standard_normal((3, 2, 5)).astype(np.float32)
    b = rng.integers(-9, 9, (3, 4)).astype(np.int64)
    c = rng.standard_normal((3, 7)).astype(np.float16)
    inputs = []
    for name, value, datatype in (("a", a, "FP32"), ("b", b, "INT64"), ("c", c, "FP16")):
        inp = httpclient.InferInput(name, list(value.shape), datatype)
        inp.set_data_from_numpy(value, binary_data=binary or datatype == "FP16")   # FP16 has no JSON form
        inputs.append(inp)
    return {"a": a, "b": b, "c": c}, inputs


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_bodies_read_back_exactly(binary):
    rng = np.random.default_rng(fresh_seed())
    values, inputs = _inputs(rng, binary)
    body, header_length = Client.generate_request_body(inputs, request_id="r7")
    request = parse_request(bytearray(body), header_length or len(body))
    assert request["id"] == "r7" and request["binary_default"] is True   # no outputs named: all binary
    for name, value in values.items():
        got = request["feeds"][name]
        assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value)
        assert got.flags.writeable


def test_responses_parse_in_tritonclient_binary_and_json():
    rng = np.random.default_rng(fresh_seed())
    outputs = {"logits": rng.standard_normal((3, 10)).astype(np.float32),
               "ids": rng.integers(0, 100, (3,)).astype(np.int32)}
    requested = [httpclient.InferRequestedOutput("logits", binary_data=True),
                 httpclient.InferRequestedOutput("ids", binary_data=False)]
    body, header_length = Client.generate_request_body(_inputs(rng)[1], outputs=requested)
    request = parse_request(bytearray(body), header_length)
    status, headers, payload = encode_response("m", request, outputs)
    length = dict(headers).get(b"inference-header-content-length")
    result = Client.parse_response_body(payload, header_length=int(length))
    assert status == 200 and result.get_response()["model_name"] == "m"
    for name, value in outputs.items():
        assert np.array_equal(result.as_numpy(name), value) and result.as_numpy(name).dtype == value.dtype
    assert "data" in result.get_output("ids") and "data" not in result.get_output("logits")
    # only what was named comes back; an unknown name is the client's error
    body, header_length = Client.generate_request_body(
        _inputs(rng)[1], outputs=[httpclient.InferRequestedOutput("nope")])
    with pytest.raises(RequestProblem, match="has no output 'nope'"):
        encode_response("m", parse_request(bytearray(body), header_length), outputs)


def test_malformed_bodies_say_what_is_wrong():
    rng = np.random.default_rng(fresh_seed())
    body, header_length = Client.generate_request_body(_inputs(rng)[1])
    body = bytearray(body)
    with pytest.raises(RequestProblem, match="left in the body"):
        parse_request(body[:-10], header_length)
    with pytest.raises(RequestProblem, match="bytes after the inputs"):
        parse_request(body + b"xx", header_length)
    with pytest.raises(RequestProblem, match="only"):
        parse_request(body, len(body) + 1)
    with pytest.raises(RequestProblem, match="cannot parse the inference header"):
        parse_request(body, header_length - 3)

    def header(inputs):
        text = json.dumps({"inputs": inputs}).encode()
        return bytearray(text), len(text)

    cases = [([{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}],
              "binary_data_size is 4 bytes, but 2 FP32 values of shape [2] take 8"),
             ([{"name": "x", "shape": [2, -1], "datatype": "FP32"}], "non-negative integers"),
             ([{"name": "x", "shape": [2], "datatype": "FP32"}], "neither 'data' nor"),
             ([{"name": "x", "shape": [3], "datatype": "INT32", "data": [1, 2]}], "is not 3 INT32 values"),
             ([{"name": "x", "shape": [2 ** 32, 2 ** 32], "datatype": "FP32", "parameters": {"binary_data_size": 0}}],
              "but 18446744073709551616 FP32 values"),              # no int64 wrap-around to 0
             ([{"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}], "is not 1 UINT8 values"),
             ([{"shape": [3], "datatype": "INT32"}], "has no 'name'"),
             ("x", "no 'inputs' list")]
    for inputs, message in cases:
        with pytest.raises(RequestProblem, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_request(*header(inputs))
    assert parse_request(*header([]))["feeds"] == {}           # a model without inputs
    for data in ([-1], [1.5]):                                 # numpy 1 would wrap -1 to 255 silently
        with pytest.raises(RequestProblem, match="is not 1 UINT8 values"):
            parse_request(*header([{"name": "x", "shape": [1], "datatype": "UINT8", "data": data}]))


def _call(app, body: bytes, headers: dict, path="/v2/models/m/infer"):
    """Drive an ASGI app with one request; (status, headers, body, whether the inner app ran)."""
    sent = []
    chunks = [body[:len(body) // 2], body[len(body) // 2:]]   # two messages, as a server may deliver it

    async def receive():
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


class _Inner:
    """The app behind the middleware (KServe): records what reaches it."""

    def __init__(self):
        self.bodies = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


def test_middleware_answers_binary_requests_and_passes_the_rest_on():
    rng = np.random.default_rng(fresh_seed())
    values, inputs = _inputs(rng)

    asked = []

    async def model(feeds, outputs):
        asked.append(outputs)
        if feeds["a"].shape[0] == 0:
            raise RequestProblem("batch size 0 is outside [1, 64]")
        if feeds["b"][0, 0] == 99:
            raise RuntimeError("engine broke")
        return {"sum": feeds["a"].sum(axis=(1, 2)), "b": feeds["b"] * 2}

    inner = _Inner()
    app = BinaryInfer(inner, {"m": model})
    body, header_length = Client.generate_request_body(inputs)
    status, headers, payload = _call(app, body, {"inference-header-content-length": str(header_length)})
    assert status == 200 and inner.bodies == [] and asked == [[]]        # no outputs named: all of them
    result = Client.parse_response_body(payload, header_length=int(headers[b"inference-header-content-length"]))
    np.testing.assert_allclose(result.as_numpy("sum"), values["a"].sum(axis=(1, 2)), rtol=1e-6)
    assert np.array_equal(result.as_numpy("b"), values["b"] * 2)
    assert int(headers[b"content-length"]) == len(payload)
    # the outputs a request names reach the model (which refuses an unknown one before it runs)
    body, header_length = Client.generate_request_body(inputs, outputs=[httpclient.InferRequestedOutput("b")])
    status, _, _ = _call(app, body, {"inference-header-content-length": str(header_length)})
    assert status == 200 and asked[-1] == ["b"]
    # the versioned path too
    status, _, _ = _call(app, body, {"inference-header-content-length": str(header_length)},
                         path="/v2/models/m/versions/1/infer")
    assert status == 200 and inner.bodies == []

    # not ours: an unknown model, no binary header, a compressed body, BYTES tensors; KServe gets the same body
    strings = httpclient.InferInput("s", [2], "BYTES")
    strings.set_data_from_numpy(np.array([b"x", b"yz"], dtype=object))
    text_body, text_length = Client.generate_request_body([strings])
    for path, headers_, sent in (
            ("/v2/models/other/infer", {"inference-header-content-length": str(header_length)}, body),
            ("/v2/models/m/infer", {}, body),
            ("/v2/models/m/infer", {"inference-header-content-length": str(header_length),
                                    "content-encoding": "gzip"}, body),
            ("/v2/models/m/infer", {"inference-header-content-length": str(text_length)}, text_body)):
        status, _, payload = _call(app, sent, headers_, path=path)
        assert status == 299 and payload == b"inner" and inner.bodies[-1] == sent, path

    # the model's errors: 400 for a request it cannot take, 500 for its own failure, JSON either way
    bad = httpclient.InferInput("a", [0, 2, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((0, 2, 5), np.float32))
    for feeds, want, message in (([bad] + inputs[1:], 400, "batch size 0"),):
        body, header_length = Client.generate_request_body(feeds)
        status, _, payload = _call(app, body, {"inference-header-content-length": str(header_length)})
        assert status == want and message in json.loads(payload)["error"]
    broken = values["b"].copy()
    broken[0, 0] = 99
    inputs[1].set_data_from_numpy(broken)
    body, header_length = Client.generate_request_body(inputs)
    status, _, payload = _call(app, body, {"inference-header-content-length": str(header_length)})
    assert status == 500 and "engine broke" in json.loads(payload)["error"]
    status, _, payload = _call(app, body[:-4], {"inference-header-content-length": str(header_length)})
    assert status == 400 and "left in the body" in json.loads(payload)["error"]
