"""What to serve: one :class:`ModelSettings` per model, from ``--model NAME=PATH`` or a model folder.

A model folder holds the plan or ONNX file and a small ``config.json``::

    {"max_batch": 64,                       # 0: no batch dim; absent: from the engine's profile
     "dynamic_batching": {"max_queue_delay_us": 500, "preferred_batch_sizes": [16, 32]},
     "instances": 2,                        # execution contexts serving requests at once
     "device": "cuda",                      # or "cpu"; absent: CUDA when a GPU is visible
     "precision": "fp32",                   # fp32 | fp16 | bf16 (ONNX files, built on start)
     "pad_batches": true}                   # absent: true on CUDA, false on the CPU

A *model repository* is a folder of such folders, one per model, named after the model.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from kilnrt.device import default_device
from kilnrt.errors import ErrorCode, KilnError

CONFIG_FILE = "config.json"
MODEL_FILES = ("model.plan", "model.onnx")
PRECISIONS = ("fp32", "fp16", "bf16")
DEVICES = ("cpu", "cuda")
DEFAULT_MAX_BATCH = 64          # for an engine whose batch dim is dynamic and has no profile


@dataclasses.dataclass
class ModelSettings:
    """How one model is served."""

    name: str
    path: Path                                   # a plan or an ONNX file
    max_batch: int | None = None                 # None: from the engine's profile (else DEFAULT_MAX_BATCH)
    dynamic_batching: bool = True
    max_queue_delay_us: int = 500
    preferred_batch_sizes: tuple[int, ...] = ()
    instances: int = 1
    device: str = dataclasses.field(default_factory=default_device)   # CUDA when a GPU is visible
    precision: str = "fp32"
    pad_batches: bool | None = None              # None: on CUDA (few shapes, each a cached CUDA graph)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain data, the path absolute: what another process (a Ray replica, a
        Triton instance) rebuilds them from with ``ModelSettings(**d)``."""
        out = dataclasses.asdict(self)
        out["path"] = str(self.path.resolve())
        return out

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        where = f"model {self.name!r}"
        if not self.name or any(c in self.name for c in "/\\ ") or self.name.startswith("."):
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{where}: a model name is a non-empty word without "
                                                        "'/', '\\', spaces or a leading '.'")
        _check_int(where, "max_batch", self.max_batch, 0, allow_none=True)
        _check_int(where, "instances", self.instances, 1)
        _check_int(where, "max_queue_delay_us", self.max_queue_delay_us, 0)
        self.preferred_batch_sizes = tuple(self.preferred_batch_sizes)
        for size in self.preferred_batch_sizes:
            _check_int(where, "preferred_batch_sizes", size, 1)
        if self.pad_batches is not None and not isinstance(self.pad_batches, bool):
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{where}: pad_batches must be true or false, got "
                                                        f"{self.pad_batches!r}")
        if self.device not in DEVICES:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{where}: device {self.device!r}; supported: "
                                                        + ", ".join(DEVICES))
        if self.precision not in PRECISIONS:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{where}: precision {self.precision!r}; supported: "
                                                        + ", ".join(PRECISIONS))


def _check_int(where: str, key: str, value: Any, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{where}: {key} must be an integer >= {low}, got {value!r}")


def _model_file(folder: Path) -> Path:
    for name in MODEL_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir() if p.suffix in (".plan", ".onnx"))
    if len(found) == 1:
        return folder / found[0]
    raise KilnError(ErrorCode.INVALID_ARGUMENT,
                    f"model folder {str(folder)!r} holds {len(found) or 'no'} plan/ONNX files"
                    f"{' (' + ', '.join(found) + ')' if found else ''}; put exactly one there, or name it "
                    + " or ".join(MODEL_FILES))


def settings_from_folder(name: str, folder: Path, **overrides: Any) -> ModelSettings:
    """A model folder: its plan or ONNX file and its ``config.json`` (optional)."""
    config: dict[str, Any] = {}
    config_path = folder / CONFIG_FILE
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{config_path}: not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{config_path}: must hold a JSON object")
    known = {"max_batch", "dynamic_batching", "instances", "device", "precision", "pad_batches", "model"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{config_path}: unknown key(s) {', '.join(unknown)}; "
                                                    f"known: {', '.join(sorted(known))}")
    # the command line's defaults first; what the folder's config.json says wins
    kwargs: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    kwargs.update({k: config[k] for k in ("max_batch", "instances", "device", "precision", "pad_batches")
                   if k in config})
    batching = config.get("dynamic_batching", kwargs.get("dynamic_batching", True))
    if isinstance(batching, dict):
        extra = sorted(set(batching) - {"max_queue_delay_us", "preferred_batch_sizes"})
        if extra:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{config_path}: dynamic_batching: unknown key(s) "
                                                        f"{', '.join(extra)}; known: max_queue_delay_us, "
                                                        "preferred_batch_sizes")
        kwargs.update(batching)
        batching = True
    if not isinstance(batching, bool):
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{config_path}: dynamic_batching must be true, false or an "
                                                    f"object, got {batching!r}")
    kwargs["dynamic_batching"] = batching
    path = folder / config["model"] if "model" in config else _model_file(folder)
    if not path.is_file():
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{config_path}: model file {str(path)!r} does not exist")
    return ModelSettings(name=name, path=path, **kwargs)


def parse_model_arg(spec: str, **overrides: Any) -> list[ModelSettings]:
    """``NAME=FILE`` (a plan or ONNX file), ``NAME=FOLDER`` (one model folder) or ``REPOSITORY``
    (a folder of model folders, each served under its folder's name)."""
    name, sep, path_text = spec.partition("=")
    if not sep:
        name, path_text = "", spec
    path = Path(path_text)
    if not path.exists():
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--model {spec!r}: {path_text!r} does not exist; write "
                                                    "NAME=FILE.onnx, NAME=FILE.plan, NAME=MODEL_FOLDER or "
                                                    "REPOSITORY_FOLDER")
    if path.is_file():
        if not name:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--model {spec!r}: a file needs a name: "
                                                        f"--model NAME={path_text}")
        return [ModelSettings(name=name, path=path, **{k: v for k, v in overrides.items() if v is not None})]
    if name:
        return [settings_from_folder(name, path, **overrides)]
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--model {spec!r}: a repository folder holds one folder per "
                                                    "model; this one has none (for a single model folder write "
                                                    f"--model NAME={path_text})")
    return [settings_from_folder(p.name, p, **overrides) for p in folders]


def parse_model_args(specs: list[str], **overrides: Any) -> list[ModelSettings]:
    """Every ``--model``; two models of one name are refused."""
    out: list[ModelSettings] = []
    for spec in specs:
        out.extend(parse_model_arg(spec, **overrides))
    names = [m.name for m in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"model name(s) {', '.join(twice)} given twice; names must "
                                                    "be unique")
    if not out:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, "no model to serve: add --model NAME=PATH")
    return out
