"""The ExecutionContext API (TensorRT's calling style and the Pythonic one), engine I/O
queries, concurrency, the memory plan, and clear errors for bad bindings."""
from __future__ import annotations

import concurrent.futures
import re

import numpy as np
import pytest
import torch

import kilnrt
from kilnrt.engine import TensorIOMode
from kilnrt.errors import DTypeError, ErrorCode, KilnError, ShapeError
from kilnrt.testing import assert_close, seeded_inputs
from models import chain_model, nonzero_model, small_cnn_model, two_input_model

PROFILE = {"x": ((1, 8), (4, 8), (16, 8)), "s": ((1, 8), (4, 8), (16, 8)), "idx": ((1,), (4,), (16,))}


@pytest.fixture(scope="module")
def engine() -> kilnrt.Engine:
    return kilnrt.build(two_input_model(), profiles=PROFILE)


def reference(feeds) -> dict[str, np.ndarray]:
    b = np.linspace(-1, 1, 8, dtype=np.float32)
    return {"y": np.maximum(feeds["x"] * feeds["s"] + b, 0), "z": feeds["idx"] + 1}


def batch_feeds(batch: int, seed: int | None = None):
    return seeded_inputs(two_input_model(), seed=seed, shapes={"batch": batch})


# ----------------------------------------------------------------------------- I/O queries
def test_io_queries(engine):
    assert engine.num_io_tensors == 5
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert names == ["x", "s", "idx", "y", "z"]
    assert [engine.get_tensor_mode(n) for n in names] == [TensorIOMode.INPUT] * 3 + [TensorIOMode.OUTPUT] * 2
    assert engine.get_tensor_dtype("x") == kilnrt.DataType.FLOAT
    assert engine.get_tensor_dtype("idx") == kilnrt.DataType.INT64
    assert engine.get_tensor_dtype("z") == kilnrt.DataType.INT64
    assert engine.get_tensor_shape("x") == (-1, 8)
    assert engine.get_tensor_shape("y") == (-1, 8)
    assert engine.get_tensor_profile_shape("x", 0) == [(1, 8), (4, 8), (16, 8)]
    assert engine.get_tensor_profile_shape("idx", 0) == [(1,), (4,), (16,)]
    assert engine.input_names == ["x", "s", "idx"] and engine.output_names == ["y", "z"]


def test_io_query_of_unknown_tensor_lists_the_tensors(engine):
    with pytest.raises(KilnError) as info:
        engine.get_tensor_shape("nope")
    assert info.value.code == ErrorCode.UNKNOWN_TENSOR
    assert "'nope'" in str(info.value) and "x, s, idx, y, z" in str(info.value)


def test_profile_shape_of_an_output_is_refused(engine):
    with pytest.raises(KilnError, match="'y' is an output"):
        engine.get_tensor_profile_shape("y", 0)


# ----------------------------------------------------------------------------- TensorRT style
def test_output_shapes_follow_input_shapes(engine):
    ctx = engine.create_execution_context()
    assert ctx.get_tensor_shape("y") == (-1, 8)          # unknown until the inputs have shapes
    for name, shape in (("x", (3, 8)), ("s", (3, 8)), ("idx", (3,))):
        assert ctx.set_input_shape(name, shape)
    assert ctx.all_binding_shapes_specified
    assert ctx.get_tensor_shape("x") == (3, 8)
    assert ctx.get_tensor_shape("y") == (3, 8)
    assert ctx.get_tensor_shape("z") == (3,)


def test_output_shapes_follow_input_shapes_after_a_run(engine):
    """After a run, a new input shape changes the outputs' shapes before the next run (the last
    run's shapes were returned before)."""
    ctx = engine.create_execution_context()
    ctx.run(batch_feeds(3))
    assert ctx.get_tensor_shape("y") == (3, 8)
    for name, shape in (("x", (5, 8)), ("s", (5, 8)), ("idx", (5,))):
        ctx.set_input_shape(name, shape)
    assert ctx.get_tensor_shape("y") == (5, 8) and ctx.get_tensor_shape("z") == (5,)
    ctx.run(batch_feeds(2))
    assert ctx.get_tensor_shape("y") == (2, 8)


def test_a_data_dependent_output_is_unknown_again_at_new_input_shapes():
    engine = kilnrt.build(nonzero_model(), device="cpu", profiles={"x": [(1, 5), (4, 5), (8, 5)]})
    ctx = engine.create_execution_context()
    x = np.array(seeded_inputs(nonzero_model(), shapes={"x": (3, 5)})["x"])
    x[0, 0] = abs(x[0, 0]) + 0.5   # at least one positive value
    out = ctx.run({"x": x})["y"]
    assert ctx.get_tensor_shape("y") == out.shape == (2, int((x > 0).sum()))
    ctx.set_input_shape("x", (6, 5))
    assert ctx.get_tensor_shape("y") == (2, -1)   # known only after a run, as TensorRT says


def test_set_tensor_address_with_numpy_arrays(engine):
    feeds = batch_feeds(5)
    ctx = engine.create_execution_context()
    outputs = {"y": np.zeros((5, 8), np.float32), "z": np.zeros(5, np.int64)}
    for name, value in feeds.items():
        ctx.set_input_shape(name, value.shape)
        ctx.set_tensor_address(name, value)
    for name, buf in outputs.items():
        ctx.set_tensor_address(name, buf)
    assert ctx.execute_async_v3(0)
    assert_close(outputs, reference(feeds), seed=feeds.seed)


def test_set_tensor_address_with_torch_tensors(engine):
    feeds = batch_feeds(4)
    ctx = engine.create_execution_context()
    y, z = torch.zeros(4, 8), torch.zeros(4, dtype=torch.int64)
    for name, value in feeds.items():
        ctx.set_input_shape(name, value.shape)
        ctx.set_tensor_address(name, torch.from_numpy(value))
    ctx.set_tensor_address("y", y)
    ctx.set_tensor_address("z", z)
    ctx.execute_async_v3(0)
    assert_close({"y": y, "z": z}, reference(feeds), seed=feeds.seed)


def test_set_tensor_address_with_raw_pointers(engine):
    feeds = batch_feeds(6)
    ctx = engine.create_execution_context()
    outputs = {"y": np.zeros((6, 8), np.float32), "z": np.zeros(6, np.int64)}
    for name, value in feeds.items():
        ctx.set_input_shape(name, value.shape)
        ctx.set_tensor_address(name, value.ctypes.data)
    for name, buf in outputs.items():
        ctx.set_tensor_address(name, buf.ctypes.data)
    assert ctx.get_tensor_address("y") == outputs["y"].ctypes.data
    ctx.execute_async_v3(0)
    assert_close(outputs, reference(feeds), seed=feeds.seed)


def test_raw_pointer_without_a_shape_is_refused(engine):
    feeds = batch_feeds(2)
    ctx = engine.create_execution_context()
    for name, value in feeds.items():
        ctx.set_tensor_address(name, value.ctypes.data)
    with pytest.raises(KilnError) as info:
        ctx.execute_async_v3(0)
    assert "'x'" in str(info.value) and "raw pointer" in str(info.value) and "set_input_shape" in str(info.value)


def test_execute_v2_with_bindings_in_io_order(engine):
    feeds = batch_feeds(3)
    ctx = engine.create_execution_context()
    for name, value in feeds.items():
        ctx.set_input_shape(name, value.shape)
    y, z = np.zeros((3, 8), np.float32), np.zeros(3, np.int64)
    assert ctx.execute_v2([feeds["x"], feeds["s"], feeds["idx"], y, z])
    assert_close({"y": y, "z": z}, reference(feeds), seed=feeds.seed)


def test_execute_v2_with_wrong_binding_count(engine):
    ctx = engine.create_execution_context()
    with pytest.raises(KilnError) as info:
        ctx.execute_v2([np.zeros((1, 8), np.float32)])
    text = str(info.value)
    assert "needs 5 bindings" in text and "got 1" in text and "x, s, idx, y, z" in text


def test_missing_input_address(engine):
    feeds = batch_feeds(2)
    ctx = engine.create_execution_context()
    ctx.set_tensor_address("x", feeds["x"])
    with pytest.raises(KilnError) as info:
        ctx.execute_async_v3(0)
    assert "input 's' has no address" in str(info.value) and "set_tensor_address('s'" in str(info.value)


def test_missing_output_address(engine):
    feeds = batch_feeds(2)
    ctx = engine.create_execution_context()
    for name, value in feeds.items():
        ctx.set_tensor_address(name, value)
    ctx.set_tensor_address("y", np.zeros((2, 8), np.float32))
    with pytest.raises(KilnError) as info:
        ctx.execute_async_v3(0)
    assert "output 'z' has no address" in str(info.value)


def test_output_buffer_too_small(engine):
    feeds = batch_feeds(4)
    ctx = engine.create_execution_context()
    for name, value in feeds.items():
        ctx.set_tensor_address(name, value)
    ctx.set_tensor_address("y", np.zeros((2, 8), np.float32))
    ctx.set_tensor_address("z", np.zeros(4, np.int64))
    with pytest.raises(KilnError) as info:
        ctx.execute_async_v3(0)
    assert "output 'y' needs 32 elements" in str(info.value) and "holds 16" in str(info.value)


# ----------------------------------------------------------------------------- Pythonic style
def test_run_with_numpy_returns_numpy(engine):
    feeds = batch_feeds(7)
    out = engine.run(feeds)
    assert all(isinstance(v, np.ndarray) for v in out.values())
    assert out["y"].dtype == np.float32 and out["z"].dtype == np.int64
    assert_close(out, reference(feeds), seed=feeds.seed)


def test_run_with_torch_returns_torch(engine):
    feeds = batch_feeds(7)
    out = engine.run({k: torch.from_numpy(v) for k, v in feeds.items()})
    assert all(isinstance(v, torch.Tensor) for v in out.values())
    assert out["y"].dtype == torch.float32 and out["z"].dtype == torch.int64
    assert_close(out, reference(feeds), seed=feeds.seed)


def test_run_with_keyword_arguments(engine):
    feeds = batch_feeds(2)
    assert_close(engine.run(**feeds), reference(feeds), seed=feeds.seed)
    assert_close(engine(feeds), reference(feeds), seed=feeds.seed)


def test_run_results_are_the_callers_own(engine):
    feeds = batch_feeds(2)
    first = engine.run(feeds)
    first["y"][:] = 123.0
    second = engine.run(feeds)
    assert_close(second, reference(feeds), seed=feeds.seed)


def test_several_contexts_from_several_threads(engine):
    batches = [(1 + i % 16, 1000 + i) for i in range(24)]
    expected = [engine.run(batch_feeds(b, seed)) for b, seed in batches]

    def with_context(job):
        b, seed = job
        feeds = batch_feeds(b, seed)
        ctx = engine.create_execution_context()
        outputs = {"y": np.empty((b, 8), np.float32), "z": np.empty(b, np.int64)}
        for name, value in {**feeds, **outputs}.items():
            if name in feeds:
                ctx.set_input_shape(name, value.shape)
            ctx.set_tensor_address(name, value)
        ctx.execute_async_v3(0)
        return outputs

    def with_run(job):
        return engine.run(batch_feeds(*job))

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for fn in (with_context, with_run):
            results = list(pool.map(fn, batches))
            for (b, seed), got, want in zip(batches, results, expected):
                for name in want:
                    assert np.array_equal(got[name], want[name]), (fn.__name__, b, seed, name)


# ----------------------------------------------------------------------------- errors
def good_feeds(batch: int = 3):
    return dict(batch_feeds(batch))


def run_error(engine, feeds) -> KilnError:
    with pytest.raises(KilnError) as info:
        engine.run(feeds)
    return info.value


def test_wrong_input_name(engine):
    feeds = good_feeds()
    feeds["X"] = feeds.pop("x")
    err = run_error(engine, feeds)
    assert err.code == ErrorCode.UNKNOWN_TENSOR
    text = str(err)
    assert "unknown input name(s) 'X'" in text
    assert "x FLOAT['batch', 8]" in text and "idx INT64['batch']" in text


def test_missing_input(engine):
    feeds = good_feeds()
    del feeds["s"]
    err = run_error(engine, feeds)
    assert "missing input(s) 's'" in str(err) and "s FLOAT['batch', 8]" in str(err)


@pytest.mark.parametrize("name,bad,given", [
    ("x", lambda a: a.astype(np.float64), "float64"),
    ("x", lambda a: a.astype(np.float16), "float16"),
    ("idx", lambda a: a.astype(np.int32), "int32"),
    ("x", lambda a: torch.from_numpy(a).double(), "torch.float64"),
])
def test_wrong_dtype(engine, name, bad, given):
    feeds = good_feeds()
    feeds[name] = bad(feeds[name])
    if isinstance(feeds[name], torch.Tensor):
        feeds = {k: torch.as_tensor(v) for k, v in feeds.items()}
    err = run_error(engine, feeds)
    assert isinstance(err, DTypeError) and err.code == ErrorCode.INVALID_DTYPE
    text = str(err)
    want = engine.get_tensor_dtype(name)
    assert f"input {name!r} expects {want.name} ({want.value}), got {given}" in text
    assert f"astype(np.{want.value})" in text


def test_wrong_rank(engine):
    feeds = good_feeds()
    feeds["x"] = feeds["x"][..., None]
    err = run_error(engine, feeds)
    assert isinstance(err, ShapeError)
    assert "input 'x' has rank 2 (shape (batch, 8)), got shape (3, 8, 1)" in str(err)


def test_wrong_static_dim(engine):
    feeds = good_feeds()
    feeds["s"] = feeds["s"][:, :7]
    err = run_error(engine, feeds)
    assert isinstance(err, ShapeError)
    assert "input 's' dim 1 must be 8 (shape (batch, 8)), got shape (3, 7)" in str(err)


@pytest.mark.parametrize("batch", [0, 17, 100])
def test_dim_outside_the_profile(engine, batch):
    err = run_error(engine, good_feeds(batch))
    assert isinstance(err, ShapeError)
    text = str(err)
    assert re.search(rf"input '(x|s|idx)' shape \({batch},( 8)?\) is outside optimization profile 0", text), text
    assert "dim 0 must be in [1, 16]" in text


def test_set_input_shape_outside_the_profile(engine):
    ctx = engine.create_execution_context()
    with pytest.raises(ShapeError) as info:
        ctx.set_input_shape("x", (32, 8))
    assert "input 'x' shape (32, 8) is outside optimization profile 0" in str(info.value)
    assert "(min (1, 8), max (16, 8))" in str(info.value)


def test_set_input_shape_of_an_output(engine):
    ctx = engine.create_execution_context()
    with pytest.raises(ShapeError, match="'y' is an output; only inputs take shapes"):
        ctx.set_input_shape("y", (3, 8))


def test_set_tensor_address_of_unknown_tensor(engine):
    ctx = engine.create_execution_context()
    with pytest.raises(KilnError, match="no I/O tensor named 'nope'; its tensors are: x, s, idx, y, z"):
        ctx.set_tensor_address("nope", np.zeros(1))


def test_binding_something_that_is_not_a_buffer(engine):
    ctx = engine.create_execution_context()
    for name, value in good_feeds().items():
        ctx.set_tensor_address(name, value)
    ctx.set_tensor_address("x", "not a buffer")
    with pytest.raises(KilnError) as info:
        ctx.execute_async_v3(0)
    assert "tensor 'x' is bound to a str" in str(info.value) and "numpy array" in str(info.value)


# ----------------------------------------------------------------------------- memory and shapes
def test_memory_plan_reuses_activations_in_a_chain():
    engine = kilnrt.build(chain_model(width=64, depth=6, batch=4))
    plan = engine.memory
    assert plan is not None and not plan.unknown
    assert len(plan.sizes) >= 5                                   # the chain's intermediate activations
    assert plan.arena_bytes < plan.naive_bytes
    assert plan.arena_bytes <= 2 * max(plan.sizes.values()) + 2 * 256  # a chain needs two live buffers
    assert engine.device_memory_size == plan.arena_bytes
    # live ranges that overlap never share bytes
    spans = {n: (plan.offsets[n], plan.offsets[n] + plan.sizes[n]) for n in plan.sizes}
    for a in spans:
        for b in spans:
            if a < b:
                (fa, la), (fb, lb) = plan.lifetimes[a], plan.lifetimes[b]
                if not (la < fb or lb < fa):
                    assert spans[a][1] <= spans[b][0] or spans[b][1] <= spans[a][0], (a, b)
    feeds = seeded_inputs(engine)
    x = feeds["x"].astype(np.float64)
    model = chain_model(width=64, depth=6, batch=4)
    weights = {i.name: np.frombuffer(i.raw_data, np.float32).reshape(i.dims) for i in model.graph.initializer}
    for i in range(6):
        x = np.maximum(x @ weights[f"w{i}"] + weights[f"b{i}"], 0)
    assert_close(engine.run(feeds)["y"], x.astype(np.float32), seed=feeds.seed)


def test_data_dependent_output_through_run():
    engine = kilnrt.build(nonzero_model())
    assert engine.get_tensor_dtype("y") == kilnrt.DataType.INT64
    for n in (1, 4, 9):
        feeds = seeded_inputs(engine, shapes={"n": n})
        expected = np.stack(np.nonzero(feeds["x"] > 0)).astype(np.int64)
        out = engine.run(feeds)["y"]
        assert out.shape == expected.shape, (out.shape, expected.shape, feeds.seed)
        assert np.array_equal(out, expected), feeds.seed
    none = engine.run({"x": -np.ones((3, 5), np.float32)})["y"]
    assert none.shape == (2, 0)


def test_static_engine_needs_no_shapes():
    engine = kilnrt.build(small_cnn_model())
    ctx = engine.create_execution_context()
    assert ctx.all_binding_shapes_specified
    assert ctx.get_tensor_shape("y") == (2, 5)
    feeds = seeded_inputs(engine)
    y = np.zeros((2, 5), np.float32)
    ctx.set_tensor_address("x", feeds["x"])
    ctx.set_tensor_address("y", y)
    ctx.execute_async_v3(0)
    assert_close(y, engine.run(feeds)["y"], seed=feeds.seed)
    assert_close(y.sum(axis=1), np.ones(2, np.float32))         # softmax rows


def test_inputs_sharing_a_dynamic_dim_must_agree():
    from tests.models import two_input_model

    engine = kilnrt.build(two_input_model())
    with pytest.raises(kilnrt.ShapeError, match=r"'x' \(dim 0 = 3\) and 's' \(dim 0 = 4\) share the dynamic dim 'batch'"):
        engine.run({"x": np.ones((3, 8), np.float32), "s": np.ones((4, 8), np.float32),
                    "idx": np.ones(3, np.int64)})


def test_timing_inputs_are_random_and_cheap_to_draw_at_any_size():
    from kilnrt.builder.examples import RANDOM_BLOCK, random_input

    big = random_input((3, RANDOM_BLOCK // 2 + 7), torch.float16, torch.device("cpu"))
    assert big.shape == (3, RANDOM_BLOCK // 2 + 7) and big.dtype == torch.float16
    assert float((big == 0).float().mean()) < 0.01 and 0.9 < float(big.float().std()) < 1.1
    assert random_input((2, 0, 5), torch.float32, torch.device("cpu")).shape == (2, 0, 5)
    assert random_input((6,), torch.bool, torch.device("cpu")).dtype == torch.bool


def test_build_records_the_layout_each_chosen_tactic_writes():
    """The run at build learns each output's format: NHWC, linear (4-D or not), or unknown."""
    from types import SimpleNamespace

    from kilnrt.builder.examples import output_format, record_layouts

    x = torch.ones(2, 8, 3, 3)

    class Tactic:
        def prepare(self, layer, ctx):
            return None

        def run(self, state, inputs):
            nhwc = x.contiguous(memory_format=torch.channels_last)
            return [nhwc, x, x.reshape(2, 72), torch.ones(1, 8, 1, 1), nhwc[:, 2:6], x[:, 2:6],
                    nhwc.permute(0, 2, 1, 3)]

    names = ("nhwc", "nchw", "flat", "vector", "nhwc_slice", "nchw_slice", "permuted")
    layer = SimpleNamespace(outputs=[SimpleNamespace(name=n) for n in names])
    layouts = {}
    record_layouts(layer, Tactic(), None, [x], layouts)
    # a channel slice of an NHWC tensor is NHWC for its consumers (torch.cat of such views writes NHWC)
    assert {n: output_format(v) for n, v in layouts.items()} == \
        {"nhwc": "channels_last", "nchw": "linear", "flat": "linear", "vector": "linear",
         "nhwc_slice": "channels_last", "nchw_slice": "linear", "permuted": "linear"}
    assert torch.cat([x.contiguous(memory_format=torch.channels_last)[:, 2:6]] * 2, 1) \
        .is_contiguous(memory_format=torch.channels_last)
    failing = SimpleNamespace(prepare=Tactic().prepare, run=lambda state, inputs: 1 / 0)
    record_layouts(SimpleNamespace(outputs=[SimpleNamespace(name="lost")]), failing, None, [x], layouts)
    assert output_format(layouts.get("lost")) is None


def model_without_inputs(tmp_path, seed: int) -> tuple[str, np.ndarray]:
    """An ONNX file computing y = relu(c) for a random constant c: (its path, c)."""
    import onnx
    from onnx import helper, numpy_helper, TensorProto

    value = np.random.default_rng(seed).standard_normal((3, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(value)),
                               helper.make_node("Relu", ["c"], ["y"])], "const", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])])
    path = tmp_path / "const.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path), value


def test_a_cpu_engine_without_inputs_returns_numpy_on_every_run(tmp_path):
    path, value = model_without_inputs(tmp_path, 6)
    ctx = kilnrt.build(path, device="cpu").create_execution_context()
    for _ in range(3):   # the first run checks; later ones take the checked path
        y = ctx.run({})["y"]
        assert isinstance(y, np.ndarray)
        np.testing.assert_array_equal(y, np.maximum(value, 0))
