"""The ``kilnrt`` command, called in-process: ``main([...])`` returns the exit code."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kilnrt
from kilnrt.cli.main import main


def mlp(seed: int = 0, bias_shift: float = 0.0) -> onnx.ModelProto:
    """x [batch, 4] -> MatMul -> Add -> Relu -> y [batch, 3], dynamic batch."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array((rng.standard_normal(3) + bias_shift).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="MatMul_0"),
             helper.make_node("Add", ["mm", "b"], ["add"], name="Add_1"),
             helper.make_node("Relu", ["add"], ["y"], name="Relu_2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = d / "mlp.onnx"
    onnx.save(mlp(), model)
    plan = d / "mlp.plan"
    kilnrt.build(str(model), profiles={"x": ((1, 4), (2, 4), (8, 4))}).save(str(plan))
    unsupported = d / "bad.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                               helper.make_node("FancyOp", ["r"], ["y"], name="fancy_1"),
                               helper.make_node("FancyOp", ["y"], ["z"], name="fancy_2")], "bad",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), unsupported)
    return {"dir": d, "model": str(model), "plan": str(plan), "bad": str(unsupported)}


# ----------------------------------------------------------------------------- build
def test_build_writes_a_plan_with_the_profile(files, capsys):
    out = files["dir"] / "built.plan"
    cache = files["dir"] / "timing.cache"
    rc = main(["build", files["model"], "-o", str(out), "--min-shapes", "x:1x4", "--opt-shapes", "x:4x4",
               "--max-shapes", "x:16x4", "--timing-cache", str(cache), "--optimization-level", "2"])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file() and cache.is_file()
    assert str(out) in text and "network layers" in text
    assert "no layer synchronizes (one CUDA graph per shape set)" in text    # a dynamic build says where shapes go
    engine = kilnrt.load(str(out))
    assert engine.profiles[0]["x"] == ((1, 4), (4, 4), (16, 4))
    assert engine.build_info["optimization_level"] == 2


def test_build_reports_the_layouts_a_gpu_build_recorded(tmp_path, capsys, monkeypatch):
    """A GPU build records each output's format; `kilnrt build` then says where the layout
    changes (stood in for here by setting the formats a CUDA build of this CNN records)."""
    import onnx.backend.test as ot

    path = str(Path(ot.__file__).parent / "data" / "light" / "light_squeezenet.onnx")
    real_build = kilnrt.build
    assert main(["build", path, "-o", str(tmp_path / "cpu.plan")]) == 0
    assert "4-D layouts" not in capsys.readouterr().out          # a CPU build records no format

    def gpu_like_build(*args, **kwargs):
        engine = real_build(*args, **kwargs)
        for layer in engine.layers:
            if len(layer.output_shapes[0] or ()) == 4:
                layer.output_formats = ["channels_last"]
        return engine

    monkeypatch.setattr(kilnrt, "build", gpu_like_build)
    assert main(["build", path, "-o", str(tmp_path / "gpu.plan")]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "4-D layouts" in text and "layout converted in 1 layer(s)" in text, text


def test_build_static_shapes_and_default_output_path(files, tmp_path, capsys):
    model = tmp_path / "static.onnx"
    onnx.save(mlp(), model)
    assert main(["build", str(model), "--shapes", "x:3x4", "--fp16"]) == 0
    engine = kilnrt.load(str(tmp_path / "static.plan"))
    assert engine.profiles[0]["x"] == ((3, 4), (3, 4), (3, 4))
    assert "static.plan" in capsys.readouterr().out


def test_errors_are_one_clean_red_line(files, capsys):
    assert main(["build", str(files["dir"] / "missing.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and "Traceback" not in err
    assert main(["build", files["bad"], "-o", str(files["dir"] / "bad.plan")]) == 1
    err = capsys.readouterr().err
    assert "FancyOp" in err and "fancy_1" in err and "Traceback" not in err
    assert main(["run", files["plan"], "--shapes", "x:2by4"]) == 1
    assert "write NAME:DIMS" in capsys.readouterr().err


def test_debug_shows_the_traceback(files, capsys):
    assert main(["run", str(files["dir"] / "nothing.plan"), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "error:" in err


def test_usage_errors_help_and_version(capsys):
    assert main([]) == 2
    assert main(["--version"]) == 0 and kilnrt.__version__ in capsys.readouterr().out
    assert main(["build"]) == 2                      # argparse: MODEL.onnx is required
    assert main(["exec", "--noSuchFlag"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


# ----------------------------------------------------------------------------- run / bench
def test_run_random_inputs(files, capsys):
    assert main(["run", files["plan"], "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "output y" in text and "[2, 3]" in text and "seed 3" in text  # batch = the profile's opt


def test_run_with_input_file_saves_outputs(files, capsys):
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    np.save(files["dir"] / "x.npy", x)
    out_dir = files["dir"] / "outputs"
    assert main(["run", files["plan"], "--input", f"x={files['dir'] / 'x.npy'}", "--output-dir", str(out_dir)]) == 0
    saved = np.load(out_dir / "y.npy")
    np.testing.assert_array_equal(saved, kilnrt.load(files["plan"]).run({"x": x})["y"])
    assert main(["run", files["plan"], "--input", "nope=x.npy"]) == 1
    assert "does not exist" in capsys.readouterr().err
    np.save(files["dir"] / "z.npy", x)
    assert main(["run", files["plan"], "--input", f"z={files['dir'] / 'z.npy'}"]) == 1
    assert "unknown input name" in capsys.readouterr().err


def test_bench_json(files, capsys):
    assert main(["bench", files["plan"], "--iterations", "5", "--warmup", "1", "--shapes", "x:8x4", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["iterations"] == 5 and s["batch"] == 8 and s["shapes"] == {"x": [8, 4]}
    assert s["min_ms"] <= s["median_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert s["throughput_items_per_s"] == pytest.approx(8 * s["throughput_qps"])


def test_bench_table(files, capsys):
    assert main(["bench", files["plan"], "-n", "3", "--warmup", "0"]) == 0
    text = capsys.readouterr().out
    for word in ("latency median", "latency p99", "inferences/s", "items/s"):
        assert word in text


# ----------------------------------------------------------------------------- inspect
def test_inspect_plan(files, capsys):
    assert main(["inspect", files["plan"]]) == 0
    text = capsys.readouterr().out
    assert "MatMul_0" in text and "cpu.matrix_multiply" in text and "activations" in text
    assert main(["inspect", files["plan"], "--json", "--profile", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert all(l["time_ms"] is not None for l in info["layers"])
    layer = next(l for l in info["layers"] if "MatMul_0" in l["origin"])   # possibly fused with Add, Relu
    assert layer["origin_text"] == " + ".join(layer["origin"]) and layer["inputs"][0]["name"] == "x"
    assert layer["outputs"][0]["dtype"] == "FLOAT" and layer["tactic"].startswith("cpu.")
    assert info["activation_bytes"] <= info["naive_activation_bytes"]
    assert info["io"][0] == {"name": "x", "mode": "input", "dtype": "FLOAT", "shape": ["batch", 4]}
    assert info["profiles"][0]["x"]["opt"] == [2, 4] and "passes" in info["build"]


def test_inspector_shows_each_tensors_memory_format(tmp_path, capsys):
    """Formats come from the plan (recorded at GPU builds; set by hand here, as a CPU build runs nothing)."""
    from kilnrt.engine.inspector import EngineInspector, LayerInformationFormat, layer_table
    from models import small_cnn_model
    from rich.console import Console

    built = kilnrt.build(small_cnn_model())
    built.layers[0].output_formats = ["channels_last"]   # the convolution writes NHWC
    built.layers[1].output_formats = ["linear"]          # the pooling writes NCHW
    built.save(str(tmp_path / "cnn.plan"))
    assert main(["inspect", str(tmp_path / "cnn.plan"), "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert [t["format"] for t in layers[0]["inputs"]] == ["linear"] * 3          # the engine input, weights
    assert [layers[0]["outputs"][0]["format"], layers[1]["inputs"][0]["format"]] == ["channels_last"] * 2
    assert layers[1]["outputs"][0]["format"] == "linear" and layers[2]["outputs"][0]["format"] is None

    engine = kilnrt.load(str(tmp_path / "cnn.plan"))
    trt = json.loads(EngineInspector(engine).get_engine_information(LayerInformationFormat.JSON))["Layers"]
    fmt = lambda t: t["Format/Datatype"]  # noqa: E731
    assert fmt(trt[0]["Inputs"][0]) == "Row major linear FP32 format"
    assert fmt(trt[0]["Outputs"][0]) == fmt(trt[1]["Inputs"][0]) == "Channel major FP32 format"
    assert fmt(trt[1]["Outputs"][0]) == "Row major linear FP32 format" and fmt(trt[2]["Outputs"][0]) == "FP32"
    console = Console(width=250, record=True)
    console.print(layer_table(engine))
    assert console.export_text().count("NHWC") == 2   # the convolution's output, the pooling's input


def test_inspector_says_where_the_layout_changes(tmp_path):
    """The layout summary counts 4-D outputs per format and names the layers that convert their
    input's layout: here squeezenet with the formats a GPU build records (set by hand)."""
    import onnx.backend.test as ot

    from kilnrt.engine.inspector import describe_engine, layout_summary, layout_text, summary_table
    from rich.console import Console

    path = Path(ot.__file__).parent / "data" / "light" / "light_squeezenet.onnx"
    engine = kilnrt.build(str(path))
    assert layout_text(layout_summary(engine)).endswith("(the build ran no tactic: CPU)")
    four_d = [l for l in engine.layers if len(l.output_shapes[0] or ()) == 4]
    for l in four_d:                                  # NHWC end to end: only the first layer converts
        l.output_formats = ["channels_last"]
    summary = layout_summary(engine)
    assert summary["formats"] == {"channels_last": len(four_d)}
    assert [(c["layer"], c["inputs"], c["from"], c["to"]) for c in summary["changes"]] == \
        [(engine.layers[0].name, [engine.io[0].name], "linear", "channels_last")]
    middle = four_d[len(four_d) // 2]                 # one layer in the middle writes NCHW: it converts,
    middle.output_formats = ["linear"]                # and so does each NHWC layer that reads it
    readers = [l.name for l in four_d if middle.outputs[0] in l.inputs]
    changes = [c["layer"] for c in layout_summary(engine)["changes"]]
    assert changes == [engine.layers[0].name, middle.name] + readers and readers
    pooled = next(l for l in four_d if l.output_shapes[0][2:] == (1, 1))   # [N, C, 1, 1]: one memory layout
    pooled.output_formats = ["linear"]
    assert pooled.name not in [c["layer"] for c in layout_summary(engine)["changes"]]
    engine.save(str(tmp_path / "s.plan"))
    loaded = kilnrt.load(str(tmp_path / "s.plan"))
    assert describe_engine(loaded)["layout"] == layout_summary(engine)
    console = Console(width=250, record=True)
    console.print(summary_table(loaded))
    assert f"layout converted in {len(changes)} layer(s)" in console.export_text()


def test_inspect_onnx_model(files, capsys):
    assert main(["inspect", files["model"]]) == 0
    text = capsys.readouterr().out
    assert "opset 17" in text and "matrix_multiply" in text and "Relu_2" in text
    assert main(["inspect", files["model"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["supported"] and [l["kind"] for l in info["layers"]] == ["MATRIX_MULTIPLY", "ELEMENTWISE", "ACTIVATION"]


def test_inspect_lists_unsupported_ops(files, capsys):
    assert main(["inspect", files["bad"]]) == 1
    text = capsys.readouterr().out
    assert "FancyOp" in text and "UNSUPPORTED_NODE" in text
    assert main(["inspect", files["bad"], "--json"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert not info["supported"] and info["unsupported"][0]["op"] == "FancyOp"
    assert "fancy_1, fancy_2" in info["unsupported"][0]["message"]


# ----------------------------------------------------------------------------- compare
def test_compare_passes_against_onnxruntime(files, capsys):
    assert main(["compare", files["model"], "--shapes", "x:6x4", "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert "PASSED | output 'y' [6, 3] float32: max abs error" in text and "rtol=0.001, atol=0.0001" in text
    assert main(["compare", files["model"], "--plan", files["plan"]]) == 0


def test_compare_reports_a_mismatch(files, tmp_path, capsys):
    wrong = tmp_path / "wrong.plan"
    kilnrt.build(mlp(bias_shift=0.5), profiles={"x": ((1, 4), (2, 4), (8, 4))}).save(str(wrong))
    assert main(["compare", files["model"], "--plan", str(wrong)]) == 1
    text = capsys.readouterr().out
    assert "FAILED | output 'y'" in text and "outside tolerance" in text and "FAILED: 1 of 1" in text


# ----------------------------------------------------------------------------- exec / demo
def test_exec_builds_saves_and_benchmarks(files, tmp_path, capsys):
    plan = tmp_path / "exec.plan"
    rc = main(["exec", f"--onnx={files['model']}", f"--saveEngine={plan}", "--fp16", "--shapes=x:4x4",
               "--iterations=3", "--warmUp=0", "--duration=0", "--memPoolSize=workspace:64M",
               f"--exportTimes={tmp_path / 'times.json'}", "--dumpProfile", "--avgRuns=2"])
    text = capsys.readouterr().out
    assert rc == 0 and plan.is_file()
    assert "&&&& PASSED" in text and "Throughput:" in text and "percentile(99%)" in text
    assert len(json.loads((tmp_path / "times.json").read_text())) >= 3    # trtexec's per-run trace
    assert "Batch: 4 items per query" in text
    assert kilnrt.load(str(plan)).profiles[0]["x"][1] == (4, 4)
    assert main(["exec", f"--loadEngine={plan}", "--iterations=2", "--warmUp=0", "--duration=0",
                 "--shapes=x:4x4", "--dumpLayerInfo"]) == 0
    assert "Engine loaded" in capsys.readouterr().out
    assert main(["exec", "--iterations=2"]) == 1
    assert "--onnx" in capsys.readouterr().err


def test_demo(tmp_path, capsys):
    plan = tmp_path / "digits.plan"
    assert main(["demo", "--iterations", "2", "-o", str(plan)]) == 0
    text = capsys.readouterr().out
    assert "kilnrt (cpu)" in text and "ONNX Runtime" in text and "images/s" in text and str(plan) in text
    accuracy = float(text.split("kilnrt (cpu)")[1].split("%")[0].split()[-1])
    assert accuracy > 90
    assert main(["demo", "--model", str(tmp_path / "none.onnx")]) == 1
    assert "--model" in capsys.readouterr().err


def test_build_tactic_buckets_option(files, tmp_path, capsys):
    from kilnrt.cli.args import build_kwargs
    from kilnrt.cli.main import make_parser

    for value, points in (("min", ("min",)), ("min,max", ("min", "max")), ("none", ())):
        args = make_parser().parse_args(["build", files["model"], "--tactic-buckets", value])
        assert build_kwargs(args)["tactic_buckets"] == points
    assert main(["build", files["model"], "-o", str(tmp_path / "b.plan"), "--min-shapes", "x:1x4",
                 "--max-shapes", "x:8x4", "--tactic-buckets", "middle"]) == 1
    err = capsys.readouterr().err
    assert "'middle'" in err and "one of min, max" in err
