"""Tactics whose outputs are views of their inputs, against the reference kernels (CPU tensors)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before triton is imported: Triton tactics run interpreted here
    os.environ["TRITON_INTERPRET"] = "1"

import kilnrt.kernels.cuda  # noqa: F401,E402  (registers the CUDA tactics; their views run on any tensor)
from kilnrt.kernels.registry import TacticContext, get_tactic, reference_kernel
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.layers import GatherMode, GatherParams, LayerKind
from kilnrt.testing import fresh_seed


def _gather_layer(shape, indices, axis, mode=GatherMode.DEFAULT):
    net = Network()
    data = net.add_input("data", DataType.FLOAT, shape)
    idx = net.add_input("idx", DataType.INT64, tuple(indices.shape))
    layer = net.add_layer(LayerKind.GATHER, GatherParams(axis=axis, mode=mode), [data, idx])
    return layer, TacticContext(torch.device("cpu"), {"idx": indices})


@pytest.mark.parametrize("shape,indices,axis", [
    ((3, 5, 7), torch.tensor(1), 0),
    ((3, 5, 7), torch.tensor(-1), 0),
    ((3, 5, 7), torch.tensor(4), 1),
    ((3, 5, 7), torch.tensor(-7), -1),
    ((3, 5, 7), torch.tensor([1, 3, 5]), 2),
    ((3, 5, 7), torch.tensor([-4, -3]), 1),
    ((6, 2), torch.tensor([0]), 0),
    ((1, 9), torch.tensor([2, 4, 6, 8], dtype=torch.int32), 1),
])
def test_gather_view_matches_reference_and_copies_nothing(shape, indices, axis):
    seed = fresh_seed()
    torch.manual_seed(seed)
    x = torch.randn(shape)
    layer, ctx = _gather_layer(shape, indices, axis)
    tac = get_tactic("cuda.gather.view")
    assert tac.supports(layer, ctx)
    out = tac.run(tac.prepare(layer, ctx), [x, indices])[0]
    ref = reference_kernel(LayerKind.GATHER)(layer.params, x, indices)
    assert out.shape == ref.shape, seed
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()  # a view, not a copy


@pytest.mark.parametrize("indices,axis,mode", [
    (torch.tensor([2, 1]), 1, GatherMode.DEFAULT),      # descending: not a forward slice
    (torch.tensor([0, 1, 3]), 1, GatherMode.DEFAULT),   # not an arithmetic progression
    (torch.tensor([[0, 1]]), 1, GatherMode.DEFAULT),    # 2-D indices
    (torch.tensor(5), 1, GatherMode.DEFAULT),           # out of range: left to the reference's error
    (torch.tensor([1, 1]), 1, GatherMode.DEFAULT),      # repeated
    (torch.tensor([[1, 0, 2]]), 0, GatherMode.ELEMENT),
])
def test_gather_view_declines_what_is_not_a_view(indices, axis, mode):
    layer, ctx = _gather_layer((3, 5, 7), indices, axis, mode)
    assert not get_tactic("cuda.gather.view").supports(layer, ctx)


def test_gather_view_needs_constant_indices():
    layer, _ = _gather_layer((3, 5, 7), torch.tensor(1), 0)
    assert not get_tactic("cuda.gather.view").supports(layer, TacticContext(torch.device("cpu"), {}))
