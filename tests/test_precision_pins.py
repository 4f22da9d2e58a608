"""Layer precision pins (``layer.precision``, ``set_output_type``) survive the optimizer: a
fused layer keeps the pin of the layers it absorbed, and layers pinned to different
precisions are not fused (TensorRT's rule under OBEY_PRECISION_CONSTRAINTS)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kilnrt
import kilnrt.trt as trt
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind
from kilnrt.optimize import optimize
from kilnrt.optimize.passes.fusion import fuse_conv_epilogue
from kilnrt.optimize.passes.precision import lower_precision
from kilnrt.testing import assert_close, seeded_inputs

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits.onnx"
FLOAT, HALF = DataType.FLOAT, DataType.HALF


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _layer_norm(x: str, p: str, nodes: list, inits: list) -> str:
    """LayerNorm over the last axis written out as PyTorch exports it below opset 17."""
    inits += [_init(f"{p}_two", 2.0), _init(f"{p}_eps", 1e-5), _init(f"{p}_g", np.linspace(0.5, 1.5, 16)),
              _init(f"{p}_b", np.linspace(-0.1, 0.1, 16))]
    nodes += [helper.make_node("ReduceMean", [x], [f"{p}_mean"], name=f"{p}_mean", axes=[-1]),
              helper.make_node("Sub", [x, f"{p}_mean"], [f"{p}_d"], name=f"{p}_sub"),
              helper.make_node("Pow", [f"{p}_d", f"{p}_two"], [f"{p}_sq"], name=f"{p}_pow"),
              helper.make_node("ReduceMean", [f"{p}_sq"], [f"{p}_var"], name=f"{p}_var", axes=[-1]),
              helper.make_node("Add", [f"{p}_var", f"{p}_eps"], [f"{p}_ve"], name=f"{p}_addeps"),
              helper.make_node("Sqrt", [f"{p}_ve"], [f"{p}_std"], name=f"{p}_sqrt"),
              helper.make_node("Div", [f"{p}_d", f"{p}_std"], [f"{p}_n"], name=f"{p}_div"),
              helper.make_node("Mul", [f"{p}_n", f"{p}_g"], [f"{p}_s"], name=f"{p}_scale"),
              helper.make_node("Add", [f"{p}_s", f"{p}_b"], [f"{p}_out"], name=f"{p}_shift")]
    return f"{p}_out"


def transformer_block(seed: int = 0) -> onnx.ModelProto:
    """x [1, 2, 8, 16] (batch, heads, seq, dim): LayerNorm, q/k/v projections, softmax(q·kᵀ·s)·v,
    residual, LayerNorm, MatMul+Add+GELU (erf form), MatMul+Add, residual."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    h = _layer_norm("x", "ln1", nodes, inits)
    for w in ("Wq", "Wk", "Wv", "W1", "W2"):
        inits.append(_init(w, rng.standard_normal((16, 16)) / 4))
    inits += [_init("b1", rng.standard_normal(16) / 4), _init("b2", rng.standard_normal(16) / 4),
              _init("scale", 0.25), _init("half", 0.5), _init("one", 1.0), _init("sqrt2", np.sqrt(2.0))]
    nodes += [helper.make_node("MatMul", [h, w], [t], name=f"proj_{t}") for w, t in (("Wq", "q"), ("Wk", "k"), ("Wv", "v"))]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["qk"], name="qk"),
              helper.make_node("Mul", ["qk", "scale"], ["scores"], name="scale_scores"),
              helper.make_node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["attn"], name="pv"),
              helper.make_node("Add", ["x", "attn"], ["r1"], name="residual_1")]
    h2 = _layer_norm("r1", "ln2", nodes, inits)
    nodes += [helper.make_node("MatMul", [h2, "W1"], ["f1"], name="fc1"),
              helper.make_node("Add", ["f1", "b1"], ["f1b"], name="fc1_bias"),
              helper.make_node("Div", ["f1b", "sqrt2"], ["g0"], name="gelu_div"),
              helper.make_node("Erf", ["g0"], ["g1"], name="gelu_erf"),
              helper.make_node("Add", ["g1", "one"], ["g2"], name="gelu_add"),
              helper.make_node("Mul", ["f1b", "g2"], ["g3"], name="gelu_mul"),
              helper.make_node("Mul", ["g3", "half"], ["g4"], name="gelu_half"),
              helper.make_node("MatMul", ["g4", "W2"], ["f2"], name="fc2"),
              helper.make_node("Add", ["f2", "b2"], ["f2b"], name="fc2_bias"),
              helper.make_node("Add", ["r1", "f2b"], ["y"], name="residual_2")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _parts(layer, names: set[str]) -> set[str]:
    """The original layers a layer of the optimized network stands for (fused names join theirs)."""
    return set(re.split(r" \+ | \| ", layer.name)) & names


def check_pins(original, optimized) -> int:
    """Every optimized layer holding a pinned original has that pin (one precision: layers
    pinned differently were never fused); every pinned computing layer is still somewhere.
    Returns how many optimized layers hold a pin."""
    names = {l.name for l in original.layers}
    pins = {l.name: l.precision for l in original.layers if l.precision is not None}
    found, held = set(), 0
    for layer in optimized.layers:
        parts = _parts(layer, names)
        got = {pins[p] for p in parts if p in pins}
        assert len(got) <= 1, f"{layer.name} fuses layers pinned to {got}"
        if got:
            assert layer.precision == got.pop(), f"{layer.name} lost its pin"
            held += 1
        found |= parts
    moved = {LayerKind.SHUFFLE, LayerKind.CONSTANT}   # data movement may cancel out (values kept)
    lost = [l.name for l in original.layers if l.name in pins and l.name not in found and l.kind not in moved]
    assert not lost, f"pinned layers vanished: {lost}"
    return held


def _pinned_copy(path, rng, fp16_share: float):
    net = kilnrt.to_network(str(path))
    computing = [l for l in net.layers if l.kind != LayerKind.CONSTANT]
    for layer in rng.choice(computing, size=rng.integers(1, len(computing) + 1), replace=False):
        layer.precision = HALF if rng.random() < fp16_share else FLOAT
    return net


@pytest.fixture(scope="module")
def block_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("pins") / "block.onnx"
    onnx.save(transformer_block(), path)
    return path


@pytest.mark.parametrize("model", ["digits", "block"])
@pytest.mark.parametrize("level", [1, 2, 3])
def test_pins_survive_every_level(model, level, block_path):
    """Random pins (FP32, and some FP16 to force refusals) on the digits CNN and a transformer
    block: after optimize(net, level) every layer holding a pinned original keeps the pin, and
    the optimized network computes what the original does (CPU, random inputs)."""
    path = DIGITS if model == "digits" else block_path
    seed = int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    reference = kilnrt.build(str(path), device="cpu", optimization_level=0)
    for trial in range(3):
        net = _pinned_copy(path, rng, fp16_share=0.3 * trial)
        optimized = optimize(net.clone(), level)
        held = check_pins(net, optimized)
        assert held > 0, f"seed {seed}"
        feeds = seeded_inputs(reference, seed + trial)
        got = kilnrt.build(optimized, device="cpu", optimization_level=0).run(feeds)
        expected = reference.run(feeds)
        for name in expected:
            assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4, seed=seed)


def test_everything_pinned_still_fuses_and_stays_pinned(block_path):
    """All FP32 pins: the fusions still happen (same layer count as unpinned) and all of the
    fused layers are pinned."""
    plain = optimize(kilnrt.to_network(str(block_path)), 3)
    net = kilnrt.to_network(str(block_path))
    for layer in net.layers:
        if layer.kind != LayerKind.CONSTANT:
            layer.precision = FLOAT
    optimized = optimize(net.clone(), 3)
    check_pins(net, optimized)
    kinds = {l.kind for l in optimized.layers}
    assert {LayerKind.ATTENTION, LayerKind.NORMALIZATION} <= kinds
    assert len(optimized.layers) == len(plain.layers)
    assert all(l.precision == FLOAT for l in optimized.layers if l.kind != LayerKind.CONSTANT)


def _conv_relu():
    net = kilnrt.to_network(str(DIGITS))
    conv = next(l for l in net.layers if l.kind == LayerKind.CONVOLUTION)
    relu = next(l for l in net.layers if l.kind == LayerKind.ACTIVATION)
    return net, conv, relu


def test_different_pins_refuse_the_fusion():
    net, conv, relu = _conv_relu()
    conv.precision, relu.precision = FLOAT, HALF
    stats = {}
    out = fuse_conv_epilogue(net, stats)
    assert stats["fuse_conv_epilogue_refused"] == 1 and stats["fuse_conv_epilogue"] == 1   # the second pair fuses
    kept = {l.name: l.precision for l in out.layers}
    assert kept[conv.name] == FLOAT and kept[relu.name] == HALF


@pytest.mark.parametrize("output_type, fuses", [(HALF, False), (FLOAT, True)])
def test_a_hidden_output_type_must_be_the_pinned_precision(output_type, fuses):
    """A pinned FP32 convolution whose output is set to FP16 would lose that rounding inside a
    fused conv+ReLU: refused. Set to FP32, it fuses."""
    net, conv, relu = _conv_relu()
    conv.precision = FLOAT
    conv.set_output_type(0, output_type)
    out = fuse_conv_epilogue(net, {})
    fused = [l for l in out.layers if conv.name in _parts(l, {conv.name}) and relu.name in l.name]
    assert bool(fused) == fuses
    if fuses:
        assert fused[0].precision == FLOAT and not fused[0].output_types
    else:
        kept = next(l for l in out.layers if l.name == conv.name)
        assert kept.precision == FLOAT and kept.output_types == {0: HALF}


def test_the_surviving_output_type_moves_to_the_fused_layer():
    net, conv, relu = _conv_relu()
    conv.precision = FLOAT
    relu.set_output_type(0, HALF)
    fused = next(l for l in fuse_conv_epilogue(net, {}).layers if l.name == f"{conv.name} + {relu.name}")
    assert fused.precision == FLOAT and fused.output_types == {0: HALF}


def overflowing_gemm(seed: int) -> onnx.ModelProto:
    """x @ W + b -> Relu -> * 1e-5: the GEMM's result (~1e5) overflows FP16; y fits."""
    rng = np.random.default_rng(seed)
    inits = [_init("W", rng.standard_normal((16, 16)) * 3e4), _init("b", rng.standard_normal(16)),
             _init("small", 1e-5)]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="gemm"),
             helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "small"], ["y"], name="shrink")]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("level", [1, 2, 3])
def test_pinned_fused_gemm_is_computed_in_fp32(level, tmp_path):
    """Optimized, then lowered to FP16 as the builder does on a GPU (torch's FP16 CPU kernels run
    it): the pinned MatMul+Add+Relu, fused into one GEMM, stays FP32 and the result matches the
    float64 reference; unpinned it overflows."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    path = tmp_path / "gemm.onnx"
    onnx.save(overflowing_gemm(seed), path)
    model = onnx.load(path)
    w, b = (numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer[:2])
    x = np.random.default_rng(seed).standard_normal((4, 16)).astype(np.float32)
    expected = np.maximum(x.astype(np.float64) @ w + b, 0) * 1e-5
    for pinned in (True, False):
        net = kilnrt.to_network(str(path))
        if pinned:
            for layer in net.layers:
                if layer.kind != LayerKind.CONSTANT:
                    layer.precision = FLOAT
        low = lower_precision(optimize(net.clone(), level), HALF)
        if level >= 2:
            assert any(l.kind == LayerKind.MATRIX_MULTIPLY and "relu" in l.name for l in low.layers)
        y = kilnrt.build(low, device="cpu", optimization_level=0).run({"x": x})["y"]
        if pinned:
            assert_close(y, expected, rtol=1e-4, atol=1e-4, seed=seed)
        else:
            assert not np.isfinite(y).all() or np.abs(y - expected).max() > 1e-2


def test_trt_fp16_build_reports_fp32_where_pinned(block_path):
    """The TensorRT flow: parse, pin some layers, FP16 + OBEY_PRECISION_CONSTRAINTS, build,
    deserialize: each engine layer holding a pinned node reports FP32, the others nothing."""
    logger = trt.Logger(trt.Logger.ERROR)
    for path, pinned in ((DIGITS, {"/features/features.0/Conv", "/classifier/classifier.1/Gemm",
                                   "/classifier/classifier.2/Relu"}),
                         (block_path, {"fc1", "gelu_erf", "qk", "softmax", "ln2_mean", "residual_1"})):
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        assert parser.parse_from_file(str(path))
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if set(layer.origin) & pinned:
                layer.precision = trt.float32
                layer.set_output_type(0, trt.float32)
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
        holding = [l for l in engine.layers if set(l.origin) & pinned]
        assert len(holding) >= 2
        assert all(l.precision == DataType.FLOAT for l in holding), [(l.name, l.precision) for l in holding]
        assert all(l.precision is None for l in engine.layers if not set(l.origin) & pinned
                   and l.kind != LayerKind.CONSTANT)
