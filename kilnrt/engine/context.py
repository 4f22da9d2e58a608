"""ExecutionContext: bind inputs and outputs, run, read results.

Two calling styles:

* TensorRT's: ``set_input_shape``, ``set_tensor_address`` (numpy arrays, torch tensors,
  or raw pointers), ``execute_async_v3(stream)`` / ``execute_v2(bindings)``;
* Pythonic: ``context.run({"input": array}) -> {"output": array}``.

On a CUDA engine both replay CUDA graphs (:mod:`kilnrt.engine.cudagraph`).  A call of
``execute_async_v3`` whose bindings (addresses, shapes, profile) have not changed since the
previous call on the same stream is one graph launch: nothing is checked again, since
nothing that was checked has changed (``_version`` counts the changes).
"""
from __future__ import annotations

import ctypes
import functools
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from kilnrt.device import out_of_memory, pointer_kind
from kilnrt.engine.cudagraph import GraphPool, current_raw_stream
from kilnrt.errors import DTypeError, ErrorCode, ExecutionError, KilnError, ShapeError
from kilnrt.network.dtypes import DataType, numpy_to_torch, torch_to_numpy


def _no_bare_out_of_memory(method):
    """``method`` with a torch.OutOfMemoryError outside any layer (an input's or output's copy,
    the shape program's values) raised as ExecutionError OUT_OF_MEMORY; a layer's own is one
    already (``Program``)."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except torch.OutOfMemoryError as exc:   # raised below, outside this block (see Program)
            said = str(exc)
        raise ExecutionError(ErrorCode.OUT_OF_MEMORY,
                             out_of_memory(said, f"in {method.__name__}, copying the inputs or the outputs"))
    return call


class ExecutionContext:
    def __init__(self, engine) -> None:
        self.engine = engine
        self.name = ""
        self.profiler = None
        self.debug_sync = False
        self.active_optimization_profile = 0
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, Any] = {}
        self._allocators: dict[str, Any] = {}
        self._output_shapes: dict[str, tuple[int, ...]] = {}
        self._advertised: dict[tuple, dict[str, tuple[int, ...]]] = {}   # see _pointer_output_shapes
        self._graphs: dict[int, Any] = {}   # optimization profile -> its CUDA-graph cache (run())
        self._bound = None                  # BoundGraphs of execute_async_v3 on bound buffers
        self._pool = None                   # the CUDA-graph memory pool this context's graphs share (GraphPool)
        self._version = 0                   # bumped by every change of shapes, bindings or profile
        self._fast = None                   # (version, stream handle, program, launch) of the last bound run
        self._checked: dict[tuple, tuple] = {}   # run(): feeds signature -> (profile, shapes) already checked
        self._replays: dict[tuple, _Replay] = {}  # run(): feeds key -> its captured graph, ready to launch
        self.use_cuda_graph = True
        self.graph_cache_config = None      # a GraphCacheConfig; None: its defaults (env knobs)

    # -- shapes ----------------------------------------------------------------------
    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        checked = self.engine.check_input_shape(name, shape, self.active_optimization_profile)
        self._set_shape(name, checked)
        return True

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """Record an input's (checked) shape.  A new one drops the last run's output shapes:
        ``get_tensor_shape`` infers them again for the new shapes (-1 for a size that depends
        on data, as TensorRT says, until a run at these shapes)."""
        if self._shapes.get(name) != shape:
            self._shapes[name] = shape
            self._version += 1
            self._output_shapes.clear()

    def _set_profile(self, profile: int) -> None:
        if profile != self.active_optimization_profile:
            self.active_optimization_profile = profile
            self._version += 1
            self._output_shapes.clear()

    def _check_shared_dims(self) -> None:
        """Inputs that share a symbolic dim (``batch``) must be given the same size for it."""
        seen: dict[str, tuple[str, int, int]] = {}
        for t in self.engine.io:
            if t.mode != "input" or t.name not in self._shapes:
                continue
            for i, sym in enumerate(t.symbolic):
                if not isinstance(sym, str):
                    continue
                size = self._shapes[t.name][i]
                if sym in seen and seen[sym][2] != size:
                    other, j, other_size = seen[sym]
                    prof = self.engine.profiles[self.active_optimization_profile].get(t.name) \
                        if self.active_optimization_profile < len(self.engine.profiles) else None
                    allowed = f" (profile {self.active_optimization_profile} allows {sym} in [{prof[0][i]}, " \
                              f"{prof[2][i]}])" if prof is not None else ""
                    raise ShapeError(ErrorCode.INVALID_SHAPE,
                                     f"inputs {other!r} (dim {j} = {other_size}) and {t.name!r} (dim {i} = {size}) "
                                     f"share the dynamic dim {sym!r}, so they must have the same size there{allowed}")
                seen.setdefault(sym, (t.name, i, size))

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        io = self.engine._io(name)
        if io.mode == "input":
            return self._shapes.get(name, tuple(io.shape))
        if name in self._output_shapes:
            return self._output_shapes[name]
        if all(t.name in self._shapes or all(d >= 0 for d in t.shape)
               for t in self.engine.io if t.mode == "input"):
            return self._infer_output_shapes().get(name, tuple(io.shape))
        return tuple(io.shape)

    def _infer_output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Output shapes for the bound input shapes, from the engine's symbolic dims (no data:
        an output whose size depends on data is known only after a run)."""
        shapes = {t.name: self._shapes.get(t.name, tuple(t.shape)) for t in self.engine.io if t.mode == "input"}
        program = self._engine().program.shapes
        if any(program.dims.get(t.name) is None for t in self.engine.io if t.mode == "output"):
            return self._infer_output_shapes_by_running(shapes)   # a plan without symbolic dims
        bindings = program.bindings(shapes)
        out = {}
        for t in self.engine.io:
            if t.mode == "output":
                shape = program.shape_of(t.name, bindings)
                if shape is not None:
                    out[t.name] = shape
        return out

    def _infer_output_shapes_by_running(self, shapes) -> dict[str, tuple[int, ...]]:
        feeds = {t.name: torch.empty(shapes[t.name], dtype=t.dtype.torch, device="meta")
                 for t in self.engine.io if t.mode == "input"}
        try:
            from kilnrt.engine.shapes import engine_output_shapes

            return engine_output_shapes(self.engine, feeds)
        except Exception:  # noqa: BLE001 - data-dependent: known only after running
            return {}

    @property
    def graph_stats(self):
        """CUDA-graph cache counters of this context (captures, replays, evictions, eager runs,
        the slowest capture's first-call time): those of ``run()`` at the active profile plus
        those of ``execute_async_v3`` on bound buffers; None before the first CUDA run."""
        caches = [c for c in (self._graphs.get(self.active_optimization_profile), self._bound) if c is not None]
        if not caches:
            return None
        if len(caches) == 1:
            return caches[0].stats
        from kilnrt.engine.cudagraph import GraphStats

        a, b = caches[0].stats, caches[1].stats
        return GraphStats(a.captures + b.captures, a.replays + b.replays, a.evictions + b.evictions,
                          a.eager_runs + b.eager_runs, a.declined + b.declined,
                          max(a.last_capture_ms, b.last_capture_ms), a.fallback_reason or b.fallback_reason)

    def _engine(self):
        """The engine that runs the active optimization profile."""
        return self.engine.for_profile(self.active_optimization_profile)

    @property
    def all_binding_shapes_specified(self) -> bool:
        return all(t.name in self._shapes or all(d >= 0 for d in t.shape)
                   for t in self.engine.io if t.mode == "input")

    @property
    def all_shape_inputs_specified(self) -> bool:
        return True

    def infer_shapes(self) -> list[str]:
        return [t.name for t in self.engine.io
                if t.mode == "input" and t.name not in self._shapes and any(d < 0 for d in t.shape)]

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int = 0) -> bool:
        if not 0 <= profile_index < self.engine.num_optimization_profiles:
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"profile index {profile_index} out of range: the engine has "
                            f"{self.engine.num_optimization_profiles} profile(s)")
        self._set_profile(profile_index)
        return True

    # -- bindings --------------------------------------------------------------------
    def set_tensor_address(self, name: str, address: Any) -> bool:
        self.engine._io(name)
        old = self._addresses.get(name)
        if old is not address and not (type(old) is int and type(address) is int and old == address):
            self._version += 1
            self._addresses[name] = address
        return True

    def get_tensor_address(self, name: str) -> Any:
        return self._addresses.get(name)

    def set_output_allocator(self, name: str, allocator: Any) -> bool:
        self.engine._io(name)
        self._version += 1
        self._allocators[name] = allocator
        return True

    def get_output_allocator(self, name: str) -> Any:
        return self._allocators.get(name)

    def _as_tensor(self, name: str, buf: Any, shape: tuple[int, ...] | None, dtype: DataType) -> torch.Tensor:
        if isinstance(buf, torch.Tensor):
            return buf
        if isinstance(buf, np.ndarray):
            return numpy_to_torch(buf)
        if _is_pointer(buf):
            ptr = int(buf)
            if ptr <= 0:
                raise ExecutionError(ErrorCode.INVALID_ARGUMENT,
                                     f"tensor {name!r} is bound to the pointer {ptr:#x}; bind the address of an "
                                     "allocation (or an array / tensor)")
            if shape is None:
                raise ExecutionError(ErrorCode.INVALID_ARGUMENT,
                                     f"tensor {name!r} is bound to a raw pointer but its shape is unknown; "
                                     "call set_input_shape first")
            if self.engine.device != "cuda" and pointer_kind(ptr) == "device":
                raise ExecutionError(ErrorCode.INVALID_ARGUMENT,
                                     f"tensor {name!r} is bound to GPU memory ({ptr:#x}), but this engine runs on "
                                     "the CPU and reads host memory; build it for the GPU (device='cuda', the "
                                     "default where a GPU is visible), or bind host buffers")
            return _from_pointer(ptr, shape, dtype, self.engine.device)
        if hasattr(buf, "__cuda_array_interface__") or hasattr(buf, "__dlpack__"):
            return torch.from_dlpack(buf) if hasattr(buf, "__dlpack__") else torch.as_tensor(buf, device="cuda")
        raise ExecutionError(ErrorCode.INVALID_ARGUMENT,
                             f"tensor {name!r} is bound to a {type(buf).__name__}; bind a numpy array, "
                             "a torch tensor, an object with __dlpack__, or an integer pointer")

    # -- running ---------------------------------------------------------------------
    @_no_bare_out_of_memory
    def execute_async_v3(self, stream_handle: int = 0) -> bool:
        """Run on ``stream_handle`` (a CUDA stream pointer; 0: the current stream): reads the
        bound inputs, writes the bound outputs, all ordered on that stream."""
        fast = self._fast
        if fast is not None and fast[0] == self._version and fast[1] == stream_handle \
                and fast[2] is self._engine()._program and self.profiler is None and self.use_cuda_graph:
            fast[3](stream_handle or current_raw_stream())
            self._bound.stats.replays += 1
            return True
        if self.engine.device != "cuda":
            return self._execute_bound(0)
        stream = torch.cuda.ExternalStream(stream_handle) if stream_handle else torch.cuda.current_stream()
        with torch.cuda.stream(stream):
            return self._execute_bound(stream_handle, stream)

    def _execute_bound(self, stream_handle: int, stream=None) -> bool:
        self._fast = None
        feeds = {}
        for t in self.engine.io:
            if t.mode != "input":
                continue
            if t.name not in self._addresses:
                raise ExecutionError(ErrorCode.INVALID_ARGUMENT,
                                     f"input {t.name!r} has no address: call set_tensor_address({t.name!r}, buffer)")
            buf = self._addresses[t.name]
            shape = self._shapes.get(t.name) or (tuple(t.shape) if all(d >= 0 for d in t.shape) else None)
            tensor = self._as_tensor(t.name, buf, shape, t.dtype)
            if shape is not None and tuple(tensor.shape) != shape:
                if tensor.numel() < int(np.prod(shape)):
                    raise ExecutionError(ErrorCode.INVALID_SHAPE,
                                         f"input {t.name!r}: the bound buffer holds {tensor.numel()} elements, "
                                         f"the input shape {shape} needs {int(np.prod(shape))}")
                tensor = tensor.reshape(-1)[: int(np.prod(shape))].reshape(shape)
            feeds[t.name] = tensor
        self._check_shared_dims()
        pointers = [t.name for t in self.engine.io if t.mode == "output" and t.name not in self._allocators
                    and _is_pointer(self._addresses.get(t.name))]
        advertised = self._pointer_output_shapes(pointers) if pointers else {}
        if stream is not None and self._graphable(feeds):
            return self._execute_bound_graph(feeds, advertised, stream_handle, stream)
        outputs = self._execute(feeds, stream_handle)
        self._store(outputs, advertised, stream_handle)
        return True

    def _store(self, outputs: Mapping[str, torch.Tensor], advertised, stream_handle: int) -> None:
        """Write a run's outputs into their bound buffers or output allocators."""
        self._check_advertised(outputs, advertised)
        for name, value in outputs.items():
            self._output_shapes[name] = tuple(value.shape)
            io = self.engine._io(name)
            if name in self._allocators:
                alloc = self._allocators[name]
                nbytes = value.numel() * value.element_size()
                realloc = getattr(alloc, "reallocate_output_async", None)
                ptr = realloc(name, self._addresses.get(name), nbytes, 256, stream_handle) if realloc is not None \
                    else alloc.reallocate_output(name, self._addresses.get(name), nbytes, 256)
                if ptr is None or (isinstance(ptr, int) and ptr == 0 and nbytes):
                    raise ExecutionError(ErrorCode.INVALID_ARGUMENT,
                                         f"the output allocator of {name!r} returned no memory for {nbytes} bytes "
                                         f"(shape {tuple(value.shape)})")
                target = self._as_tensor(name, ptr, tuple(value.shape), io.dtype)
                self._write(target, value, name)
                if hasattr(alloc, "notify_shape"):
                    alloc.notify_shape(name, tuple(value.shape))
                continue
            if name not in self._addresses:
                raise ExecutionError(ErrorCode.INVALID_ARGUMENT,
                                     f"output {name!r} has no address: call set_tensor_address({name!r}, buffer) "
                                     "or set_output_allocator, or use engine.run()")
            target = self._as_tensor(name, self._addresses[name], advertised.get(name, tuple(value.shape)), io.dtype)
            self._write(target, value, name)

    def _graphable(self, feeds: Mapping[str, torch.Tensor]) -> bool:
        """Whether this bound run can be one captured graph: a CUDA engine with graphs on, no
        profiler, no output allocator (data-dependent sizes), every input already on the GPU."""
        return (self.engine.device == "cuda" and self.use_cuda_graph and self.profiler is None
                and not self._allocators and all(t.is_cuda for t in feeds.values()))

    def _execute_bound_graph(self, feeds, advertised, stream_handle: int, stream) -> bool:
        """A bound run through a graph that reads and writes the bound buffers in place (see
        :class:`kilnrt.engine.cudagraph.BoundGraphs`); later calls with unchanged bindings
        launch it directly (``execute_async_v3``'s fast path)."""
        targets = {}
        for t in self.engine.io:
            if t.mode != "output":
                continue
            if t.name not in self._addresses:
                raise ExecutionError(ErrorCode.INVALID_ARGUMENT,
                                     f"output {t.name!r} has no address: call set_tensor_address({t.name!r}, buffer) "
                                     "or set_output_allocator, or use engine.run()")
            buf = self._addresses[t.name]
            shape = advertised.get(t.name)
            if shape is None and _is_pointer(buf):   # a fixed-shape output bound by pointer
                shape = tuple(t.shape)
            targets[t.name] = self._as_tensor(t.name, buf, shape, t.dtype)
        if not all(v.is_cuda for v in targets.values()):
            outputs = self._execute(feeds, stream_handle)
            self._store(outputs, advertised, stream_handle)
            return True
        if self._bound is None:
            from kilnrt.engine.cudagraph import BoundGraphs

            self._bound = BoundGraphs(self.graph_cache_config, self._graph_pool())
        program = self._engine().program
        self._bound.use(self.active_optimization_profile, program)
        key = (self.active_optimization_profile,) + self._bound.key(program, feeds, targets)
        entry = self._bound.get(key)
        if entry is False:
            def write(outputs):
                self._check_advertised(outputs, advertised)
                for name, value in outputs.items():
                    self._write(targets[name], value, name)
            entry = self._bound.capture(key, program, feeds, write, stream)
        if entry is None:   # not capturable: run eagerly
            self._bound.stats.eager_runs += 1
            outputs = self._execute(feeds, stream_handle)
            self._store(outputs, advertised, stream_handle)
            return True
        entry.launch(stream.cuda_stream)
        self._bound.stats.replays += 1
        self._output_shapes.update(entry.output_shapes)
        self._fast = (self._version, stream_handle, program, entry.launch)
        return True

    def _graph_pool(self):
        if self._pool is None:
            self._pool = GraphPool()
        return self._pool

    @staticmethod
    def _check_advertised(outputs, advertised) -> None:
        for name, value in outputs.items():
            if name in advertised and value.numel() > int(np.prod(advertised[name])):
                raise ExecutionError(ErrorCode.INVALID_SHAPE,
                                     f"output {name!r} came out with shape {tuple(value.shape)}, larger than the "
                                     f"{advertised[name]} that get_tensor_shape gave for its pointer buffer; nothing "
                                     "was written (the plan's I/O table disagrees with its layers: rebuild it)")

    def _pointer_output_shapes(self, names: list[str]) -> dict[str, tuple[int, ...]]:
        """The shapes of outputs bound to raw pointers, as ``get_tensor_shape`` advertises them
        for the bound inputs: the most a run may write there (remembered per input-shape set)."""
        key = (self.active_optimization_profile, tuple(sorted(self._shapes.items())), tuple(names))
        if key in self._advertised:
            return self._advertised[key]
        inferred = self._infer_output_shapes()
        out = {}
        for name in names:
            declared = tuple(self.engine._io(name).shape)
            shape = inferred.get(name) or (declared if all(d >= 0 for d in declared) else None)
            if shape is None or any(d < 0 for d in shape):
                raise ExecutionError(ErrorCode.INVALID_ARGUMENT,
                                     f"output {name!r} is bound to a raw pointer, but its size depends on the data "
                                     "(known only after the run); use set_output_allocator for it")
            out[name] = tuple(int(d) for d in shape)
        if len(self._advertised) >= 256:
            self._advertised.clear()
        self._advertised[key] = out
        return out

    @_no_bare_out_of_memory
    def execute_v2(self, bindings: Sequence[Any]) -> bool:
        """Synchronous run with one buffer (array, tensor or pointer) per I/O tensor, in I/O order."""
        if len(bindings) != self.engine.num_io_tensors:
            raise ExecutionError(ErrorCode.INVALID_ARGUMENT,
                                 f"execute_v2 needs {self.engine.num_io_tensors} bindings (one per I/O tensor: "
                                 f"{', '.join(t.name for t in self.engine.io)}), got {len(bindings)}")
        for t, b in zip(self.engine.io, bindings):
            self.set_tensor_address(t.name, b)
        ok = self.execute_async_v3(0)
        if self.engine.device == "cuda":
            torch.cuda.synchronize()
        return ok

    @staticmethod
    def _write(target: torch.Tensor, value: torch.Tensor, name: str) -> None:
        if target.numel() < value.numel():
            raise ExecutionError(ErrorCode.INVALID_SHAPE,
                                 f"output {name!r} needs {value.numel()} elements (shape {tuple(value.shape)}), "
                                 f"but its buffer holds {target.numel()}; use set_output_allocator for "
                                 "data-dependent shapes")
        flat = target.reshape(-1)[: value.numel()]
        flat.copy_(value.reshape(-1).to(flat.dtype))

    def _execute(self, feeds: Mapping[str, torch.Tensor], stream_handle: int = 0,
                 key: tuple | None = None) -> dict[str, torch.Tensor]:
        """Run the active profile's program on ``feeds`` (on the stream ``stream_handle``; 0:
        the current one), through the CUDA-graph cache on a CUDA engine."""
        program = self._engine().program
        if program.device.type != "cuda":
            return program.execute(feeds, self.profiler)
        stream = torch.cuda.ExternalStream(stream_handle) if stream_handle else None
        if self.profiler is not None or not self.use_cuda_graph:
            with torch.cuda.stream(stream or torch.cuda.current_stream()):
                return program.execute(feeds, self.profiler)
        cache = self._graphs.get(self.active_optimization_profile)
        if cache is None or cache.program is not program:   # a refit made a new program
            from kilnrt.engine.cudagraph import GraphCache

            cache = self._graphs[self.active_optimization_profile] = GraphCache(
                program, self.graph_cache_config, self._graph_pool())
        return cache.run(feeds, stream, key)

    @_no_bare_out_of_memory
    def run(self, feeds: Mapping[str, Any] | None = None, **named: Any) -> dict[str, Any]:
        """Run on numpy arrays or torch tensors; returns outputs of the same kind (without
        inputs: torch tensors from a CUDA engine, numpy arrays from a CPU one)."""
        if named:
            feeds = {**feeds, **named} if feeds else named
        elif feeds is None:
            feeds = {}
        replay = self._replays.get(_replay_key(feeds)) if self._replays else None
        if replay is not None and self.profiler is None and self.use_cuda_graph and self._current(replay):
            return self._replay(replay, feeds)
        feeds = dict(feeds)
        sig = _signature(feeds)
        checked = self._checked.get(sig) if sig is not None else None
        if checked is not None:   # these names, shapes and dtypes passed every check below before
            self._adopt(*checked)
            result = self._finish_run(self._execute(feeds, 0, sig), feeds, not feeds and self.engine.device != "cuda")
            self._remember_replay(feeds, sig)
            return result
        inputs = [t for t in self.engine.io if t.mode == "input"]
        expected = {t.name for t in inputs}
        unknown = [n for n in feeds if n not in expected]
        if unknown:
            raise KilnError(ErrorCode.UNKNOWN_TENSOR,
                            f"unknown input name(s) {', '.join(map(repr, unknown))}; the engine's inputs are: "
                            + ", ".join(f"{t.name} {t.dtype.name}{list(t.symbolic or t.shape)}" for t in inputs))
        missing = [t.name for t in inputs if t.name not in feeds]
        if missing:
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"missing input(s) {', '.join(map(repr, missing))}; the engine's inputs are: "
                            + ", ".join(f"{t.name} {t.dtype.name}{list(t.symbolic or t.shape)}" for t in inputs))
        if len(self.engine.profiles) > 1:   # the narrowest profile that holds these shapes
            self._set_profile(self.engine.profile_containing(
                {t.name: tuple(np.shape(feeds[t.name])) if not isinstance(feeds[t.name], torch.Tensor)
                 else tuple(feeds[t.name].shape) for t in inputs}))
        # numpy in, numpy out; torch in, torch out; no inputs: what the engine runs on
        as_numpy = self.engine.device != "cuda" or bool(inputs)
        tensors: dict[str, torch.Tensor] = {}
        for t in inputs:
            value = feeds[t.name]
            if isinstance(value, torch.Tensor):
                as_numpy = False
                got = DataType.from_torch(value.dtype) if value.dtype in _TORCH_TYPES else None
                tensor = value
            else:
                arr = np.asarray(value)
                try:
                    got = DataType.from_numpy(arr.dtype)
                except TypeError:
                    got = None
                tensor = numpy_to_torch(arr) if got is not None else None
            if got != t.dtype:
                shown = getattr(value, "dtype", type(value).__name__)
                raise DTypeError(ErrorCode.INVALID_DTYPE,
                                 f"input {t.name!r} expects {t.dtype.name} ({t.dtype.value}), got {shown}; "
                                 f"convert it first, e.g. array.astype(np.{t.dtype.numpy.name})")
            self.set_input_shape(t.name, tuple(tensor.shape))
            tensors[t.name] = tensor
        self._check_shared_dims()
        if sig is not None:
            if len(self._checked) >= 256:
                self._checked.clear()
            self._checked[sig] = (self.active_optimization_profile, {t.name: self._shapes[t.name] for t in inputs})
        result = self._finish_run(self._execute(tensors, 0, sig), tensors, as_numpy)
        if sig is not None:
            self._remember_replay(feeds, sig)
        return result

    def _remember_replay(self, feeds: Mapping[str, torch.Tensor], sig: tuple) -> None:
        """After a graph run on GPU tensors: keep what a later run with the same key needs to
        replay the graph directly (:meth:`_replay`), with every check above already passed."""
        cache = self._graphs.get(self.active_optimization_profile)
        entry = cache.graphs.get(sig) if cache is not None else None
        key = _replay_key(feeds)
        if not entry or key is None or not all(k[3] for k in key):
            return
        _, static_in, static_out, _, launch = entry
        # stale ones go: they hold their graph's buffers (evicted or of a program a refit replaced)
        self._replays = {k: r for k, r in self._replays.items() if self._current(r)}
        if len(self._replays) >= 256:
            self._replays.clear()
        self._replays[key] = _Replay(
            cache=cache, generation=cache.generation, graph_key=sig, program=cache.program,
            profile=self.active_optimization_profile, shapes={n: self._shapes[n] for n in feeds},
            version=self._version, inputs=[static_in[n] for n in feeds], outputs=list(static_out.items()),
            output_shapes={n: tuple(v.shape) for n, v in static_out.items()}, launch=launch)

    def _current(self, replay: "_Replay") -> bool:
        """Whether ``replay``'s graph is still in its cache and its program still the engine's."""
        return (replay.cache.generation == replay.generation and self._graphs.get(replay.profile) is replay.cache
                and replay.program is self.engine.for_profile(replay.profile)._program)

    def _replay(self, replay: "_Replay", feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """run()'s fast path: copy the inputs into the graph's (one multi-tensor copy), launch
        it, return copies of its outputs."""
        if self._version != replay.version or self.active_optimization_profile != replay.profile:
            self._adopt(replay.profile, replay.shapes)
            replay.version = self._version
        if replay.inputs:
            torch._foreach_copy_(replay.inputs, list(feeds.values()), non_blocking=True)
        replay.launch(current_raw_stream())
        cache = replay.cache
        cache.stats.replays += 1
        cache.graphs.move_to_end(replay.graph_key)
        cache.admission.seen(replay.graph_key)
        self._output_shapes.update(replay.output_shapes)
        return _copies(replay.outputs)

    def _adopt(self, profile: int, shapes: dict[str, tuple[int, ...]]) -> None:
        """Make ``profile`` and ``shapes`` (already checked) the context's, as run() would."""
        self._set_profile(profile)
        for name, shape in shapes.items():
            self._set_shape(name, shape)

    def _finish_run(self, outputs: dict[str, torch.Tensor], tensors, as_numpy: bool) -> dict[str, Any]:
        """run()'s results: the caller's own arrays or tensors, never the graph's buffers."""
        for name, value in outputs.items():
            self._output_shapes[name] = tuple(value.shape)
        if as_numpy:  # numpy results are always the caller's own arrays
            return {name: torch_to_numpy(v).copy() for name, v in outputs.items()}
        if self.active_optimization_profile in self._graphs:  # graph outputs are rewritten by the next replay
            return _copies(list(outputs.items()))
        owned = list(tensors.values()) + list(self._engine().program.constants.values())
        return {name: v.clone() if _aliases(v, owned) else v for name, v in outputs.items()}


_TORCH_TYPES = {dt.torch for dt in DataType}


def _copies(outputs: list[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The caller's own copies of ``outputs``: with several, one multi-tensor copy into fresh
    tensors (BERT-base's two outputs: 14 us of host time against 21 us for two clones, H200)."""
    if len(outputs) < 2:
        return {name: v.clone() for name, v in outputs}
    fresh = [torch.empty_like(v) for _, v in outputs]
    torch._foreach_copy_(fresh, [v for _, v in outputs])
    return {name: t for (name, _), t in zip(outputs, fresh)}


class _Replay:
    """What run() needs to replay one captured graph for feeds of one key (see
    ``ExecutionContext._replay``); stale once its cache evicts a graph (``generation``) or a
    refit replaces the program."""
    __slots__ = ("cache", "generation", "graph_key", "program", "profile", "shapes", "version", "inputs",
                 "outputs", "output_shapes", "launch")

    def __init__(self, **fields: Any) -> None:
        for name, value in fields.items():
            setattr(self, name, value)


def _replay_key(feeds: Mapping[str, Any]) -> tuple | None:
    """(name, shape, dtype, is_cuda) of each feed in the caller's order; None unless all are
    torch tensors."""
    try:
        return tuple([(n, v.shape, v.dtype, v.is_cuda) for n, v in feeds.items()])
    except AttributeError:   # a numpy array or a list: run()'s full path
        return None


def _signature(feeds: Mapping[str, Any]) -> tuple | None:
    """(name, shape, dtype) of each feed, sorted by name (the graph cache's key), when all are
    torch tensors; None otherwise."""
    for v in feeds.values():
        if type(v) is not torch.Tensor:
            return None
    return tuple((n, v.shape, v.dtype) for n, v in sorted(feeds.items()))


def _is_pointer(buf: Any) -> bool:
    return buf is not None and not isinstance(buf, (torch.Tensor, np.ndarray, bool)) and \
        (isinstance(buf, int) or (hasattr(buf, "__int__") and not hasattr(buf, "__dlpack__")
                                  and not hasattr(buf, "__cuda_array_interface__")))


def _aliases(v: torch.Tensor, others: list[torch.Tensor]) -> bool:
    """Whether ``v`` shares memory with an input or a constant (then the caller gets a copy)."""
    ptr = v.untyped_storage().data_ptr()
    return any(ptr == o.untyped_storage().data_ptr() for o in others)


def _from_pointer(ptr: int, shape: tuple[int, ...], dtype: DataType, device: str) -> torch.Tensor:
    count = int(np.prod(shape)) if shape else 1
    if device == "cuda":
        class _CudaArray:
            __cuda_array_interface__ = {"shape": tuple(shape), "typestr": np.dtype(dtype.numpy).str,
                                        "data": (ptr, False), "version": 3}

        return torch.as_tensor(_CudaArray(), device="cuda")
    nbytes = count * dtype.itemsize
    raw = (ctypes.c_char * nbytes).from_address(ptr)
    arr = np.frombuffer(raw, dtype=np.uint8).view(dtype.numpy).reshape(shape)
    return numpy_to_torch(arr)
