"""Importers for element-wise gather and scatter (gather, scatter with a src, a value or a reduce,
scatter_add, scatter_reduce, select_scatter) and cumprod, through kilnrt.compile with a dynamic
batch and torch.compile(backend="kilnrt"), each matched against the module run in float64 on
fresh random inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.export import Dim

import kilnrt
from kilnrt.errors import KilnError
from kilnrt.testing import fresh_seed
from test_torch_frontend import check, check_torch_compile_makes_engines, reference

BATCH = Dim("batch", min=2, max=12)


class GatherScatter(nn.Module):
    def forward(self, x, idx, perm, src):
        picked = torch.gather(x, 1, idx)                                 # idx [n, 4] into 7 columns
        placed = torch.scatter(torch.zeros_like(x), 1, perm, x)          # a permutation: no index repeats
        small = x.scatter(1, perm[:, :3], src)                           # src larger than the index: its corner
        ones = x.scatter(1, idx[:, :2], 2.5)                             # one value
        added = torch.scatter_add(x, 1, idx, src[:, :4])                 # repeated indices add up
        summed = x.scatter_reduce(1, idx, src[:, :4], "sum")
        mult = x.scatter_reduce(1, idx, src[:, :4], "prod")
        top = x.scatter_reduce(1, idx, src[:, :4], "amax")
        low = x.scatter_reduce(0, torch.ones_like(idx[:1]), src[:1, :4] - 1, "amin")   # along the batch
        multiplied = x.scatter(1, idx, src[:, :4], reduce="multiply")
        row = torch.select_scatter(x, src[:, 0] * 3, 1, -2)              # x[:, -2] = ...
        mean = x.scatter_reduce(1, idx, src[:, :4], "mean")
        without = [x.scatter_reduce(1, idx, src[:, :4] - 1.2, r, include_self=False)   # x's value left out
                   for r in ("sum", "prod", "amax", "amin", "mean")]
        counted = perm.scatter_reduce(1, idx, perm[:, :4] * 2, "amin", include_self=False)   # int64
        return (picked, placed, small, ones, added, summed, mult, top, low, multiplied, row, mean, *without, counted,
                torch.cumprod(x, 1), torch.cumprod(idx, 0), torch.cumprod(x, -1, dtype=torch.float64))


def _inputs(n, g):
    x = torch.randn(n, 7, generator=g)
    idx = torch.randint(0, 7, (n, 4), generator=g)             # torch's gather and scatter take no negative index
    idx[:, 1] = idx[:, 0]                                        # repeats, for the reductions
    perm = torch.stack([torch.randperm(7, generator=g) for _ in range(n)])
    src = torch.rand(n, 7, generator=g) + 0.5
    return x, idx, perm, src


def test_kilnrt_compile_with_a_dynamic_batch():
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    model = GatherScatter().eval()
    dynamic = {"x": {0: BATCH}, "idx": {0: BATCH}, "perm": {0: BATCH}, "src": {0: BATCH}}
    compiled = kilnrt.compile(model, _inputs(4, g), dynamic_shapes=dynamic)
    for n in (2, 5, 12):
        args = _inputs(n, g)
        check(compiled(*args), reference(model, *args), seed, f"gather/scatter n={n}")


def test_torch_compile_builds_them_as_engines():
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    check_torch_compile_makes_engines(GatherScatter().eval(), lambda n: _inputs(n, g), seed, "gather/scatter")


def test_scatter_reductions_kilnrt_cannot_import_say_so():
    class Reduce(nn.Module):
        def forward(self, x, idx):
            return x.scatter_reduce(1, idx, x[:, :2], "mean")

    x, idx = torch.randint(0, 9, (3, 5)), torch.randint(0, 5, (3, 2))
    with pytest.raises(KilnError, match="'mean' of INT64 values"):
        kilnrt.compile(Reduce(), (x, idx))


def test_scatter_and_gather_of_0d_tensors():
    class Scalars(nn.Module):
        def forward(self, x, i, s):
            return x.scatter(0, i, s), x.scatter(0, i, 3.0), torch.gather(x, 0, i) * 2

    x, i, s = torch.tensor(1.5), torch.tensor(0), torch.tensor(-2.0)
    compiled = kilnrt.compile(Scalars(), (x, i, s))
    for got, want in zip(compiled(x, i, s), Scalars()(x, i, s)):
        assert got.shape == want.shape == () and torch.equal(got, want)


def test_scatter_reductions_of_bfloat16():
    """amax without the input's values starts from -inf, and mean divides, in bfloat16 too."""
    class Reduce(nn.Module):
        def forward(self, x, idx):
            return (x.scatter_reduce(1, idx, x[:, :3] * 2, "amax", include_self=False),
                    x.scatter_reduce(1, idx, x[:, :3] * 2, "mean"),
                    x.scatter_reduce(1, idx, x[:, :3] * 2, "mean", include_self=False))

    g = torch.Generator().manual_seed(fresh_seed())
    x, idx = torch.randn(4, 6, generator=g).to(torch.bfloat16), torch.randint(0, 6, (4, 3), generator=g)
    idx[:, 1] = idx[:, 0]
    compiled = kilnrt.compile(Reduce(), (x, idx))
    for got, want in zip(compiled(x, idx), Reduce()(x, idx)):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
