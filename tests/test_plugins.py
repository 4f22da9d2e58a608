"""The plugin API: ONNX custom-domain ops, the network API, TensorRT's decorators and creators, PyTorch
custom ops, plans loaded in a fresh process, shape rules over dynamic dims, and the errors."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import kilnrt
import kilnrt.plugins as kp
from kilnrt.errors import KilnError, NetworkError, PlanError
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.testing import fresh_seed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the plugin a fresh process registers by importing this module's text
PLUGIN_MODULE = textwrap.dedent('''
    import torch
    import kilnrt.plugins as kp

    def _shape(x, *, alpha, shift):
        return x.like()

    @kp.register("test.ops::scaled_tanh", version="2", shape=_shape)
    def scaled_tanh(x: torch.Tensor, *, alpha: float = 1.0, shift: tuple[float, ...] = (0.0,)) -> torch.Tensor:
        return alpha * torch.tanh(x) + torch.tensor(shift, dtype=x.dtype)
''')


def _scaled_tanh_reference(x, alpha, shift):
    return alpha * np.tanh(x.astype(np.float64)) + np.asarray(shift)


@pytest.fixture
def rng():
    seed = fresh_seed()
    return np.random.default_rng(seed)


@pytest.fixture
def plugin_module(tmp_path):
    (tmp_path / "scaled_tanh_plugin.py").write_text(PLUGIN_MODULE)
    sys.path.insert(0, str(tmp_path))
    import importlib

    module = importlib.import_module("scaled_tanh_plugin")
    yield module
    kp.deregister("test.ops::scaled_tanh")
    sys.modules.pop("scaled_tanh_plugin", None)
    sys.path.remove(str(tmp_path))


def _onnx_model(alpha: float, shift: list[float]):
    node = helper.make_node("scaled_tanh", ["x"], ["t"], domain="test.ops", alpha=alpha, shift=shift)
    relu = helper.make_node("Relu", ["t"], ["y"])
    graph = helper.make_graph([node, relu], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("test.ops", 1)])


def _run_fresh(code: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd), ROOT]))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_onnx_custom_op_plan_loads_in_a_fresh_process(plugin_module, tmp_path, rng):
    model = _onnx_model(0.5, [0.25, -0.5, 0.1])
    engine = kilnrt.build(model.SerializeToString(), profiles={"x": ((1, 3), (4, 3), (8, 3))})
    [layer] = [l for l in engine.layers if l.kind.value == "plugin"]
    assert layer.tactic == "cpu.plugin.torch" and layer.params.namespace == "test.ops" and layer.params.version == "2"
    for n in (1, 6):
        x = rng.standard_normal((n, 3)).astype(np.float32)
        want = np.maximum(_scaled_tanh_reference(x, 0.5, [0.25, -0.5, 0.1]), 0)
        np.testing.assert_allclose(engine.run({"x": x})["y"], want, rtol=1e-5, atol=1e-6)
    engine.save(str(tmp_path / "model.plan"))
    x = rng.standard_normal((5, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", np.maximum(_scaled_tanh_reference(x, 0.5, [0.25, -0.5, 0.1]), 0))

    registered = _run_fresh(textwrap.dedent("""
        import numpy as np, kilnrt, scaled_tanh_plugin
        y = kilnrt.load("model.plan").run({"x": np.load("x.npy")})["y"]
        np.testing.assert_allclose(y, np.load("want.npy"), rtol=1e-5, atol=1e-6)
        print("OK")
    """), tmp_path)
    assert registered.returncode == 0 and "OK" in registered.stdout, registered.stderr

    missing = _run_fresh(textwrap.dedent("""
        import kilnrt
        try:
            kilnrt.load("model.plan")
        except kilnrt.PlanError as exc:
            print("ERROR", exc)
    """), tmp_path)
    assert missing.returncode == 0, missing.stderr
    assert "ERROR" in missing.stdout and "test.ops::scaled_tanh version 2 is not registered" in missing.stdout
    assert "kilnrt.plugins.register" in missing.stdout and "docs/plugins.md" in missing.stdout


def test_onnx_attribute_errors_and_unknown_op(plugin_module):
    bad = _onnx_model(0.5, [0.0])
    bad.graph.node[0].attribute.append(helper.make_attribute("beta", 2.0))
    with pytest.raises(KilnError, match=r"unknown attribute 'beta'; plugin test.ops::scaled_tanh takes: alpha \(float\)"):
        kilnrt.build(bad.SerializeToString())
    unknown = _onnx_model(0.5, [0.0])
    unknown.graph.node[0].op_type = "scaled_sine"
    with pytest.raises(KilnError, match=r"register a plugin for it: @kilnrt.plugins.register\('test.ops::scaled_sine'\)"):
        kilnrt.build(unknown.SerializeToString())


# ----------------------------------------------------------------------------- network API, shape rules
@pytest.fixture(scope="module")
def split_norm():
    """Two outputs whose shapes are expressions of the input's dims, and a shape input."""

    def shape(x, *, eps):
        return kp.TensorDesc((x.shape[0], x.shape[1] * 2), x.dtype), kp.TensorDesc((x.shape[0],), DataType.FLOAT)

    @kp.register("test.net::split_norm", shape=shape, num_outputs=2)
    def split_norm(x: torch.Tensor, *, eps: float = 1e-6):
        norm = torch.sqrt((x.float() ** 2).sum(-1) + eps)
        return torch.cat([x, -x], dim=1), norm

    def tile_shape(x, reps):
        return kp.TensorDesc((x.shape[0] * reps.value[0], x.shape[1]), x.dtype)

    @kp.register("test.net::tile_rows", shape=tile_shape)
    def tile_rows(x: torch.Tensor, reps: torch.Tensor):
        return x.repeat(int(reps.tolist()[0]), 1)

    yield split_norm
    kp.deregister("test.net::split_norm")
    kp.deregister("test.net::tile_rows")


def test_network_api_dynamic_dims(split_norm, rng):
    net = Network()
    x = net.add_input("x", DataType.FLOAT, ("batch", "n"))
    layer = net.add_plugin_v3([x], [], split_norm.instance(eps=1e-3))
    assert layer.outputs[0].shape == ("batch", "2*n") and layer.outputs[1].shape == ("batch",)
    reps = net.add_constant((1,), np.array([3], np.int64)).get_output(0)
    tiled = net.add_plugin_v3([layer.outputs[0]], [reps], kp.instance("test.net::tile_rows"))
    assert tiled.outputs[0].shape == ("3*batch", "2*n")
    net.mark_output(tiled.outputs[0])
    net.mark_output(layer.outputs[1])
    engine = kilnrt.build(net, profiles={"x": ((1, 1), (2, 4), (6, 8))})
    for shape in ((1, 3), (5, 8)):
        xv = rng.standard_normal(shape).astype(np.float32)
        out = engine.run({"x": xv})
        x64 = xv.astype(np.float64)
        np.testing.assert_allclose(out[tiled.outputs[0].name], np.tile(np.concatenate([x64, -x64], 1), (3, 1)),
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(out[layer.outputs[1].name], np.sqrt((x64 ** 2).sum(-1) + 1e-3), rtol=1e-5)


def test_network_api_errors(split_norm):
    net = Network()
    x = net.add_input("x", DataType.FLOAT, (2, 3))
    with pytest.raises(KilnError, match=r"attribute 'eps' must be a float, got 'big'"):
        split_norm.instance(eps="big")
    with pytest.raises(KilnError, match=r"add_plugin_v3 needs a plugin from creator.create_plugin"):
        net.add_plugin_v3([x], [], "test.net::split_norm")
    with pytest.raises(KilnError, match=r"plugin test.net::nothing is not registered; registered plugins with "
                                        r"similar names: test.net::tile_rows"):
        kp.instance("test.net::nothing")

    @kp.register("test.net::bad_rule", shape=lambda x: (x.like(), x.like()))
    def bad_rule(x):
        return x

    try:
        layer = net.add_plugin_v3([x], [], bad_rule.instance())
        with pytest.raises(NetworkError, match=r"test.net::bad_rule v1: its shape rule returned .*; it must return 1 "
                                               r"TensorDesc"):
            layer.outputs[0].shape
    finally:
        kp.deregister("test.net::bad_rule")
    with pytest.raises(KilnError, match="already registered"):
        kp.register("test.net::split_norm", shape=lambda x, *, eps: x.like())(lambda x, *, eps=1.0: x)


def test_plan_attributes_are_checked_against_the_registered_plugin(split_norm):
    from kilnrt.kernels.plugin import require
    from kilnrt.network.layers import PluginParams

    require(split_norm.instance(eps=0.5).params)
    with pytest.raises(PlanError, match=r"attribute 'eps' is 'x', not float"):
        require(PluginParams("split_norm", "1", (("eps", "x"),), "test.net"))
    with pytest.raises(PlanError, match=r"its attributes are \['code'\]"):
        require(PluginParams("split_norm", "1", (("code", "import os"),), "test.net"))


# ----------------------------------------------------------------------------- TensorRT's decorators and creators
def test_trt_plugin_decorators_and_creator_lookup(rng):
    import kilnrt.trt as trt
    import kilnrt.trt.plugin as trtp
    from kilnrt.kernels.registry import all_tactics

    calls = []

    @trtp.register("qdp_test::add_delta")
    def add_desc(inp0: trtp.TensorDesc, delta: float) -> trtp.TensorDesc:
        return inp0.like()

    @trtp.impl("qdp_test::add_delta")
    def add_impl(inp0: trtp.Tensor, delta: float, outputs, stream, tactic: int) -> None:
        calls.append(tactic)
        outputs[0].copy_(inp0 + delta)

    @trtp.autotune("qdp_test::add_delta")
    def add_tune(inp0: trtp.TensorDesc, outputs):
        c = trtp.AutoTuneCombination()
        c.tactics([1, 2])
        return [c]

    try:
        assert {"cuda.plugin.qdp_test::add_delta.v1.tactic1", "cuda.plugin.qdp_test::add_delta.v1.tactic2"} \
            <= set(all_tactics())
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        x = network.add_input("x", trt.float32, (-1, 3))
        first = network.add_plugin(trtp.op.qdp_test.add_delta(x, delta=2.5))
        creator = trt.get_plugin_registry().get_creator("add_delta", "1", "qdp_test")
        assert [f.name for f in creator.field_names] == ["delta"]
        fields = trt.PluginFieldCollection([trt.PluginField("delta", np.array([-1.0], np.float32),
                                                            trt.PluginFieldType.FLOAT32)])
        second = network.add_plugin_v3([first.get_output(0)], [], creator.create_plugin("minus", fields,
                                                                                          trt.TensorRTPhase.BUILD))
        network.mark_output(second.get_output(0))
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        profile.set_shape("x", (1, 3), (2, 3), (4, 3))
        config.add_optimization_profile(profile)
        engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
        xv = rng.standard_normal((3, 3)).astype(np.float32)
        [y] = engine.run({"x": xv}).values()
        np.testing.assert_allclose(y, xv.astype(np.float64) + 1.5, rtol=1e-6, atol=1e-6)
        assert calls and set(calls) == {1}   # the CPU reference runs the first tactic
        assert trt.get_plugin_registry().get_creator("add_delta", "1", "other") is None
    finally:
        kp.deregister("qdp_test::add_delta")
    assert "cuda.plugin.qdp_test::add_delta.v1.tactic1" not in all_tactics()


# ----------------------------------------------------------------------------- PyTorch custom ops
@torch.library.custom_op("kilnrt_test::shift_scale", mutates_args=())
def shift_scale(x: torch.Tensor, y: torch.Tensor, shift: float, reps: int) -> torch.Tensor:
    return (x * y + shift).repeat(1, reps)


@shift_scale.register_fake
def _(x, y, shift, reps):
    return x.new_empty(x.shape[0], x.shape[1] * reps)


class _UsesCustomOp(torch.nn.Module):
    def forward(self, x, y):
        return torch.relu(torch.ops.kilnrt_test.shift_scale(x, y, 0.5, 2)) * 2


def test_torch_custom_op_runs_as_itself_with_dynamic_batch(tmp_path):
    torch.manual_seed(fresh_seed())
    m = _UsesCustomOp()
    batch = torch.export.Dim("batch", min=1, max=16)
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    compiled = kilnrt.compile(m, (x, y), dynamic_shapes=({0: batch}, {0: batch}))
    [layer] = [l for l in compiled.engine.layers if l.kind.value == "plugin"]
    assert (layer.params.namespace, layer.params.name) == ("kilnrt_test", "shift_scale")
    assert compiled.engine.tensors[layer.outputs[0]]["shape"] == ["batch", 8]   # the fake impl, probed
    for n in (1, 7):
        a, b = torch.randn(n, 4), torch.randn(n, 4)
        torch.testing.assert_close(compiled(a, b), m(a.double(), b.double()).float(), rtol=1e-5, atol=1e-6)


def test_torch_custom_op_uses_the_registered_plugin_of_its_name():
    torch.manual_seed(fresh_seed())
    calls = []

    @kp.register("kilnrt_test::shift_scale", shape=lambda x, y, *, shift, reps: kp.TensorDesc(
        (x.shape[0], x.shape[1] * reps), x.dtype))
    def plugin(x, y, *, shift: float, reps: int):
        calls.append(reps)
        return (x * y + shift).repeat(1, reps)

    try:
        m = _UsesCustomOp()
        x, y = torch.randn(2, 4), torch.randn(2, 4)
        compiled = kilnrt.compile(m, (x, y))
        torch.testing.assert_close(compiled(x, y), m(x, y), rtol=1e-6, atol=1e-6)
        assert calls and calls[-1] == 2
    finally:
        kp.deregister("kilnrt_test::shift_scale")
