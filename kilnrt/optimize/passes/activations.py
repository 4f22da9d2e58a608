"""Activation functions written out as elementwise math, recognized and replaced by one layer.

Exporters often spell an activation as the arithmetic that defines it: PyTorch writes SiLU as
``x * sigmoid(x)`` at opset 17, BERT-style code writes GELU as ``0.5 * x * (1 + erf(x / sqrt(2)))``
or its tanh form, Keras writes HardSwish as ``x * relu6(x + 3) / 6``.  As one ACTIVATION layer
they fold into a convolution or GEMM epilogue instead of running as a separate pointwise pass.

Each activation's decompositions are :data:`PATTERNS`, small expression trees over the input
``x``.  Products and sums are matched as flat multisets, so ``(x * 0.5) * y``, ``x * (y * 0.5)``
and ``0.5 * x * y`` are one pattern, a division by a constant is a product with its reciprocal,
a subtraction of a constant is a sum with its negation, and every scalar constant of a product
(or sum) is combined before comparing (within 1e-3).  Every intermediate tensor of a match must
have exactly one reader and not be a network output; ``x`` must have the output's shape and type.
Adding a pattern is one entry in :data:`PATTERNS`.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.network.layers import ActivationParams, ActivationType as A, ElementWiseOperation as E, LayerKind
from kilnrt.network.layers import UnaryOperation as U
from kilnrt.optimize.passes.match import Graph, fused, replace


# ----------------------------------------------------------------------------- pattern language
@dataclasses.dataclass(frozen=True)
class X:
    """The activation's input (the same tensor wherever it appears)."""


@dataclasses.dataclass(frozen=True)
class Prod:
    """A product of factors; ``const`` is the product of every constant factor (1 if none)."""
    factors: tuple
    const: float = 1.0


@dataclasses.dataclass(frozen=True)
class Sum:
    """A sum of terms; ``const`` is the sum of every constant term (0 if none)."""
    terms: tuple
    const: float = 0.0


@dataclasses.dataclass(frozen=True)
class Act:
    """An ACTIVATION layer of ``type`` (with these alpha/beta where given) applied to ``arg``."""
    type: A
    arg: object
    alpha: float | None = None
    beta: float | None = None


@dataclasses.dataclass(frozen=True)
class Unary:
    op: U
    arg: object


@dataclasses.dataclass(frozen=True)
class Pow:
    base: object
    exponent: float


@dataclasses.dataclass(frozen=True)
class AnyOf:
    options: tuple


x = X()
_cubic_term = AnyOf((Prod((Pow(x, 3.0),), 0.044715), Prod((x, x, x), 0.044715)))  # nested products flatten
_softplus = AnyOf((Act(A.SOFTPLUS, x), Unary(U.LOG, Sum((Unary(U.EXP, x),), 1.0))))

# (activation, alpha, beta, decomposition); the first match at a layer wins
PATTERNS: list[tuple[A, float, float, object]] = [
    (A.GELU_ERF, 0.0, 0.0, Prod((x, Sum((Unary(U.ERF, Prod((x,), 1 / math.sqrt(2))),), 1.0)), 0.5)),
    (A.GELU_TANH, 0.0, 0.0, Prod((x, Sum((Act(A.TANH, Prod((Sum((x, _cubic_term)),),
                                                        math.sqrt(2 / math.pi))),), 1.0)), 0.5)),
    (A.SILU, 0.0, 0.0, Prod((x, Act(A.SIGMOID, x)))),
    (A.HARD_SWISH, 0.0, 0.0, AnyOf((Prod((x, Act(A.HARD_SIGMOID, x, 1 / 6, 0.5))),
                                     Prod((x, Act(A.CLIP, Sum((x,), 3.0), 0.0, 6.0)), 1 / 6)))),
    (A.MISH, 0.0, 0.0, Prod((x, Act(A.TANH, _softplus)))),
]


# ----------------------------------------------------------------------------- matching
def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6)


class _Matcher:
    """Matches one pattern at one tensor; collects the layers it consumes and binds ``x``."""

    def __init__(self, g: Graph, root: Layer) -> None:
        self.g, self.root = g, root
        self.x: Tensor | None = None
        self.layers: dict[int, Layer] = {}

    def inner(self, t: Tensor) -> Layer | None:
        """The producer of ``t`` if a match may absorb it: the root, or a layer whose output only
        the match reads."""
        p = t.producer
        if p is None or (p is not self.root and self.g.single_use(t) is None):
            return None
        return p

    def match(self, pat, t: Tensor) -> bool:
        if isinstance(pat, X):
            if self.x is None:
                self.x = t
            return t is self.x
        if isinstance(pat, AnyOf):
            for option in pat.options:
                saved = (self.x, dict(self.layers))
                if self.match(option, t):
                    return True
                self.x, self.layers = saved
            return False
        if isinstance(pat, (Prod, Sum)):
            return self._match_flat(pat, t)
        p = self.inner(t)
        if p is None:
            return False
        if isinstance(pat, Act):
            ok = p.kind == LayerKind.ACTIVATION and p.params.type == pat.type \
                and (pat.alpha is None or _close(p.params.alpha, pat.alpha)) \
                and (pat.beta is None or _close(p.params.beta, pat.beta))
            arg = pat.arg
        elif isinstance(pat, Unary):
            ok, arg = p.kind == LayerKind.UNARY and p.params.op == pat.op, pat.arg
        elif isinstance(pat, Pow):
            ok = self.g.is_op(p, E.POW) and self.g.scalar(p.inputs[1]) is not None \
                and _close(self.g.scalar(p.inputs[1]), pat.exponent)
            arg = pat.base
        else:
            raise TypeError(f"unknown pattern node {pat!r}")
        if not ok:
            return False
        self.layers[id(p)] = p
        return self.match(arg, p.inputs[0])

    def _flatten(self, t: Tensor, product: bool, consumed: list[Layer]) -> tuple[list[Tensor], float]:
        """The non-constant operands and the combined constant of the product (or sum) tree that
        ends at ``t``, following only layers a match may absorb."""
        g, p = self.g, self.inner(t)
        same, inverse, neutral = (E.PROD, E.DIV, 1.0) if product else (E.SUM, E.SUB, 0.0)
        if p is None or p.kind != LayerKind.ELEMENTWISE or p.params.op not in (same, inverse) \
                or (p is not self.root and t is self.x):
            return [t], neutral
        a, b = p.inputs
        cb = g.scalar(b)
        if p.params.op == inverse:  # only a / c or a - c
            if cb is None or (product and cb == 0.0):
                return [t], neutral
            ops, const = self._flatten(a, product, consumed)
            consumed.append(p)
            return ops, const / cb if product else const - cb
        consumed.append(p)
        ops, const = [], neutral
        for side in (a, b):
            c = g.scalar(side)
            if c is not None:
                const = const * c if product else const + c
                continue
            side_ops, side_const = self._flatten(side, product, consumed)
            ops += side_ops
            const = const * side_const if product else const + side_const
        return ops, const

    def _match_flat(self, pat: Prod | Sum, t: Tensor) -> bool:
        product = isinstance(pat, Prod)
        consumed: list[Layer] = []
        ops, const = self._flatten(t, product, consumed)
        items = pat.factors if product else pat.terms
        if not consumed or len(ops) != len(items) or not _close(const, pat.const):
            return False
        for order in itertools.permutations(range(len(ops))):
            saved = (self.x, dict(self.layers))
            self.layers.update((id(l), l) for l in consumed)
            if all(self.match(item, ops[i]) for item, i in zip(items, order)):
                return True
            self.x, self.layers = saved
        return False


def _match_at(g: Graph, root: Layer) -> tuple[A, float, float, Tensor, list[Layer]] | None:
    out = root.outputs[0]
    for act, alpha, beta, pat in PATTERNS:
        m = _Matcher(g, root)
        if not m.match(pat, out) or m.x is None or id(root) not in m.layers:
            continue
        if m.x.shape is None or m.x.shape != out.shape or m.x.dtype != out.dtype:
            continue
        return act, alpha, beta, m.x, list(m.layers.values())
    return None


def fuse_activations(net: Network, stats: dict | None = None) -> Network:
    """Replace every decomposed activation of :data:`PATTERNS` with one ACTIVATION layer.

    Layers are tried from the last to the first, so an activation is matched at its outermost
    layer before any part of it could be."""
    g = Graph(net)
    order = {id(l): i for i, l in enumerate(net.layers)}
    rewrites, drop = {}, set()
    for root in reversed(net.layers):
        if root.kind != LayerKind.ELEMENTWISE or id(root) in drop or len(root.outputs) != 1:
            continue
        found = _match_at(g, root)
        if found is None:
            continue
        act, alpha, beta, inp, chain = found
        if any(id(l) in drop or id(l) in rewrites for l in chain):
            continue
        chain.sort(key=lambda l: order[id(l)])
        rewrites[id(root)] = fused(LayerKind.ACTIVATION, ActivationParams(act, alpha, beta), [inp], chain)
        drop.update(id(l) for l in chain if l is not root)
    return replace(net, rewrites, drop, stats, "fuse_activations")
