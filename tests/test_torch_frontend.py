"""The PyTorch frontend: kilnrt.compile (torch.export -> ATen importer table -> engine) and
torch.compile(backend="kilnrt") (partitioned between engines and PyTorch), each checked against
the module run in float64 on fresh random inputs."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.export import Dim

import kilnrt
import kilnrt.torch as kt
from kilnrt.errors import KilnError, PlanError
from kilnrt.testing import assert_close, fresh_seed
from kilnrt.torch.backend import STATS

RTOL = ATOL = 2e-4   # float32 engines against a float64 reference


def reference(module: nn.Module, *args, **kwargs):
    """The module's outputs computed in float64 (float inputs and weights promoted), in the dtypes
    the module itself returns."""
    m64 = copy.deepcopy(module).double()
    cast = lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    with torch.no_grad():
        eager = module(*args, **kwargs)
        out = m64(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})
    flat, spec = torch.utils._pytree.tree_flatten(out)
    dtypes = [t.dtype if isinstance(t, torch.Tensor) else None for t in torch.utils._pytree.tree_leaves(eager)]
    return torch.utils._pytree.tree_unflatten([t.to(d) if d is not None else t for t, d in zip(flat, dtypes)], spec)


def check(actual, expected, seed, name=""):
    flat_a, spec_a = torch.utils._pytree.tree_flatten(actual)
    flat_e, spec_e = torch.utils._pytree.tree_flatten(expected)
    assert spec_a == spec_e, f"{name}: output structure {spec_a} differs from eager's {spec_e}"
    for i, (a, e) in enumerate(zip(flat_a, flat_e)):
        if isinstance(e, torch.Tensor):
            assert isinstance(a, torch.Tensor) and a.dtype == e.dtype, f"{name}[{i}]: {type(a)} vs {e.dtype}"
            assert_close(a.detach(), e, RTOL, ATOL, seed=seed, name=f"{name}[{i}]")
        else:
            assert a == e


def check_torch_compile_makes_engines(model, inputs, seed, name, calls=(4, 6)):
    """torch.compile(model, backend="kilnrt") on ``inputs(c)`` for each c in ``calls`` matches
    the float64 reference, and every piece ran as a kilnrt engine (nothing left to PyTorch)."""
    torch._dynamo.reset()
    STATS.clear()
    compiled = torch.compile(model, backend="kilnrt")
    with torch.no_grad():
        for c in calls:
            args = inputs(c)
            check(compiled(*args), reference(model, *args), seed, f"{name} {c}")
    left = sorted(k for k in STATS if k.startswith("pytorch:"))
    assert STATS["engines"] >= 1 and not left and not STATS["pieces_in_pytorch"], dict(STATS)


@pytest.fixture
def seed():
    s = fresh_seed()
    torch.manual_seed(s)
    return s


# ----------------------------------------------------------------------------- the modules
class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        y = F.silu(self.bn2(self.conv2(y)))
        y = F.avg_pool2d(y, 2, stride=1, padding=1, count_include_pad=False)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class EncoderBlock(nn.Module):
    """A pre-norm transformer encoder block with token and position embeddings."""

    def __init__(self, vocab=50, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(64, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, ids, mask):
        b, s = ids.shape
        x = self.tok(ids) + self.pos(torch.arange(s, device=ids.device))
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        keep = mask[:, None, None, :].bool()
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, -1))
        x = x + self.ff2(F.gelu(self.ff1(self.ln2(x))))
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return x, pooled


class MLP(nn.Module):
    """Keyword arguments and a dict of outputs (pytree in and out)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 3)

    def forward(self, x, bias=None, *, scale=2.0):
        h = torch.tanh(self.fc1(x)) * scale
        if bias is not None:
            h = h + bias
        y = self.fc2(h)
        return {"probs": torch.softmax(y, -1), "parts": (torch.sigmoid(y), y.amax(-1))}


class Branchy(nn.Module):
    """Control flow that depends on tensor values."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        if y.mean() > 0:
            return F.relu(y) * 2
        return y - 1


class WithLgamma(nn.Module):
    """An op kilnrt has no importer for (lgamma) between supported ones."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(torch.lgamma(F.gelu(self.fc1(x)).abs() + 1))


def _randomize_bn(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    return module.eval()


def _transformer_inputs(b, s):
    ids = torch.randint(0, 50, (b, s))
    mask = (torch.rand(b, s) > 0.3).float()
    mask[:, 0] = 1
    return ids, mask


# ----------------------------------------------------------------------------- kilnrt.compile
def test_cnn_with_batch_norm_dynamic_batch(seed):
    model = _randomize_bn(SmallCNN())
    batch = Dim("batch", min=1, max=8)
    compiled = kilnrt.compile(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes={"x": {0: batch}})
    assert isinstance(compiled, kt.CompiledModule) and isinstance(compiled, nn.Module)
    assert compiled.engine.get_tensor_profile_shape("x") == [(1, 3, 16, 16), (2, 3, 16, 16), (8, 3, 16, 16)]
    assert compiled.engine.get_tensor_shape("x")[0] == -1
    for n in (1, 5, 8):
        x = torch.randn(n, 3, 16, 16)
        check(compiled(x), reference(model, x), seed, f"cnn batch {n}")
    with pytest.raises(KilnError, match="outside optimization profile"):
        compiled(torch.randn(9, 3, 16, 16))


def test_transformer_block_dynamic_batch_and_sequence(seed):
    model = EncoderBlock().eval()
    b, s = Dim("batch", min=1, max=4), Dim("seq", min=2, max=32)
    compiled = kilnrt.compile(model, _transformer_inputs(2, 8),
                              dynamic_shapes={"ids": {0: b, 1: s}, "mask": {0: b, 1: s}})
    shapes = {t.name: t.symbolic for t in compiled.engine.io if t.mode == "input"}
    assert shapes == {"ids": ("batch", "seq"), "mask": ("batch", "seq")}
    kinds = {layer.kind for layer in compiled.engine.layers}
    assert kilnrt.LayerKind.ATTENTION in kinds or any("attention" in l.tactic for l in compiled.engine.layers)
    for shape in ((1, 2), (3, 11), (4, 32)):
        ids, mask = _transformer_inputs(*shape)
        check(compiled(ids, mask), reference(model, ids, mask), seed, f"encoder {shape}")


def test_mlp_keeps_signature_kwargs_and_output_structure(seed):
    model = MLP().eval()
    x, bias = torch.randn(4, 6), torch.randn(12)
    compiled = kilnrt.compile(model, (x,), example_kwargs={"bias": bias})
    x2, bias2 = torch.randn(4, 6), torch.randn(12)
    check(compiled(x2, bias=bias2), reference(model, x2, bias=bias2), seed, "mlp kwargs")
    check(compiled(x2, bias2), reference(model, x2, bias=bias2), seed, "mlp positional")
    with pytest.raises(KilnError, match="scale"):   # a number the engine has built in
        compiled(x2, bias=bias2, scale=3.0)


def test_save_and_load_round_trip(tmp_path, seed):
    model = EncoderBlock().eval()
    b, s = Dim("batch", min=1, max=4), Dim("seq", min=2, max=16)
    compiled = kilnrt.compile(model, _transformer_inputs(2, 8),
                              dynamic_shapes={"ids": {0: b, 1: s}, "mask": {0: b, 1: s}})
    path = str(tmp_path / "block.plan")
    compiled.save(path)
    loaded = kt.load(path)
    ids, mask = _transformer_inputs(3, 13)
    before, after = compiled(ids, mask), loaded(ids, mask)
    for x, y in zip(before, after):
        assert torch.equal(x, y)
    check(after, reference(model, ids, mask), seed, "loaded")
    kilnrt.build(_tiny_network()).save(str(tmp_path / "plain.plan"))
    with pytest.raises(PlanError, match="not a compiled PyTorch module"):
        kt.load(str(tmp_path / "plain.plan"))


def _tiny_network():
    net = kilnrt.Network()
    x = net.add_input("x", kilnrt.DataType.FLOAT, (2, 2))
    net.mark_output(net.add_activation(x, kilnrt.network.layers.ActivationType.RELU).get_output(0))
    return net


def test_unsupported_aten_op_is_named():
    with pytest.raises(KilnError) as info:
        kilnrt.compile(WithLgamma().eval(), (torch.randn(3, 5),))
    text = str(info.value)
    assert "aten.lgamma" in text and "not supported" in text and "backend='kilnrt'" in text


def test_data_dependent_branch_falls_back_with_a_warning(seed):
    model = Branchy().eval()
    with pytest.warns(UserWarning, match="control flow depends on tensor values"):
        compiled = kilnrt.compile(model, (torch.randn(3, 4),))
    for x in (torch.randn(3, 4), torch.randn(3, 4) - 3, torch.randn(3, 4) + 3):
        check(compiled(x), reference(model, x), seed, "branch")
    with pytest.raises(KilnError, match="cannot be saved"):
        compiled.save("never.plan")
    with pytest.raises(KilnError, match="torch.cond"):
        kilnrt.compile(model, (torch.randn(3, 4),), fallback=False)


def test_bad_options_and_ranges_are_refused():
    model = MLP().eval()
    with pytest.raises(KilnError, match="does not take profiles; give dynamic ranges"):
        kilnrt.compile(model, (torch.randn(2, 6),), profiles={"x": (2, 6)})
    with pytest.raises(KilnError, match="device='tpu'"):
        kilnrt.compile(model, (torch.randn(2, 6),), device="tpu")
    with pytest.raises(KilnError, match="no upper bound"):
        kilnrt.compile(model, (torch.randn(2, 6),), dynamic_shapes={"x": {0: Dim("batch")}})
    with pytest.raises(KilnError, match="kilnrt.compile"):
        kilnrt.build(model)
    with pytest.raises(KilnError, match="call module.eval"):
        kilnrt.compile(_randomize_bn(SmallCNN()).train(), (torch.randn(2, 3, 16, 16),))


# ----------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("make, inputs", [
    (lambda: _randomize_bn(SmallCNN()), lambda n: (torch.randn(n, 3, 16, 16),)),
    (lambda: EncoderBlock().eval(), lambda n: _transformer_inputs(n, 3 + n)),
    (lambda: Branchy().eval(), lambda n: (torch.randn(n, 4) + (3 if n % 2 else -3),)),
], ids=["cnn", "transformer", "branch"])
def test_torch_compile_backend_matches_eager(make, inputs, seed):
    torch._dynamo.reset()
    STATS.clear()
    model = make()
    compiled = torch.compile(model, backend="kilnrt")
    with torch.no_grad():
        for n in (2, 3, 5):  # a new batch size makes dynamo trace with dynamic dims
            args = inputs(n)
            check(compiled(*args), reference(model, *args), seed, f"torch.compile n={n}")
    assert STATS["pieces"] >= 1 and STATS["engines"] >= 1 and not STATS["pieces_in_pytorch"]


def test_torch_compile_runs_missing_op_in_pytorch(seed):
    torch._dynamo.reset()
    STATS.clear()
    model = WithLgamma().eval()
    compiled = torch.compile(model, backend="kilnrt")
    with torch.no_grad():
        for n in (3, 4):
            x = torch.randn(n, 5)
            check(compiled(x), reference(model, x), seed, "lgamma in PyTorch")
    assert STATS["pieces"] >= 2 and any(k.startswith("pytorch:aten.lgamma") for k in STATS)


def test_torch_compile_refuses_unknown_options():
    torch._dynamo.reset()
    compiled = torch.compile(MLP().eval(), backend="kilnrt", options={"fp4": True})
    with pytest.raises(Exception, match="no option 'fp4'"):
        compiled(torch.randn(2, 6))
