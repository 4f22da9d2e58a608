"""``serve()``: load every model, pick the server that can run here, and serve until stopped."""
from __future__ import annotations

import logging
from pathlib import Path

from kilnrt.errors import ErrorCode, KilnError
from kilnrt.serve.config import ModelSettings
from kilnrt.serve.models import load_models

log = logging.getLogger("kilnrt.serve")

BACKENDS = ("auto", "triton", "kserve")
TRITON_MAX_REQUEST_BYTES = 64 << 20       # Triton's own HTTP input limit (--http-max-input-size default)


def kserve_available() -> str | None:
    """None when KServe's model server can run here, else why not."""
    import importlib.util

    if importlib.util.find_spec("kserve") is None:
        return "kserve is not installed; pip install 'kilnrt[serve]'"
    return None


def choose_backend(backend: str = "auto") -> tuple[str, str]:
    """(backend, why): Triton through PyTriton where it can run, else KServe's model server."""
    from kilnrt.serve.triton_backend import pytriton_available

    if backend not in BACKENDS:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"backend {backend!r}; supported: {', '.join(BACKENDS)}")
    triton_missing = pytriton_available() if backend in ("auto", "triton") else "not asked for"
    if backend == "triton" and triton_missing:
        raise KilnError(ErrorCode.RUNTIME, f"--backend triton: {triton_missing}")
    if backend in ("auto", "triton") and not triton_missing:
        return "triton", "PyTriton is installed and its Python backend stub can load this interpreter's libpython"
    kserve_missing = kserve_available()
    if kserve_missing:
        why = f"{kserve_missing}" if backend == "kserve" else f"Triton: {triton_missing}; KServe: {kserve_missing}"
        raise KilnError(ErrorCode.RUNTIME, f"no server to serve with ({why})")
    return "kserve", ("asked for" if backend == "kserve" else f"fallback, Triton cannot run here: {triton_missing}")


def check_ports_free(ports: dict[str, int | None], *, optional: tuple[str, ...] = ()) -> None:
    """Refuse, before any model is built, ports out of range, given twice, or already bound by
    another program (Triton's client would otherwise find that program, and report its answers).
    A flag in ``optional`` may be None or 0 (off)."""
    import errno
    import socket

    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if not port and flag in optional:
            continue
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{flag} {port!r}: a port is a number from 1 to 65535")
        if port in seen:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{flag} {port}: {seen[port]} is {port} too; each service "
                                                        "needs a port of its own")
        seen[port] = flag
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError as exc:
                why = ("the port is taken; pick another, or stop what listens there" if exc.errno == errno.EADDRINUSE
                       else f"it cannot be bound here ({exc.strerror})")
                raise KilnError(ErrorCode.RUNTIME, f"{flag} {port}: {why}") from None


def serve(settings: list[ModelSettings], *, backend: str = "auto", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int | None = 8002, max_request_bytes: int = TRITON_MAX_REQUEST_BYTES,
          timing_cache_dir: str | Path | None = None, plan_key: bytes | None = None,
          access_token: str | None = None) -> None:
    """Serve ``settings`` over KServe v2 (HTTP and gRPC) until SIGINT/SIGTERM.

    ``access_token`` opens Triton's restricted APIs (shared memory, model repository, statistics,
    trace, logging) to requests that carry it; KServe's server has none of them, so it refuses one.
    The token is full trust: the model-repository API loads models, Python code included, and
    PyTriton passes it on ``tritonserver``'s command line, where local users can read it.
    """
    if access_token is not None and not access_token.strip():
        raise KilnError(ErrorCode.INVALID_ARGUMENT, "the access token (--access-token or KILNRT_SERVE_ACCESS_TOKEN) is "
                                                    "empty; give one, or set neither to keep Triton's restricted APIs "
                                                    "closed")
    chosen, why = choose_backend(backend)
    if access_token is not None and chosen != "triton":
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"an access token opens Triton's restricted APIs, but the server "
                                                    f"here is KServe's ({why}), which has none; drop the token")
    check_ports_free({"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port},
                     optional=("--metrics-port",))
    log.warning("kilnrt serve: %s (%s)", "Triton Inference Server via PyTriton" if chosen == "triton"
                else "KServe model server", why)
    # Triton's instances run in processes of their own, each making its own context from a saved plan
    models = load_models(settings, Path(timing_cache_dir) if timing_cache_dir else None, plan_key,
                         contexts=chosen != "triton")
    for m in models:
        log.warning("model %r: %s, max batch %d, %d instance(s), dynamic batching %s", m.name, m.settings.path,
                    m.max_batch, m.settings.instances,
                    "on" if m.settings.dynamic_batching and m.max_batch else "off")
    if chosen == "triton":
        from kilnrt.serve.triton_backend import run_triton

        if max_request_bytes != TRITON_MAX_REQUEST_BYTES:
            log.warning("--max-request-bytes is not passed to Triton (PyTriton has no option for it); Triton "
                        "refuses HTTP bodies over its own 64 MiB default")
        run_triton(models, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                   access_token=access_token)
    else:
        from kilnrt.serve.kserve_backend import run_kserve

        run_kserve(models, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                   max_request_bytes=max_request_bytes)
