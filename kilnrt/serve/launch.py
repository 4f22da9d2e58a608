"""Start ``kilnrt serve`` in a child process, wait until it is ready, stop it: for tests,
benchmarks and scripts that drive a real server over loopback."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Iterator, Sequence


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports that are free on 127.0.0.1 now."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class ServerProcess:
    def __init__(self, proc: subprocess.Popen, http_port: int, grpc_port: int, metrics_port: int, log_path: str):
        self.proc = proc
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.log_path = log_path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def ready(self, models: Sequence[str] = ()) -> bool:
        """The server is ready, and so is each of ``models`` (Triton is ready before it loads them)."""
        paths = ["/v2/health/ready", *(f"/v2/models/{m}/ready" for m in models)]
        try:
            for path in paths:
                with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                    if r.status != 200:
                        return False
            return True
        except OSError:
            return False

    def wait_ready(self, timeout_s: float, models: Sequence[str] = ()) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kilnrt serve exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if self.ready(models):
                return
            time.sleep(0.25)
        raise TimeoutError(f"kilnrt serve was not ready after {timeout_s:.0f} s:\n{self.log()[-4000:]}")

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM, as a service manager stops it; SIGKILL to what is left after ``timeout_s``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the server and every process it started (Triton runs ``tritonserver`` and
        its Python backend stubs as children), as a crash or an OOM kill of its container would."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def start_server(args: Sequence[str], *, ports: Sequence[int] | None = None, env: dict | None = None,
                 python: str | None = None) -> ServerProcess:
    """``kilnrt serve ARGS`` in its own process group on ``ports`` (HTTP, gRPC, metrics; free
    ones when None), not waiting for it; its output goes to a temporary log file."""
    http, grpc, metrics = ports if ports is not None else free_ports(3)
    with tempfile.NamedTemporaryFile("w", prefix="kilnrt-serve-", suffix=".log", delete=False) as log:
        cmd = [python or sys.executable, "-m", "kilnrt.cli.main", "serve", *args, "--http-port", str(http),
               "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    return ServerProcess(proc, http, grpc, metrics, log.name)


@contextlib.contextmanager
def running_server(args: Sequence[str], *, models: Sequence[str] = (), timeout_s: float = 120,
                   env: dict | None = None, python: str | None = None) -> Iterator[ServerProcess]:
    """``kilnrt serve ARGS`` on free ports; yields once it and each of ``models`` are ready."""
    server = start_server(args, env=env, python=python)
    try:
        server.wait_ready(timeout_s, models)
        yield server
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            os.unlink(server.log_path)
