"""kilnrt.testing: seeded inputs and assert_close, which the other tests and `kilnrt compare` rely on."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import kilnrt
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.testing import (DEFAULT_DIM, Comparison, assert_close, compare, relative_l2, seeded_inputs,
                            tolerance)
from models import make_model, small_cnn_model, two_input_model


def typed_model():
    names = {"f": TensorProto.FLOAT, "h": TensorProto.FLOAT16, "i": TensorProto.INT32, "l": TensorProto.INT64,
             "u": TensorProto.UINT8, "b": TensorProto.BOOL, "bf": TensorProto.BFLOAT16}
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n in names]
    inputs = [helper.make_tensor_value_info(n, t, [50, 40]) for n, t in names.items()]
    outputs = [helper.make_tensor_value_info(f"{n}_out", t, [50, 40]) for n, t in names.items()]
    return make_model(nodes, inputs, outputs)


def test_values_by_dtype_are_random_and_never_all_zero():
    feeds = seeded_inputs(typed_model(), seed=3)
    assert feeds.seed == 3
    assert {k: v.dtype for k, v in feeds.items()} == {
        "f": np.float32, "h": np.float16, "i": np.int32, "l": np.int64, "u": np.uint8, "b": np.bool_,
        "bf": np.dtype(ml_dtypes.bfloat16)}
    f = feeds["f"]
    assert f.shape == (50, 40) and abs(f.mean()) < 0.1 and 0.9 < f.std() < 1.1     # standard normal
    assert np.unique(feeds["h"]).size > 1000
    for k in "ilu":
        assert set(np.unique(feeds[k])) == {1, 2, 3}
    assert 0.4 < feeds["b"].mean() < 0.6
    assert feeds["bf"].astype(np.float32).std() > 0.5


def test_seed_reproduces_and_fresh_seeds_differ():
    a, b = seeded_inputs(typed_model(), seed=11), seeded_inputs(typed_model(), seed=11)
    for k in a:
        assert np.array_equal(a[k], b[k])
    c, d = seeded_inputs(typed_model()), seeded_inputs(typed_model())
    assert c.seed != d.seed and not np.array_equal(c["f"], d["f"])


def test_int_range():
    feeds = seeded_inputs(typed_model(), seed=0, int_range=(0, 100))
    assert feeds["l"].min() >= 0 and feeds["l"].max() < 100 and np.unique(feeds["l"]).size > 50


def test_engine_network_and_onnx_sources_agree():
    model = small_cnn_model()
    engine = kilnrt.build(model)
    by_engine, by_net, by_onnx = (seeded_inputs(s, seed=5) for s in (engine, kilnrt.to_network(model), model))
    assert by_engine.keys() == by_net.keys() == by_onnx.keys() == {"x"}
    assert np.array_equal(by_engine["x"], by_onnx["x"]) and np.array_equal(by_net["x"], by_onnx["x"])
    assert by_engine["x"].shape == (2, 2, 6, 6)
    assert seeded_inputs(model.SerializeToString(), seed=5)["x"].shape == (2, 2, 6, 6)


def test_dynamic_dims():
    model = two_input_model()
    assert seeded_inputs(model)["x"].shape == (DEFAULT_DIM, 8)
    feeds = seeded_inputs(model, shapes={"batch": 6})
    assert feeds["x"].shape == feeds["s"].shape == (6, 8) and feeds["idx"].shape == (6,)
    assert seeded_inputs(model, shapes={"x": (2, 8), "batch": 5})["x"].shape == (2, 8)
    engine = kilnrt.build(model, profiles={"x": ((1, 8), (3, 8), (9, 8)), "s": ((1, 8), (3, 8), (9, 8)),
                                           "idx": ((1,), (3,), (9,))})
    assert seeded_inputs(engine)["x"].shape == (3, 8)                  # the profile's opt shape
    with pytest.raises(ValueError, match=r"shapes\['x'\] = \(2,\) has rank 1, but input 'x' has rank 2"):
        seeded_inputs(model, shapes={"x": (2,)})


def test_network_with_an_unknown_dim():
    net = Network("n")
    net.add_input("x", DataType.FLOAT, (-1, 3))
    assert seeded_inputs(net, seed=1)["x"].shape == (DEFAULT_DIM, 3)


def test_bad_source():
    with pytest.raises(TypeError, match="seeded_inputs takes an Engine, a Network or an ONNX model"):
        seeded_inputs(42)


# ----------------------------------------------------------------------------- comparing
def test_default_tolerances():
    assert tolerance(np.float32) == (1e-4, 1e-5)
    assert tolerance(np.float16) == tolerance(torch.bfloat16) == tolerance(DataType.BF16) == (1e-2, 1e-2)
    assert tolerance(np.int64) == tolerance(torch.bool) == (0.0, 0.0)


def test_failure_message_names_everything():
    expected = np.arange(12, dtype=np.float32).reshape(3, 4)
    actual = expected.copy()
    actual[2, 1] += 0.5
    actual[0, 3] += 1e-6
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, seed=1234, name="logits")
    text = str(info.value)
    assert text.startswith("'logits': 1 of 12 elements differ (shape (3, 4), float32)")
    assert "worst at index (2, 1): actual 9.5, expected 9.0" in text
    assert "max abs error 0.5" in text and "max rel error 0.0556" in text
    assert "tolerance rtol=0.0001, atol=1e-05" in text and "seed 1234" in text


def test_tolerance_used_is_the_one_given_or_the_dtypes():
    a = np.array([1.0, 2.0], np.float16)
    assert_close(a, a + np.float16(0.01))                      # fp16 default
    with pytest.raises(AssertionError, match="rtol=0.0001"):
        assert_close(a, a + np.float16(0.01), dtype=np.float32)
    assert_close(np.float32(1.0), np.float32(1.05), rtol=0.1)


def test_integers_compare_exactly():
    big = np.array([2**62 + 1], np.int64)
    with pytest.raises(AssertionError, match="1 of 1 elements differ"):
        assert_close(big, big + 1)                             # float64 could not see this
    assert_close(np.array([3, 4]), np.array([3, 4]))


def test_nan_and_inf():
    assert_close(np.array([np.nan, np.inf, -np.inf, 1.0]), np.array([np.nan, np.inf, -np.inf, 1.0]))
    with pytest.raises(AssertionError, match=r"worst at index \(0,\): actual nan, expected 1.0"):
        assert_close(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))
    with pytest.raises(AssertionError, match="actual inf, expected -inf"):
        assert_close(np.array([np.inf]), np.array([-np.inf]))
    with pytest.raises(AssertionError):
        assert_close(np.array([1e30]), np.array([np.inf]))


def test_shapes_must_match():
    with pytest.raises(AssertionError, match=r"shape \(2, 3\) differs from the expected shape \(3, 2\)"):
        assert_close(np.zeros((2, 3)), np.zeros((3, 2)))


def test_torch_tensors_and_mappings():
    t = torch.randn(4, 5)
    assert_close(t, t.numpy().copy())
    assert_close(t.to(torch.bfloat16), t.to(torch.bfloat16).float().numpy())
    assert_close({"a": t, "b": np.ones(2)}, {"a": t.clone(), "b": np.ones(2)})
    with pytest.raises(AssertionError, match=r"names differ: actual has \['a'\], expected has \['a', 'b'\]"):
        assert_close({"a": t}, {"a": t, "b": t})
    with pytest.raises(AssertionError) as info:
        assert_close({"a": t + 1, "b": t}, {"a": t, "b": t - 1}, seed=9)
    assert "'a': " in str(info.value) and "'b': " in str(info.value) and "seed 9" in str(info.value)


def test_compare_returns_the_numbers():
    result = compare(np.array([1.0, 2.0, 4.0]), np.array([1.0, 2.0, 5.0]), rtol=0, atol=0.5)
    assert isinstance(result, Comparison) and not result.ok
    assert (result.mismatched, result.total, result.max_abs, result.worst_index) == (1, 3, 1.0, (2,))
    assert result.max_rel == pytest.approx(0.2)
    ok = compare(np.ones(3), np.ones(3))
    assert ok.ok and ok.message.startswith("PASSED")


def test_relative_l2():
    e = np.array([3.0, 4.0])
    assert relative_l2(e, e) == 0.0
    assert relative_l2(e + np.array([0.3, 0.4]), e) == pytest.approx(0.1)
    assert relative_l2(np.array([1.0, 0.0]), np.zeros(2)) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        relative_l2(np.zeros(2), np.zeros(3))
