"""Which layers the cuBLASLt GELU-epilogue GEMM takes (it runs only on a GPU; deciding runs
anywhere): half precision only, a GELU of either form, a constant weight and a constant
per-column bias or none."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before triton is imported: other files run its kernels interpreted
    os.environ["TRITON_INTERPRET"] = "1"

import kilnrt.kernels.cuda  # noqa: F401,E402  (registers the CUDA tactics)
from kilnrt.kernels.registry import TacticContext, get_tactic  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.network.layers import ActivationType as A, LayerKind, MatrixMultiplyParams, MatrixOperation  # noqa: E402

TACTIC = "cuda.matrix_multiply.cublaslt_gelu"


def _layer(dtype=DataType.HALF, act=A.GELU_ERF, bias_shape=(16,), bias_constant=True, weight_constant=True):
    net = Network()
    ins = [net.add_input("x", dtype, (4, 8)), net.add_input("w", dtype, (16, 8))]
    consts = {"w": torch.randn(16, 8)} if weight_constant else {}
    if bias_shape is not None:
        ins.append(net.add_input("b", dtype, bias_shape))
        if bias_constant:
            consts["b"] = torch.randn(bias_shape)
    layer = net.add_layer(LayerKind.MATRIX_MULTIPLY,
                          MatrixMultiplyParams(op1=MatrixOperation.TRANSPOSE, activation=act), ins)
    return layer, TacticContext(torch.device("cpu"), consts)


@pytest.mark.parametrize("kwargs", [{}, {"act": A.GELU_TANH}, {"dtype": DataType.BF16}, {"bias_shape": None},
                                    {"bias_shape": (1, 16)}])
def test_takes_half_precision_gelu_with_constant_per_column_bias(kwargs):
    assert get_tactic(TACTIC).supports(*_layer(**kwargs))


@pytest.mark.parametrize("kwargs", [
    {"dtype": DataType.FLOAT},          # float32 keeps the exact erf form
    {"act": None}, {"act": A.RELU}, {"act": A.SILU},
    {"bias_shape": (16, 1)},            # not a per-column bias
    {"bias_shape": ()},                 # a scalar
    {"bias_constant": False},           # a bias computed at run time
    {"weight_constant": False}])
def test_declines_everything_else(kwargs):
    assert not get_tactic(TACTIC).supports(*_layer(**kwargs))
