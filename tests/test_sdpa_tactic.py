"""``cuda.attention.sdpa`` (PyTorch's scaled-dot-product attention) gives a query row that its
mask lets see no key zeros, as kilnrt's attention layer does; the tactic is a CUDA one, but
its run is device-agnostic PyTorch, so it is checked here on the CPU against the float64
reference kernel. PyTorch's CPU kernel already zeros such rows, while the GPU's
memory-efficient kernel does not; the tests stand in its behaviour (NaN or a uniform average
there) so that they fail when the tactic relies on the kernel. test_cuda_attention.py checks
the CUDA kernels themselves."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before triton is imported: other files run its kernels interpreted
    os.environ["TRITON_INTERPRET"] = "1"

import kilnrt.kernels.cuda  # noqa: F401,E402  (registers the CUDA tactics)
from kilnrt.kernels.registry import TacticContext, get_tactic, reference_kernel  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.network.layers import AttentionParams, LayerKind  # noqa: E402
from kilnrt.testing import fresh_seed  # noqa: E402

SDPA = get_tactic("cuda.attention.sdpa")
B, H, SQ, SKV, D = 2, 3, 7, 11, 16


def _masks(kind: str) -> torch.Tensor:
    keep = torch.rand(B, 1, SQ, SKV) < 0.7
    keep[:, :, :, 0] = True
    if kind == "bool_dead_row":
        keep[1, 0, 4] = False
        return keep
    additive = torch.where(keep, 0.0, float("-inf"))
    if kind == "additive_dead_row":
        additive[0, 0, 2] = float("-inf")
    return additive


def _layer(mask: torch.Tensor | None, constant: bool):
    net = Network()
    ins = [net.add_input(n, DataType.FLOAT, s) for n, s in (("q", (B, H, SQ, D)), ("k", (B, H, SKV, D)),
                                                             ("v", (B, H, SKV, D)))]
    consts = {}
    if mask is not None:
        ins.append(net.add_input("m", DataType.BOOL if mask.dtype == torch.bool else DataType.FLOAT,
                                 tuple(mask.shape)))
        if constant:
            consts["m"] = mask
    layer = net.add_layer(LayerKind.ATTENTION, AttentionParams(), ins)
    return layer, TacticContext(torch.device("cpu"), consts)


def _gpu_like_sdpa(fill: str):
    """PyTorch's SDPA, with what the GPU kernels leave in a row that sees no key."""
    real = torch.nn.functional.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, **kwargs):
        out = real(q, k, v, attn_mask=attn_mask, **kwargs)
        if attn_mask is None:
            return out
        dead = ~attn_mask.any(-1, keepdim=True) if attn_mask.dtype == torch.bool else \
            torch.isneginf(attn_mask).all(-1, keepdim=True)
        junk = torch.full_like(out, float("nan")) if fill == "nan" else v.mean(-2, keepdim=True).expand_as(out)
        return torch.where(dead, junk, out)
    return sdpa


@pytest.mark.parametrize("fill", ["nan", "uniform"])
@pytest.mark.parametrize("constant", [False, True], ids=["input_mask", "constant_mask"])
@pytest.mark.parametrize("kind", ["bool_dead_row", "additive_dead_row", "additive"])
def test_sdpa_matches_the_reference_with_fully_masked_rows(kind, constant, fill, monkeypatch):
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", _gpu_like_sdpa(fill))
    seed = fresh_seed()
    torch.manual_seed(seed)
    q, k, v = torch.randn(B, H, SQ, D), torch.randn(B, H, SKV, D), torch.randn(B, H, SKV, D)
    mask = _masks(kind)
    layer, ctx = _layer(mask, constant)
    out = SDPA.run(SDPA.prepare(layer, ctx), [q, k, v, mask])[0]
    m64 = mask if mask.dtype == torch.bool else mask.double()
    want = reference_kernel(LayerKind.ATTENTION)(AttentionParams(), q.double(), k.double(), v.double(), m64)[0]
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5, msg=lambda s: f"seed={seed}\n{s}")
    if kind != "additive":
        assert not want[1 if kind == "bool_dead_row" else 0, :, 4 if kind == "bool_dead_row" else 2].any()


def test_sdpa_skips_the_row_check_when_a_constant_mask_masks_no_row():
    mask = _masks("additive")
    assert SDPA.prepare(*_layer(mask, constant=True))[1] is False
    assert SDPA.prepare(*_layer(mask, constant=False))[1] is True       # known only at run time
    assert SDPA.prepare(*_layer(_masks("bool_dead_row"), constant=True))[1] is True
    assert SDPA.prepare(*_layer(None, constant=False))[1] is False
