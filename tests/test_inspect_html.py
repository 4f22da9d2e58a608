"""kilnrt inspect --html: a self-contained page whose embedded JSON is the inspector's, whose
graph has one node per engine layer and engine I/O tensor, and which renders in a headless
browser without console errors (where chromium-headless-shell or chromium is installed)."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kilnrt
from kilnrt.cli.exec_bench import profile_records
from kilnrt.cli.inspect_html import engine_graph, render_html
from kilnrt.cli.main import main
from kilnrt.engine.inspector import describe_engine
from kilnrt.errors import KilnError


def two_branches(seed: int = 0) -> onnx.ModelProto:
    """x -> MatMul -> (Relu, Sigmoid) -> Add -> Softmax; one node named with '</script>'."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="MatMul_0"),
             helper.make_node("Relu", ["h"], ["r"], name="Relu_1"),
             helper.make_node("Sigmoid", ["h"], ["s"], name="Sigmoid_</script>_2"),
             helper.make_node("Add", ["r", "s"], ["a"], name="Add_3"),
             helper.make_node("Softmax", ["a"], ["y"], name="Softmax_4")]
    graph = helper.make_graph(nodes, "two_branches", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts, self.external, self._in = {}, [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self._in = a.get("id", "code")
            self.scripts[self._in] = ""
            if "src" in a:
                self.external.append(a["src"])
        if tag in ("link", "img", "iframe") or (tag != "svg" and any(k in a for k in ("src", "href"))):
            self.external.append(f"{tag} {a}")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None

    def handle_data(self, data):
        if self._in is not None:
            self.scripts[self._in] += data


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    d = tmp_path_factory.mktemp("html")
    model = d / "two.onnx"
    onnx.save(two_branches(), model)
    engine = kilnrt.build(str(model), device="cpu", optimization_level=0)
    path = d / "two.plan"
    engine.save(str(path))
    return str(path), engine


def _parse(text: str) -> tuple[_Page, dict]:
    page = _Page()
    page.feed(text)
    return page, json.loads(page.scripts["kilnrt-engine"])


def test_embedded_json_is_the_inspectors_and_nothing_is_fetched(plan):
    _, engine = plan
    times = {l.name: 0.1 * (i + 1) for i, l in enumerate(engine.layers)}
    page, data = _parse(render_html(engine, times, times_source="test"))
    expected = json.loads(json.dumps(describe_engine(engine, times), default=str))
    assert data["layers"] == expected["layers"] and data["io"] == expected["io"]
    assert [l["time_ms"] for l in data["layers"]] == pytest.approx([0.1 * (i + 1) for i in range(len(engine.layers))])
    assert any("</script>" in l["origin_text"] for l in data["layers"])     # escaped, and still read back
    code = page.scripts["code"].replace('"http://www.w3.org/2000/svg"', "")   # SVG's namespace name, not a fetch
    assert page.external == [] and "http://" not in code and "https://" not in code and "fetch(" not in code


def test_graph_has_every_layer_and_edges_go_down(plan):
    _, engine = plan
    data = describe_engine(engine)
    g = engine_graph(data)
    ids = {n["id"]: n for n in g["nodes"]}
    assert sum(n["type"] == "layer" for n in g["nodes"]) == len(engine.layers)
    assert {n["label"] for n in g["nodes"] if n["type"] != "layer"} == {t.name for t in engine.io}
    for e in g["edges"]:
        assert ids[e["from"]]["rank"] < ids[e["to"]]["rank"] and ids[e["from"]]["y"] < ids[e["to"]]["y"]
    relu = next(n for n in g["nodes"] if n["type"] == "layer" and n["label"].startswith("Relu"))
    sigmoid = next(n for n in g["nodes"] if n["type"] == "layer" and n["label"].startswith("Sigmoid"))
    assert relu["rank"] == sigmoid["rank"] and relu["x"] != sigmoid["x"]   # the two branches side by side
    layer_edges = {(e["from"], e["to"]) for e in g["edges"]}
    for l in data["layers"]:    # every activation a layer reads is an edge from its producer
        for t in l["inputs"]:
            producer = next((m for m in data["layers"] if t["name"] in [o["name"] for o in m["outputs"]]), None)
            if producer is not None:
                assert (f"layer:{producer['index']}", f"layer:{l['index']}") in layer_edges


def test_cli_html_with_exported_profile_and_profile_runs(plan, tmp_path, capsys):
    path, engine = plan
    profile = tmp_path / "profile.json"      # the format kilnrt exec --exportProfile writes
    profile.write_text(json.dumps(profile_records({l.name: [0.5, 0.7, 0.6] for l in engine.layers})))
    out = tmp_path / "engine.html"
    assert main(["inspect", path, "--html", str(out), "--layer-times", str(profile)]) == 0
    assert f"layer times from {profile}" in capsys.readouterr().out
    _, data = _parse(out.read_text())
    assert [l["time_ms"] for l in data["layers"]] == [0.6] * len(engine.layers)
    assert main(["inspect", path, "--html", str(out), "--profile", "2"]) == 0
    _, data = _parse(out.read_text())
    assert all(l["time_ms"] is not None and l["time_ms"] >= 0 for l in data["layers"])
    assert data["times_source"] == "median of 2 profiled runs on cpu"
    profile.write_text(json.dumps([{"count": 1}, {"name": "other_plan_layer", "medianMs": 1.0}]))
    assert main(["inspect", path, "--html", str(out), "--layer-times", str(profile)]) == 1
    assert "none of the 1 layers" in capsys.readouterr().err
    with pytest.raises(KilnError, match="not a per-layer profile"):
        from kilnrt.cli.inspect_html import read_profile

        profile.write_text("[1, 2]")
        read_profile(str(profile))


BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium") or shutil.which("google-chrome")


@pytest.mark.skipif(BROWSER is None, reason="no headless chromium here (apt-get install chromium-headless-shell)")
def test_renders_in_a_headless_browser_without_console_errors(plan, tmp_path):
    _, engine = plan
    page = tmp_path / "engine.html"
    page.write_text(render_html(engine, {l.name: 0.2 for l in engine.layers}, times_source="test"))
    common = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    shot = tmp_path / "shot.png"
    run = subprocess.run([*common, "--window-size=1200,900", f"--screenshot={shot}", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
    dom = subprocess.run([*common, "--dump-dom", page.as_uri() + "#layer=1"], capture_output=True, text=True,
                         timeout=120)
    console = [l for l in (run.stderr + dom.stderr).splitlines() if ":CONSOLE" in l]
    assert console == []
    nodes = len(engine.layers) + len(engine.io)
    assert f'data-rendered="{nodes}"' in dom.stdout                  # the script ran to its end
    assert dom.stdout.count('class="node') == nodes and 'class="edge' in dom.stdout
    assert engine.layers[1].tactic in dom.stdout.split('id="details"')[1].split("</aside>")[0]
