"""Refit: REFIT engines take new weights without a rebuild, and then compute what a fresh
build with those weights computes (checked against a fresh build and ONNX Runtime)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kilnrt
import kilnrt.trt as trt
from kilnrt.builder import BuilderConfig, BuilderFlag, build_engine
from kilnrt.errors import DTypeError, KilnError, ShapeError
from kilnrt.testing import assert_close, fresh_seed

from test_trt_compat import cnn, reference

LOGGER = trt.Logger(trt.Logger.ERROR)


class Recorder(trt.ILogger):
    def __init__(self):
        trt.ILogger.__init__(self)
        self.messages = []

    def log(self, severity, msg):
        self.messages.append(msg)


def new_weights(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fresh random values for every initializer (variances kept positive)."""
    out = {}
    for init in model.graph.initializer:
        old = numpy_helper.to_array(init)
        new = rng.standard_normal(old.shape).astype(old.dtype)
        out[init.name] = np.abs(new) + 0.5 if "var" in init.name else new
    return out


def with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
    return m


def trt_build(model: onnx.ModelProto, *flags, profiles=()) -> trt.ICudaEngine:
    builder = trt.Builder(LOGGER)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, LOGGER).parse(model.SerializeToString())
    config = builder.create_builder_config()
    for f in flags:
        config.set_flag(f)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape("input", *shapes)
        config.add_optimization_profile(profile)
    return trt.Runtime(LOGGER).deserialize_cuda_engine(builder.build_serialized_network(network, config))


def test_refitter_refolds_batchnorm_and_matches_a_fresh_build_and_onnxruntime(tmp_path):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    model = cnn(rng, "batch")
    profiles = [((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))]
    engine = trt_build(model, trt.BuilderFlag.REFIT, profiles=profiles)
    assert engine.refittable
    # BatchNormalization was folded into the convolution: its parameters are no engine constant
    assert not {"bn.scale", "bn.mean", "conv.weight"} & set(engine.constants)
    context = engine.create_execution_context()   # made before the refit: sees the new weights too
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    before = context.run({"input": x})["probs"]

    refitter = trt.Refitter(engine, LOGGER)
    names = [i.name for i in model.graph.initializer]
    assert sorted(refitter.get_all_weights()) == sorted(names)
    weights = new_weights(model, rng)
    for name, value in weights.items():
        assert refitter.set_named_weights(name, trt.Weights(value.ravel()))   # TensorRT's flat weights
    assert refitter.get_missing_weights() == []
    assert refitter.refit_cuda_engine()

    refitted = with_weights(model, weights)
    fresh = trt_build(refitted, profiles=profiles)
    got = context.run({"input": x})["probs"]
    assert not np.allclose(got, before)
    assert_close(got, fresh.run({"input": x})["probs"], rtol=1e-5, atol=1e-6, seed=seed)
    assert_close(got, reference(refitted, x), rtol=1e-4, atol=1e-5, seed=seed)

    # a plan of a REFIT engine keeps what refit needs: refit again after loading it
    path = tmp_path / "cnn.plan"
    engine.save(str(path))
    loaded = kilnrt.load(str(path))
    assert_close(loaded.run({"input": x})["probs"], got, rtol=0, atol=0)
    again = new_weights(model, rng)
    assert sorted(loaded.refit({"conv.weight": again["conv.weight"], "bn.var": again["bn.var"]})) == \
        ["bn.var", "conv.weight"]
    expected = with_weights(refitted, {"conv.weight": again["conv.weight"], "bn.var": again["bn.var"]})
    assert_close(loaded.run({"input": x})["probs"], reference(expected, x), rtol=1e-4, atol=1e-5, seed=seed)


def folding_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Weights the optimizer folds: a transposed and scaled initializer, a Gemm bias + Relu epilogue."""
    inits = [numpy_helper.from_array(rng.standard_normal((5, 6)).astype(np.float32), "w_t"),
             numpy_helper.from_array(rng.standard_normal((1,)).astype(np.float32), "gain"),
             numpy_helper.from_array(rng.standard_normal((5,)).astype(np.float32), "b")]
    nodes = [helper.make_node("Transpose", ["w_t"], ["w"], perm=[1, 0]),
             helper.make_node("Mul", ["w", "gain"], ["w_scaled"]),
             helper.make_node("MatMul", ["x", "w_scaled"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["pre"]),
             helper.make_node("Relu", ["pre"], ["y"])]
    graph = helper.make_graph(nodes, "folding", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_engine_refit_redoes_constant_folding_for_a_network_built_with_the_api():
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    model = folding_model(rng)
    config = BuilderConfig()
    config.set_flag(BuilderFlag.REFIT)
    engine = build_engine(kilnrt.to_network(model), config)
    assert "w_t" not in engine.constants        # folded: transposed and scaled at build time
    assert engine.refittable_weights == ["b", "gain", "w_t"]
    weights = new_weights(model, rng)
    engine.refit(weights)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    refitted = with_weights(model, weights)
    fresh = build_engine(kilnrt.to_network(refitted))
    assert_close(engine.run({"x": x})["y"], fresh.run({"x": x})["y"], rtol=1e-5, atol=1e-6, seed=seed)
    assert_close(engine.run({"x": x})["y"], reference_named(refitted, {"x": x}), rtol=1e-4, atol=1e-5, seed=seed)
    loaded = kilnrt.load(engine.serialize())
    loaded.refit({"gain": np.array([2.5], np.float32)})
    expected = reference_named(with_weights(refitted, {"gain": np.array([2.5], np.float32)}), {"x": x})
    assert_close(loaded.run({"x": x})["y"], expected, rtol=1e-4, atol=1e-5, seed=seed)


def reference_named(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_every_profile_of_a_multi_profile_engine_is_refitted():
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    model = cnn(rng, "batch")
    profiles = [((1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8)), ((2, 3, 8, 8), (4, 3, 8, 8), (6, 3, 8, 8))]
    engine = kilnrt.load(trt_build(model, trt.BuilderFlag.REFIT, profiles=profiles).serialize())
    assert len(engine.profile_engines) == 2
    weights = new_weights(model, rng)
    engine.refit(weights)
    refitted = with_weights(model, weights)
    for batch in (1, 5):
        x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        assert_close(engine.run({"input": x})["probs"], reference(refitted, x), rtol=1e-4, atol=1e-5, seed=seed)


def test_refit_checks_names_shapes_and_dtypes_and_changes_nothing_on_error():
    rng = np.random.default_rng(fresh_seed())
    model = cnn(rng)
    engine = trt_build(model, trt.BuilderFlag.REFIT)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    before = engine.run({"input": x})["probs"]
    good = rng.standard_normal(5).astype(np.float32)
    with pytest.raises(KilnError, match=r"no refittable weight named 'fc.bais'; did you mean 'fc.bias'"):
        engine.refit({"fc.bias": good, "fc.bais": good})
    with pytest.raises(ShapeError, match=r"weight 'conv.weight' has shape \(6, 3, 3, 3\), got shape \(6, 3, 3\)"):
        engine.refit({"conv.weight": np.ones((6, 3, 3), np.float32)})
    with pytest.raises(DTypeError, match=r"weight 'fc.bias' is float32, got float64; convert it first"):
        engine.refit({"fc.bias": good.astype(np.float64)})
    assert_close(engine.run({"input": x})["probs"], before, rtol=0, atol=0)   # nothing changed

    recorder = Recorder()
    refitter = trt.Refitter(engine, recorder)
    assert not refitter.set_named_weights("fc.bias", np.ones(4, np.float32))   # TensorRT: False, logged
    assert any("fc.bias" in m and "(5,)" in m for m in recorder.messages)
    assert not refitter.set_named_weights("nope", good) and refitter.refit_cuda_engine()

    plain = trt_build(model)
    assert not plain.refittable
    with pytest.raises(KilnError, match=r"not built refittable: build it with config.set_flag\(BuilderFlag.REFIT\)"):
        plain.refit({"fc.bias": good})
    with pytest.raises(KilnError, match="not refittable"):
        trt.Refitter(plain, LOGGER)


def test_refit_by_layer_and_role_on_a_network_made_with_the_api():
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    builder = trt.Builder(LOGGER)
    network = builder.create_network(0)
    x = network.add_input("x", trt.float32, (1, 2, 6, 6))
    conv = network.add_convolution_nd(x, 4, (3, 3), trt.Weights(w), trt.Weights(b))
    conv.name = "conv"
    act = network.add_activation(conv.get_output(0), trt.ActivationType.RELU)
    network.mark_output(act.get_output(0))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.REFIT)
    engine = builder.build_engine(network, config)
    w2 = rng.standard_normal(w.shape).astype(np.float32)
    b2 = rng.standard_normal(b.shape).astype(np.float32)
    refitter = trt.Refitter(engine, LOGGER)
    assert refitter.set_weights("conv", trt.WeightsRole.KERNEL, trt.Weights(w2))
    assert refitter.set_weights("conv", trt.WeightsRole.BIAS, b2)
    assert refitter.refit_cuda_engine()
    import torch
    import torch.nn.functional as F

    xv = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    want = F.relu(F.conv2d(torch.from_numpy(xv).double(), torch.from_numpy(w2).double(), torch.from_numpy(b2).double()))
    assert_close(engine.run({"x": xv})[act.get_output(0).name], want.numpy().astype(np.float32),
                 rtol=1e-5, atol=1e-5, seed=seed)


@pytest.mark.cuda
def test_refit_on_the_gpu_with_fp16_matches_a_fresh_build():
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    model = cnn(rng, "batch")
    profiles = [((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))]

    def build(m, *flags):
        builder = trt.Builder(LOGGER)
        network = builder.create_network(0)
        assert trt.OnnxParser(network, LOGGER).parse(m.SerializeToString())
        config = builder.create_builder_config()
        config.device = "cuda"
        for f in (trt.BuilderFlag.FP16, *flags):
            config.set_flag(f)
        profile = builder.create_optimization_profile()
        profile.set_shape("input", *profiles[0])
        config.add_optimization_profile(profile)
        return builder.build_engine(network, config)

    engine = build(model, trt.BuilderFlag.REFIT)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    engine.run({"input": x})                      # a CUDA graph captured with the old weights
    weights = new_weights(model, rng)
    engine.refit(weights)
    refitted = with_weights(model, weights)
    assert_close(engine.run({"input": x})["probs"], build(refitted).run({"input": x})["probs"],
                 rtol=1e-3, atol=1e-3, seed=seed)
    assert_close(engine.run({"input": x})["probs"], reference(refitted, x), rtol=2e-2, atol=2e-3, seed=seed)


def equal_weights_model(same: np.ndarray) -> onnx.ModelProto:
    """y = x * g + z with g and z both ``same`` (CSE merges them into one constant at build)."""
    inits = [numpy_helper.from_array(same, "g"), numpy_helper.from_array(same.copy(), "z")]
    nodes = [helper.make_node("Mul", ["x", "g"], ["m"]), helper.make_node("Add", ["m", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_new_weights_that_change_what_was_folded_away_are_refused_clearly():
    """Two equal initializers are merged into one constant at build (common-subexpression
    elimination); refitting only one of them would need them apart again: refused, with a
    message that says to rebuild.  Refitting both to equal values keeps the structure."""
    rng = np.random.default_rng(fresh_seed())
    same = rng.standard_normal(4).astype(np.float32)
    engine = trt_build(equal_weights_model(same), trt.BuilderFlag.REFIT)
    assert len(engine.constants) == 1
    x = rng.standard_normal((2, 4)).astype(np.float32)
    with pytest.raises(KilnError, match="folds the network differently .* rebuild the engine"):
        engine.refit({"z": rng.standard_normal(4).astype(np.float32)})
    assert_close(engine.run({"x": x})["y"], x * same + same, rtol=1e-6, atol=1e-6)   # unchanged
    other = rng.standard_normal(4).astype(np.float32)
    engine.refit({"g": other, "z": other})
    assert_close(engine.run({"x": x})["y"], x * other + other, rtol=1e-6, atol=1e-6)


def test_a_plan_from_an_optimizer_with_other_passes_says_so_when_its_refit_folds_differently():
    """The same refusal as above, for a plan whose recorded passes are not this kilnrt's (a
    plan saved by an earlier version): the message says why and what to do.  The record
    survives a save and load; a plan without it (older than the record) counts as other."""
    rng = np.random.default_rng(fresh_seed())
    same = rng.standard_normal(4).astype(np.float32)
    engine = trt_build(equal_weights_model(same), trt.BuilderFlag.REFIT)
    from kilnrt.builder.refit import pipeline_fingerprint

    assert engine.refit_source.pipeline == pipeline_fingerprint()
    loaded = kilnrt.Runtime().deserialize_cuda_engine(engine.serialize())
    assert loaded.refit_source.pipeline == pipeline_fingerprint()
    with pytest.raises(KilnError) as same_passes:
        loaded.refit({"z": rng.standard_normal(4).astype(np.float32)})
    assert "other passes" not in str(same_passes.value)
    for recorded in ("0123456789abcdef", None):
        loaded.refit_source.pipeline = recorded
        with pytest.raises(KilnError, match="folds the network differently .* built by a kilnrt whose optimizer "
                                            "had other passes .* rebuild the engine from the model"):
            loaded.refit({"z": rng.standard_normal(4).astype(np.float32)})
    other = rng.standard_normal(4).astype(np.float32)
    loaded.refit({"g": other, "z": other})   # a refit that folds the same way still works
    x = rng.standard_normal((2, 4)).astype(np.float32)
    assert_close(loaded.run({"x": x})["y"], x * other + other, rtol=1e-6, atol=1e-6)


def test_kilnrt_build_refit_true_refolds_batchnorm_from_an_onnx_file(tmp_path):
    """kilnrt.build(path, refit=True): the Pythonic REFIT build keeps the ONNX model, so the
    BatchNormalization parameters the importer folded are refittable too."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    model = cnn(rng, "batch")
    path = tmp_path / "cnn.onnx"
    onnx.save(model, str(path))
    profiles = {"input": [(1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)]}
    engine = kilnrt.build(str(path), refit=True, device="cpu", profiles=profiles)
    assert engine.refittable and {"bn.scale", "bn.var", "conv.weight"} <= set(engine.refittable_weights)
    weights = new_weights(model, rng)
    engine.refit(weights)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    refitted = with_weights(model, weights)
    fresh = kilnrt.build(refitted, device="cpu", profiles=profiles)
    assert_close(engine.run({"input": x})["probs"], fresh.run({"input": x})["probs"], rtol=1e-5, atol=1e-6,
                 seed=seed)
    assert not kilnrt.build(str(path), device="cpu", profiles=profiles).refittable


def test_cli_refit_flag_makes_refittable_plans(tmp_path):
    """`kilnrt build --refit` and trtexec's `--refit` in `kilnrt exec` save plans that take new weights."""
    from kilnrt.cli.main import main

    rng = np.random.default_rng(fresh_seed())
    model = cnn(rng, 2)
    path = tmp_path / "cnn.onnx"
    onnx.save(model, str(path))
    assert main(["build", str(path), "-o", str(tmp_path / "a.plan"), "--refit", "--device", "cpu"]) == 0
    assert main(["exec", f"--onnx={path}", "--refit", f"--saveEngine={tmp_path / 'b.plan'}", "--device=cpu",
                 "--skipInference"]) == 0
    assert main(["build", str(path), "-o", str(tmp_path / "c.plan"), "--device", "cpu"]) == 0
    a, b, c = (kilnrt.load(str(tmp_path / f"{n}.plan")) for n in "abc")
    assert a.refittable and b.refittable and not c.refittable
    assert sorted(a.refit(new_weights(model, rng))) == sorted(i.name for i in model.graph.initializer)
