"""The memory budget a plan is checked against at load (kilnrt.engine.plan_budget): what the
layers will really allocate, measured on meta tensors at the profiles' largest shapes, plus the
weights; a plan edited to ask for more (checksum recomputed) is refused before it runs."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import kilnrt
from kilnrt.engine.plan import pack, unpack
from kilnrt.engine.plan_budget import activation_peak, parse_budget, shape_sets, weight_bytes
from kilnrt.errors import ErrorCode, KilnError, PlanError
from kilnrt.fuzzing import PROFILE, base_model

RNG = np.random.default_rng()


@pytest.fixture(scope="module")
def plan() -> bytes:
    return kilnrt.build(base_model(), profiles=PROFILE).serialize()


def edited(plan: bytes, edit) -> bytes:
    header, weights, kernels = unpack(plan)
    header = copy.deepcopy(header)
    edit(header)
    return pack(header, weights, kernels)   # the checksum is recomputed


def test_measured_bytes_are_the_weights_and_the_peak_of_live_activations(plan):
    engine = kilnrt.load(plan)
    assert weight_bytes(engine) == 4 * (4 * 2 * 3 * 3 + 4 + 5 * 16 + 5)
    (shapes,) = shape_sets(engine, engine.profiles)
    assert shapes == {"x": (4, 2, 6, 6)}                     # the profile's max
    # x [4,2,6,6] and conv+relu [4,4,6,6] are alive together; later tensors are smaller
    assert activation_peak(engine, shapes) == 4 * (4 * 2 * 6 * 6 + 4 * 4 * 6 * 6)


def test_params_that_blow_up_an_activation_are_refused_at_load(plan):
    def pad(header):   # 160 bytes of JSON that make the convolution's output ~600 GB
        header["layers"][0]["params"]["pre_padding"] = {"tuple": [100000, 100000]}

    with pytest.raises(PlanError) as info:
        kilnrt.load(edited(plan, pad))
    err = info.value
    assert err.code == ErrorCode.PLAN_OVER_BUDGET
    assert "bytes of activations at input shapes x=[4, 2, 6, 6]" in err.message
    assert "more than the memory budget" in err.message and "memory_budget=" in err.message


def test_a_profile_asking_for_more_than_the_budget_is_refused(plan):
    def huge_batch(header):
        header["profiles"][0]["x"][2][0] = 10 ** 9

    with pytest.raises(PlanError, match=r"PLAN_OVER_BUDGET.*x=\[1000000000, 2, 6, 6\]"):
        kilnrt.load(edited(plan, huge_batch), memory_budget="64G")


def test_the_budget_is_the_callers_to_set(plan, monkeypatch):
    need = 644 + 4 * (4 * 2 * 6 * 6 + 4 * 4 * 6 * 6)
    assert kilnrt.load(plan, memory_budget=need).run({"x": RNG.standard_normal((4, 2, 6, 6)).astype(np.float32)})
    with pytest.raises(PlanError, match=rf"asks for .*\({need} bytes\).* budget of 4.0 KiB \({need - 1} bytes\) \(the budget given\)"):
        kilnrt.load(plan, memory_budget=need - 1)
    runtime = kilnrt.Runtime()
    runtime.memory_budget = "1K"
    with pytest.raises(PlanError, match="budget of 1.0 KiB"):
        runtime.deserialize_cuda_engine(plan)
    monkeypatch.setenv("KILNRT_MEMORY_BUDGET", "2000")
    with pytest.raises(PlanError, match=r"budget of 2.0 KiB \(2000 bytes\) \(\$KILNRT_MEMORY_BUDGET\)"):
        kilnrt.load(plan)
    assert kilnrt.load(plan, memory_budget="1M")   # the caller's value wins over the variable


@pytest.mark.parametrize("value", [0, -5, "lots", True, 1.5])
def test_a_budget_that_is_not_a_size_is_an_error(plan, value):
    with pytest.raises(KilnError, match="memory_budget must be a positive number of bytes"):
        kilnrt.load(plan, memory_budget=value)


def test_budget_strings():
    assert parse_budget("8G") == 8 << 30 and parse_budget("512MiB") == 512 << 20
    assert parse_budget("1.5k") == 1536 and parse_budget(" 100 ") == 100


def test_the_default_budget_is_the_memory_available(plan, monkeypatch):
    monkeypatch.delenv("KILNRT_MEMORY_BUDGET", raising=False)
    from kilnrt.engine import plan_budget

    monkeypatch.setattr(plan_budget, "device_memory", lambda device: 1500)
    with pytest.raises(PlanError, match=r"budget of 1.5 KiB \(1500 bytes\) \(the cpu memory available\)"):
        kilnrt.load(plan)
    monkeypatch.undo()
    assert 0 < plan_budget.device_memory("cpu")


def test_engine_deserialize_takes_the_callers_budget():
    """Engine.deserialize (the trt facade's and kilnrt.load's path) checks the budget it is given."""
    import os

    digits = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "digits.onnx")
    data = kilnrt.build(digits).serialize()
    assert kilnrt.Engine.deserialize(data, memory_budget="1G").num_layers > 0
    with pytest.raises(PlanError, match="budget"):
        kilnrt.Engine.deserialize(data, memory_budget=1024)


def _shape_times_c_plan(op: str) -> bytes:
    """x [b, 2] -> Shape -> Mul(c) -> ConstantOfShape or Range(0, ., 1): a layer whose size
    comes from a small real value, as edited constants make it."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([1, 1], np.int64), "c")]
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Mul", ["s", "c"], ["n"])]
    if op == "ConstantOfShape":
        nodes.append(helper.make_node("ConstantOfShape", ["n"], ["y"],
                                      value=numpy_helper.from_array(np.array([1.0], np.float32))))
    else:
        inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in (("zero", 0), ("one", 1), ("i0", [0]))]
        nodes += [helper.make_node("Gather", ["n", "i0"], ["n0"]), helper.make_node("Squeeze", ["n0"], ["limit"]),
                  helper.make_node("Range", ["zero", "limit", "one"], ["y"])]
    graph = helper.make_graph(nodes, "fill", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return kilnrt.build(model.SerializeToString(), profiles={"x": [(1, 2), (2, 2), (4, 2)]}).serialize()


@pytest.mark.parametrize("op, c", [("ConstantOfShape", [1 << 20, 1 << 20]),   # [4, 2] * c: 32 TiB of float32
                                   ("Range", [1 << 40, 1])])                  # 4 * 2^40 int64: 32 TiB
def test_a_fill_sized_by_an_edited_constant_is_measured_without_allocating_it(op, c):
    """A Fill/Range layer has only shape inputs, which stay real while the plan is measured:
    its output must still be made on the meta device (it used to be allocated for real, 16 GB
    at load for a 1 MiB budget, or skipped as unmeasurable when too large to allocate)."""
    import resource

    data = _shape_times_c_plan(op)
    assert kilnrt.load(data, memory_budget="1M").run({"x": np.ones((2, 2), np.float32)})
    header, weights, kernels = unpack(data)
    weights = dict(weights, c=np.array(c, np.int64))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PlanError) as info:
        kilnrt.load(pack(header, weights, kernels), memory_budget="1G")
    assert info.value.code == ErrorCode.PLAN_OVER_BUDGET and "at input shapes x=[4, 2]" in info.value.message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 << 10   # KiB: nothing big was made


def test_a_plugin_that_reads_an_input_value_is_measured_by_its_shape_rule():
    """Col2Im (a built-in plugin) reads its image shape from an input that is no shape input,
    so its kernel cannot run on meta tensors: its shape rule measures it (its output was
    not counted, and a plan with an edited image shape loaded under any budget)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("image", [4, 4]), ("block", [2, 2]))]
    node = helper.make_node("Col2Im", ["x", "image", "block"], ["y"], strides=[2, 2])
    graph = helper.make_graph([node], "col2im", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    data = kilnrt.build(model.SerializeToString(), profiles={"x": [(1, 4, 4), (2, 4, 4), (4, 4, 4)]}).serialize()
    engine = kilnrt.load(data)
    (shapes,) = shape_sets(engine, engine.profiles)
    assert activation_peak(engine, shapes) == 4 * (4 * 4 * 4 + 4 * 1 * 4 * 4)    # x and y
    header, weights, kernels = unpack(data)
    header = copy.deepcopy(header)
    (layer,) = header["layers"]
    layer["params"]["fields"] = {"tuple": [{"tuple": ["dilations", None]}, {"tuple": ["pads", None]},
                                           {"tuple": ["strides", {"tuple": [1998, 1998]}]}]}
    big = pack(header, dict(weights, image=np.array([2000, 2000], np.int64)), kernels)   # y [4, 1, 2000, 2000]
    with pytest.raises(PlanError, match=r"PLAN_OVER_BUDGET.* \(32 bytes of weights \+ 64000256 bytes"):
        kilnrt.load(big, memory_budget="1M")
    assert kilnrt.load(big, memory_budget="1G").run({"x": np.ones((4, 4, 4), np.float32)})["y"].shape == \
        (4, 1, 2000, 2000)
