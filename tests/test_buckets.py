"""Tactic buckets: a dynamic profile's layers keep a second tuned tactic for the shapes nearest
another profile point (kilnrt.builder.buckets); the runtime picks the bucket per input-shape set
(kilnrt.engine.buckets), and plans carry and validate the choice."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import kilnrt
from kilnrt.builder.buckets import bucket_shapes, check_bucket_points
from kilnrt.engine.buckets import BucketChooser, nearest_bucket
from kilnrt.errors import BuildError, PlanError
from kilnrt.kernels.registry import _TACTICS, Tactic, get_tactic, register
from models import small_cnn_model

RNG = np.random.default_rng()
PROFILE = {"x": [(1, 2, 6, 6), (16, 2, 6, 6), (64, 2, 6, 6)]}
POINTS = [{"x": (16, 2, 6, 6)}, {"x": (1, 2, 6, 6)}]


@pytest.mark.parametrize("batch, bucket", [(1, 1), (2, 1), (3, 1), (4, 0), (5, 0), (16, 0), (64, 0)])
def test_nearest_bucket_is_nearest_in_log_space_and_ties_go_to_opt(batch, bucket):
    assert nearest_bucket(POINTS, {"x": (batch, 2, 6, 6)}) == bucket


def test_nearest_bucket_sums_over_every_input_dim():
    points = [{"ids": (8, 128), "mask": (8, 128)}, {"ids": (1, 8), "mask": (1, 8)}]
    assert nearest_bucket(points, {"ids": (2, 16), "mask": (2, 16)}) == 1
    assert nearest_bucket(points, {"ids": (1, 128), "mask": (1, 128)}) == 0    # log 8 away vs log 16
    choose = BucketChooser(points)
    assert [choose({"ids": s, "mask": s}) for s in ((1, 9), (8, 100), (1, 9))] == [1, 0, 1]


def test_bucket_points_of_a_profile():
    net = kilnrt.to_network(small_cnn_model("batch"))
    prof = [{"x": tuple(PROFILE["x"])}]
    assert bucket_shapes(net, prof, ("min",), 3) == POINTS
    assert bucket_shapes(net, prof, "min", 3) == POINTS
    assert bucket_shapes(net, prof, ("min", "max"), 3) == POINTS + [{"x": (64, 2, 6, 6)}]
    assert bucket_shapes(net, prof, (), 3) == POINTS[:1]
    assert bucket_shapes(net, prof, ("min",), 2) == POINTS[:1]           # level 2 tunes at opt only
    pinned = [{"x": ((16, 2, 6, 6),) * 3}]
    assert bucket_shapes(net, pinned, ("min", "max"), 3) == POINTS[:1]   # the points coincide
    with pytest.raises(BuildError, match=r"'middle'.*one of min, max"):
        check_bucket_points(("min", "middle"))


class CountingTactic(Tactic):
    """Runs another tactic and counts the calls, so a test sees which tactic a bucket ran."""

    def __init__(self, inner: Tactic) -> None:
        self.inner, self.kind, self.device, self.calls = inner, inner.kind, inner.device, 0
        self.name = inner.name + ".counting_for_tests"

    def prepare(self, layer, ctx):
        return self.inner.prepare(layer, ctx)

    def run(self, state, inputs):
        self.calls += 1
        return self.inner.run(state, inputs)


@pytest.fixture
def bucketed():
    """A CPU engine for batch 1-64 whose last layer runs a counting copy of its tactic in bucket 1
    (batch near 1); CPU builds time nothing, so the test sets the choice a GPU build would make."""
    model = small_cnn_model("batch")
    engine = kilnrt.build(model, profiles=PROFILE)
    assert engine.bucket_shapes is None and not any(l.bucket_tactics for l in engine.layers)
    last = engine.layers[-1]
    counting = register(CountingTactic(get_tactic(last.tactic)))
    engine.bucket_shapes = [dict(p) for p in POINTS]
    last.bucket_tactics = {1: counting.name}
    engine._program = None
    try:
        yield engine, counting, ort.InferenceSession(model.SerializeToString())
    finally:
        _TACTICS.pop(counting.name)


@pytest.mark.parametrize("batch, runs_bucket", [(1, True), (2, True), (16, False), (40, False)])
def test_each_shape_set_runs_its_buckets_tactic(bucketed, batch, runs_bucket):
    engine, counting, sess = bucketed
    x = RNG.standard_normal((batch, 2, 6, 6)).astype(np.float32)
    got = engine.run({"x": x})["y"]
    assert counting.calls == int(runs_bucket)
    np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_plan_round_trip_keeps_bucket_tactics(bucketed):
    engine, counting, sess = bucketed
    loaded = kilnrt.Engine.deserialize(engine.serialize())
    assert loaded.bucket_shapes == POINTS
    assert loaded.layers[-1].bucket_tactics == {1: counting.name}
    x = RNG.standard_normal((1, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(loaded.run({"x": x})["y"], sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert counting.calls == 1
    info = loaded.create_engine_inspector().get_layer_information(len(loaded.layers) - 1)
    assert f"bucket 1: {counting.name}" in info


def _tamper(engine, edit) -> bytes:
    """A plan whose header ``edit(header)`` changed, re-packed with a valid checksum."""
    from kilnrt.engine.plan import pack, unpack

    header, weights, kernels = unpack(engine.serialize())
    edit(header)
    return pack(header, weights, kernels)


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["layers"][-1].update(bucket_tactics={"2": h["layers"][-1]["tactic"]}), r"bucket in \[1, 2\)"),
    (lambda h: h["layers"][-1].update(bucket_tactics={"1": "cpu.convolution.torch"}), r"runs convolution layers"),
    (lambda h: h["layers"][-1].update(bucket_tactics={"1": "cpu.softmax.nonexistent"}), r"nonexistent"),
    (lambda h: h.update(bucket_shapes=[{"x": [16, 2, 6, 6]}, {"y": [1, 2, 6, 6]}]), r"every input \(x\)"),
    (lambda h: h.update(bucket_shapes=[{"x": [16, 2, 6, 6]}, {"x": [1, 2]}]), r"must be 4 non-negative ints"),
])
def test_a_plan_with_bad_bucket_data_is_refused(bucketed, edit, message):
    engine, _, _ = bucketed
    with pytest.raises(PlanError, match=message):
        kilnrt.Engine.deserialize(_tamper(engine, edit))


@pytest.mark.cuda
def test_gpu_build_tunes_the_min_bucket_and_matches_onnxruntime():
    """A dynamic FP32 CNN built for batch 1-64: the build times the layers at batch 1 too, the
    summary records the points, and every batch (either bucket) matches ONNX Runtime."""
    model = small_cnn_model("batch")
    engine = kilnrt.build(model, device="cuda", profiles=PROFILE, tf32=False)
    buckets = engine.build_info["tactic_buckets"]
    assert buckets["shapes"] == [{"x": [16, 2, 6, 6]}, {"x": [1, 2, 6, 6]}]
    assert engine.bucket_shapes == (POINTS if any(l.bucket_tactics for l in engine.layers) else None)
    sess = ort.InferenceSession(model.SerializeToString())
    loaded = kilnrt.Engine.deserialize(engine.serialize())
    for batch in (1, 3, 16, 64):
        x = RNG.standard_normal((batch, 2, 6, 6)).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        np.testing.assert_allclose(loaded.run({"x": torch.from_numpy(x).cuda()})["y"].cpu().numpy(), want,
                                   rtol=1e-4, atol=1e-5)
    none = kilnrt.build(model, device="cuda", profiles=PROFILE, tactic_buckets=())
    assert none.bucket_shapes is None and none.build_info["tactic_buckets"] is None


def test_inspector_summarizes_the_buckets_of_a_build():
    from kilnrt.engine.inspector import buckets_text

    build = {"tactic_buckets": {"shapes": [{"x": [16, 3]}, {"x": [1, 3]}], "layers": [9], "saved_ms": [0.0412],
                                "seconds": 41.4}}
    assert buckets_text(build) == ("bucket 0 (opt) x[16,3]; bucket 1 x[1,3]: 9 layers run another tactic "
                                   "(saving 0.041 ms as timed); tuned in 41.4 s")
    assert buckets_text({"tactic_buckets": None}) == ""
