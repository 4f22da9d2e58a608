"""Infer requests in the KServe v2 binary tensor extension over HTTP, read without KServe.

KServe's REST handler (0.21) turns every binary input into a Python list of numbers before the
model sees it (``InferRequest.from_bytes`` -> ``set_data_from_numpy(..., binary_data=False)``):
for one 3x224x224 float32 image that is about 100 ms of the event loop's time, during which no
other request moves. This ASGI middleware answers such requests itself: the JSON header and the
raw tensors are read into numpy arrays over the request's own buffer, the model runs as for any
other request (request checks, dynamic batching, metrics), and the outputs go back as raw bytes
where the request asks for binary outputs, as JSON ``data`` otherwise.

What it does not take (a body without ``Inference-Header-Content-Length``, a compressed body,
BYTES tensors, an unknown model) goes on to KServe unchanged.
"""
from __future__ import annotations

import json
import logging
import math
import re
from typing import Awaitable, Callable, Mapping

import numpy as np

from kilnrt.serve.models import NUMPY_DTYPES, V2_DATATYPES

log = logging.getLogger("kilnrt.serve")

INFER_PATH = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/[^/]+)?/infer$")


class RequestProblem(Exception):
    """What is wrong with a request, answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class BinaryInfer:
    """ASGI middleware: ``models`` maps a model's name to an ``async infer(feeds, outputs) ->
    outputs`` (``outputs``: the names the request asks for, none for all) that raises
    :class:`RequestProblem` for a request the model cannot take (and counts it);
    ``refused(model)`` is called for a request refused before it reached the model."""

    def __init__(self, app, models: Mapping[str, Callable[[dict, list], Awaitable[dict]]],
                 refused: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.models = models
        self.refused = refused or (lambda model: None)   # told of a request refused while being read

    async def __call__(self, scope, receive, send):
        match = INFER_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        headers = {k.lower(): v for k, v in scope.get("headers") or ()} if match else {}
        header_length = headers.get(b"inference-header-content-length")
        if (match is None or scope.get("method") != "POST" or header_length is None
                or not header_length.strip().isdigit() or b"content-encoding" in headers
                or match["model"] not in self.models):
            return await self.app(scope, receive, send)
        body, complete = await _read_body(receive)
        if not complete:                 # the client went away mid-body: nothing to answer
            return
        try:
            request = parse_request(body, int(header_length))
        except NotReadHere:
            return await self.app(scope, _replay(body, receive), send)
        except RequestProblem as exc:
            self.refused(match["model"])
            return await _send_error(send, exc)
        try:
            outputs = await self.models[match["model"]](request["feeds"], output_names(request))
            status, head, payload = encode_response(match["model"], request, outputs)
        except RequestProblem as exc:
            return await _send_error(send, exc)
        except Exception as exc:  # noqa: BLE001 - the engine failed: the client is told, the server goes on
            log.exception("model %r failed on a request", match["model"])
            return await _send_error(send, RequestProblem(f"model {match['model']!r} failed: {exc}", status=500))
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": payload})


class NotReadHere(Exception):
    """A request left to KServe's codec (BYTES tensors, a datatype numpy lacks)."""


async def _read_body(receive) -> tuple[bytearray, bool]:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body, False
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body, True


def _replay(body: bytearray, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    return replayed


def parse_request(body: bytearray, header_length: int) -> dict:
    """``{"id", "feeds": {name: array}, "outputs": [{name, parameters}] | None, "binary_default"}``
    from a binary-extension body; the arrays view ``body`` (no copy)."""
    if header_length > len(body):
        raise RequestProblem(f"Inference-Header-Content-Length is {header_length}, but the body has "
                             f"only {len(body)} bytes")
    try:
        header = json.loads(bytes(body[:header_length]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestProblem(f"cannot parse the inference header as JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise RequestProblem("the inference header has no 'inputs' list")   # empty: a model without inputs
    view = memoryview(body)
    start = header_length
    feeds: dict[str, np.ndarray] = {}
    for i, spec in enumerate(header["inputs"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise RequestProblem(f"input {i} of the inference header has no 'name'")
        name = spec["name"]
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise RequestProblem(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
        datatype = spec.get("datatype")
        if datatype == "BYTES" or datatype not in NUMPY_DTYPES:
            raise NotReadHere()
        try:
            dtype = np.dtype(NUMPY_DTYPES[datatype])
        except TypeError:                # BF16 without ml_dtypes
            raise NotReadHere() from None
        count = math.prod(shape)         # Python ints: a huge shape does not wrap around
        parameters = spec.get("parameters") or {}
        if "data" in spec:
            try:
                feeds[name] = _from_json(spec["data"], dtype).reshape(shape)
            except (ValueError, TypeError, OverflowError) as exc:
                raise RequestProblem(f"input {name!r}: its 'data' is not {count} {datatype} values "
                                     f"of shape {shape}: {exc}") from None
            continue
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RequestProblem(f"input {name!r} has neither 'data' nor a 'binary_data_size' parameter")
        if size != count * dtype.itemsize:
            raise RequestProblem(f"input {name!r}: binary_data_size is {size} bytes, but {count} {datatype} "
                                 f"values of shape {shape} take {count * dtype.itemsize}")
        if start + size > len(body):
            raise RequestProblem(f"input {name!r}: {size} bytes of binary data announced, "
                                 f"{len(body) - start} left in the body")
        array = np.frombuffer(view[start:start + size], dtype=dtype).reshape(shape)
        feeds[name] = array if array.flags.aligned else array.copy()   # the header's length sets the offset
        start += size
    if start != len(body):
        raise RequestProblem(f"the body has {len(body) - start} bytes after the inputs' binary data")
    parameters = header.get("parameters") if isinstance(header.get("parameters"), dict) else {}
    outputs = header.get("outputs")
    if outputs is not None and (not isinstance(outputs, list)
                                or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)):
        raise RequestProblem("'outputs' must be a list of {\"name\": ...} objects")
    return {"id": header.get("id"), "feeds": feeds, "outputs": outputs,
            "binary_default": bool(parameters.get("binary_data_output", False))}


def output_names(request: dict) -> list[str]:
    """The names of the outputs a request read by :func:`parse_request` asks for (none: all)."""
    return [o["name"] for o in request["outputs"] or ()]


def _from_json(data, dtype: np.dtype) -> np.ndarray:
    """JSON numbers as ``dtype``; an integer out of its range is an error (numpy 1 wraps it
    around with only a deprecation warning, numpy 2 raises)."""
    values = np.asarray(data)
    if dtype.kind in "iu" and values.size:
        if values.dtype.kind not in "iub":
            raise ValueError(f"{values.dtype} values for an integer datatype")
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise ValueError(f"values outside [{info.min}, {info.max}]")
    return values.astype(dtype)


def encode_response(model: str, request: dict, outputs: Mapping[str, np.ndarray]) -> tuple[int, list, bytes]:
    """(status, headers, body) of the infer response: the requested outputs (all when none are
    named), each as raw bytes where asked for binary data, else as JSON ``data``."""
    wanted = request["outputs"] or [{"name": n} for n in outputs]
    entries, blobs = [], []
    for o in wanted:
        if o["name"] not in outputs:
            raise RequestProblem(f"model {model!r} has no output {o['name']!r}; it has {sorted(outputs)}")
        value = np.ascontiguousarray(outputs[o["name"]])
        entry = {"name": o["name"], "datatype": V2_DATATYPES.get(value.dtype.name, value.dtype.name.upper()),
                 "shape": list(value.shape)}
        parameters = o.get("parameters") if isinstance(o.get("parameters"), dict) else {}
        if parameters.get("binary_data", request["binary_default"]):
            blob = value.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.ravel().tolist()
        entries.append(entry)
    response = {"model_name": model, "outputs": entries}
    if request["id"] is not None:
        response["id"] = request["id"]
    head = json.dumps(response).encode()
    headers = [(b"content-type", b"application/octet-stream" if blobs else b"application/json")]
    if blobs:
        headers.append((b"inference-header-content-length", str(len(head)).encode()))
    payload = b"".join([head, *blobs])
    headers.append((b"content-length", str(len(payload)).encode()))
    return 200, headers, payload


async def _send_error(send, problem: RequestProblem) -> None:
    body = json.dumps({"error": problem.message}).encode()
    await send({"type": "http.response.start", "status": problem.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
