"""The ONNX importer registry.

An importer is a function named after its op, registered with ``@importer(op, since=N)``::

    @importer("Gemm", since=13)
    def gemm(ctx, node, a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0): ...

Positional parameters after ``(ctx, node)`` receive the node's inputs (None for an
omitted optional input; ``*inputs`` takes a variadic list).  Keyword-only parameters are
the node's attributes with ONNX's defaults; an attribute the importer does not name is
reported as unsupported before anything is imported.  The newest registration whose
``since`` is at most the model's opset is used.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclasses.dataclass(frozen=True)
class Importer:
    op_type: str
    since: int
    fn: Callable[..., Any]
    domain: str = ""
    notes: str = ""

    @property
    def attributes(self) -> dict[str, Any]:
        sig = inspect.signature(self.fn)
        return {n: p.default for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY}

    @property
    def accepts_any_attribute(self) -> bool:
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(self.fn).parameters.values())


_REGISTRY: dict[tuple[str, str], list[Importer]] = {}


def importer(op_type: str, since: int = 1, *, domain: str = "", notes: str = "") -> Callable:
    """Register ``fn`` as the importer of ``op_type`` for opsets >= ``since`` (until a newer one)."""

    def wrap(fn: Callable) -> Callable:
        key = (domain, op_type)
        entries = _REGISTRY.setdefault(key, [])
        if any(e.since == since for e in entries):
            raise ValueError(f"importer for {op_type} since opset {since} is registered twice")
        entries.append(Importer(op_type, since, fn, domain, notes or (fn.__doc__ or "").strip().split("\n")[0]))
        entries.sort(key=lambda e: e.since)
        return fn

    return wrap


def _load_builtin() -> None:
    import kilnrt.onnx.ops  # noqa: F401


def lookup(op_type: str, opset: int, domain: str = "") -> Importer | None:
    _load_builtin()
    if domain in DEFAULT_DOMAINS:
        domain = ""
    entries = _REGISTRY.get((domain, op_type), [])
    chosen = None
    for e in entries:
        if e.since <= opset:
            chosen = e
    if chosen is None:   # a registered plugin of that name (kilnrt/onnx/plugin.py)
        from kilnrt.onnx.plugin import plugin_importer

        chosen = plugin_importer(op_type, domain)
    return chosen


def registered() -> dict[tuple[str, str], list[Importer]]:
    _load_builtin()
    return {k: list(v) for k, v in _REGISTRY.items()}


def supported_ops(domain: str = "") -> list[str]:
    _load_builtin()
    return sorted(op for (d, op) in _REGISTRY if d == domain)
