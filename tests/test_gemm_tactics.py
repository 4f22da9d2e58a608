"""Which layers the CUDA library tactics take (they run only on a GPU; deciding runs anywhere).
The cuBLASLt GELU-epilogue GEMM: half precision only, a GELU of either form, a constant
weight and a constant per-column bias or none. cuDNN's pinned attention: static shapes only."""
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
from kilnrt.network.layers import (ActivationType as A, AttentionParams, LayerKind, MatrixMultiplyParams,  # noqa: E402
                                   MatrixOperation)

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


def _attention(shape=(2, 12, 128, 64), mask_shape=(2, 1, 1, 128), **params):
    net = Network()
    ins = [net.add_input(n, DataType.HALF, shape) for n in "qkv"]
    if mask_shape is not None:
        ins.append(net.add_input("m", DataType.HALF, mask_shape))
    layer = net.add_layer(LayerKind.ATTENTION, AttentionParams(**params), ins)
    return layer, TacticContext(torch.device("cpu"), {})


@pytest.mark.parametrize("kwargs", [{}, {"mask_shape": None}, {"causal": True, "mask_shape": None}])
def test_cudnn_attention_takes_static_shapes(kwargs):
    assert get_tactic("cuda.attention.sdpa_cudnn").supports(*_attention(**kwargs))


@pytest.mark.parametrize("kwargs", [
    {"shape": (-1, 12, 128, 64)},            # a dynamic batch: it might decline a run-time shape
    {"shape": (2, 12, "seq", 64)},
    {"mask_shape": (-1, 1, 1, 128)},
    {"left_window": 16},                     # what no SDPA backend does
    {"softcap": 30.0}])
def test_cudnn_attention_declines_dynamic_shapes_and_what_sdpa_lacks(kwargs):
    assert not get_tactic("cuda.attention.sdpa_cudnn").supports(*_attention(**kwargs))
