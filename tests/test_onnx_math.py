"""Math, reduction, type and quantization ops: one tiny ONNX model per case, run through kilnrt
and compared with onnx's ReferenceEvaluator (or a numpy formula where the reference departs
from the ONNX spec) on fresh seeded inputs.  Operands the conformance suite passes as graph
inputs (axes, k, axis, sizes) are graph inputs here too.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import kilnrt
from kilnrt.errors import ImportErrors, KilnError, UnsupportedNodeError
from kilnrt.testing import assert_close
from onnx_cases import one_node_model as model, randn, rng


@pytest.fixture
def r() -> np.random.Generator:
    return rng()


def _same(have: np.ndarray, want: np.ndarray, name: str, rtol, atol) -> None:
    assert have.dtype == want.dtype and have.shape == want.shape, (name, have.dtype, want.dtype, have.shape, want.shape)
    if have.dtype.kind in "fc" and have.dtype.itemsize >= 2 and have.dtype != ml_dtypes.bfloat16:
        assert_close(have, want, rtol, atol, name=name)
        return
    # float8 / sub-byte / integer / bool: exact, NaN equal to NaN
    h, w = have.astype(np.float64), want.astype(np.float64)
    bad = ~((h == w) | (np.isnan(h) & np.isnan(w)))
    assert not bad.any(), f"{name}: {bad.sum()} differences, e.g. got {h[bad][:5]} want {w[bad][:5]}"


def check(op: str, feeds: dict[str, np.ndarray], outputs=1, opset: int = 22, expected=None,
          rtol: float | None = None, atol: float | None = None, **attrs) -> dict[str, np.ndarray]:
    m = model(op, feeds, outputs, opset, **attrs)
    real = {k: v for k, v in feeds.items() if k.strip()}
    if expected is None:
        expected = ReferenceEvaluator(m).run(None, real)
    got = kilnrt.build(m).run(real)
    for o, want in zip(m.graph.output, expected):
        _same(np.asarray(got[o.name]), np.asarray(want), f"{op}.{o.name}", rtol, atol)
    return got


# ----------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_runtime_axes(r, op, keepdims):
    x = randn(r, 3, 4, 5)
    check(op, {"x": x, "axes": np.array([0, -1], np.int64)}, opset=18, keepdims=keepdims)


@pytest.mark.parametrize("noop", [0, 1])
def test_reduce_empty_axes(r, noop):
    x = randn(r, 2, 3)
    check("ReduceSum", {"x": x, "axes": np.zeros(0, np.int64)}, opset=13, noop_with_empty_axes=noop)
    check("ReduceL2", {"x": x, "axes": np.zeros(0, np.int64)}, opset=18, noop_with_empty_axes=noop)


def test_reduce_empty_set_and_attribute_form(r):
    empty = np.zeros((2, 0, 4), np.float32)
    for op in ("ReduceSum", "ReduceProd", "ReduceMax", "ReduceMin", "ReduceLogSumExp"):
        check(op, {"x": empty, "axes": np.array([1], np.int64)}, opset=20, keepdims=1)
    check("ReduceLogSumExp", {"x": randn(r, 3, 4) * 50}, opset=13, axes=[1], keepdims=0)
    check("ReduceMax", {"x": r.random((3, 4)) > 0.5, "axes": np.array([1], np.int64)}, opset=20)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("last", [0, 1])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_arg_max_min_ties(r, op, last, keepdims):
    x = r.integers(-2, 3, (3, 5, 4)).astype(np.float32)   # many ties
    check(op, {"x": x}, opset=13, axis=1, keepdims=keepdims, select_last_index=last)


def test_hardmax(r):
    x = r.integers(-2, 3, (2, 3, 4)).astype(np.float32)
    check("Hardmax", {"x": x}, opset=13, axis=1)
    # opset < 13 flattens to 2-D at axis (the reference evaluator does not; onnxruntime does)
    flat = x.reshape(2, 12)
    want = (np.arange(12) == flat.argmax(1)[:, None]).astype(np.float32).reshape(x.shape)
    check("Hardmax", {"x": x}, opset=11, expected=[want], axis=1)


@pytest.mark.parametrize("largest", [0, 1])
def test_topk_runtime_k_ties(r, largest):
    x = r.integers(0, 4, (3, 7)).astype(np.float32)
    got = check("TopK", {"x": x, "k": np.array([3], np.int64)}, 2, opset=11, axis=-1, largest=largest)
    assert got["y1"].dtype == np.int64
    u = r.integers(0, 2**40, (2, 6)).astype(np.uint64)
    check("TopK", {"x": u, "k": np.array([2], np.int64)}, 2, opset=11, axis=1)


# ----------------------------------------------------------------------------- elementwise
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_unsigned_arithmetic(r, dtype):
    a = r.integers(1, 200, (3, 4)).astype(dtype)
    b = r.integers(1, 20, (3, 4)).astype(dtype)
    for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Greater", "Less", "Equal", "GreaterOrEqual"):
        check(op, {"a": a, "b": b}, opset=14 if op in ("Add", "Sub", "Mul", "Div") else 13)
    check("Mod", {"a": a, "b": b}, opset=13)
    for direction in ("LEFT", "RIGHT"):
        check("BitShift", {"a": a, "b": (b % 4).astype(dtype)}, opset=11, direction=direction)
    check("BitwiseNot", {"a": a}, opset=18)


def test_unsigned64_high_values():
    a = np.array([2**63 + 5, 7, 2**64 - 1], np.uint64)
    b = np.array([3, 2**63 + 1, 2], np.uint64)
    for op in ("Greater", "Max", "Div", "Mod", "Sub"):
        check(op, {"a": a, "b": b}, opset=13)


def test_legacy_broadcast_axis(r):
    a, b = randn(r, 2, 3, 4, 5), randn(r, 3, 4)
    want = a + b.reshape(1, 3, 4, 1)
    check("Add", {"a": a, "b": b}, opset=6, expected=[want], broadcast=1, axis=1)
    check("Mul", {"a": a, "b": randn(r, 5)}, opset=6, expected=None, broadcast=1)


def test_legacy_prelu_channel_slope(r):
    x, slope = randn(r, 2, 3, 4), randn(r, 3)
    want = np.where(x < 0, x * slope.reshape(3, 1), x)
    check("PRelu", {"x": x, "s": slope}, opset=6, expected=[want])


def test_shrink_swish_softsign(r):
    x = randn(r, 4, 5) * 2
    check("Shrink", {"x": x}, opset=9, bias=0.3, lambd=0.8)
    want = x / (1 + np.exp(-0.7 * x))
    check("Swish", {"x": x}, opset=24, expected=[want], alpha=0.7)


# ----------------------------------------------------------------------------- scans, einsum, det
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cumsum_cumprod(r, exclusive, reverse):
    x = randn(r, 3, 4)
    axis = np.array(-1, np.int32)
    check("CumSum", {"x": x, "axis": axis}, opset=14, exclusive=exclusive, reverse=reverse)
    check("CumProd", {"x": r.integers(1, 4, (3, 4)).astype(np.int32), "axis": np.array(0, np.int64)}, opset=26,
          exclusive=exclusive, reverse=reverse)


def test_einsum_and_det(r):
    check("Einsum", {"a": randn(r, 2, 3, 4), "b": randn(r, 2, 4, 5)}, opset=12, equation="bij, bjk -> bik")
    check("Einsum", {"a": randn(r, 3, 3)}, opset=12, equation="ii")
    check("Det", {"x": randn(r, 2, 3, 3)}, opset=22, rtol=1e-4, atol=1e-5)


def test_lp_and_mean_variance_normalization(r):
    x = randn(r, 2, 3, 4)
    x[0, 0, :] = 0
    for p in (1, 2):
        norm = np.linalg.norm(x, ord=p, axis=2, keepdims=True)
        want = np.where(norm == 0, 0, x / np.where(norm == 0, 1, norm)).astype(np.float32)
        check("LpNormalization", {"x": x}, opset=22, expected=[want], axis=-1, p=p)
    check("MeanVarianceNormalization", {"x": randn(r, 2, 3, 4, 5)}, opset=13, axes=[0, 2, 3], atol=1e-5)


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_and_nll(r, reduction, weighted):
    scores = randn(r, 3, 5, 2)
    labels = r.integers(0, 5, (3, 2)).astype(np.int64)
    labels[0, 0] = -1
    feeds = {"scores": scores, "labels": labels}
    if weighted:
        feeds["w"] = r.random(5).astype(np.float32) + 0.5
    check("SoftmaxCrossEntropyLoss", feeds, 2, opset=13, reduction=reduction, ignore_index=-1)
    # NLL by the spec (as onnxruntime computes it): the reference evaluator's unweighted mean
    # with ignore_index=-1 counts the ignored elements too
    log_prob = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    keep = labels != -1
    w = (feeds["w"][np.where(keep, labels, 0)] if weighted else np.ones(labels.shape, np.float32)) * keep
    loss = -np.take_along_axis(log_prob, np.where(keep, labels, 0)[:, None, :], 1)[:, 0, :] * w
    want = {"none": loss, "sum": loss.sum(), "mean": loss.sum() / w.sum()}[reduction].astype(np.float32)
    check("NegativeLogLikelihoodLoss", {"x": log_prob, **{k: v for k, v in feeds.items() if k != "scores"}},
          opset=13, expected=[want], reduction=reduction, ignore_index=-1)


# ----------------------------------------------------------------------------- casts
@pytest.mark.parametrize("to", [TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E4M3FNUZ,
                                TensorProto.FLOAT8E5M2FNUZ])
@pytest.mark.parametrize("saturate", [0, 1])
def test_cast_float8_saturate(r, to, saturate):
    x = np.concatenate([randn(r, 40) * 10.0 ** r.integers(-3, 6, 40),
                        np.array([np.inf, -np.inf, np.nan, 464, 465, 60000, -1e6], np.float32)]).astype(np.float32)
    check("Cast", {"x": x}, opset=21, to=to, saturate=saturate)
    with np.errstate(over="ignore"):
        half = x.astype(np.float16)
    check("Cast", {"x": half}, opset=21, to=to, saturate=saturate)


@pytest.mark.parametrize("to", [TensorProto.INT4, TensorProto.UINT4, TensorProto.INT2, TensorProto.UINT2])
def test_cast_sub_byte_round_trip(r, to):
    x = (randn(r, 30) * 8).astype(np.float32)
    got = check("Cast", {"x": x}, opset=25, to=to)
    packed = got["y0"]
    check("Cast", {"q": packed}, opset=25, to=TensorProto.FLOAT)
    check("Cast", {"q": packed}, opset=25, to=TensorProto.INT8)


@pytest.mark.parametrize("mode", ["up", "down", "nearest"])
def test_cast_e8m0(r, mode):
    x = np.abs(randn(r, 50)) * 10.0 ** r.integers(-5, 5, 50).astype(np.float32)
    check("Cast", {"x": x}, opset=24, to=TensorProto.FLOAT8E8M0, round_mode=mode)


def test_castlike_bfloat16(r):
    x = randn(r, 4, 5)
    check("CastLike", {"x": x, "t": np.zeros(1, ml_dtypes.bfloat16)}, opset=21)


def test_cast_float4_is_unsupported_with_a_clear_error(r):
    m = model("Cast", {"x": randn(r, 4)}, 1, 23, to=TensorProto.FLOAT4E2M1)
    with pytest.raises((UnsupportedNodeError, ImportErrors)) as info:
        kilnrt.build(m)
    assert "FLOAT4E2M1 is not supported" in str(info.value) and "Cast" in str(info.value)


# ----------------------------------------------------------------------------- quantization
@pytest.mark.parametrize("zp_type", [np.uint8, np.int8, np.int16, np.uint16, ml_dtypes.int4, ml_dtypes.uint4])
def test_quantize_dequantize_per_axis(r, zp_type):
    x = randn(r, 2, 3, 4) * 4
    scale = (r.random(3) + 0.1).astype(np.float32)
    zp = np.array([1, 0, 2]).astype(zp_type)
    got = check("QuantizeLinear", {"x": x, "s": scale, "zp": zp}, opset=21, axis=1)
    check("DequantizeLinear", {"q": got["y0"], "s": scale, "zp": zp}, opset=21, axis=1)


def test_quantize_blocked_and_float8(r):
    x = randn(r, 3, 7) * 4
    scale = (r.random((3, 3)) + 0.1).astype(np.float32)
    zp = r.integers(-3, 3, (3, 3)).astype(np.int8)
    got = check("QuantizeLinear", {"x": x, "s": scale, "zp": zp}, opset=21, axis=1, block_size=3)
    check("DequantizeLinear", {"q": got["y0"], "s": scale, "zp": zp}, opset=21, axis=1, block_size=3)
    s = np.array(0.01, np.float32)
    for fp8 in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2):
        got = check("QuantizeLinear", {"x": x, "s": s, "zp": np.zeros((), fp8)}, opset=21)
        check("DequantizeLinear", {"q": got["y0"], "s": s}, opset=21)


def test_dynamic_quantize_and_integer_matmul(r):
    check("DynamicQuantizeLinear", {"x": randn(r, 3, 4)}, 3, opset=11)
    a, b = r.integers(0, 255, (3, 4)).astype(np.uint8), r.integers(0, 255, (4, 5)).astype(np.uint8)
    check("MatMulInteger", {"a": a, "b": b, "az": np.array(12, np.uint8), "bz": np.array(7, np.uint8)}, opset=10)
    feeds = {"a": a, "as": np.array(0.02, np.float32), "az": np.array(3, np.uint8), "b": b,
             "bs": np.array(0.03, np.float32), "bz": np.array(9, np.uint8), "ys": np.array(0.5, np.float32),
             "yz": np.array(100, np.uint8)}
    check("QLinearMatMul", feeds, opset=21)


def test_integer_convolutions(r):
    x = r.integers(0, 255, (1, 2, 5, 5)).astype(np.uint8)
    w = r.integers(0, 255, (3, 2, 3, 3)).astype(np.uint8)
    check("ConvInteger", {"x": x, "w": w, "xz": np.array(10, np.uint8)}, opset=10, pads=[1, 1, 1, 1])
    feeds = {"x": x, "xs": np.array(0.01, np.float32), "xz": np.array(5, np.uint8), "w": w,
             "ws": (r.random(3) * 0.01 + 0.001).astype(np.float32), "wz": np.array(3, np.uint8),
             "ys": np.array(0.3, np.float32), "yz": np.array(50, np.uint8),
             "b": r.integers(-100, 100, 3).astype(np.int32)}
    check("QLinearConv", feeds, opset=10, strides=[2, 2])


# ----------------------------------------------------------------------------- signal
@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
def test_windows(op, periodic):
    check(op, {"n": np.array(10, np.int32)}, opset=17, periodic=periodic, atol=1e-6)


@pytest.mark.parametrize("inverse,onesided", [(0, 0), (0, 1), (1, 0)])
def test_dft(r, inverse, onesided):
    x = randn(r, 2, 8, 3, 1 if onesided or not inverse else 2)
    if inverse:
        x = randn(r, 2, 8, 3, 2)
    check("DFT", {"x": x, " ": np.zeros(0), "axis": np.array(1, np.int64)}, opset=20, inverse=inverse,
          onesided=onesided, rtol=1e-4, atol=1e-4)


def test_stft_and_mel(r):
    signal = randn(r, 2, 64, 1)
    check("STFT", {"s": signal, "step": np.array(8, np.int64), "w": np.hanning(16).astype(np.float32)},
          opset=17, rtol=1e-4, atol=1e-4)
    feeds = {"bins": np.array(8, np.int32), "n": np.array(64, np.int32), "rate": np.array(8000, np.int32),
             "lo": np.array(100, np.float32), "hi": np.array(3000, np.float32)}
    check("MelWeightMatrix", feeds, opset=17)


def test_bad_reduce_attribute_message():
    m = model("Cast", {"x": np.ones(2, np.float32)}, 1, 21, to=TensorProto.FLOAT, round_mode="sideways")
    with pytest.raises(KilnError) as info:
        kilnrt.build(m)
    assert "round_mode='sideways'" in str(info.value) and "up, down, nearest" in str(info.value)


def test_plan_round_trip_keeps_sub_byte_and_e8m0_constants(r):
    """Weights of types safetensors lacks (int4, float8 e8m0) survive serialize / load."""
    from onnx import numpy_helper

    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"]),
             helper.make_node("Cast", ["e8"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "f"], ["z"])]
    inits = [numpy_helper.from_array(np.array([-8, 7, 3], ml_dtypes.int4), "zp"),
             helper.make_tensor("e8", TensorProto.FLOAT8E8M0, [3], [0.5, 4.0, 1.0])]
    ins = [helper.make_tensor_value_info("q", TensorProto.INT4, [2, 3]),
           helper.make_tensor_value_info("s", TensorProto.FLOAT, [3]),
           helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    outs = [helper.make_empty_tensor_value_info(n) for n in ("y", "z")]
    m = helper.make_model(helper.make_graph(nodes, "g", ins, outs, initializer=inits),
                          opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    feeds = {"q": r.integers(-8, 8, (2, 3)).astype(ml_dtypes.int4), "s": r.random(3).astype(np.float32) + 0.1,
             "x": randn(r, 2, 3)}
    engine = kilnrt.build(m)
    again = kilnrt.load(engine.serialize())
    want = ReferenceEvaluator(m).run(None, feeds)
    for got in (engine.run(feeds), again.run(feeds)):
        for name, w in zip(("y", "z"), want):
            _same(got[name], np.asarray(w), name, None, None)


# ----------------------------------------------------------------------------- on the GPU
_CUDA_CASES = [
    ("ReduceL2", {"x": (3, 4, 5), "axes": np.array([0, -1], np.int64)}, 1, 18, {"keepdims": 0}),
    ("ArgMax", {"x": (3, 5)}, 1, 13, {"axis": 1, "select_last_index": 1}),
    ("TopK", {"x": (3, 7), "k": np.array([3], np.int64)}, 2, 11, {"largest": 0}),
    ("CumSum", {"x": (3, 4), "axis": np.array(1, np.int64)}, 1, 14, {"exclusive": 1, "reverse": 1}),
    ("Cast", {"x": (40,)}, 1, 21, {"to": TensorProto.FLOAT8E4M3FN, "saturate": 0}),
    ("Cast", {"x": (40,)}, 1, 25, {"to": TensorProto.INT4}),
    ("QuantizeLinear", {"x": (2, 3, 4), "s": np.array([0.1, 0.2, 0.3], np.float32),
                        "zp": np.array([1, 0, 2], np.int8)}, 1, 21, {"axis": 1}),
    ("SoftmaxCrossEntropyLoss", {"x": (3, 5, 2), "t": np.array([[0, 4], [-1, 2], [3, 3]], np.int64)}, 2, 13,
     {"ignore_index": -1}),
    ("Add", {"a": np.array([1, 2**40], np.uint64), "b": np.array([3, 5], np.uint64)}, 1, 14, {}),
    ("Mod", {"a": np.array([2**63 + 9, 7], np.uint64), "b": np.array([5, 3], np.uint64)}, 1, 13, {}),
    ("DFT", {"x": (2, 8, 3, 1), " ": np.zeros(0), "axis": np.array(1, np.int64)}, 1, 20, {"onesided": 1}),
    ("STFT", {"s": (2, 64, 1), "step": np.array(8, np.int64), "w": np.hanning(16).astype(np.float32)}, 1, 17, {}),
    ("HannWindow", {"n": np.array(10, np.int32)}, 1, 17, {}),
    ("Det", {"x": (2, 3, 3)}, 1, 22, {}),
]


@pytest.mark.cuda
@pytest.mark.parametrize("op,spec,outputs,opset,attrs", _CUDA_CASES, ids=[c[0] for c in _CUDA_CASES])
def test_same_on_cuda_as_on_cpu(r, op, spec, outputs, opset, attrs):
    feeds = {k: (randn(r, *v) * 3 if isinstance(v, tuple) else v) for k, v in spec.items()}
    m = model(op, feeds, outputs, opset, **attrs)
    real = {k: v for k, v in feeds.items() if k.strip()}
    want = kilnrt.build(m).run(real)
    got = kilnrt.build(m, device="cuda").run(real)
    for name in want:
        _same(np.asarray(got[name]), np.asarray(want[name]), f"{op}.{name}", 1e-4, 1e-5)
