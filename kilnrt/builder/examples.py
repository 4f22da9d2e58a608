"""The builder's example inputs: random tensors at a profile point's shapes, laid out as the
tactics chosen for their producers write them, and the layouts a tactic writes."""
from __future__ import annotations

import math

import torch


RANDOM_BLOCK = 1 << 20


def random_input(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Random timing inputs, drawn on the host: a tactic whose CUDA-graph capture fails
    (timing then falls back to eager) can leave PyTorch's CUDA RNG unusable for the rest
    of the build, so the builder does not use it.  At most a million values are drawn and
    tiled on the device: drawing a batch-256 activation on the host took seconds per layer."""
    n = math.prod(shape)
    if dtype.is_floating_point:
        block = torch.randn(min(n, RANDOM_BLOCK))
    elif dtype == torch.bool:
        block = torch.rand(min(n, RANDOM_BLOCK)) > 0.5
    else:
        block = torch.zeros(min(n, RANDOM_BLOCK))
    x = block.to(device)
    if n > x.numel():
        x = x.repeat(-(-n // x.numel()))[:n]
    return x.reshape(tuple(shape)).to(dtype)


def example_inputs(layer, ctx, shapes, layouts) -> list | None:
    """Random inputs at the shapes ``shapes`` gives (opt's, or a bucket point's), in the layout
    their producers' chosen tactics write (so a tactic is timed on NHWC activations where cuDNN
    convolutions produce NHWC, and on a permuted view of rank 5 or more where a transpose
    leaves one).  ``layouts`` maps a tensor to a layout :func:`written_layouts` gives."""
    ins = []
    for t in layer.inputs:
        if t is None:
            ins.append(None)
        elif t.name in ctx.constants:
            ins.append(ctx.constants[t.name])
        else:
            shape_dtype = shapes.get(t.name)
            if shape_dtype is None:
                return None
            ins.append(laid_out(random_input(shape_dtype[0], shape_dtype[1].torch, ctx.device), layouts.get(t.name)))
    return ins


def laid_out(x: torch.Tensor, layout) -> torch.Tensor:
    """``x``'s values in ``layout``: True for NHWC (4-D), a memory order (a tuple of dims from the
    outermost to the innermost, rank 5 or more), else row-major as it is."""
    if layout is True and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if isinstance(layout, tuple) and len(layout) == x.dim() and sorted(layout) == list(range(x.dim())):
        inverse = sorted(range(x.dim()), key=layout.__getitem__)
        return x.permute(layout).contiguous().permute(inverse)
    return x


def output_format(layout) -> str | None:
    """A layout (:func:`written_layouts`) as ``EngineLayer.output_formats`` records it:
    ``channels_last`` for NHWC, ``linear`` for row-major or any other layout of rank 4 or less,
    None for a memory order of rank 5 or more (and for what is unknown)."""
    return "channels_last" if layout is True else "linear" if layout is False else None


def record_layouts(layer, tactic, ctx, ins, layouts) -> list | None:
    """Run the chosen tactic once; ``layouts[output]`` is the layout it writes
    (:func:`written_layouts`).  Returns those layouts (None if it failed)."""
    try:
        outs = tactic.run(tactic.prepare(layer, ctx), ins)
    except Exception:  # noqa: BLE001 - the run at build is only to learn the layout
        return None
    written = written_layouts(outs)
    for t, layout in zip(layer.outputs, written):
        if layout is not None:
            layouts[t.name] = layout
    return written


MIN_ORDERED_RANK = 5   # from this rank a tensor's memory order is tracked (below it: NHWC or not)


def written_layouts(outs) -> list:
    """Per output a tactic returned: True where it is NHWC; for a tensor of rank 5 or more that
    is not row-major, its memory order (:func:`memory_order`); False for any other tensor;
    None for what is not a tensor.  A transpose that leaves a view (ShuffleNet's channel
    shuffle, a window partition) then reaches its consumer's timing as that view's layout."""
    return [None if not isinstance(o, torch.Tensor) else
            memory_order(o) or False if o.dim() >= MIN_ORDERED_RANK else _nhwc(o) for o in outs]


def memory_order(t: torch.Tensor) -> tuple[int, ...] | None:
    """The dims of ``t`` from the outermost to the innermost in memory (by stride, then by
    position), or None where that is row-major order."""
    if t.is_contiguous():
        return None
    order = tuple(sorted(range(t.dim()), key=lambda i: (-t.stride(i), i)))
    return None if order == tuple(range(t.dim())) else order


def _nhwc(t: torch.Tensor) -> bool:
    """Channels innermost, then W, H and N: a dense channels-last tensor (that is not also
    row-major), or a view of one, such as the channel slice a merged convolution's consumer
    reads.  Such a view is NHWC for what runs after it (``torch.cat`` of NHWC-ordered views writes
    NHWC), so its consumers are timed on NHWC inputs, as they will run."""
    if t.dim() != 4 or t.is_contiguous():
        return False
    if t.is_contiguous(memory_format=torch.channels_last):
        return True
    _, c, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    return sc == 1 and sw >= c and sh >= sw * w and sn >= sh * h
