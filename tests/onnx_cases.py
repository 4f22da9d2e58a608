"""Helpers that the per-op importer tests share: seeded generators, non-zero random
arrays, and one-node ONNX models."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from kilnrt.testing import fresh_seed


def rng() -> np.random.Generator:
    """A generator with a fresh seed, printed so that a failure can be replayed."""
    seed = fresh_seed()
    print(f"seed {seed}")
    return np.random.default_rng(seed)


def randn(r: np.random.Generator, *shape: int, dtype=np.float32) -> np.ndarray:
    """Standard-normal values of ``dtype``, with no exact zeros."""
    x = r.standard_normal(shape).astype(dtype)
    return np.where(x == 0, dtype(0.5), x)


def one_node_model(op: str, feeds: dict[str, np.ndarray], outputs=1, opset: int = 18,
                   shapes: dict[str, list] | None = None, domain: str = "", **attrs) -> onnx.ModelProto:
    """A model of one ``op`` node reading ``feeds``; outputs ``y0, y1, ...`` (or the names given).

    A blank name in ``feeds`` ("", " ", "  ", ...) or ``outputs`` skips that optional slot;
    ``shapes`` declares an input's shape (e.g. with symbolic dims) instead of its array's.
    """
    outputs = [f"y{i}" for i in range(outputs)] if isinstance(outputs, int) else list(outputs)
    node = helper.make_node(op, [n.strip() for n in feeds], outputs, domain=domain, **attrs)
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype),
                                         (shapes or {}).get(n, list(v.shape)))
           for n, v in feeds.items() if n.strip()]
    outs = [helper.make_empty_tensor_value_info(o) for o in outputs if o]
    graph = helper.make_graph([node], op.lower(), ins, outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
