"""kilnrt exec against trtexec's formats: the &&&& lines, the JSON of --exportTimes,
--exportProfile and --exportLayerInfo, units, and the flags that warn or are refused."""
from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest

import kilnrt
from kilnrt.cli.args import parse_mem_pools, parse_size_mib
from kilnrt.cli.main import main
from kilnrt.errors import KilnError

from debug_models import overflow_between_layers

DIGITS = str(Path(__file__).resolve().parents[1] / "examples" / "digits.onnx")
FAST = ["--iterations=5", "--warmUp=0", "--duration=0"]
LINE = re.compile(r"^&&&& (RUNNING|PASSED|FAILED) kilnrt\.trtexec \[kilnrt v[0-9.]+\] # kilnrt exec (.*)$")


def status_lines(text: str) -> list[tuple[str, str]]:
    return [m.groups() for m in map(LINE.match, text.splitlines()) if m]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    path = tmp_path_factory.mktemp("exec") / "digits.plan"
    kilnrt.build(DIGITS, profiles={"input": (2, 1, 8, 8)}).save(str(path))
    return str(path)


def test_running_and_passed_lines_carry_the_command_line(plan, capsys):
    argv = ["exec", f"--loadEngine={plan}", *FAST]
    assert main(argv) == 0
    lines = status_lines(capsys.readouterr().out)
    assert [s for s, _ in lines] == ["RUNNING", "PASSED"]
    assert all(cmd == " ".join(argv[1:]) for _, cmd in lines)


def test_failed_line_and_refusing_an_onnx_file_for_load_engine(capsys):
    assert main(["exec", f"--loadEngine={DIGITS}"]) == 1
    captured = capsys.readouterr()
    assert [s for s, _ in status_lines(captured.out)] == ["RUNNING", "FAILED"]
    assert "is an ONNX model; --loadEngine loads plans only. Build it with --onnx=" in captured.err


def test_export_times_is_trtexecs_per_run_trace(plan, tmp_path, capsys):
    times = tmp_path / "times.json"
    assert main(["exec", f"--loadEngine={plan}", "--iterations=7", "--warmUp=0", "--duration=0", "--streams=2",
                 "--threads", f"--exportTimes={times}"]) == 0
    text = capsys.readouterr().out
    runs = json.loads(times.read_text())
    assert isinstance(runs, list) and len(runs) == 14                        # 7 per stream
    keys = ["startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs", "startD2hMs",
            "endD2hMs", "h2dMs", "computeMs", "d2hMs", "latencyMs"]
    for r in runs:
        assert list(r) == keys
        assert r["startEnqMs"] <= r["endEnqMs"] and r["startComputeMs"] <= r["endComputeMs"]
        assert r["computeMs"] == pytest.approx(r["endComputeMs"] - r["startComputeMs"])
        assert r["latencyMs"] == pytest.approx(r["h2dMs"] + r["computeMs"] + r["d2hMs"])
        assert r["h2dMs"] == r["d2hMs"] == 0                                 # a CPU engine copies nothing
    assert [r["startEnqMs"] for r in runs] == sorted(r["startEnqMs"] for r in runs)
    assert "Timing trace has 14 queries" in text and "=== Performance summary ===" in text
    median = sorted(r["latencyMs"] for r in runs)[6:8]
    reported = float(re.search(r"\[I\] Latency: .*median = ([0-9.e+-]+) ms", text).group(1))
    assert reported == pytest.approx(sum(median) / 2, rel=1e-4)


def test_export_profile_and_separate_profile_run(plan, tmp_path, capsys):
    engine = kilnrt.load(plan)
    for extra in ([], ["--separateProfileRun"]):
        prof = tmp_path / "profile.json"
        assert main(["exec", f"--loadEngine={plan}", *FAST, f"--exportProfile={prof}", "--dumpProfile", *extra]) == 0
        records = json.loads(prof.read_text())
        assert set(records[0]) == {"count"} and records[0]["count"] >= 5
        assert [r["name"] for r in records[1:]] == [l.name for l in engine.layers]
        for r in records[1:]:
            assert list(r) == ["name", "timeMs", "averageMs", "medianMs", "percentage"]
            assert r["averageMs"] == pytest.approx(r["timeMs"] / records[0]["count"])
        assert sum(r["percentage"] for r in records[1:]) == pytest.approx(100.0)
        assert f"=== Profile ({records[0]['count']} iterations ) ===" in capsys.readouterr().out


def test_export_layer_info_names_or_details(plan, tmp_path, capsys):
    engine = kilnrt.load(plan)
    info = tmp_path / "layers.json"
    assert main(["exec", f"--loadEngine={plan}", "--skipInference", f"--exportLayerInfo={info}"]) == 0
    data = json.loads(info.read_text())
    assert data == {"Layers": [l.name for l in engine.layers], "Bindings": ["input", "logits"]}
    assert main(["exec", f"--loadEngine={plan}", "--skipInference", f"--exportLayerInfo={info}",
                 "--profilingVerbosity=detailed"]) == 0
    layers = json.loads(info.read_text())["Layers"]
    first = layers[0]
    assert first["Name"] == engine.layers[0].name and first["LayerType"] == "Convolution"
    assert first["Inputs"][0] == {"Name": "input", "Location": "Device", "Dimensions": [2, 1, 8, 8],
                                  "Format/Datatype": "Row major linear FP32"}
    assert first["Metadata"].split("\x1e") == [f"[ONNX Layer: {n}]" for n in engine.layers[0].origin]


def test_trtexec_units_for_memory():
    assert parse_size_mib("64", "--workspace") == 64 << 20            # MiB without a suffix
    assert parse_size_mib("0.5G", "--workspace") == 512 << 20
    assert parse_size_mib("300K", "--workspace") == 300 << 10
    assert parse_mem_pools("workspace:1024,dlaSRAM:1M") == {"workspace": 1 << 30, "dlaSRAM": 1 << 20}
    with pytest.raises(KilnError, match="POOL one of workspace"):
        parse_mem_pools("scratch:1M")
    with pytest.raises(KilnError, match="cannot read the size"):
        parse_size_mib("lots", "--workspace")
    from kilnrt.cli.args import build_kwargs
    from kilnrt.cli.main import make_parser

    args = make_parser().parse_args(["build", DIGITS, "--workspace", "64"])
    assert build_kwargs(args)["workspace"] == 64 << 20                 # kilnrt build: MiB too


def test_flags_that_cannot_be_honoured_warn_once_and_bad_values_are_refused(plan, capsys):
    assert main(["exec", f"--loadEngine={plan}", *FAST, "--useCudaGraph", "--useSpinWait", "--streams=2",
                 "--memPoolSize=workspace:1M"]) == 0
    warnings = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[W] ")]
    assert len(warnings) == 3
    for text in ("--useCudaGraph: a CPU engine has no CUDA graphs; ran without", "--useSpinWait: kilnrt waits",
                 "--streams=2 without --threads"):
        assert sum(text in w for w in warnings) == 1
    assert main(["exec", f"--loadEngine={plan}", "--duration=-1"]) == 1
    assert "does not run until stopped" in capsys.readouterr().err
    assert main(["exec", f"--onnx={DIGITS}", "--stronglyTyped", "--fp16", "--skipInference"]) == 1
    assert "--stronglyTyped takes the types from the model" in capsys.readouterr().err


def test_layer_precisions_keep_layers_in_fp32(tmp_path, capsys):
    model = tmp_path / "overflow.onnx"
    onnx.save(overflow_between_layers(), model)
    plan = tmp_path / "kept.plan"
    assert main(["exec", f"--onnx={model}", "--fp16", "--precisionConstraints=obey", *FAST,
                 "--layerPrecisions=Mul_big:fp32,Mul_small:fp32", f"--saveEngine={plan}"]) == 0
    assert "2 layer(s) kept in FP32" in capsys.readouterr().out
    assert main(["compare", str(model), "--plan", str(plan), "--rtol", "3e-2", "--atol", "1e-2"]) == 0
    assert main(["exec", f"--onnx={model}", "--fp16", "--layerPrecisions=Mul_big:fp32", "--skipInference"]) == 0
    assert "take effect only with --precisionConstraints=obey or prefer" in capsys.readouterr().out
