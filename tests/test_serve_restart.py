"""kilnrt serve killed while clients retry, restarted on the same ports: every request is answered
in the end, every answer is right, and the clients saw the outage (so the kill did happen while
they were sending).  Against each server that is installed; loopback only, bounded in time."""
from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import kilnrt
from kilnrt.testing import fresh_seed

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits.onnx"
DEADLINE_S = 90          # a client gives up on one request after this long


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


BACKENDS = [pytest.param("kserve", marks=pytest.mark.skipif(not _have("kserve"), reason="kserve not installed")),
            pytest.param("triton", marks=pytest.mark.skipif(not _have("pytriton"), reason="nvidia-pytriton not "
                                                                                          "installed"))]


class RetryingClient(threading.Thread):
    """Sends requests one after another; each is retried (every 0.1 s) until it is answered."""

    def __init__(self, protocol: str, url: str, pool) -> None:
        super().__init__(daemon=True)
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
        self.module, self.url, self.protocol = module, url, protocol
        self.pool = pool
        self.answers: list[tuple[int, float, np.ndarray]] = []     # (pool index, time answered, output)
        self.failures: list[tuple[float, str]] = []
        self.given_up: list[int] = []
        self.stop = threading.Event()

    def _infer(self, x: np.ndarray) -> np.ndarray:
        client = self.module.InferenceServerClient(self.url)     # a fresh connection: the old one may be dead
        try:
            inp = self.module.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return client.infer("digits", [inp]).as_numpy("logits")
        finally:
            client.close()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            k = i % len(self.pool)
            give_up = time.monotonic() + DEADLINE_S
            while True:
                try:
                    out = self._infer(self.pool[k])
                    self.answers.append((k, time.monotonic(), out))
                    break
                except Exception as exc:  # noqa: BLE001 -- refused, reset, unavailable: retried
                    self.failures.append((time.monotonic(), f"{type(exc).__name__}: {exc}"[:200]))
                    if time.monotonic() > give_up or self.stop.is_set():
                        self.given_up.append(k)
                        break
                    time.sleep(0.1)
            i += 1

    def answered_since(self, t: float) -> int:
        return sum(1 for _, at, _ in self.answers if at > t)


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_server_killed_and_restarted_while_clients_retry(backend, tmp_path):
    pytest.importorskip("tritonclient.http")
    pytest.importorskip("tritonclient.grpc")
    from kilnrt.serve.launch import free_ports, start_server

    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    engine = kilnrt.build(str(DIGITS))
    pool = [rng.standard_normal((1 + k % 3, 1, 8, 8)).astype(np.float32) for k in range(16)]
    references = [engine.run({"input": x})["logits"] for x in pool]
    # no dynamic batching: also checks that a batched model without Triton's dynamic batcher takes
    # batched requests (PyTriton's ``batching=False`` would have made the batch dim a model dim)
    args = ["--model", f"digits={DIGITS}", "--backend", backend, "--no-dynamic-batching",
            "--timing-cache-dir", str(tmp_path)]
    ports = free_ports(3)
    server = start_server(args, ports=ports)
    clients = []
    try:
        server.wait_ready(120, ["digits"])
        clients = [RetryingClient("http", server.http_url, pool), RetryingClient("grpc", server.grpc_url, pool)]
        for c in clients:
            c.start()
        _wait(lambda: all(len(c.answers) >= 5 for c in clients), 60, "answers before the kill")
        server.kill()                                         # SIGKILL to the server's process group
        killed_at = time.monotonic()
        _wait(lambda: all(any(t > killed_at for t, _ in c.failures) for c in clients), 30,
              "the clients to see the outage")
        server = start_server(args, ports=ports)             # the same ports, as a supervisor restarts it
        server.wait_ready(120, ["digits"])
        ready_at = time.monotonic()
        _wait(lambda: all(c.answered_since(ready_at) >= 10 for c in clients), 60, "answers after the restart")
    finally:
        for c in clients:
            c.stop.set()
        for c in clients:
            c.join(DEADLINE_S + 10)
        server.stop()
    for c in clients:
        assert not c.given_up, f"{c.protocol}: requests {c.given_up} never answered; last failures " \
                               f"{[f for _, f in c.failures[-3:]]}"
        outage = [f for t, f in c.failures if t > killed_at]
        assert outage, f"{c.protocol}: no failed attempt after the kill: the server was not down while it sent"
        for k, _, out in c.answers:
            np.testing.assert_allclose(out, references[k], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{c.protocol}, request {k}, seed {seed}")
        assert c.answered_since(killed_at) >= 10
