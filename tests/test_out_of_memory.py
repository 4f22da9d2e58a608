"""Out of GPU memory, at run and at build: a KilnError with code OUT_OF_MEMORY that names the
layer, the shapes, what the allocator asked for and what to do, and a process that stays
usable (the failed run's activations are released before the error reaches the caller).

On the CPU the allocator's error is simulated: a tactic raises torch.OutOfMemoryError, as
PyTorch's CUDA allocator does.  The ``cuda`` test runs a real one on the GPU.
"""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
import onnx

import kilnrt
from kilnrt.builder.search import TacticSearch, choose_tactic
from kilnrt.errors import BuildError, ErrorCode, ExecutionError

RNG = np.random.default_rng()
ALLOCATOR_SAYS = ("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 139.81 GiB "
                  "of which 1.20 GiB is free.")


def _model(n: int = 16) -> tuple[onnx.ModelProto, np.ndarray]:
    w = RNG.standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="MatMul_0"),
                               helper.make_node("Relu", ["h"], ["y"], name="Relu_1")], "oom",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def _step(engine, layer: str):
    return next(s for s in engine.program.steps if s.name == layer)


def test_run_out_of_memory_is_a_clear_error_and_the_engine_still_runs(monkeypatch):
    model, w = _model()
    engine = kilnrt.build(model, profiles={"x": [(1, 16), (4, 16), (8, 16)]})
    step = _step(engine, "Relu_1")
    held = []   # the activations the failed run had made: released before the error is raised

    def runs_out(state, args):
        held.append(weakref.ref(args[0]))
        raise torch.OutOfMemoryError(ALLOCATOR_SAYS)

    monkeypatch.setattr(step.tactic, "run", runs_out)
    x = RNG.standard_normal((8, 16)).astype(np.float32)
    with pytest.raises(ExecutionError) as info:
        engine.run({"x": x})
    err = info.value
    assert err.code == ErrorCode.OUT_OF_MEMORY
    text = str(err)
    assert "out of GPU memory in tactic" in text and "(8, 16):float32" in text
    assert "Tried to allocate 20.00 GiB" in text and "run smaller shapes" in text
    assert step.name in text
    gc.collect()
    assert held and held[0]() is None, "the error keeps the failed run's activation alive"
    del info, err
    monkeypatch.undo()
    y = engine.run({"x": x})["y"]
    np.testing.assert_allclose(y, np.maximum(x.astype(np.float64) @ w, 0), rtol=1e-4, atol=1e-4)


def test_out_of_memory_loading_the_weights_names_the_engine_and_the_next_run_loads_again(monkeypatch):
    """A plan whose weights do not fit on the GPU: the first run (which loads them) fails with
    OUT_OF_MEMORY naming the engine and its weights' size, not a bare allocator error or one
    about copying inputs; the engine has no half-loaded program, so a later run loads it."""
    from kilnrt.engine.program import Program

    model, w = _model()
    engine = kilnrt.Runtime().deserialize_cuda_engine(kilnrt.build(model).serialize())

    def runs_out(self, engine):
        self.constants = {"partly": torch.ones(4)}   # what a half-done load holds
        raise torch.OutOfMemoryError(ALLOCATOR_SAYS)

    monkeypatch.setattr(Program, "_prepare", runs_out)
    x = RNG.standard_normal((8, 16)).astype(np.float32)
    with pytest.raises(ExecutionError) as info:
        engine.run({"x": x})
    assert info.value.code == ErrorCode.OUT_OF_MEMORY
    text = str(info.value)
    assert f"loading engine {engine.name!r} onto the GPU" in text and "GiB of weights" in text
    assert "Tried to allocate 20.00 GiB" in text and "lower precision" in text
    assert engine._program is None
    monkeypatch.undo()
    y = engine.run({"x": x})["y"]
    np.testing.assert_allclose(y, np.maximum(x.astype(np.float64) @ w, 0), rtol=1e-4, atol=1e-4)


class _Candidate:
    def __init__(self, name: str, fails_with: BaseException | None = None) -> None:
        self.name, self.fails_with = name, fails_with

    def prepare(self, layer, ctx):
        return None

    def run(self, state, ins):
        if self.fails_with is not None:
            raise self.fails_with
        return [ins[0] + 1]


class _Layer:
    name = "Conv_7"
    inputs = []
    outputs = []
    params = None
    kind = None


SEARCH = TacticSearch(timed=True, one_per_class=False, samples=2, recheck_within=0.0, recheck_rounds=0)


def test_build_refuses_a_layer_whose_every_tactic_runs_out_of_memory(monkeypatch):
    monkeypatch.setattr("kilnrt.builder.search.example_signature", lambda layer, ins: "sig")
    ins = [torch.randn(2, 3)]
    oom = [_Candidate("a", torch.OutOfMemoryError(ALLOCATOR_SAYS)), _Candidate("b", torch.OutOfMemoryError("x"))]
    with pytest.raises(BuildError) as info:
        choose_tactic(_Layer(), oom, None, ins, None, "cpu", SEARCH)
    assert info.value.code == ErrorCode.OUT_OF_MEMORY
    text = str(info.value)
    assert "timing every tactic of layer 'Conv_7' on inputs [(2, 3):float32] (a, b)" in text
    assert "Tried to allocate 20.00 GiB" in text and "smaller opt" in text
    # one tactic that fits is chosen; one that fails otherwise keeps the old behaviour
    chosen, timings = choose_tactic(_Layer(), oom + [_Candidate("c")], None, ins, None, "cpu", SEARCH)
    assert chosen.name == "c" and list(timings) == ["c"]
    chosen, timings = choose_tactic(_Layer(), [_Candidate("d", ValueError("no")), _Candidate("e", ValueError("no"))],
                                    None, ins, None, "cpu", SEARCH)
    assert chosen.name == "d" and timings == {}


def test_build_out_of_memory_anywhere_is_a_build_error(monkeypatch):
    model, _ = _model()

    def runs_out(*args, **kwargs):
        raise torch.OutOfMemoryError(ALLOCATOR_SAYS)

    monkeypatch.setattr("kilnrt.builder.builder.plan_memory", runs_out)
    with pytest.raises(BuildError) as info:
        kilnrt.build(model, profiles={"x": [(1, 16), (4, 16), (8, 16)]})
    assert info.value.code == ErrorCode.OUT_OF_MEMORY
    assert "out of GPU memory while building" in str(info.value) and "smaller opt" in str(info.value)


@pytest.mark.cuda
@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_run_past_the_gpus_memory_then_a_run_that_fits(graphs):
    """This process may use 8 GiB more than its engine and context hold
    (``torch.cuda.set_per_process_memory_fraction``: other test workers share the GPU, so its
    free memory is no measure).  A batch whose input takes 60% of that: its output (without
    graphs, in the layer's tactic) or the graph's own copy of the input (with graphs) cannot
    also fit, so the run fails with OUT_OF_MEMORY; then the same context runs a small batch
    correctly, and the memory is back (a profile's max is not checked against memory at
    build, only at load)."""
    n, budget = 4096, 8 * 2**30
    batch = int(0.6 * budget) // (n * 4)
    model, w = _model(n)
    engine = kilnrt.build(model, device="cuda", tf32=False, profiles={"x": [(1, n), (2, n), (batch, n)]})
    ctx = engine.create_execution_context()
    ctx.use_cuda_graph = graphs
    ctx.run({"x": torch.randn(2, n, device="cuda")})   # the weights on the GPU (and a small graph)
    gc.collect()
    torch.cuda.empty_cache()
    held = torch.cuda.memory_reserved()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (held + budget) / total))
    try:
        x = torch.empty(batch, n, device="cuda")   # its values do not matter: the run cannot finish
        with pytest.raises(ExecutionError) as info:
            ctx.run({"x": x})
        assert info.value.code == ErrorCode.OUT_OF_MEMORY, info.value
        text = str(info.value)
        assert "out of GPU memory" in text and "GiB free of" in text
        assert ("CUDA graph's copy of the inputs" in text) == graphs, text
        del x, info
        gc.collect()
        torch.cuda.empty_cache()
        # what the failed run kept (the graph pool's blocks) stays small
        assert torch.cuda.memory_reserved() - held < 0.05 * budget
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    small = torch.randn(2, n, device="cuda")
    y = ctx.run({"x": small})["y"]
    expected = torch.relu(small.double() @ torch.from_numpy(w).cuda().double())
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-3)
