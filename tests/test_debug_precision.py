"""kilnrt debug precision: the search for the layers an FP16 build must keep in FP32, layer
precision constraints, and the mixed-precision build they go through."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import kilnrt
from kilnrt.cli.main import main
from kilnrt.debugging.precision import (NotAPrecisionProblem, build_reduced, find_fp32_layers, fp32_layers,
                                        layers_of, node_order, parse_layer_precisions)
from kilnrt.errors import KilnError
from kilnrt.testing import seeded_inputs

from debug_models import overflow_between_layers, overflow_inside_a_node


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("debug")
    paths = {}
    for name, make in (("between", overflow_between_layers), ("inside", overflow_inside_a_node)):
        paths[name] = str(d / f"{name}.onnx")
        onnx.save(make(), paths[name])
    return paths


# ----------------------------------------------------------------------------- the search alone
UNITS = [f"n{i}" for i in range(12)]


@pytest.mark.parametrize("needed", [{"n7"}, {"n3", "n9"}, {"n0", "n5", "n11"}])
def test_search_finds_exactly_the_needed_units(needed):
    calls = []

    def passes(pinned):
        calls.append(pinned)
        return needed <= pinned

    result = find_fp32_layers(UNITS, passes)
    assert set(result.nodes) == needed
    assert result.nodes == sorted(needed, key=UNITS.index)
    assert result.evaluations == len(set(calls)) <= 2 + len(needed) * 5 + len(needed)


def test_search_empty_when_the_reduced_build_passes_and_refuses_a_non_precision_problem():
    assert find_fp32_layers(UNITS, lambda pinned: True).nodes == []
    with pytest.raises(NotAPrecisionProblem, match="even with every layer in FP32"):
        find_fp32_layers(UNITS, lambda pinned: False)


# ----------------------------------------------------------------------------- constraints
def test_layer_precision_grammar():
    assert parse_layer_precisions("a:fp32,b/*:fp16") == {"a": "fp32", "b/*": "fp16"}
    assert list(parse_layer_precisions(["a:fp16", "b:fp32", "a:fp32"])) == ["b", "a"]   # later overrides
    assert parse_layer_precisions("'x:0':fp32") == {"x:0": "fp32"}
    for bad, text in (("a", "LAYER:PRECISION"), ("a:fp64", "LAYER:PRECISION"), ("*a*:fp32", "one '*'")):
        with pytest.raises(KilnError, match=text):
            parse_layer_precisions(bad)


def test_constraints_match_onnx_nodes_and_wildcards(models):
    net = kilnrt.to_network(models["inside"])
    keep, matched = fp32_layers(net, {"ReduceL2_2": "fp32"})
    assert len(keep) >= 2 and keep == layers_of(net, ["ReduceL2_2"])   # every layer made of the node
    keep, _ = fp32_layers(net, {"Scale*": "fp32"})
    assert keep == {"Scale_1"}
    with pytest.raises(KilnError, match="no layer or ONNX node named 'Nope'.*MatMul_0"):
        fp32_layers(net, {"Nope": "fp32"})
    with pytest.raises(KilnError, match="fp32 only"):
        fp32_layers(net, {"Scale_1": "fp16"})


def test_mixed_precision_rounds_where_fp16_does(models):
    net = kilnrt.to_network(models["between"])
    feeds = seeded_inputs(net, 3)
    fp32 = build_reduced(net, None, device="cpu").run(feeds)["y"]
    kept_all = build_reduced(net, "fp16", device="cpu", keep={l.name for l in net.layers}).run(feeds)["y"]
    np.testing.assert_array_equal(kept_all, fp32)                # every layer kept: the FP32 result, exactly
    reduced = build_reduced(net, "fp16", device="cpu").run(feeds)["y"]
    assert np.isinf(reduced).any()                               # 'scaled' overflows FP16
    x = feeds["x"].astype(np.float16)
    w = onnx.numpy_helper.to_array(onnx.load(models["between"]).graph.initializer[0]).astype(np.float16)
    h = (x.astype(np.float32) @ w.astype(np.float32)).astype(np.float16)
    with np.errstate(over="ignore"):
        assert np.isinf(h * np.float16(1e5)).any() and not np.isinf(fp32).any()


# ----------------------------------------------------------------------------- the command
def test_debug_precision_names_the_node_that_overflows_inside(models, capsys):
    assert main(["debug", "precision", models["inside"], "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "1 of 4 node(s) must stay in FP32" in text and ": ReduceL2_2" in text
    assert "--layerPrecisions='ReduceL2_2:fp32'" in text


def test_debug_precision_between_layers_and_the_constraints_file(models, tmp_path, capsys):
    saved = tmp_path / "fp32.json"
    assert main(["debug", "precision", models["between"], "--save", str(saved)]) == 0
    text = capsys.readouterr().out
    assert "2 of 5 node(s) must stay in FP32" in text and "Mul_big, Mul_small" in text
    data = json.loads(saved.read_text())
    assert data["layer_precisions"] == {"Mul_big": "fp32", "Mul_small": "fp32"} and data["precision"] == "fp16"
    common = ["--fp16", "--rtol", "1e-2", "--atol", "1e-2", "--seed", "5"]       # another seed than the search's
    assert main(["compare", models["between"], *common]) == 1
    assert main(["compare", models["between"], *common, "--layer-precisions", str(saved)]) == 0
    assert "kept in FP32: 2 layer(s)" in capsys.readouterr().out


def test_node_order_follows_the_network(models):
    assert node_order(kilnrt.to_network(models["between"])) == ["MatMul_0", "Mul_big", "Mul_small", "Add_3", "Relu_4"]
