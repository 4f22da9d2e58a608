"""Generated pointwise kernels: expression tree -> Triton source -> cached kernel.

A pointwise computation is a tree of :class:`Node` s whose leaves are the kernel's inputs
(``Node("input", attrs=(i,))``) and whose inner nodes are kilnrt ops (an ``ActivationType``
with ``attrs == (alpha, beta)``, an ``ElementWiseOperation`` or a ``UnaryOperation``).
:func:`kernel_source` renders it: one SSA line per node, each from :data:`OPS`, which maps an op
to a function of its operands' variable names returning a Triton expression.  All math is
float32; inputs are loaded and converted, the result is converted to the output's dtype.

The single-layer tactics below (``cuda.activation.triton``, ``cuda.elementwise.triton``,
``cuda.unary.triton``) are the generator's first users; pointwise-region fusion builds a
bigger tree and uses :class:`PointwiseKernel` the same way.

Inputs broadcast as numpy does.  The launch iterates over the output in memory order (the
output takes the layout of a dense input of its shape, e.g. channels-last, else contiguous);
dims are coalesced, and each input is read as *flat* (same layout as the output), *scalar*
(one element) or *strided* (its broadcast strides over the coalesced output dims, rank <= 6).

Generated source is ours, made at build/run time from the op tables (never read from a plan);
:func:`load_kernel` executes it in a dedicated namespace and caches the kernel by its source.
The helpers (expm1, log1p, tanh, softplus, clamp, pow_) use only ``tl`` math that the interpreter also
runs, so the kernels tested on the CPU are the kernels that run on the GPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import linecache
import math
from typing import Any, Callable

import torch
import triton
import triton.language as tl

from kilnrt.kernels.registry import Tactic, tactic
from kilnrt.kernels.triton import FLOAT_TYPES, TORCH_FLOATS, launch_options, wait_for_previous_kernel
from kilnrt.kernels.views import contiguous_strides
from kilnrt.network.layers import ActivationType as A, ElementWiseOperation as E, LayerKind, UnaryOperation as U

MAX_RANK = 6
BLOCK = 1024
NUM_WARPS = 4


# ----------------------------------------------------------------------------- expression tree
@dataclasses.dataclass(frozen=True)
class Node:
    """One value of a pointwise expression (hashable: equal subtrees render once)."""

    op: Any
    args: tuple["Node", ...] = ()
    attrs: tuple = ()


def input_node(index: int) -> Node:
    return Node("input", attrs=(index,))


class Unsupported(Exception):
    """The generator cannot render this expression (unknown op, non-finite constant)."""


# ----------------------------------------------------------------------------- helpers (jit)
@triton.jit
def expm1(x):
    # exp(x) - 1 cancels near 0: there, the Taylor series to x^8 (|x| <= 0.5: error < 1e-8 relative)
    p = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0 + x * (
        1.0 / 720.0 + x * (1.0 / 5040.0 + x * (1.0 / 40320.0))))))))
    return tl.where(tl.abs(x) <= 0.5, p, tl.exp(x) - 1.0)


@triton.jit
def log1p(x):
    # Goldberg: log(u) * x / (u - 1) with u = 1 + x
    u = 1.0 + x
    um1 = u - 1.0
    safe = tl.where(um1 == 0.0, 1.0, um1)
    return tl.where(um1 == 0.0, x, tl.log(u) * x / safe)


@triton.jit
def tanh(x):
    e = expm1(-2.0 * tl.abs(x))
    t = -e / (2.0 + e)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def softplus(x):
    return tl.where(x > 20.0, x, log1p(tl.exp(x)))


@triton.jit
def clamp(x, lo, hi):
    y = tl.where(x < lo, lo, x)
    return tl.where(y > hi, hi, y)


@triton.jit
def pow_(a, b):
    # a ** b as torch.pow on floats: exact sign for integral b, NaN for a < 0 and fractional b
    r = tl.exp2(b * tl.log2(tl.where(tl.floor(b) == b, tl.abs(a), a)))
    odd = b - 2.0 * tl.floor(b * 0.5) == 1.0
    r = tl.where(a < 0.0, tl.where(odd, -r, r), r)
    return tl.where(b == 0.0, 1.0, r)


_NAMESPACE = {"tl": tl, "triton": triton, "wait_for_previous_kernel": wait_for_previous_kernel,
              "expm1": expm1, "log1p": log1p, "tanh": tanh,
              "softplus": softplus, "clamp": clamp, "pow_": pow_}


# ----------------------------------------------------------------------------- op table
def _lit(value: float) -> str:
    value = float(value)
    if not math.isfinite(value):
        raise Unsupported(f"non-finite constant {value}")
    return repr(value)


def _clip(x: str, lo: float, hi: float) -> str:
    if math.isnan(lo) or math.isnan(hi):
        raise Unsupported("NaN clip bound")
    if lo != -math.inf:
        x = f"tl.where({x} < {_lit(lo)}, {_lit(lo)}, {x})"
    if hi != math.inf:
        x = f"tl.where({x} > {_lit(hi)}, {_lit(hi)}, {x})"
    return x


_SQRT_HALF, _SQRT_2_OVER_PI = 0.7071067811865476, 0.7978845608028654

OPS: dict[Any, Callable[..., str]] = {
    # activations: f(x, alpha, beta), as kilnrt/kernels/cpu/pointwise.py defines them
    A.RELU: lambda x, a, b: f"tl.where({x} < 0.0, 0.0, {x})",
    A.SIGMOID: lambda x, a, b: f"tl.sigmoid({x})",
    A.TANH: lambda x, a, b: f"tanh({x})",
    A.LEAKY_RELU: lambda x, a, b: f"tl.where({x} > 0.0, {x}, {x} * {_lit(a)})",
    A.ELU: lambda x, a, b: f"tl.where({x} > 0.0, {x}, {_lit(a)} * expm1({x}))",
    A.SELU: lambda x, a, b: f"{_lit(b)} * tl.where({x} > 0.0, {x}, {_lit(a)} * expm1({x}))",
    A.SOFTSIGN: lambda x, a, b: f"{x} / (1.0 + tl.abs({x}))",
    A.SOFTPLUS: lambda x, a, b: f"softplus({x})",
    A.CLIP: _clip,
    A.HARD_SIGMOID: lambda x, a, b: f"clamp({_lit(a)} * {x} + {_lit(b)}, 0.0, 1.0)",
    A.SCALED_TANH: lambda x, a, b: f"{_lit(a)} * tanh({_lit(b)} * {x})",
    A.THRESHOLDED_RELU: lambda x, a, b: f"tl.where({x} > {_lit(a)}, {x}, 0.0)",
    A.GELU_ERF: lambda x, a, b: f"0.5 * {x} * (1.0 + tl.erf({x} * {_SQRT_HALF}))",
    # 0.5 * (1 + tanh(u)) == sigmoid(2u)
    A.GELU_TANH: lambda x, a, b: f"{x} * tl.sigmoid({2 * _SQRT_2_OVER_PI} * ({x} + 0.044715 * {x} * {x} * {x}))",
    A.SILU: lambda x, a, b: f"{x} * tl.sigmoid({x})",
    A.MISH: lambda x, a, b: f"{x} * tanh(softplus({x}))",
    A.HARD_SWISH: lambda x, a, b: f"{x} * clamp({x} / 6.0 + 0.5, 0.0, 1.0)",
    A.CELU: lambda x, a, b: (f"tl.where({x} < 0.0, 0.0, {x}) + "
                             f"tl.where({x} > 0.0, 0.0, {_lit(a)} * expm1({x} / {_lit(a)}))"),
    # elementwise on floats: f(a, b)
    E.SUM: lambda a, b: f"{a} + {b}",
    E.PROD: lambda a, b: f"{a} * {b}",
    E.SUB: lambda a, b: f"{a} - {b}",
    E.DIV: lambda a, b: f"{a} / {b}",
    E.MAX: lambda a, b: f"tl.maximum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)",
    E.MIN: lambda a, b: f"tl.minimum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)",
    E.POW: lambda a, b: f"pow_({a}, {b})",
    # unary on floats: f(x)
    U.EXP: lambda x: f"tl.exp({x})",
    U.LOG: lambda x: f"tl.log({x})",
    U.SQRT: lambda x: f"tl.sqrt_rn({x})",
    U.RECIP: lambda x: f"1.0 / {x}",
    U.ABS: lambda x: f"tl.abs({x})",
    U.NEG: lambda x: f"-{x}",
    U.SIN: lambda x: f"tl.sin({x})",
    U.COS: lambda x: f"tl.cos({x})",
    U.TAN: lambda x: f"tl.sin({x}) / tl.cos({x})",
    U.SINH: lambda x: f"0.5 * (expm1({x}) - expm1(-{x}))",
    U.COSH: lambda x: f"0.5 * (tl.exp({x}) + tl.exp(-{x}))",
    U.ERF: lambda x: f"tl.erf({x})",
    U.FLOOR: lambda x: f"tl.floor({x})",
    U.CEIL: lambda x: f"tl.ceil({x})",
    U.SIGN: lambda x: f"tl.where({x} > 0.0, 1.0, tl.where({x} < 0.0, -1.0, {x}))",
    # fused regions: select(cond, a, b) (cond loaded as 0.0/1.0 from bool), and a value rounded to
    # a narrower float type (attrs: its ``tl`` name), as a step that stored it would round it
    "select": lambda c, a, b: f"tl.where({c} != 0.0, {a}, {b})",
    "round": lambda x, ty: f"{x}.to({ty}).to(tl.float32)",
}


# ----------------------------------------------------------------------------- source
def _render_values(tree: Node, lines: list[str], names: dict[Node, str]) -> str:
    """Append the SSA lines computing ``tree`` (inputs are already in ``names``); its variable."""
    if tree in names:
        return names[tree]
    if tree.op not in OPS:
        raise Unsupported(f"no Triton rendering for {tree.op}")
    args = [_render_values(a, lines, names) for a in tree.args]
    name = names[tree] = f"t{len(lines)}"
    lines.append(f"{name} = {OPS[tree.op](*args, *tree.attrs)}")
    return name


def _inputs(tree: Node) -> set[int]:
    if tree.op == "input":
        return {tree.attrs[0]}
    return set().union(*(_inputs(a) for a in tree.args)) if tree.args else set()


def kernel_source(tree: Node | tuple[Node, ...], modes: tuple[str, ...], rank: int, big: bool) -> str:
    """The Triton source of ``pointwise_kernel(out_ptr, in0_ptr, ..., n, d0.., s<i>_<k>.., BLOCK, USE_PDL)``.

    ``modes[i]`` says how input i is read ("flat", "scalar" or "strided" over ``rank``
    coalesced output dims ``d0..``); ``big`` computes offsets in int64.  A tuple of trees
    (a multi-output region) gives one output each, ``out0_ptr, out1_ptr, ...``, sharing loads
    and common subtrees.
    """
    n = len(modes)
    trees = tree if isinstance(tree, tuple) else (tree,)
    outs = [f"out{j}_ptr" for j in range(len(trees))] if isinstance(tree, tuple) else ["out_ptr"]
    strided = [i for i, m in enumerate(modes) if m == "strided"]
    params = (outs + [f"in{i}_ptr" for i in range(n)] + ["n"]
              + ([f"d{k}" for k in range(rank)] if strided else [])
              + [f"s{i}_{k}" for i in strided for k in range(rank)] + ["BLOCK: tl.constexpr", "USE_PDL: tl.constexpr"])
    pid = "tl.program_id(0).to(tl.int64)" if big else "tl.program_id(0)"
    body = ["wait_for_previous_kernel(USE_PDL)", f"offs = {pid} * BLOCK + tl.arange(0, BLOCK)", "mask = offs < n"]
    if strided:
        body.append("rem = offs")
        for k in range(rank - 1, 0, -1):
            body += [f"i{k} = rem % d{k}", f"rem = rem // d{k}"]
        body.append("i0 = rem")
    names: dict[Node, str] = {}
    for i, mode in enumerate(modes):
        if mode == "flat":
            addr = f"in{i}_ptr + offs"
        elif mode == "scalar":
            addr = f"in{i}_ptr"
        else:
            addr = f"in{i}_ptr + (" + " + ".join(f"i{k} * s{i}_{k}" for k in range(rank)) + ")"
        masked = ", mask=mask" if mode != "scalar" else ""
        body.append(f"x{i} = tl.load({addr}{masked}).to(tl.float32)")
        names[input_node(i)] = f"x{i}"
    values: list[str] = []
    stores: list[str] = []
    for out, t in zip(outs, trees):
        result = _render_values(t, values, names)
        if all(modes[i] == "scalar" for i in _inputs(t)):  # one value: broadcast it over the block
            values.append(f"t{len(values)} = {result} + tl.zeros([BLOCK], tl.float32)")
            result = f"t{len(values) - 1}"
        stores.append(f"tl.store({out} + offs, {result}.to({out}.dtype.element_ty), mask=mask)")
    body += values + stores
    return ("@triton.jit\ndef pointwise_kernel(" + ", ".join(params) + "):\n"
            + "".join(f"    {line}\n" for line in body))


def renderable(tree: Node) -> bool:
    try:
        _render_values(tree, [], {input_node(i): f"x{i}" for i in _inputs(tree)})
        return True
    except Unsupported:
        return False


_KERNELS: dict[str, Any] = {}


def load_kernel(source: str) -> Any:
    """The ``pointwise_kernel`` that ``source`` (made by :func:`kernel_source`) defines, cached.

    Triton reads a kernel's source through ``inspect``, so the text is registered in
    ``linecache`` under a name made from its hash.
    """
    kernel = _KERNELS.get(source)
    if kernel is None:
        filename = f"<kilnrt-pointwise-{hashlib.sha256(source.encode()).hexdigest()[:16]}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        namespace = dict(_NAMESPACE, __name__="kilnrt.kernels.triton.generated")
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our generated source
        kernel = _KERNELS[source] = namespace["pointwise_kernel"]
    return kernel


# ----------------------------------------------------------------------------- launch
def _dense(t: torch.Tensor) -> bool:
    """No gaps and no overlaps: some permutation of the dims is contiguous (e.g. channels-last)."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


@dataclasses.dataclass
class _Launch:
    out_shape: torch.Size
    out_stride: tuple[int, ...]
    kernel: Any
    n: int
    args: tuple[int, ...]   # d0.., then each strided input's strides


class PointwiseKernel:
    """``kernel(*tensors) -> tensor``: the expression ``tree`` over same-dtype float tensors.

    With a tuple of trees and their ``out_dtypes`` (a fused region): ``kernel(*tensors) ->
    [tensor, ...]``, every output of the inputs' broadcast shape.
    """

    def __init__(self, tree: Node | tuple[Node, ...], n_inputs: int,
                 out_dtypes: tuple[torch.dtype, ...] | None = None) -> None:
        self.tree, self.n_inputs, self.out_dtypes = tree, n_inputs, out_dtypes
        self._launches: dict[tuple, _Launch] = {}

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        key = tuple((t.shape, t.stride()) for t in tensors)
        launch = self._launches.get(key)
        if launch is None:
            if len(self._launches) > 64:
                self._launches.clear()
            launch = self._launches[key] = self._plan(tensors)
        single = not isinstance(self.tree, tuple)
        dtypes = self.out_dtypes or (tensors[0].dtype,) * (1 if single else len(self.tree))
        outs = [torch.empty_strided(launch.out_shape, launch.out_stride, dtype=dt, device=tensors[0].device)
                for dt in dtypes]
        if launch.n:
            launch.kernel[(triton.cdiv(launch.n, BLOCK),)](*outs, *tensors, launch.n, *launch.args,
                                                           BLOCK=BLOCK, num_warps=NUM_WARPS, **launch_options(outs[0]))
        return outs[0] if single else outs

    def _plan(self, tensors) -> _Launch:
        out_shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        for t in (self.tree if isinstance(self.tree, tuple) else ()):
            if torch.broadcast_shapes(*(tensors[i].shape for i in _inputs(t))) != out_shape:
                raise ValueError(f"pointwise kernel: an output of shape smaller than {tuple(out_shape)}")
        ref = next((t for t in tensors if t.shape == out_shape and _dense(t)), None)
        out_stride = tuple(ref.stride()) if ref is not None else contiguous_strides(out_shape)
        # walk the output in memory order; size-1 dims do not matter
        order = sorted((k for k in range(len(out_shape)) if out_shape[k] != 1), key=lambda k: -out_stride[k])
        sizes = [out_shape[k] for k in order]
        strides = [[st[k] for k in order] for st in (t.expand(out_shape).stride() for t in tensors)]
        sizes, strides = _coalesce(sizes, strides)
        if len(sizes) > MAX_RANK:
            raise ValueError(f"pointwise kernel: {len(sizes)} dims after coalescing; at most {MAX_RANK}")
        flat = contiguous_strides(sizes)
        modes = tuple("flat" if tuple(st) == flat else "scalar" if not any(st) else "strided" for st in strides)
        n = math.prod(out_shape)
        reach = max([n] + [sum((s - 1) * st for s, st in zip(sizes, sts)) + 1 for sts in strides])
        kernel = load_kernel(kernel_source(self.tree, modes, len(sizes), big=reach + BLOCK >= 2**31))
        args: list[int] = list(sizes) if "strided" in modes else []
        for sts, mode in zip(strides, modes):
            if mode == "strided":
                args += sts
        return _Launch(out_shape, out_stride, kernel, n, tuple(args))


def _coalesce(sizes: list[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Merge neighbouring dims that every input walks as one (stride[k] == stride[k+1] * size[k+1])."""
    out_sizes: list[int] = []
    out_strides: list[list[int]] = [[] for _ in strides]
    for k, size in enumerate(sizes):
        if out_sizes and all(o[-1] == s[k] * size for o, s in zip(out_strides, strides)):
            out_sizes[-1] *= size
            for o, s in zip(out_strides, strides):
                o[-1] = s[k]
        else:
            out_sizes.append(size)
            for o, s in zip(out_strides, strides):
                o.append(s[k])
    return out_sizes, out_strides


# ----------------------------------------------------------------------------- tactics
class _PointwiseTactic(Tactic):
    device = "cuda"

    def tree(self, params) -> Node:
        raise NotImplementedError

    def supports(self, layer, ctx) -> bool:
        ins, out = layer.inputs, layer.outputs[0]
        if any(t is None or t.shape is None or len(t.shape) > MAX_RANK for t in ins):
            return False
        if out.dtype not in FLOAT_TYPES or any(t.dtype != out.dtype for t in ins):
            return False
        return renderable(self.tree(layer.params))

    def prepare(self, layer, ctx) -> PointwiseKernel:
        return PointwiseKernel(self.tree(layer.params), len(layer.inputs))

    def run(self, kernel: PointwiseKernel, inputs):
        if inputs[0].dtype not in TORCH_FLOATS or any(t.dtype != inputs[0].dtype for t in inputs):
            raise TypeError(f"{self.name} runs float16/bfloat16/float32 inputs of one dtype; "
                            f"got {[str(t.dtype) for t in inputs]}")
        return [kernel(*inputs)]


@tactic
class TritonActivation(_PointwiseTactic):
    name = "cuda.activation.triton"
    kind = LayerKind.ACTIVATION

    def tree(self, p) -> Node:
        return Node(p.type, (input_node(0),), (p.alpha, p.beta))


@tactic
class TritonElementWise(_PointwiseTactic):
    """Float elementwise ops with numpy broadcasting."""

    name = "cuda.elementwise.triton"
    kind = LayerKind.ELEMENTWISE

    def tree(self, p) -> Node:
        return Node(p.op, (input_node(0), input_node(1)))


@tactic
class TritonUnary(_PointwiseTactic):
    name = "cuda.unary.triton"
    kind = LayerKind.UNARY

    def tree(self, p) -> Node:
        return Node(p.op, (input_node(0),))
