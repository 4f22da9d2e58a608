"""Symbolic dims: sympy expressions over the network's named input dims.

A dim is a python ``int`` when it is known, else a sympy expression whose free symbols are
input dims (``batch``, ``seq``; an unnamed input dim ``x:0`` gets its own symbol) or
*data-dependent* symbols that a layer made fresh (NonZero's count, a Reshape to dims read
from data).  Every symbol is a positive integer, so sympy settles ``Eq(batch, 0)`` and
``Max(batch, 1)`` by itself.

Expressions travel in plans as a small JSON tree (:func:`to_tree`), never as text to
parse, and are evaluated by :func:`evaluate` with plain integer arithmetic: the runtime
needs neither sympy nor ``eval``.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any, Mapping

import sympy

Dim = Any   # int | sympy.Expr

# the prefix of data-dependent symbols; an input's dims never start with it
DATA_PREFIX = "?"


@functools.lru_cache(maxsize=None)
def symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, integer=True, positive=True)


def is_data_dependent(d: Dim) -> bool:
    return not isinstance(d, int) and any(s.name.startswith(DATA_PREFIX) for s in d.free_symbols)


def as_dim(d: Any) -> Dim:
    """An int where the expression is a number, else the (sympy) expression."""
    if isinstance(d, (bool,)):
        return int(d)
    if isinstance(d, int):
        return d
    if hasattr(d, "__index__") and not isinstance(d, sympy.Basic):
        return int(d)
    d = sympy.sympify(d)
    if d.is_Integer:
        return int(d)
    if d.is_Float:
        return int(d) if d == int(d) else d
    floats = d.atoms(sympy.Float)
    if floats:   # float arithmetic on sizes (Cast to float, Range over floats): exact rationals
        d = d.xreplace({f: sympy.Rational(str(f)) for f in floats})
        if d.is_Integer:
            return int(d)
    return d


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


def equal(a: Dim, b: Dim) -> bool | None:
    """True/False when the dims are provably equal/different for every binding, else None."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    diff = sympy.sympify(a) - sympy.sympify(b)
    if diff == 0 or sympy.expand(diff) == 0:
        return True
    if diff.is_nonzero:
        return False
    return None


def floordiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    return as_dim(sympy.floor(sympy.sympify(a) / b))


def ceildiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return -(-a // b)
    return as_dim(sympy.ceiling(sympy.sympify(a) / b))


def dmin(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    return as_dim(sympy.Min(a, b))


def dmax(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    return as_dim(sympy.Max(a, b))


def public(d: Dim) -> int | str:
    """What ``Tensor.shape`` shows: an int, a symbol's or expression's text (``batch``,
    ``2*seq``), or -1 where the size depends on data."""
    if isinstance(d, int):
        return d
    if is_data_dependent(d):
        return -1
    if isinstance(d, sympy.Symbol):
        return d.name
    return str(d)


def from_public(d: Any, input_name: str = "", index: int = 0) -> Dim:
    """The dim a network input declares: an int, a name, or -1/None (its own symbol ``input:i``)."""
    if isinstance(d, bool):
        raise TypeError(f"dim {d!r} is not a size")
    if isinstance(d, int) and d >= 0:
        return d
    if isinstance(d, str):
        try:
            return int(d)
        except ValueError:
            return symbol(d) if _plain_name(d) else as_dim(sympy.sympify(d, locals=_names_in(d)))
    return symbol(f"{input_name}:{index}")


def _plain_name(s: str) -> bool:
    return not any(c in s for c in "+-*/()% ")


def _names_in(text: str) -> dict[str, sympy.Symbol]:
    import re

    return {n: symbol(n) for n in re.findall(r"[A-Za-z_][A-Za-z0-9_:]*", text)
            if n not in ("floor", "ceiling", "Min", "Max", "Mod")}


def substitute(d: Dim, bindings: Mapping[str, int]) -> int | None:
    """The int a dim takes for the given symbol values, None if a symbol is unbound."""
    if isinstance(d, int):
        return d
    try:
        return int(evaluate(to_tree(d), bindings))
    except KeyError:
        return None


# -- expressions as data --------------------------------------------------------------
_OPS = {sympy.Add: "add", sympy.Mul: "mul", sympy.Pow: "pow", sympy.floor: "floor", sympy.ceiling: "ceil",
        sympy.Min: "min", sympy.Max: "max", sympy.Mod: "mod", sympy.Abs: "abs"}
_REL = {sympy.StrictGreaterThan: "gt", sympy.GreaterThan: "ge", sympy.StrictLessThan: "lt",
        sympy.LessThan: "le", sympy.Equality: "eq", sympy.Unequality: "ne"}


def to_tree(d: Dim) -> Any:
    """A JSON-able tree of the expression: ints, ``{"s": name}``, ``[op, args...]``."""
    if isinstance(d, int):
        return d
    if isinstance(d, bool) or d is sympy.true or d is sympy.false:
        return bool(d)
    if d.is_Integer:
        return int(d)
    if d.is_Rational:
        return ["frac", int(d.p), int(d.q)]
    if d.is_Float:
        r = sympy.Rational(str(d))
        return ["frac", int(r.p), int(r.q)]
    if isinstance(d, sympy.Symbol):
        return {"s": d.name}
    if isinstance(d, sympy.Piecewise):
        return ["piecewise"] + [[to_tree(e), to_tree(c)] for e, c in d.args]
    for cls, name in _REL.items():
        if isinstance(d, cls):
            return [name, to_tree(d.lhs), to_tree(d.rhs)]
    for cls, name in _OPS.items():
        if isinstance(d, cls):
            return [name] + [to_tree(a) for a in d.args]
    raise ValueError(f"cannot serialize the dim expression {d} ({type(d).__name__})")


_TREE_OPS = frozenset({"frac", "piecewise", "add", "mul", "pow", "floor", "ceil", "min", "max", "mod", "abs",
                       "gt", "ge", "lt", "le", "eq", "ne"})


def _exact(v: Any) -> Any:
    return int(v) if isinstance(v, Fraction) and v.denominator == 1 else v


MAX_TREE_DEPTH = 64   # plans are data: a tree deeper than this, or a power above MAX_EXPONENT, is refused
MAX_EXPONENT = 64


def evaluate(tree: Any, bindings: Mapping[str, int], _depth: int = 0) -> Any:
    """The value of a :func:`to_tree` tree for the given symbol values (exact rationals).
    Raises KeyError for an unbound symbol and ValueError for a tree that is not one."""
    if isinstance(tree, bool) or isinstance(tree, int):
        return tree
    if _depth > MAX_TREE_DEPTH:
        raise ValueError(f"a dim expression nests deeper than {MAX_TREE_DEPTH}")
    if isinstance(tree, dict):
        return bindings[tree["s"]]
    if not isinstance(tree, list) or not tree or tree[0] not in _TREE_OPS:
        raise ValueError(f"not a dim expression: {str(tree)[:80]}")
    op, args = tree[0], tree[1:]
    if op == "pow" and (len(args) != 2 or not isinstance(args[1], int) or abs(args[1]) > MAX_EXPONENT):
        raise ValueError(f"a dim expression raises to {str(args[1:])[:40]}: at most {MAX_EXPONENT}")
    if op == "frac":
        if len(args) != 2 or not all(isinstance(a, int) for a in args) or args[1] == 0:
            raise ValueError(f"not a fraction: {args!r}")
        return Fraction(args[0], args[1])
    if op == "piecewise":
        for piece in args:
            if not isinstance(piece, list) or len(piece) != 2:
                raise ValueError("a piecewise dim's pieces are [expression, condition] pairs")
            expr, cond = piece
            if evaluate(cond, bindings, _depth + 1):
                return evaluate(expr, bindings, _depth + 1)
        raise ValueError("no piece of a piecewise dim applies")
    vals = [evaluate(a, bindings, _depth + 1) for a in args]
    if not vals or (op in ("floor", "ceil", "abs") and len(vals) != 1) or (op in ("pow", "mod") and len(vals) != 2):
        raise ValueError(f"{op!r} with {len(vals)} operands is not a dim expression")
    if op == "add":
        return _exact(sum(Fraction(v) for v in vals))
    if op == "mul":
        out = Fraction(1)
        for v in vals:
            out *= v
        return _exact(out)
    if op == "pow":
        return _exact(Fraction(vals[0]) ** vals[1])
    if op == "floor":
        return math.floor(vals[0])
    if op == "ceil":
        return math.ceil(vals[0])
    if op == "min":
        return min(vals)
    if op == "max":
        return max(vals)
    if op == "mod":
        return _exact(Fraction(vals[0]) % vals[1])
    if op == "abs":
        return abs(vals[0])
    if len(vals) != 2:
        raise ValueError(f"comparison {op!r} takes two operands")
    a, b = vals
    return {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b, "eq": a == b, "ne": a != b}[op]


# -- ranges ---------------------------------------------------------------------------
Ranges = Mapping[str, tuple[int, int]]
_INF = math.inf


def _symbol_range(s: sympy.Symbol, ranges: Ranges) -> tuple[float, float]:
    if s.name in ranges:
        lo, hi = ranges[s.name]
        return float(lo), float(hi)
    return (0.0, _INF) if s.name.startswith(DATA_PREFIX) else (1.0, _INF)


def _mul(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    products = []
    for x in a:
        for y in b:
            products.append(0.0 if (x == 0 or y == 0) else x * y)
    return min(products), max(products)


def bounds(d: Dim, ranges: Ranges) -> tuple[float, float]:
    """An interval that holds ``d`` for every binding of its symbols within ``ranges``
    (input symbols not named there are >= 1, data-dependent ones >= 0)."""
    if isinstance(d, (int, float)):
        return float(d), float(d)
    if d.is_Number:
        return float(d), float(d)
    if isinstance(d, sympy.Symbol):
        return _symbol_range(d, ranges)
    args = [bounds(a, ranges) for a in d.args] if not isinstance(d, sympy.Piecewise) else None
    if isinstance(d, sympy.Add):
        return sum(a[0] for a in args), sum(a[1] for a in args)
    if isinstance(d, sympy.Mul):
        out = (1.0, 1.0)
        for a in args:
            out = _mul(out, a)
        return out
    if isinstance(d, sympy.Pow) and d.exp.is_Integer:
        (lo, hi), e = args[0], int(d.exp)
        if e >= 0 and lo >= 0:
            return lo ** e, hi ** e
        if e < 0 and lo > 0:
            return hi ** e, lo ** e
        return -_INF, _INF
    if isinstance(d, sympy.floor):
        return math.floor(args[0][0]) if args[0][0] > -_INF else -_INF, args[0][1]
    if isinstance(d, sympy.ceiling):
        return args[0][0], math.ceil(args[0][1]) if args[0][1] < _INF else _INF
    if isinstance(d, sympy.Min):
        return min(a[0] for a in args), min(a[1] for a in args)
    if isinstance(d, sympy.Max):
        return max(a[0] for a in args), max(a[1] for a in args)
    if isinstance(d, sympy.Mod) and args[1][0] > 0:
        return 0.0, args[1][1] - 1
    if isinstance(d, sympy.Piecewise):
        pieces = [bounds(e, ranges) for e, c in d.args if c is not sympy.false]
        return min(p[0] for p in pieces), max(p[1] for p in pieces)
    return -_INF, _INF


def _decide(cond, ranges: Ranges) -> bool | None:
    if cond is sympy.true or cond is True:
        return True
    if cond is sympy.false or cond is False:
        return False
    for cls, test in ((sympy.GreaterThan, lambda lo, hi: (lo >= 0, hi < 0)),
                      (sympy.StrictGreaterThan, lambda lo, hi: (lo > 0, hi <= 0)),
                      (sympy.LessThan, lambda lo, hi: (hi <= 0, lo > 0)),
                      (sympy.StrictLessThan, lambda lo, hi: (hi < 0, lo >= 0))):
        if isinstance(cond, cls):
            lo, hi = bounds(sympy.expand(cond.lhs - cond.rhs), ranges)
            yes, no = test(lo, hi)
            return True if yes else (False if no else None)
    return None


def simplify(d: Dim, ranges: Ranges) -> Dim:
    """``d`` with the Min, Max and Piecewise that ``ranges`` decide resolved: ``Min(512, seq)``
    is ``seq`` where a profile keeps ``seq`` at most 512."""
    if isinstance(d, int) or not d.has(sympy.Min, sympy.Max, sympy.Piecewise):
        return d

    def pick(e):
        if isinstance(e, sympy.Piecewise):
            for expr, cond in e.args:
                verdict = _decide(cond, ranges)
                if verdict is True:
                    return expr
                if verdict is None:
                    return e
            return e
        lows_highs = [(a, bounds(a, ranges)) for a in e.args]
        for a, (lo, hi) in lows_highs:
            others = [b for b in lows_highs if b[0] is not a]
            if isinstance(e, sympy.Min) and all(hi <= b_lo for _, (b_lo, _) in others):
                return a
            if isinstance(e, sympy.Max) and all(lo >= b_hi for _, (_, b_hi) in others):
                return a
        return e

    out = d.replace(lambda e: isinstance(e, (sympy.Min, sympy.Max, sympy.Piecewise)), pick)
    return as_dim(out)
