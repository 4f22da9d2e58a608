"""kilnrt's data types and their numpy / torch / ONNX counterparts."""
from __future__ import annotations

import enum

import ml_dtypes
import numpy as np
import torch


class DataType(enum.Enum):
    """Tensor element types (TensorRT's ``DataType`` plus the ONNX types kilnrt runs)."""

    FLOAT = "float32"
    HALF = "float16"
    BF16 = "bfloat16"
    DOUBLE = "float64"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    BOOL = "bool"
    FP8 = "float8_e4m3fn"
    FP8_E5M2 = "float8_e5m2"

    @property
    def itemsize(self) -> int:
        return np.dtype(self.numpy).itemsize

    @property
    def numpy(self) -> np.dtype:
        return _NUMPY[self]

    @property
    def torch(self) -> torch.dtype:
        return _TORCH[self]

    @property
    def is_floating(self) -> bool:
        return self in (DataType.FLOAT, DataType.HALF, DataType.BF16, DataType.DOUBLE,
                        DataType.FP8, DataType.FP8_E5M2)

    @classmethod
    def from_numpy(cls, dtype) -> "DataType":
        dt = np.dtype(dtype)
        for k, v in _NUMPY.items():
            if v == dt:
                return k
        raise TypeError(f"numpy dtype {dt} has no kilnrt DataType; supported: "
                        + ", ".join(str(v) for v in _NUMPY.values()))

    @classmethod
    def from_torch(cls, dtype: torch.dtype) -> "DataType":
        for k, v in _TORCH.items():
            if v == dtype:
                return k
        raise TypeError(f"torch dtype {dtype} has no kilnrt DataType")

    @classmethod
    def from_onnx(cls, elem_type: int) -> "DataType":
        from onnx import TensorProto as T

        table = {
            T.FLOAT: cls.FLOAT, T.FLOAT16: cls.HALF, T.BFLOAT16: cls.BF16, T.DOUBLE: cls.DOUBLE,
            T.INT8: cls.INT8, T.UINT8: cls.UINT8, T.INT16: cls.INT16, T.UINT16: cls.UINT16,
            T.INT32: cls.INT32, T.UINT32: cls.UINT32, T.INT64: cls.INT64, T.UINT64: cls.UINT64,
            T.BOOL: cls.BOOL, T.FLOAT8E4M3FN: cls.FP8, T.FLOAT8E5M2: cls.FP8_E5M2,
        }
        if elem_type not in table:
            from onnx import helper

            name = helper.tensor_dtype_to_string(elem_type) if elem_type else "UNDEFINED"
            raise TypeError(f"ONNX element type {name} is not supported by kilnrt; supported: "
                            + ", ".join(sorted(d.name for d in set(table.values()))))
        return table[elem_type]


_NUMPY = {
    DataType.FLOAT: np.dtype(np.float32), DataType.HALF: np.dtype(np.float16),
    DataType.BF16: np.dtype(ml_dtypes.bfloat16), DataType.DOUBLE: np.dtype(np.float64),
    DataType.INT8: np.dtype(np.int8), DataType.UINT8: np.dtype(np.uint8),
    DataType.INT16: np.dtype(np.int16), DataType.UINT16: np.dtype(np.uint16),
    DataType.INT32: np.dtype(np.int32), DataType.UINT32: np.dtype(np.uint32),
    DataType.INT64: np.dtype(np.int64), DataType.UINT64: np.dtype(np.uint64),
    DataType.BOOL: np.dtype(np.bool_), DataType.FP8: np.dtype(ml_dtypes.float8_e4m3fn),
    DataType.FP8_E5M2: np.dtype(ml_dtypes.float8_e5m2),
}
_TORCH = {
    DataType.FLOAT: torch.float32, DataType.HALF: torch.float16, DataType.BF16: torch.bfloat16,
    DataType.DOUBLE: torch.float64, DataType.INT8: torch.int8, DataType.UINT8: torch.uint8,
    DataType.INT16: torch.int16, DataType.UINT16: torch.uint16, DataType.INT32: torch.int32,
    DataType.UINT32: torch.uint32, DataType.INT64: torch.int64, DataType.UINT64: torch.uint64,
    DataType.BOOL: torch.bool, DataType.FP8: torch.float8_e4m3fn,
    DataType.FP8_E5M2: torch.float8_e5m2,
}


def numpy_to_torch(array: np.ndarray) -> torch.Tensor:
    """A torch tensor sharing the memory of ``array`` (copied only if it is not contiguous
    or not writeable), for every kilnrt dtype including bfloat16 and float8."""
    array = np.asarray(array)
    if not array.flags.c_contiguous or not array.flags.writeable:
        array = np.ascontiguousarray(array).copy()
    dt = DataType.from_numpy(array.dtype)
    if dt in (DataType.BF16, DataType.FP8, DataType.FP8_E5M2):
        return torch.from_numpy(array.view(np.uint16 if dt == DataType.BF16 else np.uint8)).view(dt.torch)
    return torch.from_numpy(array)


def torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The numpy array of a torch tensor (copied to the host), any kilnrt dtype."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    dt = DataType.from_torch(t.dtype)
    if dt in (DataType.BF16, DataType.FP8, DataType.FP8_E5M2):
        raw = t.contiguous().view(torch.uint16 if dt == DataType.BF16 else torch.uint8).numpy()
        return raw.view(dt.numpy)
    return t.numpy()
