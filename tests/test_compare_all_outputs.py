"""kilnrt compare --all-outputs: every intermediate tensor against ONNX Runtime, and the first
one that diverges."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from kilnrt.cli.main import main

from debug_models import overflow_between_layers

DIGITS = str(Path(__file__).resolve().parents[1] / "examples" / "digits.onnx")


def test_all_outputs_of_the_digits_model_match(capsys):
    assert main(["compare", DIGITS, "--all-outputs", "--shapes", "input:3x1x8x8", "--seed", "4"]) == 0
    text = capsys.readouterr().out
    names = [o for n in onnx.load(DIGITS).graph.node for o in n.output]
    assert "9 of 9 ONNX tensors marked as outputs" in text
    for name in names:                                  # one PASSED line per ONNX tensor, in node order
        assert f"PASSED | tensor '{name}'" in text
    positions = [text.index(f"tensor '{n}'") for n in names]
    assert positions == sorted(positions)
    assert "PASSED: all 9 compared tensor(s) match ONNX Runtime" in text


def test_all_outputs_names_the_first_divergent_tensor_of_an_fp16_overflow(tmp_path, capsys):
    model = tmp_path / "overflow.onnx"
    onnx.save(overflow_between_layers(), model)
    assert main(["compare", str(model), "--fp16", "--all-outputs", "--rtol", "1e-2", "--atol", "1e-2"]) == 1
    text = capsys.readouterr().out
    assert "PASSED | tensor 'h' (node 'MatMul_0', MatMul)" in text
    assert "the first to diverge is tensor 'scaled', output of node 'Mul_big' (Mul)" in text
    assert "inf/NaN where ONNX Runtime's are finite" in text
    # kept in FP32, the two Mul nodes pass on FP16's rounding of h (1.1% relative) and nothing overflows
    assert main(["compare", str(model), "--fp16", "--all-outputs", "--rtol", "3e-2", "--atol", "1e-2",
                 "--layer-precisions", "Mul_big:fp32,Mul_small:fp32"]) == 0


def test_all_outputs_needs_a_build(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(overflow_between_layers(), model)
    plan = tmp_path / "m.plan"
    assert main(["build", str(model), "-o", str(plan)]) == 0
    capsys.readouterr()
    assert main(["compare", str(model), "--plan", str(plan), "--all-outputs"]) == 1
    assert "--all-outputs needs a build from the model" in capsys.readouterr().err
    assert main(["compare", str(model), "--layer-precisions", "Mul_big:fp32"]) == 1
    assert "add --fp16 or --bf16" in capsys.readouterr().err


@pytest.mark.parametrize("spec, text", [("Nope:fp32", "no layer or ONNX node named 'Nope'"),
                                        ("Mul_big:fp64", "LAYER:PRECISION")])
def test_bad_layer_precisions(tmp_path, capsys, spec, text):
    model = tmp_path / "m.onnx"
    onnx.save(overflow_between_layers(), model)
    assert main(["compare", str(model), "--fp16", "--layer-precisions", spec]) == 1
    assert text in capsys.readouterr().err
