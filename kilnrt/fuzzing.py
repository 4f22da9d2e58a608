"""Seeded fuzzing of kilnrt's two untrusted inputs: ONNX models and plan files.

``onnx_case(rng)`` mutates a small CNN (dims, data types, truncated data, dangling inputs,
sparse initializers, bad attributes, opsets, external-data paths); ``plan_case(rng)``
mutates a plan's header (types, names, shapes, tactics, nesting) and recomputes its checksum,
so the mutation reaches the code that trusts a well-formed file.  ``run(case)`` builds or
loads and runs the result; the only acceptable failure is a :class:`~kilnrt.errors.KilnError`.
``tests/test_fuzz.py`` runs a few hundred cases in CI; ``scripts/fuzz.py`` runs many.
"""
from __future__ import annotations

import copy
import json
import random
import traceback
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kilnrt.errors import KilnError

PROFILE = {"x": [(1, 2, 6, 6), (2, 2, 6, 6), (4, 2, 6, 6)]}


def base_model() -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm -> Softmax on x [batch, 2, 6, 6]."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (4, 2, 3, 3)), ("cb", (4,)), ("fw", (5, 16)), ("fb", (5,)))]
    nodes = [helper.make_node("Conv", ["x", "w", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[3, 3], strides=[3, 3]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], name="gemm", transB=1),
             helper.make_node("Softmax", ["g"], ["y"], name="softmax", axis=-1)]
    graph = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# ----------------------------------------------------------------------------- ONNX mutations
def _dims(rng, m):
    t = rng.choice(m.graph.initializer)
    t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, 3, 7, 1 << 40])


def _dtype(rng, m):
    rng.choice(m.graph.initializer).data_type = rng.choice([0, 99, TensorProto.STRING, TensorProto.INT4,
                                                            TensorProto.COMPLEX64, TensorProto.FLOAT16])


def _input_dim(rng, m):
    m.graph.input[0].type.tensor_type.shape.dim[rng.randrange(4)].dim_value = rng.choice([0, 3, 1 << 40, (1 << 63) - 1])


def _truncate(rng, m):
    t = rng.choice(m.graph.initializer)
    try:
        raw = numpy_helper.to_array(t).tobytes()
    except Exception:  # noqa: BLE001 - already broken by another mutation
        return
    t.ClearField("float_data")
    t.raw_data = raw[: rng.randrange(len(raw) + 1)]


def _dangling(rng, m):
    n = rng.choice(m.graph.node)
    n.input[rng.randrange(len(n.input))] = rng.choice(["nope", "", n.output[0]])


def _sparse(rng, m):
    s = onnx.SparseTensorProto()
    s.dims.extend([rng.choice([4, 1 << 20, 1 << 40]), rng.choice([4, 1 << 20])])
    s.values.CopyFrom(numpy_helper.from_array(np.ones(3, np.float32), rng.choice(["sp", "w"])))
    s.indices.CopyFrom(numpy_helper.from_array(np.array([0, 1, rng.choice([2, -1, 10 ** 12])], np.int64), "spi"))
    m.graph.sparse_initializer.append(s)


def _attribute(rng, m):
    n = rng.choice(m.graph.node)
    n.attribute.append(helper.make_attribute(rng.choice(["axis", "pads", "strides", "kernel_shape", "transB"]),
                                             rng.choice([-100, [0, 0], [1 << 40] * 2, [1], 3, 0.5, "s"])))


def _opset(rng, m):
    m.opset_import[0].version = rng.choice([1, 6, 9, 13, 30])


def _external(rng, m):
    t = rng.choice(m.graph.initializer)
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", rng.choice(["../../etc/passwd", "missing.bin", "/dev/zero", "/etc/hostname"])


def _value_info(rng, m):
    vi = helper.make_tensor_value_info(rng.choice(["c", "r", "p", "f"]), rng.choice([TensorProto.INT64, 0, 99]),
                                       rng.choice([[1], [2, 3, 4, 5, 6], None]))
    m.graph.value_info.append(vi)


ONNX_MUTATIONS = [_dims, _dtype, _input_dim, _truncate, _dangling, _sparse, _attribute, _opset, _external,
                  _value_info]


def onnx_case(rng: random.Random, base: onnx.ModelProto | None = None) -> Callable[[], Any]:
    m = copy.deepcopy(base or base_model())
    for _ in range(rng.randint(1, 3)):
        rng.choice(ONNX_MUTATIONS)(rng, m)
    data = m.SerializeToString()

    def case():
        import kilnrt

        engine = kilnrt.build(data, profiles=PROFILE)
        return engine.run({"x": np.ones((2, 2, 6, 6), np.float32)})

    return case


# ----------------------------------------------------------------------------- plan mutations
_ODD = [None, -1, 0, 1 << 40, 3.5, "x", "", [], {}, [1, 2], {"tuple": [1]}, {"enum": "X", "name": "Y"},
        {"weight": "missing"}, {"dataclass": "Nope", "fields": {}}, True, float("nan")]


def _paths(v, path=()):
    yield path
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, path + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, path + (i,))


def _set(root, path, value):
    for p in path[:-1]:
        root = root[p]
    root[path[-1]] = value


def quantized_plans() -> dict[str, bytes]:
    """Plans of :func:`base_model` with 8-bit layers, for plan mutations: calibrated INT8 and FP8
    REFIT builds (their refit records carry the calibration's ranges and types) and an INT8+FP8
    build under the accuracy guard, built on the CPU."""
    import kilnrt

    calib = [{"x": np.random.default_rng(i).standard_normal((2, 2, 6, 6)).astype(np.float32)} for i in range(3)]
    builds = {"int8_refit": dict(int8=True, refit=True), "fp8_refit": dict(fp8=True, refit=True),
              "int8_fp8_guard": dict(int8=True, fp8=True, accuracy_budget=0.01)}
    return {label: kilnrt.build(base_model(), profiles=PROFILE, calibration=calib, device="cpu", **kw).serialize()
            for label, kw in builds.items()}


def plan_case(rng: random.Random, plan: bytes) -> Callable[[], Any]:
    from kilnrt.engine.plan import pack, unpack

    header, weights, kernels = unpack(plan)
    header = json.loads(json.dumps(header))
    paths = [p for p in _paths(header) if p and p[0] not in ("kilnrt_version", "format_version")]
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        try:
            _set(header, path, rng.choice(_ODD + [rng.randint(-5, 50)]))
        except (KeyError, IndexError, TypeError):
            pass
    try:
        data = pack(header, weights, kernels)
    except (TypeError, ValueError):   # a mutation made a dict with int and str keys: not JSON-sortable
        data = plan

    def case():
        import kilnrt

        engine = kilnrt.Engine.deserialize(data)
        ctx = engine.create_execution_context()
        return ctx.run({"x": np.ones((2, 2, 6, 6), np.float32)})

    return case


def run(case: Callable[[], Any]) -> str | None:
    """None when the case ran or failed with a KilnError; else where the bare exception came from."""
    try:
        case()
    except KilnError:
        return None
    except Exception as exc:  # noqa: BLE001 - this is what the fuzzer looks for
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        return f"{type(exc).__name__} at {frame.filename.rsplit('site-packages/', 1)[-1]}:{frame.lineno}: {str(exc)[:160]}"
    return None
