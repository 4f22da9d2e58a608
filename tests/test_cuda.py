"""The CUDA backend against references: light models, digits, fp32 and fp16, plans, graphs.

Marked ``cuda``: skipped without a GPU; run on the GPU machine.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from onnx.backend.test.runner import Runner

import kilnrt
from kilnrt.testing import fresh_seed

pytestmark = pytest.mark.cuda

LIGHT = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/*.onnx")))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _light_input(path):
    model = onnx.load(path)
    inits = {i.name for i in model.graph.initializer}
    vi = next(i for i in model.graph.input if i.name not in inits)
    x = Runner.generate_dummy_data(vi, seed=0, name=os.path.basename(path)[:-5], random=False)
    ref = numpy_helper.to_array(onnx.load_tensor(path[:-5] + "_output_0.pb"))
    return vi.name, x, ref


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("path", LIGHT, ids=[os.path.basename(p)[6:-5] for p in LIGHT])
def test_light_fp32(path, tmp_path):
    name, x, ref = _light_input(path)
    engine = kilnrt.build(path, device="cuda", tf32=False)
    engine.save(tmp_path / "m.plan")
    engine = kilnrt.load(tmp_path / "m.plan")
    out = engine.run({name: x})
    np.testing.assert_allclose(list(out.values())[0], ref, rtol=1e-3, atol=1e-4)


def _fp32_activation_peak(path, feeds) -> float:
    """The largest |activation| anywhere in the fp32 network (every layer output made an output)."""
    net = kilnrt.to_network(path)
    for layer in net.layers:
        for t in layer.outputs:
            if t.dtype == kilnrt.DataType.FLOAT:
                net.mark_output(t)
    outs = kilnrt.build(net, optimization_level=0).run(feeds)
    return max(float(np.abs(v).max()) for v in outs.values() if v.size and v.dtype == np.float32)


@pytest.mark.parametrize("path", LIGHT, ids=[os.path.basename(p)[6:-5] for p in LIGHT])
def test_light_fp16(path):
    name, x, _ = _light_input(path)
    x = x + np.random.default_rng(0).normal(0, 1, x.shape).astype(np.float32)
    peak = _fp32_activation_peak(path, {name: x})
    if peak > 6e4:  # the light models' synthetic constant weights grow activations past fp16's range
        pytest.skip(f"fp32 activations reach {peak:.3g}, beyond fp16's 65504: fp16 cannot represent this network")
    ref = list(kilnrt.build(path, device="cpu").run({name: x}).values())[0]
    out = list(kilnrt.build(path, device="cuda", fp16=True).run({name: x}).values())[0]
    assert out.dtype == np.float32
    assert rel_l2(out, ref) < 1e-2


def test_digits_cuda_matches_cpu():
    data = np.load(os.path.join(ROOT, "examples", "digits_test.npz"))
    cpu = kilnrt.build(os.path.join(ROOT, "examples", "digits.onnx"))
    gpu = kilnrt.build(os.path.join(ROOT, "examples", "digits.onnx"), device="cuda", tf32=False,
                       profiles={"input": [(1, 1, 8, 8), (64, 1, 8, 8), (512, 1, 8, 8)]})
    a = cpu.run({"input": data["images"]})["logits"]
    b = gpu.run({"input": data["images"]})["logits"]
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3)
    assert (b.argmax(1) == data["labels"]).mean() > 0.97


def test_torch_cuda_tensors_in_and_out_and_graph_replay():
    path = LIGHT[-3]  # squeezenet
    name, x, ref = _light_input(path)
    engine = kilnrt.build(path, device="cuda", tf32=False)
    xt = torch.from_numpy(x).cuda()
    first = engine.run({name: xt})
    second = engine.run({name: xt * 1.0})
    for out in (first, second):
        y = list(out.values())[0]
        assert y.is_cuda
        np.testing.assert_allclose(y.cpu().numpy(), ref, rtol=1e-3, atol=1e-4)


def test_raw_device_pointers_and_stream():
    path = LIGHT[-3]
    name, x, ref = _light_input(path)
    engine = kilnrt.build(path, device="cuda", tf32=False)
    ctx = engine.create_execution_context()
    xt = torch.from_numpy(x).cuda()
    out_name = engine.get_tensor_name(1)
    y = torch.empty(tuple(ctx.get_tensor_shape(out_name)), device="cuda")
    ctx.set_input_shape(name, x.shape)
    ctx.set_tensor_address(name, xt.data_ptr())
    ctx.set_tensor_address(out_name, y.data_ptr())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the input was written on the default stream
    ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    np.testing.assert_allclose(y.cpu().numpy(), ref, rtol=1e-3, atol=1e-4)


def test_build_records_every_layers_output_format():
    engine = kilnrt.build(LIGHT[-3], device="cuda", fp16=True)   # squeezenet: convolutions, NHWC tactics
    assert all(len(l.output_formats) == len(l.outputs) for l in engine.layers)
    convs = [l.output_formats[0] for l in engine.layers if l.kind == kilnrt.LayerKind.CONVOLUTION]
    assert convs and set(convs) <= {"linear", "channels_last"}, convs
    loaded = kilnrt.load(engine.serialize())
    assert [l.output_formats for l in loaded.layers] == [l.output_formats for l in engine.layers]
    # NHWC end to end: the layout converts only where the engine's (NCHW) input is read, as
    # it comes in or after its cast to fp16
    from kilnrt.engine.inspector import layout_summary

    changes = layout_summary(engine)["changes"]
    inputs = {t.name for t in engine.io if t.mode == "input"}
    edge = inputs | {o for l in engine.layers if l.kind == kilnrt.LayerKind.CAST and set(l.inputs) <= inputs
                     for o in l.outputs}
    assert changes and all(set(c["inputs"]) <= edge for c in changes), changes


@pytest.mark.parametrize("level", range(6))
def test_every_optimization_level_builds_a_correct_engine(level):
    """Level 0 times nothing, 1 one tiling per tactic class, 4-5 re-time close calls: each
    still gives the float32 answer (squeezenet: convolutions, pooling, concatenation)."""
    name, x, ref = _light_input(LIGHT[-3])
    x = x + np.random.default_rng(level).normal(0, 1, x.shape).astype(np.float32)
    ref = list(kilnrt.build(LIGHT[-3], device="cpu").run({name: x}).values())[0]
    engine = kilnrt.build(LIGHT[-3], device="cuda", tf32=False, optimization_level=level)
    assert engine.build_info["optimization_level"] == level
    timed = [l for l in engine.layers if l.candidates]
    assert (not timed) if level == 0 else timed
    np.testing.assert_allclose(list(engine.run({name: x}).values())[0], ref, rtol=1e-3, atol=1e-4)


def test_plan_refused_on_other_gpu():
    path = LIGHT[-3]
    data = kilnrt.build(path, device="cuda").serialize()
    from kilnrt.engine import plan as planfile

    header, weights, kernels = planfile.unpack(data)
    header["device_name"] = "NVIDIA Imaginary GPU"
    with pytest.raises(kilnrt.PlanError, match="Imaginary"):
        kilnrt.load(planfile.pack(header, weights, kernels))


@pytest.mark.parametrize("precision", ["tf32", "fp16", "bf16"])
def test_digits_reduced_precision(precision):
    data = np.load(os.path.join(ROOT, "examples", "digits_test.npz"))
    ref = kilnrt.build(os.path.join(ROOT, "examples", "digits.onnx")).run({"input": data["images"]})["logits"]
    engine = kilnrt.build(os.path.join(ROOT, "examples", "digits.onnx"), device="cuda",
                          fp16=precision == "fp16", bf16=precision == "bf16",
                          profiles={"input": [(1, 1, 8, 8), (64, 1, 8, 8), (512, 1, 8, 8)]})
    out = engine.run({"input": data["images"]})["logits"]
    assert rel_l2(out, ref) < (1e-3 if precision == "tf32" else 1e-2)
    assert (out.argmax(1) == data["labels"]).mean() > 0.97


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_bert_style_encoder(precision):
    """The BERT-style encoder (attention with a padding mask, LayerNorm, GELU) on the GPU,
    with the attention, GELU and GEMM-epilogue fusions, against onnxruntime."""
    import onnxruntime as ort

    from tests.models import bert_inputs, export_bert, tiny_bert

    model = export_bert(tiny_bert())
    rng = np.random.default_rng()
    feeds = bert_inputs(4, 24, rng)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    engine = kilnrt.build(model, device="cuda", fp16=precision == "fp16", tf32=False,
                          profiles={n: [(1, 8), (4, 24), (8, 64)] for n in feeds})
    assert any(l.kind.value == "attention" for l in engine.layers)
    out = engine.run(feeds)
    for name, r in zip(engine.output_names, ref):
        if precision == "fp32":
            np.testing.assert_allclose(out[name], r, rtol=1e-3, atol=1e-4)
        else:
            assert rel_l2(out[name], r) < 1e-2


@pytest.mark.parametrize("channels,widths", [(32, (16, 24, 32)), (16, (7, 5, 3))], ids=["aligned", "odd"])
def test_inception_block_sibling_convs_fp16(channels, widths):
    """fuse_sibling_convs on the GPU: the merged 1x1 convolution's channel slices (strided views
    of its NHWC output) feed a 3x3 convolution (cuDNN or Triton, with a Relu epilogue) and the
    concat; fp16 against float32 onnxruntime, at two batch sizes and on a CUDA-graph replay.
    ``aligned``: channel counts the Triton 1x1 and implicit-GEMM tactics take; ``odd``: cuDNN's."""
    import onnxruntime as ort

    from tests.models import inception_model

    rng = np.random.default_rng()
    model = inception_model(rng, channels, widths).SerializeToString()
    engine = kilnrt.build(model, device="cuda", fp16=True,
                          profiles={"x": [(1, channels, 9, 11), (4, channels, 9, 11), (8, channels, 9, 11)]})
    merged = [l for l in engine.layers if l.kind == kilnrt.LayerKind.CONVOLUTION and " | " in l.name]
    assert len(merged) == 1 and merged[0].params.num_output_maps == sum(widths)
    assert sum(l.kind == kilnrt.LayerKind.SLICE for l in engine.layers) == 3
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for batch in (4, 1, 4):
        x = rng.standard_normal((batch, channels, 9, 11)).astype(np.float32)
        ref = session.run(None, {"x": x})[0]
        out = engine.run({"x": x})["y"]
        assert out.dtype == np.float32 and out.shape == ref.shape
        assert rel_l2(out, ref) < 1e-2
        np.testing.assert_allclose(out, ref, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_spelled_out_norm_runs_as_one_norm_kernel_on_gpu(rms):
    """fuse_normalizations on the GPU: a ReduceMean/Pow/Sqrt/Div LayerNorm or RMSNorm builds in
    fp16 into one normalization layer on a CUDA tactic, against float32 onnxruntime."""
    import onnxruntime as ort

    from tests.test_norm_patterns import _norm_graph, _x

    model = _norm_graph(rms=rms)
    engine = kilnrt.build(model, device="cuda", fp16=True)
    norms = [l for l in engine.layers if l.kind == kilnrt.LayerKind.NORMALIZATION]
    assert len(norms) == 1 and norms[0].tactic.startswith("cuda.normalization.")
    assert not any(l.kind == kilnrt.LayerKind.REDUCE for l in engine.layers)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    for _ in range(2):
        x = _x()
        assert rel_l2(engine.run({"x": x})["y"], session.run(None, {"x": x})[0]) < 1e-2


def test_shufflenet_unit_fp16():
    """A ShuffleNetV2 unit (channel shuffle as a reshape, a transpose and a reshape back of a
    concatenation, a split, a convolution on one half) in fp16 against float32 onnxruntime."""
    import onnxruntime as ort

    from tests.models import shuffle_block_model

    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    model = shuffle_block_model(rng).SerializeToString()
    engine = kilnrt.build(model, device="cuda", fp16=True)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for _ in range(2):
        x = rng.standard_normal((2, 64, 14, 14)).astype(np.float32)
        assert rel_l2(engine.run({"x": x})["y"], session.run(None, {"x": x})[0]) < 1e-2, f"seed {seed}"
