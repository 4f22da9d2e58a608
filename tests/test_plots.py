"""Charts: kilnrt.cli.plots.plot_results (speedup bars from benchmark results files) and
kilnrt bench --plot (latency histogram, per run, slowest layers)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import kilnrt
from kilnrt.cli.main import main
from kilnrt.cli.plots import plot_latency, plot_results, read_results, results_figure, speedups
from kilnrt.errors import KilnError
from kilnrt.testing import fresh_seed

import matplotlib.image  # in the dev extra
import matplotlib.pyplot


def _results(tmp_path, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for model, batch in (("resnet50", 1), ("resnet50", 256), ("bert", 32)):
        ours = float(rng.uniform(0.5, 5))
        rows.append({"model": model, "family": "x", "batch": batch, "seq": 128 if model == "bert" else None,
                     "precision": "fp16", "profile": "static", "kilnrt_ms": ours,
                     "torch_eager_ms": ours * float(rng.uniform(0.5, 3)),
                     "torch_compile_ms": None if batch == 256 else ours * float(rng.uniform(0.5, 3)),
                     "torch_compile_default_ms": None})
    path = tmp_path / "2026-12-01-gpu-set.json"
    path.write_text(json.dumps({"date": "2026-12-01", "gpu": "Test GPU", "rows": rows}))
    return path, rows


def test_speedups_are_peer_over_kilnrt_with_gaps(tmp_path):
    path, rows = _results(tmp_path, fresh_seed())
    got_rows, titles = read_results([path])
    labels, ratios = speedups(got_rows)
    assert labels == ["resnet50 b1 fp16", "resnet50 b256 fp16", "bert b32 s128 fp16"] and titles == ["Test GPU, 2026-12-01"]
    assert ratios["torch_eager_ms"] == pytest.approx([r["torch_eager_ms"] / r["kilnrt_ms"] for r in rows])
    assert ratios["torch_compile_ms"][1] is None and ratios["torch_compile_default_ms"] == [None] * 3
    got_rows[0]["torch_eager_graph"] = False   # timed with events: not charted against a graph replay
    assert speedups(got_rows)[1]["torch_eager_ms"][0] is None
    got_rows[0]["torch_eager_graph"] = True
    assert speedups(got_rows)[1]["torch_eager_ms"][0] == pytest.approx(rows[0]["torch_eager_ms"] / rows[0]["kilnrt_ms"])


@pytest.mark.parametrize("log", [True, False])
def test_results_figure_bars_and_the_one_line(tmp_path, log):
    _, rows = _results(tmp_path, fresh_seed())
    fig = results_figure(rows, log=log)
    ax = fig.axes[0]
    assert ax.get_yscale() == ("log" if log else "linear")
    heights = [p.get_height() for p in ax.patches]
    expected = [r["torch_eager_ms"] / r["kilnrt_ms"] for r in rows] + \
        [np.nan if r["torch_compile_ms"] is None else r["torch_compile_ms"] / r["kilnrt_ms"] for r in rows]
    np.testing.assert_allclose(heights, expected, rtol=1e-12)     # the default-mode peer has no value: no bars
    assert len(ax.get_legend().get_texts()) == 2
    assert any(np.allclose(line.get_ydata(), 1.0) for line in ax.get_lines())
    matplotlib.pyplot.close(fig)


def test_plot_results_writes_a_png_and_refuses_bad_files(tmp_path):
    path, _ = _results(tmp_path, fresh_seed())
    out = plot_results([path], tmp_path / "charts" / "speed.png")
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 600 and image.std() > 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"date": "x"}))
    with pytest.raises(KilnError, match="no 'rows' list"):
        plot_results([bad], tmp_path / "x.png")
    bad.write_text(json.dumps({"rows": [{"model": "m", "batch": 1, "kilnrt_ms": None, "torch_eager_ms": 1.0}]}))
    with pytest.raises(KilnError, match="nothing to chart"):
        plot_results([bad], tmp_path / "x.png")


def test_plot_latency(tmp_path):
    rng = np.random.default_rng(fresh_seed())
    samples = rng.gamma(4.0, 0.5, size=200)
    out = plot_latency(samples, tmp_path / "lat.png", title="t", layer_ms={f"layer_{i}": float(i) for i in range(30)})
    assert matplotlib.image.imread(out).shape[1] > 1000          # three panels
    with pytest.raises(KilnError, match="no timed runs"):
        plot_latency([], tmp_path / "none.png")


def test_bench_plot_cli(tmp_path, capsys):
    from test_inspect_html import two_branches

    model = tmp_path / "m.onnx"
    onnx.save(two_branches(), model)
    plan = tmp_path / "m.plan"
    kilnrt.build(str(model), device="cpu").save(str(plan))
    out = tmp_path / "bench.png"
    assert main(["bench", str(plan), "-n", "8", "--warmup", "1", "--plot", str(out), "--plot-layers", "2"]) == 0
    assert "chart written to" in capsys.readouterr().out and matplotlib.image.imread(out).shape[1] > 1000
    assert main(["bench", str(plan), "-n", "4", "--warmup", "0", "--plot", str(out), "--plot-layers", "0",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["iterations"] == 4    # stdout stays pure JSON
    assert matplotlib.image.imread(out).shape[1] < 1200              # two panels without the layer chart
