"""The public calls on the GPU: ``execute_async_v3`` on bound buffers (one graph launch while
the bindings stay the same) and ``engine.run`` with device tensors (checks skipped for feeds
seen before).  Every result is checked against a float64 reference on fresh random inputs.

Marked ``cuda``: skipped without a GPU; run on the GPU machine.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import kilnrt
from kilnrt.errors import KilnError

pytestmark = pytest.mark.cuda
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "examples", "digits.onnx")


@pytest.fixture(scope="module")
def digits():
    """The bundled digits CNN: a dynamic-batch CUDA engine, and the CPU engine as reference."""
    gpu = kilnrt.build(DIGITS, device="cuda", tf32=False,
                       profiles={"input": [(1, 1, 8, 8), (16, 1, 8, 8), (64, 1, 8, 8)]})
    cpu = kilnrt.build(DIGITS)
    return gpu, cpu


def _reference(cpu, x: torch.Tensor) -> np.ndarray:
    return cpu.run({"input": x.cpu().numpy()})["logits"]


def _bound(engine, batch: int):
    ctx = engine.create_execution_context()
    x = torch.randn(batch, 1, 8, 8, device="cuda")
    ctx.set_input_shape("input", tuple(x.shape))
    y = torch.empty(ctx.get_tensor_shape("logits"), device="cuda")
    ctx.set_tensor_address("input", x)
    ctx.set_tensor_address("logits", y)
    return ctx, x, y


def test_bound_calls_read_the_buffers_live_and_launch_one_graph(digits):
    gpu, cpu = digits
    ctx, x, y = _bound(gpu, 8)
    stream = torch.cuda.Stream()
    for i in range(4):   # new data in the same buffer on every call
        x.copy_(torch.randn_like(x))
        stream.wait_stream(torch.cuda.current_stream())
        assert ctx.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        np.testing.assert_allclose(y.cpu().numpy(), _reference(cpu, x), rtol=1e-3, atol=1e-3)
        if i == 0:
            assert ctx._fast is not None   # the next call with the same bindings is one launch
    stats = ctx.graph_stats
    assert stats.captures == 1 and stats.replays == 4 and stats.eager_runs == 0


def test_rebinding_shapes_and_addresses_captures_again_and_stays_correct(digits):
    gpu, cpu = digits
    ctx, x, y = _bound(gpu, 8)
    ctx.execute_async_v3(0)
    x2 = torch.randn(8, 1, 8, 8, device="cuda")
    ctx.set_tensor_address("input", x2)            # another buffer: another graph
    ctx.execute_async_v3(0)
    torch.cuda.synchronize()
    np.testing.assert_allclose(y.cpu().numpy(), _reference(cpu, x2), rtol=1e-3, atol=1e-3)
    ctx.set_tensor_address("input", x2)            # the same buffer again: nothing changes
    version = ctx._version
    ctx.set_tensor_address("input", x2)
    assert ctx._version == version
    x3 = torch.randn(33, 1, 8, 8, device="cuda")   # another shape, raw pointers this time
    y3 = torch.empty(33, 10, device="cuda")
    ctx.set_input_shape("input", tuple(x3.shape))
    ctx.set_tensor_address("input", x3.data_ptr())
    ctx.set_tensor_address("logits", y3.data_ptr())
    ctx.execute_async_v3(0)
    torch.cuda.synchronize()
    np.testing.assert_allclose(y3.cpu().numpy(), _reference(cpu, x3), rtol=1e-3, atol=1e-3)
    ctx.set_input_shape("input", (8, 1, 8, 8))     # back to the first graph's bindings
    ctx.set_tensor_address("input", x)
    ctx.set_tensor_address("logits", y)
    x.copy_(torch.randn_like(x))
    ctx.execute_async_v3(0)
    torch.cuda.synchronize()
    np.testing.assert_allclose(y.cpu().numpy(), _reference(cpu, x), rtol=1e-3, atol=1e-3)
    assert ctx.graph_stats.captures == 3


def test_too_small_output_buffer_is_refused_before_any_write(digits):
    gpu, _ = digits
    ctx, x, _ = _bound(gpu, 8)
    small = torch.full((4, 10), 7.0, device="cuda")
    ctx.set_tensor_address("logits", small)
    with pytest.raises(KilnError, match="logits"):
        ctx.execute_async_v3(0)
    torch.cuda.synchronize()


def test_profiler_and_graphs_off_take_the_eager_path(digits):
    gpu, cpu = digits
    ctx, x, y = _bound(gpu, 5)
    ctx.execute_async_v3(0)
    ctx.use_cuda_graph = False                     # the fast path must notice
    x.copy_(torch.randn_like(x))
    ctx.execute_async_v3(0)
    torch.cuda.synchronize()
    np.testing.assert_allclose(y.cpu().numpy(), _reference(cpu, x), rtol=1e-3, atol=1e-3)


def test_run_with_device_tensors_checks_once_and_returns_the_callers_own_tensors(digits):
    gpu, cpu = digits
    x = torch.randn(16, 1, 8, 8, device="cuda")
    first = gpu.run({"input": x})["logits"]
    second = gpu.run({"input": x * -1.0})["logits"]   # same signature: the checked path
    np.testing.assert_allclose(first.cpu().numpy(), _reference(cpu, x), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(second.cpu().numpy(), _reference(cpu, -x), rtol=1e-3, atol=1e-3)
    assert first.data_ptr() != second.data_ptr()
    with pytest.raises(KilnError, match="expects FLOAT"):   # another dtype is checked again
        gpu.run({"input": x.half()})
    with pytest.raises(KilnError, match="outside optimization profile"):
        gpu.run({"input": torch.randn(65, 1, 8, 8, device="cuda")})


def test_run_replays_the_graph_directly_and_stays_correct_across_shapes_and_evictions(digits):
    gpu, cpu = digits
    from kilnrt.engine.cudagraph import GraphCacheConfig

    ctx = gpu.create_execution_context()
    ctx.graph_cache_config = GraphCacheConfig(max_graphs=1)   # one graph: a shape asked for more often evicts it
    seen = []
    # with one graph, a newcomer is admitted once asked for more often than the cached shape
    # (kilnrt.engine.graph_admission): 4 captured; 9 declined, then admitted (4 evicted); 4
    # declined twice, then admitted; 9 declined once, then admitted
    for batch in (4, 9, 9, 9, 4, 4, 4, 9, 9, 9):
        x = torch.randn(batch, 1, 8, 8, device="cuda")
        out = ctx.run({"input": x})["logits"]
        seen.append(out)
        np.testing.assert_allclose(out.cpu().numpy(), _reference(cpu, x), rtol=1e-3, atol=1e-3)
        assert ctx.get_tensor_shape("input") == (batch, 1, 8, 8)
        assert ctx.get_tensor_shape("logits")[0] == batch
    assert len({t.data_ptr() for t in seen}) == len(seen)        # each call's outputs are the caller's own
    stats = ctx.graph_stats
    assert (stats.captures, stats.evictions, stats.declined) == (4, 3, 4), stats
    assert len(ctx._replays) == 1, "an evicted graph's replay entry (and its buffers) is dropped"
    assert all(ctx._current(r) for r in ctx._replays.values())
    ctx.use_cuda_graph = False                                   # the replay path must notice
    x = torch.randn(4, 1, 8, 8, device="cuda")
    replays = stats.replays
    np.testing.assert_allclose(ctx.run(input=x)["logits"].cpu().numpy(), _reference(cpu, x), rtol=1e-3, atol=1e-3)
    assert ctx.graph_stats.replays == replays


def test_more_shapes_than_graphs_do_not_capture_on_every_call(digits):
    """A dynamic batcher's every size, cycled, with a cache of 4 graphs: least-recently-used
    eviction alone would capture a graph on each of the 36 calls; with admission the first
    four stay, and the rest run without a graph, correctly."""
    gpu, cpu = digits
    from kilnrt.engine.cudagraph import GraphCacheConfig

    ctx = gpu.create_execution_context()
    ctx.graph_cache_config = GraphCacheConfig(max_graphs=4)
    rng = torch.Generator(device="cuda").manual_seed(int(np.random.default_rng().integers(1 << 31)))
    for _ in range(3):
        for batch in range(1, 13):
            x = torch.randn(batch, 1, 8, 8, device="cuda", generator=rng)
            np.testing.assert_allclose(ctx.run({"input": x})["logits"].cpu().numpy(), _reference(cpu, x),
                                       rtol=1e-3, atol=1e-3)
    stats = ctx.graph_stats
    # a capturing call launches its graph too: 4 replays then, 8 later
    assert stats.captures == 4 and stats.evictions == 0 and stats.declined == 24 and stats.replays == 12, stats


def test_run_of_an_engine_without_inputs_replays_too(tmp_path):
    from test_engine import model_without_inputs

    path, value = model_without_inputs(tmp_path, 5)
    engine = kilnrt.build(path, device="cuda")
    ctx = engine.create_execution_context()
    for _ in range(3):
        np.testing.assert_allclose(ctx.run({})["y"].cpu().numpy(), np.maximum(value, 0))
    assert ctx._replays and ctx.graph_stats.captures == 1 and ctx.graph_stats.replays == 3


def _matmul_model(tmp_path, seed: int):
    """x[4, 16] @ w[16, 8] with w an initializer: (its path, the generator that drew w)."""
    import onnx
    from onnx import helper, numpy_helper, TensorProto

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path, rng


def test_run_replay_follows_a_refit(tmp_path):
    path, rng = _matmul_model(tmp_path, seed=3)
    engine = kilnrt.build(str(path), device="cuda", tf32=False, refit=True)
    x = torch.randn(4, 16, device="cuda")
    for _ in range(2):
        engine.run({"x": x})
    w2 = rng.standard_normal((16, 8)).astype(np.float32)
    engine.refit({"w": w2})
    y = engine.run({"x": x})["y"]
    np.testing.assert_allclose(y.cpu().numpy(), x.cpu().double().numpy() @ w2, rtol=1e-4, atol=1e-4)


def test_refit_invalidates_the_bound_graph(tmp_path):
    path, rng = _matmul_model(tmp_path, seed=0)
    from kilnrt.builder import BuilderConfig, BuilderFlag, build_engine

    config = BuilderConfig()
    config.device = "cuda"
    config.clear_flag(BuilderFlag.TF32)
    config.set_flag(BuilderFlag.REFIT)
    engine = build_engine(kilnrt.to_network(str(path)), config)
    ctx = engine.create_execution_context()
    x = torch.randn(4, 16, device="cuda")
    y = torch.empty(4, 8, device="cuda")
    ctx.set_tensor_address("x", x)
    ctx.set_tensor_address("y", y)
    ctx.execute_async_v3(0)
    w2 = rng.standard_normal((16, 8)).astype(np.float32)
    engine.refit({"w": w2})
    ctx.execute_async_v3(0)
    torch.cuda.synchronize()
    np.testing.assert_allclose(y.cpu().numpy(), x.cpu().double().numpy() @ w2, rtol=1e-4, atol=1e-4)



def test_a_failed_capture_leaves_pytorch_as_it_was():
    """A NonZero engine cannot be captured (its run reads the count on the host): each new shape
    set's capture fails, and the run goes on eagerly.  PyTorch is then as it was: the same
    current stream, a random generator out of capture mode, an allocator that frees what is
    freed, and the context's next capture is not refused for a pool "already recording"."""
    from models import nonzero_model

    engine = kilnrt.build(nonzero_model(), device="cuda", profiles={"x": [(1, 5), (4, 5), (8, 5)]})
    ctx = engine.create_execution_context()
    before = torch.cuda.current_stream()
    for rows in (3, 7):   # two shape sets: two failed captures (the second into a new pool)
        x = torch.randn(rows, 5, device="cuda")
        got = ctx.run({"x": x})["y"]
        torch.testing.assert_close(got.cpu(), torch.nonzero(x.cpu() > 0).T)
        reason = ctx.graph_stats.fallback_reason
        assert "already recording" not in reason and "INTERNAL ASSERT" not in reason, reason
    assert ctx.graph_stats.captures == 0 and ctx.graph_stats.eager_runs == 2
    assert torch.cuda.current_stream() == before
    z = torch.randn(1000, device="cuda")   # raised "Offset increment outside graph capture ..." before
    torch.testing.assert_close((z * 2).cpu(), z.cpu() * 2)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    held = torch.cuda.memory_reserved()
    big = torch.empty(1 << 28, device="cuda")   # 1 GiB, freed: back to the driver
    del big
    torch.cuda.empty_cache()
    assert torch.cuda.memory_reserved() <= held



@pytest.mark.parametrize("call", ["run", "execute_async_v3"])
@pytest.mark.parametrize("fail_at", [0, 1], ids=["first capture fails", "a later capture fails"])
def test_a_context_captures_again_after_a_failed_capture(call, fail_at):
    """One capture of a context fails (a host sync inside it, injected): the first one, which
    left PyTorch's pool with no user ("use_count > 0 INTERNAL ASSERT" on the next capture), or
    one after a successful capture, which left the pool "already recording".  The next shape
    set captures into a new pool, and the graphs of both pools replay correctly."""
    from models import chain_model

    model = chain_model(width=32, depth=3, batch="n")
    engine = kilnrt.build(model, device="cuda", profiles={"x": [(1, 32), (4, 32), (8, 32)]})
    reference = kilnrt.build(model, device="cpu")
    ctx = engine.create_execution_context()
    program = engine.program
    real = program.execute
    captures = []

    def execute(feeds, *args, **kwargs):
        if torch.cuda.is_current_stream_capturing():
            captures.append(len(captures))
            if captures[-1] == fail_at:
                torch.cuda.synchronize()   # not permitted while capturing: this capture fails
        return real(feeds, *args, **kwargs)

    program.execute = execute
    sizes = (2, 3, 5)   # fail_at 0: 2 fails, 3 and 5 capture; fail_at 1: 2 captures, 3 fails, 5 captures
    x = {rows: torch.randn(rows, 32, device="cuda") for rows in sizes}
    outs = {rows: torch.empty(rows, 32, device="cuda") for rows in sizes}
    for _ in range(2):   # the second round replays what the first captured, in both pools
        for rows in sizes:
            if call == "run":
                got = ctx.run({"x": x[rows]})["y"]
            else:   # one set of buffers per shape: one bound graph each
                ctx.set_input_shape("x", (rows, 32))
                ctx.set_tensor_address("x", x[rows].data_ptr())
                ctx.set_tensor_address("y", outs[rows].data_ptr())
                assert ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream)
                got = outs[rows]
            torch.cuda.synchronize()
            want = reference.run({"x": x[rows].cpu().numpy()})["y"]
            np.testing.assert_allclose(got.cpu().numpy(), want, rtol=2e-2, atol=2e-2)   # TF32 GEMMs
    stats = ctx.graph_stats if call == "run" else ctx._bound.stats
    assert "INTERNAL ASSERT" not in stats.fallback_reason and "already recording" not in stats.fallback_reason, \
        stats.fallback_reason
    assert stats.captures == 2 and stats.eager_runs == 2 and stats.replays >= 2, stats
