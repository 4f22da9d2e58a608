"""Layer precision constraints in kilnrt.build(layer_precisions=...) and kilnrt build
--layerPrecisions/--precisionConstraints: the named layers stay FP32, the others are lowered
before the optimizer (so no fusion merges a pinned layer into a lowered one)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import kilnrt
from kilnrt.cli.main import main
from kilnrt.debugging.reference import onnxruntime_run
from kilnrt.errors import KilnError
from kilnrt.network.dtypes import DataType
from kilnrt.network.layers import LayerKind
from kilnrt.optimize.passes.precision import constrain_layers, lower_precision
from kilnrt.testing import assert_close, seeded_inputs

from debug_models import overflow_between_layers


@pytest.fixture()
def model(tmp_path):
    seed = int(np.random.SeedSequence().entropy % 2**31)
    path = tmp_path / "between.onnx"
    onnx.save(overflow_between_layers(seed), path)
    return str(path), seed


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_constrained_lowering_keeps_the_overflow_in_fp32(model):
    """Built as lowered (torch's FP16 CPU kernels compute it): pinned by ONNX node name or
    wildcard, the result matches ONNX Runtime; lowered without pins it overflows."""
    path, seed = model
    net = kilnrt.to_network(path)
    feeds = seeded_inputs(net, seed)
    expected = onnxruntime_run(path, feeds)["y"]
    plain = kilnrt.build(lower_precision(net, DataType.HALF), device="cpu").run(feeds)["y"]
    assert not np.isfinite(plain).all()
    for spec in ("Mul_big:fp32,Mul_small:fp32", {"Mul_*": "fp32"}, {"Mul_big": DataType.FLOAT, "Mul_small": "fp32"}):
        low, info = constrain_layers(net, spec, DataType.HALF)
        assert info["lowered"] == "HALF" and len(info["fp32_layers"]) == 2
        pinned = [l for l in low.layers if l.precision == DataType.FLOAT]
        assert {o for l in pinned for o in l.origin} == {"Mul_big", "Mul_small"}
        half = [l for l in low.layers if l.kind == LayerKind.MATRIX_MULTIPLY]
        assert half and all(l.outputs[0].dtype == DataType.HALF for l in half)   # the rest is lowered
        out = kilnrt.build(low, device="cpu").run(feeds)["y"]
        assert_close(out, expected, rtol=1e-2, atol=1e-2, seed=seed)


def test_build_api_records_the_constraints_and_checks_the_names(model, tmp_path):
    path, seed = model
    engine = kilnrt.build(path, fp16=True, layer_precisions="Mul_big:fp32,Mul_small:fp32", device="cpu")
    info = engine.build_info["layer_precisions"]
    assert info["constraints"] == {"Mul_big": "fp32", "Mul_small": "fp32"} and info["lowered"] is None  # CPU: FP32
    feeds = seeded_inputs(engine, seed)
    assert_close(engine.run(feeds)["y"], onnxruntime_run(path, feeds)["y"], rtol=1e-4, atol=1e-4, seed=seed)
    plan = tmp_path / "m.plan"
    engine.save(str(plan))
    assert kilnrt.load(str(plan)).build_info["layer_precisions"] == info
    with pytest.raises(KilnError, match="no layer or ONNX node named 'Mul_huge'.*MatMul_0"):
        kilnrt.build(path, fp16=True, layer_precisions={"Mul_huge": "fp32"})
    with pytest.raises(KilnError, match="cannot read 'Mul_big'.*LAYER:PRECISION"):
        kilnrt.build(path, fp16=True, layer_precisions="Mul_big")
    with pytest.raises(KilnError, match="fp32 only"):
        kilnrt.build(path, fp16=True, layer_precisions={"Mul_big": "fp16"})
    with pytest.raises(KilnError, match="int8=True is not supported yet"):
        kilnrt.build(path, int8=True, layer_precisions={"Mul_big": "fp32"})


def test_cli_build_layer_precisions(model, tmp_path, capsys):
    path, _ = model
    plan = tmp_path / "m.plan"
    assert main(["build", path, "-o", str(plan), "--fp16", "--layerPrecisions=Mul_big:fp32",
                 "--layerPrecisions", "Mul_small:fp32", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "layer precisions" in text and "2 layer(s) kept in FP32 (Mul_big, Mul_small)" in text
    assert kilnrt.load(str(plan)).build_info["layer_precisions"]["constraints"] == {"Mul_big": "fp32",
                                                                                   "Mul_small": "fp32"}
    saved = tmp_path / "fp32.json"        # the file kilnrt debug precision --save writes
    saved.write_text(json.dumps({"layer_precisions": {"Mul_*": "fp32"}}))
    assert main(["build", path, "-o", str(plan), "--fp16", "--layer-precisions", str(saved),
                 "--precisionConstraints=obey", "--no-progress"]) == 0
    assert "(Mul_*)" in capsys.readouterr().out
    assert main(["build", path, "-o", str(plan), "--fp16", "--layerPrecisions=Mul_big:fp32",
                 "--precisionConstraints=none", "--no-progress"]) == 0
    assert "ignored with --precisionConstraints=none" in capsys.readouterr().out
    assert "layer_precisions" not in kilnrt.load(str(plan)).build_info
    assert main(["build", path, "-o", str(plan), "--fp16", "--layerPrecisions=Nope:fp32", "--no-progress"]) == 1
    assert "no layer or ONNX node named 'Nope'" in capsys.readouterr().err


@pytest.mark.cuda
def test_cuda_fp16_build_keeps_pinned_layers_in_fp32(model):
    path, seed = model
    feeds = seeded_inputs(kilnrt.to_network(path), seed)
    expected = onnxruntime_run(path, feeds)["y"]
    plain = kilnrt.build(path, fp16=True, device="cuda").run(feeds)["y"]
    assert not np.isfinite(plain).all()
    engine = kilnrt.build(path, fp16=True, device="cuda", layer_precisions={"Mul_big": "fp32", "Mul_small": "fp32"})
    assert engine.build_info["layer_precisions"]["lowered"] == "HALF" and "fp16" in engine.build_info["flags"]
    assert_close(engine.run(feeds)["y"], expected, rtol=1e-2, atol=1e-2, seed=seed)


@pytest.mark.cuda
def test_cuda_exec_pins_the_named_layers_as_build_does(model, tmp_path, capsys):
    """kilnrt exec on the GPU takes the same path as kilnrt build: pins, then the FP16 build."""
    path, seed = model
    plan = tmp_path / "exec.plan"
    assert main(["exec", f"--onnx={path}", "--fp16", "--precisionConstraints=obey", "--skipInference",
                 "--layerPrecisions=Mul_big:fp32,Mul_small:fp32", f"--saveEngine={plan}"]) == 0
    assert "2 layer(s) kept in FP32 (inputs and outputs too), the others in HALF" in capsys.readouterr().out
    engine = kilnrt.load(str(plan))
    assert engine.build_info["layer_precisions"]["lowered"] == "HALF"
    feeds = seeded_inputs(kilnrt.to_network(path), seed)
    assert_close(engine.run(feeds)["y"], onnxruntime_run(path, feeds)["y"], rtol=1e-2, atol=1e-2, seed=seed)
