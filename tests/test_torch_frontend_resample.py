"""Importers for padding (F.pad: constant, reflect, replicate and circular, negative pads, a
convolution's circular padding) and upsampling
(F.interpolate and nn.Upsample: nearest, linear, bilinear, bicubic, trilinear, by size and by
scale factors above and below 1, with and without align_corners, antialiased, nearest at sizes where
PyTorch's float32 index arithmetic and ONNX's differ), through kilnrt.compile with a dynamic
batch and torch.compile(backend="kilnrt"), each matched against the module run in float64 on
fresh random inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.export import Dim

import kilnrt
from kilnrt.errors import KilnError
from kilnrt.testing import fresh_seed
from test_torch_frontend import check, check_torch_compile_makes_engines, reference

BATCH = Dim("batch", min=1, max=6)


class Pads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1, padding_mode="circular")

    def forward(self, x, v, s, w):
        return (F.pad(x, (1, 2, 0, 3), value=-1.5),                 # last two dims
                F.pad(x, (2, -1)),                                  # a negative pad crops
                F.pad(x, (1, 1, 2, 0), mode="reflect"),
                F.pad(x, (3, 0, 1, 2), mode="replicate"),
                F.pad(v, (2, 1), mode="reflect"), F.pad(v, (0, 3), mode="replicate"),
                F.pad(s, (1, 0, 1, 1, 0, 1), mode="replicate"), F.pad(s, (1, 1, 0, 0, 2, 1)),
                F.pad(x, (1, 6, 5, 0), mode="circular"),            # as far as a whole dim
                F.pad(x, (-1, 2, 2, -1), mode="circular"),          # crops one side, wraps the other
                F.pad(v, (3, 1), mode="circular"), F.pad(s, (1, 0, 2, 2, 0, 1), mode="circular"),
                self.conv(x))                                       # a convolution's circular padding


class Upsamples(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x, v, s, w):
        return (self.up(x),
                F.interpolate(x, scale_factor=0.7, mode="nearest"),        # 5x6 -> floor(3.5) x floor(4.2)
                F.interpolate(x, scale_factor=0.7, mode="bilinear"),
                F.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=True),
                F.interpolate(x, scale_factor=(2.5, 1.5), mode="bicubic", align_corners=True),
                F.interpolate(w, size=(18, 27), mode="nearest"),             # floor(dst * in/out) in float32
                F.interpolate(w, size=(34, 49), mode="nearest"), F.interpolate(w, size=(58, 54), mode="nearest"),
                F.interpolate(w, scale_factor=(1.3, 2.2), mode="nearest"),
                F.interpolate(w[..., :10], scale_factor=0.7, mode="bilinear"),   # 10 * 0.7: 7 in double, 6 in float32
                F.interpolate(x, size=(7, 9), mode="nearest"),
                F.interpolate(x, scale_factor=1.5, mode="bilinear"),
                F.interpolate(x, size=(3, 11), mode="bilinear", align_corners=True),
                F.interpolate(x, size=(9, 7), mode="bilinear"),
                F.interpolate(x, scale_factor=2, mode="bicubic"),
                F.interpolate(v, size=13, mode="linear"), F.interpolate(v, scale_factor=3, mode="nearest"),
                F.interpolate(s, scale_factor=2, mode="trilinear"),
                F.interpolate(s, size=(4, 5, 3), mode="trilinear", align_corners=True),
                F.interpolate(w, scale_factor=0.4, mode="bilinear", antialias=True),    # PIL's filters, widened
                F.interpolate(w, size=(5, 30), mode="bicubic", antialias=True),       # shrink one dim, grow one
                F.interpolate(x, scale_factor=(0.5, 1.5), mode="bilinear", antialias=True))


def _inputs(n, g):
    return (torch.randn(n, 3, 5, 6, generator=g), torch.randn(n, 2, 8, generator=g),
            torch.randn(n, 2, 3, 4, 5, generator=g), torch.randn(n, 1, 14, 21, generator=g))


@pytest.mark.parametrize("make", [Pads, Upsamples], ids=["pad", "upsample"])
def test_kilnrt_compile_with_a_dynamic_batch(make):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    model = make().eval()
    compiled = kilnrt.compile(model, _inputs(2, g),
                              dynamic_shapes={"x": {0: BATCH}, "v": {0: BATCH}, "s": {0: BATCH}, "w": {0: BATCH}})
    for n in (1, 4, 6):
        args = _inputs(n, g)
        check(compiled(*args), reference(model, *args), seed, f"{make.__name__} n={n}")


@pytest.mark.parametrize("make", [Pads, Upsamples], ids=["pad", "upsample"])
def test_torch_compile_builds_them_as_engines(make):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    check_torch_compile_makes_engines(make().eval(), lambda n: _inputs(n, g), seed, make.__name__, calls=(2, 3))


def test_antialiased_upsampling_with_align_corners_is_refused_by_name():
    class Antialias(nn.Module):
        def forward(self, x):
            return F.interpolate(x, size=(3, 3), mode="bilinear", antialias=True, align_corners=True)

    with pytest.raises(KilnError, match="antialias=True with align_corners=True is not supported"):
        kilnrt.compile(Antialias(), (torch.randn(1, 2, 8, 8),))


def test_a_reflect_pad_that_crops_one_side_and_pads_the_other_is_refused():
    """PyTorch reflects about the uncropped edge there; the PADDING layer crops first."""
    class Mixed(nn.Module):
        def forward(self, v):
            return F.pad(v, (-3, 3), mode="reflect")

    with pytest.raises(KilnError, match="reflect pad that crops one side"):
        kilnrt.compile(Mixed(), (torch.randn(1, 2, 8),))


class Copies(nn.Module):
    """In-place copies, functional once exported: ``copy`` (a broadcast and a cast) into
    ``empty`` and into a slice."""

    def forward(self, x, i):
        y = torch.empty(x.shape[0], 4)
        y.copy_(i)                          # int64 [4] broadcast over the rows, cast to float
        z = torch.zeros(x.shape[0], 5, dtype=torch.float16)
        z[:, 1:3].copy_(x[:, :2])
        return x + y, z


def test_copies_into_empty_tensors_and_slices():
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)

    def inputs(n):
        return torch.randn(n, 4, generator=g), torch.randint(-5, 5, (4,), generator=g)

    model = Copies().eval()
    compiled = kilnrt.compile(model, inputs(2), dynamic_shapes={"x": {0: BATCH}, "i": None})
    for n in (1, 5):
        args = inputs(n)
        check(compiled(*args), reference(model, *args), seed, f"copies n={n}")
    check_torch_compile_makes_engines(model, inputs, seed, "copies", calls=(2, 3))
