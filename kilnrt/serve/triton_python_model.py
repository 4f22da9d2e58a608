"""A kilnrt engine as a model of Triton's Python backend.

Triton runs each instance of such a model in a process of its own (the backend's *stub*), so
instances do not share an interpreter lock: this process loads the plan that ``kilnrt serve``
saved into the model repository, makes one execution context, and runs the batches that
Triton's dynamic batcher hands it.  ``kilnrt/serve/triton_backend.py`` writes the repository;
the model's ``model.py`` there only imports :class:`TritonPythonModel` from here.

``triton_python_backend_utils`` exists only inside the stub; it is looked up when an instance
starts, so that this module imports anywhere (tests hand it a stand-in).
"""
from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from kilnrt.serve.batching import split_outputs, stack_feeds
from kilnrt.serve.config import ModelSettings

log = logging.getLogger("kilnrt.serve")

SETTINGS_KEY = "kilnrt_settings"        # the model config parameter holding the ModelSettings (JSON)


class _TritonLog(logging.Handler):
    """kilnrt's log records in Triton's log (the stub's own ``Logger``), where the server's are."""

    def __init__(self, logger) -> None:
        super().__init__(logging.INFO)
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        write = (self.logger.log_error if record.levelno >= logging.ERROR else
                 self.logger.log_warn if record.levelno >= logging.WARNING else self.logger.log_info)
        write(f"kilnrt: {self.format(record)}")


def _log_to_triton(pb_utils) -> None:
    root = logging.getLogger("kilnrt")
    if hasattr(pb_utils, "Logger") and not any(isinstance(h, _TritonLog) for h in root.handlers):
        root.addHandler(_TritonLog(pb_utils.Logger))
        root.setLevel(min(root.getEffectiveLevel(), logging.INFO))


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils   # the stub's module

        from kilnrt.serve.models import ServedModel

        self.pb = pb_utils
        _log_to_triton(pb_utils)
        config = json.loads(args["model_config"])
        fields = json.loads(config["parameters"][SETTINGS_KEY]["string_value"])
        settings = ModelSettings(**{**fields, "instances": 1})
        if settings.device == "cuda" and args.get("model_instance_kind") == "GPU":
            import torch

            torch.cuda.set_device(int(args["model_instance_device_id"]))
        self.model = ServedModel.from_settings(settings)     # loads the plan; warms up on CUDA
        self.context = self.model.contexts[0]
        self.input_names = [t.name for t in self.model.inputs]
        log.info("model %r: instance %s ready", self.model.name, args.get("model_instance_name"))

    def execute(self, requests: list) -> list:
        """One response per request: the requests Triton batched together run as one batch."""
        pb = self.pb
        try:
            feeds = [{n: pb.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names} for r in requests]
            if len(feeds) > 1 and self.model.max_batch > 0:
                sizes = [next(iter(f.values())).shape[0] for f in feeds]
                parts = split_outputs(self.model.run_on(self.context, stack_feeds(feeds)), sizes)
            else:
                parts = [self.model.run_on(self.context, f) for f in feeds]
        except Exception as exc:  # noqa: BLE001 -- every request of the batch gets the error, the model serves on
            error = pb.TritonError(f"model {self.model.name!r}: {type(exc).__name__}: {exc}")
            return [pb.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        return [pb.InferenceResponse(output_tensors=[pb.Tensor(n, np.ascontiguousarray(v)) for n, v in p.items()])
                for p in parts]

    def finalize(self) -> None:
        self.context = self.model = None
