"""A served model: its engine (loaded, or built on start), its I/O as the KServe v2 protocol
sees it, request checks that say what was wrong, and one execution context per instance."""
from __future__ import annotations

import dataclasses
import logging
import queue
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from kilnrt.errors import ErrorCode, KilnError
from kilnrt.serve.config import DEFAULT_MAX_BATCH, ModelSettings

log = logging.getLogger("kilnrt.serve")

# numpy dtype name -> KServe v2 datatype (the protocol's names; Triton's TYPE_* are "TYPE_" + these,
# with FP32 as TYPE_FP32 and BYTES as TYPE_STRING)
V2_DATATYPES = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
                "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
                "float32": "FP32", "float64": "FP64", "bfloat16": "BF16"}
NUMPY_DTYPES = {v: k for k, v in V2_DATATYPES.items()}


class RequestError(KilnError):
    """A request the model cannot take (unknown input or output, wrong dtype or shape, batch over the
    maximum); servers answer it with the protocol's 'invalid argument' error and keep serving."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output as clients see it: ``shape`` without the batch dim when the model batches."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]             # -1 for a dynamic dim

    @property
    def datatype(self) -> str:
        return V2_DATATYPES.get(self.dtype.name, self.dtype.name.upper())


def timing_cache_path(folder: Path | None, settings: ModelSettings) -> str | None:
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{settings.name}-{settings.device}-{settings.precision}.timing")


def _batch_profile(network, max_batch: int, opt: int) -> dict | None:
    """``{input: (min, opt, max)}`` over the batch dim when every input's other dims are static."""
    profile = {}
    for t in network.inputs:
        dims = list(t.shape)
        if not dims or any(not isinstance(d, int) for d in dims[1:]):
            return None
        rest = tuple(dims[1:])
        profile[t.name] = ((1, *rest), (opt, *rest), (max_batch, *rest))
    return profile


def load_engine(settings: ModelSettings, timing_cache_dir: Path | None = None, key: bytes | None = None):
    """The engine of ``settings``: a plan loads; an ONNX file is built with a profile over its batch
    dim up to ``max_batch`` (the timing cache in ``timing_cache_dir`` is read, then updated)."""
    import kilnrt
    from kilnrt.cli.args import is_plan

    path = settings.path
    if not path.is_file():
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"model {settings.name!r}: {str(path)!r} does not exist")
    if is_plan(path):
        if settings.precision != "fp32":
            log.warning("model %r: precision=%s is for ONNX files built on start; the plan %s keeps the "
                        "precisions it was built with", settings.name, settings.precision, path)
        engine = kilnrt.load(str(path), key=key)
        if engine.device != settings.device and not engine.device.startswith(settings.device):
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"model {settings.name!r}: the plan {str(path)!r} was "
                                                        f"built for {engine.device}, the config asks for "
                                                        f"device {settings.device!r}")
        return engine
    network = kilnrt.to_network(str(path))
    max_batch = settings.max_batch if settings.max_batch is not None else DEFAULT_MAX_BATCH
    profiles = None
    if max_batch > 0 and all(t.shape and not isinstance(t.shape[0], int) for t in network.inputs):
        opt = max(settings.preferred_batch_sizes or (min(max_batch, 16),))
        profiles = _batch_profile(network, max_batch, min(opt, max_batch))
    start = time.perf_counter()
    engine = kilnrt.build(network, device=settings.device, fp16=settings.precision == "fp16",
                          bf16=settings.precision == "bf16", profiles=profiles,
                          timing_cache=timing_cache_path(timing_cache_dir, settings))
    log.info("model %r: built %s in %.2f s", settings.name, path, time.perf_counter() - start)
    return engine


class ServedModel:
    """An engine behind a server: checks requests and runs them on one of ``instances`` contexts."""

    def __init__(self, settings: ModelSettings, engine, *, contexts: bool = True) -> None:
        """``contexts=False``: the model only describes itself (a server whose instances run in
        processes of their own makes its contexts there)."""
        self.settings = settings
        self.name = settings.name
        self.engine = engine
        self.max_batch = self._max_batch()
        cut = 1 if self.max_batch > 0 else 0
        self.inputs = [TensorSpec(t.name, t.dtype.numpy, tuple(t.shape)[cut:])
                       for t in engine.io if t.mode == "input"]
        self.outputs = [TensorSpec(t.name, t.dtype.numpy, tuple(t.shape)[cut:])
                        for t in engine.io if t.mode == "output"]
        self.padded_batch_sizes = self._padded_batch_sizes()
        self.contexts = [engine.create_execution_context() for _ in range(settings.instances if contexts else 0)]
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for c in self.contexts:
            self._free.put(c)

    @classmethod
    def from_settings(cls, settings: ModelSettings, timing_cache_dir: Path | None = None,
                      key: bytes | None = None, *, contexts: bool = True) -> "ServedModel":
        model = cls(settings, load_engine(settings, timing_cache_dir, key), contexts=contexts)
        if settings.device == "cuda":
            model.warm_up()
        return model

    def warm_up(self) -> int:
        """Run every padded batch size once on every instance, on random inputs, so that their
        CUDA graphs are captured before the first requests (as a Triton model's warm-up does),
        not while clients wait.  Returns the runs made (none where an input's non-batch dims
        are dynamic: there is no one shape to warm up).  A run that fails is logged and ends the
        warm-up; the server starts anyway (its graphs are then captured on first use)."""
        if not self.contexts or not self.padded_batch_sizes or any(-1 in t.shape for t in self.inputs):
            return 0
        from kilnrt.testing import seeded_inputs

        runs = 0
        for size in self.padded_batch_sizes:
            # integers 0 and 1: valid as indices and as flags
            feeds = seeded_inputs(self.engine, seed=size, shapes={t.name: (size, *t.shape) for t in self.inputs},
                                  int_range=(0, 2))
            for context in self.contexts:
                try:
                    context.run(dict(feeds))
                except Exception as exc:  # noqa: BLE001 - random inputs a model refuses: serve anyway
                    log.warning("model %r: warm-up at batch %d failed, the rest is skipped: %s",
                                self.name, size, exc)
                    return runs
                runs += 1
        return runs

    # -- what the model takes -----------------------------------------------------------
    def _max_batch(self) -> int:
        """Largest batch: profile 0's max of the batch dim (capped by ``max_batch`` in the config);
        0 when an input's first dim is static (the model does not batch)."""
        wanted = self.settings.max_batch
        inputs = [t for t in self.engine.io if t.mode == "input"]
        if wanted == 0 or not inputs or any(not t.shape or t.shape[0] != -1 for t in inputs):
            if wanted:
                log.warning("model %r: max_batch=%d asked, but an input's first dim is static; the model is "
                            "served without a batch dim (max_batch 0)", self.name, wanted)
            return 0
        limits = self._profile_batches(2)
        if not limits:
            return wanted if wanted is not None else DEFAULT_MAX_BATCH
        limit = min(limits)
        if wanted is not None and wanted > limit:
            raise KilnError(ErrorCode.INVALID_PROFILE,
                            f"model {self.name!r}: max_batch {wanted} is above the engine's profile, whose batch "
                            f"dim goes up to {limit}; lower max_batch or rebuild the plan with a larger max shape")
        return wanted if wanted is not None else limit

    @property
    def preferred_batch_sizes(self) -> tuple[int, ...]:
        sizes = tuple(s for s in self.settings.preferred_batch_sizes if s <= self.max_batch)
        dropped = set(self.settings.preferred_batch_sizes) - set(sizes)
        if dropped:
            log.warning("model %r: preferred batch sizes %s are above max_batch %d and are ignored",
                        self.name, sorted(dropped), self.max_batch)
        return sizes

    def _padded_batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes a run is padded up to: on CUDA by default (``pad_batches``), the powers
        of two up to ``max_batch``, ``max_batch`` and the preferred sizes (none below the
        profile's smallest batch).  Each batch size the engine sees is a shape it captures a
        CUDA graph for; dynamic batching makes every size from 1 to ``max_batch``, more than the
        context's graph cache keeps (32 by default), so unpadded it captures again and again.
        Padded, a handful of graphs serve every batch, for at most twice the rows.

        Only where every output's first dim is the inputs' batch dim (the same symbol in the
        engine's I/O), and no later dim of an input or output is (or depends on) it: then the
        rows of the padding come out as rows of their own, and are cut off.  An output that sums
        over the batch, or whose size depends on the data, would change, and an output (N, N)
        would come back (N, padded size), so such a model is not padded (a log line says so).
        Rows are assumed to be independent, as the dynamic batcher assumes when it stacks requests."""
        pad = self.settings.pad_batches
        if pad is None:
            pad = self.settings.device == "cuda"
        if not pad or self.max_batch <= 0:
            return ()
        firsts = {t.name: _first_symbol(t) for t in self.engine.io}
        if len(set(firsts.values())) != 1 or not isinstance(next(iter(firsts.values())), str):
            log.warning("model %r: batches are not padded: not every output's first dim is the inputs' batch "
                        "dim (first dims %s)", self.name, firsts)
            return ()
        later = self._batch_dim_in_later_dims()
        if later:
            log.warning("model %r: batches are not padded: the batch dim is also in a later dim of %s",
                        self.name, later)
            return ()
        low = self._min_batch()
        sizes = {self.max_batch, *(s for s in self.settings.preferred_batch_sizes if s <= self.max_batch)}
        power = 1
        while power < self.max_batch:
            sizes.add(power)
            power *= 2
        return tuple(sorted({max(s, low) for s in sizes}))

    def _batch_dim_in_later_dims(self) -> dict[str, list]:
        """The engine's inputs and outputs whose dims after the first are, or depend on, the batch
        dim (an input's first dim's symbol), with their dims: an output (N, N), say.  A batch of
        such a model is not a stack of independent rows, so it can neither be padded nor be
        stacked from requests and cut back apart."""
        batch = {s for s in (_first_symbol(t) for t in self.engine.io if t.mode == "input") if isinstance(s, str)}
        return {t.name: list(t.symbolic) for t in self.engine.io
                if any(_depends_on(d, b) for d in t.symbolic[1:] for b in batch)}

    def check_dynamic_batching(self) -> None:
        """Where the model is batched dynamically, a KilnError if its requests cannot be stacked and
        their rows cut back apart: where the batch dim is also in a later dim of an input or
        output (the stacked batch's rows would hold other requests' columns).  Called at start
        by the servers that batch, before their batcher is set up."""
        if not self.settings.dynamic_batching or self.max_batch <= 0:
            return
        later = self._batch_dim_in_later_dims()
        if later:
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"model {self.name!r} cannot be batched dynamically: the batch dim is also in a later "
                            f"dim of {later}, so a batch of stacked requests cannot be cut back into each one's "
                            "answer; serve it with dynamic_batching false (config.json) or --no-dynamic-batching")

    def _min_batch(self) -> int:
        """Smallest batch profile 0 allows (1 where there is no profile)."""
        return max(self._profile_batches(0), default=1)

    def _profile_batches(self, which: int) -> list[int]:
        """Profile 0's batch dim at its min (0), opt (1) or max (2), for each input it names."""
        profile = self.engine.profiles[0] if self.engine.profiles else {}
        return [profile[t.name][which][0] for t in self.engine.io if t.mode == "input" and t.name in profile]

    def metadata(self) -> dict[str, Any]:
        """KServe v2 model metadata (the batch dim shows as -1 when the model batches)."""
        lead = [-1] if self.max_batch > 0 else []
        return {"name": self.name, "versions": ["1"], "platform": "kilnrt",
                "inputs": [{"name": t.name, "datatype": t.datatype, "shape": lead + list(t.shape)}
                           for t in self.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype, "shape": lead + list(t.shape)}
                            for t in self.outputs]}

    def config(self) -> dict[str, Any]:
        """The model's configuration in Triton's JSON form (``GET /v2/models/NAME/config``)."""
        out: dict[str, Any] = {
            "name": self.name, "platform": "kilnrt", "backend": "kilnrt", "max_batch_size": self.max_batch,
            "input": [{"name": t.name, "data_type": "TYPE_" + t.datatype, "dims": list(t.shape)}
                      for t in self.inputs],
            "output": [{"name": t.name, "data_type": "TYPE_" + t.datatype, "dims": list(t.shape)}
                       for t in self.outputs],
            "instance_group": [{"count": self.settings.instances,
                                "kind": "KIND_GPU" if self.settings.device == "cuda" else "KIND_CPU"}],
            "parameters": {"precision": {"string_value": self.settings.precision},
                           "source": {"string_value": str(self.settings.path)}}}
        if self.settings.dynamic_batching and self.max_batch > 0:
            out["dynamic_batching"] = {"preferred_batch_size": list(self.preferred_batch_sizes),
                                       "max_queue_delay_microseconds": self.settings.max_queue_delay_us}
        return out

    # -- requests -----------------------------------------------------------------------
    def check_request(self, feeds: Mapping[str, np.ndarray], outputs: Iterable[str] = ()) -> int:
        """Raise :class:`RequestError` saying what is wrong with ``feeds`` or with the names of
        the ``outputs`` the request asks for; return the batch size (1 for a model without a
        batch dim)."""
        known = {t.name: t for t in self.inputs}
        unknown = [n for n in feeds if n not in known]
        if unknown:
            raise RequestError(ErrorCode.UNKNOWN_TENSOR,
                               f"model {self.name!r} has no input {', '.join(map(repr, unknown))}; its inputs: "
                               + ", ".join(f"{t.name} {t.datatype}{self._shown(t)}" for t in self.inputs))
        missing = [n for n in known if n not in feeds]
        if missing:
            raise RequestError(ErrorCode.UNKNOWN_TENSOR,
                               f"model {self.name!r}: input(s) {', '.join(map(repr, missing))} missing; every "
                               "request carries all of: " + ", ".join(known))
        made = {t.name for t in self.outputs}
        unknown = [n for n in outputs if n not in made]
        if unknown:
            raise RequestError(ErrorCode.UNKNOWN_TENSOR,
                               f"model {self.name!r} has no output {', '.join(map(repr, unknown))}; its outputs: "
                               + ", ".join(f"{t.name} {t.datatype}{self._shown(t)}" for t in self.outputs))
        batches = set()
        for name, value in feeds.items():
            spec = known[name]
            if value.dtype != spec.dtype:
                got = V2_DATATYPES.get(value.dtype.name, value.dtype.name)
                raise RequestError(ErrorCode.INVALID_DTYPE,
                                   f"model {self.name!r} input {name!r}: datatype {got}, expected {spec.datatype}")
            shape = tuple(value.shape)
            want = ((-1,) if self.max_batch > 0 else ()) + spec.shape
            if len(shape) != len(want) or any(w >= 0 and g != w for g, w in zip(shape, want)):
                raise RequestError(ErrorCode.INVALID_SHAPE,
                                   f"model {self.name!r} input {name!r}: shape {list(shape)}, expected "
                                   f"{self._shown(spec)} (-1: any size)")
            if self.max_batch > 0:
                batches.add(shape[0])
        if self.max_batch == 0:
            return 1
        if len(batches) > 1:
            raise RequestError(ErrorCode.INVALID_SHAPE, f"model {self.name!r}: inputs have different batch sizes "
                                                        f"{sorted(batches)}; all must have the same first dim")
        batch = batches.pop() if batches else 1
        if not 1 <= batch <= self.max_batch:
            raise RequestError(ErrorCode.INVALID_SHAPE, f"model {self.name!r}: batch size {batch} is outside "
                                                        f"[1, {self.max_batch}] (max_batch {self.max_batch})")
        return batch

    def _shown(self, t: TensorSpec) -> list[int]:
        return ([-1] if self.max_batch > 0 else []) + list(t.shape)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run checked ``feeds`` on a free instance (blocks while all are busy)."""
        context = self._free.get()
        try:
            return self.run_on(context, feeds)
        finally:
            self._free.put(context)

    def run_on(self, context, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run checked ``feeds`` on ``context``, padded up to the next of ``padded_batch_sizes``
        (the last row repeated: real data, not zeros that a log would turn into NaN) and the
        padding's rows cut off the outputs."""
        feeds = dict(feeds)
        batch = next(iter(feeds.values())).shape[0] if self.padded_batch_sizes and feeds else 0
        size = next((s for s in self.padded_batch_sizes if s >= batch), batch)
        if size <= batch:
            return context.run(feeds)
        feeds = {n: np.concatenate([v, np.repeat(v[-1:], size - batch, axis=0)]) for n, v in feeds.items()}
        outputs = context.run(feeds)
        return {n: v[:batch] for n, v in outputs.items()}   # every output's first dim is the batch (above)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check, then run."""
        self.check_request(feeds)
        return self.run(feeds)


def _first_symbol(t):
    """The symbol of an engine I/O tensor's first dim; an input's unnamed dynamic dim (-1) is
    the symbol the builder gives it, ``"<input>:0"``."""
    first = t.symbolic[0] if t.symbolic else None
    if first == -1 and t.mode == "input":
        return f"{t.name}:0"
    return first


def _depends_on(dim, symbol: str) -> bool:
    """Whether an engine I/O dim (a size, a symbol's name, or an expression's text such as
    ``4*n``) is or depends on ``symbol``."""
    return isinstance(dim, str) and (dim == symbol or symbol in re.split(r"[\s+\-*/%(),]+", dim))


def load_models(settings: list[ModelSettings], timing_cache_dir: Path | None = None,
                key: bytes | None = None, *, contexts: bool = True) -> list[ServedModel]:
    """Every model's engine; ``key`` checks the signature of plans (``--plan-key``)."""
    return [ServedModel.from_settings(s, timing_cache_dir, key, contexts=contexts) for s in settings]
