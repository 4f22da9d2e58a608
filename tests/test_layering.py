"""Imports only flow downward (DESIGN.md): each package may import the ones below it, never
one above.  Checked on every ``import``/``from ... import`` in the source, nested ones too."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "kilnrt"
# package -> the kilnrt packages it must never import (the rules DESIGN.md states: network
# imports nothing of kilnrt's but errors; a kernel never looks at a frontend; engine never
# imports builder, since what the runtime needs lives in engine/, nor re-optimizes: refit's
# folding is the builder's, kilnrt.builder.refit)
FORBIDDEN = {
    "network": {"kernels", "engine", "builder", "optimize", "onnx", "torch", "trt", "cli", "serve"},
    "kernels": {"engine", "builder", "optimize", "onnx", "torch", "trt", "cli", "serve"},
    "engine": {"builder", "optimize", "onnx", "torch", "trt", "cli", "serve"},
    "optimize": {"builder", "onnx", "torch", "trt", "cli", "serve"},
}


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_downward(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in _imports(path):
            parts = name.split(".")
            if parts[0] == "kilnrt" and len(parts) > 1 and parts[1] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {name}")
    assert not bad, f"kilnrt/{package} must not import {sorted(FORBIDDEN[package])}:\n" + "\n".join(bad)
