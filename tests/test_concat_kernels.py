"""The kernels that store a layer's output straight into a slice of a concatenation's buffer
(``Tactic.run_into``) fill exactly their slice of a buffer pre-filled with NaN and match a
float64 reference: the Triton GEMM, split-K GEMM, 1x1 and implicit-GEMM convolutions (on a GPU
when there is one, else under Triton's interpreter), and the CPU ``out=`` activation and
elementwise ops; and ``Tactic.can_write_into`` declines the views they cannot store into.
The builder and runtime around them: tests/test_concat_elimination.py.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before triton is imported: the kernels run interpreted on CPU tensors
    os.environ["TRITON_INTERPRET"] = "1"

from kilnrt.kernels.registry import TacticContext, get_tactic, reference_kernel  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.network.layers import (ActivationParams, ActivationType as A, ConvolutionParams,  # noqa: E402
                                   ElementWiseOperation as E, ElementWiseParams, LayerKind, MatrixMultiplyParams,
                                   MatrixOperation)
from kilnrt.testing import fresh_seed  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def seed():
    s = fresh_seed()
    torch.manual_seed(s)
    return s


def nonzero(shape, dtype=torch.float32, device="cpu"):
    x = torch.randn(shape)
    x = torch.where(x.abs() < 1e-2, torch.full_like(x, 0.5), x)
    return x.to(dtype).to(device)


def sentinel_buffer(shape, dtype, channels_last=False):
    buf = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    return buf.contiguous(memory_format=torch.channels_last) if channels_last else buf


def assert_only_slice_written(buf, axis, start, size, ref, seed, tol=2e-2):
    """The slice matches ``ref`` (float64) and every element outside it is still NaN."""
    got = buf.narrow(axis, start, size)
    assert not torch.isnan(got).any(), f"the slice has unwritten elements (seed={seed})"
    torch.testing.assert_close(got.double().cpu(), ref.double().cpu(), rtol=tol, atol=tol,
                               msg=lambda m: f"seed={seed}\n{m}")
    before = buf.narrow(axis, 0, start)
    after = buf.narrow(axis, start + size, buf.shape[axis] - start - size)
    assert torch.isnan(before).all() and torch.isnan(after).all(), f"wrote outside its slice (seed={seed})"

# ----------------------------------------------------------------------------- Triton kernels into a slice
def _triton_ready() -> bool:
    import triton

    from kilnrt.kernels.triton import gemm

    return DEVICE.type == "cuda" or isinstance(gemm._gemm, triton.runtime.interpreter.InterpretedFunction)


triton_slices = pytest.mark.skipif(not _triton_ready(), reason="kilnrt.kernels.triton was imported before "
                                   "TRITON_INTERPRET=1 was set; run this file on its own")


def _matmul_layer(lead, k, n, act):
    net = Network()
    ins = [net.add_input("x", DataType.HALF, lead + (k,)), net.add_input("w", DataType.HALF, (n, k)),
           net.add_input("b", DataType.HALF, (n,))]
    params = MatrixMultiplyParams(op1=MatrixOperation.TRANSPOSE, activation=act)
    layer = net.add_layer(LayerKind.MATRIX_MULTIPLY, params, ins)
    w, b = (torch.randn(n, k) / k ** 0.5).half().to(DEVICE), torch.randn(n).half().to(DEVICE)
    return layer, TacticContext(DEVICE, {"w": w, "b": b}), w, b


def _gemm_names():
    from kilnrt.kernels.triton import conv_implicit, gemm

    return ([gemm.TritonGemm(*c).name for c in gemm.CONFIGS[:3]]
            + [conv_implicit.TritonSplitKGemm(*c).name for c in conv_implicit.SPLIT_K_GEMM_CONFIGS[:1]])


@triton_slices
@pytest.mark.parametrize("name", _gemm_names())
@pytest.mark.parametrize("lead,k,n,width,start", [((37,), 128, 40, 104, 24),    # a middle column slice
                                                  ((2, 9), 64, 24, 51, 27),      # the last one, odd width
                                                  ((1,), 512, 64, 72, 0)])       # batch 1 (split-K)
@pytest.mark.parametrize("act", [None, A.GELU_ERF])
def test_triton_gemm_writes_exactly_its_column_slice(name, lead, k, n, width, start, act, seed):
    layer, ctx, w, b = _matmul_layer(lead, k, n, act)
    tac = get_tactic(name)
    if not tac.supports(layer, ctx):
        pytest.skip(f"{name} does not take {lead} x {k} -> {n}")   # split-K only where it splits
    buf = sentinel_buffer(lead + (width,), torch.float16)
    view = buf.narrow(-1, start, n)
    assert tac.can_write_into(layer, ctx, torch.empty(buf.shape, dtype=buf.dtype, device="meta").narrow(-1, start, n))
    x = nonzero(lead + (k,), torch.float16, DEVICE)
    tac.run_into(tac.prepare(layer, ctx), [x, w, b], view)
    ref = reference_kernel(LayerKind.MATRIX_MULTIPLY)(layer.params, x.double().cpu(), w.double().cpu(),
                                                      b.double().cpu())
    assert_only_slice_written(buf, buf.dim() - 1, start, n, ref, seed)


def _conv_layer(c, k, x_shape, window, stride, pads, act, residual):
    params = ConvolutionParams(num_output_maps=k, kernel_size_nd=window, stride_nd=stride, pre_padding=pads,
                               post_padding=pads, activation=act)
    net = Network()
    ins = [net.add_input("x", DataType.HALF, x_shape), net.add_input("w", DataType.HALF, (k, c) + window),
           net.add_input("b", DataType.HALF, (k,))]
    out_hw = tuple((size + 2 * p - w) // s + 1 for size, p, w, s in zip(x_shape[2:], pads, window, stride))
    if residual:
        ins.append(net.add_input("r", DataType.HALF, (x_shape[0], k) + out_hw))
    layer = net.add_layer(LayerKind.CONVOLUTION, params, ins)
    w = (torch.randn((k, c) + window) / (c * window[0] * window[1]) ** 0.5).half().to(DEVICE)
    b = torch.randn(k).half().to(DEVICE)
    return layer, TacticContext(DEVICE, {"w": w, "b": b}), w, b, (x_shape[0], k) + out_hw


def _conv_names():
    from kilnrt.kernels.triton import conv_gemm, conv_implicit

    return ([conv_gemm.TritonConvGemm(*c).name for c in conv_gemm.CONFIGS[:2]]
            + [conv_implicit.TritonImplicitConv(*c).name
               for c in (conv_implicit.CONFIGS[0], conv_implicit.CONFIGS[-1])])


@triton_slices
@pytest.mark.parametrize("name", _conv_names())
@pytest.mark.parametrize("c,k,x_shape,window,stride,pads,act,residual,total,start", [
    (24, 40, (2, 24, 5, 7), (1, 1), (1, 1), (0, 0), A.RELU, False, 96, 32),       # 1x1, a middle slice
    (64, 32, (1, 64, 6, 5), (1, 1), (1, 1), (0, 0), None, True, 48, 16),          # 1x1 + residual, last slice
    (256, 64, (1, 256, 3, 3), (1, 1), (1, 1), (0, 0), A.RELU, False, 136, 40),    # few tiles: split K
    (64, 24, (2, 64, 7, 6), (3, 3), (1, 1), (1, 1), A.SILU, True, 88, 0),         # 3x3, the first slice
    (48, 16, (1, 48, 9, 8), (3, 3), (2, 2), (1, 1), None, False, 40, 8),          # stride 2, odd channels
])
def test_triton_conv_writes_exactly_its_channel_slice(name, c, k, x_shape, window, stride, pads, act, residual,
                                                      total, start, seed):
    layer, ctx, w, b, out_shape = _conv_layer(c, k, x_shape, window, stride, pads, act, residual)
    tac = get_tactic(name)
    if not tac.supports(layer, ctx):
        pytest.skip(f"{name} does not take this convolution")   # 1x1 GEMM vs implicit: see their supports
    buf = sentinel_buffer((out_shape[0], total) + out_shape[2:], torch.float16, channels_last=True)
    view = buf.narrow(1, start, k)
    meta = torch.empty(buf.shape, dtype=buf.dtype, device="meta", memory_format=torch.channels_last)
    assert tac.can_write_into(layer, ctx, meta.narrow(1, start, k))
    # a row-major (NCHW) buffer has no pixel rows with one stride: the tactic declines it
    nchw = torch.empty(buf.shape, dtype=buf.dtype, device="meta")
    assert not tac.can_write_into(layer, ctx, nchw.narrow(1, start, k))
    args = [nonzero(x_shape, torch.float16, DEVICE).contiguous(memory_format=torch.channels_last), w, b]
    if residual:
        args.append(nonzero(out_shape, torch.float16, DEVICE))
    tac.run_into(tac.prepare(layer, ctx), args, view)
    ref = reference_kernel(LayerKind.CONVOLUTION)(layer.params, *(a.double().cpu() for a in args))
    assert_only_slice_written(buf, 1, start, k, ref, seed)


@triton_slices
def test_triton_gemm_declines_views_without_one_row_stride():
    """A slice of a middle axis of a row-major buffer: its rows are not one stride apart."""
    layer, ctx, _, _ = _matmul_layer((2, 3), 64, 32, None)
    tac = get_tactic(_gemm_names()[0])
    def meta(*shape, dtype=torch.float16):
        return torch.empty(shape, dtype=dtype, device="meta")

    assert tac.can_write_into(layer, ctx, meta(2, 3, 48).narrow(2, 8, 32))
    assert tac.can_write_into(layer, ctx, meta(4, 3, 32).narrow(0, 1, 2))        # whole rows: one stride too
    assert not tac.can_write_into(layer, ctx, meta(2, 5, 32).narrow(1, 1, 3))
    assert not tac.can_write_into(layer, ctx, meta(2, 3, 48, dtype=torch.float32).narrow(2, 8, 32))


# ----------------------------------------------------------------------------- CPU out= kernels into a slice
def _pointwise_into_cases():
    from kilnrt.kernels.cpu.pointwise import _ACTIVATIONS_INTO, _ELEMENTWISE_INTO

    return ([("activation", a) for a in _ACTIVATIONS_INTO] + [("elementwise", op) for op in _ELEMENTWISE_INTO])


@pytest.mark.parametrize("kind,op", _pointwise_into_cases(), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["linear", "nhwc"])
def test_cpu_pointwise_writes_exactly_its_slice(kind, op, dtype, channels_last, seed):
    shape, total, start = (2, 6, 5, 3), 13, 4
    net = Network()
    if kind == "activation":
        layer = net.add_layer(LayerKind.ACTIVATION, ActivationParams(op, -0.7 if op == A.CLIP else 0.1, 0.9),
                              [net.add_input("x", DataType.from_torch(dtype), shape)])
        args = [nonzero(shape, dtype) * 2]
    else:
        layer = net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(op),
                              [net.add_input("a", DataType.from_torch(dtype), shape),
                               net.add_input("b", DataType.from_torch(dtype), (6, 1, 1))])
        args = [nonzero(shape, dtype), nonzero((6, 1, 1), dtype)]   # broadcast
    tac = get_tactic(f"cpu.{kind}.torch")
    buf = torch.full((2, total, 5, 3), float("nan"), dtype=dtype)
    buf = buf.contiguous(memory_format=torch.channels_last) if channels_last else buf
    view = buf.narrow(1, start, 6)
    assert tac.can_write_into(layer, TacticContext(torch.device("cpu")),
                              torch.empty(buf.shape, dtype=dtype, device="meta").narrow(1, start, 6))
    tac.run_into(tac.prepare(layer, None), args, view)
    ref = reference_kernel(layer.kind)(layer.params, *(a.double() for a in args))
    got = buf.narrow(1, start, 6)
    tol = 1e-6 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol, msg=lambda m: f"seed={seed}\n{m}")
    assert torch.isnan(buf.narrow(1, 0, start)).all() and torch.isnan(buf.narrow(1, start + 6, total - start - 6)).all()


@pytest.mark.parametrize("change", ["gelu", "int", "broadcast_out", "mod"])
def test_cpu_pointwise_declines_what_it_cannot_store(change):
    net = Network()
    dt = DataType.INT32 if change == "int" else DataType.FLOAT
    if change == "gelu":   # torch's CPU gelu(out=) leaves a strided out unwritten
        layer = net.add_layer(LayerKind.ACTIVATION, ActivationParams(A.GELU_ERF), [net.add_input("x", dt, (4, 6))])
    else:
        b_shape = (4, 6) if change != "broadcast_out" else (3, 4, 6)   # the result is larger than x
        op = E.MOD if change == "mod" else E.SUM
        layer = net.add_layer(LayerKind.ELEMENTWISE, ElementWiseParams(op),
                              [net.add_input("a", dt, (4, 6)), net.add_input("b", dt, b_shape)])
    out = torch.empty(4, 10, dtype=dt.torch, device="meta").narrow(1, 2, 6)
    assert not get_tactic(f"cpu.{layer.kind.value}.torch").can_write_into(layer, TacticContext(torch.device("cpu")),
                                                                         out)
