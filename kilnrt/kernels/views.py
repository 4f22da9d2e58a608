"""When a data-movement layer's output is a view of its input (shared by the view tactics
and the optimizer's view folding)."""
from __future__ import annotations

import torch

from kilnrt.network.layers import GatherMode, GatherParams


def contiguous_strides(shape) -> tuple[int, ...]:
    """The strides of a contiguous (row-major) tensor of ``shape``."""
    strides, acc = [], 1
    for size in reversed(tuple(shape)):
        strides.append(acc)
        acc *= size
    return tuple(reversed(strides))


def _progression(idx: torch.Tensor, size: int) -> tuple[int, int, int] | None:
    """(start, stop, step) when ``idx`` (1-D, non-empty, in range) is start, start+step, ..."""
    raw = [int(v) for v in idx.tolist()]
    if any(not -size <= v < size for v in raw):
        return None
    vals = [v % size for v in raw]
    step = vals[1] - vals[0] if len(vals) > 1 else 1
    if step <= 0 or any(b - a != step for a, b in zip(vals, vals[1:])):
        return None
    return vals[0], vals[-1] + 1, step


def gather_as_view(p: GatherParams, data_shape, indices: torch.Tensor | None):
    """How a Gather with constant ``indices`` picks a view of its data, or None:
    ``(axis, "select", i)`` for a scalar index, ``(axis, "slice", (start, stop, step))`` for a
    1-D arithmetic progression with a positive step.  Indices are normalized here."""
    if p.mode != GatherMode.DEFAULT or indices is None or data_shape is None:
        return None
    rank = len(data_shape)
    if rank == 0 or indices.dim() > 1 or indices.numel() == 0 or indices.is_floating_point():
        return None
    axis = p.axis % rank
    size = data_shape[axis]
    if not isinstance(size, int):
        return None
    if indices.dim() == 0:
        i = int(indices)
        return (axis, "select", i % size) if -size <= i < size else None
    prog = _progression(indices, size)
    return None if prog is None else (axis, "slice", prog)


class Strided:
    """Strides through a chain of view ops: ``dims[i]`` is a list of (size, stride) atoms,
    outer first.  A reshape splits and regroups atoms, so it stays exact where a step-by-step
    ``torch.reshape`` of a transposed tensor would have to copy; the result is a view when
    every dim ends up one stride (:meth:`view`)."""

    def __init__(self, shape, strides=None, offset: int = 0) -> None:
        if strides is None:
            strides = contiguous_strides(shape)
        self.dims = [[(d, st)] if d != 1 else [] for d, st in zip(shape, strides)]
        self.offset = offset

    def run(self, ops) -> bool:
        """Apply ops: ("permute", perm), ("reshape", shape), ("select", axis, i),
        ("slice", axis, start, stop, step).  False when one is not expressible."""
        for op in ops:
            if op[0] == "permute":
                ok = self.permute(op[1])
            elif op[0] == "reshape":
                ok = self.reshape(op[1])
            elif op[0] == "select":
                self.select(op[1], op[2])
                ok = True
            elif op[0] == "slice":
                ok = self.slice(*op[1:])
            else:
                ok = False
            if not ok:
                return False
        return True

    def permute(self, perm) -> bool:
        if sorted(perm) != list(range(len(self.dims))):
            return False
        self.dims = [self.dims[p] for p in perm]
        return True

    def reshape(self, shape) -> bool:
        atoms = []
        for a in (a for dim in self.dims for a in dim if a[0] != 1):
            if atoms and atoms[-1][1] == a[0] * a[1]:  # evenly spaced: one bigger atom
                atoms[-1] = (atoms[-1][0] * a[0], a[1])
            else:
                atoms.append(a)
        dims = []
        for want in shape:
            dim = []
            while want > 1:
                if not atoms:
                    return False
                n, s = atoms[0]
                if n <= want:
                    if want % n:
                        return False
                    dim.append(atoms.pop(0))
                    want //= n
                else:
                    if n % want:
                        return False
                    dim.append((want, s * (n // want)))
                    atoms[0] = (n // want, s)
                    want = 1
            dims.append(dim)
        if atoms:
            return False
        self.dims = dims
        return True

    def select(self, axis: int, index: int) -> None:
        for n, s in reversed(self.dims[axis]):
            self.offset += (index % n) * s
            index //= n
        del self.dims[axis]

    def slice(self, axis: int, start: int, stop: int, step: int) -> bool:
        merged = _merge(self.dims[axis])
        if merged is None:
            return False
        n, s = merged
        count = len(range(start, stop, step))
        self.offset += start * s
        self.dims[axis] = [(count, s * step)] if count != 1 else []
        return True

    def view(self):
        """(strides, offset) when every dim is one stride, else None."""
        strides = []
        for dim in self.dims:
            merged = _merge(dim)
            if merged is None:
                return None
            strides.append(merged[1])
        return tuple(strides), self.offset


def _merge(dim):
    """The atoms of a dim as one (size, stride), or None if they are not evenly spaced."""
    if not dim:
        return (1, 1)
    n, s = dim[-1]
    for outer_n, outer_s in reversed(dim[:-1]):
        if outer_s != n * s:
            return None
        n *= outer_n
    return n, s


def apply_view(x: torch.Tensor, shape, ops) -> torch.Tensor:
    """``ops`` applied to ``x`` as one strided view: through ``x``'s own strides when they
    allow it, else through a contiguous copy (always expressible: the optimizer checked)."""
    strided = _view_through(x, ops)
    if strided is None:
        x = x.contiguous()
        strided = _view_through(x, ops)
        if strided is None:
            raise ValueError(f"view ops {ops} do not apply to shape {tuple(x.shape)}")
    strides, offset = strided
    return x.as_strided(tuple(shape), strides, x.storage_offset() + offset)


def _view_through(x: torch.Tensor, ops):
    """(strides, offset) of ``ops`` applied through ``x``'s strides, or None."""
    v = Strided(tuple(x.shape), tuple(x.stride()))
    return v.view() if v.run(ops) else None
