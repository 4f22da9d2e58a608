"""The trained example model (examples/digits.onnx, from scripts/train_digits.py): kilnrt
matches onnxruntime on random inputs and classifies the held-out digits as it does."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kilnrt
from kilnrt.testing import assert_close, seeded_inputs

ort = pytest.importorskip("onnxruntime")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODEL = EXAMPLES / "digits.onnx"


@pytest.fixture(scope="module")
def engine() -> kilnrt.Engine:
    return kilnrt.build(str(MODEL))


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])


def test_io(engine):
    assert engine.input_names == ["input"] and engine.output_names == ["logits"]
    assert engine.get_tensor_shape("input") == (-1, 1, 8, 8)
    assert engine.get_tensor_shape("logits") == (-1, 10)


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_matches_onnxruntime_on_random_inputs(engine, session, batch):
    feeds = seeded_inputs(engine, shapes={"batch": batch})
    (expected,) = session.run(None, dict(feeds))
    assert_close(engine.run(feeds)["logits"], expected, rtol=1e-3, atol=1e-4, seed=feeds.seed)


def test_test_set_predictions_match_onnxruntime(engine, session):
    data = np.load(EXAMPLES / "digits_test.npz")
    images, labels = data["images"], data["labels"]
    assert images.dtype == np.float32 and len(images) == len(labels) > 100
    logits = engine.run({"input": images})["logits"]
    (expected,) = session.run(None, {"input": images})
    assert_close(logits, expected, rtol=1e-3, atol=1e-4, name="logits")
    predicted = logits.argmax(axis=1)
    assert np.array_equal(predicted, expected.argmax(axis=1))
    accuracy = float((predicted == labels).mean())
    assert accuracy >= 0.97, accuracy


def test_plan_round_trip_predicts_the_same(engine, tmp_path):
    path = tmp_path / "digits.plan"
    engine.save(str(path))
    images = np.load(EXAMPLES / "digits_test.npz")["images"][:32]
    assert np.array_equal(kilnrt.load(str(path)).run({"input": images})["logits"],
                          engine.run({"input": images})["logits"])
