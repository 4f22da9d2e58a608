"""Shrink a failing ONNX model to a small subgraph that still fails (Polygraphy's ``debug reduce``).

The model's nodes are in topological order. A *subgraph* is a set of those nodes: its inputs
are the tensors its nodes read that none of them makes (fed with the values a reference run
of the whole model gave them, so that the subgraph sees the data it saw in the model), its
outputs the tensors its nodes make that the model outputs or that a node outside it reads.
Integer tensors and tensors that depend on no model input become initializers instead of
inputs (shape computations stay constants, as they were for the builder).

:func:`reduce_model` bisects: the shortest prefix of the nodes that fails, then the shortest
suffix of that prefix that fails, then drops, one at a time, every node without which the
rest still fails. ``fails(model, feeds)`` decides what failing means (:func:`mismatch_check`:
kilnrt differs from ONNX Runtime beyond a tolerance; :func:`error_check`: building or running
raises the same error as the whole model). Bisection assumes that a failing range stays
failing when it grows; where it does not, the result is still a failing subgraph, only
perhaps not the smallest.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kilnrt.errors import ErrorCode, KilnError

log = logging.getLogger("kilnrt.debugging")

Feeds = dict[str, np.ndarray]
Check = Callable[[Any, Feeds], bool]   # (onnx.ModelProto, feeds) -> True when it fails


# ----------------------------------------------------------------------------- the graph
def _attribute_graphs(node) -> list:
    import onnx

    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def _outer_names(graph) -> set[str]:
    """Names a subgraph body (an If/Loop/Scan branch) reads from the scope around it."""
    made = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    read: set[str] = set()
    for node in graph.node:
        read.update(n for n in node.input if n)
        for g in _attribute_graphs(node):
            read |= _outer_names(g)
        made.update(node.output)
    read.update(o.name for o in graph.output)
    return read - made


def node_reads(node) -> list[str]:
    """Every tensor ``node`` reads: its inputs, and the outer names its subgraph bodies read."""
    names = [n for n in node.input if n]
    for g in _attribute_graphs(node):
        names.extend(sorted(_outer_names(g) - set(names)))
    return names


def _depends_on_inputs(proto) -> set[str]:
    """The tensors whose values depend on a model input (the rest are constants)."""
    initializers = {i.name for i in proto.graph.initializer}
    live = {i.name for i in proto.graph.input if i.name not in initializers}
    for node in proto.graph.node:
        if any(n in live for n in node_reads(node)):
            live.update(o for o in node.output if o)
    return live


@dataclass
class Reference:
    """The whole model's run: every tensor's value on the seeded inputs (ONNX Runtime)."""
    proto: Any
    values: dict[str, np.ndarray]
    live: set[str]            # tensors that depend on a model input

    @classmethod
    def run(cls, proto, feeds: Mapping[str, np.ndarray]) -> "Reference":
        from kilnrt.debugging.reference import onnxruntime_run

        names = [o for node in proto.graph.node for o in node.output if o]
        values = dict(feeds)
        values.update(onnxruntime_run(proto, feeds, extra_outputs=names))
        return cls(proto, values, _depends_on_inputs(proto))


def subgraph(ref: Reference, keep: Sequence[int]):
    """The ONNX model made of the nodes at indices ``keep`` (see the module's docstring), and
    the feeds for its inputs."""
    import onnx
    from onnx import helper, numpy_helper

    graph = ref.proto.graph
    keep = sorted(set(keep))
    kept = [graph.node[i] for i in keep]
    kept_ids = set(keep)
    made = {o for n in kept for o in n.output if o}
    read = list(dict.fromkeys(x for n in kept for x in node_reads(n)))
    initializers = {i.name: i for i in graph.initializer}
    model_outputs = {o.name for o in graph.output}
    read_outside = {x for i, n in enumerate(graph.node) if i not in kept_ids for x in node_reads(n)}

    inputs, inits, feeds = [], [], {}
    for name in read:
        if name in made:
            continue
        if name in initializers:
            inits.append(initializers[name])
            continue
        if name not in ref.values:
            raise KilnError(ErrorCode.INVALID_MODEL, f"debug reduce: the reference run has no value for {name!r}")
        value = np.asarray(ref.values[name])
        if name not in ref.live or value.dtype.kind in "biu":
            inits.append(numpy_helper.from_array(value, name))
        else:
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                        list(value.shape)))
            feeds[name] = value
    outputs = []
    for node in kept:
        for name in node.output:
            if name and (name in model_outputs or name in read_outside) and name in ref.values:
                value = np.asarray(ref.values[name])
                outputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                             list(value.shape)))
    g = helper.make_graph(kept, f"{graph.name or 'model'}_reduced", inputs, outputs, inits)
    model = helper.make_model(g, opset_imports=list(ref.proto.opset_import), ir_version=ref.proto.ir_version)
    model.functions.extend(ref.proto.functions)
    onnx.checker.check_model(model)
    return model, feeds


# ----------------------------------------------------------------------------- what failing means
def _build_and_run(model, feeds: Feeds, build: Callable[[Any], Any]) -> dict:
    engine = build(model)
    return engine.run(feeds)


def mismatch_check(build: Callable[[Any], Any], rtol: float, atol: float) -> Check:
    """Fails when kilnrt's outputs (``build(model).run(feeds)``) differ from ONNX Runtime's
    beyond ``|kilnrt - ort| <= atol + rtol * |ort|``. A subgraph kilnrt cannot build or run
    does not count as failing (its failure is another one)."""
    from kilnrt.debugging.reference import onnxruntime_run
    from kilnrt.testing import compare

    def fails(model, feeds: Feeds) -> bool:
        if not len(model.graph.output):
            return False
        try:
            actual = _build_and_run(model, feeds, build)
        except Exception as exc:  # noqa: BLE001 - another failure than the one reduced
            log.info("debug reduce: a subgraph failed to build or run (%s: %s); counted as passing",
                     type(exc).__name__, exc)
            return False
        expected = onnxruntime_run(model, feeds)
        return any(not compare(actual[n], e, rtol, atol, name=n).ok for n, e in expected.items() if n in actual) \
            or any(n not in actual for n in expected)

    return fails


def error_signature(exc: BaseException) -> str:
    """What identifies an error: its class and, for kilnrt's errors, its code."""
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__}[{code}]" if code else type(exc).__name__


def error_check(build: Callable[[Any], Any], signature: str | None = None, contains: str | None = None) -> Check:
    """Fails when building (or running) raises: with ``signature``, an error of that class and
    code (:func:`error_signature`); with ``contains``, one whose message holds that text."""

    def fails(model, feeds: Feeds) -> bool:
        try:
            _build_and_run(model, feeds, build)
        except Exception as exc:  # noqa: BLE001 - the failure looked for
            if signature is not None and error_signature(exc) != signature:
                return False
            return contains is None or contains in str(exc)
        return False

    return fails


# ----------------------------------------------------------------------------- the search
@dataclass
class ReduceResult:
    nodes: list[int]                       # indices into the model's nodes
    model: Any                             # the reduced onnx.ModelProto
    feeds: Feeds                           # its inputs' values (from the reference run)
    checks: int
    steps: list[str] = field(default_factory=list)


def reduce_model(ref: Reference, fails: Check, *, prune: bool = True,
                 report: Callable[[str], None] | None = None) -> ReduceResult:
    """The smallest failing subgraph the search finds (see the module's docstring)."""
    n = len(ref.proto.graph.node)
    seen: dict[tuple[int, ...], bool] = {}
    steps: list[str] = []

    def check(keep: Sequence[int], what: str) -> bool:
        key = tuple(sorted(set(keep)))
        if key not in seen:
            if not key:
                seen[key] = False
            else:
                model, feeds = subgraph(ref, key)
                seen[key] = bool(fails(model, feeds))
            line = f"[{len(seen)}] {'FAILS' if seen[key] else 'passes'} | {what}: {len(key)} node(s)"
            steps.append(line)
            if report is not None:
                report(line)
        return seen[key]

    if not check(range(n), "whole model"):
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        "debug reduce: the whole model does not fail the check, so there is nothing to reduce "
                        "(check the tolerance, --precision, --check and the seed)")
    passing, failing = 0, n      # nodes[:passing] passes (or is empty), nodes[:failing] fails
    while failing - passing > 1:
        mid = (passing + failing) // 2
        if check(range(mid), "first nodes"):
            failing = mid
        else:
            passing = mid
    hi = failing
    failing, passing = 0, hi     # nodes[failing:hi] fails, nodes[passing:hi] passes (or is empty)
    while passing - failing > 1:
        mid = (failing + passing) // 2
        if check(range(mid, hi), "last nodes of those"):
            failing = mid
        else:
            passing = mid
    keep = list(range(failing, hi))
    if prune and len(keep) > 1:
        for i in list(keep):
            rest = [k for k in keep if k != i]
            if rest and check(rest, f"without node {ref.proto.graph.node[i].name or i}"):
                keep = rest
    model, feeds = subgraph(ref, keep)
    return ReduceResult(keep, model, feeds, len(seen), steps)


__all__ = ["Reference", "ReduceResult", "error_check", "error_signature", "mismatch_check", "node_reads",
           "reduce_model", "subgraph"]
