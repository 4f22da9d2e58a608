"""View folding: the strided-atom algebra against step-by-step torch ops, and the passes that
use it (chain cancellation, attention inputs as one VIEW, reshapes sunk into GEMMs)."""
from __future__ import annotations

import io
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import kilnrt
from kilnrt.kernels.views import Strided, apply_view
from kilnrt.network.layers import LayerKind


def _step_by_step(x: torch.Tensor, ops) -> torch.Tensor:
    for op in ops:
        if op[0] == "permute":
            x = x.permute(op[1])
        elif op[0] == "reshape":
            x = x.reshape(op[1])
        elif op[0] == "select":
            x = x.select(op[1], op[2])
        else:
            x = x.narrow(op[1], 0, x.shape[op[1]])[(slice(None),) * op[1] + (slice(op[2], op[3], op[4]),)]
    return x


def _factor(n: int, draw) -> tuple:
    dims = []
    while n > 1:
        ds = [d for d in range(2, n + 1) if n % d == 0]
        d = draw(st.sampled_from(ds))
        dims.append(d)
        n //= d
    return tuple(dims) or (1,)


@st.composite
def chains(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    ops, cur = [], shape
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["permute", "reshape", "select", "slice"]))
        if kind == "permute":
            perm = tuple(draw(st.permutations(range(len(cur)))))
            ops.append(("permute", perm))
            cur = tuple(cur[p] for p in perm)
        elif kind == "reshape":
            new = _factor(math.prod(cur), draw) if math.prod(cur) > 0 else cur
            ops.append(("reshape", new))
            cur = new
        elif kind == "select" and len(cur) > 1:
            axis = draw(st.integers(0, len(cur) - 1))
            ops.append(("select", axis, draw(st.integers(0, cur[axis] - 1))))
            cur = cur[:axis] + cur[axis + 1:]
        elif kind == "slice":
            axis = draw(st.integers(0, len(cur) - 1))
            start = draw(st.integers(0, cur[axis] - 1))
            stop = draw(st.integers(start + 1, cur[axis]))
            step = draw(st.integers(1, 3))
            ops.append(("slice", axis, start, stop, step))
            cur = cur[:axis] + (len(range(start, stop, step)),) + cur[axis + 1:]
    permuted = draw(st.booleans())
    return shape, tuple(ops), cur, permuted


@settings(max_examples=300, deadline=None)
@given(chains())
def test_strided_algebra_matches_step_by_step_ops(case):
    shape, ops, out_shape, permuted = case
    base = torch.randn(tuple(reversed(shape)) if permuted else shape)
    x = base.permute(tuple(reversed(range(len(shape))))) if permuted else base
    ref = _step_by_step(x, ops)
    v = Strided(shape)
    if v.run(ops) and v.view() is not None:  # expressible over the contiguous layout
        out = apply_view(x, out_shape, ops)
        assert torch.equal(out, ref)
        through = Strided(tuple(x.shape), tuple(x.stride()))
        if through.run(ops) and through.view() is not None:  # read in place, no copy
            assert out.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    else:  # not one view: a single torch view op sequence would have copied too
        with pytest.raises(RuntimeError):
            y = x.contiguous()
            for op in ops:
                y = y.permute(op[1]) if op[0] == "permute" else y.view(op[1]) if op[0] == "reshape" else \
                    y.select(op[1], op[2]) if op[0] == "select" else \
                    y[(slice(None),) * op[1] + (slice(op[2], op[3], op[4]),)]


def test_split_then_merge_back_is_one_view_where_torch_copies():
    """ViT's q: reshape [S,B,E] -> [S,B*H,D] of a strided q copies in torch, yet the chain
    [S,B*H,D] -> transpose -> [B,H,S,D] as a whole is a view."""
    S, B, H, D = 5, 2, 3, 4
    qkv = torch.randn(S, B, 3 * H * D)
    ops = (("reshape", (S, B, 3, H * D)), ("permute", (2, 0, 1, 3)), ("select", 0, 1),
           ("reshape", (S, B * H, D)), ("permute", (1, 0, 2)), ("reshape", (B, H, S, D)))
    out = apply_view(qkv, (B, H, S, D), ops)
    assert torch.equal(out, _step_by_step(qkv, ops))
    assert out.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr()


class _Mha(nn.Module):
    """torchvision's ViT encoder attention: batch_first MHA (transposes inside), pre-norm, residual."""

    def __init__(self, e=16, h=4):
        super().__init__()
        self.ln = nn.LayerNorm(e)
        self.mha = nn.MultiheadAttention(e, h, batch_first=True)

    def forward(self, x):
        y = self.ln(x)
        y, _ = self.mha(y, y, y, need_weights=False)
        return x + y


def test_vit_attention_reads_qkv_as_views_and_keeps_numerics():
    torch.manual_seed(np.random.randint(1 << 30))
    x = torch.randn(3, 7, 16)
    f = io.BytesIO()
    torch.onnx.export(_Mha().eval(), (x,), f, input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    engine = kilnrt.build(f.getvalue())
    kinds = [l.kind for l in engine.layers]
    assert kinds.count(LayerKind.ATTENTION) == 1
    assert kinds.count(LayerKind.VIEW) == 3, [(l.kind.value, l.name) for l in engine.layers]
    assert kinds.count(LayerKind.GATHER) == 0
    ref = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(engine.run({"x": x.numpy()})["y"], ref, rtol=1e-4, atol=1e-5)
    # the output projection's reshapes are gone: it reads the attention output in place
    mm = [l for l in engine.layers if l.kind == LayerKind.MATRIX_MULTIPLY]
    assert any(len(l.input_shapes[0]) == 3 for l in mm)


class _Cancel(nn.Module):
    def forward(self, x):
        y = x.transpose(1, 2).reshape(x.shape[0], -1).reshape(x.shape[0], x.shape[2], x.shape[1]).transpose(1, 2)
        return torch.relu(y) + 1, y.reshape(-1, 2).reshape(x.shape[0], -1)


def test_chains_cancel_or_collapse_and_near_misses_stay():
    x = torch.randn(2, 3, 4)
    f = io.BytesIO()
    torch.onnx.export(_Cancel(), (x,), f, input_names=["x"], output_names=["a", "b"], opset_version=17, dynamo=False)
    engine = kilnrt.build(f.getvalue())
    moves = [l for l in engine.layers if l.kind == LayerKind.SHUFFLE]
    # transpose, reshape, reshape, transpose is the identity; the second output collapses to one reshape
    assert len(moves) <= 1, [(l.kind.value, l.name) for l in engine.layers]
    ref = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    out = engine.run({"x": x.numpy()})
    np.testing.assert_allclose(out["a"], ref[0], rtol=1e-6)
    np.testing.assert_allclose(out["b"], ref[1], rtol=1e-6)
