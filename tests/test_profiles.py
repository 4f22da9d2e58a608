"""Several optimization profiles per engine, with TensorRT's semantics: each profile is optimized
and tuned on its own; a context runs its active profile (set_optimization_profile_async),
set_input_shape checks against it; engine.run picks the narrowest profile that holds the inputs;
a shape outside every profile names the nearest one and the dims that miss it."""
from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch

import kilnrt
from kilnrt.errors import ShapeError
from models import small_cnn_model

RNG = np.random.default_rng()
DYNAMIC = {"x": [(1, 2, 6, 6), (4, 2, 6, 6), (8, 2, 6, 6)]}
BATCH_ONE = {"x": [(1, 2, 6, 6)] * 3}


@pytest.fixture(scope="module")
def model():
    return small_cnn_model("batch")


@pytest.fixture(scope="module")
def engine(model):
    return kilnrt.build(model, profiles=[DYNAMIC, BATCH_ONE])


def test_each_profile_has_its_own_program(engine):
    assert engine.num_optimization_profiles == 2
    assert len(engine.profile_engines) == 2 and engine.profile_engines[0] is engine
    one = engine.for_profile(1)
    # profile 1 is a single shape: its program is specialized (static dims everywhere)
    assert all(isinstance(d, int) and d > 0 for t in one.io for d in t.shape)
    assert engine.get_tensor_shape("x") == (-1, 2, 6, 6)          # the union over the profiles
    assert engine.get_tensor_profile_shape("x", 1) == [(1, 2, 6, 6)] * 3


@pytest.mark.parametrize("batch, profile", [(1, 1), (3, 0), (8, 0)])
def test_run_picks_the_narrowest_profile_that_holds_the_shape(engine, model, batch, profile):
    sess = ort.InferenceSession(model.SerializeToString())
    ctx = engine.create_execution_context()
    x = RNG.standard_normal((batch, 2, 6, 6)).astype(np.float32)
    got = ctx.run({"x": x})["y"]
    assert ctx.active_optimization_profile == profile
    np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_plan_round_trip_keeps_every_profile(engine):
    loaded = kilnrt.Engine.deserialize(engine.serialize())
    assert [len(e.layers) for e in loaded.profile_engines] == [len(e.layers) for e in engine.profile_engines]
    for batch in (1, 5):
        x = RNG.standard_normal((batch, 2, 6, 6)).astype(np.float32)
        np.testing.assert_array_equal(loaded.run({"x": x})["y"], engine.run({"x": x})["y"])


def test_shape_outside_every_profile_names_the_nearest(engine):
    with pytest.raises(ShapeError) as err:
        engine.run({"x": RNG.standard_normal((9, 2, 6, 6)).astype(np.float32)})
    text = str(err.value)
    assert "outside all 2 optimization profiles" in text
    assert "nearest is profile 0: input 'x' dim 0 is 9, profile 0 allows [1, 8]" in text


def test_tensorrt_calls_use_the_active_profile(engine):
    ctx = engine.create_execution_context()
    ctx.set_optimization_profile_async(1, 0)
    with pytest.raises(ShapeError, match=re.escape("profile 0 accepts it: call set_optimization_profile_async(0)")):
        ctx.set_input_shape("x", (3, 2, 6, 6))
    ctx.set_input_shape("x", (1, 2, 6, 6))
    assert ctx.get_tensor_shape("y") == (1, 5)
    x = RNG.standard_normal((1, 2, 6, 6)).astype(np.float32)
    y = np.zeros((1, 5), np.float32)
    ctx.set_tensor_address("x", x)
    ctx.set_tensor_address("y", y)
    ctx.execute_async_v3(0)
    np.testing.assert_allclose(y, engine.run({"x": x})["y"], rtol=1e-6)
    with pytest.raises(kilnrt.KilnError, match="profile index 2 out of range"):
        ctx.set_optimization_profile_async(2, 0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_profiles_on_the_gpu_capture_separately(model):
    engine = kilnrt.build(model, device="cuda", fp16=True, profiles=[DYNAMIC, BATCH_ONE])
    ctx = engine.create_execution_context()
    sess = ort.InferenceSession(model.SerializeToString())
    for batch in (1, 4, 1):
        x = RNG.standard_normal((batch, 2, 6, 6)).astype(np.float32)
        got = ctx.run({"x": torch.from_numpy(x).cuda()})["y"].float().cpu().numpy()
        want = sess.run(None, {"x": x})[0]
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-2
    assert {k: c.stats.captures for k, c in ctx._graphs.items()} == {1: 1, 0: 1}
