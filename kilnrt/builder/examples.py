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
    """Random inputs at the shapes ``shapes`` gives (opt's, or a bucket point's), in the layout their producers' chosen tactics write
    (so a tactic is timed on NHWC activations where cuDNN convolutions produce NHWC)."""
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
            x = random_input(shape_dtype[0], shape_dtype[1].torch, ctx.device)
            if layouts.get(t.name) and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            ins.append(x)
    return ins


FORMATS = {True: "channels_last", False: "linear"}   # layouts' values -> EngineLayer.output_formats


def record_layouts(layer, tactic, ctx, ins, layouts) -> list[bool | None] | None:
    """Run the chosen tactic once; ``layouts[output] = True`` where it writes NHWC, else False.
    Returns what :func:`written_layouts` says of its outputs (None if it failed)."""
    try:
        outs = tactic.run(tactic.prepare(layer, ctx), ins)
    except Exception:  # noqa: BLE001 - the run at build is only to learn the layout
        return None
    written = written_layouts(outs)
    for t, nhwc in zip(layer.outputs, written):
        if nhwc is not None:
            layouts[t.name] = nhwc
    return written


def written_layouts(outs) -> list[bool | None]:
    """Per output a tactic returned: True where it is NHWC, False for any other tensor, None for
    what is not a tensor."""
    return [_nhwc(o) if isinstance(o, torch.Tensor) else None for o in outs]


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
