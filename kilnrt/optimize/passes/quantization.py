"""INT8 and FP8 quantization: convolutions and matrix multiplies become 8-bit layers.

Two routes lead to the same layers (``QUANTIZED_CONVOLUTION``, ``QUANTIZED_MATRIX_MULTIPLY``):

- **Explicit** (:func:`fold_qdq`): a network that carries Quantize/Dequantize pairs, as
  ``onnxruntime.quantization`` (QDQ format), PyTorch 2 export quantization and NVIDIA's
  Model Optimizer write them.  Where a convolution or matrix multiply reads
  ``DQ(Q(x, s, z), s, z)`` and weights ``DQ(w_int8, w_scale)`` (symmetric: zero points 0; per
  output channel or per tensor), or the same in FP8 E4M3, the DQs fold into it: it quantizes
  x itself and multiplies in 8 bits.  No float kernel is
  left between the Quantize and the Dequantize.  The pass runs first, before constant
  folding would turn the weights' DQ into float weights.
- **Implicit** (:func:`quantize_calibrated`): TensorRT's weakly typed INT8.  Given each
  activation's range (``amax``, from calibration or ``ITensor.set_dynamic_range``), a
  convolution or matrix multiply with constant weights and a known input range gets
  symmetric INT8 scales: ``amax / 127`` for the activation, and ``max|w| / 127`` per output
  channel for the weights.  FP8 (E4M3) is the same with 448, E4M3's largest value, for 127.

Then :func:`quantize_once` makes each activation 8-bit once, before the layers that read it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Layer, Network, Tensor
from kilnrt.network.layers import (QUANTIZED_KINDS, ConstantParams, LayerKind, MatrixOperation,
                                   QuantizedConvolutionParams, QuantizedMatrixMultiplyParams, QuantizeParams)
from kilnrt.network.rewrite import NetworkCopier
from kilnrt.optimize.passes.match import Emit, replace, rewrite

QUANTIZED = {LayerKind.CONVOLUTION: (LayerKind.QUANTIZED_CONVOLUTION, QuantizedConvolutionParams),
             LayerKind.MATRIX_MULTIPLY: (LayerKind.QUANTIZED_MATRIX_MULTIPLY, QuantizedMatrixMultiplyParams)}
INPUT_TYPES = (DataType.INT8, DataType.UINT8, DataType.FP8)
WEIGHT_TYPES = {DataType.INT8: np.int8, DataType.UINT8: np.int8, DataType.FP8: DataType.FP8.numpy}
FP8_MAX = 448.0   # E4M3FN's largest finite value: FP8 scales map amax to it


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
        weights = _quantized_weights(net, layer, act[3]) if act is not None else None
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
    if q.params.to_type == DataType.FP8 and (float(zp) != 0 or not q.params.saturate):
        return None
    return q.inputs[0], float(scale), int(zp), q.params.to_type


def _output_axis(layer: Layer, rank: int) -> int:
    """The weights' axis that indexes output channels: 0 for a convolution's [K, C, ...], the
    column axis of a matrix multiply's b (the row axis when op1 transposes it)."""
    if layer.kind == LayerKind.CONVOLUTION:
        return 0
    return rank - 2 if layer.params.op1 == MatrixOperation.TRANSPOSE else rank - 1


def _quantized_weights(net: Network, layer: Layer, to: DataType) -> tuple[Tensor, Tensor] | None:
    """(8-bit weights, scale) where the layer's weights are ``DQ(constant, scale)``, the constant
    INT8 for an INT8/UINT8 activation and FP8 E4M3 for an FP8 one, with zero points 0 and the
    scale per tensor or per output channel."""
    dq = layer.inputs[1].producer
    if dq is None or dq.kind != LayerKind.DEQUANTIZE or dq.params.block_size:
        return None
    w = net.constant_value(dq.inputs[0])
    scale = net.constant_value(dq.inputs[1])
    if w is None or scale is None or w.dtype != WEIGHT_TYPES[to] or not np.all(np.asarray(scale) > 0):
        return None
    if layer.kind == LayerKind.MATRIX_MULTIPLY and (w.ndim != 2 or layer.params.op1 == MatrixOperation.VECTOR):
        return None
    if len(dq.inputs) > 2 and dq.inputs[2] is not None:
        zp = net.constant_value(dq.inputs[2])
        if zp is None or np.any(np.asarray(zp, np.float64) != 0):
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
    object.__setattr__(new, "precision", DataType.FP8 if params.input_type == DataType.FP8 else DataType.INT8)
    return new.outputs[0]


# ----------------------------------------------------------------------------- calibrated INT8 and FP8
@dataclasses.dataclass
class Quantization:
    """A calibrated build's decisions, which a refit applies again to new weights: the type
    (``to``), each quantizable layer's type (None: kept float), and the activation ranges."""

    to: DataType
    types: dict[str, DataType | None]
    amax: dict[str, float]
    fp8_amax: dict[str, float]

    def apply(self, net: Network) -> Network:
        return quantize_calibrated(net, self.amax, to=self.to, types=self.types, fp8_amax=self.fp8_amax)


def quantize_calibrated(net: Network, amax: dict[str, float], stats: dict | None = None,
                        to: DataType = DataType.INT8, types: dict[str, DataType | None] | None = None,
                        fp8_amax: dict[str, float] | None = None) -> Network:
    """Each convolution and matrix multiply with constant weights whose input has a range in
    ``amax`` (tensor name -> largest magnitude) becomes its 8-bit layer of type ``to`` (INT8 or
    FP8; module docstring), or of the type ``types`` gives for its name (None: it stays float).
    FP8 layers take their range from ``fp8_amax`` where it has one (the largest magnitude seen,
    where ``amax`` holds INT8's clipped thresholds)."""
    rewrites: dict[int, Emit] = {}
    for layer in quantizable_layers(net, amax):
        kind = types.get(layer.name, to) if types else to
        if kind is None:
            continue
        x, w = layer.inputs[0], net.constant_value(layer.inputs[1])
        top = FP8_MAX if kind == DataType.FP8 else 127.0
        rng = (fp8_amax or {}).get(x.name, amax[x.name]) if kind == DataType.FP8 else amax[x.name]
        wq, w_scale = quantize_weights(w, _output_axis(layer, w.ndim), kind)
        rewrites[id(layer)] = _emit_calibrated(layer, float(rng) / top, wq, w_scale, kind)
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


def quantize_weights(w: np.ndarray, axis: int, to: DataType = DataType.INT8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel 8-bit weights: (INT8 ``round(w / scale)`` clipped to +-127, or FP8
    E4M3 ``w / scale`` rounded to nearest even; scale = max|w| / 127 (FP8: / 448) per index of
    ``axis``, 1 where a channel is all zeros)."""
    w64 = np.asarray(w, np.float64)
    others = tuple(i for i in range(w64.ndim) if i != axis)
    amax = np.max(np.abs(w64), axis=others) if others else np.abs(w64)
    top = FP8_MAX if to == DataType.FP8 else 127.0
    scale = np.where(amax > 0, amax / top, 1.0)
    shape = [1] * w64.ndim
    shape[axis] = -1
    scaled = w64 / scale.reshape(shape)
    if to == DataType.FP8:   # |scaled| <= 448 by construction; float32 first, as the kernels cast
        q = np.clip(scaled, -FP8_MAX, FP8_MAX).astype(np.float32).astype(DataType.FP8.numpy)
    else:
        q = np.clip(np.round(scaled), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def _emit_calibrated(layer: Layer, input_scale: float, wq: np.ndarray, w_scale: np.ndarray, to: DataType) -> Emit:
    kind, params_cls = QUANTIZED[layer.kind]
    params = params_cls(**dataclasses.asdict(layer.params), input_scale=input_scale, input_type=to)

    def emit(c: NetworkCopier) -> Tensor:
        consts = []
        for what, v in ((f"weights_{to.name.lower()}", wq), ("weight_scale", w_scale)):
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


# ----------------------------------------------------------------------------- quantize once
ONCE_TYPES = {DataType.INT8: 0, DataType.FP8: 0}   # the input types quantized upstream, with their zero point
FLOAT_TYPES = frozenset({DataType.FLOAT, DataType.HALF, DataType.BF16})


def quantize_once(net: Network, stats: dict | None = None) -> Network:
    """Each float activation that 8-bit layers quantize is quantized once, before them.

    A layer that quantizes its own input reads the float tensor and quantizes every tile it
    loads, once per output column block; on an H200 that doubled the INT8 GEMM's time.  So
    the readers that share a quantization (type and scale: symmetric INT8 or FP8) read one
    8-bit tensor instead, made by:

    - the producer's epilogue, when the producer is itself an 8-bit layer writing float that
      nothing else reads (``QuantizedOutput``: a Quantize folded into its producer);
    - otherwise a QUANTIZE layer after the producer.

    The readers then write the float type they wrote before (``output_type``).  The same
    quantization is applied in another place, so the numbers agree up to rounding: a QUANTIZE
    layer divides in float32 where a reader divided in float64, and a requantizing producer
    quantizes its float32 result where its reader quantized that result rounded to the
    producer's output type (FP16 in an FP16 build).  Either moves a value one step only within
    rounding of a tie (``tests/test_quantize_once.py``).
    """
    if not any(l.kind in QUANTIZED_KINDS for l in net.layers):
        return net
    net.infer()
    readers: dict[tuple, list[Layer]] = {}
    for layer in net.layers:
        p = layer.params
        x = layer.inputs[0] if layer.kind in QUANTIZED_KINDS else None
        if (x is not None and x.dtype in FLOAT_TYPES and ONCE_TYPES.get(p.input_type) == p.input_zero_point
                and p.output_scale == 0):
            readers.setdefault((x.name, p.input_type, p.input_scale), []).append(layer)
    outputs = {t.name for t in net.outputs}
    consumers: dict[str, int] = {}
    for layer in net.layers:
        for t in layer.inputs:
            if t is not None:
                consumers[t.name] = consumers.get(t.name, 0) + 1
    folded: dict[int, tuple[float, DataType]] = {}     # producer -> its output's quantization
    inserted: dict[str, list[tuple]] = {}              # float tensor -> the quantizations read of it
    for key, group in readers.items():
        name, to, scale = key
        producer = net.tensors[name].producer
        if (producer is not None and producer.kind in QUANTIZED_KINDS and producer.params.output_scale == 0
                and name not in outputs and consumers[name] == len(group) and len(producer.outputs) == 1
                and id(producer) not in folded):
            folded[id(producer)] = (scale, to)
        else:
            inserted.setdefault(name, []).append(key)
    if not readers:
        return net
    c = NetworkCopier(net)
    quantized: dict[tuple, Tensor] = {}
    count = 0
    for t in net.inputs:
        for key in inserted.get(t.name, ()):
            quantized[key] = _add_quantize(c, None, c.mapped(t), key[1], key[2])
            count += 1
    members = {id(l) for group in readers.values() for l in group}   # a zero point elsewhere: not a reader
    for layer in net.layers:
        p = layer.params
        if id(layer) in members:
            key = (layer.inputs[0].name, p.input_type, p.input_scale)
            x = quantized.get(key)
            if x is None:        # read from a producer folded above: its output is 8-bit already
                x = c.mapped(layer.inputs[0])
            new = c.copy(layer, [x] + [c.mapped(t) for t in layer.inputs[1:]])
            new.params = dataclasses.replace(p, output_type=p.output_type or layer.inputs[0].dtype)
            p = new.params
        else:
            new = c.copy(layer)
        if id(layer) in folded:
            scale, to = folded[id(layer)]
            new.params = dataclasses.replace(p, output_scale=scale, output_type=to)
            count += 1
        for t in layer.outputs:
            for key in inserted.get(t.name, ()):
                _, to, scale = key
                quantized[key] = _add_quantize(c, layer, c.mapped(t), to, scale)
                count += 1
    if stats is not None:
        stats["quantize_once"] = count
    return c.finish()


def _add_quantize(c: NetworkCopier, producer: Layer | None, x: Tensor, to: DataType, scale: float) -> Tensor:
    const = c.net.add_layer(LayerKind.CONSTANT, ConstantParams(np.asarray(scale, np.float32)), [],
                            name=c.net.unique_name(f"{x.name}/{to.name.lower()}_scale"),
                            origin=producer.origin if producer is not None else (x.name,))
    object.__setattr__(const, "precision", DataType.FLOAT)
    q = c.net.add_layer(LayerKind.QUANTIZE, QuantizeParams(axis=0, to_type=to), [x, const.outputs[0]],
                        name=c.net.unique_name(f"{x.name}/quantize_{to.name.lower()}"),
                        origin=producer.origin if producer is not None else (x.name,))
    return q.outputs[0]
