"""INT8 quantization: convolutions and matrix multiplies become 8-bit integer layers.

Two routes lead to the same layers (``QUANTIZED_CONVOLUTION``, ``QUANTIZED_MATRIX_MULTIPLY``):

- **Explicit** (:func:`fold_qdq`): a network that carries Quantize/Dequantize pairs, as
  ``onnxruntime.quantization`` (QDQ format) and other toolkits write them.  Where a
  convolution or matrix multiply reads ``DQ(Q(x, s, z), s, z)`` and weights
  ``DQ(w_int8, w_scale)`` (symmetric: zero points 0; per output channel or per tensor), the
  DQs fold into it: it quantizes x itself and multiplies in integers.  No float kernel is
  left between the Quantize and the Dequantize.  The pass runs first, before constant
  folding would turn the weights' DQ into float weights.
- **Implicit** (:func:`quantize_calibrated`): TensorRT's weakly typed INT8.  Given each
  activation's range (``amax``, from calibration or ``ITensor.set_dynamic_range``), a
  convolution or matrix multiply with constant weights and a known input range gets
  symmetric INT8 scales: ``amax / 127`` for the activation, and ``max|w| / 127`` per output
  channel for the weights.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.network.layers import (ConstantParams, LayerKind, MatrixOperation, QuantizedConvolutionParams,
                                   QuantizedMatrixMultiplyParams)
from kilnrt.network.rewrite import NetworkCopier
from kilnrt.optimize.passes.match import Emit, replace, rewrite

QUANTIZED = {LayerKind.CONVOLUTION: (LayerKind.QUANTIZED_CONVOLUTION, QuantizedConvolutionParams),
             LayerKind.MATRIX_MULTIPLY: (LayerKind.QUANTIZED_MATRIX_MULTIPLY, QuantizedMatrixMultiplyParams)}
INPUT_TYPES = (DataType.INT8, DataType.UINT8)


# ----------------------------------------------------------------------------- explicit Q/DQ
def fold_qdq(net: Network, stats: dict | None = None) -> Network:
    """Fold ``DQ(Q(x))`` activations and ``DQ(int8 constant)`` weights into the convolutions and
    matrix multiplies that read them (module docstring)."""
    net.infer()
    rewrites: dict[int, Emit] = {}
    for layer in net.layers:
        if layer.kind not in QUANTIZED or len(layer.inputs) < 2:
            continue
        act = _quantized_activation(net, layer.inputs[0])
        weights = _quantized_weights(net, layer)
        if act is None or weights is None:
            continue
        rewrites[id(layer)] = _emit_quantized(layer, act, weights)
    return replace(net, rewrites, set(), stats, "fold_qdq")


def _constant_scalar(net: Network, t: Tensor | None) -> float | int | None:
    v = net.constant_value(t)
    return None if v is None or v.size != 1 else np.asarray(v).reshape(()).item()


def _quantized_activation(net: Network, x: Tensor) -> tuple[Tensor, float, int, DataType] | None:
    """(float source, scale, zero point, integer type) where ``x = DQ(Q(source))`` with the same
    per-tensor constant scale and zero point on both."""
    dq = x.producer
    if dq is None or dq.kind != LayerKind.DEQUANTIZE or dq.params.block_size:
        return None
    q = dq.inputs[0].producer
    if q is None or q.kind != LayerKind.QUANTIZE or q.params.block_size or q.params.to_type not in INPUT_TYPES:
        return None
    scale, q_scale = _constant_scalar(net, dq.inputs[1]), _constant_scalar(net, q.inputs[1])
    zp = _constant_scalar(net, dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else 0
    q_zp = _constant_scalar(net, q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] is not None else 0
    if scale is None or zp is None or scale != q_scale or zp != q_zp or not scale > 0:
        return None
    return q.inputs[0], float(scale), int(zp), q.params.to_type


def _output_axis(layer: Layer, rank: int) -> int:
    """The weights' axis that indexes output channels: 0 for a convolution's [K, C, ...], the
    column axis of a matrix multiply's b (the row axis when op1 transposes it)."""
    if layer.kind == LayerKind.CONVOLUTION:
        return 0
    return rank - 2 if layer.params.op1 == MatrixOperation.TRANSPOSE else rank - 1


def _quantized_weights(net: Network, layer: Layer) -> tuple[Tensor, Tensor] | None:
    """(INT8 weights, scale) where the layer's weights are ``DQ(int8 constant, scale)`` with
    zero points 0 and the scale per tensor or per output channel."""
    dq = layer.inputs[1].producer
    if dq is None or dq.kind != LayerKind.DEQUANTIZE or dq.params.block_size:
        return None
    w = net.constant_value(dq.inputs[0])
    scale = net.constant_value(dq.inputs[1])
    if w is None or scale is None or w.dtype != np.int8 or not np.all(np.asarray(scale) > 0):
        return None
    if layer.kind == LayerKind.MATRIX_MULTIPLY and (w.ndim != 2 or layer.params.op1 == MatrixOperation.VECTOR):
        return None
    if len(dq.inputs) > 2 and dq.inputs[2] is not None:
        zp = net.constant_value(dq.inputs[2])
        if zp is None or np.any(zp != 0):
            return None
    if scale.size != 1 and (scale.ndim != 1 or dq.params.axis % w.ndim != _output_axis(layer, w.ndim)):
        return None
    return dq.inputs[0], dq.inputs[1]


def _emit_quantized(layer: Layer, act, weights) -> Emit:
    source, scale, zp, to_type = act
    wq, w_scale = weights
    kind, params_cls = QUANTIZED[layer.kind]
    params = params_cls(**dataclasses.asdict(layer.params), input_scale=scale, input_zero_point=zp,
                        input_type=to_type)

    def emit(c: NetworkCopier) -> Tensor:
        ins = [c.mapped(source), c.mapped(wq), c.mapped(w_scale)] + [c.mapped(t) for t in layer.inputs[2:]]
        return _add(c, layer, kind, params, ins)

    return rewrite([layer], emit)


def _add(c: NetworkCopier, layer: Layer, kind: LayerKind, params, inputs) -> Tensor:
    new = c.net.add_layer(kind, params, inputs, name=layer.name, origin=layer.origin,
                          output_names=[layer.outputs[0].name])
    object.__setattr__(new, "precision", DataType.INT8)
    return new.outputs[0]


# ----------------------------------------------------------------------------- calibrated INT8
def quantize_calibrated(net: Network, amax: dict[str, float], stats: dict | None = None,
                        skip: frozenset[str] = frozenset()) -> Network:
    """Each convolution and matrix multiply with constant weights whose input has a range in
    ``amax`` (tensor name -> largest magnitude) becomes its INT8 layer (module docstring),
    except the layers named in ``skip``."""
    rewrites: dict[int, Emit] = {}
    for layer in quantizable_layers(net, amax):
        if layer.name in skip:
            continue
        x, w = layer.inputs[0], net.constant_value(layer.inputs[1])
        wq, w_scale = quantize_weights(w, _output_axis(layer, w.ndim))
        rewrites[id(layer)] = _emit_calibrated(layer, float(amax[x.name]) / 127.0, wq, w_scale)
    return replace(net, rewrites, set(), stats, "quantize_calibrated")


def _has_int8_form(net: Network, layer: Layer) -> bool:
    """A convolution or matrix multiply that :func:`quantize_calibrated` can quantize once its
    input has a range: constant float weights (2-D for a matrix multiply, no vector operand),
    and no precision set on it."""
    if layer.kind not in QUANTIZED or len(layer.inputs) < 2 or layer.inputs[0] is None or layer.precision is not None:
        return False
    w = net.constant_value(layer.inputs[1])
    if w is None or w.dtype.kind != "f":
        return False
    return layer.kind != LayerKind.MATRIX_MULTIPLY or (
        w.ndim == 2 and MatrixOperation.VECTOR not in (layer.params.op0, layer.params.op1))


def quantizable_layers(net: Network, amax: dict[str, float]) -> list[Layer]:
    """The layers :func:`quantize_calibrated` quantizes with these ranges."""
    net.infer()
    return [l for l in net.layers if _has_int8_form(net, l) and amax.get(l.inputs[0].name, 0) > 0]


def quantize_weights(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel INT8: (round(w / scale) clipped to +-127, scale = max|w| / 127 per
    index of ``axis``; 1 where a channel is all zeros)."""
    w64 = np.asarray(w, np.float64)
    others = tuple(i for i in range(w64.ndim) if i != axis)
    amax = np.max(np.abs(w64), axis=others) if others else np.abs(w64)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    shape = [1] * w64.ndim
    shape[axis] = -1
    q = np.clip(np.round(w64 / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def _emit_calibrated(layer: Layer, input_scale: float, wq: np.ndarray, w_scale: np.ndarray) -> Emit:
    kind, params_cls = QUANTIZED[layer.kind]
    params = params_cls(**dataclasses.asdict(layer.params), input_scale=input_scale)

    def emit(c: NetworkCopier) -> Tensor:
        consts = []
        for what, v in (("weights_int8", wq), ("weight_scale", w_scale)):
            const = c.net.add_layer(LayerKind.CONSTANT, ConstantParams(v), [],
                                    name=c.net.unique_name(f"{layer.name}/{what}"), origin=layer.origin)
            object.__setattr__(const, "precision", DataType.FLOAT)   # scales stay FP32 under FP16 lowering
            consts.append(const.outputs[0])
        ins = [c.mapped(layer.inputs[0])] + consts + [c.mapped(t) for t in layer.inputs[2:]]
        return _add(c, layer, kind, params, ins)

    return rewrite([layer], emit)


def quantizable_inputs(net: Network) -> list[str]:
    """The activations whose ranges :func:`quantize_calibrated` uses: the inputs of the layers
    it can quantize."""
    return list(dict.fromkeys(l.inputs[0].name for l in net.layers if _has_int8_form(net, l)))
