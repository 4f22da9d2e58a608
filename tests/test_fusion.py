"""Fusion passes: each fires where it should, leaves the numerics unchanged, and a near
miss does not fire."""
from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kilnrt
from kilnrt.network.layers import ActivationType, LayerKind
from kilnrt.optimize.passes.fusion import fuse_conv_epilogue, fuse_conv_scale


class Block(nn.Module):
    """conv-bn-relu, conv-bn, + identity, relu (a ResNet basic block), then a near miss:
    a conv whose output also feeds a second consumer must not absorb the add."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.c3 = nn.Conv2d(c, c, 1)
        for bn in (self.b1, self.b2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y)) + x)
        z = self.c3(y)
        return torch.relu(z + y), z * 2  # z has two consumers: no fusion into c3


def _onnx(model, x) -> bytes:
    f = io.BytesIO()
    torch.onnx.export(model.eval(), (x,), f, input_names=["x"], output_names=["y", "z"], opset_version=17,
                      dynamo=False, do_constant_folding=False)  # keeps BatchNormalization nodes
    return f.getvalue()


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 7)
    return _onnx(Block(), x)


def test_fusions_fire_and_keep_numerics(block):
    net = kilnrt.to_network(block)
    folded = fuse_conv_scale(net, stats := {})
    assert stats["fuse_conv_scale"] == 2
    fused = fuse_conv_epilogue(folded, stats2 := {})
    assert stats2["fuse_conv_epilogue"] == 2  # c1+relu, c2+add+relu; c3 (two consumers) is left alone
    convs = [l for l in fused.layers if l.kind == LayerKind.CONVOLUTION]
    assert [l.params.activation for l in convs] == [ActivationType.RELU, ActivationType.RELU, None]
    assert len(convs[1].inputs) == 4  # the residual
    assert "+" in convs[1].name
    rng = np.random.default_rng()
    x = rng.normal(size=(2, 6, 9, 7)).astype(np.float32)
    ref = ort.InferenceSession(block, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for network in (net, folded, fused):
        out = kilnrt.build(network, optimization_level=0).run({"x": x})
        np.testing.assert_allclose(out["y"], ref[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out["z"], ref[1], rtol=1e-4, atol=1e-4)


def test_default_build_fuses(block):
    engine = kilnrt.build(block)
    convs = [l for l in engine.layers if l.kind == LayerKind.CONVOLUTION]
    assert len(convs) == 3 and sum(l.params.activation is not None for l in convs) == 2
    assert not any(l.kind == LayerKind.SCALE for l in engine.layers)


def _siblings_model(rng) -> bytes:
    """q, k, v = x @ Wq + bq, x @ Wk + bk, x @ Wv + bv; and u = y @ Wu (another input: no merge)."""
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []
    for n, width in (("q", 8), ("k", 8), ("v", 12), ("u", 8)):
        inits += [numpy_helper.from_array(rng.normal(size=(16, width)).astype(np.float32), f"W{n}"),
                  numpy_helper.from_array(rng.normal(size=(width,)).astype(np.float32), f"b{n}")]
        src = "y" if n == "u" else "x"
        nodes += [helper.make_node("MatMul", [src, f"W{n}"], [f"{n}0"]), helper.make_node("Add", [f"{n}0", f"b{n}"], [n])]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 5, 16]) for n in ("x", "y")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("q", "k", "v", "u")]
    graph = helper.make_graph(nodes, "siblings", ins, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_sibling_matmuls_merge_into_one():
    rng = np.random.default_rng()
    model = _siblings_model(rng)
    engine = kilnrt.build(model)
    mms = [l for l in engine.layers if l.kind == LayerKind.MATRIX_MULTIPLY]
    assert len(mms) == 2  # q|k|v merged; u reads another input and stays alone
    assert sum(" | " in l.name for l in mms) == 1
    feeds = {n: rng.normal(size=(3, 5, 16)).astype(np.float32) for n in ("x", "y")}
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)
    out = engine.run(feeds)
    for name, r in zip(("q", "k", "v", "u"), ref):
        np.testing.assert_allclose(out[name], r, rtol=1e-4, atol=1e-4)


def _add_norm_model(rng, also_output: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(rng.normal(size=(16,)).astype(np.float32), n) for n in ("g", "b")]
    nodes = [helper.make_node("Add", ["x", "r"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1, epsilon=1e-5)]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 5, 16]) for n in ("x", "r")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in (["y", "s"] if also_output else ["y"])]
    graph = helper.make_graph(nodes, "addnorm", ins, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@pytest.mark.parametrize("also_output", [False, True])
def test_residual_add_fuses_into_layernorm(also_output):
    rng = np.random.default_rng()
    model = _add_norm_model(rng, also_output)
    engine = kilnrt.build(model)
    norm = next(l for l in engine.layers if l.kind == LayerKind.NORMALIZATION)
    assert len(norm.inputs) == 4 and not any(l.kind == LayerKind.ELEMENTWISE for l in engine.layers)
    assert norm.params.sum_output == also_output and len(norm.outputs) == 1 + also_output
    feeds = {n: rng.normal(size=(3, 5, 16)).astype(np.float32) for n in ("x", "r")}
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)
    out = engine.run(feeds)
    np.testing.assert_allclose(out["y"], ref[0], rtol=1e-4, atol=1e-4)
    if also_output:
        np.testing.assert_allclose(out["s"], ref[1], rtol=1e-6, atol=1e-6)


def _pre_norm_model(rng, blocks: int = 3, width: int = 24, rms: bool = False) -> bytes:
    """A pre-norm transformer's residual stream: x_{i+1} = x_i + W_i norm_i(x_i) (the sum read by
    the next norm and the next add), then a final norm; the scales are created after the adds,
    as some exporters order them."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, x = [], [], "x"
    for i in range(blocks + 1):
        g, b, n = f"g{i}", f"b{i}", f"n{i}"
        if rms:
            nodes.append(helper.make_node("RMSNormalization", [x, g], [n], axis=-1, epsilon=1e-6))
        else:
            nodes.append(helper.make_node("LayerNormalization", [x, g, b], [n], axis=-1, epsilon=1e-5))
        inits += [numpy_helper.from_array(rng.normal(1, 0.3, size=(width,)).astype(np.float32), g),
                  numpy_helper.from_array(rng.normal(0, 0.3, size=(width,)).astype(np.float32), b)]
        if i == blocks:
            break
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, size=(width, width)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [n, f"w{i}"], [f"h{i}"]),
                  helper.make_node("Add", [x, f"h{i}"], [f"x{i + 1}"])]
        x = f"x{i + 1}"
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 7, width])]
    outs = [helper.make_tensor_value_info(f"n{blocks}", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "prenorm", ins, outs, inits[::-1])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10).SerializeToString()


@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_pre_norm_residual_stream_fuses_every_add(rms):
    """Each add feeds a norm and the next add: fused with the sum as a second output; the last
    add feeds only the final norm: fused without it."""
    from kilnrt.optimize.pipeline import optimize

    rng = np.random.default_rng()
    model = _pre_norm_model(rng, rms=rms)
    net = optimize(kilnrt.to_network(model), 3)
    norms = [l for l in net.layers if l.kind == LayerKind.NORMALIZATION]
    assert not any(l.kind in (LayerKind.ELEMENTWISE, LayerKind.POINTWISE) for l in net.layers)
    assert [len(l.outputs) for l in norms] == [1, 2, 2, 1]
    assert all(len(l.inputs) == 4 for l in norms[1:])
    feeds = {"x": rng.normal(size=(2, 7, 24)).astype(np.float32)}
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(kilnrt.build(model).run(feeds)["n3"], ref, rtol=1e-4, atol=1e-4)


class _Sdpa(nn.Module):
    """torch's own attention, exported by the TorchScript exporter: q and k^T pre-scaled."""

    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_attention_fuses_torchs_exported_sdpa():
    rng = np.random.default_rng()
    q, k, v = (torch.from_numpy(rng.normal(size=(2, 3, 7, 8)).astype(np.float32)) for _ in range(3))
    f = io.BytesIO()
    torch.onnx.export(_Sdpa(), (q, k, v), f, input_names=["q", "k", "v"], output_names=["y"], opset_version=17,
                      dynamo=False)
    engine = kilnrt.build(f.getvalue())
    assert [l.kind for l in engine.layers].count(LayerKind.ATTENTION) == 1
    assert not any(l.kind == LayerKind.SOFTMAX for l in engine.layers)
    feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    ref = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(engine.run(feeds)["y"], ref, rtol=1e-4, atol=1e-5)


class _MaskedSdpa(nn.Module):
    """torch's attention with a boolean mask: the export guards the softmax with
    where(isnan(p), 0, p), so fully masked rows give zeros (transformers' default export)."""

    def forward(self, q, k, v, keep):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)


@pytest.mark.parametrize("guard_read_elsewhere", [False, True])
def test_attention_fuses_torchs_exported_sdpa_with_a_boolean_mask(guard_read_elsewhere):
    rng = np.random.default_rng()
    q, k, v = (torch.from_numpy(rng.normal(size=(2, 3, 7, 8)).astype(np.float32)) for _ in range(3))
    keep = torch.from_numpy(rng.random((2, 1, 7, 7)) < 0.6)
    keep[0, 0, 2] = False  # a fully masked query row: the guard's zeros
    keep[1, 0, :, 0] = True
    f = io.BytesIO()
    torch.onnx.export(_MaskedSdpa(), (q, k, v, keep), f, input_names=["q", "k", "v", "keep"], output_names=["y"],
                      opset_version=17, dynamo=False)
    model = onnx.load_from_string(f.getvalue())
    assert [n.op_type for n in model.graph.node].count("IsNaN") == 1
    if guard_read_elsewhere:  # the guarded probabilities are also an output: no fusion
        where = next(n for n in model.graph.node if n.op_type == "Where" and "IsNaN" in
                     {p.op_type for p in model.graph.node if p.output[0] == n.input[0]})
        model.graph.output.append(onnx.helper.make_tensor_value_info(where.output[0], onnx.TensorProto.FLOAT, None))
    engine = kilnrt.build(model.SerializeToString())
    assert [l.kind for l in engine.layers].count(LayerKind.ATTENTION) == (0 if guard_read_elsewhere else 1)
    feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "keep": keep.numpy()}
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    out = engine.run(feeds)
    np.testing.assert_allclose(out["y"], ref[0], rtol=1e-4, atol=1e-5)
    assert not np.isnan(out["y"]).any() and np.abs(out["y"][0, :, 2]).max() == 0.0


class _Downsample(nn.Module):
    """relu(conv3(x) + down(x)) as in a ResNet bottleneck; ``twice``: down(x) also an output."""

    def __init__(self, twice: bool) -> None:
        super().__init__()
        self.c3, self.down, self.twice = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 1), twice

    def forward(self, x):
        d = self.down(x)
        y = torch.relu(self.c3(x) + d)
        return (y, d * 1.5) if self.twice else (y, y * 2)


@pytest.mark.parametrize("twice", [False, True])
def test_residual_conv_bias_moves_into_its_consumer(twice):
    torch.manual_seed(np.random.randint(1 << 30))
    x = torch.randn(2, 4, 7, 5)
    m = _Downsample(twice).eval()
    with torch.no_grad():
        m.down.bias.uniform_(-1, 1)
    f = io.BytesIO()
    torch.onnx.export(m, (x,), f, input_names=["x"], output_names=["y", "z"], opset_version=17, dynamo=False)
    engine = kilnrt.build(f.getvalue())
    convs = [l for l in engine.layers if l.kind == LayerKind.CONVOLUTION]
    anchor = next(l for l in convs if len(l.inputs) > 3)  # the one that took the add (+ relu)
    residual = next(l for l in convs if l.outputs[0] == anchor.inputs[3])
    has_bias = len(residual.inputs) > 2 and residual.inputs[2] is not None
    assert has_bias == twice  # read elsewhere too: its bias must stay
    ref = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    out = engine.run({"x": x.numpy()})
    np.testing.assert_allclose(out["y"], ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["z"], ref[1], rtol=1e-5, atol=1e-5)


class SqueezeExcite(nn.Module):
    """An EfficientNet block's squeeze-excitation (pool, 1x1 conv, SiLU, 1x1 conv, sigmoid, x * gate)
    and, depending on ``variant``, a near miss: the pool also read elsewhere ("pool_read"), a 3x3
    second convolution ("conv3x3"), no gate activation ("no_gate"), or a pool over H only ("pool_h")."""

    def __init__(self, c: int = 12, s: int = 3, variant: str = "") -> None:
        super().__init__()
        self.variant = variant
        self.f1 = nn.Conv2d(c, s, 1)
        self.f2 = nn.Conv2d(s, c, 3, padding=1) if variant == "conv3x3" else nn.Conv2d(s, c, 1)

    def forward(self, x):
        pooled = x.mean(2, keepdim=True) if self.variant == "pool_h" else F.adaptive_avg_pool2d(x, 1)
        z = self.f2(F.silu(self.f1(pooled)))
        gate = z if self.variant == "no_gate" else torch.sigmoid(z)
        y = x * gate
        return (y, pooled * 2) if self.variant == "pool_read" else (y, x + 1)


@pytest.mark.parametrize("variant", ["", "pool_read", "conv3x3", "no_gate", "pool_h"])
def test_squeeze_excitation_fuses_into_one_gate(variant, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 12, 7, 5)
    model = _onnx(SqueezeExcite(variant=variant), x)
    engine = kilnrt.build(model)
    kinds = [l.kind for l in engine.layers]
    if variant:
        assert LayerKind.SQUEEZE_EXCITATION not in kinds
    else:
        (gate,) = [l for l in engine.layers if l.kind == LayerKind.SQUEEZE_EXCITATION]
        assert gate.params.activation == ActivationType.SILU and gate.params.gate == ActivationType.SIGMOID
        assert LayerKind.REDUCE not in kinds and LayerKind.CONVOLUTION not in kinds
        assert len(gate.origin) >= 5     # pool, conv, sigmoid + mul (SiLU), conv, sigmoid
    xs = np.random.default_rng().normal(size=(2, 12, 7, 5)).astype(np.float32)
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": xs})
    engine.save(tmp_path / "se.plan")                     # the fused layer's params survive a plan
    for e in (engine, kilnrt.load(tmp_path / "se.plan")):
        out = e.run({"x": xs})
        np.testing.assert_allclose(out["y"], ref[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["z"], ref[1], rtol=1e-4, atol=1e-5)


def _random_bn(bn: nn.BatchNorm1d) -> nn.BatchNorm1d:
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return bn


class LinearNorms(nn.Module):
    """LeViT's linear + BatchNorm1d over [tokens, features] (no bias, through reshapes), a
    linear with a bias and its norm on 2-D rows, and two near misses: a linear read twice,
    and a norm over features that a reshape made of two linear outputs' dims."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.n1 = nn.Linear(6, 8, bias=False), _random_bn(nn.BatchNorm1d(8))
        self.l2, self.n2 = nn.Linear(6, 5), _random_bn(nn.BatchNorm1d(5))
        self.l3, self.n3 = nn.Linear(6, 4), _random_bn(nn.BatchNorm1d(4))
        self.l4, self.n4 = nn.Linear(6, 4), _random_bn(nn.BatchNorm1d(12))

    def forward(self, x, r):
        b, n, _ = x.shape
        y = self.n1(self.l1(x).flatten(0, 1)).reshape(b, n, 8)
        z = torch.relu(self.n2(self.l2(r)))
        h = self.l3(r)
        w = self.n3(h) + h                                   # h read twice: not folded
        v = self.n4(self.l4(x).reshape(b * n // 3, 12))      # the last dim changes: not folded
        return y, z, w, v


def test_matmul_scale_folds_a_linear_layers_batch_norm():
    from kilnrt.optimize.passes.cleanup import fold_constants
    from kilnrt.optimize.passes.fusion import fuse_matmul_scale

    torch.manual_seed(0)
    x, r = torch.randn(2, 3, 6), torch.randn(7, 6)
    f = io.BytesIO()
    torch.onnx.export(LinearNorms().eval(), (x, r), f, input_names=["x", "r"], output_names=["y", "z", "w", "v"],
                      opset_version=17, dynamo=False, do_constant_folding=False)
    model = f.getvalue()
    net = fold_constants(kilnrt.to_network(model))   # the weights' Transpose: constants, as the optimizer has them
    assert sum(l.kind == LayerKind.SCALE for l in net.layers) == 4
    folded = fuse_matmul_scale(net, stats := {})
    assert stats["fuse_matmul_scale"] == 2 + 3   # the matmul and its scale; the Gemm, its bias add and its scale
    assert sum(l.kind == LayerKind.SCALE for l in folded.layers) == 2
    rng = np.random.default_rng()
    feeds = {"x": rng.normal(size=(2, 3, 6)).astype(np.float32), "r": rng.normal(size=(7, 6)).astype(np.float32)}
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)
    for network in (folded, kilnrt.to_network(model)):
        out = kilnrt.build(network, optimization_level=0).run(feeds)
        for name, w in zip(("y", "z", "w", "v"), want):
            np.testing.assert_allclose(out[name], w, rtol=1e-4, atol=1e-4, err_msg=name)
    engine = kilnrt.build(model)
    assert sum(l.kind == LayerKind.SCALE for l in engine.layers) <= 2


class LinearNormAct(nn.Module):
    """LeViT's MLP: linear + BatchNorm1d through reshapes, hardswish, linear + BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.n1 = nn.Linear(6, 12, bias=False), _random_bn(nn.BatchNorm1d(12))
        self.l2, self.n2 = nn.Linear(12, 6, bias=False), _random_bn(nn.BatchNorm1d(6))

    def forward(self, x):
        b, n, _ = x.shape
        h = F.hardswish(self.n1(self.l1(x).flatten(0, 1)).reshape(b, n, 12))
        return self.n2(self.l2(h).flatten(0, 1)).reshape(b, n, 6) + x


def test_default_build_folds_linear_norms_and_takes_the_activation_past_reshapes():
    torch.manual_seed(0)
    f = io.BytesIO()
    torch.onnx.export(LinearNormAct().eval(), (torch.randn(2, 5, 6),), f, input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False, do_constant_folding=False)
    engine = kilnrt.build(f.getvalue())
    mms = [l for l in engine.layers if l.kind == LayerKind.MATRIX_MULTIPLY]
    assert [l.params.activation for l in mms] == [ActivationType.HARD_SWISH, None]
    assert all(len(l.inputs) == 3 for l in mms)   # the folded norms' biases
    assert not any(l.kind in (LayerKind.SCALE, LayerKind.ACTIVATION) for l in engine.layers)
    x = np.random.default_rng().normal(size=(2, 5, 6)).astype(np.float32)
    want = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(engine.run({"x": x})["y"], want, rtol=1e-4, atol=1e-4)


class LinearNormRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l, self.n = nn.Linear(6, 8), _random_bn(nn.BatchNorm1d(8))

    def forward(self, x):
        return torch.relu(self.n(self.l(x))).reshape(7, 2, 4).reshape(7, 8) * 2.0


def test_matmul_folds_keep_precision_pins():
    """A matmul pinned to FP32 and its norm (or, once folded, its activation) pinned to FP16:
    neither fold nor epilogue takes them, and the result stays right (an activation dropped
    from a refused epilogue showed as negative outputs of a ReLU)."""
    from kilnrt.network.dtypes import DataType
    from kilnrt.optimize.passes.cleanup import fold_constants
    from kilnrt.optimize.passes.fusion import fuse_matmul_scale
    from kilnrt.optimize.passes.transformer import fuse_matmul_epilogue

    torch.manual_seed(0)
    f = io.BytesIO()
    torch.onnx.export(LinearNormRelu().eval(), (torch.randn(7, 6),), f, input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False, do_constant_folding=False)
    model = f.getvalue()

    def pinned(net, second):
        for layer in net.layers:
            if layer.kind == LayerKind.MATRIX_MULTIPLY:
                layer.precision = DataType.FLOAT
            if layer.kind == second:
                layer.precision = DataType.HALF
        return net

    x = np.random.default_rng().normal(size=(7, 6)).astype(np.float32)
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    net = fuse_matmul_scale(pinned(fold_constants(kilnrt.to_network(model)), LayerKind.SCALE), stats := {})
    assert "fuse_matmul_scale" not in stats
    folded = pinned(fuse_matmul_scale(fold_constants(kilnrt.to_network(model)), {}), LayerKind.ACTIVATION)
    epilogue = fuse_matmul_epilogue(folded, stats := {})
    assert "fuse_matmul_epilogue" not in stats
    assert any(l.kind == LayerKind.ACTIVATION for l in epilogue.layers)
    for network in (net, epilogue):
        np.testing.assert_allclose(kilnrt.build(network, optimization_level=0).run({"x": x})["y"], want,
                                   rtol=1e-4, atol=1e-4)


class NormConv(nn.Module):
    """BatchNorm -> convolution (a pre-norm), and in ``variant`` a near miss."""

    def __init__(self, kernel: int, padding: int, groups: int, variant: str) -> None:
        super().__init__()
        self.bn, self.conv, self.variant = _random_bn(nn.BatchNorm2d(8)), nn.Conv2d(8, 12, kernel, padding=padding,
                                                                                     groups=groups), variant
        if variant == "no_shift":   # a pure scale: padding reads zeros either way
            with torch.no_grad():
                self.bn.running_mean.zero_()
                self.bn.bias.zero_()

    def forward(self, x):
        n = self.bn(x)
        y = self.conv(n)
        return (y, n * 2) if self.variant == "norm_read_twice" else (y, y + 1)


@pytest.mark.parametrize("kernel,padding,groups,variant,folds", [
    (1, 0, 1, "", True),                  # MaxViT's pre-norm before its expand convolution
    (3, 0, 1, "", True),                  # any window that pads nothing
    (3, 0, 4, "", True),                  # grouped: each output channel reads its group's inputs
    (2, 0, 2, "", True),
    (3, 1, 1, "", False),                 # padded: the border would read 0 where it reads the shift
    (3, 1, 1, "no_shift", True),          # padded, but the norm only scales
    (1, 0, 1, "norm_read_twice", False),  # the norm's output is read by another layer too
])
def test_conv_input_scale_folds_a_norm_before_a_convolution(kernel, padding, groups, variant, folds):
    from kilnrt.optimize.passes.fusion import fuse_conv_input_scale

    torch.manual_seed(np.random.randint(1 << 30))
    x = torch.randn(2, 8, 9, 7)
    f = io.BytesIO()
    torch.onnx.export(NormConv(kernel, padding, groups, variant).eval(), (x,), f, input_names=["x"],
                      output_names=["y", "z"], opset_version=17, dynamo=False)
    model = f.getvalue()
    net = kilnrt.to_network(model)
    assert sum(l.kind == LayerKind.SCALE for l in net.layers) == 1
    folded = fuse_conv_input_scale(net, stats := {})
    assert stats.get("fuse_conv_input_scale", 0) == int(folds)
    assert sum(l.kind == LayerKind.SCALE for l in folded.layers) == int(not folds)
    feeds = {"x": np.random.default_rng().normal(size=(2, 8, 9, 7)).astype(np.float32)}
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)
    for engine in (kilnrt.build(folded, optimization_level=0), kilnrt.build(model)):
        out = engine.run(feeds)
        for name, w in zip(("y", "z"), want):
            np.testing.assert_allclose(out[name], w, rtol=1e-4, atol=1e-4, err_msg=name)


class ShiftedWindowAttention(nn.Module):
    """Swin's attention in shifted windows: a relative position bias added to the scores,
    the scores viewed 5-D per image and window to add the shift mask, viewed back, then the
    softmax. ``variant``: "flat_softmax" views them as [.., h, n * n] for the softmax instead
    (another function: no fusion); "two_biases" adds two constants with no view between."""

    def __init__(self, windows: int, heads: int, n: int, variant: str) -> None:
        super().__init__()
        self.windows, self.heads, self.n, self.variant = windows, heads, n, variant
        self.bias = nn.Parameter(torch.randn(1, heads, n, n))
        self.register_buffer("mask", (torch.rand(1, windows, 1, n, n) < 0.3).float() * -100.0)

    def forward(self, q, k, v):
        a = q @ k.transpose(-2, -1) * 0.25 + self.bias
        if self.variant == "two_biases":
            return (a + self.mask[0, :1]).softmax(-1) @ v
        a = a.view(-1, self.windows, self.heads, self.n, self.n) + self.mask
        if self.variant == "flat_softmax":
            return a.view(-1, self.heads, self.n * self.n).softmax(-1).view(-1, self.heads, self.n, self.n) @ v
        return a.view(-1, self.heads, self.n, self.n).softmax(-1) @ v


@pytest.mark.parametrize("variant,fused", [("", True), ("two_biases", True), ("flat_softmax", False)])
def test_attention_gathers_constant_masks_across_views(variant, fused):
    torch.manual_seed(np.random.randint(1 << 30))
    batch, windows, heads, n, d = 2, 4, 3, 7, 8
    q, k, v = (torch.randn(batch * windows, heads, n, d) for _ in range(3))
    f = io.BytesIO()
    torch.onnx.export(ShiftedWindowAttention(windows, heads, n, variant).eval(), (q, k, v), f,
                      input_names=["q", "k", "v"], output_names=["y"], opset_version=17, dynamo=False)
    engine = kilnrt.build(f.getvalue())
    kinds = [l.kind for l in engine.layers]
    assert kinds.count(LayerKind.ATTENTION) == int(fused), kinds
    rng = np.random.default_rng()
    feeds = {name: rng.normal(size=(batch * windows, heads, n, d)).astype(np.float32) for name in "qkv"}
    want = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(engine.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)
