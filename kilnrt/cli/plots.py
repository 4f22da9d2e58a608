"""Charts drawn with matplotlib (``pip install matplotlib``; in the ``dev`` extra).

* :func:`plot_results` — the README's chart: kilnrt's speedup over each peer, per row of
  benchmark results files (``benchmarks/results/*.json``, format in BENCHMARKS.md).
* :func:`plot_latency` — ``kilnrt bench --plot``: the timed runs' latency histogram with its
  percentiles, latency per run, and (when given) the layers that take the most time.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kilnrt.errors import ErrorCode, KilnError

# peer column -> its label (BENCHMARKS.md's peers, in its order)
PEERS = {"torch_eager_ms": "torch eager", "torch_compile_ms": "torch.compile (max-autotune-no-cudagraphs)",
         "torch_compile_default_ms": "torch.compile (default)"}
PERCENTILES = (50, 90, 95, 99)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        "charts need matplotlib: pip install matplotlib (or pip install -e '.[dev]')") from None
    matplotlib.use("Agg")   # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _row_label(row: Mapping[str, Any]) -> str:
    label = f"{row.get('model', '?')} b{row.get('batch', '?')}"
    if row.get("seq"):
        label += f" s{row['seq']}"
    if row.get("precision"):
        label += f" {row['precision']}"
    if isinstance(row.get("profile"), dict):
        label += " dyn"
    return label


def read_results(json_paths: Sequence[str | os.PathLike]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every row of the results files, and a title line per file (date and GPU)."""
    rows, titles = [], []
    for path in json_paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"benchmark results {str(path)!r}: cannot read: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise KilnError(ErrorCode.INVALID_ARGUMENT,
                            f"benchmark results {str(path)!r}: no 'rows' list; the format is "
                            "{\"date\", \"gpu\", ..., \"rows\": [{\"model\", \"batch\", \"kilnrt_ms\", "
                            "\"torch_eager_ms\", ...}]} (BENCHMARKS.md)")
        titles.append(f"{data.get('gpu', '?')}, {str(data.get('date', '?'))[:10]}")
        rows.extend(r for r in data["rows"] if isinstance(r, dict))
    return rows, titles


def speedups(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[str, list[float | None]]]:
    """Row labels, and for each peer its time over kilnrt's per row (None where either is
    missing, or where the peer was timed with CUDA events because it could not be replayed
    from a CUDA graph, ``<peer>_graph`` false: its time then counts launch overhead that
    kilnrt's does not)."""
    labels, out = [], {k: [] for k in PEERS}
    for row in rows:
        ours = row.get("kilnrt_ms")
        labels.append(_row_label(row))
        for key in PEERS:
            theirs = None if row.get(key[:-len("_ms")] + "_graph") is False else row.get(key)
            ok = isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and ours > 0 and theirs > 0
            out[key].append(theirs / ours if ok else None)
    return labels, out


def plot_results(json_paths: Sequence[str | os.PathLike], out_png: str | os.PathLike, *, log: bool = True,
                 title: str | None = None) -> Path:
    """A bar chart of kilnrt's speedup over each peer (peer ms / kilnrt ms: above 1 kilnrt is
    faster), one group of bars per row of the results files, a line at 1.0; log scale unless
    ``log=False``. Peers missing from every row are left out; a missing value leaves a gap."""
    rows, titles = read_results(json_paths)
    fig = results_figure(rows, titles, log=log, title=title)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    _pyplot().close(fig)
    return out


def results_figure(rows: Sequence[Mapping[str, Any]], titles: Sequence[str] = (), *, log: bool = True,
                   title: str | None = None):
    """The figure :func:`plot_results` saves (a matplotlib Figure)."""
    labels, ratios = speedups(rows)
    peers = [k for k in PEERS if any(v is not None for v in ratios[k])]
    if not peers:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, "benchmark results: no row has kilnrt_ms with a peer's time; "
                                                    "nothing to chart")
    plt = _pyplot()
    width = 0.8 / len(peers)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.5))
    for k, key in enumerate(peers):
        values = np.array([np.nan if v is None else v for v in ratios[key]], dtype=float)
        bars = ax.bar(x + (k - (len(peers) - 1) / 2) * width, values, width, label=f"vs {PEERS[key]}")
        for bar, v in zip(bars, values):
            if np.isfinite(v):
                ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                            va="bottom" if v >= 1 else "top", fontsize=7, xytext=(0, 2 if v >= 1 else -2),
                            textcoords="offset points")
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    if log:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("kilnrt speedup (peer ms / kilnrt ms)" + (", log" if log else ""), fontsize=9)
    ax.set_title(title or "kilnrt vs peers: " + "; ".join(dict.fromkeys(titles)), fontsize=10, wrap=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_latency(samples_ms: Sequence[float], out_png: str | os.PathLike, *, title: str = "",
                 layer_ms: Mapping[str, float] | None = None, top: int = 15) -> Path:
    """``kilnrt bench --plot``: the latency histogram with p50/p90/p95/p99 marked, latency
    per run, and (with ``layer_ms``) the ``top`` layers by median time."""
    samples = np.asarray(samples_ms, dtype=float)
    if samples.size == 0:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, "no timed runs to plot; give --iterations 1 or more")
    plt = _pyplot()
    panels = 3 if layer_ms else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2))
    hist, runs = axes[0], axes[1]
    hist.hist(samples, bins=min(50, max(5, samples.size // 4)), color="#4c72b0")
    for p, style in zip(PERCENTILES, ("-", "--", "-.", ":")):
        v = float(np.percentile(samples, p))
        hist.axvline(v, color="#c44e52", linestyle=style, label=f"p{p} {v:.4f} ms")
    hist.set_xlabel("latency (ms)")
    hist.set_ylabel("runs")
    hist.set_title(f"{samples.size} timed runs")
    hist.legend(fontsize=8)
    runs.plot(np.arange(1, samples.size + 1), samples, marker=".", linewidth=0.8, color="#4c72b0")
    runs.axhline(float(np.median(samples)), color="#c44e52", linestyle="--", label="median")
    runs.set_xlabel("run")
    runs.set_ylabel("latency (ms)")
    runs.set_title("latency per run")
    runs.legend(fontsize=8)
    if layer_ms:
        ranked = sorted(layer_ms.items(), key=lambda kv: -kv[1])[:top]
        names = [n if len(n) <= 40 else n[:39] + "…" for n, _ in ranked][::-1]
        ax = axes[2]
        ax.barh(names, [t for _, t in ranked][::-1], color="#55a868")
        ax.set_xlabel("median time (ms), profiled runs")
        total = sum(layer_ms.values())
        ax.set_title(f"top {len(ranked)} of {len(layer_ms)} layers ({total:.4f} ms in all)")
        ax.tick_params(axis="y", labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


__all__ = ["PEERS", "plot_latency", "plot_results", "read_results", "results_figure", "speedups"]
