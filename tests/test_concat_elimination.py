"""Concatenation elimination (kilnrt/builder/concat.py): producers store their results straight
into their slices of a concatenation's output buffer, and the concatenation copies only the
other inputs.

* end to end on the CPU against onnxruntime: which inputs the engine writes in place, that
  ``torch.cat`` never runs and the concatenation copies only the others, the memory plan, the
  profiler, plan round trips (old plans, corrupt values) and the inspector;
* the near misses that must keep the copy: dynamic shapes, a producer whose output is also a
  network output or has another reader, the same tensor fed twice;
* on a GPU (marked ``cuda``): an Inception-style block and GEMM branches in fp16 against float32.

The kernels' own slice tests: tests/test_concat_kernels.py.
"""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import kilnrt
from kilnrt.engine import plan as planfile
from kilnrt.engine.inspector import EngineInspector, LayerInformationFormat, LayerTimer, describe_engine
from kilnrt.errors import ErrorCode, PlanError
from kilnrt.kernels.registry import FunctionTactic
from kilnrt.network.layers import LayerKind
from kilnrt.testing import fresh_seed


@pytest.fixture
def seed():
    return fresh_seed()

# ----------------------------------------------------------------------------- end to end on the CPU
def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "concat_block",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def mixed_model(rng, concat_is_output=True):
    """Concat(axis 1) of: x + y (in place), the input x (copied), x @ W (a CPU matmul: copied),
    tanh(y) (in place), x * y (also read by Neg: copied); then Relu."""
    w = numpy_helper.from_array((rng.standard_normal((16, 8)) / 4).astype(np.float32), "W")
    nodes = [helper.make_node("Add", ["x", "y"], ["a"]), helper.make_node("Tanh", ["y"], ["c"]),
             helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Mul", ["x", "y"], ["d"]),
             helper.make_node("Concat", ["a", "x", "m", "c", "d"], ["cat"], axis=1),
             helper.make_node("Relu", ["cat"], ["out"]), helper.make_node("Neg", ["d"], ["e"])]
    outputs = ["out", "e"] + (["cat"] if concat_is_output else [])
    return _model(nodes, [("x", [4, 16]), ("y", [4, 16])], outputs, [w])


def feeds_for(rng, shapes):
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def check_against_ort(model, engine, feeds, seed):
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    names = [o.name for o in model.graph.output]
    got = engine.run(feeds)
    for name, r in zip(names, ref):
        np.testing.assert_allclose(np.asarray(got[name]), r, rtol=1e-5, atol=1e-5, err_msg=f"{name} seed={seed}")


def layer_by_output(engine, name):
    return next(l for l in engine.layers if name in l.outputs)


def in_place_inputs(engine) -> dict[str, tuple]:
    return {l.outputs[0]: l.writes_into for l in engine.layers if l.writes_into is not None}


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)


def test_producers_write_their_slices_and_the_concat_copies_the_rest(rng, seed, monkeypatch):
    model = mixed_model(rng)
    engine = kilnrt.build(model)
    assert in_place_inputs(engine) == {"a": ("cat", 1, 0), "c": ("cat", 1, 40)}
    assert engine.build_info["concat_elimination"] == {"concatenations": 1, "eliminated": 0, "partial": 1,
                                                       "inputs_in_place": 2, "inputs_copied": 3, "not_static": 0,
                                                       "tactics_switched": 0}
    assert layer_by_output(engine, "cat").output_formats == ["linear"]

    calls = {"run_into": [], "copied": []}

    def no_cat(*args, **kwargs):
        raise AssertionError("torch.cat ran: the concatenation was not eliminated")

    real_into = FunctionTactic.run_into

    def spy_into(self, state, inputs, out):
        calls["run_into"].append((self.name, out.untyped_storage().data_ptr(), out.storage_offset()))
        return real_into(self, state, inputs, out)

    real_copy = torch.Tensor.copy_

    def spy_copy(self, src, *args, **kwargs):
        calls["copied"].append(tuple(src.shape))
        return real_copy(self, src, *args, **kwargs)

    monkeypatch.setattr(torch, "cat", no_cat)
    monkeypatch.setattr(FunctionTactic, "run_into", spy_into)
    feeds = feeds_for(rng, {"x": (4, 16), "y": (4, 16)})
    tensors = {n: torch.from_numpy(v) for n, v in feeds.items()}
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "copy_", spy_copy)
        got = engine.run(tensors)
    # the concatenation copied x, x @ W and x * y; the other two were stored by their producers
    assert sorted(calls["copied"]) == [(4, 8), (4, 16), (4, 16)]
    assert [c[0] for c in calls["run_into"]] == ["cpu.elementwise.torch", "cpu.activation.torch"]
    buffer = got["cat"]
    assert all(ptr == buffer.untyped_storage().data_ptr() for _, ptr, _ in calls["run_into"])
    assert [off for _, _, off in calls["run_into"]] == [buffer.storage_offset() + 0, buffer.storage_offset() + 40]
    monkeypatch.undo()
    check_against_ort(model, engine, feeds, seed)


def test_memory_plan_starts_the_buffer_at_its_first_producer(rng):
    engine = kilnrt.build(mixed_model(rng, concat_is_output=False))
    index = {l.name: i for i, l in enumerate(engine.layers)}
    first = min(index[layer_by_output(engine, n).name] for n in ("a", "c"))
    concat = index[layer_by_output(engine, "cat").name]
    lifetime = engine.memory.lifetimes["cat"]
    assert lifetime[0] == first < concat and lifetime[1] == index[layer_by_output(engine, "out").name]
    assert "a" not in engine.memory.sizes and "c" not in engine.memory.sizes   # slices have no memory of their own
    assert engine.memory.sizes["cat"] == 4 * 72 * 4


def test_profiler_reports_every_layer(rng):
    engine = kilnrt.build(mixed_model(rng))
    ctx = engine.create_execution_context()
    ctx.profiler = LayerTimer()
    ctx.run(feeds_for(rng, {"x": (4, 16), "y": (4, 16)}))
    assert set(ctx.profiler.samples) == {l.name for l in engine.layers}


def test_inception_like_block_on_the_cpu(rng, seed):
    """Four branches of pointwise layers over an NCHW input, concatenated on channels: every
    branch is written in place (fully eliminated), and the result matches onnxruntime."""
    nodes = [helper.make_node("Relu", ["x"], ["b0"]), helper.make_node("Sigmoid", ["x"], ["b1"]),
             helper.make_node("Sub", ["x", "s"], ["b2"]), helper.make_node("Max", ["x", "s"], ["b3"]),
             helper.make_node("Concat", ["b0", "b1", "b2", "b3"], ["cat"], axis=1),
             helper.make_node("ReduceMean", ["cat"], ["out"], axes=[2, 3], keepdims=0)]
    s = numpy_helper.from_array(rng.standard_normal((1, 6, 1, 1)).astype(np.float32), "s")
    model = _model(nodes, [("x", [2, 6, 5, 4])], ["out"], [s])
    engine = kilnrt.build(model)
    assert set(in_place_inputs(engine)) == {"b0", "b1", "b2", "b3"}
    assert engine.build_info["concat_elimination"]["eliminated"] == 1
    check_against_ort(model, engine, feeds_for(rng, {"x": (2, 6, 5, 4)}), seed)


# ----------------------------------------------------------------------------- weighing the saved copy
WRITER = "cpu.matrix_multiply.test_writer"


def _writer_tactic(writes: list):
    """A CPU GEMM tactic that stores into a given view (standing in for the Triton GEMM, whose
    chosen-or-not decision is what is tested): the reference GEMM, then a copy into ``out``."""
    from kilnrt.kernels.registry import reference_kernel

    gemm = reference_kernel(LayerKind.MATRIX_MULTIPLY)

    def into(p, out, *inputs):
        writes.append(out.data_ptr())
        out.copy_(gemm(p, *inputs))

    return FunctionTactic(WRITER, LayerKind.MATRIX_MULTIPLY, "cpu", gemm, into=into, into_ok=lambda layer, out: True)


@pytest.mark.parametrize("writer_ms,switched", [(1.05, True), (1.25, False), (None, False)],
                         ids=["within_the_saved_copy", "slower_than_it_saves", "not_timed"])
def test_a_timed_candidate_that_writes_in_place_wins_by_the_copy_it_saves(rng, seed, monkeypatch, writer_ms,
                                                                          switched):
    """The chosen GEMM cannot store into its slice, another timed candidate can: the builder takes
    it when its time is below the chosen one's plus the input's share of the concatenation's
    measured copy (here 8 of 72 columns of 1.8 ms: 0.2 ms), and the engine still computes the same."""
    from kilnrt.builder.concat import eliminate_concats
    from kilnrt.kernels import registry

    writes: list = []
    monkeypatch.setitem(registry._TACTICS, WRITER, _writer_tactic(writes))
    model = mixed_model(rng)
    engine = kilnrt.build(model)
    gemm, concat = layer_by_output(engine, "m"), layer_by_output(engine, "cat")
    assert gemm.writes_into is None and concat.output_shapes[0][1] == 72
    for layer in engine.layers:
        layer.writes_into = None
    gemm.timing_ms, concat.timing_ms = 1.0, 1.8
    gemm.candidates = {gemm.tactic: 1.0, **({} if writer_ms is None else {WRITER: writer_ms})}
    keep = {t.name for t in engine.io} | set(engine.constants)
    stats = eliminate_concats(engine.layers, "cpu", keep)
    assert stats["tactics_switched"] == int(switched)
    assert (gemm.tactic == WRITER) == switched and (gemm.writes_into == ("cat", 1, 32)) == switched
    if switched:
        assert gemm.timing_ms == writer_ms
    check_against_ort(model, kilnrt.load(engine.serialize()), feeds_for(rng, {"x": (4, 16), "y": (4, 16)}), seed)
    assert bool(writes) == switched   # the loaded engine ran the writer into the buffer


# ----------------------------------------------------------------------------- plans
def repack(data: bytes, edit) -> bytes:
    header, weights, kernels = planfile.unpack(data)
    edit(header)
    return planfile.pack(header, weights, kernels)


def test_plan_round_trip_keeps_the_decision(rng, seed):
    engine = kilnrt.build(mixed_model(rng))
    loaded = kilnrt.Engine.deserialize(engine.serialize())
    assert in_place_inputs(loaded) == in_place_inputs(engine) == {"a": ("cat", 1, 0), "c": ("cat", 1, 40)}
    feeds = feeds_for(rng, {"x": (4, 16), "y": (4, 16)})
    want, got = engine.run(feeds), loaded.run(feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} seed={seed}")


def test_plan_from_before_the_field_loads_and_concatenates(rng, seed, monkeypatch):
    model = mixed_model(rng)
    data = kilnrt.build(model).serialize()

    def edit(h):
        for layer in h["layers"]:
            layer.pop("writes_into")

    old = kilnrt.Engine.deserialize(repack(data, edit))
    assert in_place_inputs(old) == {}
    cat_calls = []
    real_cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda *a, **k: cat_calls.append(1) or real_cat(*a, **k))
    check_against_ort(model, old, feeds_for(rng, {"x": (4, 16), "y": (4, 16)}), seed)
    assert cat_calls   # the concatenation ran as torch.cat


@pytest.mark.parametrize("value", [
    "cat", ["cat", 1], ["cat", 1, 0, 0], [1, 1, 0], ["cat", "1", 0], ["cat", 1, -16], ["cat", True, 0],
    ["cat", 1, 16],        # not where the concatenation puts Add's output
    ["cat", 0, 0],         # another axis
    ["nope", 1, 0],        # no such concatenation
    ["out", 1, 0],         # produced by a Relu, not a concatenation
])
def test_corrupt_writes_into_is_refused(rng, value):
    data = kilnrt.build(mixed_model(rng)).serialize()

    def edit(h):
        next(l for l in h["layers"] if l["outputs"] == ["a"])["writes_into"] = value

    with pytest.raises(PlanError) as info:
        kilnrt.Engine.deserialize(repack(data, edit))
    assert info.value.code == ErrorCode.PLAN_CORRUPT
    assert "writes" in str(info.value) or "writes_into" in str(info.value)


@pytest.mark.parametrize("output,value", [
    ("m", ["cat", 1, 32]),    # the CPU matmul tactic cannot store into a slice
    ("d", ["cat", 1, 56]),    # d is also read by Neg
    ("out", ["cat", 1, 0]),   # the Relu after the concatenation
])
def test_writes_into_that_the_engine_could_not_have_chosen_is_refused(rng, output, value):
    data = kilnrt.build(mixed_model(rng)).serialize()

    def edit(h):
        next(l for l in h["layers"] if l["outputs"] == [output])["writes_into"] = value

    with pytest.raises(PlanError) as info:
        kilnrt.Engine.deserialize(repack(data, edit))
    assert info.value.code == ErrorCode.PLAN_CORRUPT


# ----------------------------------------------------------------------------- inspector
def test_inspector_shows_slices_and_partial_elimination(rng):
    engine = kilnrt.build(mixed_model(rng))
    text = EngineInspector(engine).get_engine_information()
    add_line = next(line for line in text.splitlines() if "-> (a[" in line)
    assert add_line.endswith("writes into slice [0:16] of cat (axis 1)")
    assert "writes into slice [40:56] of cat (axis 1)" in text
    assert "copies 3 of 5 inputs (2 written in place)" in text
    assert text.count("writes into") == 2
    trt = json.loads(EngineInspector(engine).get_engine_information(LayerInformationFormat.JSON))["Layers"]
    notes = {l["Name"]: l.get("ConcatElimination") for l in trt}
    assert notes[layer_by_output(engine, "c").name] == "writes into slice [40:56] of cat (axis 1)"
    assert notes[layer_by_output(engine, "m").name] is None
    info = {l["name"]: l for l in describe_engine(engine)["layers"]}
    assert info[layer_by_output(engine, "a").name]["writes_into"] == {"tensor": "cat", "axis": 1, "start": 0,
                                                                      "end": 16}
    assert info[layer_by_output(engine, "cat").name]["concat"] == {"inputs": 5, "in_place": 2, "copied": 3,
                                                                   "eliminated": False, "format": "linear"}


def test_inspector_table_and_summary(rng):
    from rich.console import Console

    from kilnrt.engine.inspector import layer_table, summary_table

    engine = kilnrt.build(mixed_model(rng))
    console = Console(width=250, record=True)
    console.print(layer_table(engine), summary_table(engine))
    text = console.export_text()
    assert "writes into slice [0:16] of cat (axis 1)" in text and "copies 3 of 5 inputs" in text
    assert "1: 0 eliminated, 1 partly; 2 inputs written in place, 3 copied" in text


# ----------------------------------------------------------------------------- near misses
def _pair_model(rng, *, extra_outputs=(), extra_nodes=(), inputs=("a", "c"), batch=4):
    """Concat(axis 1) of Add(x, y) -> a and Tanh(y) -> c (both in place unless a twist stops it)."""
    nodes = [helper.make_node("Add", ["x", "y"], ["a"]), helper.make_node("Tanh", ["y"], ["c"]),
             *extra_nodes, helper.make_node("Concat", list(inputs), ["cat"], axis=1)]
    return _model(nodes, [("x", [batch, 16]), ("y", [batch, 16])], ["cat", *extra_outputs])


def test_control_both_inputs_are_written_in_place(rng, seed):
    model = _pair_model(rng)
    engine = kilnrt.build(model)
    assert in_place_inputs(engine) == {"a": ("cat", 1, 0), "c": ("cat", 1, 16)}
    assert engine.build_info["concat_elimination"]["eliminated"] == 1
    check_against_ort(model, engine, feeds_for(rng, {"x": (4, 16), "y": (4, 16)}), seed)


def test_every_concatenation_of_a_network_is_eliminated(rng, seed):
    """Two concatenations, each of two in-place producers: the second is decided after the first
    recorded its writers (a network with one concatenation cannot show a decision that leaks
    into the next)."""
    nodes = [helper.make_node("Add", ["x", "y"], ["a"]), helper.make_node("Tanh", ["y"], ["c"]),
             helper.make_node("Concat", ["a", "c"], ["cat"], axis=1),
             helper.make_node("Mul", ["x", "y"], ["d"]), helper.make_node("Sigmoid", ["x"], ["e"]),
             helper.make_node("Concat", ["d", "e"], ["cat2"], axis=0)]
    model = _model(nodes, [("x", [4, 16]), ("y", [4, 16])], ["cat", "cat2"])
    engine = kilnrt.build(model)
    assert in_place_inputs(engine) == {"a": ("cat", 1, 0), "c": ("cat", 1, 16),
                                       "d": ("cat2", 0, 0), "e": ("cat2", 0, 4)}
    assert engine.build_info["concat_elimination"]["eliminated"] == 2
    check_against_ort(model, engine, feeds_for(rng, {"x": (4, 16), "y": (4, 16)}), seed)


def test_dynamic_shapes_keep_torch_cat(rng, seed, monkeypatch):
    model = _pair_model(rng, batch="n")
    engine = kilnrt.build(model, profiles={"x": [(1, 16), (4, 16), (8, 16)], "y": [(1, 16), (4, 16), (8, 16)]})
    assert in_place_inputs(engine) == {}
    assert engine.build_info["concat_elimination"]["not_static"] == 1
    for batch in (3, 8):
        check_against_ort(model, engine, feeds_for(rng, {"x": (batch, 16), "y": (batch, 16)}), seed)


def test_producer_output_that_is_a_network_output_is_copied(rng, seed):
    model = _pair_model(rng, extra_outputs=["a"])
    engine = kilnrt.build(model)
    assert in_place_inputs(engine) == {"c": ("cat", 1, 16)}
    check_against_ort(model, engine, feeds_for(rng, {"x": (4, 16), "y": (4, 16)}), seed)


def test_producer_with_two_consumers_is_copied(rng, seed):
    model = _pair_model(rng, extra_outputs=["n"], extra_nodes=[helper.make_node("Neg", ["c"], ["n"])])
    engine = kilnrt.build(model)
    assert in_place_inputs(engine) == {"a": ("cat", 1, 0)}
    check_against_ort(model, engine, feeds_for(rng, {"x": (4, 16), "y": (4, 16)}), seed)


def test_same_tensor_fed_twice_is_copied(rng, seed):
    model = _pair_model(rng, inputs=("a", "c", "a"))
    engine = kilnrt.build(model)
    assert in_place_inputs(engine) == {"c": ("cat", 1, 16)}
    assert layer_by_output(engine, "cat").output_shapes[0] == (4, 48)
    check_against_ort(model, engine, feeds_for(rng, {"x": (4, 16), "y": (4, 16)}), seed)


# ----------------------------------------------------------------------------- on the GPU
def inception_block(rng, c=64):
    """1x1 (+ReLU) | 1x1 -> 3x3 (+ReLU) | 3x3 max pool -> 1x1 (+ReLU), concatenated on channels."""
    def conv(name, x, k, cin, window, pads):
        w = (rng.standard_normal((k, cin, window, window)) / (cin * window * window) ** 0.5).astype(np.float32)
        b = (rng.standard_normal(k) * 0.1).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")])
        return [helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_y"], pads=[pads] * 4),
                helper.make_node("Relu", [f"{name}_y"], [f"{name}_r"])]

    inits: list = []
    nodes = (conv("b0", "x", 32, c, 1, 0) + conv("b1a", "x", 48, c, 1, 0) + conv("b1b", "b1a_r", 64, 48, 3, 1)
             + [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])]
             + conv("b2", "p", 32, c, 1, 0)
             + [helper.make_node("Concat", ["b0_r", "b1b_r", "b2_r"], ["cat"], axis=1)])
    return _model(nodes, [("x", [2, c, 14, 14])], ["cat"], inits)


@pytest.mark.cuda
def test_inception_block_fp16_on_the_gpu(seed):
    rng = np.random.default_rng(seed)
    model = inception_block(rng)
    feeds = feeds_for(rng, {"x": (2, 64, 14, 14)})
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    engine = kilnrt.build(model, device="cuda", fp16=True)
    concat = next(l for l in engine.layers if l.kind == LayerKind.CONCATENATION)
    producers = [layer_by_output(engine, n) for n in concat.inputs]
    capable = [p for p in producers if p.tactic.startswith(("cuda.convolution.triton_gemm_",
                                                            "cuda.convolution.triton_implicit_"))]
    if capable:   # a Triton convolution won the timing: it writes its channel slice of an NHWC buffer
        assert any(p.writes_into is not None for p in capable)
        assert concat.output_formats == ["channels_last"]
    for run in range(3):   # eager, CUDA-graph capture, replay
        got = engine.run(feeds)["cat"]
        err = np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref)
        assert err < 1e-2, f"run {run}: relative L2 error {err} (seed={seed})"
    reloaded = kilnrt.Engine.deserialize(engine.serialize())
    assert in_place_inputs(reloaded) == in_place_inputs(engine)
    np.testing.assert_allclose(reloaded.run(feeds)["cat"], engine.run(feeds)["cat"], rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("lead", [(64,), (2, 24)])
def test_gemm_branches_fp16_on_the_gpu(seed, lead):
    """Three projections of one input concatenated on the last axis (a fused-QKV-like layout)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((128, n)) / 11).astype(np.float32), f"w{i}")
             for i, n in enumerate((64, 96, 32))]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]) for i in range(3)]
    nodes += [helper.make_node("Relu", ["y0"], ["r0"]),
              helper.make_node("Concat", ["r0", "y1", "y2"], ["cat"], axis=-1)]
    model = _model(nodes, [("x", list(lead) + [128])], ["cat"], inits)
    feeds = feeds_for(rng, {"x": lead + (128,)})
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    engine = kilnrt.build(model, device="cuda", fp16=True)
    concat = next(l for l in engine.layers if l.kind == LayerKind.CONCATENATION)
    producers = [layer_by_output(engine, n) for n in concat.inputs]
    print({p.name: (p.tactic, p.writes_into) for p in producers})
    for p in producers:
        if p.tactic.startswith("cuda.matrix_multiply.triton_"):
            assert p.writes_into is not None, p.name
    for run in range(3):
        got = engine.run(feeds)["cat"]
        err = np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref)
        assert err < 1e-2, f"run {run}: relative L2 error {err} (seed={seed})"
