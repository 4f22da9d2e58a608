"""ONNX's NaN semantics on the CPU backend, against ONNX's reference evaluator on fresh random
inputs with NaN sprinkled in: MaxPool skips NaN (a window of only NaN gives NaN), ReduceMax/
ReduceMin propagate it, ArgMax/ArgMin pick the first (or last) NaN, Sign(NaN) is NaN.

ONNX Runtime agrees only for Sign: its MaxPool keeps a NaN when it is a window's last cell,
and its reductions and Arg* skip NaN.  The reference evaluator's MaxPool skips NaN on its
vectorized path but keeps one in a window's first cell on its loop path (dilations, ceil
mode, 1-D), so MaxPool is checked against it on inputs where NaN becomes -inf, with NaN only
where no window is all NaN; windows of only NaN are checked on their own.  The Triton
kernel's NaN handling is checked against the CPU kernel in tests/test_triton_pool.py."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import kilnrt

SEED = int(np.random.SeedSequence().entropy % (1 << 32))
RNG = np.random.default_rng(SEED)
NAN = np.nan


def one_node(op, shape, out_type=TensorProto.FLOAT, **attrs):
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "nan",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", out_type, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def with_nan(shape, fraction=0.15):
    x = RNG.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[RNG.choice(x.size, max(1, int(x.size * fraction)), replace=False)] = NAN
    return x


def check(model, x):
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = kilnrt.build(model).run({"x": x})["y"]
    assert got.dtype == want.dtype and got.shape == want.shape, f"seed {SEED}"
    np.testing.assert_array_equal(got, want, err_msg=f"seed {SEED}")


@pytest.mark.parametrize("shape, attrs", [
    ((2, 3, 8, 9), {"kernel_shape": [2, 2]}),
    ((2, 3, 8, 9), {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),
    ((2, 3, 8, 9), {"kernel_shape": [3, 2], "strides": [2, 2], "dilations": [2, 1]}),
    ((2, 3, 8, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((2, 3, 11), {"kernel_shape": [3], "strides": [2]}),
    ((1, 2, 4, 5, 6), {"kernel_shape": [2, 2, 2]}),
])
def test_max_pool_skips_nan(shape, attrs):
    x = RNG.standard_normal(shape).astype(np.float32)
    parity = np.indices(shape[2:]).sum(0) % 2 == 0            # two neighbours are never both NaN,
    nan = parity & (RNG.random(shape) < 0.5)                    # so no window is all NaN
    x[nan] = NAN
    model = one_node("MaxPool", shape, **attrs)
    want = ReferenceEvaluator(model).run(None, {"x": np.where(nan, -np.inf, x).astype(np.float32)})[0]
    got = kilnrt.build(model).run({"x": x})["y"]
    assert nan.any() and not np.isnan(got).any()
    np.testing.assert_array_equal(got, want, err_msg=f"seed {SEED}")


def test_max_pool_window_of_only_nan_is_nan():
    """onnx.reference has no answer here (it reduces an empty array); NaN, as np.fmax gives."""
    x = np.array([[[[NAN, NAN, 2, NAN], [NAN, NAN, 5, 6]]]], np.float32)
    y = kilnrt.build(one_node("MaxPool", x.shape, kernel_shape=[2, 2], strides=[2, 2])).run({"x": x})["y"]
    np.testing.assert_array_equal(y, np.array([[[[NAN, 6]]]], np.float32))


def test_max_pool_padding_is_minus_inf_not_nan():
    x = np.array([[[[NAN, 1], [NAN, NAN]]]], np.float32)
    y = kilnrt.build(one_node("MaxPool", x.shape, kernel_shape=[2, 2], strides=[1, 1],
                              pads=[1, 1, 0, 0])).run({"x": x})["y"]
    np.testing.assert_array_equal(y, np.array([[[[-np.inf, 1], [-np.inf, 1]]]], np.float32))


def test_max_pool_without_nan_is_unchanged():
    shape = (2, 3, 8, 9)
    check(one_node("MaxPool", shape, kernel_shape=[3, 3], pads=[1, 1, 1, 1]), RNG.standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("op, attrs", [
    ("ReduceMax", {"axes": [3]}), ("ReduceMin", {"axes": [2]}), ("ReduceMax", {}),
    ("ReduceMin", {"axes": [1, 3], "keepdims": 0}), ("GlobalMaxPool", {}),
])
def test_max_and_min_reductions_propagate_nan(op, attrs):
    shape = (2, 3, 4, 5)
    check(one_node(op, shape, **attrs), with_nan(shape))


@pytest.mark.parametrize("op, attrs", [
    ("ArgMax", {"axis": 3}), ("ArgMin", {"axis": 2}), ("ArgMax", {"axis": 1, "select_last_index": 1}),
    ("ArgMin", {"axis": 3, "select_last_index": 1, "keepdims": 0}),
])
def test_arg_max_and_min_pick_nan(op, attrs):
    shape = (2, 3, 4, 5)
    check(one_node(op, shape, TensorProto.INT64, **attrs), with_nan(shape, 0.25))


def test_sign_of_nan_is_nan():
    shape = (3, 7)
    check(one_node("Sign", shape), with_nan(shape, 0.3))


def test_max_pool_reference_skips_nan_without_asking_off_the_cpu(monkeypatch):
    """On a GPU the reference kernel cannot ask whether there is NaN (a sync inside a CUDA
    graph), so it always takes the NaN-skipping path; checked here by making the CPU tensors
    look like another device's to it."""
    from types import SimpleNamespace

    import torch

    from kilnrt.kernels.cpu import conv
    from kilnrt.network.layers import PaddingMode, PoolingParams, PoolingType

    calls = []
    real = conv._max_pool_ignoring_nan
    monkeypatch.setattr(conv, "_max_pool_ignoring_nan", lambda *a: calls.append(1) or real(*a))
    p = PoolingParams(PoolingType.MAX, (3, 3), (1, 1), (1, 1), (1, 1), padding_mode=PaddingMode.EXPLICIT_ROUND_DOWN)
    x = torch.from_numpy(with_nan((2, 3, 8, 9)))

    class OnAnotherDevice(torch.Tensor):
        device = SimpleNamespace(type="cuda")

    want = conv.pooling(p, x)
    assert calls == [1]                                   # NaN on the CPU: asked, and skipped
    clean = torch.from_numpy(RNG.standard_normal((2, 3, 8, 9)).astype(np.float32))
    conv.pooling(p, clean)
    assert calls == [1]                                   # no NaN on the CPU: the plain path
    got = conv.pooling(p, x.as_subclass(OnAnotherDevice))
    assert calls == [1, 1]
    plain = conv.pooling(p, clean.as_subclass(OnAnotherDevice))   # off the CPU: never asked, so taken
    assert calls == [1, 1, 1]
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(conv.pooling(p, clean)))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not np.isnan(np.asarray(want)).any()


@pytest.mark.cuda
@pytest.mark.parametrize("shape, attrs", [
    ((2, 16, 14, 15), {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),
    ((2, 16, 14, 15), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 8, 9, 10), {"kernel_shape": [2, 2], "strides": [2, 2]}),
])
def test_cuda_max_pool_skips_nan_whatever_tactic_the_build_picks(shape, attrs):
    """On the GPU (FP32 and FP16 builds, whichever tactic wins the timing): the same values as
    the CPU engine, NaN skipped, a window of only NaN giving NaN."""
    import torch

    x = RNG.standard_normal(shape).astype(np.float32)
    x[RNG.random(shape) < 0.3] = NAN
    x[0, 0, :4, :4] = NAN                                      # windows of only NaN
    model = one_node("MaxPool", shape, **attrs)
    want = kilnrt.build(model).run({"x": x})["y"]
    for fp16 in (False, True):
        engine = kilnrt.build(model, device="cuda", fp16=fp16)
        got = engine.run({"x": torch.from_numpy(x).cuda()})["y"].float().cpu().numpy()
        expected = want.astype(np.float16).astype(np.float32) if fp16 else want
        assert np.isnan(expected).any() and not np.isnan(expected).all()
        np.testing.assert_array_equal(got, expected, err_msg=f"seed {SEED} fp16={fp16} "
                                                             f"{[l.tactic for l in engine.layers]}")
