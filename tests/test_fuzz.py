"""Bounded, seeded fuzzing (kilnrt.fuzzing): mutated ONNX models and mutated plans (checksums
recomputed) give a KilnError or a result, never another exception."""
from __future__ import annotations

import logging
import random

import pytest

import kilnrt
from kilnrt.fuzzing import PROFILE, base_model, onnx_case, plan_case, quantized_plans, run


@pytest.fixture(autouse=True)
def quiet():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_onnx_models_give_kiln_errors(seed):
    rng = random.Random(seed)
    bare = [r for r in (run(onnx_case(rng)) for _ in range(100)) if r]
    assert not bare, bare[:5]


@pytest.mark.parametrize("seed", range(4))
def test_mutated_plans_give_kiln_errors(seed):
    plan = kilnrt.build(base_model(), profiles=PROFILE).serialize()
    rng = random.Random(1000 + seed)
    bare = [r for r in (run(plan_case(rng, plan)) for _ in range(150)) if r]
    assert not bare, bare[:5]


def test_mutated_int8_and_fp8_plans_give_kiln_errors():
    """Plans with 8-bit layers, quantize layers and refit records of calibration ranges."""
    for k, (label, plan) in enumerate(quantized_plans().items()):
        rng = random.Random(2000 + k)
        bare = [r for r in (run(plan_case(rng, plan)) for _ in range(150)) if r]
        assert not bare, (label, bare[:5])
