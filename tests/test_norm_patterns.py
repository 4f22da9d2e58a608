"""fuse_normalizations: LayerNorm and RMSNorm written out as ReduceMean / Sub / Pow / Sqrt / Div
chains (PyTorch below opset 17, Hugging Face's RMSNorm) become one NORMALIZATION layer, with
the numbers onnxruntime gives for the chain; near misses stay as they are."""
from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import kilnrt
from kilnrt.network.layers import LayerKind
from kilnrt.optimize.passes.norms import fuse_normalizations

WIDTH = 24


def _kinds(model: bytes, level: int = 3) -> dict[LayerKind, int]:
    from kilnrt.optimize.pipeline import optimize

    net = optimize(kilnrt.to_network(model), level)
    counts: dict[LayerKind, int] = {}
    for layer in net.layers:
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
    return counts


def _check_against_ort(model: bytes, feeds: dict, rtol: float = 1e-4) -> None:
    """onnxruntime with its graph optimizations off: it evaluates the chain as written (its own
    layer-norm fusion takes ``d ^ 3`` for a square)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(None, feeds)
    out = kilnrt.build(model).run(feeds)
    names = [o.name for o in onnx.load_from_string(model).graph.output]
    for name, r in zip(names, ref):
        # atol on the output's scale: a near miss such as d^3 sums cubes of both signs, whose
        # cancellation leaves float32 rounding of ~1e-4 of the largest value on the smaller ones
        np.testing.assert_allclose(out[name], r, rtol=rtol, atol=rtol * max(1.0, float(np.abs(r).max())))


# ----------------------------------------------------------------------------- exported by PyTorch
class _Block(nn.Module):
    """LayerNorm (affine), a projection, LayerNorm without affine, and an HF-style RMSNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH, elementwise_affine=False)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.rms_weight = nn.Parameter(torch.rand(WIDTH) + 0.5)
        with torch.no_grad():
            self.ln1.weight.uniform_(0.5, 1.5)
            self.ln1.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = self.ln2(self.proj(self.ln1(x)))
        variance = h.pow(2).mean(-1, keepdim=True)          # LlamaRMSNorm
        return self.rms_weight * (h * torch.rsqrt(variance + 1e-6))


@pytest.mark.parametrize("opset", [11, 14])
def test_pytorch_layer_norm_and_rms_norm_exports_become_three_norms(opset):
    f = io.BytesIO()
    torch.onnx.export(_Block().eval(), (torch.randn(2, 5, WIDTH),), f, input_names=["x"], output_names=["y"],
                      opset_version=opset, dynamo=False)
    model = f.getvalue()
    assert any(n.op_type == "ReduceMean" for n in onnx.load_from_string(model).graph.node)
    kinds = _kinds(model)
    assert kinds.get(LayerKind.NORMALIZATION) == 3 and LayerKind.REDUCE not in kinds, kinds
    _check_against_ort(model, {"x": np.random.default_rng().normal(0.3, 2.0, (2, 5, WIDTH)).astype(np.float32)})


# ----------------------------------------------------------------------------- written by hand
def _norm_graph(*, rms: bool, square: str = "pow", inverse: str = "div", axes_input: bool = False,
                scale_shape: tuple | None = (WIDTH,), bias: bool = True, eps=1e-5, exponent: float = 2.0,
                var_axes: tuple = (-1,), extra_output: str | None = None, scale_is_input: bool = False,
                half: bool = False) -> bytes:
    """One normalization of x [2, 7, WIDTH] spelled out node by node."""
    rng = np.random.default_rng()
    nodes, inits = [], []
    opset = 18 if axes_input else 13

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def mean(src, dst, axes):
        if axes_input:
            nodes.append(helper.make_node("ReduceMean", [src, const(f"{dst}_axes", np.array(axes, np.int64))], [dst]))
        else:
            nodes.append(helper.make_node("ReduceMean", [src], [dst], axes=list(axes), keepdims=1))

    x = "x"
    if half:
        nodes.append(helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        x = "xf"
    if rms:
        d = x
    else:
        mean(x, "mu", (-1,))
        nodes.append(helper.make_node("Sub", [x, "mu"], ["d"]))
        d = "d"
    if square == "pow":
        nodes.append(helper.make_node("Pow", [d, const("two", np.float32(exponent))], ["sq"]))
    else:
        nodes.append(helper.make_node("Mul", [d, d], ["sq"]))
    mean("sq", "var", var_axes)
    nodes.append(helper.make_node("Add", ["var", const("eps", np.asarray(eps, np.float32))], ["ve"]))
    if inverse == "pow":
        nodes.append(helper.make_node("Pow", ["ve", const("minus_half", np.float32(-0.5))], ["inv"]))
        nodes.append(helper.make_node("Mul", [d, "inv"], ["n"]))
    else:
        nodes.append(helper.make_node("Sqrt", ["ve"], ["s"]))
        if inverse == "div":
            nodes.append(helper.make_node("Div", [d, "s"], ["n"]))
        elif inverse == "reciprocal":
            nodes.append(helper.make_node("Reciprocal", ["s"], ["inv"]))
            nodes.append(helper.make_node("Mul", ["inv", d], ["n"]))
        else:  # "one_over"
            nodes.append(helper.make_node("Div", [const("one", np.float32(1.0)), "s"], ["inv"]))
            nodes.append(helper.make_node("Mul", [d, "inv"], ["n"]))
    y = "n"
    if half:
        nodes.append(helper.make_node("Cast", ["n"], ["nh"], to=TensorProto.FLOAT16))
        y = "nh"
    dtype = np.float16 if half else np.float32
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT16 if half else TensorProto.FLOAT, [2, 7, WIDTH])]
    if scale_shape is not None:
        if scale_is_input:
            inputs.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, list(scale_shape)))
        else:
            const("g", rng.uniform(0.5, 1.5, scale_shape).astype(dtype))
        nodes.append(helper.make_node("Mul", ["g", y], ["scaled"]))
        y = "scaled"
        if bias:
            nodes.append(helper.make_node("Add", [y, const("b", rng.uniform(-0.5, 0.5, scale_shape).astype(dtype))],
                                          ["shifted"]))
            y = "shifted"
    nodes.append(helper.make_node("Identity", [y], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT16 if half else TensorProto.FLOAT, None)]
    if extra_output:
        outputs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "norm", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8).SerializeToString()


def _x(shape=(2, 7, WIDTH), dtype=np.float32):
    return np.random.default_rng().normal(0.5, 2.0, shape).astype(dtype)


@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
@pytest.mark.parametrize("spelling", [
    {},
    {"square": "mul"},
    {"inverse": "reciprocal"},
    {"inverse": "one_over"},
    {"inverse": "pow"},
    {"axes_input": True},                 # ReduceMean's axes as an input (opset 18)
    {"scale_shape": (1, 1, WIDTH)},       # a scale with leading ones
    {"bias": False},
    {"scale_shape": None},                # no affine part
    {"eps": 0.0},
])
def test_each_spelling_becomes_one_norm(rms, spelling):
    model = _norm_graph(rms=rms, **spelling)
    kinds = _kinds(model, level=1)
    assert kinds.get(LayerKind.NORMALIZATION) == 1 and LayerKind.REDUCE not in kinds, kinds
    assert LayerKind.ELEMENTWISE not in kinds and LayerKind.UNARY not in kinds, kinds
    _check_against_ort(model, {"x": _x()})


@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_half_input_cast_to_float_and_back_becomes_one_half_norm(rms):
    """Hugging Face's half-precision export: Cast(x, float32) ... Cast(n, float16) * weight."""
    from kilnrt.optimize.pipeline import optimize

    model = _norm_graph(rms=rms, half=True, bias=False)
    net = optimize(kilnrt.to_network(model), 1)
    norms = [l for l in net.layers if l.kind == LayerKind.NORMALIZATION]
    assert len(norms) == 1 and not any(l.kind == LayerKind.CAST for l in net.layers)
    assert norms[0].inputs[0].name == "x" and norms[0].outputs[0].dtype.name == "HALF"
    x = _x(dtype=np.float16)
    g = numpy_helper.to_array(next(i for i in onnx.load_from_string(model).graph.initializer if i.name == "g"))
    xf = x.astype(np.float64)
    d = xf if rms else xf - xf.mean(-1, keepdims=True)
    want = d / np.sqrt((d * d).mean(-1, keepdims=True) + 1e-5) * g.astype(np.float64)
    np.testing.assert_allclose(kilnrt.build(model).run({"x": x})["y"].astype(np.float64), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("near_miss", [
    {"exponent": 4.0},                                # not a square (a cube's mean cancels, so its
                                                      # float32 rounding is ill-conditioned)
    {"var_axes": (1,)},                               # not over the trailing axis
    {"eps": np.full((WIDTH,), 1e-5, np.float32)},     # epsilon per channel
    {"extra_output": "var"},                          # an intermediate is a network output
])
def test_near_misses_stay_as_they_are(near_miss):
    model = _norm_graph(rms=False, **near_miss)
    net = kilnrt.to_network(model)
    assert fuse_normalizations(net, stats := {}) is net and not stats   # nothing matched: the same network
    feeds = {"x": _x()}
    _check_against_ort(model, feeds)


def test_centering_over_other_axes_leaves_an_rms_norm_of_the_centered_tensor():
    """mean over the last axis, mean square over the last two: not a LayerNorm; the mean and the
    subtraction stay, and what follows them is an RMSNorm over two axes."""
    model = _norm_graph(rms=False, var_axes=(1, 2))
    kinds = _kinds(model, level=1)
    assert kinds.get(LayerKind.NORMALIZATION) == 1 and kinds.get(LayerKind.REDUCE) == 1, kinds
    _check_against_ort(model, {"x": _x()})


def test_a_scale_that_is_not_a_constant_stays_a_product():
    model = _norm_graph(rms=True, scale_is_input=True, bias=False)
    kinds = _kinds(model, level=1)
    assert kinds.get(LayerKind.NORMALIZATION) == 1 and kinds.get(LayerKind.ELEMENTWISE) == 1, kinds
    _check_against_ort(model, {"x": _x(), "g": _x((WIDTH,))})


def test_registered_before_the_residual_add_fusion():
    from kilnrt.optimize.pipeline import PIPELINE

    names = [name for name, _, _ in PIPELINE]
    assert names.index("fuse_normalizations") < names.index("fuse_add_norm")
