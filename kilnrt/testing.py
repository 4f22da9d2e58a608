"""Seeded random inputs and tolerance-aware comparison, shared by the tests and ``kilnrt compare``.

    feeds = seeded_inputs(engine)                 # fresh seed; feeds.seed keeps it
    assert_close(engine.run(feeds), reference(feeds), seed=feeds.seed)

* :func:`seeded_inputs` makes random inputs for an engine, a network or an ONNX model:
  never all zeros (floats ~ N(0, 1), integers in ``int_range``, random booleans).
* :func:`compare` measures how far ``actual`` is from ``expected`` with per-dtype default
  tolerances and returns a :class:`Comparison`; :func:`assert_close` raises an
  ``AssertionError`` whose message names the worst element, the largest absolute and
  relative errors, the tolerance used and the seed.
* :func:`relative_l2` is ``||actual - expected|| / ||expected||``.
"""
from __future__ import annotations

import dataclasses
import os
import random
from typing import Any, Mapping

import numpy as np

__all__ = ["SeededInputs", "seeded_inputs", "Comparison", "compare", "assert_close", "relative_l2",
           "tolerance", "DEFAULT_TOLERANCES", "DEFAULT_DIM"]

# (rtol, atol) by numpy dtype name; integer and boolean types compare exactly.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-9),
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-2),
    "bfloat16": (1e-2, 1e-2),
    "float8_e4m3fn": (0.125, 0.125),
    "float8_e5m2": (0.25, 0.25),
}

# the size a dynamic dim gets when neither ``shapes`` nor a profile says otherwise (as Polygraphy)
DEFAULT_DIM = 1


# ----------------------------------------------------------------------------- inputs
class SeededInputs(dict):
    """``{input name: numpy array}``, plus the ``seed`` that made them."""

    seed: int

    def __init__(self, values: Mapping[str, np.ndarray], seed: int) -> None:
        super().__init__(values)
        self.seed = seed


def fresh_seed() -> int:
    return random.SystemRandom().randrange(1 << 31)


def _input_specs(source: Any) -> list[tuple[str, np.dtype, tuple, tuple | None]]:
    """(name, numpy dtype, dims (int / str / -1), profile opt shape or None) for each input."""
    from kilnrt.engine.engine import Engine
    from kilnrt.network.graph import Network

    if isinstance(source, Engine):
        opt = source.profiles[0] if source.profiles else {}
        return [(t.name, t.dtype.numpy, tuple(t.symbolic or t.shape),
                 tuple(opt[t.name][1]) if t.name in opt else None)
                for t in source.io if t.mode == "input"]
    if isinstance(source, Network):
        return [(t.name, t.dtype.numpy, tuple(t.shape or ()), None) for t in source.inputs]
    import onnx
    from onnx import helper

    if isinstance(source, (str, os.PathLike)):
        source = onnx.load(os.fspath(source), load_external_data=False)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        source = onnx.load_from_string(bytes(source))
    if not isinstance(source, onnx.ModelProto):
        raise TypeError(f"seeded_inputs takes an Engine, a Network or an ONNX model (path, bytes, "
                        f"ModelProto); got {type(source).__name__}")
    inits = {i.name for i in source.graph.initializer} | {i.values.name for i in source.graph.sparse_initializer}
    specs = []
    for vi in source.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or -1) for d in tt.shape.dim)
        specs.append((vi.name, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims, None))
    return specs


def _concrete(name: str, dims: tuple, opt: tuple | None, shapes: Mapping[str, Any]) -> tuple[int, ...]:
    if name in shapes:
        shape = tuple(int(d) for d in shapes[name])
        if len(shape) != len(dims):
            raise ValueError(f"shapes[{name!r}] = {shape} has rank {len(shape)}, but input {name!r} "
                             f"has rank {len(dims)} {dims}")
        return shape
    if opt is not None:
        return opt
    out = []
    for d in dims:
        if isinstance(d, str):
            out.append(int(shapes.get(d, DEFAULT_DIM)))
        elif d is None or d < 0:
            out.append(DEFAULT_DIM)
        else:
            out.append(int(d))
    return tuple(out)


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype,
            int_range: tuple[int, int]) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        lo, hi = int_range
        info = np.iinfo(dtype)
        lo, hi = max(lo, int(info.min)), min(hi, int(info.max) + 1)
        return rng.integers(lo, hi, size=shape).astype(dtype)
    # float32/64, float16, bfloat16 and float8 (ml_dtypes) all convert from float32
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype)


def seeded_inputs(source: Any, seed: int | None = None, shapes: Mapping[str, Any] | None = None, *,
                  int_range: tuple[int, int] = (1, 4)) -> SeededInputs:
    """Random inputs for every input of an Engine, a Network or an ONNX model.

    Floats are standard normal, integers uniform in ``[int_range[0], int_range[1])``
    (clipped to the type; the default 1..3 is never zero, so it is safe as a divisor or a
    count), booleans random.  ``seed=None`` picks a fresh seed; the result's ``.seed``
    keeps it, so that a failure can print it and a rerun can reproduce it.

    ``shapes`` gives concrete shapes: ``{"input": (2, 3)}`` for a whole input, or
    ``{"batch": 4}`` for every dynamic dim of that name.  Dynamic dims not given take the
    engine's profile-0 opt shape if it has one, else :data:`DEFAULT_DIM`.
    """
    seed = fresh_seed() if seed is None else int(seed)
    shapes = dict(shapes or {})
    rng = np.random.default_rng(seed)
    values = {}
    for name, dtype, dims, opt in _input_specs(source):
        values[name] = _random(rng, _concrete(name, dims, opt, shapes), dtype, int_range)
    return SeededInputs(values, seed)


# ----------------------------------------------------------------------------- comparing
def _as_numpy(x: Any) -> np.ndarray:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        from kilnrt.network.dtypes import torch_to_numpy

        return torch_to_numpy(x)
    return np.asarray(x)


def tolerance(dtype: Any) -> tuple[float, float]:
    """Default ``(rtol, atol)`` for a numpy / torch / kilnrt dtype: exact for integers and bools."""
    if hasattr(dtype, "numpy") and not isinstance(dtype, np.dtype):  # kilnrt DataType
        dtype = dtype.numpy
    try:
        import torch

        if isinstance(dtype, torch.dtype):
            from kilnrt.network.dtypes import DataType

            dtype = DataType.from_torch(dtype).numpy
    except ImportError:  # pragma: no cover
        pass
    return DEFAULT_TOLERANCES.get(np.dtype(dtype).name, (0.0, 0.0))


@dataclasses.dataclass
class Comparison:
    """How far ``actual`` is from ``expected``; ``ok`` when every element is within tolerance."""

    ok: bool
    name: str
    rtol: float
    atol: float
    shape: tuple
    dtype: str
    mismatched: int = 0
    total: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst_index: tuple | None = None
    worst_actual: Any = None
    worst_expected: Any = None
    problem: str = ""                  # shape / NaN / inf mismatch, when there is one
    seed: int | None = None

    @property
    def message(self) -> str:
        what = f"{self.name!r}: " if self.name else ""
        seed = f"; seed {self.seed}" if self.seed is not None else ""
        if self.problem:
            return f"{what}{self.problem}{seed}"
        head = "PASSED" if self.ok else f"{self.mismatched} of {self.total} elements differ"
        worst = ""
        if self.worst_index is not None:
            worst = (f"; worst at index {self.worst_index}: actual {self.worst_actual!r}, "
                     f"expected {self.worst_expected!r}")
        return (f"{what}{head} (shape {self.shape}, {self.dtype}){worst}; max abs error {self.max_abs:.3g}, "
                f"max rel error {self.max_rel:.3g}; tolerance rtol={self.rtol:g}, atol={self.atol:g}{seed}")


def compare(actual: Any, expected: Any, rtol: float | None = None, atol: float | None = None, *,
            dtype: Any = None, seed: int | None = None, name: str = "") -> Comparison:
    """Compare two arrays (numpy, torch, scalars) elementwise: ``|a - e| <= atol + rtol * |e|``.

    Tolerances default by ``dtype`` (default: ``actual``'s dtype, see :data:`DEFAULT_TOLERANCES`).
    NaN must meet NaN and an infinity the same infinity.
    """
    a, e = _as_numpy(actual), _as_numpy(expected)
    d_rtol, d_atol = tolerance(a.dtype if dtype is None else dtype)
    rtol = d_rtol if rtol is None else float(rtol)
    atol = d_atol if atol is None else float(atol)
    result = Comparison(True, name, rtol, atol, tuple(a.shape), a.dtype.name, total=int(a.size), seed=seed)
    if a.shape != e.shape:
        result.ok = False
        result.problem = f"shape {tuple(a.shape)} differs from the expected shape {tuple(e.shape)}"
        return result
    if a.size == 0:
        return result
    af, ef = a.astype(np.float64), e.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(af - ef)
    nan_a, nan_e = np.isnan(af), np.isnan(ef)
    inf_bad = (np.isinf(af) | np.isinf(ef)) & (af != ef) & ~nan_a & ~nan_e
    allowed = atol + rtol * np.abs(ef)
    if a.dtype.kind in "biu" and e.dtype.kind in "biu" and rtol == atol == 0:
        bad = a != e  # exact, without float64 rounding of large int64 values
    else:
        with np.errstate(invalid="ignore"):
            bad = (nan_a != nan_e) | inf_bad | (~nan_a & ~nan_e & ~np.isinf(ef) & (diff > allowed))
    finite = ~nan_a & ~nan_e & ~np.isinf(af) & ~np.isinf(ef)
    if finite.any():
        result.max_abs = float(diff[finite].max())
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(finite, diff / np.maximum(np.abs(ef), np.finfo(np.float64).tiny), 0.0)
        result.max_rel = float(rel.max())
    result.mismatched = int(bad.sum())
    result.ok = result.mismatched == 0
    # the worst element: the one that exceeds its tolerance by the most (NaN/inf mismatches first)
    with np.errstate(invalid="ignore"):
        excess = np.where(finite, diff - allowed, -np.inf)
    excess = np.where(bad & ~finite, np.inf, excess)
    flat = int(np.argmax(excess)) if bad.any() else int(np.argmax(np.where(finite, diff, -np.inf)))
    index = tuple(int(i) for i in np.unravel_index(flat, a.shape))
    result.worst_index = index
    result.worst_actual = a[index].item() if a.ndim else a.item()
    result.worst_expected = e[index].item() if e.ndim else e.item()
    return result


def assert_close(actual: Any, expected: Any, rtol: float | None = None, atol: float | None = None, *,
                 dtype: Any = None, seed: int | None = None, name: str = "") -> None:
    """Raise ``AssertionError`` unless ``actual`` matches ``expected`` within tolerance.

    Takes arrays, tensors, or two mappings with the same keys (e.g. two ``engine.run``
    results), compared key by key; every failing entry is reported.  The message gives
    the worst index, the max absolute and relative errors, the tolerance and the seed.
    """
    if isinstance(actual, Mapping) or isinstance(expected, Mapping):
        if not (isinstance(actual, Mapping) and isinstance(expected, Mapping)):
            raise AssertionError(f"{name or 'value'}: cannot compare a {type(actual).__name__} "
                                 f"with a {type(expected).__name__}")
        if set(actual) != set(expected):
            raise AssertionError(f"{name + ': ' if name else ''}names differ: actual has {sorted(actual)}, "
                                 f"expected has {sorted(expected)}")
        failures = [compare(actual[k], expected[k], rtol, atol, dtype=dtype, seed=seed,
                            name=f"{name}.{k}" if name else str(k)) for k in expected]
        failures = [c.message for c in failures if not c.ok]
        if failures:
            raise AssertionError("\n".join(failures))
        return
    result = compare(actual, expected, rtol, atol, dtype=dtype, seed=seed, name=name)
    if not result.ok:
        raise AssertionError(result.message)


def relative_l2(actual: Any, expected: Any) -> float:
    """``||actual - expected||_2 / ||expected||_2`` in float64 (the plain norm of the
    difference when ``expected`` is all zeros)."""
    a = _as_numpy(actual).astype(np.float64)
    e = _as_numpy(expected).astype(np.float64)
    if a.shape != e.shape:
        raise ValueError(f"relative_l2: shapes differ: {a.shape} vs {e.shape}")
    num = float(np.linalg.norm((a - e).ravel()))
    den = float(np.linalg.norm(e.ravel()))
    return num / den if den > 0 else num



def run_reference(network, feeds: Mapping[str, Any]) -> dict[str, Any]:
    """Every tensor's value when ``network`` runs on the CPU reference kernels, layer by layer
    (torch tensors in and out): how tests compare a network before and after a pass."""
    from kilnrt.kernels.registry import run_layer

    values: dict[str, Any] = dict(feeds)
    for layer in network.layers:
        outs = run_layer(layer, [None if t is None else values[t.name] for t in layer.inputs])
        for t, v in zip(layer.outputs, outs):
            values[t.name] = v
    return values
