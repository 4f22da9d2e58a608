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
    net = Network()
    ins = [net.add_input("x", DataType.FLOAT, (n, c, h, w_)), net.add_input("w", DataType.INT8, tuple(w.shape)),
           net.add_input("s", DataType.FLOAT, (k,)), net.add_input("b", DataType.FLOAT, (k,)),
           net.add_input("r", DataType.FLOAT, tuple(residual.shape))]
    layer = net.add_layer(LayerKind.QUANTIZED_CONVOLUTION, p, ins)
    ctx = _context({"w": w, "s": w_scale, "b": bias})
    tactic = get_tactic("cuda.quantized_convolution.triton_implicit_64x64x32_s4_w4")
    assert tactic.supports(layer, ctx)
    y = tactic.run(tactic.prepare(layer, ctx), [x.to(DEVICE), None, None, None, residual.to(DEVICE)])[0]
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
