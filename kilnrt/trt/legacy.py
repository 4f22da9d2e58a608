"""TensorRT 7/8 calls on engines and contexts: bindings, ``execute_async_v2``, batch sizes.

Each works as it did in TensorRT 8 and warns once, naming its TensorRT 10 replacement
(:func:`kilnrt.trt.strict.deprecated`).  Bindings are the engine's I/O tensors in I/O
order; with several optimization profiles, profile k's bindings follow profile k-1's and
are named ``"<tensor> [profile k]"``, as in TensorRT 8.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from kilnrt.errors import ErrorCode, ExecutionError, KilnError
from kilnrt.trt.strict import deprecated

_PROFILE_SUFFIX = re.compile(r"^(.*) \[profile (\d+)\]$")


class BindingEngine:
    """TensorRT 8's binding API on an engine (mixed into ``trt.ICudaEngine``)."""

    # -- bindings --------------------------------------------------------------------
    @property
    def num_bindings(self) -> int:
        deprecated("ICudaEngine.num_bindings", "num_io_tensors")
        return len(self.io) * self.num_optimization_profiles

    def __len__(self) -> int:
        return len(self.io) * self.num_optimization_profiles

    def __iter__(self):
        deprecated("iterating over an ICudaEngine (binding names)",
                   "get_tensor_name(i) for i in range(engine.num_io_tensors)")
        return iter([self._binding_name(i) for i in range(len(self))])

    def __getitem__(self, key: int | str) -> Any:
        return self._binding_name(key) if isinstance(key, int) else self._binding(key)

    def _binding_name(self, index: int) -> str:
        n = len(self.io)
        if not isinstance(index, int) or not 0 <= index < n * self.num_optimization_profiles:
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"binding index {index!r} is out of range: the engine has {len(self)} bindings "
                            f"({n} I/O tensors x {self.num_optimization_profiles} profile(s))")
        profile, k = divmod(index, n)
        return self.io[k].name + (f" [profile {profile}]" if profile else "")

    def _binding(self, binding: int | str) -> int:
        """The binding index of a name (with an optional " [profile k]" suffix) or an index."""
        if isinstance(binding, int) and not isinstance(binding, bool):
            self._binding_name(binding)
            return binding
        name, profile = str(binding), 0
        m = _PROFILE_SUFFIX.match(name)
        if m:
            name, profile = m.group(1), int(m.group(2))
        names = [t.name for t in self.io]
        if name not in names or profile >= self.num_optimization_profiles:
            raise KilnError(ErrorCode.UNKNOWN_TENSOR,
                            f"the engine has no binding named {binding!r}; its bindings are: "
                            + ", ".join(self._binding_name(i) for i in range(len(self))))
        return profile * len(self.io) + names.index(name)

    def _io_of(self, binding: int | str):
        return self.io[self._binding(binding) % len(self.io)]

    def get_binding_name(self, index: int) -> str:
        deprecated("ICudaEngine.get_binding_name", "get_tensor_name(index)")
        return self._binding_name(index)

    def get_binding_index(self, name: str) -> int:
        deprecated("ICudaEngine.get_binding_index", "tensor names (get_tensor_name / set_tensor_address)")
        try:
            return self._binding(name)
        except KilnError:
            return -1   # TensorRT 8's answer for an unknown name

    def get_binding_shape(self, binding: int | str) -> tuple[int, ...]:
        deprecated("ICudaEngine.get_binding_shape", "get_tensor_shape(name)")
        return tuple(self._io_of(binding).shape)

    def get_binding_dtype(self, binding: int | str):
        deprecated("ICudaEngine.get_binding_dtype", "get_tensor_dtype(name)")
        return self._io_of(binding).dtype

    def binding_is_input(self, binding: int | str) -> bool:
        deprecated("ICudaEngine.binding_is_input", "get_tensor_mode(name) == trt.TensorIOMode.INPUT")
        return self._io_of(binding).mode == "input"

    def is_shape_binding(self, binding: int | str) -> bool:
        deprecated("ICudaEngine.is_shape_binding", "is_shape_inference_io(name)")
        self._binding(binding)
        return False

    def is_execution_binding(self, binding: int | str) -> bool:
        deprecated("ICudaEngine.is_execution_binding", "is_shape_inference_io(name)")
        self._binding(binding)
        return True

    def get_profile_shape(self, profile_index: int, binding: int | str) -> list[tuple[int, ...]]:
        deprecated("ICudaEngine.get_profile_shape", "get_tensor_profile_shape(name, profile_index)")
        return self.get_tensor_profile_shape(self._io_of(binding).name, profile_index)

    # -- batch -----------------------------------------------------------------------
    @property
    def max_batch_size(self) -> int:
        """The builder's ``max_batch_size`` where it gave the leading dims' profile, else 1
        (TensorRT 8's value for explicit-batch engines)."""
        deprecated("ICudaEngine.max_batch_size", "an optimization profile's max shape")
        value = self.build_info.get("max_batch_size")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1

    @property
    def has_implicit_batch_dimension(self) -> bool:
        return False

    # -- context managers ------------------------------------------------------------
    def __enter__(self):
        deprecated("'with engine:'", "plain references (Python frees engines when they are unused)")
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class BindingContext:
    """TensorRT 8's binding API on an execution context (mixed into ``trt.IExecutionContext``)."""

    def _name_of(self, binding: int | str) -> str:
        index = self.engine._binding(binding)
        profile = index // len(self.engine.io)
        if profile != self.active_optimization_profile:
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"binding {self.engine._binding_name(index)!r} belongs to optimization profile {profile}, "
                            f"but the context's active profile is {self.active_optimization_profile}; call "
                            f"set_optimization_profile_async({profile}, stream) first")
        return self.engine.io[index % len(self.engine.io)].name

    def set_binding_shape(self, binding: int | str, shape: Sequence[int]) -> bool:
        deprecated("IExecutionContext.set_binding_shape", "set_input_shape(name, shape)")
        return self.set_input_shape(self._name_of(binding), shape)

    def get_binding_shape(self, binding: int | str) -> tuple[int, ...]:
        deprecated("IExecutionContext.get_binding_shape", "get_tensor_shape(name)")
        return tuple(self.get_tensor_shape(self._name_of(binding)))

    def _bind(self, bindings: Sequence[Any], call: str) -> None:
        n = len(self.engine.io)
        total = n * self.engine.num_optimization_profiles
        if len(bindings) == total and total != n:
            first = self.active_optimization_profile * n
            bindings = bindings[first:first + n]
        elif len(bindings) != n:
            raise ExecutionError(ErrorCode.INVALID_ARGUMENT,
                                 f"{call} needs one binding per I/O tensor ({n}: "
                                 f"{', '.join(t.name for t in self.engine.io)}), or {total} for every profile; "
                                 f"got {len(bindings)}")
        for t, b in zip(self.engine.io, bindings):
            self.set_tensor_address(t.name, b)

    def execute_v2(self, bindings: Sequence[Any]) -> bool:
        """Synchronous run: one buffer (pointer, array or tensor) per binding."""
        self._bind(list(bindings), "execute_v2")
        return self._run_sync(0)

    def execute_async_v2(self, bindings: Sequence[Any], stream_handle: int = 0, input_consumed: Any = None) -> bool:
        deprecated("IExecutionContext.execute_async_v2", "set_tensor_address(name, ptr) per tensor, then "
                   "execute_async_v3(stream_handle)")
        self._bind(list(bindings), "execute_async_v2")
        return self.execute_async_v3(stream_handle)

    def execute(self, batch_size: int = 1, bindings: Sequence[Any] = ()) -> bool:
        deprecated("IExecutionContext.execute(batch_size, bindings)", "execute_v2(bindings) or execute_async_v3")
        self._batch(batch_size)
        self._bind(list(bindings), "execute")
        return self._run_sync(0)

    def execute_async(self, batch_size: int = 1, bindings: Sequence[Any] = (), stream_handle: int = 0,
                      input_consumed: Any = None) -> bool:
        deprecated("IExecutionContext.execute_async(batch_size, bindings, stream)", "execute_async_v3(stream)")
        self._batch(batch_size)
        self._bind(list(bindings), "execute_async")
        return self.execute_async_v3(stream_handle)

    def _batch(self, batch_size: int) -> None:
        """TensorRT 7's batch argument: the leading dim of every input whose leading dim is
        dynamic (an engine built with ``builder.max_batch_size``); else it must be that dim."""
        for t in self.engine.io:
            if t.mode != "input" or not t.shape:
                continue
            if t.shape[0] < 0:
                current = self._shapes.get(t.name, tuple(t.shape))
                self.set_input_shape(t.name, (int(batch_size),) + tuple(
                    d if d >= 0 else p for d, p in zip(t.shape[1:], current[1:])))
            elif t.shape[0] != batch_size:
                raise ExecutionError(ErrorCode.INVALID_SHAPE,
                                     f"batch_size {batch_size} does not match input {t.name!r}, whose batch dim is "
                                     f"fixed at {t.shape[0]}; build with a dynamic batch dim and "
                                     "builder.max_batch_size (or a profile) to run other batch sizes")

    def _run_sync(self, stream_handle: int) -> bool:
        ok = self.execute_async_v3(stream_handle)
        if self.engine.device == "cuda":
            import torch

            torch.cuda.synchronize()
        return ok

    def __enter__(self):
        deprecated("'with context:'", "plain references (Python frees contexts when they are unused)")
        return self

    def __exit__(self, *exc: Any) -> None:
        return None
