"""Where kilnrt serve picks Triton (PyTriton) and where it refuses to: the numpy that PyTriton's
Python backend stub needs, and the access token that only Triton can use.  No server starts here."""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from kilnrt.errors import KilnError
from kilnrt.serve import triton_backend
from kilnrt.serve.server import serve

PYTRITON_07 = ["numpy<2.0.0,>=1.21", "protobuf>=3.7", "pyzmq>=23.0", 'pytest~=8.1.1; extra == "test"']


def _pytriton_requires(monkeypatch, requirements):
    real = importlib.metadata.requires

    def requires(name):
        if name != "nvidia-pytriton":
            return real(name)
        if requirements is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return requirements
    monkeypatch.setattr(importlib.metadata, "requires", requires)


@pytest.mark.parametrize("numpy_version, requirements, refused", [
    ("2.1.3", PYTRITON_07, True),                          # 0.7's pin, numpy 2: its stub reads zeros
    ("1.26.4", PYTRITON_07, False),
    ("2.1.3", ["numpy>=1.21", "pyzmq>=23.0"], False),      # a PyTriton without the pin
    ("2.1.3", None, False),                                # not installed: pytriton_available says so first
])
def test_numpy_must_satisfy_pytritons_pin(monkeypatch, numpy_version, requirements, refused):
    _pytriton_requires(monkeypatch, requirements)
    monkeypatch.setattr(np, "__version__", numpy_version)
    why = triton_backend.numpy_mismatch()
    if refused:
        assert f"numpy {numpy_version} is installed" in why and "<2.0.0" in why and "--backend kserve" in why
    else:
        assert why is None


def test_auto_falls_back_to_kserve_and_names_numpy(monkeypatch):
    from kilnrt.serve.server import choose_backend

    if importlib.util.find_spec("kserve") is None:
        pytest.skip("kserve is not installed (pip install -e '.[dev]')")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "pytriton" else real_find_spec(name, *a))
    monkeypatch.setattr(triton_backend, "interpreter_libpython", lambda: Path("/usr/lib/libpython3.so.1.0"))
    _pytriton_requires(monkeypatch, PYTRITON_07)
    monkeypatch.setattr(np, "__version__", "2.0.2")
    backend, why = choose_backend("auto")
    assert backend == "kserve" and "numpy 2.0.2 is installed" in why
    with pytest.raises(KilnError, match="--backend triton: numpy 2.0.2 is installed"):
        choose_backend("triton")


def test_access_token_is_refused_where_the_server_has_no_restricted_apis():
    if importlib.util.find_spec("kserve") is None:
        pytest.skip("kserve is not installed (pip install -e '.[dev]')")
    with pytest.raises(KilnError, match="access token opens Triton's restricted APIs, but the server here is "
                                        "KServe's"):         # an argument error: said before the ports are looked at
        serve([], backend="kserve", access_token="t0k", http_port=0, grpc_port=0, metrics_port=None)


def test_an_empty_access_token_is_refused_before_anything_loads():
    with pytest.raises(KilnError, match=r"access token \(--access-token or KILNRT_SERVE_ACCESS_TOKEN\) is empty"):
        serve([], backend="auto", access_token="")


def test_ports_taken_twice_or_out_of_range_are_refused_before_models_load():
    import socket

    from kilnrt.serve.launch import free_ports
    from kilnrt.serve.server import kserve_available

    if kserve_available() and triton_backend.pytriton_available():
        pytest.skip("neither server is installed (pip install -e '.[dev]')")

    http, metrics = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(KilnError, match=f"--grpc-port {port}: the port is taken"):
            serve([], backend="auto", grpc_port=port, http_port=http, metrics_port=None)
    with pytest.raises(KilnError, match=f"--metrics-port {http}: --http-port is {http} too"):
        serve([], backend="auto", http_port=http, grpc_port=metrics, metrics_port=http)
    for bad in (0, 70000):
        with pytest.raises(KilnError, match=f"--http-port {bad}: a port is a number from 1 to 65535"):
            serve([], backend="auto", http_port=bad, grpc_port=metrics, metrics_port=None)
