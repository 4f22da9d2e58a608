"""The executable form of an engine: prepared tactics, device constants, and the step loop.

One :class:`Program` per engine is shared by all of its execution contexts (weights are
uploaded once).  Each activation is released after its last use, so memory is reused
by liveness, as the engine's memory plan describes.

A concatenation that producers write into (``EngineLayer.writes_into``, see
:mod:`kilnrt.builder.concat`, read back by :mod:`kilnrt.engine.concat_plan`) has its output allocated on each run just before its first such
producer; each of them stores into its slice (``Tactic.run_into``), and the concatenation's
step copies only the other inputs into theirs.  Everything is allocated inside the step loop,
so a CUDA graph captures it like any other activation.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import torch

from kilnrt.device import out_of_memory
from kilnrt.engine.capture_lock import CAPTURES
from kilnrt.engine.concat_plan import ConcatPlan, concat_plans
from kilnrt.errors import ErrorCode, ExecutionError, KilnError
from kilnrt.kernels.precision import tf32_mode
from kilnrt.engine.buckets import BucketChooser
from kilnrt.engine.shape_program import ShapeProgram
from kilnrt.kernels.registry import TacticContext, get_tactic, run_layer
from kilnrt.network.dtypes import numpy_to_torch
from kilnrt.network.layers import shape_input_positions


class Step:
    __slots__ = ("name", "tactic", "state", "inputs", "outputs", "release", "shape_inputs", "allocate", "into",
                 "concat", "buckets")

    def __init__(self, name, tactic, state, inputs, outputs, shape_inputs) -> None:
        self.name, self.tactic, self.state = name, tactic, state
        self.inputs, self.outputs, self.shape_inputs = inputs, outputs, shape_inputs
        self.release: list[str] = []
        self.allocate: list[ConcatPlan] = []           # concatenation buffers made before this step
        self.into: tuple[str, int, int, int] | None = None  # (buffer, axis, start, size): run_into there
        self.concat: ConcatPlan | None = None          # this concatenation copies only the other inputs
        self.buckets: dict[int, tuple] = {}            # bucket -> (tactic, state) run there instead


def fill_concat(plan: ConcatPlan, buffer: torch.Tensor, inputs) -> torch.Tensor:
    """A concatenation's step when producers wrote some inputs in place: copy the others into
    their slices of ``buffer`` (already allocated), and return it."""
    for x, (start, size), done in zip(inputs, plan.slices, plan.in_place):
        if not done:
            buffer.narrow(plan.axis, start, size).copy_(x)
    return buffer


def layer_started(profiler: Any, name: str) -> float:
    """A step under a profiler begins: its optional ``begin_layer(name)`` (e.g. to open a
    ``torch.profiler`` range that its ``report_layer_time`` closes), then the start time."""
    begin = getattr(profiler, "begin_layer", None)
    if begin is not None:
        begin(name)
    return time.perf_counter()


LOAD_ADVICE = ("free GPU memory (other engines and contexts, tensors, processes), or build with lower precision "
               "(fp16, int8) for smaller weights")


class Program:
    def __init__(self, engine) -> None:
        said = None
        try:
            self._prepare(engine)
        except torch.OutOfMemoryError as exc:   # raised below, with this frame's tensors gone
            said = str(exc)
        if said is not None:
            self.constants, self.host_constants, self.steps = {}, {}, []
            size = sum(a.nbytes for a in engine.constants.values()) / 2**30
            raise ExecutionError(ErrorCode.OUT_OF_MEMORY, out_of_memory(
                said, f"loading engine {engine.name!r} onto the GPU ({size:.2f} GiB of weights, then each layer's "
                      "prepared form)", LOAD_ADVICE))

    def _prepare(self, engine) -> None:
        """The weights on the device, each layer's tactic prepared, the steps in order."""
        self.engine = engine
        self.device = torch.device(engine.device)
        self.constants: dict[str, torch.Tensor] = {}
        self.host_constants: dict[str, torch.Tensor] = {}
        for name, array in engine.constants.items():
            host = numpy_to_torch(array)
            self.host_constants[name] = host
            self.constants[name] = host.to(self.device) if self.device.type != "cpu" else host
        ctx = TacticContext(self.device, self.constants)
        self.shapes = ShapeProgram(engine, run_layer)
        self.steps: list[Step] = []
        layers = [l for l in engine.layers if l.name not in self.shapes.host_layer_names]
        for layer in layers:
            tactic = get_tactic(layer.tactic)
            net_layer = layer.as_network_layer()
            state = tactic.prepare(net_layer, ctx)
            step = Step(layer.name, tactic, state, list(layer.inputs), list(layer.outputs),
                        shape_input_positions(layer))
            prepared = {layer.tactic: (tactic, state)}
            for b, name in sorted(layer.bucket_tactics.items()):
                if name not in prepared:
                    alt = get_tactic(name)
                    prepared[name] = (alt, alt.prepare(net_layer, ctx))
                step.buckets[b] = prepared[name]
            self.steps.append(step)
        for plan in concat_plans(layers).values():
            self.steps[plan.first_producer].allocate.append(plan)
            self.steps[plan.index].concat = plan
            for i, (start, size) in zip(plan.producers, plan.slices):
                if i is not None:
                    self.steps[i].into = (plan.output, plan.axis, start, size)
        keep = {t.name for t in engine.io} | set(self.constants)
        last_use: dict[str, int] = {}
        for i, s in enumerate(self.steps):
            for n in s.inputs:
                if n is not None:
                    last_use[n] = i
        for n, i in last_use.items():
            if n not in keep:
                self.steps[i].release.append(n)
        self.tf32 = "tf32" in engine.build_info.get("flags", ())
        self.bucket_of = BucketChooser(engine.bucket_shapes) if engine.bucket_shapes else None

    def host_values(self, feeds: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
        """The shape program's values for these inputs' shapes: (host tensors, the ones device
        layers read as data, on the device); see :meth:`ShapeProgram.values`."""
        return self.shapes.values({n: tuple(t.shape) for n, t in feeds.items()}, self.host_constants, self.device)

    def execute(self, feeds: Mapping[str, torch.Tensor], profiler: Any = None) -> dict[str, torch.Tensor]:
        if self.device.type != "cuda":
            return self._execute(feeds, profiler)
        with CAPTURES.eager(), tf32_mode(self.tf32):
            return self._execute(feeds, profiler)

    def _execute(self, feeds: Mapping[str, torch.Tensor], profiler: Any = None) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = dict(self.constants)
        values.update(feeds)
        dev = self.device
        host = self.host_values(feeds)
        values.update(host[1])
        bucket = self.bucket_of({n: t.shape for n, t in feeds.items()}) if self.bucket_of is not None else 0
        for s in self.steps:
            for plan in s.allocate:
                values[plan.output] = plan.empty(dev)
            args = []
            for i, n in enumerate(s.inputs):
                if n is None:
                    args.append(None)
                    continue
                if i in s.shape_inputs:   # read on the host: the shape program's value, or a copy
                    if n in host[0]:
                        v = host[0][n]
                    elif n in self.host_constants:
                        v = self.host_constants[n]
                    else:
                        v = values[n]
                        v = v.cpu() if v.device.type != "cpu" else v
                else:
                    v = values[n]
                    if v.device != dev and v.device.type == "cpu":
                        v = v.to(dev, non_blocking=True)
                args.append(v)
            t0 = layer_started(profiler, s.name) if profiler is not None else 0.0
            tactic, state = s.buckets.get(bucket, (s.tactic, s.state)) if bucket else (s.tactic, s.state)
            oom = None
            try:
                if s.into is not None:
                    outs = [values[s.into[0]].narrow(*s.into[1:])]
                    tactic.run_into(state, args, outs[0])
                elif s.concat is not None:
                    outs = [fill_concat(s.concat, values[s.concat.output], args)]
                else:
                    outs = tactic.run(state, args)
            except KilnError:
                raise
            except torch.OutOfMemoryError as exc:
                # raised below, outside this block, so that nothing keeps the failed frames and
                # their tensors alive
                oom = str(exc) or type(exc).__name__
            except Exception as exc:  # noqa: BLE001
                raise ExecutionError(ErrorCode.RUNTIME,
                                     f"failed in tactic {tactic.name} with inputs [{_shapes_text(args)}]: "
                                     f"{type(exc).__name__}: {exc}", layer=s.name) from exc
            if oom is not None:
                shapes = _shapes_text(args)
                values.clear()   # this run's activations go back before the free memory is counted,
                args = v = outs = host = None   # and the error keeps none of them alive
                raise ExecutionError(ErrorCode.OUT_OF_MEMORY,
                                     out_of_memory(oom, f"in tactic {tactic.name} with inputs [{shapes}]"),
                                     layer=s.name)
            if profiler is not None:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                profiler.report_layer_time(s.name, (time.perf_counter() - t0) * 1e3)
            for n, v in zip(s.outputs, outs):
                values[n] = v
            for n in s.release:
                values.pop(n, None)
        return {t.name: values[t.name] for t in self.engine.io if t.mode == "output"}


def _shapes_text(args) -> str:
    return ", ".join("-" if a is None else f"{tuple(a.shape)}:{str(a.dtype).replace('torch.', '')}" for a in args)
