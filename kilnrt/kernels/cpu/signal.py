"""Built-in plugins for signal processing: DFT, STFT, MelWeightMatrix.

Signals are real ``[..., 1]`` or complex ``[..., 2]`` (real, imaginary) tensors, as in ONNX.
Transforms run in float64 / complex128 and return the input's dtype.
"""
from __future__ import annotations

import math

import torch

from kilnrt.kernels.cpu.plugin import builtin_plugin
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import PluginParams


def _scalar(t: torch.Tensor | None, default=None):
    if t is None:
        return default
    if t.device.type == "meta":
        raise ValueError("the value of a scalar input is not known at build time")
    return t.reshape(-1)[0].item()


def _complex(x: torch.Tensor) -> torch.Tensor:
    """[..., 1] real or [..., 2] (real, imaginary) -> complex128 [...]."""
    x = x.to(torch.float64)
    if x.shape[-1] == 1:
        return torch.complex(x[..., 0], torch.zeros_like(x[..., 0]))
    return torch.complex(x[..., 0], x[..., 1])


def _pairs(z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """complex [...] -> [..., 2] (real, imaginary) of ``dtype``."""
    return torch.stack([z.real, z.imag], dim=-1).to(dtype)


@builtin_plugin("DFT", rank_rule=lambda p, x, *rest: [(x.dim(), x.dtype)])
def dft(p: PluginParams, x: torch.Tensor, dft_length: torch.Tensor | None = None,
        axis: torch.Tensor | None = None) -> torch.Tensor:
    """ONNX DFT: ``axis`` counts the trailing real/imaginary dim; inverse divides by n."""
    axis_ = int(_scalar(axis, p.field("axis")))
    axis_ = axis_ % x.dim()
    if axis_ == x.dim() - 1:
        raise ValueError("the DFT axis cannot be the last (real/imaginary) dim")
    inverse, onesided = bool(p.field("inverse")), bool(p.field("onesided"))
    size = x.shape[axis_]
    n = int(_scalar(dft_length, 2 * (size - 1) if inverse and onesided else size))
    if x.device.type == "meta":
        shape = list(x.shape)
        shape[axis_] = n // 2 + 1 if onesided and not inverse else n
        shape[-1] = 1 if inverse and onesided else 2
        return x.new_empty(shape)
    z = _complex(x)
    if inverse and onesided:
        return torch.fft.irfft(z, n=n, dim=axis_).unsqueeze(-1).to(x.dtype)
    y = torch.fft.ifft(z, n=n, dim=axis_) if inverse else torch.fft.fft(z, n=n, dim=axis_)
    if onesided and not inverse:
        y = y.narrow(axis_, 0, n // 2 + 1)
    return _pairs(y, x.dtype)


@builtin_plugin("STFT", rank_rule=lambda p, x, *rest: [(4, x.dtype)])
def stft(p: PluginParams, signal: torch.Tensor, frame_step: torch.Tensor, window: torch.Tensor | None = None,
         frame_length: torch.Tensor | None = None) -> torch.Tensor:
    """ONNX STFT: frames of ``frame_length`` every ``frame_step`` samples, times the window,
    transformed; [batch, frames, bins, 2] with bins = n // 2 + 1 when onesided."""
    step = int(_scalar(frame_step))
    n = int(_scalar(frame_length, window.shape[0] if window is not None else None))
    onesided = bool(p.field("onesided"))
    frames = 1 + (signal.shape[1] - n) // step
    bins = n // 2 + 1 if onesided else n
    if signal.device.type == "meta":
        return signal.new_empty((signal.shape[0], frames, bins, 2))
    z = _complex(signal)                                     # [batch, length]
    chunks = z.unfold(1, n, step)                            # [batch, frames, n]
    if window is not None:
        chunks = chunks * window.to(torch.float64)
    y = torch.fft.fft(chunks, n=n, dim=-1).narrow(-1, 0, bins)
    return _pairs(y, signal.dtype)


def _mel_rank(p, *inputs):
    return [(2, DataType(p.field("to")).torch)]


@builtin_plugin("MelWeightMatrix", rank_rule=_mel_rank)
def mel_weight_matrix(p: PluginParams, num_mel_bins: torch.Tensor, dft_length: torch.Tensor,
                      sample_rate: torch.Tensor, lower_edge_hertz: torch.Tensor,
                      upper_edge_hertz: torch.Tensor) -> torch.Tensor:
    """Triangular mel filters over the dft_length // 2 + 1 spectrogram bins (ONNX's reference,
    including its integer bin edges ((dft_length + 1) * hz) // sample_rate)."""
    bins, length, rate = int(_scalar(num_mel_bins)), int(_scalar(dft_length)), int(_scalar(sample_rate))
    low, high = float(_scalar(lower_edge_hertz)), float(_scalar(upper_edge_hertz))
    spectrogram_bins = length // 2 + 1
    to_mel = lambda hz: 2595.0 * math.log1p(hz / 700.0) / math.log(10.0)  # noqa: E731
    low_mel, high_mel = to_mel(low), to_mel(high)
    step = (high_mel - low_mel) / (bins + 2)
    mel = torch.arange(bins + 2, dtype=torch.float64) * step + low_mel
    hz = 700.0 * torch.expm1(mel / 2595.0 * math.log(10.0))
    edges = torch.floor((length + 1) * hz / rate).to(torch.int64).tolist()
    out = torch.zeros(spectrogram_bins, bins, dtype=torch.float64)
    for i in range(bins):
        left, center, right = edges[i], edges[i + 1], edges[i + 2]
        if center == left:
            out[center, i] = 1.0
        else:
            for j in range(left, center + 1):
                out[j, i] = (j - left) / (center - left)
        for j in range(center, right):
            out[j, i] = (right - j) / (right - center)
    return out.to(device=num_mel_bins.device, dtype=DataType(p.field("to")).torch)
