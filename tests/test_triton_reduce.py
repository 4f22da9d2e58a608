"""``cuda.reduce.triton_spatial`` and ``cuda.squeeze_excitation.triton`` (whose first kernel is the
spatial reduce's) against the CPU reference kernels, under Triton's interpreter.

Same setup as test_triton_pool.py: TRITON_INTERPRET=1 is set before kilnrt's kernels are defined,
so they run on CPU tensors; skipped on GPU machines (``tests/test_cuda.py`` runs the tactic there).
Both layouts, odd channel counts (not a multiple of the 64-channel block), one pixel, the pixels
split in uneven parts over several programs, the SE gate's channels split over programs, and the
declines.
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
from kilnrt.kernels.triton import reduce, squeeze_excitation as se  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.network.layers import (ActivationType as A, LayerKind, ReduceOperation as R, ReduceParams,  # noqa: E402
                                   SqueezeExcitationParams)
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


SE_CASES = [  # (x shape, squeezed width, activation, gate, bias)
    ((1, 40, 9, 7), 10, A.SILU, A.SIGMOID, True),            # EfficientNet
    ((2, 72, 5, 5), 24, A.RELU, A.HARD_SIGMOID, True),       # MobileNetV3: ReLU, hard sigmoid 1/6, 0.5
    ((3, 130, 4, 3), 5, None, A.SIGMOID, False),             # no activation, no biases, odd sizes
]


@pytest.mark.parametrize("plan,groups", [(None, None), ((8, 16, 5), None), (None, 1)],
                         ids=["auto", "5splits", "1program"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,s,act,gate,bias", SE_CASES)
def test_squeeze_excitation_gate_matches_the_reference(shape, s, act, gate, bias, dtype, plan, groups):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    w1 = (torch.randn(s, c, 1, 1, generator=g) / c ** 0.5).to(dtype)
    w2 = (torch.randn(c, s, 1, 1, generator=g) * 2 / s ** 0.5).to(dtype)
    b1, b2 = (torch.randn(s, generator=g).to(dtype), torch.randn(c, generator=g).to(dtype)) if bias else (None, None)
    hs = (1 / 6, 0.5) if gate == A.HARD_SIGMOID else (0.0, 0.0)
    p = SqueezeExcitationParams(act, gate, gate_alpha=hs[0], gate_beta=hs[1])
    want = reference_kernel(LayerKind.SQUEEZE_EXCITATION)(p, *(None if t is None else t.double()
                                                                for t in (x, w1, b1, w2, b2)))
    flat = lambda t: t.reshape(t.shape[0], -1).contiguous()  # noqa: E731
    got = se.se_gate(x, flat(w1), b1, flat(w2), b2, se.EPILOGUE_ACTIVATIONS[act], se.EPILOGUE_ACTIVATIONS[gate],
                     (0.0, 0.0) + hs, plan, groups)
    assert got.shape == want.shape and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    assert_close(got.double(), want, rtol=tol, atol=tol, seed=seed)


def test_squeeze_excitation_tactic_declines():
    from kilnrt.network.graph import Network

    t = get_tactic("cuda.squeeze_excitation.triton")
    p = SqueezeExcitationParams(A.SILU, A.SIGMOID)

    def se_layer(s=4, c=8, w2_shape=None, act=A.SILU):
        net = Network()
        ins = [net.add_input("x", DataType.HALF, (1, c, 3, 3)), net.add_input("w1", DataType.HALF, (s, c, 1, 1)),
               net.add_input("b1", DataType.HALF, (s,)), net.add_input("w2", DataType.HALF, w2_shape or (c, s, 1, 1))]
        consts = {"w1": torch.randn(s, c, 1, 1), "b1": torch.randn(s), "w2": torch.randn(*(w2_shape or (c, s, 1, 1)))}
        layer = net.add_layer(LayerKind.SQUEEZE_EXCITATION, SqueezeExcitationParams(act, A.SIGMOID), ins)
        return layer, TacticContext(torch.device("cpu"), consts)

    assert t.supports(*se_layer()) and p.gate == A.SIGMOID
    assert not t.supports(*se_layer(s=300))                       # wider than one register block
    assert not t.supports(*se_layer(w2_shape=(8, 5, 1, 1)))       # w2 does not match w1
    assert not t.supports(*se_layer(act=A.MISH))                  # not an epilogue activation
    layer, ctx = se_layer()
    ctx.constants.pop("b1")
    assert not t.supports(layer, ctx)                             # a bias that is not a constant
