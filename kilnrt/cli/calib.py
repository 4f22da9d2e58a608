"""Calibration data for ``--int8 --calib PATH`` (``kilnrt build``, ``kilnrt exec``).

PATH is one of:

- a calibration cache (TensorRT's text format, first line ``TRT-...``): its ranges are used;
- ``FILE.npz``: one array per input name, split along axis 0 into batches of ``batch_size``;
- a folder: each ``*.npz`` in it (sorted by name) is one batch, or, for a network with one
  input, each ``*.npy``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kilnrt.errors import ErrorCode, KilnError


def is_cache(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"TRT-"
    except OSError:
        return False


def calibration_kwargs(path: str | os.PathLike, inputs: list[str], batch_size: int = 16) -> dict[str, Any]:
    """``kilnrt.build`` keywords for PATH: ``calibration`` batches and/or ``calibration_cache``."""
    p = Path(path)
    if not p.exists():
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--calib {str(path)!r} does not exist; give a .npz of inputs, "
                                                    "a folder of .npz/.npy batches, or a calibration cache")
    if p.is_file() and is_cache(p):
        return {"calibration_cache": str(p)}
    if p.is_file() and p.suffix == ".npz":
        data = _npz(p, inputs)
        n = len(next(iter(data.values())))
        return {"calibration": [{k: v[i:i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size)]}
    if p.is_dir():
        npz = sorted(p.glob("*.npz"))
        if npz:
            return {"calibration": [_npz(f, inputs) for f in npz]}
        npy = sorted(p.glob("*.npy"))
        if npy and len(inputs) == 1:
            return {"calibration": [{inputs[0]: np.load(f)} for f in npy]}
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        f"--calib folder {str(path)!r} has no .npz batches" +
                        (" (.npy batches need a network with one input)" if npy else " and no .npy batches"))
    raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--calib {str(path)!r} is neither a calibration cache (TRT-...), "
                                                "a .npz file, nor a folder of batches")


def _npz(path: Path, inputs: list[str]) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        missing = [n for n in inputs if n not in z.files]
        if missing:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"calibration file {str(path)!r} has arrays {z.files}, "
                                                        f"but no array for input(s) {missing}")
        return {n: z[n] for n in inputs}
