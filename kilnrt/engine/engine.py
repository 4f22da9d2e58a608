"""The Engine: a built, device-specific program as data, and its I/O table."""
from __future__ import annotations

import dataclasses
import enum
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from kilnrt.errors import ErrorCode, KilnError, ShapeError
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind


class TensorIOMode(enum.Enum):
    NONE = "none"
    INPUT = "input"
    OUTPUT = "output"


@dataclasses.dataclass
class IOTensor:
    name: str
    mode: str                           # "input" | "output"
    dtype: DataType
    shape: tuple                        # ints, -1 for dynamic
    symbolic: tuple = ()                # the same dims with symbolic names where known

    def to_json(self) -> dict:
        return {"name": self.name, "mode": self.mode, "dtype": self.dtype.name, "shape": list(self.shape),
                "symbolic": [d if isinstance(d, (int, str)) else -1 for d in self.symbolic]}

    @classmethod
    def from_json(cls, d: dict) -> "IOTensor":
        return cls(d["name"], d["mode"], DataType[d["dtype"]], tuple(d["shape"]), tuple(d.get("symbolic", ())))


TENSOR_FORMATS = ("linear", "channels_last")   # row-major; NHWC strides of a 4-D tensor


@dataclasses.dataclass
class EngineLayer:
    name: str
    kind: LayerKind
    params: Any
    inputs: list[str | None]
    outputs: list[str]
    origin: tuple[str, ...]
    tactic: str
    precision: DataType | None = None
    output_dtypes: list[str | None] = dataclasses.field(default_factory=list)
    output_shapes: list[Any] = dataclasses.field(default_factory=list)
    input_dtypes: list[str | None] = dataclasses.field(default_factory=list)
    input_shapes: list[Any] = dataclasses.field(default_factory=list)
    timing_ms: float | None = None
    candidates: dict[str, float] = dataclasses.field(default_factory=dict)
    # per output: one of TENSOR_FORMATS, as the chosen tactic writes it at build; None where
    # unknown (CPU builds run nothing at build). Empty in plans from before the field.
    output_formats: list[str | None] = dataclasses.field(default_factory=list)
    # (concatenation output, axis, start): the chosen tactic stores this layer's single output
    # straight into that slice of the concatenation's buffer (kilnrt.builder.concat); None
    # where it makes its own (and in plans from before the field).
    writes_into: tuple[str, int, int] | None = None
    # bucket index (>= 1, into Engine.bucket_shapes) -> the tactic run for input shapes nearest
    # that bucket's point, where it differs from ``tactic`` (kilnrt.builder.buckets)
    bucket_tactics: dict[int, str] = dataclasses.field(default_factory=dict)

    def as_network_layer(self):
        """A detached :class:`~kilnrt.network.graph.Layer` view, for tactics' ``prepare``."""
        from kilnrt.network.graph import Layer, Network, Tensor

        net = Network("engine")
        in_dtypes = self.input_dtypes or [None] * len(self.inputs)
        in_shapes = self.input_shapes or [None] * len(self.inputs)
        ins = [None if n is None else Tensor(net, n, DataType[dt] if dt else None, shp)
               for n, dt, shp in zip(self.inputs, in_dtypes, in_shapes)]
        layer = Layer(net, self.kind, self.params, ins, self.name, self.origin)
        for n, dt, shp in zip(self.outputs, self.output_dtypes or [None] * len(self.outputs),
                              self.output_shapes or [None] * len(self.outputs)):
            t = Tensor(net, n, DataType[dt] if dt else None, shp)
            t.producer = layer
            layer.outputs.append(t)
        return layer


class Engine:
    """A built engine. Run it with :meth:`run`, or through :meth:`create_execution_context`."""

    def __init__(self, *, name: str, device: str, device_name: str, io: list[IOTensor],
                 layers: list[EngineLayer], constants: dict[str, np.ndarray],
                 profiles: list[dict[str, tuple]], memory: Any = None, build_info: dict | None = None,
                 tensors: dict[str, dict] | None = None, portable: bool = False,
                 kernels: dict[str, str] | None = None, version: str | None = None,
                 bucket_shapes: list[dict[str, tuple]] | None = None) -> None:
        from kilnrt import __version__

        self.name = name
        self.device = device
        self.device_name = device_name
        self.io = io
        self.layers = layers
        self.constants = constants
        self.profiles = profiles
        self.memory = memory
        self.build_info = build_info or {}
        self.tensors = tensors or {}
        self.portable = portable
        self.kernels = kernels or {}
        self.version = version or __version__
        # the input shapes each tactic bucket was tuned at, opt's first; None: one bucket
        self.bucket_shapes = bucket_shapes
        self._program = None
        self._program_lock = threading.Lock()
        # with several optimization profiles: one engine per profile (this one runs profile 0),
        # each optimized and tuned for its own profile; None: one program serves every profile
        self.profile_engines: list["Engine"] | None = None
        self._contexts = threading.local()
        # what a REFIT build keeps to fold new weights (kilnrt.engine.refit); None: not refittable
        self.refit_source = None

    # -- TensorRT's ICudaEngine ------------------------------------------------------
    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_optimization_profiles(self) -> int:
        return max(1, len(self.profiles))

    def _io(self, name: str) -> IOTensor:
        for t in self.io:
            if t.name == name:
                return t
        raise KilnError(ErrorCode.UNKNOWN_TENSOR, f"the engine has no I/O tensor named {name!r}; "
                                                  f"its tensors are: {', '.join(t.name for t in self.io)}")

    def get_tensor_name(self, index: int) -> str:
        return self.io[index].name

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode(self._io(name).mode)

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._io(name).dtype

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._io(name).shape)

    def get_tensor_profile_shape(self, name: str, profile_index: int = 0) -> list[tuple[int, ...]]:
        io = self._io(name)
        if io.mode != "input":
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{name!r} is an output; profiles bind inputs")
        if profile_index < len(self.profiles) and name in self.profiles[profile_index]:
            return [tuple(s) for s in self.profiles[profile_index][name]]
        return [tuple(io.shape)] * 3

    def is_shape_inference_io(self, name: str) -> bool:
        return False

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.io if t.mode == "input"]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.io if t.mode == "output"]

    @property
    def device_memory_size(self) -> int:
        return int(self.memory.arena_bytes) if self.memory is not None else 0

    @property
    def weights_bytes(self) -> int:
        return int(sum(a.nbytes for a in self.constants.values()))

    # -- shapes ----------------------------------------------------------------------
    def check_input_shape(self, name: str, shape: Sequence[int], profile_index: int = 0) -> tuple[int, ...]:
        io = self._io(name)
        if io.mode != "input":
            raise ShapeError(ErrorCode.INVALID_SHAPE, f"{name!r} is an output; only inputs take shapes")
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ShapeError(ErrorCode.INVALID_SHAPE, f"input {name!r}: shape {shape} has a negative dim; "
                                                      "every dim must be >= 0")
        if int(np.prod([max(d, 1) for d in shape], dtype=np.float64)) >= 1 << 62:
            raise ShapeError(ErrorCode.INVALID_SHAPE, f"input {name!r}: shape {shape} has more than 2^62 elements")
        expected = tuple(io.shape)
        if len(shape) != len(expected):
            raise ShapeError(ErrorCode.INVALID_SHAPE,
                             f"input {name!r} has rank {len(expected)} (shape {_fmt(io)}), got shape {shape}")
        prof = self.profiles[profile_index].get(name) if profile_index < len(self.profiles) else None
        for i, (got, want) in enumerate(zip(shape, expected)):
            if want >= 0 and got != want:
                raise ShapeError(ErrorCode.INVALID_SHAPE,
                                 f"input {name!r} dim {i} must be {want} (shape {_fmt(io)}), got shape {shape}")
            if prof is not None and not (prof[0][i] <= got <= prof[2][i]):
                others = [k for k, p in enumerate(self.profiles) if k != profile_index and name in p
                          and all(lo <= d <= hi for d, lo, hi in zip(shape, p[name][0], p[name][2]))]
                hint = (f"; profile {others[0]} accepts it: call set_optimization_profile_async({others[0]}) first"
                        if others else "")
                raise ShapeError(ErrorCode.INVALID_SHAPE,
                                 f"input {name!r} shape {shape} is outside optimization profile "
                                 f"{profile_index}: dim {i} must be in [{prof[0][i]}, {prof[2][i]}] "
                                 f"(min {tuple(prof[0])}, max {tuple(prof[2])}){hint}")
        return shape

    def for_profile(self, index: int) -> "Engine":
        """The engine that runs optimization profile ``index``."""
        if self.profile_engines is None:
            return self
        return self.profile_engines[index]

    def profile_containing(self, shapes: Mapping[str, Sequence[int]]) -> int:
        """The profile to run these input shapes with: of the profiles whose ranges hold them,
        the narrowest (the one tuned closest to them).  Raises ShapeError naming the nearest
        profile and the dims that fall outside it when none holds them."""
        if len(self.profiles) <= 1:
            return 0
        fits, misses = [], []
        for k, prof in enumerate(self.profiles):
            outside, volume = [], 1
            for name, shape in shapes.items():
                lo_opt_hi = prof.get(name)
                if lo_opt_hi is None:
                    continue
                lo, _, hi = lo_opt_hi
                for i, d in enumerate(shape):
                    if i < len(lo) and not lo[i] <= d <= hi[i]:
                        outside.append((name, i, d, lo[i], hi[i], min(abs(d - lo[i]), abs(d - hi[i]))))
                    if i < len(lo):
                        volume *= hi[i] - lo[i] + 1
            (misses if outside else fits).append((k, outside, volume))
        if fits:
            return min(fits, key=lambda f: (f[2], f[0]))[0]
        k, outside, _ = min(misses, key=lambda m: (sum(o[5] for o in m[1]), m[0]))
        dims = "; ".join(f"input {n!r} dim {i} is {d}, profile {k} allows [{lo}, {hi}]" for n, i, d, lo, hi, _ in outside)
        raise ShapeError(ErrorCode.INVALID_SHAPE,
                         f"input shapes {dict((n, tuple(s)) for n, s in shapes.items())} are outside all "
                         f"{len(self.profiles)} optimization profiles; the nearest is profile {k}: {dims}")

    # -- running ---------------------------------------------------------------------
    @property
    def program(self):
        if self._program is None:
            with self._program_lock:
                if self._program is None:
                    from kilnrt.engine.program import Program

                    self._program = Program(self)
        return self._program

    def reset_program(self) -> None:
        """Prepare the program again on next use (after a refit changed the constants);
        contexts notice the new program and drop CUDA graphs captured with the old one."""
        with self._program_lock:
            self._program = None

    # -- refit -----------------------------------------------------------------------
    @property
    def refittable(self) -> bool:
        return self.refit_source is not None

    def refit(self, weights: Mapping[str, Any]) -> list[str]:
        """Replace named weights (ONNX initializer names) of a REFIT engine without a rebuild:
        ``engine.refit({"conv1.weight": array})``.  Shapes and dtypes must match the old
        weights; folded weights (BatchNorm into a convolution, FP16 casts) are folded again.
        Returns the names replaced.  See docs/refit.md."""
        from kilnrt.engine.refit import refit_engine

        return refit_engine(self, weights)

    @property
    def refittable_weights(self) -> list[str]:
        """The names ``refit`` accepts (empty unless built with BuilderFlag.REFIT)."""
        return [] if self.refit_source is None else self.refit_source.names

    def create_execution_context(self, strategy: Any = None):
        from kilnrt.engine.context import ExecutionContext

        return ExecutionContext(self)

    def create_execution_context_without_device_memory(self):
        return self.create_execution_context()

    def run(self, feeds: Mapping[str, Any] | None = None, **named: Any) -> dict[str, Any]:
        """Run once: ``engine.run({"input": array})`` -> ``{"output": array}``.

        Takes numpy arrays (returns numpy) or torch tensors (returns torch tensors on the
        engine's device).  Safe to call from several threads.
        """
        ctx = getattr(self._contexts, "default", None)
        if ctx is None:  # one context per thread: contexts hold per-run state
            ctx = self._contexts.default = self.create_execution_context()
        return ctx.run(feeds, **named)

    __call__ = run

    # -- plans -----------------------------------------------------------------------
    def serialize(self, *, key: bytes | str | None = None) -> bytes:
        """The plan bytes; with ``key``, signed (HMAC-SHA256, see :mod:`kilnrt.engine.plan`)."""
        from kilnrt.engine.plan import sign
        from kilnrt.engine.planio import engine_to_bytes

        data = engine_to_bytes(self)
        return sign(data, key) if key is not None else data

    def save(self, path: str, *, key: bytes | str | None = None) -> None:
        data = self.serialize(key=key)
        with open(path, "wb") as f:
            f.write(data)

    @classmethod
    def deserialize(cls, data: bytes, *, check_device: bool = True, key: bytes | str | None = None,
                    memory_budget: int | str | None = None) -> "Engine":
        """An engine from plan bytes; with ``key``, only a plan signed with it loads; it must fit
        in ``memory_budget`` (bytes or "8G"; None: ``KILNRT_MEMORY_BUDGET``, else the device's
        available memory; see docs/robustness.md)."""
        from kilnrt.engine.planio import load_plan

        return load_plan(bytes(data), key=key, check_device=check_device, memory_budget=memory_budget)

    def create_engine_inspector(self):
        from kilnrt.engine.inspector import EngineInspector

        return EngineInspector(self)

    def __repr__(self) -> str:
        ins = ", ".join(f"{t.name}{list(t.shape)}" for t in self.io if t.mode == "input")
        outs = ", ".join(f"{t.name}{list(t.shape)}" for t in self.io if t.mode == "output")
        return f"<kilnrt.Engine {self.name!r} on {self.device} ({self.device_name}): {len(self.layers)} layers, ({ins}) -> ({outs})>"


def _fmt(io: IOTensor) -> str:
    dims = io.symbolic if io.symbolic else io.shape
    return "(" + ", ".join(str(d) for d in dims) + ")"

