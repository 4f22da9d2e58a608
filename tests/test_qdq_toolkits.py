"""Q/DQ models as the quantization toolkits write them, built into 8-bit layers and checked against
ONNX Runtime running the same file: PyTorch 2 export quantization (torchao's PT2E, u8
activations, per-channel s8 weights; skipped without torchao), and NVIDIA Model Optimizer's
placement (a Q/DQ pair on every convolution and GEMM input, symmetric s8 or FP8 E4M3, weights
per output channel), on fresh random inputs."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import kilnrt
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind

ort = pytest.importorskip("onnxruntime")
EIGHT_BIT = {LayerKind.QUANTIZED_CONVOLUTION, LayerKind.QUANTIZED_MATRIX_MULTIPLY}


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's run of the file as written: graph optimizations off, so the Q/DQ nodes run as
    ONNX defines them (its QDQ fusion into QLinearConv would quantize the bias to int32, which
    moves its results by up to half an accumulator step, and with them the next Q's ties)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def eight_bit_layers(engine) -> list:
    return [l for l in engine.layers if l.kind in EIGHT_BIT]


# ----------------------------------------------------------------------------- Model Optimizer placement
def modelopt_style(kind: str) -> onnx.ModelProto:
    """Conv 3x3 -> Relu -> Conv 3x3 -> Relu -> Flatten -> Gemm, with ``Q -> DQ`` on each activation
    input (symmetric: zero point 0) and ``DQ(8-bit constant, per-channel scale)`` weights;
    ``kind``: "int8" or "fp8" (E4M3)."""
    rng = np.random.default_rng(7)
    top = 127.0 if kind == "int8" else 448.0
    elem = TensorProto.INT8 if kind == "int8" else TensorProto.FLOAT8E4M3FN
    inits, nodes = [], []

    def weights(name, shape, fan):
        w = rng.standard_normal(shape) / math.sqrt(fan)
        axes = tuple(range(1, len(shape)))
        scale = np.abs(w).max(axis=axes) / top
        scaled = w / scale.reshape((-1,) + (1,) * (len(shape) - 1))
        q = np.clip(np.round(scaled), -127, 127).astype(np.int8) if kind == "int8" else \
            scaled.astype(np.float32).astype(ml_dtypes.float8_e4m3fn)
        inits.append(numpy_helper.from_array(q, f"{name}_q") if kind == "int8" else
                     helper.make_tensor(f"{name}_q", elem, q.shape, q.view(np.uint8).tobytes(), raw=True))
        inits.append(numpy_helper.from_array(scale.astype(np.float32), f"{name}_s"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s"], [name], axis=0))

    def qdq(src, amax):
        inits.append(numpy_helper.from_array(np.array(amax / top, np.float32), f"{src}_as"))
        inits.append(helper.make_tensor(f"{src}_zp", elem, [], [0]))
        nodes.append(helper.make_node("QuantizeLinear", [src, f"{src}_as", f"{src}_zp"], [f"{src}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{src}_q", f"{src}_as", f"{src}_zp"], [f"{src}_dq"]))
        return f"{src}_dq"

    weights("w1", (16, 3, 3, 3), 27)
    weights("w2", (16, 16, 3, 3), 144)
    weights("fw", (10, 16 * 64), 16 * 64)
    inits += [numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, b) for b in ("b1", "b2")]
    nodes.append(helper.make_node("Conv", [qdq("x", 3.0), "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    nodes.append(helper.make_node("Conv", [qdq("r1", 2.0), "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c2"], ["r2"]))
    nodes.append(helper.make_node("Flatten", ["r2"], ["f"]))
    nodes.append(helper.make_node("Gemm", [qdq("f", 2.0), "fw"], ["y"], transB=1))
    graph = helper.make_graph(nodes, f"modelopt_{kind}", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                      [4, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_modelopt_placement_builds_8_bit_layers_that_match_onnxruntime(kind):
    model = modelopt_style(kind)
    engine = kilnrt.build(model, device="cpu")
    layers = eight_bit_layers(engine)
    want = DataType.INT8 if kind == "int8" else DataType.FP8
    assert len(layers) == 3 and all(l.params.input_type == want for l in layers), engine.layers
    assert not any(l.kind in (LayerKind.CONVOLUTION, LayerKind.MATRIX_MULTIPLY) for l in engine.layers)
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((4, 3, 8, 8)).astype(np.float32)
        ref = ort_run(model, x)
        got = engine.run({"x": x})["y"]
        # the same 8-bit values on both sides; sums exact here, in float32 there
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


# ----------------------------------------------------------------------------- PyTorch 2 export quantization
class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y) + y)
        return self.fc(y.flatten(1))


def test_pt2e_quantized_export_builds_integer_layers_that_match_onnxruntime(tmp_path):
    pt2e = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
    x86 = pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = _Net().eval()
    x = torch.randn(4, 3, 8, 8)
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = pt2e.prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
    for _ in range(4):
        prepared(torch.randn(4, 3, 8, 8))
    path = str(tmp_path / "pt2e.onnx")
    torch.onnx.export(pt2e.convert_pt2e(prepared), (x,), path, dynamo=True)
    onnx_model = onnx.load(path)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx_model.graph.node}
    engine = kilnrt.build(path, device="cpu")
    layers = eight_bit_layers(engine)
    assert len(layers) == 3 and {l.params.input_type for l in layers} == {DataType.UINT8}, engine.layers
    assert not any(l.kind in (LayerKind.CONVOLUTION, LayerKind.MATRIX_MULTIPLY) for l in engine.layers)
    for seed in range(3):
        xs = np.random.default_rng(seed).standard_normal((4, 3, 8, 8)).astype(np.float32)
        ref = ort_run(onnx_model, xs)
        got = engine.run({engine.input_names[0]: xs})[engine.output_names[0]]
        # integer sums on both sides; a value within float32 rounding of a tie can quantize one
        # step apart at a Q (kilnrt's convolution sums in float64, ONNX Runtime's in float32),
        # which moves a few outputs by about one step of the final GEMM's input
        diff = np.abs(got - ref)
        assert float(diff.max()) <= 0.01 * float(np.abs(ref).max())
        assert float((diff > 1e-4 * np.abs(ref).max()).mean()) <= 0.1
