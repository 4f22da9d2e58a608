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
    FP8_E4M3FNUZ = "float8_e4m3fnuz"
    FP8_E5M2FNUZ = "float8_e5m2fnuz"
    FP8_E8M0 = "float8_e8m0fnu"
    # sub-byte integers: one element per byte, the value in the low bits (ml_dtypes' layout);
    # torch has no arithmetic for them: kernels decode them (see kernels/cpu/quantize.py)
    INT4 = "int4"
    UINT4 = "uint4"
    INT2 = "int2"
    UINT2 = "uint2"

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
                        DataType.FP8, DataType.FP8_E5M2, DataType.FP8_E4M3FNUZ, DataType.FP8_E5M2FNUZ,
                        DataType.FP8_E8M0)

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
            T.FLOAT8E4M3FNUZ: cls.FP8_E4M3FNUZ, T.FLOAT8E5M2FNUZ: cls.FP8_E5M2FNUZ, T.FLOAT8E8M0: cls.FP8_E8M0,
            T.INT4: cls.INT4, T.UINT4: cls.UINT4, T.INT2: cls.INT2, T.UINT2: cls.UINT2,
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
    DataType.FP8_E4M3FNUZ: np.dtype(ml_dtypes.float8_e4m3fnuz), DataType.FP8_E5M2FNUZ: np.dtype(ml_dtypes.float8_e5m2fnuz),
    DataType.FP8_E8M0: np.dtype(ml_dtypes.float8_e8m0fnu), DataType.INT4: np.dtype(ml_dtypes.int4),
    DataType.UINT4: np.dtype(ml_dtypes.uint4), DataType.INT2: np.dtype(ml_dtypes.int2),
    DataType.UINT2: np.dtype(ml_dtypes.uint2),
}
_TORCH = {
    DataType.FLOAT: torch.float32, DataType.HALF: torch.float16, DataType.BF16: torch.bfloat16,
    DataType.DOUBLE: torch.float64, DataType.INT8: torch.int8, DataType.UINT8: torch.uint8,
    DataType.INT16: torch.int16, DataType.UINT16: torch.uint16, DataType.INT32: torch.int32,
    DataType.UINT32: torch.uint32, DataType.INT64: torch.int64, DataType.UINT64: torch.uint64,
    DataType.BOOL: torch.bool, DataType.FP8: torch.float8_e4m3fn,
    DataType.FP8_E5M2: torch.float8_e5m2,
    DataType.FP8_E4M3FNUZ: torch.float8_e4m3fnuz, DataType.FP8_E5M2FNUZ: torch.float8_e5m2fnuz,
    DataType.FP8_E8M0: torch.float8_e8m0fnu, DataType.INT4: torch.int4, DataType.UINT4: torch.uint4,
    DataType.INT2: torch.int2, DataType.UINT2: torch.uint2,
}
# dtypes that torch.from_numpy / .numpy() do not know: moved as raw bytes and re-viewed
_RAW = {DataType.BF16: (np.uint16, torch.uint16), DataType.FP8: (np.uint8, torch.uint8),
        DataType.FP8_E5M2: (np.uint8, torch.uint8), DataType.FP8_E4M3FNUZ: (np.uint8, torch.uint8),
        DataType.FP8_E5M2FNUZ: (np.uint8, torch.uint8), DataType.FP8_E8M0: (np.uint8, torch.uint8),
        DataType.INT4: (np.uint8, torch.uint8), DataType.UINT4: (np.uint8, torch.uint8),
        DataType.INT2: (np.uint8, torch.uint8), DataType.UINT2: (np.uint8, torch.uint8)}


def numpy_to_torch(array: np.ndarray) -> torch.Tensor:
    """A torch tensor sharing the memory of ``array`` (copied only if it is not contiguous
    or not writeable), for every kilnrt dtype including bfloat16 and float8."""
    array = np.asarray(array)
    if not array.flags.c_contiguous or not array.flags.writeable:
        array = np.array(array, order="C", copy=True)  # (ascontiguousarray makes 0-d arrays 1-d)
    dt = DataType.from_numpy(array.dtype)
    if dt in _RAW:
        return torch.from_numpy(array.view(_RAW[dt][0])).view(dt.torch)
    return torch.from_numpy(array)


def torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The numpy array of a torch tensor (copied to the host), any kilnrt dtype."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    dt = DataType.from_torch(t.dtype)
    if dt in _RAW:
        raw = t.view(_RAW[dt][1]).contiguous().numpy()
        return raw.view(dt.numpy)
    return t.numpy()
