"""The ranges the optimization profiles give the network's symbolic dims, and the check that
every layer's shape rule holds over them.

A profile gives each input dim [min, max]; a symbol shared by several inputs (``batch``) gets
the union over the profiles.  With the ranges set, inference resolves the dims they decide
(``Min(512, seq)`` is ``seq`` when no profile lets ``seq`` past 512), and
:func:`check_ranges` refuses a network whose shapes stop making sense inside a range: a
pooling window larger than its input at ``min``, say.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from kilnrt.errors import ErrorCode, ShapeError
from kilnrt.network import symbolic as S
from kilnrt.network.layers import LayerKind

# kinds whose output dims past the first two are windows over the input (at least 1 each)
_WINDOWED = {LayerKind.CONVOLUTION, LayerKind.DECONVOLUTION, LayerKind.POOLING}


def symbol_ranges(net, profiles: Sequence[Mapping[str, tuple]]) -> dict[str, tuple[int, int]]:
    """Each symbol's [min, max] over the profiles.  Raises ShapeError where one profile gives
    a symbol two different ranges through two inputs (``seq`` of ``input_ids`` and of
    ``attention_mask``): no input shapes could ever satisfy both."""
    ranges: dict[str, tuple[int, int]] = {}
    for k, prof in enumerate(profiles):
        seen: dict[str, tuple[str, int, tuple]] = {}
        for t in net.inputs:
            if t.name not in prof:
                continue
            lo, opt, hi = prof[t.name]
            for i, d in enumerate(t.shape):
                dim = S.from_public(d, t.name, i)
                if isinstance(dim, int) or not dim.is_Symbol:
                    continue
                span = (int(lo[i]), int(opt[i]), int(hi[i]))
                first = seen.setdefault(dim.name, (t.name, i, span))
                if first[2] != span:
                    raise ShapeError(ErrorCode.INVALID_PROFILE,
                                     f"optimization profile {k} gives the dynamic dim {dim.name!r} min/opt/max "
                                     f"{'/'.join(map(str, first[2]))} through input {first[0]!r} (dim {first[1]}) but "
                                     f"{'/'.join(map(str, span))} through input {t.name!r} (dim {i}); inputs that "
                                     f"share a dim must give it the same range")
                old = ranges.get(dim.name)
                ranges[dim.name] = (span[0], span[2]) if old is None else (min(old[0], span[0]), max(old[1], span[2]))
    return ranges


def check_ranges(net, ranges: Mapping[str, tuple[int, int]]) -> None:
    """Raise ShapeError if some layer's output dim is negative (or a window output below 1)
    at the low or high end of the ranges."""
    if not ranges:
        return
    corners = {"min": {s: r[0] for s, r in ranges.items()}, "max": {s: r[1] for s, r in ranges.items()}}
    for layer in net.layers:
        for t in layer.outputs:
            dims = t.symbolic_shape
            if not dims:
                continue
            for k, d in enumerate(dims):
                if isinstance(d, int):
                    continue
                least = 1 if layer.kind in _WINDOWED and k >= 2 else 0
                for end, bindings in corners.items():
                    value = S.substitute(d, bindings)
                    if value is not None and value < least:
                        raise ShapeError(ErrorCode.INVALID_PROFILE, _message(layer, t, k, d, value, least, end,
                                                                             bindings, ranges))


def _message(layer, t, k, d, value, least, end, bindings, ranges) -> str:
    names = sorted(s.name for s in d.free_symbols if s.name in ranges)
    where = ", ".join(f"{n} = {bindings[n]}" for n in names)
    span = ", ".join(f"{n} in [{ranges[n][0]}, {ranges[n][1]}]" for n in names)
    need = ""
    if len(names) == 1 and end == "min":   # the least value of the one symbol that works
        n = names[0]
        lo, hi = ranges[n]
        ok = next((v for v in range(lo, hi + 1) if (S.substitute(d, {**bindings, n: v}) or 0) >= least), None)
        need = f"; it needs {n} >= {ok}: raise the profile's min" if ok is not None else ""
    origin = ", ".join(layer.origin)
    return (f"layer {layer.name!r} ({layer.kind.value}, from ONNX node(s) {origin}): output {t.name!r} dim {k} "
            f"is {d} = {value} at {where}, the {end} of the optimization profile ({span}); it must be at "
            f"least {least}{need}")
