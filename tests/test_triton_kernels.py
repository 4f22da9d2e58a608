"""kilnrt's Triton tactics against the CPU reference kernels, on the CPU under Triton's interpreter.

TRITON_INTERPRET=1 is set before kilnrt's kernels are defined (``@triton.jit`` reads it), so they
run on CPU tensors (small shapes: the interpreter is slow).  fp16 results are compared with the
reference on the float32 copy of the same input.  Skipped on GPU machines, where setting the
variable would turn the whole process's Triton tactics into interpreted ones; there, run
``benchmarks/triton_check.py``.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

if torch.cuda.is_available():  # the env var below would make every Triton tactic of this process interpreted
    pytest.skip("interpreter tests run on CPU machines; on a GPU run benchmarks/triton_check.py",
                allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from kilnrt.kernels.registry import TacticContext, get_tactic, reference_kernel, tactics_for  # noqa: E402
from kilnrt.kernels.triton import pointwise, softmax  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.network.layers import (ActivationParams, ActivationType as A, ElementWiseOperation as E,  # noqa: E402
                                   ElementWiseParams, LayerKind, NormalizationParams, SoftmaxParams,
                                   UnaryOperation as U, UnaryParams)
from kilnrt.testing import fresh_seed  # noqa: E402

if not isinstance(softmax._softmax_rows, triton.runtime.interpreter.InterpretedFunction):
    pytest.skip("kilnrt.kernels.triton was imported before TRITON_INTERPRET=1 was set; run this file on its own",
                allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, on masked-out lanes

CTX = TacticContext(torch.device("cpu"))
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2)}
DT = {torch.float32: DataType.FLOAT, torch.float16: DataType.HALF, torch.bfloat16: DataType.BF16,
      torch.float64: DataType.DOUBLE, torch.int32: DataType.INT32, torch.bool: DataType.BOOL}


def make_layer(kind, params, *inputs):
    """A layer of a fresh network whose inputs are ``(dtype, shape)`` pairs (None: omitted)."""
    net = Network()
    ts = [None if spec is None else net.add_input(f"in{i}", spec[0], spec[1]) for i, spec in enumerate(inputs)]
    return net.add_layer(kind, params, ts)


def nonzero(shape, dtype=torch.float32, positive=False, scale=1.0):
    x = torch.randn(shape) * scale
    x = torch.where(x.abs() < 1e-2, torch.full_like(x, 0.5), x)
    return (x.abs() + 0.1 if positive else x).to(dtype)


def check(name, layer, tensors, seed):
    tac = get_tactic(name)
    assert tac.supports(layer, CTX), f"{name} declined {layer}"
    out = tac.run(tac.prepare(layer, CTX), tensors)[0]
    ref = reference_kernel(layer.kind)(layer.params, *[None if t is None else t.float() for t in tensors])
    x = tensors[0]
    shapes = [tuple(t.shape) for t in tensors if t is not None]
    assert out.dtype == x.dtype and out.shape == ref.shape
    rtol, atol = TOL[x.dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{name} {layer.params} {shapes} {x.dtype} seed={seed}\n{m}")
    return out


@pytest.fixture
def seed():
    s = fresh_seed()
    torch.manual_seed(s)
    return s


ROWS = [1, 7, 33, 1000]
LEADS = [(1,), (3, 5)]
DTYPES = [torch.float32, torch.float16]


# ----------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead", LEADS, ids=str)
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax(n, lead, dtype, log, seed):
    shape = lead + (n,)
    layer = make_layer(LayerKind.SOFTMAX, SoftmaxParams(axis=len(shape) - 1, log=log), (DT[dtype], shape))
    check("cuda.softmax.triton", layer, [nonzero(shape, dtype, scale=3.0)], seed)


def test_softmax_bf16_and_non_contiguous(seed):
    x = nonzero((33, 6), torch.bfloat16).t()  # [6, 33], not contiguous
    layer = make_layer(LayerKind.SOFTMAX, SoftmaxParams(axis=-1), (DataType.BF16, (6, 33)))
    check("cuda.softmax.triton", layer, [x], seed)


@pytest.mark.parametrize("dtype,shape,axis", [
    (DataType.FLOAT, (4, 7), 0),            # not the last axis
    (DataType.FLOAT, (2, 40000), -1),       # row longer than 32768
    (DataType.FLOAT, (2, "seq"), -1),       # row length unknown at build
    (DataType.DOUBLE, (4, 7), -1),
    (DataType.INT32, (4, 7), -1),
])
def test_softmax_declines(dtype, shape, axis):
    layer = make_layer(LayerKind.SOFTMAX, SoftmaxParams(axis=axis), (dtype, shape))
    assert not get_tactic("cuda.softmax.triton").supports(layer, CTX)


# ----------------------------------------------------------------------------- normalization
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead", LEADS, ids=str)
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("variant", ["layernorm", "layernorm_no_affine", "rmsnorm"])
def test_normalization(n, lead, dtype, variant, seed):
    shape = lead + (n,)
    rms = variant == "rmsnorm"
    affine = variant != "layernorm_no_affine"
    p = NormalizationParams(axes=(len(shape) - 1,), epsilon=1e-5, rms=rms)
    specs = [(DT[dtype], shape)] + ([(DT[dtype], (n,))] * (1 if rms else 2) if affine else [])
    layer = make_layer(LayerKind.NORMALIZATION, p, *specs)
    tensors = [nonzero(shape, dtype, scale=2.0) + 0.7] + [nonzero((n,), dtype) for _ in specs[1:]]
    check("cuda.normalization.triton", layer, tensors, seed)


def test_normalization_two_trailing_axes_fp32_scale(seed):
    p = NormalizationParams(axes=(1, 2), epsilon=1e-3)
    layer = make_layer(LayerKind.NORMALIZATION, p, (DataType.HALF, (3, 5, 7)), (DataType.FLOAT, (1, 5, 7)),
                       (DataType.FLOAT, (5, 7)))
    check("cuda.normalization.triton", layer, [nonzero((3, 5, 7), torch.float16), nonzero((1, 5, 7)),
                                               nonzero((5, 7))], seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_normalization_with_fused_residual(dtype, seed):
    shape = (3, 5, 33)
    p = NormalizationParams(axes=(2,), epsilon=1e-5)
    layer = make_layer(LayerKind.NORMALIZATION, p, (DT[dtype], shape), (DT[dtype], (33,)), (DT[dtype], (33,)),
                       (DT[dtype], shape))
    check("cuda.normalization.triton", layer, [nonzero(shape, dtype), nonzero((33,), dtype), nonzero((33,), dtype),
                                               nonzero(shape, dtype)], seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_normalization_with_fused_residual_and_its_sum(dtype, rms, seed):
    """sum_output: the kernel also stores x + residual (in x's type), the residual stream's next value."""
    shape = (2, 7, 40)
    p = NormalizationParams(axes=(2,), epsilon=1e-5, rms=rms, sum_output=True)
    layer = make_layer(LayerKind.NORMALIZATION, p, (DT[dtype], shape), (DT[dtype], (40,)), None, (DT[dtype], shape))
    x, scale, r = nonzero(shape, dtype), nonzero((40,), dtype), nonzero(shape, dtype)
    tac = get_tactic("cuda.normalization.triton")
    assert tac.supports(layer, CTX)
    y, total = tac.run(tac.prepare(layer, CTX), [x, scale, None, r])
    want_y, want_total = reference_kernel(LayerKind.NORMALIZATION)(p, x.float(), scale.float(), None, r.float())
    torch.testing.assert_close(total, x + r, rtol=0, atol=0, msg=lambda m: f"seed={seed}\n{m}")
    torch.testing.assert_close(y.float(), want_y, rtol=TOL[dtype][0], atol=TOL[dtype][1],
                               msg=lambda m: f"seed={seed}\n{m}")


NORMS = ["cuda.normalization.triton", "cuda.normalization.triton_split"]


@pytest.mark.parametrize("name", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale_shape,bias_shape", [((6, 1), (6, 1)), ((1, 6, 1), (1, 6, 1)), ((1,), (1,)),
                                                    ((6, 1), (1,)), ((1,), (6, 1)), ((2, 6, 1), (6, 1))], ids=str)
def test_normalization_with_a_scale_per_row(name, dtype, scale_shape, bias_shape, seed):
    """InstanceNormalization's layout: x [N, C, L] normalized over L, scale and bias [C, 1]
    (constant along the row); a single value for every row; a scale and a bias of different
    sizes (each indexed by its own)."""
    shape = (2, 6, 4100)   # rows longer than one split program's 4096
    p = NormalizationParams(axes=(2,), epsilon=1e-5)
    layer = make_layer(LayerKind.NORMALIZATION, p, (DT[dtype], shape), (DT[dtype], scale_shape),
                       (DT[dtype], bias_shape))
    check(name, layer, [nonzero(shape, dtype, scale=2.0) + 0.7, nonzero(scale_shape, dtype),
                        nonzero(bias_shape, dtype)], seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_split_normalization_of_long_rows(dtype, rms, seed):
    """Rows of 40,000 (beyond one program's registers) with a residual, its sum stored, and a
    mean 30 times the spread (the chunks' moments are combined without cancelling it)."""
    shape = (2, 40000)
    p = NormalizationParams(axes=(1,), epsilon=1e-5, rms=rms, sum_output=True)
    layer = make_layer(LayerKind.NORMALIZATION, p, (DT[dtype], shape), (DT[dtype], (40000,)),
                       (DT[dtype], (40000,)), (DT[dtype], shape))
    x, scale, bias, r = nonzero(shape, dtype) + 30.0, nonzero((40000,), dtype), nonzero((40000,), dtype), \
        nonzero(shape, dtype)
    tac = get_tactic("cuda.normalization.triton_split")
    assert tac.supports(layer, CTX) and not get_tactic("cuda.normalization.triton").supports(layer, CTX)
    y, total = tac.run(tac.prepare(layer, CTX), [x, scale, bias, r])
    want_y, _ = reference_kernel(LayerKind.NORMALIZATION)(p, (x + r).double(), scale.double(), bias.double(), None)
    torch.testing.assert_close(total, x + r, rtol=0, atol=0, msg=lambda m: f"seed={seed}\n{m}")
    torch.testing.assert_close(y.double(), want_y, rtol=TOL[dtype][0], atol=TOL[dtype][1],
                               msg=lambda m: f"seed={seed}\n{m}")


@pytest.mark.parametrize("p,specs", [
    (NormalizationParams(axes=(2,), num_groups=2), [(DataType.FLOAT, (2, 4, 6))]),      # group norm
    (NormalizationParams(axes=(1,)), [(DataType.FLOAT, (2, 4, 6))]),                    # not trailing
    (NormalizationParams(axes=(1,)), [(DataType.FLOAT, (2, "n"))]),                     # symbolic row
    (NormalizationParams(axes=(1,)), [(DataType.FLOAT, (2, 6)), (DataType.FLOAT, (3,))]),   # scale fits no way
    (NormalizationParams(axes=(2,)), [(DataType.FLOAT, (2, 4, 6)), (DataType.FLOAT, (4, 1)),
                                      (DataType.FLOAT, (6,))]),                          # per row and per column
    (NormalizationParams(axes=(1,)), [(DataType.DOUBLE, (2, 6))]),
    (NormalizationParams(axes=(1,)), [(DataType.INT32, (2, 6))]),
])
@pytest.mark.parametrize("name", NORMS)
def test_normalization_declines(p, specs, name):
    layer = make_layer(LayerKind.NORMALIZATION, p, *specs)
    assert not get_tactic(name).supports(layer, CTX)


def test_normalization_row_lengths_each_tactic_takes():
    short = make_layer(LayerKind.NORMALIZATION, NormalizationParams(axes=(1,)), (DataType.FLOAT, (2, 4096)))
    long = make_layer(LayerKind.NORMALIZATION, NormalizationParams(axes=(1,)), (DataType.FLOAT, (2, 40000)))
    assert get_tactic(NORMS[0]).supports(short, CTX) and not get_tactic(NORMS[1]).supports(short, CTX)
    assert not get_tactic(NORMS[0]).supports(long, CTX) and get_tactic(NORMS[1]).supports(long, CTX)


# ----------------------------------------------------------------------------- activations
ACTIVATIONS = [
    (A.RELU, 0, 0), (A.SIGMOID, 0, 0), (A.TANH, 0, 0), (A.LEAKY_RELU, 0.1, 0), (A.ELU, 1.3, 0),
    (A.SELU, 1.6732632, 1.0507010), (A.SOFTSIGN, 0, 0), (A.SOFTPLUS, 0, 0), (A.CLIP, -0.5, 0.7),
    (A.CLIP, -math.inf, 0.7), (A.HARD_SIGMOID, 0.2, 0.5), (A.SCALED_TANH, 1.5, 0.7),
    (A.THRESHOLDED_RELU, 0.3, 0), (A.GELU_ERF, 0, 0), (A.GELU_TANH, 0, 0), (A.SILU, 0, 0),
    (A.MISH, 0, 0), (A.HARD_SWISH, 0, 0), (A.CELU, 0.8, 0),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act,alpha,beta", ACTIVATIONS, ids=lambda v: getattr(v, "name", str(v)))
def test_activation(act, alpha, beta, dtype, seed):
    x = nonzero((3, 5, 33), dtype, scale=3.0)
    x.view(-1)[:4] = torch.tensor([25.0, -25.0, 1e-4, -1e-4])  # softplus threshold, expm1 near 0
    layer = make_layer(LayerKind.ACTIVATION, ActivationParams(act, alpha, beta), (DT[dtype], x.shape))
    check("cuda.activation.triton", layer, [x], seed)


# ----------------------------------------------------------------------------- unary
UNARY_POSITIVE = {U.LOG, U.SQRT}
UNARY = [U.EXP, U.LOG, U.SQRT, U.RECIP, U.ABS, U.NEG, U.SIN, U.COS, U.TAN, U.SINH, U.COSH, U.ERF,
         U.FLOOR, U.CEIL, U.SIGN]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", UNARY, ids=lambda v: v.name)
def test_unary(op, dtype, seed):
    x = nonzero((3, 5, 7), dtype, positive=op in UNARY_POSITIVE, scale=2.0)
    layer = make_layer(LayerKind.UNARY, UnaryParams(op), (DT[dtype], x.shape))
    check("cuda.unary.triton", layer, [x], seed)


# ----------------------------------------------------------------------------- elementwise
BROADCASTS = [((3, 5, 33), (3, 5, 33)), ((3, 5, 33), (33,)), ((3, 1, 7), (5, 1)), ((1000,), (1,)),
              ((1,), (3, 5, 7)), ((), ())]


def binary_layer(op, dtype, shape_a, shape_b):
    return make_layer(LayerKind.ELEMENTWISE, ElementWiseParams(op), (dtype, shape_a), (dtype, shape_b))


def _operands(op, sa, sb, dtype):
    a = nonzero(sa, dtype, positive=op == E.POW, scale=2.0)
    b = nonzero(sb, dtype, positive=op == E.DIV, scale=2.0)
    if op == E.POW:
        b = b.clamp(-3, 3)
    return a, b


@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
@pytest.mark.parametrize("op", [E.SUM, E.PROD, E.SUB, E.DIV, E.MAX, E.MIN, E.POW], ids=lambda v: v.name)
def test_elementwise_fp32(op, shapes, seed):
    a, b = _operands(op, *shapes, torch.float32)
    layer = binary_layer(op, DataType.FLOAT, a.shape, b.shape)
    check("cuda.elementwise.triton", layer, [a, b], seed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", [E.SUM, E.PROD, E.DIV, E.MAX, E.POW], ids=lambda v: v.name)
def test_elementwise_low_precision(op, dtype, seed):
    a, b = _operands(op, (3, 5, 33), (5, 1), dtype)
    layer = binary_layer(op, DT[dtype], a.shape, b.shape)
    check("cuda.elementwise.triton", layer, [a, b], seed)


def test_pow_negative_base(seed):
    a = nonzero((4, 9))
    b = torch.tensor([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 0.5, 2.5])
    layer = binary_layer(E.POW, DataType.FLOAT, (4, 9), (9,))
    out = check("cuda.elementwise.triton", layer, [a, b], seed)
    assert out[:, 7:][a[:, 7:] < 0].isnan().all()


def test_elementwise_keeps_channels_last_layout(seed):
    x = nonzero((2, 6, 5, 3)).contiguous(memory_format=torch.channels_last)
    bias = nonzero((1, 6, 1, 1))
    layer = binary_layer(E.SUM, DataType.FLOAT, x.shape, bias.shape)
    out = check("cuda.elementwise.triton", layer, [x, bias], seed)
    assert out.stride() == x.stride()


def test_elementwise_non_contiguous_operands(seed):
    a = nonzero((7, 5)).t()                # [5, 7], transposed
    b = nonzero((5, 14))[:, ::2]           # [5, 7], every other column
    layer = binary_layer(E.SUB, DataType.FLOAT, (5, 7), (5, 7))
    check("cuda.elementwise.triton", layer, [a, b], seed)


def test_int64_offsets_source_runs(seed):
    """The int64-offset variant (for tensors past 2**31 elements) renders and computes the same."""
    tree = pointwise.Node(E.SUM, (pointwise.input_node(0), pointwise.input_node(1)))
    src = pointwise.kernel_source(tree, ("flat", "strided"), 2, big=True)
    assert "tl.program_id(0).to(tl.int64)" in src
    a, b = nonzero((5, 7)), nonzero((7,))
    out = torch.empty_like(a)
    pointwise.load_kernel(src)[(1,)](out, a, b, 35, 5, 7, 0, 1, BLOCK=64, USE_PDL=False)
    torch.testing.assert_close(out, a + b, msg=lambda m: f"seed={seed}\n{m}")


def test_fused_expression_tree(seed):
    """The generator renders a multi-op tree (the fusion use): gelu(a * b + c), b shared."""
    x0, x1, x2 = (pointwise.input_node(i) for i in range(3))
    tree = pointwise.Node(A.GELU_ERF, (pointwise.Node(E.SUM, (pointwise.Node(E.PROD, (x0, x1)), x2)),), (0.0, 0.0))
    a, b, c = nonzero((3, 33)), nonzero((33,)), nonzero((3, 1))
    out = pointwise.PointwiseKernel(tree, 3)(a, b, c)
    torch.testing.assert_close(out, torch.nn.functional.gelu(a * b + c), msg=lambda m: f"seed={seed}\n{m}")


@pytest.mark.parametrize("kind,params,specs", [
    (LayerKind.ELEMENTWISE, ElementWiseParams(E.SUM), [(DataType.INT32, (4,)), (DataType.INT32, (4,))]),
    (LayerKind.ELEMENTWISE, ElementWiseParams(E.AND), [(DataType.BOOL, (4,)), (DataType.BOOL, (4,))]),
    (LayerKind.ELEMENTWISE, ElementWiseParams(E.MOD), [(DataType.FLOAT, (4,)), (DataType.FLOAT, (4,))]),
    (LayerKind.ELEMENTWISE, ElementWiseParams(E.LESS), [(DataType.FLOAT, (4,)), (DataType.FLOAT, (4,))]),
    (LayerKind.ELEMENTWISE, ElementWiseParams(E.SUM), [(DataType.DOUBLE, (4,)), (DataType.DOUBLE, (4,))]),
    (LayerKind.ELEMENTWISE, ElementWiseParams(E.POW), [(DataType.FLOAT, (4,)), (DataType.INT32, (4,))]),
    (LayerKind.ELEMENTWISE, ElementWiseParams(E.SUM), [(DataType.FLOAT, (1,) * 7), (DataType.FLOAT, (1,))]),
    (LayerKind.UNARY, UnaryParams(U.ROUND), [(DataType.FLOAT, (4,))]),
    (LayerKind.UNARY, UnaryParams(U.ISNAN), [(DataType.FLOAT, (4,))]),
    (LayerKind.UNARY, UnaryParams(U.ABS), [(DataType.INT32, (4,))]),
    (LayerKind.ACTIVATION, ActivationParams(A.RELU), [(DataType.INT32, (4,))]),
    (LayerKind.ACTIVATION, ActivationParams(A.ELU, math.inf), [(DataType.FLOAT, (4,))]),
])
def test_pointwise_declines(kind, params, specs):
    layer = make_layer(kind, params, *specs)
    assert not get_tactic(f"cuda.{kind.value}.triton").supports(layer, CTX)


def test_tactics_are_registered_beside_torch():
    layer = make_layer(LayerKind.SOFTMAX, SoftmaxParams(axis=-1), (DataType.HALF, (4, 64)))
    names = {t.name for t in tactics_for(layer, "cuda", CTX)}
    assert {"cuda.softmax.triton", "cuda.softmax.torch"} <= names


# ----------------------------------------------------------------------------- GEMM + epilogue
from kilnrt.kernels.triton import gemm  # noqa: E402
from kilnrt.network.layers import MatrixMultiplyParams, MatrixOperation  # noqa: E402

GEMM_CONFIGS = ["cuda.matrix_multiply.triton_16x64x256_s3_w4", "cuda.matrix_multiply.triton_64x32x128_s4_w4",
                "cuda.matrix_multiply.triton_64x128x64_s3_w4"]


def _gemm_case(m_lead, k, n, dtype, act, with_bias, transpose_w, seed):
    net = Network()
    x_t = net.add_input("x", DT[dtype], tuple(m_lead) + (k,))
    w_shape = (n, k) if transpose_w else (k, n)
    w_t = net.add_input("w", DT[dtype], w_shape)
    ins = [x_t, w_t]
    consts = {"w": (torch.randn(w_shape) / k ** 0.5).to(dtype)}
    if with_bias:
        ins.append(net.add_input("b", DT[dtype], (n,)))
        consts["b"] = torch.randn(n).to(dtype)
    op1 = MatrixOperation.TRANSPOSE if transpose_w else MatrixOperation.NONE
    layer = net.add_layer(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(op1=op1, activation=act), ins)
    return layer, TacticContext(torch.device("cpu"), consts), consts


def _gemm_check(name, layer, ctx, consts, x, seed):
    tac = get_tactic(name)
    assert tac.supports(layer, ctx), name
    out = tac.run(tac.prepare(layer, ctx), [x, consts["w"], consts.get("b")])[0]
    ref = reference_kernel(LayerKind.MATRIX_MULTIPLY)(layer.params, x.double(), consts["w"].double(),
                                                      *([consts["b"].double()] if "b" in consts else []))
    assert out.dtype == x.dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2,
                               msg=lambda m: f"{name} {layer.params} {tuple(x.shape)} seed={seed}\n{m}")


@pytest.mark.parametrize("name", GEMM_CONFIGS)
@pytest.mark.parametrize("m_lead,k,n", [((1,), 72, 24), ((37,), 128, 136), ((2, 9), 264, 40)])
@pytest.mark.parametrize("act", [None, A.GELU_ERF, A.RELU])
def test_triton_gemm_epilogue_odd_sizes(name, m_lead, k, n, act, seed):
    layer, ctx, consts = _gemm_case(m_lead, k, n, torch.float16, act, True, True, seed)
    _gemm_check(name, layer, ctx, consts, nonzero(tuple(m_lead) + (k,), torch.float16), seed)


@pytest.mark.parametrize("act", [A.GELU_TANH, A.TANH, A.SIGMOID, A.SILU])
def test_triton_gemm_other_activations_no_bias(act, seed):
    # float16 only here: the interpreter multiplies bfloat16 blocks as raw bits (bf16 runs in
    # tests/test_cuda.py on the GPU)
    layer, ctx, consts = _gemm_case((19,), 64, 48, torch.float16, act, False, False, seed)
    _gemm_check(GEMM_CONFIGS[1], layer, ctx, consts, nonzero((19, 64), torch.float16), seed)


def test_triton_gemm_reads_a_transposed_view_in_place(seed):
    """x = [S, B, K] viewed from [B, S, K] memory (ViT's batch-second attention): no copy,
    and the result has x's dim order."""
    layer, ctx, consts = _gemm_case((5, 3), 64, 32, torch.float16, A.GELU_ERF, True, True, seed)
    x = nonzero((3, 5, 64), torch.float16).transpose(0, 1)
    a, lead, inverse = gemm.rows_in_memory_order(x)
    assert a.data_ptr() == x.data_ptr() and a.is_contiguous() and inverse == [1, 0, 2]
    _gemm_check(GEMM_CONFIGS[0], layer, ctx, consts, x, seed)


@pytest.mark.parametrize("k,n,dtype,op0", [(60, 32, torch.float16, MatrixOperation.NONE),    # K % 8
                                           (64, 12, torch.float16, MatrixOperation.NONE),    # N < 16
                                           (64, 32, torch.float32, MatrixOperation.NONE),    # TF32 only
                                           (64, 32, torch.float16, MatrixOperation.TRANSPOSE)])
def test_triton_gemm_declines(k, n, dtype, op0):
    net = Network()
    x_t = net.add_input("x", DT[dtype], (4, k))
    w_t = net.add_input("w", DT[dtype], (k, n))
    layer = net.add_layer(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(op0=op0), [x_t, w_t])
    ctx = TacticContext(torch.device("cpu"), {"w": torch.randn(k, n).to(dtype)})
    assert not get_tactic(GEMM_CONFIGS[0]).supports(layer, ctx)


# ----------------------------------------------------------------------------- conv + fused epilogue
from kilnrt.network.layers import ConvolutionParams, PaddingMode  # noqa: E402


@pytest.mark.parametrize("act,residual,groups", [(A.CLIP, False, 5), (A.SILU, True, 1), (None, True, 1),
                                                 (A.HARD_SWISH, False, 1)])
def test_conv_triton_epilogue(act, residual, groups, seed):
    c, k = 5, 5 if groups > 1 else 7
    params = ConvolutionParams(num_output_maps=k, kernel_size_nd=(3, 3), stride_nd=(2, 1), pre_padding=(1, 0),
                               post_padding=(1, 2), num_groups=groups, activation=act,
                               activation_beta=6.0 if act == A.CLIP else 0.0)
    x = nonzero((2, c, 9, 6), torch.float32, scale=2.0)
    w = torch.randn(k, c // groups, 3, 3) / 3
    b = torch.randn(k)
    net = Network()
    ins = [net.add_input("x", DataType.FLOAT, tuple(x.shape)), net.add_input("w", DataType.FLOAT, tuple(w.shape)),
           net.add_input("b", DataType.FLOAT, (k,))]
    ref_args = [x, w, b]
    if residual:
        out_shape = reference_kernel(LayerKind.CONVOLUTION)(params, x, w, b).shape
        r = nonzero(tuple(out_shape))
        ins.append(net.add_input("r", DataType.FLOAT, tuple(r.shape)))
        ref_args.append(r)
    layer = net.add_layer(LayerKind.CONVOLUTION, params, ins)
    ctx = TacticContext(torch.device("cpu"), {"w": w, "b": b})
    tac = get_tactic("cuda.convolution.cudnn_nhwc_triton_epilogue")
    assert tac.supports(layer, ctx)
    out = tac.run(tac.prepare(layer, ctx), [x, w, b] + ref_args[3:])[0]
    ref = reference_kernel(LayerKind.CONVOLUTION)(params, *ref_args)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4, msg=lambda m: f"seed={seed}\n{m}")


# ----------------------------------------------------------------------------- depthwise conv + epilogue
from kilnrt.kernels.triton import depthwise  # noqa: E402

DEPTHWISE = [f"cuda.convolution.triton_depthwise_{p}x{c}_w{w}" for p, c, w in depthwise.CONFIGS]


def _depthwise_case(c, window, stride, pre, post, dilation, act, residual, x_shape, dtype, seed,
                    mode=PaddingMode.EXPLICIT_ROUND_DOWN, alpha=0.0, beta=0.0, with_bias=True):
    params = ConvolutionParams(num_output_maps=c, kernel_size_nd=window, stride_nd=stride, pre_padding=pre,
                               post_padding=post, dilation_nd=dilation, num_groups=c, padding_mode=mode,
                               activation=act, activation_alpha=alpha, activation_beta=beta)
    x = nonzero(x_shape, torch.float32, scale=2.0)
    w = torch.randn(c, 1, *window) / window[0]
    b = torch.randn(c) if with_bias else None
    ref_args = [x, w, b]
    net = Network()
    ins = [net.add_input("x", DT[dtype], tuple(x.shape)), net.add_input("w", DT[dtype], tuple(w.shape)),
           net.add_input("b", DT[dtype], (c,)) if with_bias else None]
    if residual:
        r = nonzero(tuple(reference_kernel(LayerKind.CONVOLUTION)(params, x, w, b).shape))
        ins.append(net.add_input("r", DT[dtype], tuple(r.shape)))
        ref_args.append(r)
    layer = net.add_layer(LayerKind.CONVOLUTION, params, ins)
    consts = {"w": w.to(dtype)} | ({"b": b.to(dtype)} if with_bias else {})
    # the reference sees the same rounded values the kernel reads
    ref_args = [None if a is None else a.to(dtype).double() for a in ref_args]
    return layer, TacticContext(torch.device("cpu"), consts), ref_args


def _depthwise_check(name, layer, ctx, ref_args, dtype, seed, tol):
    tac = get_tactic(name)
    if tac.block_c > max(16, triton.next_power_of_2(layer.params.num_groups)):
        assert not tac.supports(layer, ctx), f"{name}: a channel tile over twice the channels"
        return
    assert tac.supports(layer, ctx), name
    args = [a if a is None else a.to(dtype) for a in ref_args]
    out = tac.run(tac.prepare(layer, ctx), args)[0]
    ref = reference_kernel(LayerKind.CONVOLUTION)(layer.params, *ref_args)
    assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol,
                               msg=lambda m: f"{name} {layer.params} seed={seed}\n{m}")


@pytest.mark.parametrize("name", DEPTHWISE)
@pytest.mark.parametrize("c,window,stride,pre,post,dilation,act,residual,x_shape", [
    (20, (3, 3), (1, 1), (1, 1), (1, 1), (), A.CLIP, False, (2, 20, 7, 9)),        # MobileNet: ReLU6
    (24, (5, 5), (2, 2), (2, 1), (1, 2), (), A.SILU, False, (1, 24, 11, 10)),      # EfficientNet, odd pads
    (72, (7, 7), (1, 1), (3, 3), (3, 3), (), None, True, (3, 72, 8, 8)),           # ConvNeXt, + residual
    (136, (3, 3), (1, 2), (2, 2), (2, 2), (2, 2), A.HARD_SWISH, True, (1, 136, 6, 13)),  # dilated
])
def test_triton_depthwise_conv(name, c, window, stride, pre, post, dilation, act, residual, x_shape, seed):
    layer, ctx, ref_args = _depthwise_case(c, window, stride, pre, post, dilation, act, residual, x_shape,
                                           torch.float32, seed, beta=6.0 if act == A.CLIP else 0.0)
    _depthwise_check(name, layer, ctx, ref_args, torch.float32, seed, 1e-4)


@pytest.mark.parametrize("act,alpha,beta", [(A.RELU, 0, 0), (A.LEAKY_RELU, 0.1, 0), (A.GELU_ERF, 0, 0),
                                            (A.GELU_TANH, 0, 0), (A.SIGMOID, 0, 0), (A.TANH, 0, 0),
                                            (A.HARD_SIGMOID, 0.2, 0.5)])
def test_triton_depthwise_conv_activations_fp16_same_padding(act, alpha, beta, seed):
    layer, ctx, ref_args = _depthwise_case(48, (3, 3), (2, 2), (), (), (), act, False, (2, 48, 9, 8),
                                           torch.float16, seed, mode=PaddingMode.SAME_UPPER, alpha=alpha,
                                           beta=beta, with_bias=False)
    _depthwise_check(DEPTHWISE[1], layer, ctx, ref_args, torch.float16, seed, 1e-2)


@pytest.mark.parametrize("groups,w_shape,mode", [(4, (8, 1, 3, 3), PaddingMode.EXPLICIT_ROUND_DOWN),  # multiplier 2
                                                 (1, (8, 8, 3, 3), PaddingMode.EXPLICIT_ROUND_DOWN),  # dense
                                                 (8, (8, 1, 3, 3), PaddingMode.EXPLICIT_ROUND_UP)])   # ceil mode
def test_triton_depthwise_declines(groups, w_shape, mode):
    params = ConvolutionParams(num_output_maps=w_shape[0], kernel_size_nd=(3, 3), num_groups=groups,
                               padding_mode=mode)
    net = Network()
    c_in = w_shape[1] * groups
    layer = net.add_layer(LayerKind.CONVOLUTION, params, [net.add_input("x", DataType.HALF, (1, c_in, 8, 8)),
                                                          net.add_input("w", DataType.HALF, w_shape)])
    ctx = TacticContext(torch.device("cpu"), {"w": torch.randn(w_shape).half()})
    assert not any(get_tactic(name).supports(layer, ctx) for name in DEPTHWISE)


# ----------------------------------------------------------------------------- 1x1 conv as a GEMM + epilogue
from kilnrt.kernels.triton import conv_gemm  # noqa: E402

CONV_GEMM = [f"cuda.convolution.triton_gemm_{gemm.config_name(*c)}" for c in conv_gemm.CONFIGS]


def _conv1x1_layer(c, k, x_shape, act, residual, dtype=DataType.HALF, stride=(), groups=1, window=(1, 1)):
    params = ConvolutionParams(num_output_maps=k, kernel_size_nd=window, stride_nd=stride, num_groups=groups,
                               activation=act, activation_beta=6.0 if act == A.CLIP else 0.0)
    net = Network()
    ins = [net.add_input("x", dtype, x_shape), net.add_input("w", dtype, (k, c // groups) + window),
           net.add_input("b", dtype, (k,))]
    if residual:
        ins.append(net.add_input("r", dtype, (x_shape[0], k) + x_shape[2:]))
    return net.add_layer(LayerKind.CONVOLUTION, params, ins)


@pytest.mark.parametrize("name", CONV_GEMM)
@pytest.mark.parametrize("c,k,x_shape,act,residual", [
    (24, 144, (2, 24, 5, 7), A.CLIP, False),     # MobileNet expand + ReLU6; rows not a tile multiple
    (144, 40, (1, 144, 3, 3), None, True),      # project + residual, batch 1
    (40, 16, (3, 40, 4, 1), A.SILU, True),      # EfficientNet
])
def test_triton_conv_gemm(name, c, k, x_shape, act, residual, seed):
    layer = _conv1x1_layer(c, k, x_shape, act, residual)
    w = (torch.randn(k, c, 1, 1) / c ** 0.5).half()
    b = torch.randn(k).half()
    ctx = TacticContext(torch.device("cpu"), {"w": w, "b": b})
    x = nonzero(x_shape, torch.float16).contiguous(memory_format=torch.channels_last)
    args = [x, w, b]
    if residual:
        args.append(nonzero((x_shape[0], k) + x_shape[2:], torch.float16))  # NCHW: the tactic converts it
    tac = get_tactic(name)
    assert tac.supports(layer, ctx), name
    out = tac.run(tac.prepare(layer, ctx), args)[0]
    ref = reference_kernel(LayerKind.CONVOLUTION)(layer.params, *(a.double() for a in args))
    assert out.dtype == torch.float16 and out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2, msg=lambda m: f"{name} seed={seed}\n{m}")


@pytest.mark.parametrize("kwargs", [dict(stride=(2, 2)), dict(groups=2), dict(window=(3, 3)),
                                    dict(dtype=DataType.FLOAT)])
def test_triton_conv_gemm_declines(kwargs):
    layer = _conv1x1_layer(16, 32, (1, 16, 4, 4), None, False, **kwargs)
    groups, window = kwargs.get("groups", 1), kwargs.get("window", (1, 1))
    ctx = TacticContext(torch.device("cpu"), {"w": torch.randn((32, 16 // groups) + window).half()})
    assert not any(get_tactic(name).supports(layer, ctx) for name in CONV_GEMM)


# ----------------------------------------------------------------------------- implicit-GEMM convolution
from kilnrt.kernels.triton import conv_implicit  # noqa: E402

IMPLICIT = [conv_implicit.TritonImplicitConv(*c).name for c in conv_implicit.CONFIGS]


def _conv_layer(c, k, x_shape, window, stride, pads, dilation, act, residual, mode=PaddingMode.EXPLICIT_ROUND_DOWN):
    params = ConvolutionParams(num_output_maps=k, kernel_size_nd=window, stride_nd=stride, pre_padding=pads,
                               post_padding=pads, dilation_nd=dilation, padding_mode=mode, activation=act)
    net = Network()
    ins = [net.add_input("x", DataType.HALF, x_shape), net.add_input("w", DataType.HALF, (k, c) + window),
           net.add_input("b", DataType.HALF, (k,))]
    if residual:
        out = tuple((size + 2 * p - d * (w - 1) - 1) // s + 1
                    for size, p, d, w, s in zip(x_shape[2:], pads, dilation, window, stride))
        ins.append(net.add_input("r", DataType.HALF, (x_shape[0], k) + out))
    return net.add_layer(LayerKind.CONVOLUTION, params, ins)


@pytest.mark.parametrize("name", [IMPLICIT[0], IMPLICIT[-1]])
@pytest.mark.parametrize("c,k,x_shape,window,stride,pads,dilation,act,residual", [
    (64, 24, (1, 64, 5, 7), (3, 3), (1, 1), (1, 1), (1, 1), A.RELU, True),    # ResNet 3x3, split K, residual
    (64, 16, (2, 64, 9, 8), (3, 3), (2, 2), (1, 1), (1, 1), None, False),     # stride 2, odd output
    (64, 40, (1, 64, 6, 6), (2, 3), (1, 2), (0, 1), (2, 1), A.SILU, False),   # uneven window, dilation
    (64, 32, (2, 64, 7, 5), (1, 1), (2, 2), (0, 0), (1, 1), None, True),      # 1x1 stride 2 (downsample)
    (256, 64, (1, 256, 3, 3), (1, 1), (1, 1), (0, 0), (1, 1), A.RELU, True),  # 1x1, few tiles: split K
    (3, 64, (1, 3, 20, 18), (7, 7), (2, 2), (3, 3), (1, 1), A.RELU, False),   # a stem: 3 channels
    (48, 16, (2, 48, 6, 5), (3, 3), (1, 1), (1, 1), (1, 1), None, False),     # channels not a K-tile multiple
])
def test_triton_implicit_conv(name, c, k, x_shape, window, stride, pads, dilation, act, residual, seed):
    layer = _conv_layer(c, k, x_shape, window, stride, pads, dilation, act, residual)
    w = (torch.randn((k, c) + window) / (c * window[0] * window[1]) ** 0.5).half()
    b = torch.randn(k).half()
    ctx = TacticContext(torch.device("cpu"), {"w": w, "b": b})
    args = [nonzero(x_shape, torch.float16).contiguous(memory_format=torch.channels_last), w, b]
    if residual:
        args.append(nonzero(layer.inputs[3].shape, torch.float16))  # NCHW: the tactic converts it
    tac = get_tactic(name)
    assert tac.supports(layer, ctx), name
    out = tac.run(tac.prepare(layer, ctx), args)[0]
    ref = reference_kernel(LayerKind.CONVOLUTION)(layer.params, *(a.double() for a in args))
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2, msg=lambda m: f"{name} seed={seed}\n{m}")


def test_triton_implicit_conv_split_sums_in_a_fixed_order(seed):
    """Split K: the partials are added in split order, so every run gives the same bits."""
    x = nonzero((1, 14, 14, 128), torch.float16)
    w = (torch.randn(9 * 128, 64) / 34).half()
    run = lambda: conv_implicit.conv_nhwc(x, w, None, None, (3, 3), (1, 1), (1, 1), (1, 1), (14, 14), "relu", 0.0,
                                          0.0, gemm.config_dict(64, 64, 64, 4, 4), programs=64)
    assert conv_implicit.split_for(196, 64, 9 * 128, gemm.config_dict(64, 64, 64, 4, 4), 64) > 1
    first = run()
    assert torch.equal(run(), first)


@pytest.mark.parametrize("name", [conv_implicit.TritonSplitKGemm(*c).name for c in conv_implicit.SPLIT_K_GEMM_CONFIGS])
@pytest.mark.parametrize("lead,k,n,act", [((1,), 512, 136, A.RELU), ((2, 3), 712, 64, None)])
def test_triton_split_k_gemm(name, lead, k, n, act, seed):
    """A classifier-sized GEMM, its reduction split (8 nominal SMs here), against float64."""
    net = Network()
    ins = [net.add_input("x", DataType.HALF, lead + (k,)), net.add_input("w", DataType.HALF, (n, k)),
           net.add_input("b", DataType.HALF, (n,))]
    layer = net.add_layer(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(op1=MatrixOperation.TRANSPOSE, activation=act),
                          ins)
    w, b = (torch.randn(n, k) / k ** 0.5).half(), torch.randn(n).half()
    ctx = TacticContext(torch.device("cpu"), {"w": w, "b": b})
    tac = get_tactic(name)
    assert tac.supports(layer, ctx), name
    x = nonzero(lead + (k,), torch.float16)
    out = tac.run(tac.prepare(layer, ctx), [x, w, b])[0]
    ref = reference_kernel(LayerKind.MATRIX_MULTIPLY)(layer.params, x.double(), w.double(), b.double())
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2, msg=lambda m: f"{name} seed={seed}\n{m}")


def test_triton_split_k_gemm_declines_gemms_with_enough_tiles():
    net = Network()
    ins = [net.add_input("x", DataType.HALF, (4096, 256)), net.add_input("w", DataType.HALF, (256, 256))]
    layer = net.add_layer(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(), ins)
    ctx = TacticContext(torch.device("cpu"), {"w": torch.randn(256, 256).half()})
    assert not any(get_tactic(conv_implicit.TritonSplitKGemm(*c).name).supports(layer, ctx)
                   for c in conv_implicit.SPLIT_K_GEMM_CONFIGS)


@pytest.mark.parametrize("kwargs,c", [(dict(window=(3, 3), dtype=DataType.FLOAT), 64),
                                      (dict(window=(1, 1)), 64),                 # a plain 1x1 GEMM: conv_gemm's
                                      (dict(window=(3, 3), groups=2), 64)])
def test_triton_implicit_conv_declines(kwargs, c):
    layer = _conv1x1_layer(c, 32, (1, c, 6, 6), None, False, **kwargs)
    groups = kwargs.get("groups", 1)
    ctx = TacticContext(torch.device("cpu"), {"w": torch.randn((32, c // groups) + kwargs["window"]).half()})
    assert not any(get_tactic(name).supports(layer, ctx) for name in IMPLICIT[:4])


# ----------------------------------------------------------------------------- channel slices as inputs
def _channel_slice(shape, start, total, dtype=torch.float16):
    """A ``shape`` view at channel ``start`` of a channels-last tensor of ``total`` channels:
    what a merged sibling convolution's slice gives its consumers (strided, offset)."""
    n, c, h, w = shape
    full = nonzero((n, total, h, w), dtype).contiguous(memory_format=torch.channels_last)
    x = full[:, start:start + c]
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    return x


@pytest.mark.parametrize("name,window,groups", [
    (CONV_GEMM[0], (1, 1), 1), (IMPLICIT[0], (3, 3), 1), (DEPTHWISE[0], (3, 3), 32),
    ("cuda.convolution.cudnn_nhwc_triton_epilogue", (3, 3), 1), ("cuda.convolution.cudnn_nhwc", (3, 3), 1)])
def test_conv_tactics_read_channel_slices(name, window, groups, seed):
    """Input and residual are channel slices of wider channels-last tensors (fuse_sibling_convs'
    outputs): each tactic gives what it gives on dense copies of them."""
    c, k, x_shape = 32, 32, (2, 32, 5, 4)
    pads = tuple(d // 2 for d in window)
    params = ConvolutionParams(num_output_maps=k, kernel_size_nd=window, pre_padding=pads, post_padding=pads,
                               num_groups=groups, activation=A.RELU)
    w = (torch.randn((k, c // groups) + window) / (c * window[0] * window[1] / groups) ** 0.5).half()
    b = torch.randn(k).half()
    net = Network()
    ins = [net.add_input("x", DataType.HALF, x_shape), net.add_input("w", DataType.HALF, tuple(w.shape)),
           net.add_input("b", DataType.HALF, (k,)), net.add_input("r", DataType.HALF, (2, k, 5, 4))]
    layer = net.add_layer(LayerKind.CONVOLUTION, params, ins)
    ctx = TacticContext(torch.device("cpu"), {"w": w, "b": b})
    args = [_channel_slice(x_shape, 3, 40), w, b, _channel_slice((2, k, 5, 4), 5, 48)]
    tac = get_tactic(name)
    assert tac.supports(layer, ctx), name
    out = tac.run(tac.prepare(layer, ctx), args)[0]
    ref = reference_kernel(LayerKind.CONVOLUTION)(params, *(a.contiguous().double() for a in args))
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2, msg=lambda m: f"{name} seed={seed}\n{m}")


def test_pointwise_kernel_reads_channel_slices(seed):
    """A pointwise kernel on two channel slices (a region after a merged convolution)."""
    a, b = _channel_slice((2, 5, 4, 3), 2, 11), _channel_slice((2, 5, 4, 3), 0, 7)
    layer = make_layer(LayerKind.ELEMENTWISE, ElementWiseParams(E.SUM), (DataType.HALF, (2, 5, 4, 3)),
                       (DataType.HALF, (2, 5, 4, 3)))
    check("cuda.elementwise.triton", layer, [a, b], seed)


# ----------------------------------------------------------------------------- attention
from kilnrt.kernels.triton import attention as triton_attention  # noqa: E402
from kilnrt.network.layers import AttentionParams  # noqa: E402

ATTENTION = [triton_attention.TritonAttention(*c).name for c in triton_attention.CONFIGS]


@pytest.mark.parametrize("b,hq,hkv,sq,skv,d,dv,mask,causal", [
    (2, 4, 4, 37, 37, 40, 40, "add", False),       # additive [B,1,1,S], -inf on some keys; head size 40
    (1, 4, 2, 20, 50, 32, 24, "bool", False),      # grouped-query, more keys than queries, Dv != D
    (2, 2, 2, 33, 33, 16, 16, None, True),         # causal
    (1, 2, 1, 17, 40, 64, 64, "short", True),      # additive mask shorter than the keys, causal
])
def test_triton_attention(b, hq, hkv, sq, skv, d, dv, mask, causal, seed):
    q = torch.randn(b, sq, hq, d).half().transpose(1, 2)        # the [B, S, H, D] view exporters make
    k = torch.randn(b, hkv, skv, d).half()
    v = torch.randn(b, skv, hkv, dv).half().transpose(1, 2)
    m = None
    if mask == "add":
        m = torch.where(torch.rand(b, 1, 1, skv) < 0.3, float("-inf"), torch.randn(b, 1, 1, skv)).half()
        m[0, ..., :] = float("-inf")                            # batch 0: every key masked -> zeros
    elif mask == "bool":
        m = torch.rand(b, 1, sq, skv) < 0.7
        m[0, 0, 3] = False
    elif mask == "short":
        m = torch.randn(skv - 5)
    params = AttentionParams(causal=causal)
    net = Network()
    ins = [net.add_input(n, DataType.HALF, tuple(t.shape)) for n, t in (("q", q), ("k", k), ("v", v))]
    if m is not None:
        ins.append(net.add_input("m", DataType.BOOL if m.dtype == torch.bool else DT[m.dtype], tuple(m.shape)))
    layer = net.add_layer(LayerKind.ATTENTION, params, ins)
    args = [q, k, v] + ([m] if m is not None else [])
    ref_args = (a if a.dtype == torch.bool else a.double() for a in args)
    want = reference_kernel(LayerKind.ATTENTION)(params, *ref_args)[0]
    for name in (ATTENTION[0], ATTENTION[2]):  # 16 and 64 query rows: several query blocks, one
        tac = get_tactic(name)
        assert tac.supports(layer, CTX), name
        out = tac.run(tac.prepare(layer, CTX), args)[0]
        assert out.shape == want.shape and out.dtype == torch.float16
        torch.testing.assert_close(out.double(), want, rtol=1e-2, atol=1e-2, msg=lambda s: f"{name} seed={seed}\n{s}")
    if mask == "add":
        assert torch.all(out[0] == 0)


@pytest.mark.parametrize("change", ["softcap", "float32", "window", "scores"])
def test_triton_attention_declines(change):
    dtype = DataType.FLOAT if change == "float32" else DataType.HALF
    params = AttentionParams(softcap=2.0 if change == "softcap" else 0.0, left_window=4 if change == "window" else -1,
                             qk_output_mode=0 if change == "scores" else -1)
    net = Network()
    ins = [net.add_input(n, dtype, (1, 2, 8, 16)) for n in "qkv"]
    layer = net.add_layer(LayerKind.ATTENTION, params, ins)
    assert not any(get_tactic(name).supports(layer, CTX) for name in ATTENTION)
