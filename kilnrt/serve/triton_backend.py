"""Serving through NVIDIA Triton Inference Server, which PyTriton (``nvidia-pytriton``) bundles:
KServe v2 over HTTP and gRPC, health, metadata, model config, Prometheus metrics and Triton's
own dynamic batcher, with one kilnrt execution context per model instance.

PyTriton runs each bound Python function behind Triton's Python backend, whose *stub* is a
small program linked against ``libpython3.X.so.1.0``.  The dynamic loader resolves that name
through its search path, not from the running interpreter, so on a machine with a second
Python 3.X (a distribution's next to pyenv's) the stub can load the other one's libpython
under this interpreter's standard library; 3.11.2's core under 3.11.7's ``multiprocessing`` fails
with ``'_thread.RLock' object has no attribute '_recursion_count'``.  :func:`stub_library_path`
puts the running interpreter's own library folder first on ``LD_LIBRARY_PATH`` so the stub loads
the same libpython the server runs.
"""
from __future__ import annotations

import logging
import os
import sys
import sysconfig
from pathlib import Path

from kilnrt.errors import ErrorCode, KilnError
from kilnrt.serve.models import ServedModel

log = logging.getLogger("kilnrt.serve")


def interpreter_libpython() -> Path | None:
    """This interpreter's shared ``libpython3.X.so.1.0`` (None for a statically linked one)."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    for folder in (sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LIBPL")):
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def stub_library_path() -> str:
    """``LD_LIBRARY_PATH`` with this interpreter's library folder first (see the module docstring)."""
    lib = interpreter_libpython()
    if lib is None:
        raise KilnError(ErrorCode.RUNTIME,
                        f"PyTriton's Python backend stub links libpython{sys.version_info.major}."
                        f"{sys.version_info.minor}.so.1.0, but this interpreter ({sys.executable}) is statically "
                        "linked and has no shared libpython; use a Python built with --enable-shared, or "
                        "`kilnrt serve --backend kserve`")
    current = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != str(lib.parent)]
    return ":".join([str(lib.parent), *current])


def pytriton_available() -> str | None:
    """None when PyTriton can serve here, else why not."""
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        return "nvidia-pytriton is not installed (pip install nvidia-pytriton; it needs numpy<2)"
    if not sys.platform.startswith("linux"):
        return "PyTriton runs on Linux only"
    if interpreter_libpython() is None:
        return f"{sys.executable} has no shared libpython for PyTriton's Python backend stub"
    return numpy_mismatch()


def numpy_mismatch() -> str | None:
    """Why the installed numpy cannot serve through PyTriton, or None.

    PyTriton 0.7's Python backend stub is built against numpy 1: under numpy 2 it neither refuses
    nor warns, its inputs arrive as zeros and its outputs come back empty.  So numpy must satisfy
    PyTriton's own numpy pin (``<2.0.0`` in 0.7's metadata); a PyTriton without the pin passes.
    """
    from importlib.metadata import PackageNotFoundError, requires

    import numpy

    try:
        from packaging.requirements import Requirement
        pins = [r.specifier for r in map(Requirement, requires("nvidia-pytriton") or ())
                if r.name == "numpy" and r.marker is None]
    except PackageNotFoundError:
        return None
    except ImportError:                      # no packaging: 0.7's pin
        pins = ["<2.0.0"]
    for pin in pins:
        ok = (pin.contains(numpy.__version__, prereleases=True) if not isinstance(pin, str)
              else int(numpy.__version__.split(".")[0]) < 2)
        if not ok:
            return (f"numpy {numpy.__version__} is installed, but PyTriton's Python backend stub needs numpy{pin} "
                    "(under numpy 2 its inputs arrive as zeros and its outputs empty); serve from an environment "
                    "with numpy<2 (docs/serving.md shows one), or --backend kserve")
    return None


def _infer_function(model: ServedModel, context):
    """One instance: a Triton infer function running on its own execution context."""
    from pytriton.decorators import batch

    def run(**feeds):
        return model.run_on(context, feeds)   # padded as ServedModel.run pads

    return batch(run) if model.max_batch > 0 else (lambda requests: [run(**dict(r)) for r in requests])


def bind_model(triton, model: ServedModel) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    s = model.settings
    # PyTriton's ``batching`` says whether the first dim is the batch dim (False sets max_batch_size 0);
    # the dynamic batcher is the separate ``batcher`` (None: batched requests, each run on its own)
    batcher = None
    if s.dynamic_batching and model.max_batch > 0:
        batcher = DynamicBatcher(max_queue_delay_microseconds=s.max_queue_delay_us,
                                 preferred_batch_size=list(model.preferred_batch_sizes) or None)
    triton.bind(model_name=model.name,
                infer_func=[_infer_function(model, c) for c in model.contexts],
                inputs=[Tensor(name=t.name, dtype=t.dtype, shape=t.shape) for t in model.inputs],
                outputs=[Tensor(name=t.name, dtype=t.dtype, shape=t.shape) for t in model.outputs],
                config=ModelConfig(max_batch_size=model.max_batch, batching=model.max_batch > 0, batcher=batcher),
                strict=True)


def run_triton(models: list[ServedModel], *, http_port: int, grpc_port: int, metrics_port: int | None,
               access_token: str | None = None) -> None:
    """Serve ``models`` with Triton until SIGINT/SIGTERM (blocks).

    PyTriton restricts Triton's shared-memory, model-repository, statistics, trace and logging APIs
    to requests with a ``triton-access-token`` header; ``access_token`` is that token (None: PyTriton
    draws a random one, which nobody outside knows).
    """
    os.environ["LD_LIBRARY_PATH"] = stub_library_path()
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          allow_metrics=bool(metrics_port),
                          allow_gpu_metrics=any(m.settings.device == "cuda" for m in models) or None)
    with Triton(config=config, security_config=TritonSecurityConfig(access_token=access_token)) as triton:
        for model in models:
            bind_model(triton, model)
        log.info("Triton Inference Server: HTTP %d, gRPC %d, metrics %s", http_port, grpc_port, metrics_port or "off")
        triton.serve()
