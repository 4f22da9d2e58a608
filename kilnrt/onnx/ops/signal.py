"""Importers for signal processing: HannWindow, HammingWindow, BlackmanWindow, DFT, STFT,
MelWeightMatrix.

The windows decompose into a RANGE fill and elementwise math; DFT, STFT and
MelWeightMatrix are built-in plugins (kernels/cpu/signal.py).  A signal is real
(``[..., 1]``) or complex (``[..., 2]``: real and imaginary parts), as ONNX lays it out.
"""
from __future__ import annotations

import math

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import (ElementWiseOperation as E, FillOperation, FillParams, LayerKind, PluginParams,
                                   UnaryOperation as U)
from kilnrt.onnx.ops.cast import onnx_dtype
from kilnrt.onnx.registry import importer


def _double(ctx, value):
    return ctx.constant(np.asarray(value, dtype=np.float64))


def _cosine_window(ctx, size, coefficients: tuple[float, ...], periodic, output_datatype):
    """sum_k (-1)^k a_k cos(2 pi k n / N), n = 0..size-1, N = size (periodic) or size - 1."""
    length = ctx.cast(size, DataType.INT64)
    n = ctx.out(LayerKind.FILL, FillParams(FillOperation.RANGE, dtype=DataType.DOUBLE),
                ctx.constant(np.asarray(0, np.int64)), length, ctx.constant(np.asarray(1, np.int64)))
    period = ctx.cast(length, DataType.DOUBLE)
    if not periodic:
        period = ctx.elementwise(E.SUB, period, _double(ctx, 1.0))
    y = _double(ctx, coefficients[0])
    for k, a in enumerate(coefficients[1:], start=1):
        angle = ctx.elementwise(E.DIV, ctx.elementwise(E.PROD, n, _double(ctx, 2 * math.pi * k)), period)
        term = ctx.elementwise(E.PROD, ctx.unary(U.COS, angle), _double(ctx, a * (-1) ** k))
        y = ctx.elementwise(E.SUM, y, term)
    return ctx.cast(y, onnx_dtype(ctx, output_datatype, "output_datatype"))


@importer("HannWindow", since=17)
def hann_window(ctx, node, size, *, output_datatype=1, periodic=1):
    """HannWindow: 0.5 - 0.5 cos(2 pi n / N)."""
    return _cosine_window(ctx, size, (0.5, 0.5), periodic, output_datatype)


@importer("HammingWindow", since=17)
def hamming_window(ctx, node, size, *, output_datatype=1, periodic=1):
    """HammingWindow: 25/46 - 21/46 cos(2 pi n / N)."""
    return _cosine_window(ctx, size, (25.0 / 46.0, 1.0 - 25.0 / 46.0), periodic, output_datatype)


@importer("BlackmanWindow", since=17)
def blackman_window(ctx, node, size, *, output_datatype=1, periodic=1):
    """BlackmanWindow: 0.42 - 0.5 cos(2 pi n / N) + 0.08 cos(4 pi n / N)."""
    return _cosine_window(ctx, size, (0.42, 0.5, 0.08), periodic, output_datatype)


def _signal(ctx, x, what: str) -> None:
    last = x.shape[-1] if x.shape else None
    ctx.require(last in (1, 2), ErrorCode.UNSUPPORTED_NODE_SHAPE,
                f"{what} must end in a dim of 1 (real) or 2 (complex); got shape {x.shape}")


@importer("DFT", since=17)
def dft_v17(ctx, node, input, dft_length=None, *, axis=1, inverse=0, onesided=0):
    """DFT (opset 17-19): the axis is an attribute."""
    _signal(ctx, input, "the input")
    fields = (("axis", int(axis)), ("inverse", int(inverse)), ("onesided", int(onesided)))
    return ctx.out(LayerKind.PLUGIN, PluginParams("DFT", "1", fields, host_inputs=(1, 2)), input, dft_length, None)


@importer("DFT", since=20)
def dft(ctx, node, input, dft_length=None, axis=None, *, inverse=0, onesided=0):
    """DFT: forward or inverse transform along ``axis`` (an input, default -2); onesided keeps
    the n // 2 + 1 non-negative frequencies (forward) or takes them (inverse: real output)."""
    _signal(ctx, input, "the input")
    fields = (("axis", -2), ("inverse", int(inverse)), ("onesided", int(onesided)))
    return ctx.out(LayerKind.PLUGIN, PluginParams("DFT", "1", fields, host_inputs=(1, 2)), input, dft_length, axis)


@importer("STFT", since=17)
def stft(ctx, node, signal, frame_step, window=None, frame_length=None, *, onesided=1):
    """STFT: [batch, frames, bins, 2] of windowed frames of a [batch, length, 1|2] signal."""
    _signal(ctx, signal, "the signal")
    ctx.require(window is not None or frame_length is not None, ErrorCode.INVALID_NODE,
                "needs a window or a frame_length")
    return ctx.out(LayerKind.PLUGIN, PluginParams("STFT", "1", (("onesided", int(onesided)),), host_inputs=(1, 3)),
                   signal, frame_step, window, frame_length)


@importer("MelWeightMatrix", since=17)
def mel_weight_matrix(ctx, node, num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, *,
                      output_datatype=1):
    """MelWeightMatrix: [dft_length // 2 + 1, num_mel_bins] triangular filters, as ONNX's reference builds them."""
    to = onnx_dtype(ctx, output_datatype, "output_datatype")
    return ctx.out(LayerKind.PLUGIN, PluginParams("MelWeightMatrix", "1", (("to", to.value),)),
                   num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz)
