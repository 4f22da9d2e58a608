"""kilnrt's INT8 Triton tactics (GEMM and implicit-GEMM convolution, the activation quantized in
the kernel) against the exact reference kernels of the quantized layers, on fresh random
inputs: signed and unsigned activations, zero points, bias, residual, activation, padding,
strides and a stem's few channels.  Off a GPU the kernels run under Triton's interpreter."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before triton is imported: other files run its kernels interpreted
    os.environ["TRITON_INTERPRET"] = "1"

import kilnrt.kernels.cpu  # noqa: F401,E402  (registers the reference kernels)
import kilnrt.kernels.cuda  # noqa: F401,E402  (registers the CUDA tactics)
from kilnrt.kernels.cpu.quantized import quantized_convolution, quantized_matrix_multiply  # noqa: E402
from kilnrt.kernels.registry import TacticContext, get_tactic  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.network.layers import (ActivationType as A, LayerKind, MatrixOperation,  # noqa: E402
                                   QuantizedConvolutionParams, QuantizedMatrixMultiplyParams)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; run this file on its own",
                allow_module_level=True)
QUANT = [(DataType.INT8, 0), (DataType.UINT8, 128), (DataType.UINT8, 37), (DataType.INT8, -5)]


def _context(consts: dict) -> TacticContext:
    return TacticContext(DEVICE, {k: v.to(DEVICE) for k, v in consts.items()})


def _implicit_conv(p, x_type: DataType, x_shape, w: torch.Tensor, w_type: DataType, w_scale: torch.Tensor,
                   bias: torch.Tensor, residual_shape=None):
    """(tactic, state): the implicit-GEMM Triton tactic prepared for a QUANTIZED_CONVOLUTION layer
    of ``p`` reading x, w, its scales, the bias and an optional residual, which it must support."""
    net = Network()
    ins = [net.add_input("x", x_type, tuple(x_shape)), net.add_input("w", w_type, tuple(w.shape)),
           net.add_input("s", DataType.FLOAT, tuple(w_scale.shape)),
           net.add_input("b", DataType.FLOAT, tuple(bias.shape))]
    if residual_shape is not None:
        ins.append(net.add_input("r", DataType.FLOAT, tuple(residual_shape)))
    layer = net.add_layer(LayerKind.QUANTIZED_CONVOLUTION, p, ins)
    ctx = _context({"w": w, "s": w_scale, "b": bias})
    tactic = get_tactic("cuda.quantized_convolution.triton_implicit_64x64x32_s4_w4")
    assert tactic.supports(layer, ctx)
    return tactic, tactic.prepare(layer, ctx)


def _check(y: torch.Tensor, ref: torch.Tensor, step: torch.Tensor, w: torch.Tensor) -> None:
    """Exact integer sums, then float32 scales: outputs within one output step (``input_scale *
    weight_scale``) of the reference.  The kernel quantizes with ``x * (1 / scale)``, the reference
    with ``x / scale``; where one input value lies within an ulp of a rounding tie they differ by one
    input step, which moves its outputs by at most ``max|w|`` steps: allowed on 0.5% of outputs."""
    steps = (y.double().cpu() - ref.double().cpu()).abs() / step
    assert y.shape == ref.shape
    assert float((steps > 1.0 + 1e-3).double().mean()) <= 0.005, "more outputs off than rounding ties explain"
    assert float(steps.max()) <= float(w.abs().max()) + 1.0


@pytest.mark.parametrize("input_type,zero_point", QUANT)
@pytest.mark.parametrize("k,transpose,act", [(64, True, A.RELU), (96, False, A.GELU_ERF), (80, True, None)])
def test_gemm_matches_the_exact_integer_reference(input_type, zero_point, k, transpose, act):
    g = torch.Generator().manual_seed(k + zero_point)
    m, n = 37, 48
    scale = 0.02
    x = torch.randn(m, k, generator=g) * 1.5 + (1.2 if input_type == DataType.UINT8 else 0.0)
    w = torch.randint(-127, 128, (n, k) if transpose else (k, n), generator=g, dtype=torch.int8)
    w_scale = torch.rand(n, generator=g) * 0.01 + 1e-3
    bias = torch.randn(n, generator=g)
    p = QuantizedMatrixMultiplyParams(op1=MatrixOperation.TRANSPOSE if transpose else MatrixOperation.NONE,
                                      activation=act, input_scale=scale, input_zero_point=zero_point,
                                      input_type=input_type)
    net = Network()
    ins = [net.add_input("x", DataType.FLOAT, (m, k)), net.add_input("w", DataType.INT8, tuple(w.shape)),
           net.add_input("s", DataType.FLOAT, (n,)), net.add_input("b", DataType.FLOAT, (n,))]
    layer = net.add_layer(LayerKind.QUANTIZED_MATRIX_MULTIPLY, p, ins)
    ctx = _context({"w": w, "s": w_scale, "b": bias})
    tactic = get_tactic("cuda.quantized_matrix_multiply.triton_32x64x256_s3_w4")
    assert tactic.supports(layer, ctx)
    y = tactic.run(tactic.prepare(layer, ctx), [x.to(DEVICE)])[0]
    ref = quantized_matrix_multiply(p, x.double(), w, w_scale, bias.double())
    _check(y, ref, w_scale.double() * scale, w)


@pytest.mark.parametrize("input_type,zero_point", QUANT[:3])
@pytest.mark.parametrize("c,window,stride,pad", [(32, 3, 1, 1), (3, 3, 2, 1), (64, 1, 1, 0), (40, 3, 2, 0)])
def test_convolution_matches_the_exact_integer_reference(input_type, zero_point, c, window, stride, pad):
    g = torch.Generator().manual_seed(c * window + zero_point)
    n, h, w_, k = 2, 9, 8, 16
    scale = 0.03
    x = torch.randn(n, c, h, w_, generator=g) + (1.0 if input_type == DataType.UINT8 else 0.0)
    w = torch.randint(-127, 128, (k, c, window, window), generator=g, dtype=torch.int8)
    w_scale = torch.rand(k, generator=g) * 0.01 + 1e-3
    bias = torch.randn(k, generator=g)
    oh, ow = (h + 2 * pad - window) // stride + 1, (w_ + 2 * pad - window) // stride + 1
    residual = torch.randn(n, k, oh, ow, generator=g)
    p = QuantizedConvolutionParams(num_output_maps=k, kernel_size_nd=(window, window), stride_nd=(stride, stride),
                                   pre_padding=(pad, pad), post_padding=(pad, pad), activation=A.RELU,
                                   input_scale=scale, input_zero_point=zero_point, input_type=input_type)
    tactic, state = _implicit_conv(p, DataType.FLOAT, (n, c, h, w_), w, DataType.INT8, w_scale, bias, residual.shape)
    y = tactic.run(state, [x.to(DEVICE), None, None, None, residual.to(DEVICE)])[0]
    ref = quantized_convolution(p, x.double(), w, w_scale, bias.double(), residual.double())
    _check(y, ref, (w_scale.double() * scale).view(1, -1, 1, 1), w)


def test_declines_what_it_cannot_run():
    net = Network()
    ins = [net.add_input("x", DataType.FLOAT, (4, 64)), net.add_input("w", DataType.FLOAT, (48, 64)),
           net.add_input("s", DataType.FLOAT, (48,))]
    p = QuantizedMatrixMultiplyParams(op1=MatrixOperation.TRANSPOSE, input_scale=0.1)
    layer = net.add_layer(LayerKind.QUANTIZED_MATRIX_MULTIPLY, p, ins)
    tactic = get_tactic("cuda.quantized_matrix_multiply.triton_32x64x256_s3_w4")
    assert not tactic.supports(layer, _context({"w": torch.randn(48, 64), "s": torch.rand(48)}))   # float weights
    assert tactic.supports(layer, _context({"w": torch.randint(-9, 9, (48, 64), dtype=torch.int8),
                                            "s": torch.rand(48)}))


# ----------------------------------------------------------------------------- 8-bit in, 8-bit out
def _gemm_layer(p, m, k, n, x_dtype, w_dtype):
    net = Network()
    ins = [net.add_input("x", x_dtype, (m, k)), net.add_input("w", w_dtype, (n, k)),
           net.add_input("s", DataType.FLOAT, (n,)), net.add_input("b", DataType.FLOAT, (n,))]
    return net.add_layer(LayerKind.QUANTIZED_MATRIX_MULTIPLY, p, ins)


# Triton's interpreter converts float32 to E4M3 wrongly where rounding carries into the exponent
# (-7.98 became -4.0, not -8.0, under Triton 3.9's interpreter); GPUs convert in hardware
INTERPRETED_FP8_CAST = pytest.mark.skipif(
    DEVICE.type == "cpu", reason="Triton's interpreter rounds float32 -> float8e4nv wrongly across a binade")


def _fp8_weights(g, shape):
    return (torch.randn(shape, generator=g) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)


@pytest.mark.parametrize("input_type", [DataType.INT8, DataType.FP8])
@pytest.mark.parametrize("prequantized", [False, True])
@pytest.mark.parametrize("out_type", [None, DataType.INT8, DataType.FP8])
def test_gemm_reads_and_writes_8_bit_tensors(input_type, prequantized, out_type):
    """An activation quantized upstream is multiplied as it is; with an output scale the epilogue
    requantizes (INT8: round half to even, saturate; FP8: a saturating cast)."""
    if DEVICE.type == "cpu" and (out_type == DataType.FP8 or (input_type == DataType.FP8 and not prequantized)):
        pytest.skip("Triton's interpreter rounds float32 -> float8e4nv wrongly across a binade (GPU only)")
    g = torch.Generator().manual_seed(7 + 3 * prequantized + (out_type is not None))
    m, k, n = 33, 64, 48
    scale, out_scale = 0.02, 0.05
    # INT8: within a quarter step of an integer, never near a rounding tie (the kernel multiplies by
    # 1 / scale where the reference divides: _check)
    x = (torch.randint(-150, 150, (m, k), generator=g) + torch.rand(m, k, generator=g) * 0.5 - 0.25) * scale
    fp8 = input_type == DataType.FP8
    w = _fp8_weights(g, (n, k)) if fp8 else torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    w_scale = torch.rand(n, generator=g) * 0.01 + 1e-3
    bias = torch.randn(n, generator=g)
    p = QuantizedMatrixMultiplyParams(op1=MatrixOperation.TRANSPOSE, activation=A.RELU, input_scale=scale,
                                      input_type=input_type, output_type=out_type or DataType.FLOAT,
                                      output_scale=out_scale if out_type is not None else 0.0)
    if prequantized:   # the reference's own quantization: the kernel must read it as it is
        from kilnrt.kernels.cpu.quantized import quantize_values

        x = quantize_values(x, scale, 0, input_type)
    layer = _gemm_layer(p, m, k, n, DataType.from_torch(x.dtype), DataType.from_torch(w.dtype))
    ctx = _context({"w": w, "s": w_scale, "b": bias})
    tactic = get_tactic("cuda.quantized_matrix_multiply.triton_32x64x256_s3_w4")
    assert tactic.supports(layer, ctx)
    y = tactic.run(tactic.prepare(layer, ctx), [x.to(DEVICE)])[0]
    ref = quantized_matrix_multiply(p, x if prequantized else x.double(), w, w_scale, bias.double())
    assert y.dtype == ref.dtype == (out_type or DataType.FLOAT).torch
    got, want = y.cpu().double(), ref.double()
    if out_type is None:
        step = w_scale.double() * scale * (1 if not fp8 else 2.0 ** -3 * float(w.float().abs().max()))
        _check(y, ref, step, w if not fp8 else torch.ones(1)) if not fp8 else \
            torch.testing.assert_close(got, want, rtol=0.07, atol=float(step.max()))
    elif out_type == DataType.INT8:   # one output step at a rounding tie of the requantization
        diff = (got - want).abs()
        assert float(diff.max()) <= (1 if prequantized or fp8 else 8) and float((diff > 0).double().mean()) <= 0.05
    else:                             # FP8 output: within one E4M3 step (2^-3 relative) of the reference
        torch.testing.assert_close(got, want, rtol=0.13, atol=2.0 ** -9 * 4)
    assert float(want.abs().max()) > 0


@pytest.mark.parametrize("to,zero_point", [(DataType.INT8, 0), (DataType.UINT8, 128), (DataType.INT8, -3),
                                           pytest.param(DataType.FP8, None, marks=INTERPRETED_FP8_CAST)])
def test_quantize_kernel_matches_the_reference_and_keeps_the_layout(to, zero_point):
    from kilnrt.kernels.cpu.quantize import quantize
    from kilnrt.network.layers import QuantizeParams

    g = torch.Generator().manual_seed(11)
    x = (torch.randn(2, 8, 5, 6, generator=g) * 3).contiguous(memory_format=torch.channels_last)
    scale = torch.tensor(0.037)
    net = Network()
    ins = [net.add_input("x", DataType.FLOAT, tuple(x.shape)), net.add_input("s", DataType.FLOAT, ())]
    consts = {"s": scale}
    if zero_point is not None:
        ins.append(net.add_input("z", to, ()))
        consts["z"] = torch.tensor(zero_point, dtype=to.torch)
    p = QuantizeParams(axis=0, to_type=to)
    layer = net.add_layer(LayerKind.QUANTIZE, p, ins)
    ctx = _context(consts)
    tactic = get_tactic("cuda.quantize.triton")
    assert tactic.supports(layer, ctx)
    y = tactic.run(tactic.prepare(layer, ctx), [x.to(DEVICE)])[0]
    assert y.dtype == to.torch and y.is_contiguous(memory_format=torch.channels_last)
    ref = quantize(p, x, scale, consts.get("z"))
    diff = (y.cpu().double() - ref.double()).abs()
    if to == DataType.FP8:
        torch.testing.assert_close(y.cpu().double(), ref.double(), rtol=0.0, atol=0.0)
    else:   # x * (1 / scale) against x / scale: one step where x / scale is within an ulp of a tie
        assert float(diff.max()) <= 1 and float((diff > 0).double().mean()) <= 0.005
        assert len(torch.unique(y)) > 20


@pytest.mark.parametrize("out_type", [None, DataType.INT8])
def test_convolution_reads_int8_and_requantizes(out_type):
    g = torch.Generator().manual_seed(21)
    n, c, h, w_, k = 2, 32, 7, 6, 16
    scale, out_scale = 0.03, 0.04
    from kilnrt.kernels.cpu.quantized import quantize_values

    x = quantize_values(torch.randn(n, c, h, w_, generator=g), scale, 0, DataType.INT8)
    w = torch.randint(-127, 128, (k, c, 3, 3), generator=g, dtype=torch.int8)
    w_scale = torch.rand(k, generator=g) * 0.01 + 1e-3
    bias = torch.randn(k, generator=g)
    p = QuantizedConvolutionParams(num_output_maps=k, kernel_size_nd=(3, 3), pre_padding=(1, 1), post_padding=(1, 1),
                                   activation=A.RELU, input_scale=scale, output_type=out_type or DataType.FLOAT,
                                   output_scale=out_scale if out_type else 0.0)
    tactic, state = _implicit_conv(p, DataType.INT8, x.shape, w, DataType.INT8, w_scale, bias)
    y = tactic.run(state, [x.to(DEVICE).contiguous(memory_format=torch.channels_last)])[0]
    ref = quantized_convolution(p, x, w, w_scale, bias.double())
    assert y.dtype == ref.dtype
    diff = (y.cpu().double() - ref.double()).abs()
    if out_type is None:   # exact integer sums: only float32 rounding of the scaled result differs
        torch.testing.assert_close(y.cpu().double(), ref.double(), rtol=1e-5, atol=1e-6)
    else:
        assert float(diff.max()) <= 1 and float((diff > 0).double().mean()) <= 0.01
        assert len(torch.unique(y)) > 20


@INTERPRETED_FP8_CAST
@pytest.mark.parametrize("c,window,stride,pad", [(3, 3, 2, 1), (32, 3, 1, 1), (64, 1, 1, 0)])
def test_fp8_convolution_matches_the_reference(c, window, stride, pad):
    """FP8 E4M3 implicit-GEMM convolution, the activation quantized in the kernel (a stem's 3
    channels included): within E4M3's rounding of the reference (float32 accumulation on the GPU's
    FP8 tensor cores keeps fewer bits than float64)."""
    g = torch.Generator().manual_seed(c + window)
    n, h, w_, k = 2, 9, 8, 16
    scale = 4.0 / 448
    x = torch.randn(n, c, h, w_, generator=g)
    w = _fp8_weights(g, (k, c, window, window))
    w_scale = torch.rand(k, generator=g) * 0.01 + 1e-3
    bias = torch.randn(k, generator=g)
    p = QuantizedConvolutionParams(num_output_maps=k, kernel_size_nd=(window, window), stride_nd=(stride, stride),
                                   pre_padding=(pad, pad), post_padding=(pad, pad), input_scale=scale,
                                   input_type=DataType.FP8)
    tactic, state = _implicit_conv(p, DataType.FLOAT, x.shape, w, DataType.FP8, w_scale, bias)
    y = tactic.run(state, [x.to(DEVICE)])[0]
    ref = quantized_convolution(p, x.double(), w, w_scale, bias.double())
    torch.testing.assert_close(y.cpu().double(), ref.double(), rtol=2e-2, atol=2e-2 * float(ref.abs().max()))
