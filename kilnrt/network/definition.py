"""TensorRT's ``INetworkDefinition.add_*`` methods, mixed into :class:`~kilnrt.network.graph.Network`.

Each method adds kilnrt layers with TensorRT 10's defaults and returns the main layer, whose
attributes read and write as TensorRT's do (``conv.stride_nd = (2, 2)``, ``softmax.axes = 1 << 2``,
``slice.start = (0, 1)``).  Weights (numpy arrays, torch tensors or :class:`Weights`) become
CONSTANT layers feeding the layer.  Bitmask arguments (``axes``) follow TensorRT: bit i selects
axis i.  Where TensorRT's parameters differ from kilnrt's layer params (slice start/shape/stride vs
ONNX-style bounds, softmax's axis bitmask, padding pre/post), :data:`ALIASES` translates.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable, Sequence

import numpy as np

from kilnrt.errors import ErrorCode, NetworkError
from kilnrt.network.dtypes import DataType
from kilnrt.network.plugin import PluginLayers
from kilnrt.network.layers import (ActivationParams, ActivationType, CastParams, ConcatenationParams,
                                   ConstantParams, ConvolutionParams, DeconvolutionParams,
                                   DequantizeParams, EinsumParams, ElementWiseOperation,
                                   ElementWiseParams, GatherMode, GatherParams, IdentityParams,
                                   LayerKind, LRNParams, MatrixMultiplyParams, MatrixOperation,
                                   NonZeroParams, NormalizationParams, OneHotParams, PaddingParams,
                                   PoolingParams, PoolingType, QuantizeParams, ReduceOperation,
                                   ReduceParams, ResizeParams, ScaleMode, ScaleParams, ScatterMode,
                                   ScatterParams, SelectParams, ShapeParams, ShuffleParams,
                                   SliceParams, SoftmaxParams, TopKOperation, TopKParams,
                                   UnaryOperation, UnaryParams)


# ----------------------------------------------------------------------------- value types
class Weights:
    """TensorRT's ``Weights``: a host array, or nothing (``Weights()``: an omitted bias)."""

    def __init__(self, a: Any = None, *_: Any) -> None:
        if a is None or isinstance(a, DataType):
            self._array: np.ndarray | None = None
            self._dtype = a or DataType.FLOAT
            return
        array = _to_numpy(a)
        self._array = np.ascontiguousarray(array)
        self._dtype = DataType.from_numpy(array.dtype)

    def numpy(self) -> np.ndarray:
        return self._array if self._array is not None else np.zeros((0,), self._dtype.numpy)

    @property
    def dtype(self) -> DataType:
        return self._dtype

    @property
    def size(self) -> int:
        return 0 if self._array is None else int(self._array.size)

    @property
    def nbytes(self) -> int:
        return 0 if self._array is None else int(self._array.nbytes)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"Weights({self._dtype.name}, count={self.size})"


class Dims(tuple):
    """TensorRT's ``Dims``: a tuple of ints (-1: dynamic)."""

    MAX_DIMS = 8

    def __new__(cls, shape: Sequence[int] = ()) -> "Dims":
        return super().__new__(cls, (int(d) for d in shape))

    @property
    def nbDims(self) -> int:  # noqa: N802 - TensorRT's name
        return len(self)


def _fixed_dims(n: int, name: str) -> type:
    def new(cls, *dims: Any) -> Dims:
        values = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        if len(values) != n:
            raise ValueError(f"{name} takes {n} dims, got {len(values)}")
        return Dims.__new__(cls, values)

    return type(name, (Dims,), {"__new__": new})


Dims2 = _fixed_dims(2, "Dims2")
Dims3 = _fixed_dims(3, "Dims3")
Dims4 = _fixed_dims(4, "Dims4")
DimsHW = _fixed_dims(2, "DimsHW")
DimsHW.h = property(lambda self: self[0])
DimsHW.w = property(lambda self: self[1])


class Permutation(tuple):
    """TensorRT's ``Permutation`` (a shuffle's transpose order)."""

    def __new__(cls, order: Sequence[int] = ()) -> "Permutation":
        return super().__new__(cls, (int(d) for d in order))


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    LINEAR = "linear"
    CUBIC = "cubic"


class ResizeCoordinateTransformation(enum.Enum):
    ALIGN_CORNERS = "align_corners"
    ASYMMETRIC = "asymmetric"
    HALF_PIXEL = "half_pixel"


class ResizeSelector(enum.Enum):
    FORMULA = "formula"
    UPPER = "upper"            # a one-pixel output samples the upper-left input pixel


class ResizeRoundMode(enum.Enum):
    HALF_UP = "round_prefer_ceil"
    HALF_DOWN = "round_prefer_floor"
    FLOOR = "floor"
    CEIL = "ceil"


class SampleMode(enum.Enum):
    STRICT_BOUNDS = "strict_bounds"
    WRAP = "wrap"
    CLAMP = "clamp"
    FILL = "fill"
    REFLECT = "reflect"


# ----------------------------------------------------------------------------- helpers
def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, Weights):
        return a.numpy()
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch.Tensor
        from kilnrt.network.dtypes import torch_to_numpy

        return torch_to_numpy(a)
    if isinstance(a, np.ndarray):
        return a
    array = np.asarray(a)
    return array.astype(np.float32) if array.dtype == np.float64 else array


def as_array(w: Any) -> np.ndarray | None:
    """The numpy array of weights; None for None or empty :class:`Weights`."""
    if w is None or (isinstance(w, Weights) and w.size == 0):
        return None
    return _to_numpy(w)


def axes_from_mask(mask: int) -> tuple[int, ...]:
    """TensorRT's axes bitmask -> axis indices (bit i: axis i)."""
    mask = int(mask)
    if mask < 0:
        raise NetworkError(ErrorCode.INVALID_ARGUMENT, f"axes bitmask must be >= 0, got {mask}")
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


def mask_from_axes(axes: Sequence[int] | None, rank: int | None) -> int:
    if axes is None:
        return (1 << rank) - 1 if rank is not None else 0
    mask = 0
    for a in axes:
        if a < 0:
            if rank is None:
                raise NetworkError(ErrorCode.INVALID_ARGUMENT, f"axis {a} is negative and the input's rank is unknown")
            a += rank
        mask |= 1 << a
    return mask


def _single_axis(mask: int, what: str) -> int:
    axes = axes_from_mask(mask)
    if len(axes) != 1:
        raise NetworkError(ErrorCode.INVALID_ARGUMENT,
                           f"{what}: the axes bitmask must select exactly one axis, got {mask:#b} (axes {axes})")
    return axes[0]


def _dims(values: Any) -> tuple[int, ...]:
    if isinstance(values, (int, np.integer)):
        return (int(values),)
    return tuple(int(v) for v in values)


def _rank(t: Any, what: str) -> int:
    shape = t.shape
    if shape is None:
        raise NetworkError(ErrorCode.INVALID_NETWORK, f"{what}: the rank of {t.name!r} is unknown")
    return len(shape)


def _match_dtype(array: np.ndarray, like: Any) -> np.ndarray:
    """Float weights take the float type of the tensor they are applied to (as TensorRT does)."""
    dt = like.dtype if like is not None else None
    if dt is not None and dt.is_floating and array.dtype.kind == "f" and array.dtype != dt.numpy:
        return array.astype(dt.numpy)
    return array


def _slice_bounds(start: Sequence[int], shape: Sequence[int], stride: Sequence[int]) -> tuple[list, list]:
    """TensorRT slice (start, output shape, stride) -> ONNX-style (starts, ends)."""
    if not (len(start) == len(shape) == len(stride)):
        raise NetworkError(ErrorCode.INVALID_ARGUMENT,
                           f"slice start {tuple(start)}, shape {tuple(shape)} and stride {tuple(stride)} "
                           "must have the same length")
    ends = []
    for s, n, st in zip(start, shape, stride):
        if st == 0:
            raise NetworkError(ErrorCode.INVALID_ARGUMENT, f"slice stride {tuple(stride)} has a zero; use +-1 or more")
        if n <= 0:
            ends.append(s)
        elif st > 0:
            ends.append(s + (n - 1) * st + 1)
        else:
            end = s + (n - 1) * st - 1
            ends.append(end if end >= 0 else -(1 << 62))  # a negative end would count from the back
    return list(start), ends


# ----------------------------------------------------------------------------- the mixin
class NetworkDefinition(PluginLayers):
    """The ``add_*`` methods of TensorRT's ``INetworkDefinition`` (see the module docstring;
    ``add_plugin_v3`` and ``add_plugin`` come from :mod:`kilnrt.network.plugin`)."""

    # provided by Network
    layers: list
    add_layer: Callable[..., Any]

    # -- plumbing ---------------------------------------------------------------------
    def _auto_name(self, kind: LayerKind) -> str:
        return f"{kind.value}_{len(self.layers)}"

    def _const(self, array: np.ndarray | None, name: str):
        if array is None:
            return None
        layer = self.add_layer(LayerKind.CONSTANT, ConstantParams(np.ascontiguousarray(array)), [],
                               name=name)
        return layer.outputs[0]

    def _add(self, kind: LayerKind, params: Any, inputs: Sequence[Any], name: str, num_outputs: int = 1):
        return self.add_layer(kind, params, list(inputs), name=name, num_outputs=num_outputs)

    def _tensor(self, value: Any, name: str):
        """A tensor as is, or weights turned into a CONSTANT layer."""
        from kilnrt.network.graph import Tensor

        if value is None or isinstance(value, Tensor):
            return value
        return self._const(as_array(value), name)

    # -- convolution, pooling, normalization ------------------------------------------
    def add_convolution_nd(self, input, num_output_maps: int, kernel_shape: Sequence[int], kernel: Any,
                           bias: Any = None):
        """Kernel in KCRS order ([K, C/groups, *kernel_shape], or flat); bias [K] or empty."""
        ks, k = _dims(kernel_shape), int(num_output_maps)
        name = self._auto_name(LayerKind.CONVOLUTION)
        w = as_array(kernel)
        if w is not None and w.ndim != 2 + len(ks):
            w = w.reshape((k, -1) + ks)
        w = None if w is None else _match_dtype(w, input)
        b = as_array(bias)
        b = None if b is None else _match_dtype(b.reshape(-1), input)
        n = len(ks)
        params = ConvolutionParams(num_output_maps=k, kernel_size_nd=ks, stride_nd=(1,) * n,
                                   pre_padding=(0,) * n, post_padding=(0,) * n, dilation_nd=(1,) * n)
        return self._add(LayerKind.CONVOLUTION, params,
                         [input, self._const(w, f"{name}/kernel"), self._const(b, f"{name}/bias")], name)

    def add_deconvolution_nd(self, input, num_output_maps: int, kernel_shape: Sequence[int], kernel: Any,
                             bias: Any = None):
        """Kernel in CKRS order ([C, K/groups, *kernel_shape], or flat); bias [K] or empty."""
        ks, k = _dims(kernel_shape), int(num_output_maps)
        name = self._auto_name(LayerKind.DECONVOLUTION)
        w = as_array(kernel)
        if w is not None and w.ndim != 2 + len(ks):
            shape = input.shape
            c = shape[1] if shape is not None and len(shape) > 1 and isinstance(shape[1], int) and shape[1] > 0 \
                else w.size // (k * int(np.prod(ks)))
            w = w.reshape((c, -1) + ks)
        w = None if w is None else _match_dtype(w, input)
        b = as_array(bias)
        b = None if b is None else _match_dtype(b.reshape(-1), input)
        n = len(ks)
        params = DeconvolutionParams(num_output_maps=k, kernel_size_nd=ks, stride_nd=(1,) * n,
                                     pre_padding=(0,) * n, post_padding=(0,) * n, dilation_nd=(1,) * n)
        return self._add(LayerKind.DECONVOLUTION, params,
                         [input, self._const(w, f"{name}/kernel"), self._const(b, f"{name}/bias")], name)

    def add_pooling_nd(self, input, type: PoolingType, window_size: Sequence[int]):
        """Stride 1 and no padding by default (TensorRT's defaults), average excludes padding."""
        ws = _dims(window_size)
        n = len(ws)
        params = PoolingParams(type, ws, stride_nd=(1,) * n, pre_padding=(0,) * n, post_padding=(0,) * n)
        return self._add(LayerKind.POOLING, params, [input], self._auto_name(LayerKind.POOLING))

    def add_lrn(self, input, window: int, alpha: float, beta: float, k: float):
        return self._add(LayerKind.LRN, LRNParams(int(window), float(alpha), float(beta), float(k)), [input],
                         self._auto_name(LayerKind.LRN))

    def add_scale(self, input, mode: ScaleMode, shift: Any = None, scale: Any = None, power: Any = None):
        """``(x * scale + shift) ** power`` with channel axis 1; empty weights mean 0, 1 and 1."""
        return self.add_scale_nd(input, mode, shift, scale, power, 1)

    def add_scale_nd(self, input, mode: ScaleMode, shift: Any = None, scale: Any = None, power: Any = None,
                     channel_axis: int = 1):
        name = self._auto_name(LayerKind.SCALE)
        consts = [self._const(_scale_weights(as_array(w), mode, input, channel_axis), f"{name}/{what}")
                  for w, what in ((shift, "shift"), (scale, "scale"), (power, "power"))]
        return self._add(LayerKind.SCALE, ScaleParams(mode, int(channel_axis)), [input, *consts], name)

    def add_normalization(self, input, scale: Any, bias: Any, axesMask: int):  # noqa: N803 - TRT's name
        """``(x - mean) / sqrt(var + epsilon) * scale + bias`` over the axes of ``axesMask``.

        ``scale`` and ``bias`` are tensors (or arrays) broadcastable to the input; epsilon 1e-5,
        one group (set ``num_groups`` for group normalization).
        """
        name = self._auto_name(LayerKind.NORMALIZATION)
        s = self._tensor(scale, f"{name}/scale")
        b = self._tensor(bias, f"{name}/bias")
        return self._add(LayerKind.NORMALIZATION, NormalizationParams(axes=axes_from_mask(axesMask)),
                         [input, s, b], name)

    # -- pointwise ----------------------------------------------------------------------
    def add_activation(self, input, type: ActivationType):
        """``alpha`` and ``beta`` start at 0; set them on the returned layer."""
        return self._add(LayerKind.ACTIVATION, ActivationParams(type), [input],
                         self._auto_name(LayerKind.ACTIVATION))

    def add_elementwise(self, input1, input2, op: ElementWiseOperation):
        return self._add(LayerKind.ELEMENTWISE, ElementWiseParams(op), [input1, input2],
                         self._auto_name(LayerKind.ELEMENTWISE))

    def add_unary(self, input, op: UnaryOperation):
        return self._add(LayerKind.UNARY, UnaryParams(op), [input], self._auto_name(LayerKind.UNARY))

    def add_cast(self, input, to_type: DataType):
        return self._add(LayerKind.CAST, CastParams(to_type), [input], self._auto_name(LayerKind.CAST))

    def add_identity(self, input):
        return self._add(LayerKind.IDENTITY, IdentityParams(), [input], self._auto_name(LayerKind.IDENTITY))

    def add_select(self, condition, then_input, else_input):
        return self._add(LayerKind.SELECT, SelectParams(), [condition, then_input, else_input],
                         self._auto_name(LayerKind.SELECT))

    def add_quantize(self, input, scale: Any, output_type: DataType = DataType.INT8):
        name = self._auto_name(LayerKind.QUANTIZE)
        return self._add(LayerKind.QUANTIZE, QuantizeParams(to_type=output_type),
                         [input, self._tensor(scale, f"{name}/scale")], name)

    def add_dequantize(self, input, scale: Any, output_type: DataType = DataType.FLOAT):
        name = self._auto_name(LayerKind.DEQUANTIZE)
        return self._add(LayerKind.DEQUANTIZE, DequantizeParams(to_type=output_type),
                         [input, self._tensor(scale, f"{name}/scale")], name)

    # -- linear algebra and reductions ---------------------------------------------------
    def add_matrix_multiply(self, input0, op0: MatrixOperation, input1, op1: MatrixOperation):
        return self._add(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(op0, op1), [input0, input1],
                         self._auto_name(LayerKind.MATRIX_MULTIPLY))

    def add_softmax(self, input):
        """Softmax over axis ``rank - 3`` (0 below rank 3), TensorRT's default; set ``axes`` (a bitmask)."""
        axis = max(_rank(input, "add_softmax") - 3, 0)
        return self._add(LayerKind.SOFTMAX, SoftmaxParams(axis=axis), [input], self._auto_name(LayerKind.SOFTMAX))

    def add_reduce(self, input, op: ReduceOperation, axes: int, keep_dims: bool):
        return self._add(LayerKind.REDUCE, ReduceParams(op, axes_from_mask(axes), bool(keep_dims)), [input],
                         self._auto_name(LayerKind.REDUCE))

    def add_topk(self, input, op: TopKOperation, k: int, axes: int):
        """Outputs: values and indices (int64 in kilnrt; TensorRT gives int32)."""
        params = TopKParams(op, int(k), _single_axis(axes, "add_topk"))
        return self._add(LayerKind.TOPK, params, [input], self._auto_name(LayerKind.TOPK), num_outputs=2)

    def add_einsum(self, inputs: Sequence[Any], equation: str):
        return self._add(LayerKind.EINSUM, EinsumParams(equation), list(inputs), self._auto_name(LayerKind.EINSUM))

    # -- data movement ---------------------------------------------------------------------
    def add_shuffle(self, input):
        """Set ``first_transpose``, ``reshape_dims`` and ``second_transpose`` on the returned layer."""
        return self._add(LayerKind.SHUFFLE, ShuffleParams(), [input], self._auto_name(LayerKind.SHUFFLE))

    def add_concatenation(self, inputs: Sequence[Any]):
        """Concatenate along axis ``rank - 3`` (0 below rank 3), TensorRT's default; set ``axis``."""
        inputs = list(inputs)
        if not inputs:
            raise NetworkError(ErrorCode.INVALID_ARGUMENT, "add_concatenation needs at least one input")
        axis = max(_rank(inputs[0], "add_concatenation") - 3, 0)
        return self._add(LayerKind.CONCATENATION, ConcatenationParams(axis), inputs,
                         self._auto_name(LayerKind.CONCATENATION))

    def add_constant(self, shape: Sequence[int], weights: Any):
        array = as_array(weights)
        if array is None:
            raise NetworkError(ErrorCode.INVALID_ARGUMENT, "add_constant needs non-empty weights")
        shape = _dims(shape)
        if int(np.prod(shape, dtype=np.int64)) != array.size:
            raise NetworkError(ErrorCode.INVALID_ARGUMENT,
                               f"add_constant: shape {shape} holds {int(np.prod(shape))} values, "
                               f"but the weights have {array.size}")
        return self.add_layer(LayerKind.CONSTANT, ConstantParams(np.ascontiguousarray(array.reshape(shape))), [],
                              name=self._auto_name(LayerKind.CONSTANT))

    def add_slice(self, input, start: Sequence[int], shape: Sequence[int], stride: Sequence[int]):
        """``output[i] = input[start + i * stride]`` for ``i < shape`` (TensorRT's STRICT_BOUNDS mode)."""
        name = self._auto_name(LayerKind.SLICE)
        start, shape, stride = _dims(start), _dims(shape), _dims(stride)
        starts, ends = _slice_bounds(start, shape, stride)
        consts = [self._const(np.asarray(v, dtype=np.int64), f"{name}/{what}")
                  for v, what in ((starts, "starts"), (ends, "ends"), (list(range(len(start))), "axes"),
                                  (stride, "steps"))]
        layer = self._add(LayerKind.SLICE, SliceParams(), [input, *consts], name)
        layer.metadata["trt_slice"] = {"start": start, "shape": shape, "stride": stride}
        return layer

    def add_gather(self, input, indices, axis: int = 0):
        return self._add(LayerKind.GATHER, GatherParams(axis=int(axis)), [input, indices],
                         self._auto_name(LayerKind.GATHER))

    def add_gather_v2(self, input, indices, mode: GatherMode):
        return self._add(LayerKind.GATHER, GatherParams(axis=0, mode=mode), [input, indices],
                         self._auto_name(LayerKind.GATHER))

    def add_scatter(self, data, indices, updates, mode: ScatterMode):
        return self._add(LayerKind.SCATTER, ScatterParams(mode=mode), [data, indices, updates],
                         self._auto_name(LayerKind.SCATTER))

    def add_padding_nd(self, input, pre_padding: Sequence[int], post_padding: Sequence[int]):
        """Zero-pad (or, with negative values, crop) the last ``len(pre_padding)`` dims."""
        name = self._auto_name(LayerKind.PADDING)
        pre, post = _dims(pre_padding), _dims(post_padding)
        if len(pre) != len(post):
            raise NetworkError(ErrorCode.INVALID_ARGUMENT,
                               f"add_padding_nd: pre_padding {pre} and post_padding {post} differ in length")
        pads = self._const(np.asarray(pre + post, dtype=np.int64), f"{name}/pads")
        axes = self._const(np.arange(-len(pre), 0, dtype=np.int64), f"{name}/axes")
        return self._add(LayerKind.PADDING, PaddingParams("constant"), [input, pads, None, axes], name)

    def add_resize(self, input):
        """Nearest, asymmetric, floor rounding (TensorRT's defaults); set ``shape`` or ``scales``."""
        params = ResizeParams(mode="nearest", coordinate_transformation="asymmetric", nearest_mode="floor")
        return self._add(LayerKind.RESIZE, params, [input, None, None], self._auto_name(LayerKind.RESIZE))

    def add_shape(self, input):
        return self._add(LayerKind.SHAPE, ShapeParams(), [input], self._auto_name(LayerKind.SHAPE))

    def add_non_zero(self, input):
        return self._add(LayerKind.NON_ZERO, NonZeroParams(), [input], self._auto_name(LayerKind.NON_ZERO))

    def add_one_hot(self, indices, values, depth, axis: int):
        return self._add(LayerKind.ONE_HOT, OneHotParams(int(axis)), [indices, depth, values],
                         self._auto_name(LayerKind.ONE_HOT))


def _scale_weights(w: np.ndarray | None, mode: ScaleMode, input: Any, channel_axis: int) -> np.ndarray | None:
    """Scale-layer weights shaped to broadcast: UNIFORM (1,), CHANNEL (C,), ELEMENTWISE input[axis:]."""
    if w is None:
        return None
    w = _match_dtype(w, input)
    if mode == ScaleMode.UNIFORM:
        return w.reshape(1)
    if mode == ScaleMode.CHANNEL:
        return w.reshape(-1)
    shape = input.shape
    tail = None if shape is None else tuple(shape[channel_axis:])
    if tail is None or not all(isinstance(d, int) and d >= 0 for d in tail):
        raise NetworkError(ErrorCode.INVALID_NETWORK,
                           f"add_scale ELEMENTWISE needs static dims from the channel axis on; "
                           f"{input.name!r} has shape {shape}")
    return w.reshape(tail)


# ----------------------------------------------------------------------------- layer attributes
@dataclasses.dataclass(frozen=True)
class Alias:
    """A TensorRT layer attribute that is not (or not only) a params field."""

    get: Callable[[Any], Any] | None
    set: Callable[[Any, Any], None] | None = None


def _replace(layer, **changes: Any) -> None:
    layer.params = dataclasses.replace(layer.params, **changes)


def _constant_input(layer, index: int) -> np.ndarray | None:
    t = layer.inputs[index] if index < len(layer.inputs) else None
    return None if t is None else layer._network.constant_value(t)


def set_constant_input(layer, index: int, array: np.ndarray | None, suffix: str) -> None:
    """Make input ``index`` of ``layer`` a constant holding ``array`` (None: remove the input).

    A CONSTANT feeding only this layer is updated in place; otherwise a new one is inserted
    just before the layer, so that the network stays in topological order.
    """
    net = layer._network
    while len(layer.inputs) <= index:
        layer.inputs.append(None)
    if array is None:
        layer.inputs[index] = None
        net._changed()
        return
    array = np.ascontiguousarray(array)
    old = layer.inputs[index]
    if old is not None and old.producer is not None and old.producer.kind == LayerKind.CONSTANT \
            and len(net.consumers().get(old.name, [])) == 1 and not old.is_network_output:
        old.producer.params = ConstantParams(array)
        return
    const = net.add_layer(LayerKind.CONSTANT, ConstantParams(array), [], name=f"{layer.name}/{suffix}")
    net.layers.remove(const)
    net.layers.insert(net.layers.index(layer), const)
    layer.inputs[index] = const.outputs[0]
    net._changed()


def _weights_alias(index: int, suffix: str, shaper: Callable[[Any, np.ndarray], np.ndarray] | None = None) -> Alias:
    def get(layer):
        value = _constant_input(layer, index)
        return Weights(value) if value is not None else Weights()

    def set_(layer, value):
        array = as_array(value)
        if array is not None:
            x = layer.inputs[0]
            array = _match_dtype(array, x)
            if shaper is not None:
                array = shaper(layer, array)
        set_constant_input(layer, index, array, suffix)

    return Alias(get, set_)


def _conv_kernel_shape(layer, w: np.ndarray) -> np.ndarray:
    ks = tuple(layer.params.kernel_size_nd)
    if w.ndim == 2 + len(ks):
        return w
    if layer.kind == LayerKind.CONVOLUTION:
        return w.reshape((layer.params.num_output_maps, -1) + ks)
    shape = layer.inputs[0].shape
    return w.reshape((shape[1], -1) + ks)


def _padding_nd(layer, value) -> None:
    pad = _dims(value)
    _replace(layer, pre_padding=pad, post_padding=pad)


def _softmax_axes_get(layer) -> int:
    axis = layer.params.axis
    if axis < 0:
        axis += _rank(layer.inputs[0], "softmax axes")
    return 1 << axis


def _axes_set(layer, value) -> None:
    axes = axes_from_mask(value) if isinstance(value, (int, np.integer)) else _dims(value)
    _replace(layer, axes=axes)


def _slice_spec(layer) -> dict:
    spec = layer.metadata.get("trt_slice")
    if spec is None:
        raise NetworkError(ErrorCode.INVALID_ARGUMENT,
                           f"layer {layer.name!r} is an ONNX-style slice (starts/ends/axes/steps inputs); "
                           "start/shape/stride apply to slices made with add_slice")
    return spec


def _slice_alias(key: str) -> Alias:
    def get(layer):
        return Dims(_slice_spec(layer)[key])

    def set_(layer, value):
        spec = dict(_slice_spec(layer))
        spec[key] = _dims(value)
        starts, ends = _slice_bounds(spec["start"], spec["shape"], spec["stride"])
        for index, values, suffix in ((1, starts, "starts"), (2, ends, "ends"),
                                      (3, list(range(len(starts))), "axes"), (4, spec["stride"], "steps")):
            set_constant_input(layer, index, np.asarray(values, dtype=np.int64), suffix)
        layer.metadata["trt_slice"] = spec

    return Alias(get, set_)


def _slice_mode_set(layer, value) -> None:
    if value != SampleMode.STRICT_BOUNDS:
        raise NetworkError(ErrorCode.INVALID_ARGUMENT,
                           f"slice mode {value} is not supported; supported: SampleMode.STRICT_BOUNDS")


def _padding_alias(which: int) -> Alias:
    def get(layer):
        pads = _constant_input(layer, 1)
        n = len(pads) // 2
        return Dims(pads[:n] if which == 0 else pads[n:])

    def set_(layer, value):
        pads = [int(v) for v in _constant_input(layer, 1)]
        n = len(pads) // 2
        new = _dims(value)
        if len(new) != n:
            raise NetworkError(ErrorCode.INVALID_ARGUMENT,
                               f"padding layer {layer.name!r} pads {n} dims; got {len(new)} values {new}")
        pads = list(new) + pads[n:] if which == 0 else pads[:n] + list(new)
        set_constant_input(layer, 1, np.asarray(pads, dtype=np.int64), "pads")

    return Alias(get, set_)


def _resize_shape_set(layer, value) -> None:
    set_constant_input(layer, 1, None, "scales")
    set_constant_input(layer, 2, np.asarray(_dims(value), dtype=np.int64), "sizes")


def _resize_scales_set(layer, value) -> None:
    set_constant_input(layer, 2, None, "sizes")
    set_constant_input(layer, 1, np.asarray(list(value), dtype=np.float32), "scales")


def _resize_coordinates_get(layer) -> ResizeCoordinateTransformation:
    value = layer.params.coordinate_transformation
    return ResizeCoordinateTransformation("half_pixel" if value == "pytorch_half_pixel" else value)


def _resize_coordinates_set(layer, value) -> None:
    upper = layer.metadata.get("trt_resize_selector") == ResizeSelector.UPPER
    name = ResizeCoordinateTransformation(value).value
    _replace(layer, coordinate_transformation="pytorch_half_pixel" if upper and name == "half_pixel" else name)


def _resize_selector_set(layer, value) -> None:
    layer.metadata["trt_resize_selector"] = ResizeSelector(value)
    _resize_coordinates_set(layer, _resize_coordinates_get(layer))


def _constant_shape_set(layer, value) -> None:
    layer.params = ConstantParams(np.ascontiguousarray(layer.params.weights.reshape(_dims(value))))


def _constant_weights_set(layer, value) -> None:
    array = as_array(value)
    layer.params = ConstantParams(np.ascontiguousarray(array.reshape(layer.params.weights.shape)))


def _precision_set(layer, value) -> None:
    object.__setattr__(layer, "precision", value)


ALIASES: dict[tuple[LayerKind, str], Alias] = {
    (LayerKind.CONVOLUTION, "padding_nd"): Alias(lambda l: Dims(l.params.pre_padding), _padding_nd),
    (LayerKind.CONVOLUTION, "kernel"): _weights_alias(1, "kernel", _conv_kernel_shape),
    (LayerKind.CONVOLUTION, "bias"): _weights_alias(2, "bias", lambda l, b: b.reshape(-1)),
    (LayerKind.DECONVOLUTION, "padding_nd"): Alias(lambda l: Dims(l.params.pre_padding), _padding_nd),
    (LayerKind.DECONVOLUTION, "kernel"): _weights_alias(1, "kernel", _conv_kernel_shape),
    (LayerKind.DECONVOLUTION, "bias"): _weights_alias(2, "bias", lambda l, b: b.reshape(-1)),
    (LayerKind.POOLING, "padding_nd"): Alias(lambda l: Dims(l.params.pre_padding), _padding_nd),
    (LayerKind.SOFTMAX, "axes"): Alias(_softmax_axes_get,
                                      lambda l, v: _replace(l, axis=_single_axis(v, "softmax axes"))),
    (LayerKind.REDUCE, "axes"): Alias(None, _axes_set),
    (LayerKind.NORMALIZATION, "axes"): Alias(None, _axes_set),
    (LayerKind.NORMALIZATION, "compute_precision"): Alias(lambda l: l.precision, _precision_set),
    (LayerKind.TOPK, "axes"): Alias(lambda l: mask_from_axes((l.params.axis,), _rank(l.inputs[0], "topk")),
                                    lambda l, v: _replace(l, axis=_single_axis(v, "topk axes"))),
    (LayerKind.SCALE, "shift"): _weights_alias(1, "shift"),
    (LayerKind.SCALE, "scale"): _weights_alias(2, "scale"),
    (LayerKind.SCALE, "power"): _weights_alias(3, "power"),
    (LayerKind.SLICE, "start"): _slice_alias("start"),
    (LayerKind.SLICE, "shape"): _slice_alias("shape"),
    (LayerKind.SLICE, "stride"): _slice_alias("stride"),
    (LayerKind.SLICE, "mode"): Alias(lambda l: SampleMode.STRICT_BOUNDS, _slice_mode_set),
    (LayerKind.PADDING, "pre_padding_nd"): _padding_alias(0),
    (LayerKind.PADDING, "post_padding_nd"): _padding_alias(1),
    (LayerKind.RESIZE, "shape"): Alias(lambda l: None if _constant_input(l, 2) is None else Dims(_constant_input(l, 2)),
                                       _resize_shape_set),
    (LayerKind.RESIZE, "scales"): Alias(lambda l: None if _constant_input(l, 1) is None
                                        else tuple(float(v) for v in _constant_input(l, 1)), _resize_scales_set),
    (LayerKind.RESIZE, "resize_mode"): Alias(lambda l: InterpolationMode(l.params.mode),
                                             lambda l, v: _replace(l, mode=InterpolationMode(v).value)),
    (LayerKind.RESIZE, "coordinate_transformation"): Alias(_resize_coordinates_get, _resize_coordinates_set),
    (LayerKind.RESIZE, "selector_for_single_pixel"): Alias(
        lambda l: l.metadata.get("trt_resize_selector", ResizeSelector.FORMULA), _resize_selector_set),
    (LayerKind.RESIZE, "nearest_rounding"): Alias(lambda l: ResizeRoundMode(l.params.nearest_mode),
                                                  lambda l, v: _replace(l, nearest_mode=ResizeRoundMode(v).value)),
    (LayerKind.RESIZE, "cubic_coeff"): Alias(lambda l: l.params.cubic_coeff_a,
                                             lambda l, v: _replace(l, cubic_coeff_a=float(v))),
    (LayerKind.CAST, "to_type"): Alias(lambda l: l.params.to, lambda l, v: _replace(l, to=v)),
    (LayerKind.CONSTANT, "shape"): Alias(lambda l: Dims(l.params.weights.shape), _constant_shape_set),
    (LayerKind.CONSTANT, "weights"): Alias(lambda l: Weights(l.params.weights), _constant_weights_set),
}


def trt_input_index(layer, index: int, tensor: Any) -> int:
    """Where TensorRT's ``set_input(index, tensor)`` lands among kilnrt's inputs of ``layer``."""
    if layer.kind == LayerKind.RESIZE and index == 1:
        dt = tensor.dtype if tensor is not None else None
        if dt is not None and not dt.is_floating:  # TensorRT: input 1 is the output shape
            set_constant_input(layer, 1, None, "scales")
            return 2
    if layer.kind == LayerKind.SLICE and "trt_slice" in layer.metadata and index in (1, 2, 3):
        raise NetworkError(ErrorCode.INVALID_ARGUMENT,
                           f"slice {layer.name!r}: start/size/stride tensors (set_input({index}, ...)) are not "
                           "supported on add_slice layers; add an ONNX-style SLICE layer with add_layer "
                           "(inputs: data, starts, ends, axes, steps)")
    return index


__all__ = ["Weights", "Dims", "Dims2", "Dims3", "Dims4", "DimsHW", "Permutation", "InterpolationMode",
           "ResizeCoordinateTransformation", "ResizeSelector", "ResizeRoundMode", "SampleMode",
           "NetworkDefinition", "ALIASES", "Alias", "as_array", "axes_from_mask", "mask_from_axes",
           "set_constant_input", "trt_input_index"]
