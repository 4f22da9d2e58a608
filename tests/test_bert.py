"""A BERT-style encoder exported from PyTorch (TorchScript exporter, dynamic batch and
sequence): kilnrt matches onnxruntime and the float64 PyTorch module on fresh random
inputs with padding, at several shapes, with and without an optimization profile."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import kilnrt
from kilnrt.errors import ErrorCode, ShapeError
from kilnrt.testing import assert_close, fresh_seed
from models import BERT_INPUTS, BERT_OUTPUTS, bert_inputs, export_bert, tiny_bert

ort = pytest.importorskip("onnxruntime")

SHAPES = [(1, 1), (1, 7), (2, 16), (3, 33), (4, 64)]   # (batch, seq); 64 = max positions
PROFILE = {n: ((1, 1), (2, 16), (4, 32)) for n in BERT_INPUTS}


@pytest.fixture(scope="module")
def module() -> torch.nn.Module:
    return tiny_bert()


@pytest.fixture(scope="module")
def module64(module) -> torch.nn.Module:
    return copy.deepcopy(module).double()


@pytest.fixture(scope="module")
def onnx_model(module):
    return export_bert(module, opset=17)


@pytest.fixture(scope="module")
def engine(onnx_model) -> kilnrt.Engine:
    return kilnrt.build(onnx_model)


@pytest.fixture(scope="module")
def session(onnx_model):
    return ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_ort(session, feeds):
    return dict(zip(BERT_OUTPUTS, session.run(None, feeds)))


def test_engine_io(engine):
    assert engine.input_names == list(BERT_INPUTS)
    assert engine.output_names == list(BERT_OUTPUTS)
    for name in BERT_INPUTS:
        assert engine.get_tensor_dtype(name) == kilnrt.DataType.INT64
        assert engine.get_tensor_shape(name) == (-1, -1)
    assert engine.get_tensor_dtype("last_hidden_state") == kilnrt.DataType.FLOAT
    assert engine.get_tensor_shape("last_hidden_state") == (-1, -1, 64)
    assert engine.get_tensor_shape("pooler_output") == (-1, 64)


def test_inputs_have_padding():
    feeds = bert_inputs(3, 9, np.random.default_rng(0))
    assert (feeds["attention_mask"] == 0).any() and (feeds["attention_mask"][:, 0] == 1).all()


@pytest.mark.parametrize("batch,seq", SHAPES)
def test_matches_onnxruntime(engine, session, batch, seq):
    seed = fresh_seed()
    feeds = bert_inputs(batch, seq, np.random.default_rng(seed))
    assert_close(engine.run(feeds), run_ort(session, feeds), rtol=1e-3, atol=1e-4, seed=seed)


@pytest.mark.parametrize("batch,seq", [(1, 5), (2, 16), (3, 40)])
def test_matches_float64_pytorch(engine, module64, batch, seq):
    seed = fresh_seed()
    feeds = bert_inputs(batch, seq, np.random.default_rng(seed))
    with torch.no_grad():
        hidden, pooled = module64(*(torch.from_numpy(feeds[n]) for n in BERT_INPUTS))
    out = engine.run(feeds)
    assert_close(out["last_hidden_state"], hidden.float(), rtol=1e-3, atol=1e-4, seed=seed, name="last_hidden_state")
    assert_close(out["pooler_output"], pooled.float(), rtol=1e-3, atol=1e-4, seed=seed, name="pooler_output")


def test_padding_does_not_leak_into_real_tokens(engine):
    """Changing the ids of padded positions must not change the outputs of real tokens."""
    rng = np.random.default_rng(fresh_seed())
    feeds = bert_inputs(2, 12, rng)
    feeds["attention_mask"][:] = 1
    feeds["attention_mask"][:, 8:] = 0
    other = {k: v.copy() for k, v in feeds.items()}
    other["input_ids"][:, 8:] = (other["input_ids"][:, 8:] + 1) % 100
    a, b = engine.run(feeds), engine.run(other)
    assert_close(a["last_hidden_state"][:, :8], b["last_hidden_state"][:, :8], rtol=1e-5, atol=1e-5)
    assert_close(a["pooler_output"], b["pooler_output"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a["last_hidden_state"][:, 8:], b["last_hidden_state"][:, 8:])


def test_torch_inputs_give_torch_outputs(engine, session):
    seed = fresh_seed()
    feeds = bert_inputs(2, 10, np.random.default_rng(seed))
    out = engine.run({k: torch.from_numpy(v) for k, v in feeds.items()})
    assert all(isinstance(v, torch.Tensor) for v in out.values())
    assert_close(out, run_ort(session, feeds), rtol=1e-3, atol=1e-4, seed=seed)


@pytest.fixture(scope="module")
def profiled(onnx_model) -> kilnrt.Engine:
    return kilnrt.build(onnx_model, profiles=PROFILE)


def test_profile_is_recorded(profiled):
    for name in BERT_INPUTS:
        assert profiled.get_tensor_profile_shape(name, 0) == [(1, 1), (2, 16), (4, 32)]
    assert profiled.memory is not None and profiled.memory.arena_bytes > 0   # planned at the opt shape


@pytest.mark.parametrize("batch,seq", [(1, 1), (2, 16), (4, 32), (3, 20)])
def test_profile_shapes_match_onnxruntime(profiled, session, batch, seq):
    seed = fresh_seed()
    feeds = bert_inputs(batch, seq, np.random.default_rng(seed))
    assert_close(profiled.run(feeds), run_ort(session, feeds), rtol=1e-3, atol=1e-4, seed=seed)


@pytest.mark.parametrize("batch,seq,dim,bound", [(2, 33, 1, 32), (5, 8, 0, 4)])
def test_shape_outside_profile_names_the_tensor(profiled, batch, seq, dim, bound):
    feeds = bert_inputs(batch, seq, np.random.default_rng(0))
    with pytest.raises(ShapeError) as info:
        profiled.run(feeds)
    err = info.value
    assert err.code == ErrorCode.INVALID_SHAPE
    text = str(err)
    assert "input 'input_ids'" in text
    assert f"shape ({batch}, {seq}) is outside optimization profile 0" in text
    assert f"dim {dim} must be in [1, {bound}]" in text
    assert "(min (1, 1), max (4, 32))" in text


def test_profile_plan_round_trip(profiled, session):
    loaded = kilnrt.load(profiled.serialize())
    seed = fresh_seed()
    feeds = bert_inputs(2, 24, np.random.default_rng(seed))
    for name, value in loaded.run(feeds).items():
        assert np.array_equal(value, profiled.run(feeds)[name]), seed
    with pytest.raises(ShapeError, match="outside optimization profile"):
        loaded.run(bert_inputs(1, 40, np.random.default_rng(0)))


@pytest.mark.parametrize("opset", [13, 18])
def test_other_opsets(module, opset):
    model = export_bert(module, opset=opset)
    engine = kilnrt.build(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch, seq in ((1, 3), (3, 21)):
        seed = fresh_seed()
        feeds = bert_inputs(batch, seq, np.random.default_rng(seed))
        assert_close(engine.run(feeds), run_ort(session, feeds), rtol=1e-3, atol=1e-4, seed=seed,
                     name=f"opset {opset}")
