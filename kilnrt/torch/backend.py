"""``torch.compile(model, backend="kilnrt")``: kilnrt engines for the pieces of the graph kilnrt
supports, PyTorch for the rest (partitioning, as Torch-TensorRT does).

Dynamo captures the Python code as FX graphs, breaking the graph where control flow depends
on tensor values.  Each graph goes through AOTAutograd to ATen ops (functional, decomposed to
what the importer table takes) and is split by torch.fx's ``CapabilityBasedPartitioner``
into the largest pieces whose every node has an importer; each piece becomes an
:class:`EnginePiece`, and the nodes between them run in PyTorch.  Parameters and buffers are
built into the engines as constants (weights changed after compiling are not seen: compile
again).  A piece builds one static engine per input-shape set it meets (a bounded cache), so
dynamic shapes work without ranges.  Options (``torch.compile(..., options={...})``):
``device`` (default: where the graph's inputs are), ``fp16``, ``min_block_size`` (the fewest compute nodes a piece needs, default 1)
and the options of :func:`kilnrt.build`.
"""
from __future__ import annotations

import collections
import functools
import logging
import threading
import warnings
from typing import Any, Mapping

import torch
import torch.fx
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase

from kilnrt.errors import ErrorCode, KilnError
from kilnrt.torch import registry
from kilnrt.torch.convert import graph_to_network, node_support

log = logging.getLogger("kilnrt.torch")

DEFAULTS = {"device": None, "fp16": False, "int8": False, "min_block_size": 1}   # device None: the inputs'
CACHE_SIZE = 8                  # engines kept per piece, one per input-shape set
# what the backend did, for tests and logs: "graphs", "pieces", "engines" (built), "pieces_in_pytorch"
# (a piece whose build failed runs in PyTorch), and "pytorch:<op>" for each ATen op left to PyTorch
STATS: collections.Counter = collections.Counter()
_NON_COMPUTE = {"_operator.getitem", "aten.sym_size.int", "_operator.add", "_operator.sub", "_operator.mul",
                "_operator.floordiv", "_operator.mod", "_operator.neg", "aten._assert_tensor_metadata.default",
                "aten._assert_scalar.default", "aten.clone.default", "aten.alias.default", "aten.detach.default"}


def backend_options(options: Mapping[str, Any] | None, mode: str | None = None) -> dict:
    """The backend's options with defaults; unknown ones raise."""
    from kilnrt.torch.compiler import BUILD_OPTIONS

    if mode not in (None, "default"):
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"mode={mode!r}: the kilnrt backend has no modes; pass "
                                                    "options={'fp16': True, 'device': 'cuda', ...} instead")
    opts = dict(DEFAULTS)
    for key, value in dict(options or {}).items():
        if key not in DEFAULTS and key not in BUILD_OPTIONS:
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"torch.compile(backend='kilnrt') has no option {key!r}; its options are: "
                            f"{', '.join(list(DEFAULTS) + list(BUILD_OPTIONS))}")
        opts[key] = value
    if opts["device"] not in (None, "cpu", "cuda"):
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"device={opts['device']!r}; supported: 'cpu', 'cuda' "
                                                    "(default: where the graph's inputs are)")
    return opts


class KilnSupport(OperatorSupportBase):
    """A node is supported when kilnrt has an importer that takes its arguments."""

    def is_node_supported(self, submodules: Mapping[str, torch.nn.Module], node: torch.fx.Node) -> bool:
        if node.op != "call_function":
            return False
        if registry.target_name(node.target) == "_operator.getitem":  # stays with the node it reads
            source = node.args[0]
            return isinstance(source, torch.fx.Node) and self.is_node_supported(submodules, source)
        return node_support(node) is None   # partition() gives a piece its nodes' subgraphs (_own_subgraphs)


def _compute_nodes(partition) -> int:
    return sum(1 for n in partition.nodes if registry.target_name(n.target) not in _NON_COMPUTE)


class EnginePiece(torch.nn.Module):
    """One partition of a graph: a kilnrt engine per input-shape set, built on first use."""

    def __init__(self, graph_module: torch.fx.GraphModule, constants: dict[str, torch.Tensor], options: dict,
                 name: str) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.constants = constants
        self.options = options
        self.piece_name = name
        self._placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
        out = next(n for n in graph_module.graph.nodes if n.op == "output").args[0]
        self._multi = isinstance(out, (tuple, list))
        self._engines: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0

    def _bindings(self, args: tuple) -> dict:
        bindings = {}
        for ph, arg in zip(self._placeholders, args):
            val = ph.meta.get("val")
            if isinstance(val, torch.Tensor) and isinstance(arg, torch.Tensor):
                for d, real in zip(val.shape, arg.shape):
                    if isinstance(d, torch.SymInt) and d.node.expr.is_Symbol:
                        bindings[d.node.expr] = int(real)
            elif isinstance(val, torch.SymInt) and val.node.expr.is_Symbol:
                bindings[val.node.expr] = int(arg)
        return bindings

    def _entry(self, args: tuple):
        key = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a
                    for ph, a in zip(self._placeholders, args) if ph.name not in self.constants)
        with self._lock:
            entry = self._engines.get(key)
            if entry is not None:
                self._engines.move_to_end(key)
                return entry
        from kilnrt.api import build

        build_options = {k: v for k, v in self.options.items() if k != "min_block_size"}
        try:
            converted = graph_to_network(self.graph_module.graph, constants=self.constants,
                                         bindings=self._bindings(args), name=self.piece_name)
            entry = (build(converted.network, **build_options), converted)
            STATS["engines"] += 1
        except KilnError as exc:
            STATS["pieces_in_pytorch"] += 1
            _warn_once(f"kilnrt: piece {self.piece_name} runs in PyTorch for input shapes {key}: {exc}")
            entry = (None, None)
        self.builds += 1
        with self._lock:
            self._engines[key] = entry
            while len(self._engines) > CACHE_SIZE:
                self._engines.popitem(last=False)
        return entry

    def forward(self, *args: Any) -> Any:
        engine, converted = self._entry(args)
        if engine is None:
            return self.graph_module(*args)
        feeds = {ph.name: a for ph, a in zip(self._placeholders, args) if ph.name in converted.inputs}
        results = engine.run(feeds)
        outs = [results[o.name] if o.kind == "tensor" else int(results[o.name]) if o.kind == "int" else o.value
                for o in converted.outputs]
        return tuple(outs) if self._multi else outs[0]


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def partition(gm: torch.fx.GraphModule, constants: Mapping[int, torch.Tensor], options: dict) -> torch.fx.GraphModule:
    """``gm`` (ATen) with its kilnrt-supported pieces replaced by :class:`EnginePiece` modules;
    ``constants`` maps placeholder positions to the weights they always receive."""
    partitioner = CapabilityBasedPartitioner(gm, KilnSupport(), allows_single_node_partition=True)
    parts = [p for p in partitioner.propose_partitions() if _compute_nodes(p) >= int(options["min_block_size"])]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    unsupported = sorted({registry.target_name(n.target) for n in gm.graph.nodes if n.op == "call_function"
                          and not any(n in p.nodes for p in parts)
                          and registry.target_name(n.target) not in _NON_COMPUTE})
    log.info("kilnrt backend: %d piece(s) for kilnrt; in PyTorch: %s", len(parts), ", ".join(unsupported) or "nothing")
    STATS["graphs"] += 1
    STATS["pieces"] += len(parts)
    STATS.update(f"pytorch:{op}" for op in unsupported)
    if not parts:
        return gm
    fused = partitioner.fuse_partitions(parts, prefix="kilnrt_")
    position = {n.name: i for i, n in enumerate(placeholders)}
    for node in list(fused.graph.nodes):
        if node.op != "call_module" or not str(node.target).startswith("kilnrt_"):
            continue
        sub = getattr(fused, node.target)
        _own_subgraphs(fused, node, sub)
        weights = {}
        for ph, arg in zip([n for n in sub.graph.nodes if n.op == "placeholder"], node.args):
            if "val" not in ph.meta and isinstance(arg, torch.fx.Node):
                ph.meta["val"] = arg.meta.get("val")
            if isinstance(arg, torch.fx.Node) and arg.op == "placeholder" and position.get(arg.name) in constants:
                weights[ph.name] = constants[position[arg.name]]
        setattr(fused, node.target, EnginePiece(sub, weights, options, node.target))
    fused.pieces = [getattr(fused, n.target) for n in fused.graph.nodes
                    if n.op == "call_module" and str(n.target).startswith("kilnrt_")]
    return fused


def _own_subgraphs(outer: torch.fx.GraphModule, call: torch.fx.Node, piece: torch.fx.GraphModule) -> None:
    """torch.fx's partitioner hands a piece the graph modules its nodes take (torch.cond's
    branches) as run-time inputs; make them the piece's own attributes instead, so the piece's
    graph reads them with ``get_attr`` and kilnrt imports them with it (``call``'s arguments lose them)."""
    placeholders = [n for n in piece.graph.nodes if n.op == "placeholder"]
    kept = []
    for ph, arg in zip(placeholders, call.args):
        module = None
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
            module = functools.reduce(getattr, str(arg.target).split("."), outer)
        if not isinstance(module, torch.fx.GraphModule):
            kept.append(arg)
            continue
        name = f"subgraph_{ph.name}"
        piece.add_submodule(name, module)
        with piece.graph.inserting_before(ph):
            attr = piece.graph.get_attr(name)
        ph.replace_all_uses_with(attr)
        piece.graph.erase_node(ph)
    if len(kept) != len(call.args):
        call.args = tuple(kept)
        piece.recompile()
        outer.recompile()


def _is_weight(node: torch.fx.Node, example: Any) -> bool:
    if isinstance(example, torch.nn.Parameter):
        return True
    grapharg = node.meta.get("grapharg")
    source = getattr(getattr(grapharg, "source", None), "name", "")
    source = source() if callable(source) else str(source or "")
    return "._buffers[" in source or "._parameters[" in source


def aot_decompositions() -> dict:
    """Core ATen decompositions, less the ops kilnrt imports whole."""
    from torch._decomp import core_aten_decompositions

    table = dict(core_aten_decompositions())
    for op in registry.supported_overloads():
        table.pop(op, None)
    return table


def kilnrt_backend(gm: torch.fx.GraphModule, example_inputs: list, *, options: Mapping[str, Any] | None = None,
                   mode: str | None = None):
    """The dynamo backend registered as ``"kilnrt"``."""
    from torch._dynamo.backends.common import aot_autograd

    opts = backend_options(options, mode)
    if opts["device"] is None:   # where the model's inputs and weights are
        opts["device"] = "cuda" if any(isinstance(x, torch.Tensor) and x.is_cuda for x in example_inputs) else "cpu"
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    weights = {i: ex.detach() for i, (n, ex) in enumerate(zip(placeholders, example_inputs))
               if isinstance(ex, torch.Tensor) and _is_weight(n, ex)}
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs):
        _warn_once("kilnrt builds inference engines: outputs of torch.compile(backend='kilnrt') do not require "
                   "grad (run the model under torch.no_grad() or torch.inference_mode() to silence this)")

    def compile_graph(aten_gm: torch.fx.GraphModule, fake_inputs: list):
        same = len([n for n in aten_gm.graph.nodes if n.op == "placeholder"]) == len(example_inputs)
        return partition(aten_gm, weights if same else {}, opts)

    with torch.no_grad():
        compiled = aot_autograd(fw_compiler=compile_graph, inference_compiler=compile_graph,
                                decompositions=aot_decompositions())(gm, example_inputs)

    def run(*args: Any) -> Any:
        with torch.no_grad():
            return compiled(*args)

    return run


def register() -> None:
    """Make ``torch.compile(backend="kilnrt")`` find :func:`kilnrt_backend`.  An installed kilnrt
    declares it as a ``torch_dynamo_backends`` entry point, which dynamo loads itself; this
    registers it where that entry point is missing (a source tree that was not installed)."""
    from importlib.metadata import entry_points

    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    if "kilnrt" in _COMPILER_FNS or "kilnrt" in entry_points(group="torch_dynamo_backends").names:
        return
    register_backend(name="kilnrt")(kilnrt_backend)


class DynamoCompiledModule(torch.nn.Module):
    """``module`` under ``torch.compile(backend="kilnrt")``, returned by ``kilnrt.compile`` when
    torch.export cannot capture one graph; it cannot be saved."""

    def __init__(self, module: torch.nn.Module, options: dict) -> None:
        super().__init__()
        self.module = module
        self.options = backend_options(options)
        self.compiled = torch.compile(module, backend=functools.partial(kilnrt_backend, options=self.options))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiled(*args, **kwargs)

    def save(self, path: str, **_: Any) -> None:
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        f"{type(self.module).__name__} was compiled through torch.compile (torch.export could not "
                        "capture it as one graph), and such a module cannot be saved; rewrite its data-dependent "
                        "branch with torch.cond and compile again to get one engine that saves")
