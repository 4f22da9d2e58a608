"""Serving through NVIDIA Triton Inference Server, which PyTriton (``nvidia-pytriton``) bundles:
KServe v2 over HTTP and gRPC, health, metadata, model config, Prometheus metrics and Triton's
own dynamic batcher.  PyTriton starts its ``tritonserver`` on a model repository that
:func:`write_repository` writes; each model runs in Triton's Python backend, one process per
instance (``kilnrt/serve/triton_python_model.py``).

That backend's *stub* is a small program linked against ``libpython3.X.so.1.0``.  The dynamic
loader resolves that name through its search path, not from the running interpreter, so on a
machine with a second Python 3.X (a distribution's next to pyenv's) the stub can load the other
one's libpython under this interpreter's standard library; 3.11.2's core under 3.11.7's
``multiprocessing`` fails with ``'_thread.RLock' object has no attribute '_recursion_count'``.
:func:`stub_library_path` puts the running interpreter's own library folder first on
``LD_LIBRARY_PATH`` so the stub loads the same libpython the server runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
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
        wanted = requires("nvidia-pytriton") or ()
    except PackageNotFoundError:
        return None
    try:
        from packaging.requirements import Requirement
    except ImportError:                      # no packaging: 0.7's pin, by hand
        pins = {"<2.0.0": int(numpy.__version__.split(".")[0]) < 2}
    else:
        pins = {str(r.specifier): r.specifier.contains(numpy.__version__, prereleases=True)
                for r in map(Requirement, wanted) if r.name == "numpy" and r.marker is None}
    for pin, ok in pins.items():
        if not ok:
            return (f"numpy {numpy.__version__} is installed, but PyTriton's Python backend stub needs numpy{pin} "
                    "(under numpy 2 its inputs arrive as zeros and its outputs empty); serve from an environment "
                    "with numpy<2 (docs/serving.md shows one), or --backend kserve")
    return None


MODEL_PY = '''"""Triton Python-backend model {name!r}, written by kilnrt serve: kilnrt runs it."""
import sys

if {root!r} not in sys.path:           # the kilnrt that wrote the repository, ahead of any other installed
    sys.path.insert(0, {root!r})
from kilnrt.serve.triton_python_model import TritonPythonModel  # noqa: E402,F401
'''


def _triton_tensors(model: ServedModel, config: dict, data_types) -> None:
    """``config``'s inputs and outputs as Triton's Python backend can take them, or a KilnError
    naming the one it cannot: its tensors reach the model as numpy arrays (no BF16; FP8 and
    the like have no Triton type), and Triton wants at least one dim per tensor, so a tensor
    of one value per item (``[N]``, an argmax or a score) is declared ``[1]`` per item and
    reshaped to no dims for the model (clients see ``[N, 1]``)."""
    for kind in ("input", "output"):
        for entry in config[kind]:
            where = f"model {model.name!r} {kind} {entry['name']!r}"
            datatype = entry["data_type"]
            if datatype == "TYPE_BF16" or datatype not in data_types:
                raise KilnError(ErrorCode.INVALID_ARGUMENT,
                                f"{where} is {datatype.removeprefix('TYPE_')}, which Triton's Python backend "
                                "cannot hand the model (its tensors are numpy arrays); serve it with "
                                "--backend kserve, or build it with float32 or float16 inputs and outputs")
            if not entry["dims"]:
                if model.max_batch <= 0:
                    raise KilnError(ErrorCode.INVALID_ARGUMENT,
                                    f"{where} is a scalar in a model without a batch dim, which Triton cannot "
                                    "declare; serve it with --backend kserve")
                entry["dims"] = [1]
                entry["reshape"] = {"shape": []}


def write_repository(models: list[ServedModel], folder: Path) -> None:
    """A Triton model repository in ``folder`` serving ``models`` through Triton's Python backend:
    per model its engine as a plan, a ``config.pbtxt`` (inputs, outputs, max batch, dynamic
    batching, instances) and a ``model.py`` that runs the plan with kilnrt.  Triton starts one
    backend process per instance, each with its own engine and execution context, so instances
    do not share one interpreter (PyTriton's bound Python functions all run in this process).
    CUDA instances are placed on the GPU their engine was built on (Triton would otherwise
    start ``count`` of them on every visible GPU).  A model whose requests Triton's batcher
    could not stack and the instance not split back is refused here
    (``ServedModel.check_dynamic_batching``)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    import kilnrt
    from kilnrt.serve.triton_python_model import SETTINGS_KEY

    root = str(Path(kilnrt.__file__).resolve().parent.parent)
    for model in models:
        model.check_dynamic_batching()
        config = model.config()
        _triton_tensors(model, config, set(model_config_pb2.DataType.keys()))
        del config["platform"]
        config["backend"] = "python"
        if model.settings.device == "cuda":
            import torch

            config["instance_group"][0]["gpus"] = [torch.cuda.current_device()]
        version = folder / model.name / "1"
        version.mkdir(parents=True)
        plan = version / "model.plan"
        model.engine.save(str(plan))
        # the instances load the saved plan: no build, no --plan-key check (this folder is ours), and
        # the padding the server would do (resolved here, so that every instance pads alike)
        settings = dataclasses.replace(model.settings, path=plan, precision="fp32",
                                       max_batch=model.max_batch, pad_batches=bool(model.padded_batch_sizes))
        config["parameters"][SETTINGS_KEY] = {"string_value": json.dumps(settings.as_dict())}
        message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
        (folder / model.name / "config.pbtxt").write_text(text_format.MessageToString(message))
        (version / "model.py").write_text(MODEL_PY.format(name=model.name, root=root))


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _share_cpu_threads(instances: int) -> None:
    """Give each instance process its share of the cores (set in the environment Triton's backend
    processes inherit, before they load numpy and torch), unless the user set these variables.
    Each process would otherwise start a thread per core, and a few busy instances on a few cores
    spin against each other: digits on the 2-core CPU machine, 2 instances without batching, 64
    clients: 23 requests/s with a thread per core, 934 with one thread each."""
    if any(v in os.environ for v in THREAD_VARIABLES):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // max(1, instances))
    for v in THREAD_VARIABLES:
        os.environ[v] = str(share)
    log.info("each of the %d instance processes runs %d thread(s) (set %s to choose)", instances, share,
             "/".join(THREAD_VARIABLES))


STARTUP_TIMEOUT_S = 600     # every instance loads its plan and warms up before Triton answers
READY_POLL_S = 3            # how often the start checks that tritonserver still runs


class _Stop:
    """SIGINT and SIGTERM while Triton serves: the first raises KeyboardInterrupt (the finally
    blocks then stop tritonserver and remove the repository; Python would die on SIGTERM without
    them), and the stop is remembered, so that a server that exits on its own is told apart.
    Later ones are ignored, so that they do not cut that stop short."""

    def __init__(self) -> None:
        self.asked = False

    def __call__(self, signum, frame):
        if not self.asked:
            self.asked = True
            raise KeyboardInterrupt

    def install(self) -> dict:
        """Handle SIGTERM, and SIGINT unless it was ignored (a job started with ``&``); only in the
        main thread, where Python runs signal handlers (elsewhere SIGTERM ends the process as it
        would anyway).  Returns the handlers to put back."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            previous[sig] = signal.signal(sig, self)
        return previous


def _serve_until_stopped(triton, stop: _Stop, poll_s: float = 1.0) -> None:
    """Serve until a stop is asked for (returns) or tritonserver exits on its own (a KilnError, so
    that a supervisor sees a failed exit).  Not PyTriton's serve(), which starts a server that
    died again, from a workspace its exit handler is deleting."""
    try:
        while triton.is_alive():
            time.sleep(poll_s)
    except KeyboardInterrupt:
        if not stop.asked:
            raise
        return
    if not stop.asked:
        raise KilnError(ErrorCode.RUNTIME, "Triton Inference Server exited while serving; its log above says why")


def _wait_ready(triton, timeout_error: type[Exception], timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Start ``tritonserver`` and wait until it is ready, checking between short waits that it still
    runs.  PyTriton's own wait does not check, so a model that failed to load made it wait out its
    whole timeout; its wait is therefore made short (``READY_POLL_S``, by the caller) and repeated.
    ``timeout_error``: what PyTriton raises when its wait runs out."""
    deadline = time.monotonic() + timeout_s
    started = False
    while True:
        try:
            with warnings.catch_warnings():   # PyTriton warns that its client's network timeout is longer
                warnings.filterwarnings("ignore", message="Client network and/or connection timeout")
                if not started:
                    started = True
                    triton.run()          # starts tritonserver, then waits for it
                else:
                    triton.connect()      # only waits (run() would start a server that died again)
            return
        except timeout_error:
            if not triton.is_alive():
                raise KilnError(ErrorCode.RUNTIME, "Triton Inference Server exited while loading the models; its "
                                                   "log above says why (a model that failed to load, ...)") from None
            if time.monotonic() > deadline:
                raise KilnError(ErrorCode.RUNTIME, f"Triton Inference Server was not ready {timeout_s:.0f} s after it "
                                                   "started (every instance loads its plan and warms up first); its "
                                                   "log above says what it was doing") from None


def run_triton(models: list[ServedModel], *, http_port: int, grpc_port: int, metrics_port: int | None,
               access_token: str | None = None) -> None:
    """Serve ``models`` with Triton until SIGINT/SIGTERM (blocks): PyTriton starts the
    ``tritonserver`` it bundles on a model repository written by :func:`write_repository`, in a
    temporary folder removed when the server stops.  The engines are dropped from this process
    once saved there (the instances load their own).  A server that exits on its own, while
    loading or later, is an error (a supervisor then sees a failed exit, and can restart it).

    PyTriton restricts Triton's shared-memory, model-repository, statistics, trace and logging APIs
    to requests with a ``triton-access-token`` header; ``access_token`` is that token (None: PyTriton
    draws a random one).
    """
    os.environ["LD_LIBRARY_PATH"] = stub_library_path()
    _share_cpu_threads(sum(m.settings.instances for m in models))
    import pytriton.triton
    from pytriton.client.exceptions import PyTritonClientTimeoutError
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    stop = _Stop()
    repository = Path(tempfile.mkdtemp(prefix="kilnrt-triton-"))
    previous = {}
    try:
        previous = stop.install()
        write_repository(models, repository)
        _drop_engines(models)
        config = TritonConfig(model_repository=repository, http_port=http_port, grpc_port=grpc_port,
                              metrics_port=metrics_port, allow_metrics=bool(metrics_port),
                              allow_gpu_metrics=any(m.settings.device == "cuda" for m in models) or None)
        triton = Triton(config=config, security_config=TritonSecurityConfig(access_token=access_token))
        try:
            default_wait = pytriton.triton.DEFAULT_TRITON_STARTUP_TIMEOUT_S
            pytriton.triton.DEFAULT_TRITON_STARTUP_TIMEOUT_S = READY_POLL_S    # each of _wait_ready's waits
            try:
                _wait_ready(triton, PyTritonClientTimeoutError)
            finally:
                pytriton.triton.DEFAULT_TRITON_STARTUP_TIMEOUT_S = default_wait
            log.info("Triton Inference Server: HTTP %d, gRPC %d, metrics %s; model repository %s", http_port,
                     grpc_port, metrics_port or "off", repository)
            _serve_until_stopped(triton, stop)
        finally:
            with contextlib.suppress(Exception):
                triton.stop()         # tritonserver and PyTriton's workspace (a no-op if its exit handler ran)
    except KeyboardInterrupt:
        if not stop.asked:
            raise
    finally:
        shutil.rmtree(repository, ignore_errors=True)
        for sig, handler in previous.items():
            # None: a handler set outside Python, which cannot be put back from here; the default then
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _drop_engines(models: list[ServedModel]) -> None:
    """The engines were saved into the repository; this process only serves requests to Triton."""
    on_cuda = any(m.settings.device == "cuda" for m in models)
    for model in models:
        model.engine = None
    if on_cuda:
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
