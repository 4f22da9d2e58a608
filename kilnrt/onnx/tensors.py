"""ONNX TensorProtos to numpy arrays, checked: every malformed tensor is a KilnError naming it.

Checked before anything is read or allocated:
- the data type is one ONNX defines and kilnrt stores;
- the dims are non-negative and the element count is at most :data:`MAX_ELEMENTS`;
- external data is read only from inside the model's folder (never from the current
  directory, an absolute path, or a path leaving the folder), and a model given as bytes
  has no folder unless ``base_dir`` names one;
- the data holds exactly the elements the dims say.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from kilnrt.errors import ErrorCode, KilnError

MAX_ELEMENTS = 1 << 31     # 2G elements: more than any weight tensor, far less than a fuzzer asks for


def _invalid(what: str, message: str) -> KilnError:
    return KilnError(ErrorCode.INVALID_MODEL, f"{what}: {message}")


def tensor_array(t: onnx.TensorProto, model_dir: str | None, what: str | None = None) -> np.ndarray:
    what = what or f"tensor {t.name!r}"
    try:
        onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    except (KeyError, ValueError, TypeError):
        raise _invalid(what, f"data type {t.data_type} is not an ONNX tensor type kilnrt can hold") from None
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims):
        raise _invalid(what, f"dims {dims} has a negative dim")
    count = 1
    for d in dims:
        count *= d
    if count > MAX_ELEMENTS:
        raise _invalid(what, f"dims {dims} make {count} elements, more than kilnrt accepts ({MAX_ELEMENTS})")
    if t.data_location == onnx.TensorProto.EXTERNAL:
        _check_external(t, model_dir, what)
    try:
        array = numpy_helper.to_array(t, base_dir=model_dir or "")
    except KilnError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnx's own errors for malformed data
        raise _invalid(what, f"its data does not match its dims {dims} and type: {type(exc).__name__}: "
                             f"{str(exc)[:200]}") from None
    if array.size != count:
        raise _invalid(what, f"holds {array.size} elements, but its dims {dims} need {count}")
    return array


def _check_external(t: onnx.TensorProto, model_dir: str | None, what: str) -> None:
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    if model_dir is None:
        raise _invalid(what, f"its data is in the external file {location!r}, but the model was given as bytes or "
                             "a ModelProto, so there is no folder to read it from: load the model from its path "
                             "(or pass base_dir=)")
    if not location or os.path.isabs(location):
        raise _invalid(what, f"external data location {location!r} must be a relative path inside the model's folder")
    root = os.path.realpath(model_dir)
    path = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, path]) != root:
        raise _invalid(what, f"external data location {location!r} leaves the model's folder")
    if not os.path.isfile(path):
        raise _invalid(what, f"external data file {location!r} is not a file in {model_dir!r}")
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", -1) or -1)
    except ValueError:
        raise _invalid(what, f"external data offset/length {info.get('offset')!r}/{info.get('length')!r} "
                             "are not integers") from None
    size = os.path.getsize(path)
    if offset < 0 or offset > size or (length >= 0 and offset + length > size):
        raise _invalid(what, f"external data [{offset}, +{length}) is outside {location!r} ({size} bytes)")


def sparse_array(sparse: onnx.SparseTensorProto, model_dir: str | None) -> np.ndarray:
    """The dense value of a sparse initializer, its indices checked against its dims."""
    name = sparse.values.name
    what = f"sparse initializer {name!r}"
    values = tensor_array(sparse.values, model_dir, what + " (values)")
    indices = tensor_array(sparse.indices, model_dir, what + " (indices)")
    dims = [int(d) for d in sparse.dims]
    if any(d < 0 for d in dims):
        raise _invalid(what, f"dims {dims} has a negative dim")
    count = int(np.prod(dims, dtype=object)) if dims else 1
    if count > MAX_ELEMENTS:
        raise _invalid(what, f"dims {dims} make {count} elements, more than kilnrt accepts ({MAX_ELEMENTS})")
    if values.ndim != 1 or indices.dtype.kind not in "iu":
        raise _invalid(what, "values must be 1-D and indices integers")
    n = values.shape[0]
    if indices.ndim == 1:
        ok = indices.shape[0] == n and (n == 0 or (indices.min() >= 0 and indices.max() < count))
        flat = indices
    elif indices.ndim == 2 and indices.shape == (n, len(dims)):
        ok = n == 0 or bool(np.all(indices >= 0) and np.all(indices < np.array(dims)))
        flat = np.ravel_multi_index(tuple(indices.T), dims) if ok and n else np.zeros(0, np.int64)
    else:
        ok = False
    if not ok:
        raise _invalid(what, f"indices of shape {indices.shape} do not address {n} values inside dims {dims}")
    try:
        full = np.zeros(count, dtype=values.dtype)
    except MemoryError:
        raise _invalid(what, f"its dense form ({count} elements) does not fit in memory") from None
    full[flat] = values
    return full.reshape(dims)
