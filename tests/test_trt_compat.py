"""TensorRT 7/8 scripts on ``kilnrt.trt``: the calls work, warn once with their TensorRT 10
replacement, and no facade object silently accepts an attribute it does not know."""
from __future__ import annotations

import ctypes
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kilnrt.trt as trt
import kilnrt.trt.strict as strict
from kilnrt.errors import KilnError
from kilnrt.testing import assert_close, fresh_seed


def cnn(rng: np.random.Generator, batch: int | str = 1) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> MaxPool -> Flatten -> Gemm -> Softmax."""
    inits = [
        numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "conv.weight"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "bn.scale"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "bn.bias"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "bn.mean"),
        numpy_helper.from_array(rng.random(6).astype(np.float32) + 0.5, "bn.var"),
        numpy_helper.from_array(rng.standard_normal((6 * 4 * 4, 5)).astype(np.float32) * 0.1, "fc.weight"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fc.bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight"], ["conv"], name="Conv_0", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"],
                         name="BatchNormalization_1"),
        helper.make_node("Relu", ["bn"], ["relu"], name="Relu_2"),
        helper.make_node("MaxPool", ["relu"], ["pool"], name="MaxPool_3", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="Flatten_4"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="Gemm_5"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="Softmax_6", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


class cuda:  # noqa: N801 - stands in for ``import pycuda.driver as cuda``: "device" memory is host memory here
    class Stream:
        handle = 0

        def synchronize(self):
            pass

    class DeviceAllocation:
        def __init__(self, nbytes):
            self.buffer = (ctypes.c_char * nbytes)()

        def __int__(self):
            return ctypes.addressof(self.buffer)

    @staticmethod
    def pagelocked_empty(size, dtype):
        return np.empty(size, dtype)

    @staticmethod
    def mem_alloc(nbytes):
        return cuda.DeviceAllocation(nbytes)

    @staticmethod
    def memcpy_htod_async(device, host, stream):
        ctypes.memmove(int(device), host.ctypes.data, host.nbytes)

    @staticmethod
    def memcpy_dtoh_async(host, device, stream):
        ctypes.memmove(host.ctypes.data, int(device), host.nbytes)


# ------------------------------------------- TensorRT 8's samples/python/common.py + onnx_resnet50.py, unchanged
TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
EXPLICIT_BATCH = 1 << (int)(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def GiB(val):
    return val * 1 << 30


class HostDeviceMem(object):
    def __init__(self, host_mem, device_mem):
        self.host = host_mem
        self.device = device_mem


def allocate_buffers(engine):
    inputs = []
    outputs = []
    bindings = []
    stream = cuda.Stream()
    for binding in engine:
        size = trt.volume(engine.get_binding_shape(binding)) * engine.max_batch_size
        dtype = trt.nptype(engine.get_binding_dtype(binding))
        host_mem = cuda.pagelocked_empty(size, dtype)
        device_mem = cuda.mem_alloc(host_mem.nbytes)
        bindings.append(int(device_mem))
        if engine.binding_is_input(binding):
            inputs.append(HostDeviceMem(host_mem, device_mem))
        else:
            outputs.append(HostDeviceMem(host_mem, device_mem))
    return inputs, outputs, bindings, stream


def do_inference_v2(context, bindings, inputs, outputs, stream):
    [cuda.memcpy_htod_async(inp.device, inp.host, stream) for inp in inputs]
    context.execute_async_v2(bindings=bindings, stream_handle=stream.handle)
    [cuda.memcpy_dtoh_async(out.host, out.device, stream) for out in outputs]
    stream.synchronize()
    return [out.host for out in outputs]


def build_engine_onnx(model_file):
    with trt.Builder(TRT_LOGGER) as builder, builder.create_network(EXPLICIT_BATCH) as network, \
            builder.create_builder_config() as config, trt.OnnxParser(network, TRT_LOGGER) as parser:
        builder.max_batch_size = 1
        config.max_workspace_size = GiB(1)
        with open(model_file, "rb") as model:
            if not parser.parse(model.read()):
                print("ERROR: Failed to parse the ONNX file.")
                for error in range(parser.num_errors):
                    print(parser.get_error(error))
                return None
        return builder.build_engine(network, config)


# ---------------------------------------------------------------------------------------------- tests
def test_tensorrt8_onnx_tutorial_runs_unchanged(tmp_path, caplog):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    model = cnn(rng)
    onnx.save(model, tmp_path / "cnn.onnx")
    strict._WARNED.clear()
    images = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="kilnrt.trt"):
        with build_engine_onnx(str(tmp_path / "cnn.onnx")) as engine:
            inputs, outputs, bindings, stream = allocate_buffers(engine)
            with engine.create_execution_context() as context:
                for x in images:
                    np.copyto(inputs[0].host, x.ravel())
                    trt_outputs = do_inference_v2(context, bindings=bindings, inputs=inputs, outputs=outputs,
                                                  stream=stream)
                    assert_close(trt_outputs[0].reshape(1, 5), reference(model, x), rtol=1e-4, atol=1e-5, seed=seed)
    warned = [r.getMessage() for r in caplog.records if "TensorRT 7/8" in r.getMessage()]
    for old, new in [("Builder.build_engine", "build_serialized_network"),
                     ("IBuilderConfig.max_workspace_size", "set_memory_pool_limit"),
                     ("Builder.max_batch_size", "optimization profile"),
                     ("iterating over an ICudaEngine", "get_tensor_name"),
                     ("get_binding_shape", "get_tensor_shape"), ("get_binding_dtype", "get_tensor_dtype"),
                     ("binding_is_input", "get_tensor_mode"), ("execute_async_v2", "execute_async_v3"),
                     ("'with engine:'", ""), ("'with context:'", "")]:
        hits = [w for w in warned if old in w]
        assert len(hits) == 1 and new in hits[0], (old, hits)   # once each, however often it was called


def test_binding_api_with_two_profiles_and_set_binding_shape():
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    model = cnn(rng, "batch")
    builder = trt.Builder(TRT_LOGGER)
    network = builder.create_network(EXPLICIT_BATCH)
    assert trt.OnnxParser(network, TRT_LOGGER).parse(model.SerializeToString())
    config = builder.create_builder_config()
    for lo, hi in ((1, 2), (3, 8)):
        profile = builder.create_optimization_profile()
        profile.set_shape("input", (lo, 3, 8, 8), (hi, 3, 8, 8), (hi, 3, 8, 8))
        config.add_optimization_profile(profile)
    engine = builder.build_engine(network, config)
    assert engine.num_bindings == 4 and len(engine) == 4
    assert list(engine) == ["input", "probs", "input [profile 1]", "probs [profile 1]"]
    assert engine.get_binding_index("probs [profile 1]") == 3 and engine.get_binding_index("nope") == -1
    assert engine.get_binding_name(2) == "input [profile 1]" and engine[1] == "probs" and engine["probs"] == 1
    assert engine.get_binding_shape(0) == (-1, 3, 8, 8) and engine.get_binding_dtype("probs") == trt.float32
    assert engine.binding_is_input(2) and not engine.binding_is_input("probs [profile 1]")
    assert engine.get_profile_shape(1, "input") == [(3, 3, 8, 8), (8, 3, 8, 8), (8, 3, 8, 8)]
    assert engine.max_batch_size == 1 and not engine.has_implicit_batch_dimension

    context = engine.create_execution_context()
    context.set_optimization_profile_async(1, 0)
    with pytest.raises(KilnError, match="active profile is 1"):
        context.set_binding_shape(0, (4, 3, 8, 8))      # a profile-0 binding while profile 1 is active
    x = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    context.set_binding_shape(2, x.shape)
    assert context.all_binding_shapes_specified and context.get_binding_shape(3) == (5, 5)
    y = np.empty((5, 5), np.float32)
    assert context.execute_v2([None, None, x.ctypes.data, y.ctypes.data])   # every profile's bindings
    assert_close(y, reference(model, x), rtol=1e-4, atol=1e-5, seed=seed)
    y2 = np.empty((5, 5), np.float32)
    assert context.execute_async_v2([x, y2], 0)                          # only the active profile's
    assert_close(y2, y, rtol=0, atol=0)
    with pytest.raises(Exception, match="one binding per I/O tensor"):
        context.execute_v2([x])


def test_max_batch_size_maps_to_a_profile_and_execute_takes_a_batch(tmp_path):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    model = cnn(rng, "N")
    builder = trt.Builder(TRT_LOGGER)
    network = builder.create_network()
    assert trt.OnnxParser(network, TRT_LOGGER).parse(model.SerializeToString())
    builder.max_batch_size = 6
    assert builder.max_batch_size == 6
    engine = trt.Runtime(TRT_LOGGER).deserialize_cuda_engine(
        builder.build_serialized_network(network, builder.create_builder_config()))
    assert engine.max_batch_size == 6      # kept in the plan
    assert engine.get_profile_shape(0, "input") == [(1, 3, 8, 8), (6, 3, 8, 8), (6, 3, 8, 8)]
    context = engine.create_execution_context()
    for batch in (1, 4, 6):
        x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        y = np.empty((batch, 5), np.float32)
        assert context.execute(batch, [x.ctypes.data, y.ctypes.data])
        assert_close(y, reference(model, x), rtol=1e-4, atol=1e-5, seed=seed)
    x = rng.standard_normal((7, 3, 8, 8)).astype(np.float32)
    with pytest.raises(Exception, match=r"outside optimization profile 0: dim 0 must be in \[1, 6\]"):
        context.execute(7, [x, np.empty((7, 5), np.float32)])


def test_build_cuda_engine_and_builder_workspace_from_tensorrt7():
    rng = np.random.default_rng(fresh_seed())
    model = cnn(rng)
    builder = trt.Builder(TRT_LOGGER)
    builder.max_workspace_size = 1 << 20
    network = builder.create_network(EXPLICIT_BATCH)
    assert trt.OnnxParser(network, TRT_LOGGER).parse(model.SerializeToString())
    engine = builder.build_cuda_engine(network)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert_close(engine.run({"input": x})["probs"], reference(model, x), rtol=1e-4, atol=1e-5)


def facade_objects():
    builder = trt.Builder(TRT_LOGGER)
    network = builder.create_network(0)
    x = network.add_input("x", trt.float32, (2, 3))
    network.mark_output(network.add_activation(x, trt.ActivationType.RELU).get_output(0))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.REFIT)
    engine = builder.build_engine(network, config)
    context = engine.create_execution_context()
    return {"Builder": builder, "INetworkDefinition": network, "IBuilderConfig": config,
            "IOptimizationProfile": builder.create_optimization_profile(),
            "OnnxParser": trt.OnnxParser(builder.create_network(0), TRT_LOGGER), "Runtime": trt.Runtime(TRT_LOGGER),
            "ICudaEngine": engine, "IExecutionContext": context, "Logger": trt.Logger(),
            "IEngineInspector": engine.create_engine_inspector(), "Refitter": trt.Refitter(engine, TRT_LOGGER),
            "IHostMemory": builder.build_serialized_network(network, config)}


def test_no_facade_object_accepts_an_unknown_attribute():
    for what, obj in facade_objects().items():
        with pytest.raises(AttributeError) as info:
            obj.no_such_setting = 1
        if what != "IHostMemory":   # bytes' own error
            assert "no attribute 'no_such_setting'" in str(info.value) and "docs/trt.md" in str(info.value), what
        assert not hasattr(obj, "no_such_setting"), what
    objs = facade_objects()
    with pytest.raises(AttributeError, match="did you mean 'max_batch_size'"):
        objs["Builder"].max_batch_sise = 8
    with pytest.raises(AttributeError, match=r"fp16_mode is TensorRT 7/8 API .* config.set_flag\(trt.BuilderFlag.FP16\)"):
        objs["Builder"].fp16_mode = True
    with pytest.raises(AttributeError, match="fp16_mode"):
        objs["Builder"].fp16_mode
    objs["Logger"].min_severity = trt.Logger.INFO       # known attributes still work
    objs["IExecutionContext"].active_optimization_profile = 0


def test_unhonoured_tensorrt_attributes_warn_once_and_say_what_kilnrt_does(caplog):
    objs = facade_objects()
    strict._WARNED.clear()
    recorder = object()
    with caplog.at_level(logging.WARNING, logger="kilnrt.trt"):
        for _ in range(2):
            objs["IExecutionContext"].error_recorder = recorder
            objs["IBuilderConfig"].algorithm_selector = recorder
            objs["Runtime"].gpu_allocator = recorder
    assert objs["IExecutionContext"].error_recorder is recorder
    # only the facade's warnings: an earlier test may have left kilnrt's build log at INFO
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 3, warned
    assert any("IExecutionContext.error_recorder" in w and "KilnError" in w for w in warned)
    assert any("algorithm_selector" in w and "fastest" in w for w in warned)
    assert objs["Builder"].error_recorder is None     # readable before it is set, as in TensorRT


class MyLogger(trt.ILogger):
    def __init__(self):
        trt.ILogger.__init__(self)
        self.seen = []                                  # user subclasses keep their own attributes

    def log(self, severity, msg):
        self.seen.append(msg)


def test_user_subclasses_are_free_to_add_attributes():
    logger = MyLogger()
    logger.extra = 1
    assert trt.Builder(logger).create_network(0) is not None
