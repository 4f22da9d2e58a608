"""Importers for sort / argsort / topk / cumsum, advanced indexing (index.Tensor, index_put) and
torch.cond, through kilnrt.compile (with a dynamic batch) and torch.compile(backend="kilnrt"),
each matched against the module run in float64 on fresh random inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.export import Dim

import kilnrt
from kilnrt.errors import KilnError
from kilnrt.testing import fresh_seed
from kilnrt.torch.backend import STATS
from test_torch_frontend import check, check_torch_compile_makes_engines, reference

BATCH = Dim("batch", min=2, max=12)


class SortScan(nn.Module):
    def forward(self, x, ids):
        v, i = torch.sort(x, dim=1, descending=True)
        small = torch.topk(x, 2, dim=-1, largest=False)
        half = torch.topk(x * 2, x.shape[0], dim=0)                      # k: the batch, known at run time
        ties = torch.sort(ids, dim=-1, stable=True, descending=True)      # equal values keep index order
        return (v, i, torch.argsort(x, dim=-1), small.values, small.indices, half.values, half.indices,
                torch.cumsum(x, 1), torch.cumsum(ids, -1), torch.cumsum(x, 0, dtype=torch.float64),
                torch.cumsum(ids > 2, 1), ties.values, ties.indices)


class Indexing(nn.Module):
    def forward(self, x, i, k, j):
        a = x[i, :, j]                    # i [3] and j [2, 1] broadcast; indexed dims apart: B first
        b = x[:, k]                       # one index tensor: a GATHER
        c = x[:, k, j]                    # adjacent indexed dims: B in their place
        d = x[x > 0.5]                    # a bool mask: its size is known only at run time
        y = x.clone()
        y[x < 0] = 0.0                    # masked fill of one value
        z = x.clone()
        z[:, k, j] = -x[:, k, j] * 2      # index_put of a tensor of values
        w = torch.index_put(x, (i,), torch.ones_like(x[0]), accumulate=True)   # duplicates add up
        m = x.clone()
        m[x > 1] = x[x > 1] * 3           # a per-element value under a mask
        return a, b, c, d, y, z, w, m


class Cond(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x, y):
        def yes(x, y):
            return torch.relu(self.fc(x)) + y, x.sum(0)

        def no(x, y):
            return x * 2 - y, torch.cumsum(x, 0).amax(0)

        return torch.cond(x.sum() > 0, yes, no, (x, y))


def _sort_inputs(n, g):
    return torch.randn(n, 7, generator=g), torch.randint(0, 4, (n, 9), generator=g)


def _index_inputs(n, g):
    i = torch.randint(-n, n, (3,), generator=g)          # negative indices count from the end
    i[0] = i[1]                                           # a duplicate, for accumulate
    return (torch.randn(n, 5, 6, generator=g), i, torch.randint(-5, 5, (3,), generator=g),
            torch.randint(-6, 6, (2, 1), generator=g))


@pytest.mark.parametrize("make, inputs, dynamic", [
    (SortScan, _sort_inputs, {"x": {0: BATCH}, "ids": {0: BATCH}}),
    (Indexing, _index_inputs, {"x": {0: BATCH}, "i": None, "k": None, "j": None}),
], ids=["sort_topk_cumsum", "index"])
def test_kilnrt_compile_with_a_dynamic_batch(make, inputs, dynamic):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    model = make().eval()
    compiled = kilnrt.compile(model, inputs(4, g), dynamic_shapes=dynamic)
    for n in (2, 5, 12):
        args = inputs(n, g)
        check(compiled(*args), reference(model, *args), seed, f"{make.__name__} n={n}")


def test_sort_matches_torch_on_ties_and_nan():
    """sort(stable=True) gives torch's order exactly; topk keeps index order among ties, where torch's
    order is unspecified (its values match, and its indices point at equal values)."""
    x = torch.tensor([[3.0, float("nan"), 1.0, 3.0, -0.0, 0.0, 1.0, float("nan")]]).repeat(2, 1)

    class Sorts(nn.Module):
        def forward(self, x):
            return torch.sort(x, stable=True), torch.sort(x, descending=True, stable=True), torch.topk(x, 4)

    got, want = compiled_and_eager = kilnrt.compile(Sorts(), (x,))(x), Sorts()(x)
    for a, b in zip(torch.utils._pytree.tree_leaves(got[:2]), torch.utils._pytree.tree_leaves(want[:2])):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()), compiled_and_eager
    assert torch.equal(got[2].values.nan_to_num(), want[2].values.nan_to_num())
    assert torch.equal(got[2].indices, torch.tensor([[1, 7, 0, 3]] * 2))   # ties: the lower index first


def test_cond_takes_each_branch_and_saves(tmp_path):
    seed = fresh_seed()
    torch.manual_seed(seed)
    model = Cond().eval()
    compiled = kilnrt.compile(model, (torch.randn(4, 6), torch.randn(4, 6)),
                              dynamic_shapes={"x": {0: BATCH}, "y": {0: BATCH}})
    compiled.save(tmp_path / "cond.plan")
    loaded = kilnrt.torch.load(tmp_path / "cond.plan")
    for n, shift in ((3, 3.0), (5, -3.0), (2, 3.0), (12, -3.0)):
        args = (torch.randn(n, 6) + shift, torch.randn(n, 6))
        assert (args[0].sum() > 0) == (shift > 0)
        check(compiled(*args), reference(model, *args), seed, f"cond n={n} shift={shift}")
        for a, b in zip(loaded(*args), compiled(*args)):
            assert torch.equal(a, b)


def test_cond_on_a_dynamic_size():
    class OnSize(nn.Module):
        def forward(self, x):
            return torch.cond(x.shape[0] > 4, lambda x: torch.topk(x, 2).values * 2, lambda x: x[:, :2] - 1, (x,))

    model = OnSize()
    compiled = kilnrt.compile(model, (torch.randn(3, 6),), dynamic_shapes={"x": {0: BATCH}})
    for n in (2, 4, 5, 12):
        x = torch.randn(n, 6)
        check(compiled(x), reference(model, x), 0, f"cond on size n={n}")


def test_cond_with_an_unsupported_branch_names_the_op():
    class Bad(nn.Module):
        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda x: torch.lgamma(x.abs() + 1), lambda x: x + 1, (x,))

    with pytest.raises(KilnError, match=r"true_graph_0.*aten\.lgamma"):
        kilnrt.compile(Bad(), (torch.randn(3, 4),))


@pytest.mark.parametrize("make, inputs", [(SortScan, _sort_inputs), (Indexing, _index_inputs)],
                         ids=["sort_topk_cumsum", "index"])
def test_torch_compile_builds_them_as_engines(make, inputs):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    check_torch_compile_makes_engines(make().eval(), lambda n: inputs(n, g), seed, make.__name__)


def test_torch_compile_builds_cond_into_an_engine():
    """torch.fx's partitioner hands a piece its branches as run-time inputs; the backend makes them
    the piece's own, so cond is imported with the rest and nothing is left to PyTorch."""
    seed = fresh_seed()
    torch.manual_seed(seed)
    torch._dynamo.reset()
    STATS.clear()
    model = Cond().eval()
    compiled = torch.compile(model, backend="kilnrt")
    with torch.no_grad():
        for shift in (3.0, -3.0):
            args = (torch.randn(4, 6) + shift, torch.randn(4, 6))
            check(compiled(*args), reference(model, *args), seed, f"cond shift={shift}")
    left = sorted(k for k in STATS if k.startswith("pytorch:"))
    assert not left and STATS["engines"] >= 1 and not STATS["pieces_in_pytorch"], dict(STATS)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_kilnrt_compile_quantizes_with_calibration(precision):
    """kilnrt.compile(..., int8=True | fp8=True, calibration=feeds): the linear layers run as 8-bit
    layers (FP8 emulated on the CPU), close to the float module on fresh inputs."""
    from kilnrt.network.dtypes import DataType
    from kilnrt.network.layers import LayerKind

    torch.manual_seed(fresh_seed())
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10)).eval()
    x = torch.randn(8, 64)
    calib = [{"input": torch.randn(8, 64).numpy()} for _ in range(4)]
    compiled = kilnrt.compile(model, x, device="cpu", calibration=calib, **{precision: True})
    layers = [l for l in compiled.engine.layers if l.kind == LayerKind.QUANTIZED_MATRIX_MULTIPLY]
    assert len(layers) == 2
    assert {l.params.input_type for l in layers} == {DataType.INT8 if precision == "int8" else DataType.FP8}
    fresh = torch.randn(8, 64)
    ref = model(fresh)
    assert float((compiled(fresh) - ref).norm() / ref.norm()) < 0.1


class MapScan(nn.Module):
    """A running sum carried by scan (with a captured weight), its per-step outputs, and a map of a
    matmul over the rows."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 6))

    def forward(self, x):
        from torch._higher_order_ops.map import map as map_rows
        from torch._higher_order_ops.scan import scan

        def step(carry, row):
            nxt = carry * 0.5 + torch.tanh(row @ self.w)
            return nxt, nxt.sin() + row

        last, per_step = scan(step, torch.zeros_like(x[0]), x)
        rows = map_rows(lambda row, w: torch.relu(row @ w.T) - row, x, self.w)
        return last, per_step, rows


def test_map_and_scan_with_a_dynamic_length(tmp_path):
    seed = fresh_seed()
    torch.manual_seed(seed)
    model = MapScan().eval()
    compiled = kilnrt.compile(model, (torch.randn(4, 6),), dynamic_shapes={"x": {0: BATCH}})
    compiled.save(tmp_path / "scan.plan")
    loaded = kilnrt.torch.load(tmp_path / "scan.plan")
    for n in (2, 5, 12):
        x = torch.randn(n, 6)
        check(compiled(x), reference(model, x), seed, f"map/scan n={n}")
        for a, b in zip(loaded(x), compiled(x)):
            assert torch.equal(a, b)


def test_torch_compile_builds_map_and_scan_into_engines():
    seed = fresh_seed()
    torch.manual_seed(seed)
    check_torch_compile_makes_engines(MapScan().eval(), lambda n: (torch.randn(n, 6),), seed, "map/scan")


class WhileLoop(nn.Module):
    """Iterate y = tanh(y @ w) + y while the count is below a run-time limit and y stays small;
    a limit of 0 runs the body not at all."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 6) * 0.3)

    def forward(self, x, limit):
        from torch._higher_order_ops.while_loop import while_loop

        def cond(i, y):
            return (i < limit.sum()) & (y.abs().sum() < 1e4)

        def body(i, y):
            return i + 1, torch.tanh(y @ self.w) + y

        return while_loop(cond, body, (torch.zeros((), dtype=torch.int64), x))


def test_while_loop_runs_as_long_as_its_condition_says():
    seed = fresh_seed()
    torch.manual_seed(seed)
    model = WhileLoop().eval()
    compiled = kilnrt.compile(model, (torch.randn(4, 6), torch.tensor([3])), dynamic_shapes={"x": {0: BATCH}, "limit": None})
    for n, limit in ((2, 0), (5, 1), (12, 4), (3, 7)):
        x, lim = torch.randn(n, 6), torch.tensor([limit])
        got, want = compiled(x, lim), reference(model, x, lim)
        assert int(got[0]) == int(want[0]) == min(limit, int(want[0])), (got[0], want[0])
        check(got, want, seed, f"while_loop n={n} limit={limit}")
