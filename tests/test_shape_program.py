"""The host-side shape program: shape computations run on the host from the input shapes,
once per shape set, and the device program skips them (so it can be captured as one CUDA
graph per shape set)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import kilnrt
from models import bert_inputs, export_bert, make_model, tiny_bert

RNG = np.random.default_rng()


def _reshape_model():
    """y = reshape(x, [batch, seq * 8]) + arange(seq * 8), the target and the range computed
    from Shape(x) as exporters write it."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
             helper.make_node("Gather", ["s", "i1"], ["q"], axis=0),
             helper.make_node("Mul", ["q", "eight"], ["q8"]),
             helper.make_node("Concat", ["b", "q8"], ["dims"], axis=0),
             helper.make_node("Reshape", ["x", "dims"], ["r"]),
             helper.make_node("Squeeze", ["q8", "i0"], ["n"]),
             helper.make_node("Range", ["zero", "n", "one"], ["pos"]),
             helper.make_node("Cast", ["pos"], ["posf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["r", "posf"], ["y"])]
    inits = [np.array([0], np.int64), np.array([1], np.int64), np.array([8], np.int64),
             np.array(0, np.int64), np.array(1, np.int64)]
    names = ["i0", "i1", "eight", "zero", "one"]
    from onnx import numpy_helper
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                      [numpy_helper.from_array(a, n) for a, n in zip(inits, names)])


def test_shape_layers_run_on_the_host_and_are_cached_per_shape_set():
    model = _reshape_model()
    engine = kilnrt.build(model, profiles={"x": [(1, 1, 8), (2, 4, 8), (4, 16, 8)]})
    program = engine.program
    host = program.shapes.host_layer_names
    # the Shape/Gather/Mul/Concat/Squeeze/Range chain is the shape program; Reshape and Add run as steps
    assert len(host) >= 6
    step_names = {s.name for s in program.steps}
    assert not host & step_names
    assert any("Reshape" in n for n in step_names) and any("Add" in n for n in step_names)
    sess = ort.InferenceSession(model.SerializeToString())
    for shape in [(2, 4, 8), (3, 7, 8), (2, 4, 8)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        got = engine.run({"x": x})["y"]
        want = sess.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert len(program.shapes._cache) == 2      # two distinct shape sets, the repeat hit the cache


def test_output_shape_from_the_symbolic_dims_before_any_run():
    engine = kilnrt.build(_reshape_model(), profiles={"x": [(1, 1, 8), (2, 4, 8), (4, 16, 8)]})
    ctx = engine.create_execution_context()
    ctx.set_input_shape("x", (3, 5, 8))
    assert ctx.get_tensor_shape("y") == (3, 40)
    ctx.set_input_shape("x", (1, 16, 8))
    assert ctx.get_tensor_shape("y") == (1, 128)


def test_shape_program_survives_a_plan_round_trip():
    engine = kilnrt.build(_reshape_model(), profiles={"x": [(1, 1, 8), (2, 4, 8), (4, 16, 8)]})
    loaded = kilnrt.Engine.deserialize(engine.serialize())
    assert loaded.program.shapes.host_layer_names == engine.program.shapes.host_layer_names
    x = RNG.standard_normal((2, 3, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.run({"x": x})["y"], engine.run({"x": x})["y"])


def test_dynamic_bert_matches_onnxruntime_at_two_shapes():
    model = export_bert(tiny_bert())
    engine = kilnrt.build(model, profiles={n: [(1, 4), (2, 8), (4, 16)] for n in
                                           ("input_ids", "attention_mask", "token_type_ids")})
    assert engine.program.shapes.layers, "the mask/reshape shape computations should run on the host"
    sess = ort.InferenceSession(model.SerializeToString())
    for batch, seq in [(2, 8), (3, 13)]:
        feeds = bert_inputs(batch, seq, RNG)
        got = engine.run(feeds)
        want = sess.run(None, feeds)
        for name, w in zip(engine.output_names, want):
            g = got[name]
            assert g.shape == w.shape
            assert np.linalg.norm(g - w) / np.linalg.norm(w) < 1e-5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dynamic_engine_captures_one_graph_per_shape_set():
    model = export_bert(tiny_bert())
    names = ("input_ids", "attention_mask", "token_type_ids")
    engine = kilnrt.build(model, device="cuda", fp16=True, profiles={n: [(1, 4), (2, 8), (4, 16)] for n in names})
    ctx = engine.create_execution_context()
    sess = ort.InferenceSession(model.SerializeToString())
    shapes = [(2, 8), (3, 13), (2, 8), (1, 4), (3, 13)]
    for batch, seq in shapes:
        feeds = bert_inputs(batch, seq, RNG)
        got = ctx.run({k: torch.from_numpy(v).cuda() for k, v in feeds.items()})
        want = sess.run(None, feeds)
        for name, w in zip(engine.output_names, want):
            g = got[name].float().cpu().numpy()
            assert np.linalg.norm(g - w) / np.linalg.norm(w) < 1e-2
    stats = ctx.graph_stats
    assert stats.captures == 3 and stats.eager_runs == 0      # one capture per distinct shape set
    assert stats.replays == len(shapes)


def test_inspector_names_the_shape_program_and_the_layers_that_synchronize():
    from kilnrt.engine.inspector import describe_engine
    from models import nonzero_model

    dynamic = kilnrt.build(_reshape_model(), profiles={"x": [(1, 1, 8), (2, 4, 8), (4, 16, 8)]})
    shapes = describe_engine(dynamic)["shapes"]
    assert set(shapes["host_layers"]) == set(dynamic.program.shapes.host_layer_names)
    assert shapes["synchronizing"] == []
    nonzero = kilnrt.build(nonzero_model())
    sync = describe_engine(nonzero)["shapes"]["synchronizing"]
    assert sync == [{"layer": "NonZero_0", "why": "its output size depends on the data"}]


class _Allocator:
    """TensorRT's IOutputAllocator, as a user writes it: numpy buffers, shapes as notified."""

    def __init__(self) -> None:
        self.buffers, self.shapes = {}, {}

    def reallocate_output_async(self, name, memory, size, alignment, stream=0):
        self.buffers[name] = np.empty(max(size, 1), np.uint8)
        return self.buffers[name].ctypes.data

    def notify_shape(self, name, shape):
        self.shapes[name] = tuple(shape)


def test_data_dependent_outputs_through_the_output_allocator_and_run():
    """NonZero, then Unique of its row indices: sizes known only after the data is seen."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]),
             helper.make_node("Unique", ["nz"], ["u", "first", "inverse", "counts"], sorted=1)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])],
                       [helper.make_tensor_value_info(n, TensorProto.INT64, None)
                        for n in ("nz", "u", "counts")], opset=17)
    engine = kilnrt.build(model, profiles={"x": [(1, 5), (4, 5), (8, 5)]})
    sess = ort.InferenceSession(model.SerializeToString())
    for rows in (3, 7):
        x = (RNG.standard_normal((rows, 5)) > 0.3).astype(np.float32) * RNG.standard_normal((rows, 5)).astype(np.float32)
        want = dict(zip(("nz", "u", "counts"), sess.run(None, {"x": x})))
        got = engine.run({"x": x})
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
        ctx = engine.create_execution_context()
        alloc = _Allocator()
        ctx.set_input_shape("x", x.shape)
        ctx.set_tensor_address("x", x)
        for k in want:
            ctx.set_output_allocator(k, alloc)
        ctx.execute_async_v3(0)
        for k, w in want.items():
            assert alloc.shapes[k] == w.shape and ctx.get_tensor_shape(k) == w.shape
            np.testing.assert_array_equal(alloc.buffers[k][:w.nbytes].view(np.int64).reshape(w.shape), w)
    sync = {s[0] for s in kilnrt.engine.shape_program.synchronizing_layers(engine)}
    assert any("NonZero" in n for n in sync) and any("Unique" in n for n in sync)


def test_inspect_shows_symbolic_dims_as_written(capsys):
    """'[batch,2,6,6]' is no rich markup tag: the summary and the layer table show it."""
    from rich.console import Console

    from kilnrt.engine.inspector import layer_table, summary_table
    from models import small_cnn_model

    engine = kilnrt.build(small_cnn_model("batch"), profiles={"x": [(1, 2, 6, 6), (4, 2, 6, 6), (8, 2, 6, 6)]})
    console = Console(width=300, record=True)
    console.print(summary_table(engine))
    console.print(layer_table(engine))
    text = console.export_text()
    assert "x FLOAT [batch,2,6,6]" in text and "[batch,5]" in text
