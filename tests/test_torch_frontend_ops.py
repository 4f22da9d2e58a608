"""The ATen importer table op by op: small modules that together use every family of importers,
compiled with kilnrt.compile (torch.export's ATen) and torch.compile(backend="kilnrt") (AOT's
core ATen), each matched against the module in float64 on fresh random inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.export import Dim

import kilnrt
import kilnrt.torch as kt
from kilnrt.errors import KilnError
from kilnrt.torch.backend import STATS
from test_torch_frontend import check, reference  # noqa: F401 - shared helpers
from kilnrt.testing import fresh_seed


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 4, 3, padding=2, dilation=2)
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
        self.same = nn.Conv2d(6, 6, 3, padding="same", dilation=2, groups=3)
        self.gn = nn.GroupNorm(2, 6)
        self.gn1 = nn.GroupNorm(1, 6)   # one group: over C and the spatial dims (PoolFormer's norm)

    def forward(self, x):
        y = F.leaky_relu(self.c1(x), 0.2)                        # [n, 4, 8]
        y = y[:, :, None, :] * y[:, :, :, None]                   # [n, 4, 8, 8]
        y = F.elu(self.up(y))                                     # [n, 6, 16, 16]
        y = F.hardswish(self.gn(self.same(y))) + self.gn1(y) * 2
        a = F.max_pool2d(y, 3, stride=2, padding=1, ceil_mode=True)
        b = F.avg_pool2d(y, 2, count_include_pad=True)
        c = F.adaptive_avg_pool2d(y, (4, 4))
        return F.relu6(a[..., :8, :8] + b) * F.hardsigmoid(c).mean((2, 3), keepdim=True)


class Pointwise(nn.Module):
    def forward(self, x, ids):
        y = torch.add(x, x.exp(), alpha=0.5) - 1.0
        y = torch.rsub(y, 2.0) * torch.rsqrt(x.abs() + 1) + torch.log(x.abs() + 1)
        y = torch.where(x > 0, y ** 2, torch.div(y, 3.0, rounding_mode="floor"))
        y = y.masked_fill(x < -1.5, -7.0).clamp(-5, 5)
        y = torch.maximum(y, torch.erf(x)) + torch.reciprocal(x.abs() + 2) * torch.sign(x) - (-x)
        q = (ids * 3 + 1) // 2 % 5                                  # int64 arithmetic
        mask = torch.logical_not((q == 2) | (ids > 6))
        return y * mask.float() + q.to(torch.float32) / 4, q


class Shapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 5))
        self.register_buffer("table", torch.randn(10, 3))

    def forward(self, x, idx):
        n = x.shape[0]
        y = x.permute(0, 2, 1).transpose(1, 2)                      # [n, 6, 4]
        y = torch.cat([y, y[:, ::2]], 1)                            # [n, 9, 4]
        a, b, c = torch.split(y, [1, 4, 4], dim=1)
        s = torch.stack([a.squeeze(1), b.sum(1), c.amax(1)], dim=1)  # [n, 3, 4]
        u = torch.unbind(s, dim=1)
        z = (u[0] + u[1].narrow(1, 0, 4) * u[2].select(0, 0)) @ self.w[:4]        # [n, 5]
        z = z + torch.bmm(x.transpose(1, 2), x).flatten(1)[:, :5] - x.var(-1).amin(-1, keepdim=True)
        z = z.unsqueeze(1).expand(n, 2, 5).repeat(1, 2, 1).unflatten(1, (2, 2))   # [n, 2, 2, 5]
        r = torch.arange(0, 10, 2, dtype=torch.float32) + torch.full((5,), 0.5) + torch.ones(5) * torch.zeros(5)
        t = torch.index_select(self.table, 0, idx).t() @ torch.ones_like(self.table[:4])   # [3, 3]
        return F.log_softmax(z + r, -1), F.softmax(z.mean(-1), dim=-1, dtype=torch.float64), t.prod(0), \
            torch.matmul(x, self.w[:, :4].t()[None]).sum(dtype=torch.float32)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(8, elementwise_affine=False)
        self.emb = nn.Embedding(20, 8)

    def forward(self, q, k, v, bias, ids):
        causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        additive = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
        grouped = F.scaled_dot_product_attention(q, k[:, :1], v[:, :1], enable_gqa=True)
        flat = F.scaled_dot_product_attention(q[:, 0], k[:, 0], v[:, 0])
        e = self.ln(self.emb(ids))
        return causal + additive + grouped, flat + F.rms_norm(e, (8,), eps=1e-6)[:, :, None, :].sum(2)


def _inputs(name, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if name == "convs":
        return (r(2, 3, 8),)
    if name == "pointwise":
        return r(3, 7), torch.randint(0, 10, (3, 7), generator=g)
    if name == "shapes":
        return r(3, 6, 4), torch.randint(0, 10, (4,), generator=g)
    return r(2, 2, 5, 8), r(2, 2, 5, 8), r(2, 2, 5, 8), r(2, 2, 5, 5), torch.randint(0, 20, (2, 5), generator=g)


MODULES = {"convs": Convs, "pointwise": Pointwise, "shapes": Shapes, "attention": Attention}


@pytest.mark.parametrize("name", list(MODULES))
def test_ops_with_kilnrt_compile(name):
    seed = fresh_seed()
    torch.manual_seed(seed)
    model = MODULES[name]().eval()
    compiled = kilnrt.compile(model, _inputs(name, seed))
    args = _inputs(name, seed + 1)
    check(compiled(*args), reference(model, *args), seed, name)


@pytest.mark.parametrize("name", ["convs", "pointwise", "shapes", "attention"])
def test_ops_with_torch_compile(name):
    seed = fresh_seed()
    torch.manual_seed(seed)
    torch._dynamo.reset()
    STATS.clear()
    model = MODULES[name]().eval()
    compiled = torch.compile(model, backend="kilnrt")
    args = _inputs(name, seed)
    with torch.no_grad():
        check(compiled(*args), reference(model, *args), seed, name)
    left = sorted(k for k in STATS if k.startswith("pytorch:"))
    assert STATS["engines"] >= 1 and not left, f"ops left to PyTorch: {left}"


def test_every_importer_has_a_one_line_doc():
    table = kt.supported()
    assert len(table) > 150
    missing = [k for k, imp in table.items() if not imp.doc]
    assert not missing, f"importers without a docstring: {missing}"


def test_docs_list_every_importer():
    import pathlib

    text = (pathlib.Path(__file__).parent.parent / "docs" / "pytorch.md").read_text()
    missing = [k for k in kt.supported() if f"`{k}`" not in text]
    assert not missing, f"docs/pytorch.md does not list: {missing}"


@pytest.mark.parametrize("norm_first, activation", [(False, "relu"), (True, "gelu")])
def test_torch_encoder_layer_fast_path_under_torch_compile(norm_first, activation):
    """In eval under no_grad, nn.TransformerEncoderLayer calls one fused ATen op; it becomes layers too."""
    seed = fresh_seed()
    torch.manual_seed(seed)
    torch._dynamo.reset()
    STATS.clear()
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, norm_first=norm_first, activation=activation)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    compiled = torch.compile(model, backend="kilnrt")
    for n in (2, 3):
        x = torch.randn(n, 4 + n, 16)
        with torch.no_grad():
            check(compiled(x), reference(model, x), seed, f"encoder n={n}")
    assert STATS["engines"] >= 1 and not any(k.startswith("pytorch:") for k in STATS), dict(STATS)


def test_cat_skips_empty_1d_inputs_beside_other_ranks():
    """torch.cat's legacy rule, which a Hugging Face key/value cache's first step relies on:
    empty 1-D inputs beside inputs of another rank are skipped."""
    class Cache(nn.Module):
        def forward(self, x, past):
            return torch.cat([past, x, past], dim=-2) * 2, torch.cat([past, x.flatten()[:3]])

    x = torch.randn(2, 3, 4)
    empty = torch.zeros(0)
    compiled = kilnrt.compile(Cache(), (x, empty))
    for got, want in zip(compiled(x, empty), Cache()(x, empty)):
        assert got.shape == want.shape and torch.equal(got, want)


def test_vector_norms():
    """linalg_vector_norm in each of its forms (F.normalize, torch.norm, ord 1, 2, 3, ±inf; dims,
    keepdim), with a dynamic batch; ord=0 is refused by name."""
    class Norms(nn.Module):
        def forward(self, x):
            return (F.normalize(x, dim=-1), torch.norm(x), torch.linalg.vector_norm(x, 1, dim=(1, 2)),
                    torch.linalg.vector_norm(x, 3, dim=-1, keepdim=True), torch.linalg.vector_norm(x, float("inf"), dim=1),
                    torch.linalg.vector_norm(x, float("-inf"), dim=2), x.norm(p=2, dim=0))

    seed = fresh_seed()
    torch.manual_seed(seed)
    compiled = kilnrt.compile(Norms(), (torch.randn(3, 4, 5),), dynamic_shapes={"x": {0: Dim("batch", min=1, max=8)}})
    for n in (1, 6):
        x = torch.randn(n, 4, 5)
        check(compiled(x), reference(Norms(), x), seed, f"norms n={n}")

    class Count(nn.Module):
        def forward(self, x):
            return torch.linalg.vector_norm(x, 0)

    with pytest.raises(KilnError, match="ord=0"):
        kilnrt.compile(Count(), (torch.randn(3, 4),))
