"""``import kilnrt.trt as trt``: a typical TensorRT 10 script runs unchanged."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kilnrt.trt as trt
from kilnrt.testing import assert_close, fresh_seed

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def small_cnn(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm -> Softmax, dynamic batch."""
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((8 * 4 * 4, 5)).astype(np.float32) * 0.1, "fc_w"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], name="Conv_0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="Relu_1"),
        helper.make_node("MaxPool", ["relu"], ["pool"], name="MaxPool_2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="Flatten_3"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="Gemm_4"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="Softmax_5", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# ---------------------------------------------------------------------- the script, as users write it
TRT_LOGGER = trt.Logger(trt.Logger.WARNING)


def build_engine(onnx_path: str, plan_path: str, input_shapes: tuple):
    builder = trt.Builder(TRT_LOGGER)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, TRT_LOGGER)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            for i in range(parser.num_errors):
                print(parser.get_error(i))
            return None
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    inp = network.get_input(0)
    profile.set_shape(inp.name, *input_shapes)
    config.add_optimization_profile(profile)
    serialized_engine = builder.build_serialized_network(network, config)
    if serialized_engine is None:
        return None
    with open(plan_path, "wb") as f:
        f.write(serialized_engine)
    runtime = trt.Runtime(TRT_LOGGER)
    with open(plan_path, "rb") as f:
        return runtime.deserialize_cuda_engine(f.read())


def infer(engine, x: np.ndarray) -> dict:
    context = engine.create_execution_context()
    host = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            context.set_input_shape(name, x.shape)
            host[name] = np.ascontiguousarray(x.astype(trt.nptype(engine.get_tensor_dtype(name))))
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            shape = context.get_tensor_shape(name)
            size = trt.volume(shape)
            host[name] = np.empty(size, dtype=trt.nptype(engine.get_tensor_dtype(name))).reshape(shape)
    for name, buf in host.items():
        context.set_tensor_address(name, buf.ctypes.data)   # host pointers: the CPU device
    context.execute_async_v3(0)
    return {name: buf for name, buf in host.items() if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT}


# ---------------------------------------------------------------------- tests
def test_typical_tensorrt_script_runs_unchanged(tmp_path):
    import onnxruntime as ort

    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    model = small_cnn(rng)
    onnx_path = tmp_path / "small_cnn.onnx"
    onnx.save(model, onnx_path)
    engine = build_engine(str(onnx_path), str(tmp_path / "small_cnn.plan"),
                          ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)))
    assert engine is not None
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert names == ["input", "probs"]
    assert engine.get_tensor_shape("input") == (-1, 3, 8, 8)
    assert engine.get_tensor_dtype("probs") == trt.float32
    assert engine.get_tensor_profile_shape("input", 0) == [(1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 8):
        x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        out = infer(engine, x)
        assert out["probs"].shape == (batch, 5)
        assert_close(out["probs"], session.run(None, {"input": x})[0], rtol=1e-4, atol=1e-5, seed=seed)


LIGHT_MODELS = sorted(f[: -len(".onnx")] for f in os.listdir(LIGHT) if f.endswith(".onnx"))


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_reference_output(name, tmp_path):
    """Every light model, through the unchanged TensorRT flow: parse, build, serialize to a
    file, deserialize, bind host buffers, execute (as the Pythonic path does in test_light_models)."""
    from onnx.backend.test.runner import Runner

    path = os.path.join(LIGHT, f"{name}.onnx")
    model = onnx.load(path)
    builder = trt.Builder(TRT_LOGGER)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, TRT_LOGGER)
    assert parser.parse_from_file(path), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    assert network.num_inputs == 1 and network.num_outputs == 1
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    assert isinstance(plan, bytes) and plan.nbytes == len(plan) and bytes(memoryview(plan)) == plan
    (tmp_path / "model.plan").write_bytes(plan)
    del plan
    engine = trt.Runtime(TRT_LOGGER).deserialize_cuda_engine((tmp_path / "model.plan").read_bytes())
    inits = {i.name for i in model.graph.initializer}
    (data,) = [vi for vi in model.graph.input if vi.name not in inits]
    x = Runner.generate_dummy_data(data, seed=0, name=name, random=False)
    expected = numpy_helper.to_array(onnx.load_tensor(os.path.join(LIGHT, f"{name}_output_0.pb")))
    context = engine.create_execution_context()
    out = np.empty(context.get_tensor_shape(engine.get_tensor_name(1)), dtype=np.float32)
    assert context.set_input_shape(engine.get_tensor_name(0), x.shape)
    context.set_tensor_address(engine.get_tensor_name(0), x)     # arrays bind as well as pointers
    context.set_tensor_address(engine.get_tensor_name(1), out)
    assert context.execute_async_v3(0)
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-4)


def test_parser_errors_name_node_and_operator():
    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="weird_7")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu_0"), node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    messages = []

    class Recorder(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            messages.append((severity, msg))

    network = trt.Builder(Recorder()).create_network(0)
    parser = trt.OnnxParser(network, Recorder())
    assert not parser.parse(model.SerializeToString())
    assert parser.num_errors == 1
    error = parser.get_error(0)
    assert error.code() == trt.ErrorCode.UNSUPPORTED_NODE
    assert (error.node(), error.node_name(), error.node_operator()) == (1, "weird_7", "NoSuchOp")
    assert "NoSuchOp" in error.desc() and "In node 1" in str(error)
    assert messages and messages[-1][0] == trt.ILogger.ERROR
    assert network.num_layers == 0
    ok, per_node = parser.supports_model(model.SerializeToString())
    assert not ok and per_node == [([0], True), ([1], False)]
    parser.clear_errors()
    assert parser.num_errors == 0
    assert parser.supports_operator("Conv") and not parser.supports_operator("NoSuchOp")
    assert not parser.parse(b"not an onnx model") and "not an ONNX model" in parser.get_error(0).desc()


def test_failures_return_none_and_reach_the_logger():
    messages = []

    class Recorder(trt.ILogger):
        def log(self, severity, msg):
            messages.append(msg)

    logger = Recorder()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    network.add_input("x", trt.float32, (2, 3))          # no outputs marked
    assert builder.build_serialized_network(network, builder.create_builder_config()) is None
    assert any("no outputs" in m for m in messages)
    assert trt.Runtime(logger).deserialize_cuda_engine(b"garbage") is None
    assert any("not a kilnrt plan" in m for m in messages)


def test_network_api_through_the_facade_with_context_managers():
    rng = np.random.default_rng(fresh_seed())
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    with trt.Builder(TRT_LOGGER) as builder, builder.create_network(0) as network, \
            builder.create_builder_config() as config:
        x = network.add_input("x", trt.float32, trt.Dims4(1, 2, 6, 6))
        conv = network.add_convolution_nd(x, 4, trt.DimsHW(3, 3), trt.Weights(w), trt.Weights())
        conv.padding_nd = (1, 1)
        act = network.add_activation(conv.get_output(0), trt.ActivationType.CLIP)
        act.alpha, act.beta = -0.5, 0.5
        pool = network.add_pooling_nd(act.get_output(0), trt.PoolingType.AVERAGE, (2, 2))
        pool.stride_nd = (2, 2)
        soft = network.add_softmax(pool.get_output(0))
        soft.get_output(0).name = "out"
        network.mark_output(soft.get_output(0))
        layer = network.get_layer(network.num_layers - 1)
        layer.__class__ = trt.ISoftMaxLayer           # TensorRT's downcast idiom is harmless
        assert layer.type == trt.LayerType.SOFTMAX and layer.axes == 1 << 1
        plan = builder.build_serialized_network(network, config)
    with trt.Runtime(TRT_LOGGER) as runtime:
        engine = runtime.deserialize_cuda_engine(plan)
    xv = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    import torch
    import torch.nn.functional as F

    y = F.conv2d(torch.from_numpy(xv), torch.from_numpy(w), padding=1).clamp(-0.5, 0.5)
    y = torch.softmax(F.avg_pool2d(y, 2, 2), dim=1)
    assert_close(engine.run({"x": xv})["out"], y.numpy(), rtol=1e-5, atol=1e-6)


def test_names_and_helpers():
    assert trt.nptype(trt.float16) is np.float16 and trt.nptype(trt.int32) is np.int32
    assert trt.volume((2, 3, 4)) == 24 and trt.volume(()) == 1
    assert trt.DataType.HALF is trt.float16 and trt.bool is trt.DataType.BOOL
    assert issubclass(trt.IInt8EntropyCalibrator2, trt.IInt8Calibrator)
    assert trt.IInt8EntropyCalibrator2().get_algorithm() == trt.CalibrationAlgoType.ENTROPY_CALIBRATION_2
    assert trt.init_libnvinfer_plugins(TRT_LOGGER, "")
    # the facade's classes are thin subclasses (TensorRT 8 calls, checked attributes): kilnrt objects still
    assert issubclass(trt.INetworkDefinition, trt.Network) and issubclass(trt.ICudaEngine, trt.Engine)
    assert trt.Dims2(3, 4) == (3, 4) and trt.Dims([1, -1]).nbDims == 2 and trt.DimsHW(5, 6).w == 6
    for name in ("IBuilderConfig", "IExecutionContext", "IOptimizationProfile", "ITensor", "ILayer",
                 "IHostMemory", "MemoryPoolType", "ElementWiseOperation", "UnaryOperation", "ReduceOperation",
                 "ScaleMode", "MatrixOperation", "TopKOperation", "OnnxParserFlag", "ProfilingVerbosity"):
        assert hasattr(trt, name), name


def test_profiler_and_inspector_through_the_facade():
    from kilnrt.engine.inspector import LayerTimer

    network = trt.Builder(TRT_LOGGER).create_network(0)
    x = network.add_input("x", trt.float32, (2, 4))
    relu = network.add_activation(x, trt.ActivationType.RELU)
    exp = network.add_unary(relu.get_output(0), trt.UnaryOperation.EXP)
    network.mark_output(exp.get_output(0))
    builder = trt.Builder(TRT_LOGGER)
    engine = trt.Runtime(TRT_LOGGER).deserialize_cuda_engine(
        builder.build_serialized_network(network, builder.create_builder_config()))
    context = engine.create_execution_context()
    context.profiler = LayerTimer()
    context.run({"x": np.ones((2, 4), np.float32)})
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    origins = " + ".join(l["Origin"] for l in info["Layers"])    # fusion may merge the two layers
    assert relu.name in origins and exp.name in origins
    assert all(l["TimeMs"] >= 0 for l in info["Layers"]) and info["Bindings"] == ["x", exp.get_output(0).name]
    line = inspector.get_layer_information(0, trt.LayerInformationFormat.ONELINE)
    assert relu.name in line and engine.layers[0].kind.name in line


@pytest.mark.parametrize("flag", [trt.OnnxParserFlag.NATIVE_INSTANCENORM])
def test_parser_flags(flag):
    parser = trt.OnnxParser(trt.Network(), TRT_LOGGER)
    parser.set_flag(flag)
    assert parser.get_flag(flag)
    parser.clear_flag(flag)
    assert not parser.get_flag(flag)


@pytest.mark.cuda
def test_cuda_engine_with_device_pointers_and_a_stream(tmp_path):
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(fresh_seed())
    model = small_cnn(rng)
    builder = trt.Builder(TRT_LOGGER)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, TRT_LOGGER)
    assert parser.parse(model.SerializeToString())
    config = builder.create_builder_config()
    config.device = "cuda"
    config.clear_flag(trt.BuilderFlag.TF32)  # strict FP32: the comparison below is at FP32 tolerance
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))
    config.add_optimization_profile(profile)
    engine = trt.Runtime(TRT_LOGGER).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    context = engine.create_execution_context()
    x = torch.randn(4, 3, 8, 8, device="cuda")
    y = torch.empty(4, 5, device="cuda")
    context.set_input_shape("input", tuple(x.shape))
    context.set_tensor_address("input", int(x.data_ptr()))
    context.set_tensor_address("probs", int(y.data_ptr()))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # x was written on the default stream
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_close(y.cpu().numpy(), session.run(None, {"input": x.cpu().numpy()})[0], rtol=1e-3, atol=1e-4)


def test_builder_flags_that_change_nothing_warn_once(caplog):
    import kilnrt
    import kilnrt.builder.builder as builder_module
    from kilnrt.fuzzing import base_model

    builder_module._WARNED.clear()
    config = trt.Builder(TRT_LOGGER).create_builder_config()
    for flag in (trt.BuilderFlag.DEBUG, trt.BuilderFlag.SPARSE_WEIGHTS, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS,
                 trt.BuilderFlag.REFIT):   # REFIT works (tests/test_refit.py): no warning
        config.set_flag(flag)
    config.add_optimization_profile(trt.OptimizationProfile.from_dict({"x": (2, 2, 6, 6)}))
    with caplog.at_level("WARNING", logger="kilnrt.builder"):
        for _ in range(2):
            trt.Builder(TRT_LOGGER).build_engine_with_config(kilnrt.to_network(base_model()), config)
    warned = [r.getMessage() for r in caplog.records if "has no effect in kilnrt" in r.getMessage()]
    assert len(warned) == 3, warned
    assert any("DEBUG" in w and "kilnrt compare" in w for w in warned)
    assert not any("REFIT" in w for w in warned)
