"""The layer taxonomy: one kind per TensorRT layer type, each with a frozen params dataclass.

A layer's *inputs* are tensors (weights arrive as the outputs of CONSTANT layers); its
*params* are plain values.  ``SHAPE_INPUTS[kind]`` lists the input positions whose
*values* (not only shapes) a layer needs on the host, like TensorRT's shape tensors:
reshape dims, slice bounds, pads, ``k`` of TopK.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from kilnrt.network.dtypes import DataType


class LayerKind(enum.Enum):
    ACTIVATION = "activation"
    ATTENTION = "attention"
    CAST = "cast"
    CONCATENATION = "concatenation"
    CONDITIONAL = "conditional"
    CONSTANT = "constant"
    CONVOLUTION = "convolution"
    CUMULATIVE = "cumulative"
    DECONVOLUTION = "deconvolution"
    DEQUANTIZE = "dequantize"
    EINSUM = "einsum"
    ELEMENTWISE = "elementwise"
    EXPAND = "expand"
    FILL = "fill"
    GATHER = "gather"
    GRID_SAMPLE = "grid_sample"
    IDENTITY = "identity"
    LOOP = "loop"
    LRN = "lrn"
    MATRIX_MULTIPLY = "matrix_multiply"
    NMS = "nms"
    NON_ZERO = "non_zero"
    NORMALIZATION = "normalization"
    ONE_HOT = "one_hot"
    PADDING = "padding"
    PLUGIN = "plugin"
    POINTWISE = "pointwise"
    POOLING = "pooling"
    QUANTIZE = "quantize"
    QUANTIZED_CONVOLUTION = "quantized_convolution"            # made by the quantization passes
    QUANTIZED_MATRIX_MULTIPLY = "quantized_matrix_multiply"    # made by the quantization passes
    REDUCE = "reduce"
    RESIZE = "resize"
    REVERSE_SEQUENCE = "reverse_sequence"
    RNN = "rnn"
    SCALE = "scale"
    SCATTER = "scatter"
    SELECT = "select"
    SHAPE = "shape"
    SHUFFLE = "shuffle"
    SLICE = "slice"
    SOFTMAX = "softmax"
    SQUEEZE = "squeeze"
    SQUEEZE_EXCITATION = "squeeze_excitation"   # made by the optimizer: the gate of an SE block
    TILE = "tile"
    TOPK = "topk"
    UNARY = "unary"
    UNSQUEEZE = "unsqueeze"
    VIEW = "view"                    # made by the optimizer: a strided view of its input


# ----------------------------------------------------------------------------- enums
class ActivationType(enum.Enum):
    RELU = "relu"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    LEAKY_RELU = "leaky_relu"        # alpha: negative slope
    ELU = "elu"                      # alpha
    SELU = "selu"                    # alpha, beta(gamma)
    SOFTSIGN = "softsign"
    SOFTPLUS = "softplus"
    CLIP = "clip"                    # alpha: min, beta: max
    HARD_SIGMOID = "hard_sigmoid"    # alpha, beta: max(0, min(1, alpha*x + beta))
    SCALED_TANH = "scaled_tanh"      # alpha * tanh(beta * x)
    THRESHOLDED_RELU = "thresholded_relu"  # alpha: threshold
    GELU_ERF = "gelu_erf"
    GELU_TANH = "gelu_tanh"
    SILU = "silu"
    MISH = "mish"
    HARD_SWISH = "hard_swish"
    CELU = "celu"                    # alpha


class ElementWiseOperation(enum.Enum):
    SUM = "sum"
    PROD = "prod"
    MAX = "max"
    MIN = "min"
    SUB = "sub"
    DIV = "div"                      # true division for floats, truncation for integers (ONNX)
    POW = "pow"
    FLOOR_DIV = "floor_div"
    AND = "and"
    OR = "or"
    XOR = "xor"
    EQUAL = "equal"
    GREATER = "greater"
    LESS = "less"
    GREATER_EQUAL = "greater_equal"
    LESS_EQUAL = "less_equal"
    MOD = "mod"                      # sign of the divisor (python)
    FMOD = "fmod"                    # sign of the dividend (C)
    BITWISE_AND = "bitwise_and"
    BITWISE_OR = "bitwise_or"
    BITWISE_XOR = "bitwise_xor"
    SHIFT_LEFT = "shift_left"
    SHIFT_RIGHT = "shift_right"


class UnaryOperation(enum.Enum):
    EXP = "exp"
    LOG = "log"
    SQRT = "sqrt"
    RECIP = "recip"
    ABS = "abs"
    NEG = "neg"
    SIN = "sin"
    COS = "cos"
    TAN = "tan"
    SINH = "sinh"
    COSH = "cosh"
    ASIN = "asin"
    ACOS = "acos"
    ATAN = "atan"
    ASINH = "asinh"
    ACOSH = "acosh"
    ATANH = "atanh"
    CEIL = "ceil"
    FLOOR = "floor"
    ERF = "erf"
    NOT = "not"
    SIGN = "sign"
    ROUND = "round"                  # half to even
    ISINF = "isinf"
    ISINF_POS = "isinf_pos"
    ISINF_NEG = "isinf_neg"
    ISNAN = "isnan"
    BITWISE_NOT = "bitwise_not"


class MatrixOperation(enum.Enum):
    NONE = "none"
    TRANSPOSE = "transpose"          # swap the last two dims
    VECTOR = "vector"                # the operand is a (batch of) vector(s)


class PaddingMode(enum.Enum):
    EXPLICIT_ROUND_DOWN = "explicit_round_down"
    EXPLICIT_ROUND_UP = "explicit_round_up"   # ONNX ceil_mode=1
    SAME_UPPER = "same_upper"
    SAME_LOWER = "same_lower"


class PoolingType(enum.Enum):
    MAX = "max"
    AVERAGE = "average"
    LP = "lp"


class ScaleMode(enum.Enum):
    UNIFORM = "uniform"
    CHANNEL = "channel"
    ELEMENTWISE = "elementwise"


class ReduceOperation(enum.Enum):
    SUM = "sum"
    PROD = "prod"
    MAX = "max"
    MIN = "min"
    AVG = "avg"


class TopKOperation(enum.Enum):
    MAX = "max"
    MIN = "min"


class GatherMode(enum.Enum):
    DEFAULT = "default"              # ONNX Gather
    ELEMENT = "element"              # ONNX GatherElements
    ND = "nd"                        # ONNX GatherND


class ScatterMode(enum.Enum):
    ELEMENT = "element"              # ONNX ScatterElements
    ND = "nd"                        # ONNX ScatterND


class FillOperation(enum.Enum):
    CONSTANT = "constant"            # ConstantOfShape: input 0 is the shape
    RANGE = "range"                  # inputs start, limit, delta


# ----------------------------------------------------------------------------- params
@dataclass(frozen=True)
class ActivationParams:
    type: ActivationType
    alpha: float = 0.0
    beta: float = 0.0


@dataclass(frozen=True)
class AttentionParams:
    """Scaled dot-product attention (ONNX Attention semantics on 4-D tensors).

    Inputs: q [B, Hq, Sq, D], k [B, Hkv, Skv, D], v [B, Hkv, Skv, Dv], then optional mask
    (bool: True attends; float: added to the scores; broadcast to [B, Hq, Sq, T], a shorter
    last dim is padded as masked), past_key, past_value (concatenated before k, v along the
    sequence) and nonpad_kv_seqlen (int64 [B]: keys at or past it are masked).
    Outputs: y [B, Hq, Sq, Dv], present_key, present_value, and when ``qk_output_mode >= 0``
    the scores (0: Q.K^T, 1: after softcap, 2: plus the mask bias, 3: the probabilities).
    Causal masking and the windows are bottom-right aligned (offset = past length, or
    nonpad_kv_seqlen - Sq); ``Hq`` a multiple of ``Hkv`` is grouped-query attention; fully
    masked rows give zeros.
    """

    causal: bool = False
    scale: float | None = None          # None: 1 / sqrt(D)
    softcap: float = 0.0                # > 0: softcap * tanh(scores / softcap)
    left_window: int = -1               # -1: unbounded
    right_window: int = -1
    softmax_precision: DataType | None = None
    qk_output_mode: int = -1            # -1: no scores output


@dataclass(frozen=True)
class CastParams:
    """Float8 targets: ``saturate`` clamps out-of-range values to the largest finite value
    (else they become inf/NaN); ``round_mode`` (up, down, nearest) applies to FP8_E8M0."""

    to: DataType
    saturate: bool = True
    round_mode: str = "up"


@dataclass(frozen=True)
class SubgraphLayer:
    """One layer of a :class:`Subgraph`: its kind, params, and the names of its input and output values."""

    kind: LayerKind
    params: Any
    inputs: tuple[str | None, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Subgraph:
    """A branch or loop body as data (TensorRT's conditional/loop regions): named inputs, layers in
    topological order, named outputs, and each output's (dtype, rank) (rank -1: unknown)."""

    inputs: tuple[str, ...]
    layers: tuple[SubgraphLayer, ...]
    outputs: tuple[str, ...]
    output_types: tuple[tuple[DataType, int], ...] = ()


@dataclass(frozen=True)
class ConditionalParams:
    """If-then-else (TensorRT's IIfConditional). Inputs: condition (shape input, bool scalar), then the
    values the branches capture, bound to both branches' ``inputs`` in order; only the chosen branch runs."""

    then_branch: Subgraph
    else_branch: Subgraph


@dataclass(frozen=True)
class LoopParams:
    """A loop (TensorRT's ILoop; ONNX Loop and Scan).

    Inputs: trip count (optional shape input, int64), condition (optional shape input, bool),
    ``num_carried`` initial values, one input per ``scan_input_axes`` (sliced along that axis,
    backwards where ``scan_input_reverse``; its length caps the trip count), then captured values.
    The body takes ([iteration, condition] when ``counter_inputs``, carried, slices, captured)
    and returns ([condition] when ``counter_inputs``, carried, one value per ``scan_output_axes``).
    Outputs: the final carried values, then each scan output's per-iteration values stacked
    along its axis (in reverse order where ``scan_output_reverse``).
    """

    body: Subgraph
    num_carried: int = 0
    scan_input_axes: tuple[int, ...] = ()
    scan_input_reverse: tuple[bool, ...] = ()
    scan_output_axes: tuple[int, ...] = ()
    scan_output_reverse: tuple[bool, ...] = ()
    counter_inputs: bool = True


@dataclass(frozen=True)
class ConcatenationParams:
    axis: int = 0


@dataclass(frozen=True, eq=False)
class ConstantParams:
    weights: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weights.shape)


@dataclass(frozen=True)
class ConvolutionParams:
    """Inputs: x [N, C, *spatial], kernel [K, C/groups, *window], bias [K] (optional),
    residual (optional, same shape as the output).

    Fused epilogue (set by the optimizer): ``y = act(conv(x) + bias + residual)`` where
    ``act`` is ``activation`` (with ``activation_alpha/beta``) when not None.
    """

    num_output_maps: int
    kernel_size_nd: tuple[int, ...]
    stride_nd: tuple[int, ...] = ()
    pre_padding: tuple[int, ...] = ()
    post_padding: tuple[int, ...] = ()
    dilation_nd: tuple[int, ...] = ()
    num_groups: int = 1
    padding_mode: PaddingMode = PaddingMode.EXPLICIT_ROUND_DOWN
    activation: ActivationType | None = None
    activation_alpha: float = 0.0
    activation_beta: float = 0.0


# the 8-bit layers (made by kilnrt.optimize.passes.quantization)
QUANTIZED_KINDS = frozenset({LayerKind.QUANTIZED_CONVOLUTION, LayerKind.QUANTIZED_MATRIX_MULTIPLY})


class QuantizedOutput:
    """What a quantized layer writes (the ``output_type`` and ``output_scale`` fields of
    :class:`QuantizedConvolutionParams` and :class:`QuantizedMatrixMultiplyParams`).

    - ``output_scale`` 0 (the default): ``y`` in float, of type ``output_type``, or of x's type
      when that is None (x is float then).
    - ``output_scale`` > 0: ``y`` requantized in the epilogue for the next quantized layer,
      ``saturate(round(y / output_scale))`` in ``output_type`` (INT8), or
      ``saturate_cast(y / output_scale)`` (FP8): a Quantize folded into its producer.
    """

    @staticmethod
    def dtype(p, x_dtype: DataType | None) -> DataType | None:
        return p.output_type if p.output_type is not None else x_dtype


@dataclass(frozen=True)
class QuantizedConvolutionParams(ConvolutionParams):
    """A convolution on 8-bit numbers (made by ``kilnrt.optimize.passes.quantization``).

    Inputs: x (float, or already quantized), weights (INT8, or FP8 E4M3 when ``input_type`` is
    FP8; [K, C/groups, *window]), weight_scale (float [K]), bias (float [K], optional), residual
    (optional).  A float x is quantized per tensor: ``xq = saturate(round(x / input_scale) +
    input_zero_point)`` in ``input_type`` (FP8: ``saturate_cast(x / input_scale)``); an x whose
    dtype is ``input_type`` is ``xq`` already (a QUANTIZE layer or a producer's epilogue made it).
    Then ``y = act(input_scale * weight_scale[k] * conv(xq - input_zero_point, weights) + bias +
    residual)``, the convolution summed exactly (in integers for INT8).  See :class:`QuantizedOutput`
    for the output's type.
    """

    input_scale: float = 1.0
    input_zero_point: int = 0
    input_type: DataType = DataType.INT8
    output_type: DataType | None = None
    output_scale: float = 0.0


@dataclass(frozen=True)
class SqueezeExcitationParams:
    """The gate of a squeeze-excitation block (made by the optimizer's ``fuse_squeeze_excitation``):
    ``gate(conv(act(conv(mean_hw(x), w1, b1)), w2, b2))``, shape ``[N, C, 1, 1]``.

    Inputs: x [N, C, H, W], w1 [S, C, 1, 1], b1 [S] (optional), w2 [C, S, 1, 1], b2 [C]
    (optional).  ``activation`` (None: none) follows the first 1x1 convolution, ``gate`` the
    second, each with its alpha/beta as an ACTIVATION layer's.
    """

    activation: ActivationType | None
    gate: ActivationType
    activation_alpha: float = 0.0
    activation_beta: float = 0.0
    gate_alpha: float = 0.0
    gate_beta: float = 0.0


@dataclass(frozen=True)
class DeconvolutionParams:
    """Inputs: x [N, C, *spatial], kernel [C, K/groups, *window], bias [K] (optional)."""

    num_output_maps: int
    kernel_size_nd: tuple[int, ...]
    stride_nd: tuple[int, ...] = ()
    pre_padding: tuple[int, ...] = ()
    post_padding: tuple[int, ...] = ()
    dilation_nd: tuple[int, ...] = ()
    num_groups: int = 1
    output_padding: tuple[int, ...] = ()
    padding_mode: PaddingMode = PaddingMode.EXPLICIT_ROUND_DOWN


@dataclass(frozen=True)
class CumulativeParams:
    """Inputs: x, axis (shape input, scalar). ``op``: SUM (CumSum) or PROD (CumProd)."""

    exclusive: bool = False
    reverse: bool = False
    op: ReduceOperation = ReduceOperation.SUM


@dataclass(frozen=True)
class QuantizeParams:
    """Inputs: x, scale, zero_point (optional). y = saturate(round(x / scale) + zero_point)."""

    axis: int = 1
    to_type: DataType = DataType.INT8
    block_size: int = 0
    saturate: bool = True


@dataclass(frozen=True)
class DequantizeParams:
    """Inputs: x, scale, zero_point (optional). y = (x - zero_point) * scale."""

    axis: int = 1
    block_size: int = 0
    to_type: DataType = DataType.FLOAT


@dataclass(frozen=True)
class EinsumParams:
    equation: str


@dataclass(frozen=True)
class ElementWiseParams:
    op: ElementWiseOperation


@dataclass(frozen=True)
class ExpandParams:
    """Inputs: x, shape (shape input). Numpy bidirectional broadcast (ONNX Expand)."""


@dataclass(frozen=True)
class FillParams:
    """CONSTANT: input shape (shape input) filled with ``value``; RANGE: inputs start, limit, delta."""

    op: FillOperation
    value: Any = 0.0
    dtype: DataType = DataType.FLOAT


@dataclass(frozen=True)
class GatherParams:
    """Inputs: data, indices. Negative indices count from the end."""

    axis: int = 0
    mode: GatherMode = GatherMode.DEFAULT
    num_elementwise_dims: int = 0       # GatherND batch_dims


@dataclass(frozen=True)
class GridSampleParams:
    mode: str = "linear"                # linear, nearest, cubic
    padding_mode: str = "zeros"         # zeros, border, reflection
    align_corners: bool = False


@dataclass(frozen=True)
class IdentityParams:
    pass


@dataclass(frozen=True)
class LRNParams:
    window_size: int
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0


@dataclass(frozen=True)
class MatrixMultiplyParams:
    """Inputs: a, b, bias (optional, broadcast over the output; set by the optimizer).

    Fused epilogue: ``y = act(op0(a) @ op1(b) + bias)`` with ``act`` = ``activation`` when set.
    """

    op0: MatrixOperation = MatrixOperation.NONE
    op1: MatrixOperation = MatrixOperation.NONE
    activation: ActivationType | None = None
    activation_alpha: float = 0.0
    activation_beta: float = 0.0


@dataclass(frozen=True)
class QuantizedMatrixMultiplyParams(MatrixMultiplyParams):
    """A matrix multiply of an activation by 8-bit weights (made by
    ``kilnrt.optimize.passes.quantization``).

    Inputs: a (float, or already quantized), b (INT8 constant, or FP8 E4M3 when ``input_type`` is
    FP8), b_scale (float: one per output column, or one), bias (optional).  ``a`` is quantized
    per tensor as a quantized convolution's x is (or arrives quantized), and
    ``y = act(input_scale * b_scale[n] * (op0(aq - input_zero_point) @ op1(b))[..., n] + bias)``.
    See :class:`QuantizedOutput` for the output's type.
    """

    input_scale: float = 1.0
    input_zero_point: int = 0
    input_type: DataType = DataType.INT8
    output_type: DataType | None = None
    output_scale: float = 0.0


@dataclass(frozen=True)
class NMSParams:
    """Inputs: boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold."""

    center_point_box: int = 0


@dataclass(frozen=True)
class NonZeroParams:
    pass


@dataclass(frozen=True)
class NormalizationParams:
    """Inputs: x, scale, bias (optional), residual (optional, set by the optimizer: added to x
    first, same shape as x).  Outputs: y, and with ``sum_output`` (set by the optimizer, with a
    residual) also ``x + residual`` in x's type, for the layers that read the sum too (the
    residual stream of a pre-norm transformer).

    ``y = (x - mean) / sqrt(var + epsilon) * scale + bias``, with mean and variance over
    ``axes`` of x viewed as ``[N, num_groups, C / num_groups, *rest]`` when ``num_groups > 1``
    (then ``axes`` refer to the grouped view).  ``rms`` skips the mean (RMSNorm).  Statistics
    are computed in float32 at least.
    """

    axes: tuple[int, ...]
    epsilon: float = 1e-5
    num_groups: int = 1
    rms: bool = False
    sum_output: bool = False

    @classmethod
    def group_norm(cls, rank: int, epsilon: float, num_groups: int) -> "NormalizationParams":
        """GroupNorm of an ``[N, C, *spatial]`` tensor: statistics per group of channels over its
        channels and every position.  One group is all of C and the spatial dims (``num_groups=1``
        means "over ``axes``", so those are C's and the spatial ones, not the spatial ones alone,
        which would be InstanceNorm)."""
        if int(num_groups) == 1:
            return cls(tuple(range(1, rank)), float(epsilon))
        return cls(tuple(range(2, rank)), float(epsilon), num_groups=int(num_groups))


@dataclass(frozen=True)
class OneHotParams:
    """Inputs: indices, depth (shape input), values [off, on]."""

    axis: int = -1


@dataclass(frozen=True)
class PaddingParams:
    """Inputs: x, pads (shape input, ONNX layout [begins..., ends...]), value (optional), axes (optional)."""

    mode: str = "constant"              # constant, reflect, edge, wrap


@dataclass(frozen=True)
class PluginParams:
    """A built-in or user plugin (:mod:`kilnrt.network.plugin`), looked up by namespace, name and
    version. ``fields``: its attributes as (key, value) pairs of plain data; the last
    ``shape_inputs`` inputs are shape tensors (1-D ints), whose values its shape rule reads.
    ``host_inputs``: other input positions it reads as host values (a built-in's scalars that
    set sizes, such as DFT's length and axis).  Both kinds reach its kernels as host tensors,
    so a run reads them without waiting for the GPU (and can be captured in a CUDA graph)."""

    name: str
    version: str = "1"
    fields: tuple[tuple[str, Any], ...] = ()
    namespace: str = ""
    shape_inputs: int = 0
    host_inputs: tuple[int, ...] = ()

    def field(self, key: str, default: Any = None) -> Any:
        for k, v in self.fields:
            if k == key:
                return v
        return default


# the layer kinds a fused POINTWISE region is made of
POINTWISE_STEP_KINDS = frozenset({LayerKind.ACTIVATION, LayerKind.ELEMENTWISE, LayerKind.UNARY, LayerKind.CAST,
                                  LayerKind.SELECT})


@dataclass(frozen=True)
class PointwiseParams:
    """A fused region of pointwise layers (made by the optimizer's ``fuse_pointwise``).

    Inputs: the region's ``num_inputs`` operands (numpy broadcasting).  ``ops``: the steps in
    topological order, each ``(kind, params, operands)``: an ACTIVATION, ELEMENTWISE, UNARY,
    CAST or SELECT layer's kind and params, and the indices of its operands: ``0..num_inputs-1``
    are the layer's inputs, ``num_inputs + j`` is step j's result.  Outputs: the results of
    the steps listed in ``outputs``, in order.  Each step computes exactly what the layer it
    came from computed (dtypes included).
    """

    num_inputs: int
    ops: tuple[tuple[LayerKind, Any, tuple[int, ...]], ...]
    outputs: tuple[int, ...]

    def __post_init__(self) -> None:
        # plans are data: a malformed region is refused when it is built or loaded
        for j, step in enumerate(self.ops):
            if not (isinstance(step, tuple) and len(step) == 3 and isinstance(step[0], LayerKind)
                    and step[0] in POINTWISE_STEP_KINDS and isinstance(step[1], PARAMS[step[0]])
                    and isinstance(step[2], tuple)
                    and all(isinstance(i, int) and 0 <= i < self.num_inputs + j for i in step[2])):
                raise ValueError(f"pointwise step {j} is malformed: {step!r}")
        if not self.outputs or not all(isinstance(i, int) and 0 <= i < len(self.ops) for i in self.outputs):
            raise ValueError(f"pointwise outputs {self.outputs!r} must name steps 0..{len(self.ops) - 1}")


@dataclass(frozen=True)
class PoolingParams:
    type: PoolingType
    window_size_nd: tuple[int, ...]
    stride_nd: tuple[int, ...] = ()
    pre_padding: tuple[int, ...] = ()
    post_padding: tuple[int, ...] = ()
    dilation_nd: tuple[int, ...] = ()
    padding_mode: PaddingMode = PaddingMode.EXPLICIT_ROUND_DOWN
    average_count_excludes_padding: bool = True
    p: int = 2                          # LP pooling norm


@dataclass(frozen=True)
class ReduceParams:
    """Input 1 (optional, shape input) gives the axes, overriding ``axes``; an empty axes
    input reduces every axis, or none when ``noop_with_empty_axes``."""

    op: ReduceOperation
    axes: tuple[int, ...] | None = None   # None: every axis
    keep_dims: bool = True
    noop_with_empty_axes: bool = False


@dataclass(frozen=True)
class ResizeParams:
    """Inputs: x, scales, sizes, roi (each optional, shape inputs; roi for tf_crop_and_resize).

    ONNX Resize semantics; ``axes`` (None: all) says which dims scales/sizes/roi describe.
    """

    mode: str = "nearest"               # nearest, linear, cubic
    coordinate_transformation: str = "half_pixel"
    nearest_mode: str = "round_prefer_floor"
    cubic_coeff_a: float = -0.75
    exclude_outside: bool = False
    extrapolation_value: float = 0.0
    axes: tuple[int, ...] | None = None
    keep_aspect_ratio_policy: str = "stretch"
    antialias: bool = False


@dataclass(frozen=True)
class ReverseSequenceParams:
    """Inputs: x, sequence_lens."""

    batch_axis: int = 1
    time_axis: int = 0


@dataclass(frozen=True)
class RNNParams:
    """A recurrent layer (ONNX RNN / GRU / LSTM semantics; TensorRT's RNNv2).

    Inputs: x [S, B, I] (``batch_first``: [B, S, I]), w [D, G*H, I], r [D, G*H, H], then
    optional bias [D, 2*G*H], sequence_lens [B], initial_h [D, B, H], initial_c [D, B, H]
    (LSTM), peepholes [D, 3*H] (LSTM); D = 2 when bidirectional.  Gate order: LSTM i, o, f, c;
    GRU z, r, h.  Outputs: y [S, D, B, H] (``batch_first``: [B, S, D, H]), y_h [D, B, H]
    (``batch_first``: [B, D, H]), and y_c for LSTM.  Steps past a sequence's length leave
    its state unchanged and give zeros in y.
    """

    cell: str                           # rnn, gru, lstm
    hidden_size: int
    direction: str = "forward"          # forward, reverse, bidirectional
    activations: tuple[str, ...] = ()   # per direction: f (rnn); f, g (gru); f, g, h (lstm)
    activation_alpha: tuple[float, ...] = ()   # one per activation (ignored where unused)
    activation_beta: tuple[float, ...] = ()
    clip: float | None = None           # clip gate pre-activations to [-clip, clip]
    linear_before_reset: bool = False   # GRU
    input_forget: bool = False          # LSTM: couple the input and forget gates
    batch_first: bool = False


@dataclass(frozen=True)
class ScaleParams:
    """Inputs: x, shift, scale, power (each optional). y = (x * scale + shift) ** power."""

    mode: ScaleMode = ScaleMode.CHANNEL
    channel_axis: int = 1

    def broadcastable(self, weight, rank: int):
        """``weight`` (a numpy array or torch tensor) shaped to broadcast against an input of
        ``rank``: a per-channel vector gets trailing ones after the channel axis; any other
        weight broadcasts as it is."""
        if self.mode == ScaleMode.CHANNEL and weight.ndim == 1:
            return weight.reshape((-1,) + (1,) * (rank - self.channel_axis % rank - 1))
        return weight


@dataclass(frozen=True)
class ScatterParams:
    """Inputs: data, indices, updates."""

    mode: ScatterMode = ScatterMode.ELEMENT
    axis: int = 0
    reduction: str = "none"             # none, add, mul, max, min


@dataclass(frozen=True)
class SelectParams:
    """Inputs: condition, then, else (numpy broadcasting)."""


@dataclass(frozen=True)
class ShapeParams:
    """Output: int64 vector of the input's shape."""


@dataclass(frozen=True)
class ShuffleParams:
    """transpose -> reshape -> transpose. Input 1 (optional, shape input) gives reshape dims."""

    first_transpose: tuple[int, ...] | None = None
    reshape_dims: tuple[int, ...] | None = None
    second_transpose: tuple[int, ...] | None = None
    zero_is_placeholder: bool = True    # a 0 in the dims copies the input dim (ONNX allowzero=0)


@dataclass(frozen=True)
class SliceParams:
    """Inputs: x, starts, ends, axes (optional), steps (optional); all but x shape inputs.

    ONNX Slice semantics (negative indices count from the end; bounds are clamped).
    """


@dataclass(frozen=True)
class SoftmaxParams:
    axis: int = -1
    log: bool = False


@dataclass(frozen=True)
class SqueezeParams:
    """Axes to drop; None: every dim of size 1. Input 1 (optional, shape input) gives the axes."""

    axes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TileParams:
    """Inputs: x, repeats (shape input)."""


@dataclass(frozen=True)
class TopKParams:
    """Inputs: x, k (optional shape input, overrides ``k``). Outputs: values, int64 indices."""

    op: TopKOperation = TopKOperation.MAX
    k: int = 1
    axis: int = -1
    sorted: bool = True


@dataclass(frozen=True)
class UnaryParams:
    op: UnaryOperation


@dataclass(frozen=True)
class ViewParams:
    """A chain of reshapes, transposes and constant-index picks read as one strided view of
    the input (:func:`kilnrt.kernels.views.apply_view`).  Made by the optimizer where the
    composite reads memory affinely, so the chain costs no copy (attention reads q, k and v
    through strides).  ``ops``: ("permute", perm), ("reshape", shape), ("select", axis, i),
    ("slice", axis, start, stop, step)."""

    shape: tuple[int, ...] = ()
    ops: tuple = ()


@dataclass(frozen=True)
class UnsqueezeParams:
    """Axes of the output at which to insert size-1 dims. Input 1 (optional, shape input) gives them."""

    axes: tuple[int, ...] | None = None


PARAMS: dict[LayerKind, type] = {
    LayerKind.ACTIVATION: ActivationParams,
    LayerKind.ATTENTION: AttentionParams,
    LayerKind.CAST: CastParams,
    LayerKind.CONCATENATION: ConcatenationParams,
    LayerKind.CONDITIONAL: ConditionalParams,
    LayerKind.CONSTANT: ConstantParams,
    LayerKind.CONVOLUTION: ConvolutionParams,
    LayerKind.CUMULATIVE: CumulativeParams,
    LayerKind.DECONVOLUTION: DeconvolutionParams,
    LayerKind.DEQUANTIZE: DequantizeParams,
    LayerKind.EINSUM: EinsumParams,
    LayerKind.ELEMENTWISE: ElementWiseParams,
    LayerKind.EXPAND: ExpandParams,
    LayerKind.FILL: FillParams,
    LayerKind.GATHER: GatherParams,
    LayerKind.GRID_SAMPLE: GridSampleParams,
    LayerKind.IDENTITY: IdentityParams,
    LayerKind.LOOP: LoopParams,
    LayerKind.LRN: LRNParams,
    LayerKind.MATRIX_MULTIPLY: MatrixMultiplyParams,
    LayerKind.NMS: NMSParams,
    LayerKind.NON_ZERO: NonZeroParams,
    LayerKind.NORMALIZATION: NormalizationParams,
    LayerKind.ONE_HOT: OneHotParams,
    LayerKind.PADDING: PaddingParams,
    LayerKind.PLUGIN: PluginParams,
    LayerKind.POINTWISE: PointwiseParams,
    LayerKind.POOLING: PoolingParams,
    LayerKind.QUANTIZE: QuantizeParams,
    LayerKind.QUANTIZED_CONVOLUTION: QuantizedConvolutionParams,
    LayerKind.QUANTIZED_MATRIX_MULTIPLY: QuantizedMatrixMultiplyParams,
    LayerKind.REDUCE: ReduceParams,
    LayerKind.RESIZE: ResizeParams,
    LayerKind.REVERSE_SEQUENCE: ReverseSequenceParams,
    LayerKind.RNN: RNNParams,
    LayerKind.SCALE: ScaleParams,
    LayerKind.SCATTER: ScatterParams,
    LayerKind.SELECT: SelectParams,
    LayerKind.SHAPE: ShapeParams,
    LayerKind.SHUFFLE: ShuffleParams,
    LayerKind.SLICE: SliceParams,
    LayerKind.SOFTMAX: SoftmaxParams,
    LayerKind.SQUEEZE: SqueezeParams,
    LayerKind.SQUEEZE_EXCITATION: SqueezeExcitationParams,
    LayerKind.TILE: TileParams,
    LayerKind.TOPK: TopKParams,
    LayerKind.UNARY: UnaryParams,
    LayerKind.UNSQUEEZE: UnsqueezeParams,
    LayerKind.VIEW: ViewParams,
}

# Input positions read as host values (TensorRT's shape tensors).
SHAPE_INPUTS: dict[LayerKind, frozenset[int]] = {
    LayerKind.CONDITIONAL: frozenset({0}),
    LayerKind.CUMULATIVE: frozenset({1}),
    LayerKind.EXPAND: frozenset({1}),
    LayerKind.FILL: frozenset({0, 1, 2}),
    LayerKind.LOOP: frozenset({0, 1}),
    LayerKind.NMS: frozenset({2, 3, 4}),
    LayerKind.ONE_HOT: frozenset({1}),
    LayerKind.PADDING: frozenset({1, 3}),
    LayerKind.REDUCE: frozenset({1}),
    LayerKind.RESIZE: frozenset({1, 2, 3}),
    LayerKind.SHUFFLE: frozenset({1}),
    LayerKind.SLICE: frozenset({1, 2, 3, 4}),
    LayerKind.SQUEEZE: frozenset({1}),
    LayerKind.TILE: frozenset({1}),
    LayerKind.TOPK: frozenset({1}),
    LayerKind.UNSQUEEZE: frozenset({1}),
}

def shape_input_positions(layer: Any) -> frozenset[int]:
    """The input positions ``layer`` reads as host values: ``SHAPE_INPUTS`` of its kind; for a
    plugin, its trailing ``shape_inputs`` and its ``host_inputs``."""
    if layer.kind != LayerKind.PLUGIN:
        return SHAPE_INPUTS.get(layer.kind, frozenset())
    count, p = len(layer.inputs), layer.params
    return frozenset(range(count - p.shape_inputs, count)) | frozenset(p.host_inputs)


# Layers whose output shape depends on input values that are not shape inputs.
DATA_DEPENDENT: frozenset[LayerKind] = frozenset({LayerKind.NON_ZERO, LayerKind.NMS})

ENUMS: dict[str, type[enum.Enum]] = {
    e.__name__: e
    for e in (LayerKind, ActivationType, ElementWiseOperation, UnaryOperation, MatrixOperation,
              PaddingMode, PoolingType, ScaleMode, ReduceOperation, TopKOperation, GatherMode,
              ScatterMode, FillOperation, DataType)
}


def params_replace(params: Any, **changes: Any) -> Any:
    """A copy of a frozen params dataclass with some fields changed."""
    return dataclasses.replace(params, **changes)


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("annotations", "dataclasses", "enum", "np")]
