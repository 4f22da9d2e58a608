"""``cuda.reduce.triton_spatial`` against the CPU reference reduce kernel, under Triton's interpreter.

Same setup as test_triton_pool.py: TRITON_INTERPRET=1 is set before kilnrt's kernels are defined,
so they run on CPU tensors; skipped on GPU machines (``tests/test_cuda.py`` runs the tactic there).
Both layouts, odd channel counts (not a multiple of the 64-channel block), one pixel, the pixels
split in uneven parts over several programs, and the declines.
"""
from __future__ import annotations

import os

import pytest
import torch

if torch.cuda.is_available():  # the env var below would make every Triton tactic of this process interpreted
    pytest.skip("interpreter tests run on CPU machines", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from kilnrt.kernels.registry import TacticContext, get_tactic, reference_kernel  # noqa: E402
from kilnrt.kernels.triton import reduce  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.network.layers import LayerKind, ReduceOperation as R, ReduceParams  # noqa: E402
from kilnrt.testing import assert_close, fresh_seed  # noqa: E402

if not isinstance(reduce._spatial_partial, triton.runtime.interpreter.InterpretedFunction):
    pytest.skip("kilnrt.kernels.triton was imported before TRITON_INTERPRET=1 was set; run this file on its own",
                allow_module_level=True)

NAME = "cuda.reduce.triton_spatial"
CTX = TacticContext(torch.device("cpu"))
DT = {torch.float32: DataType.FLOAT, torch.float16: DataType.HALF, torch.bfloat16: DataType.BF16}


def layer(p, dtype=DataType.HALF, shape=(2, 3, 4, 5)):
    net = Network()
    return net.add_layer(LayerKind.REDUCE, p, [net.add_input("x", dtype, shape)])


@pytest.mark.parametrize("plan", [None, (8, 16, 3), (4, 64, 7)], ids=["auto", "3splits", "7splits"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 67, 9, 7), (1, 24, 1, 1), (3, 130, 5, 4)])
@pytest.mark.parametrize("op,keep", [(R.AVG, True), (R.SUM, False)])
def test_spatial_reduce_matches_the_reference(shape, dtype, channels_last, plan, op, keep):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    p = ReduceParams(op, (2, -1), keep)
    want = reference_kernel(LayerKind.REDUCE)(p, x.double())
    got = reduce.spatial_reduce(x, op == R.AVG, keep, plan)
    assert got.shape == want.shape and got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert_close(got.double(), want, rtol=tol, atol=tol * 4, seed=seed)


def test_tactic_runs_and_declines():
    t = get_tactic(NAME)
    mean = ReduceParams(R.AVG, (2, 3), True)
    assert t.supports(layer(mean), CTX)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float16)
    (y,) = t.run(t.prepare(layer(mean), CTX), [x])
    assert_close(y.double(), x.double().mean((2, 3), keepdim=True), rtol=2e-3, atol=2e-3)
    assert not t.supports(layer(ReduceParams(R.MAX, (2, 3))), CTX)              # max: not this kernel
    assert not t.supports(layer(ReduceParams(R.AVG, (1, 2, 3))), CTX)           # not exactly H and W
    assert not t.supports(layer(ReduceParams(R.AVG, None)), CTX)                # every axis
    assert not t.supports(layer(mean, shape=(2, 3, 4)), CTX)                     # not 4-D
    assert not t.supports(layer(mean, dtype=DataType.INT32), CTX)                # not a float
