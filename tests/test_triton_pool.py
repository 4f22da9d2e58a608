"""``cuda.pooling.triton_nhwc`` against the CPU reference pooling kernel, under Triton's interpreter.

Same setup as test_triton_kernels.py: TRITON_INTERPRET=1 is set before kilnrt's kernels are
defined, so they run on CPU tensors (small shapes); skipped on GPU machines, where
``benchmarks/pool_check.py`` checks and times the kernel instead.  Max pooling is exact, so
max results must equal the reference bit for bit (on the float32 copy of fp16/bf16 inputs).
"""
from __future__ import annotations

import os

import pytest
import torch

if torch.cuda.is_available():  # the env var below would make every Triton tactic of this process interpreted
    pytest.skip("interpreter tests run on CPU machines; on a GPU run benchmarks/pool_check.py",
                allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from kilnrt.kernels.registry import TacticContext, get_tactic, reference_kernel, tactics_for  # noqa: E402
from kilnrt.kernels.triton import pool  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.network.layers import LayerKind, PaddingMode as PM, PoolingParams, PoolingType as PT  # noqa: E402
from kilnrt.testing import fresh_seed  # noqa: E402

if not isinstance(pool._pool_nhwc, triton.runtime.interpreter.InterpretedFunction):
    pytest.skip("kilnrt.kernels.triton was imported before TRITON_INTERPRET=1 was set; run this file on its own",
                allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, on masked-out lanes

NAME = "cuda.pooling.triton_nhwc"
CTX = TacticContext(torch.device("cpu"))
DT = {torch.float32: DataType.FLOAT, torch.float16: DataType.HALF, torch.bfloat16: DataType.BF16}
DOWN, UP = PM.EXPLICIT_ROUND_DOWN, PM.EXPLICIT_ROUND_UP

WINDOWS = {  # the brief's windows: (window, stride, pre, post, dilation, mode)
    "2x2s2": ((2, 2), (2, 2), (0, 0), (0, 0), (1, 1), DOWN),
    "3x3s2p1": ((3, 3), (2, 2), (1, 1), (1, 1), (1, 1), DOWN),
    "3x3s1p1ceil": ((3, 3), (1, 1), (1, 1), (1, 1), (1, 1), UP),
    "5x3d2": ((5, 3), (1, 1), (0, 0), (0, 0), (2, 2), DOWN),
}


def params(kind, window, stride=(), pre=(), post=(), dil=(), mode=DOWN, exclude=True):
    return PoolingParams(kind, window, stride, pre, post, dil, mode, exclude)


def pid(p):
    """A short test id: type window/stride/pre/post/dilation mode."""
    parts = "/".join("x".join(map(str, v)) or "-" for v in (p.window_size_nd, p.stride_nd, p.pre_padding,
                                                              p.post_padding, p.dilation_nd))
    return f"{p.type.value}{parts}-{p.padding_mode.value}"


def make_layer(p, dtype, shape):
    net = Network()
    return net.add_layer(LayerKind.POOLING, p, [net.add_input("x", dtype, shape)])


def nonzero(shape, dtype=torch.float32):
    x = torch.randn(shape)
    return torch.where(x.abs() < 1e-2, torch.full_like(x, 0.5), x).to(dtype)


def run_tactic(p, x):
    tac = get_tactic(NAME)
    layer = make_layer(p, DT[x.dtype], tuple(x.shape))
    assert tac.supports(layer, CTX), f"{NAME} declined {p} {tuple(x.shape)} {x.dtype}"
    return tac.run(tac.prepare(layer, CTX), [x])[0]


def check(p, x, seed, exact=True):
    """The tactic's output equals (max) or is close to (average) the reference on float32 copies."""
    ref = reference_kernel(LayerKind.POOLING)(p, x.float())
    out = run_tactic(p, x)
    assert out.dtype == x.dtype and out.shape == ref.shape, f"{out.dtype}{tuple(out.shape)} vs {tuple(ref.shape)}"
    assert out.is_contiguous(memory_format=torch.channels_last)
    tol = {"rtol": 0.0, "atol": 0.0} if exact else \
        {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float16: {"rtol": 1e-2, "atol": 1e-2},
         torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}}[x.dtype]
    expected = ref.to(x.dtype).float() if exact else ref
    torch.testing.assert_close(out.float(), expected, equal_nan=True, **tol,
                               msg=lambda m: f"{p} {tuple(x.shape)} {x.dtype} seed={seed}\n{m}")


@pytest.fixture
def seed():
    s = fresh_seed()
    torch.manual_seed(s)
    return s


# ----------------------------------------------------------------------------- max: sizes and windows
# 112x112 with many channels is slow under the interpreter: only ResNet's stem pool there (N=1)
SIZES = [(2, c, h, w, win) for win in WINDOWS for c in (1, 3, 64, 65)
         for h, w in [(1, 1), (7, 7), (13, 7), (7, 13)] + ([(112, 112)] if c <= 3 else [])]
SIZES += [(1, 64, 112, 112, "3x3s2p1"), (1, 65, 112, 112, "2x2s2")]


@pytest.mark.parametrize("n,c,h,w,win", SIZES, ids=lambda v: str(v))
def test_max_matches_reference(n, c, h, w, win, seed):
    p = params(PT.MAX, *WINDOWS[win])
    x = nonzero((n, c, h, w)).contiguous(memory_format=torch.channels_last)
    try:
        reference_kernel(LayerKind.POOLING)(p, x)
    except RuntimeError:  # the window does not fit: the tactic defers to the reference, which says so
        with pytest.raises(RuntimeError, match="too small"):
            get_tactic(NAME).run(p, [x])
        return
    check(p, x, seed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_max_dtypes(dtype, seed):
    x = nonzero((2, 65, 13, 11), dtype).contiguous(memory_format=torch.channels_last)
    check(params(PT.MAX, *WINDOWS["3x3s2p1"]), x, seed)


@pytest.mark.parametrize("p", [
    params(PT.MAX, (3, 2), (2, 3), (2, 0), (0, 1), (1, 2), UP),          # asymmetric pads, ceil, dilation
    params(PT.MAX, (3, 3), (3, 3), (0, 0), (0, 0), (), UP),              # ceil: a partial last window
    params(PT.MAX, (2, 2), (), (1, 1), (1, 1)),                          # stride defaults to 1
    params(PT.MAX, (4, 3), (2, 2), (), (), (), PM.SAME_UPPER),
    params(PT.MAX, (4, 3), (2, 2), (), (), (), PM.SAME_LOWER),
    params(PT.MAX, (1, 1), (2, 2)),
], ids=pid)
def test_max_padding_modes(p, seed):
    check(p, nonzero((2, 5, 10, 9)).contiguous(memory_format=torch.channels_last), seed)


def test_max_nan_and_inf_propagate(seed):
    x = nonzero((1, 4, 6, 6))
    x[0, 0, 2, 3] = float("nan")
    x[0, 1, 0, 0] = float("inf")
    x[0, 2] = float("-inf")
    check(params(PT.MAX, *WINDOWS["3x3s2p1"]), x.contiguous(memory_format=torch.channels_last), seed)


def test_max_nan_in_a_ceil_mode_window_is_nan_as_in_the_reference(seed):
    """Ceil mode's extra end cells are not numbers (explicit padding is): a last window holding
    only NaN and extra cells gives NaN, as the reference gives."""
    x = nonzero((1, 2, 3, 3))
    x[0, 0, 2, 2] = float("nan")
    x[0, 1, 2, :] = float("nan")
    p = params(PT.MAX, (2, 2), (2, 2), (), (), (), UP)
    ref = reference_kernel(LayerKind.POOLING)(p, x)
    assert torch.isnan(ref[0, 0, 1, 1]) and torch.isnan(ref[0, 1, 1]).all()
    check(p, x.contiguous(memory_format=torch.channels_last), seed)


def test_max_all_padding_window_is_minus_inf(seed):
    """A window wholly inside the padding sees only -inf, as the reference's padded input does."""
    check(params(PT.MAX, (2, 2), (3, 3), (2, 2), (2, 2)), nonzero((1, 3, 4, 4)), seed)


# ----------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
def test_any_input_layout_gives_channels_last_output(layout, seed):
    x = nonzero((2, 6, 9, 11))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = nonzero((2, 12, 9, 22))[:, ::2, :, ::2]
    check(params(PT.MAX, *WINDOWS["3x3s2p1"]), x, seed)


# ----------------------------------------------------------------------------- average
@pytest.mark.parametrize("exclude", [True, False], ids=["excl_pad", "incl_pad"])
@pytest.mark.parametrize("p", [
    params(PT.AVERAGE, (3, 3), (2, 2), (1, 1), (1, 1), (), UP),
    params(PT.AVERAGE, (3, 2), (2, 2), (2, 0), (0, 1), (), UP),          # asymmetric pads + ceil extra cells
    params(PT.AVERAGE, (3, 3), (1, 1), (1, 1), (1, 1), (2, 2), DOWN),
    params(PT.AVERAGE, (2, 2), (2, 2)),
    params(PT.AVERAGE, (4, 3), (2, 2), (), (), (), PM.SAME_UPPER),
], ids=pid)
def test_average_count_semantics(p, exclude, seed):
    import dataclasses

    p = dataclasses.replace(p, average_count_excludes_padding=exclude)
    check(p, nonzero((2, 5, 10, 8)).contiguous(memory_format=torch.channels_last), seed, exact=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_average_low_precision(dtype, seed):
    x = nonzero((2, 65, 9, 9), dtype).contiguous(memory_format=torch.channels_last)
    check(params(PT.AVERAGE, (3, 3), (2, 2), (1, 1), (1, 1), (), UP, exclude=False), x, seed, exact=False)


# ----------------------------------------------------------------------------- supports
@pytest.mark.parametrize("p,dtype,shape", [
    (params(PT.LP, (2, 2), (2, 2)), DataType.FLOAT, (1, 3, 8, 8)),                 # LP pooling
    (params(PT.MAX, (2,), (2,)), DataType.FLOAT, (1, 3, 8)),                        # 1-D
    (params(PT.MAX, (2, 2, 2), (2, 2, 2)), DataType.FLOAT, (1, 3, 8, 8, 8)),        # 3-D
    (params(PT.MAX, (2, 2), (2, 2)), DataType.DOUBLE, (1, 3, 8, 8)),
    (params(PT.MAX, (2, 2), (2, 2)), DataType.INT32, (1, 3, 8, 8)),
    (params(PT.MAX, (12, 12), (1, 1)), DataType.HALF, (1, 3, 32, 32)),              # 144 taps > MAX_TAPS
], ids=lambda v: pid(v) if isinstance(v, PoolingParams) else str(v))
def test_declines(p, dtype, shape):
    assert not get_tactic(NAME).supports(make_layer(p, dtype, shape), CTX)


def test_supports_symbolic_batch_and_spatial():
    layer = make_layer(params(PT.MAX, *WINDOWS["3x3s2p1"]), DataType.HALF, ("batch", 64, "h", "w"))
    assert get_tactic(NAME).supports(layer, CTX)


def test_registered_beside_native_for_average_pooling_only():
    """PyTorch's max_pool2d propagates NaN, so max pooling never gets it: the tactic the
    builder picks cannot change what NaN gives."""
    average = make_layer(params(PT.AVERAGE, *WINDOWS["3x3s2p1"]), DataType.HALF, (4, 64, 112, 112))
    assert {NAME, "cuda.pooling.native"} <= {t.name for t in tactics_for(average, "cuda", CTX)}
    for dtype in (DataType.HALF, DataType.FLOAT, DataType.INT8):
        maximum = make_layer(params(PT.MAX, *WINDOWS["3x3s2p1"]), dtype, (4, 64, 112, 112))
        assert "cuda.pooling.native" not in {t.name for t in tactics_for(maximum, "cuda", CTX)}


def test_plans_whose_max_pools_ran_pytorchs_pooling_still_run_them_right():
    """A plan built when cuda.pooling.native also served max pooling names it for a MaxPool
    layer: it runs the reference there (NaN skipped), never average pooling."""
    x = nonzero((1, 3, 6, 6))
    x[0, 0, 1, 1] = float("nan")
    p = params(PT.MAX, *WINDOWS["3x3s2p1"])
    out = get_tactic("cuda.pooling.native").run(p, [x])[0]
    torch.testing.assert_close(out, reference_kernel(LayerKind.POOLING)(p, x), equal_nan=True, rtol=0, atol=0)
