"""The speed tables and charts of README.md and docs/earlier-results.md, generated from the
results files, never typed in.

    python benchmarks/report.py           # rewrite the generated blocks and the chart
    python benchmarks/report.py --check   # exit 1 if a file is not what the results give (tests run this)

Each block between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` is made by
the function of that name below from the files it names (the results format of
``benchmarks/measure.py``'s ``results_header``).  README.md shows one run (``RUN``: every row
from one results file, one commit, one GPU, the peers in the same run); docs/earlier-results.md
keeps the earlier runs, each table naming its files.
Older files (run.py before the public call was timed) hold the outer-graph time in
``kilnrt_ms``; a row is read as such when it has no ``kilnrt_graph_ms``, and its public-call
column stays empty.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
README = os.path.join(ROOT, "README.md")
EARLIER = os.path.join(ROOT, "docs", "earlier-results.md")
CHART = os.path.join(ROOT, "docs", "images", "speed.png")

# the run README.md shows: one file, one commit, one GPU
RUN = "2026-12-02-NVIDIA_H200-zoo-one-run.json"
NAMES = {"resnet50": "ResNet-50", "bert": "BERT-base", "vit_b_16": "ViT-B/16", "mobilenet_v2": "MobileNetV2",
         "efficientnet_b0": "EfficientNet-B0", "convnext_tiny": "ConvNeXt-T"}
# the newest run of each headline and tuned row (the models kilnrt was tuned on)
TUNED = ["2026-11-21-NVIDIA_H200-resnet50-b1-131755Z.json", "2026-11-21-NVIDIA_H200-resnet50-b256-123513Z.json",
         "2026-11-21-NVIDIA_H200-bert-b1-122720Z.json", "2026-11-21-NVIDIA_H200-bert-b32-122819Z.json",
         "2026-11-21-NVIDIA_H200-vit_b_16-b1+b64-133441Z.json", "2026-11-21-NVIDIA_H200-mobilenet_v2-b1-133748Z.json",
         "2026-11-21-NVIDIA_H200-mobilenet_v2-b256-104150Z.json",
         "2026-11-21-NVIDIA_H200-efficientnet_b0-b1-134206Z.json",
         "2026-11-21-NVIDIA_H200-efficientnet_b0-b256-132802Z.json",
         "2026-11-21-NVIDIA_H200-convnext_tiny-b1-133136Z.json",
         "2026-11-21-NVIDIA_H200-convnext_tiny-b128-124738Z.json",
         "2026-11-21-NVIDIA_H100-bert-b1-154618Z.json", "2026-11-21-NVIDIA_H100-bert-b32-154409Z.json",
         "2026-11-21-NVIDIA_H100-vit_b_16-b1-b64-153535Z.json"]
ZOO = ["2026-12-01-NVIDIA_H200-zoo.json", "2026-12-01-NVIDIA_H200-zoo-densenet121-googlenet-pvt_v2_b0-retinanet_head.json",
       "2026-12-01-NVIDIA_H200-zoo-googlenet-swin_t.json",
       "2026-12-01-NVIDIA_H200-zoo-inception_v3-shufflenet_v2_x1_0-squeezenet1_1.json",
       "2026-12-01-NVIDIA_H200-zoo-cspdarknet53-levit_128s-mobilevit_s-poolformer_s12.json",
       "2026-12-01-NVIDIA_H200-zoo-poolformer_s12-levit_128s.json",
       "2026-12-01-NVIDIA_H200-zoo-levit_128s.json", "2026-12-01-NVIDIA_H200-zoo-maxvit_t-swin_t.json",
       "2026-12-01-NVIDIA_H200-zoo-swin_t.json", "2026-12-01-NVIDIA_H200-zoo-t5_small.json",
       "2026-12-02-NVIDIA_H200-zoo-mobilenet_v3_large-efficientnet_v2_s-mnasnet1_0-poolformer_s12.json"]
CALLS = ["2026-12-01-NVIDIA_H200-call-overhead.json"]
BUILDS = ["2026-12-01-NVIDIA_H200-build-time.json", "2026-12-02-NVIDIA_H200-build-time.json",
          "2026-12-02-NVIDIA_H200-build-time-mobilevit_s-inception_v3.json"]


def _load(name: str) -> dict:
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def _ms(v) -> str:
    if v is None:
        return "—"
    return f"{v:.3f} ms" if v < 10 else f"{v:.2f} ms"


def _ratio(peer, ours) -> str:
    return "—" if not peer or not ours else f"**{peer / ours:.2f}×**"


def _err(v) -> str:
    return "—" if v is None else f"{v:.1e}"


def _gpu(doc: dict, row: dict) -> str:
    return (row.get("gpu") or doc.get("gpu") or "?").replace("NVIDIA ", "")


def _shape(row: dict) -> str:
    return f"{row['batch']} × {row['seq']}" if row.get("seq") and row["model"] in ("bert",) else f"batch {row['batch']}"


def tuned() -> str:
    lines = ["| model | shape | GPU | torch eager | torch.compile | kilnrt (outer graph) | kilnrt (public call) "
             "| ÷ compile | rel. L2 (eager's) | results file |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in TUNED:
        doc = _load(name)
        for row in doc["rows"]:
            if "kilnrt_ms" not in row:
                continue
            public = row["kilnrt_ms"] if "kilnrt_graph_ms" in row else None
            graph = row.get("kilnrt_graph_ms", row["kilnrt_ms"])
            ours = public or graph
            err = row.get("rel_l2_vs_fp32", row.get("relerr"))
            eager_err = row.get("torch_eager_rel_l2_vs_fp32", row.get("eager_relerr"))
            lines.append(f"| {NAMES.get(row['model'], row['model'])} | {_shape(row)} | {_gpu(doc, row)} "
                         f"| {_ms(row.get('torch_eager_ms'))} | {_ms(row.get('torch_compile_ms'))} | {_ms(graph)} "
                         f"| {_ms(public)} | {_ratio(row.get('torch_compile_ms'), ours)} "
                         f"| {_err(err)} ({_err(eager_err)}) | `{name}` |")
    return "\n".join(lines)


def _peer_ms(row: dict, key: str) -> str:
    """A peer's time; marked where it was timed with CUDA events because it cannot be captured."""
    text = _ms(row.get(key + "_ms"))
    return text + " (events)" if row.get(key + "_graph") is False else text


def _zoo_rows() -> list[dict]:
    """The zoo's rows, one per model and batch: a later file's measured row replaces an earlier
    one's (a model measured again after a change)."""
    rows: dict[tuple, dict] = {}
    for name in ZOO:
        for row in _load(name)["rows"]:
            key = (row["model"], row["batch"])
            if row.get("kilnrt_ms") is not None or rows.get(key, {}).get("kilnrt_ms") is None:
                rows[key] = row   # a failed row does not hide a measured one
    return list(rows.values())


def zoo() -> str:
    lines = ["| model | family | batch | torch eager | torch.compile default | torch.compile max-autotune "
             "| kilnrt (public call) | `engine.run` | ÷ default | ÷ max-autotune | rel. L2 (eager's) | cold build |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios, peer_errors = [], []
    rows = _zoo_rows()
    for row in rows:
        if row.get("kilnrt_ms") is None:
            lines.append(f"| {row['model']} | {row.get('family', '')} | {row['batch']} "
                         f"| not measured: {row.get('error', '')[:60]} |||||||||")
            continue
        mark = ""
        if row.get("peer_error"):
            peer_errors.append(row["model"])
            mark = " ¹"
        if row.get("torch_compile_default_ms"):
            ratios.append(row["torch_compile_default_ms"] / row["kilnrt_ms"])
        lines.append(f"| {row['model']}{mark} | {row.get('family', '')} | {row['batch']} "
                     f"| {_peer_ms(row, 'torch_eager')} | {_peer_ms(row, 'torch_compile_default')} "
                     f"| {_peer_ms(row, 'torch_compile')} | {_ms(row['kilnrt_ms'])} "
                     f"| {_ms(row.get('kilnrt_run_ms'))} "
                     f"| {_ratio(row.get('torch_compile_default_ms'), row['kilnrt_ms'])} "
                     f"| {_ratio(row.get('torch_compile_ms'), row['kilnrt_ms'])} "
                     f"| {_err(row.get('relerr'))} ({_err(row.get('eager_relerr'))}) | {row['build_s']:.0f} s |")
    lines.append("")
    if ratios:
        geomean = _geomean(ratios)
        lines.append(f"Over the {len(ratios)} rows with the default-mode peer: kilnrt is at least 1.1× on "
                     f"{sum(r >= 1.1 for r in ratios)}, below 1.0× on {sum(r < 1.0 for r in ratios)}; geometric "
                     f"mean {geomean:.2f}×.")
        lines.append("")
    if peer_errors:
        lines.append("¹ A peer was not timed: " + "; ".join(
            f"{row['model']}: {row['peer_error'][:110]}" for row in rows if row.get("peer_error")) + ".")
        lines.append("")
    lines.append("From " + ", ".join(f"`{n}` ({_load(n)['date']}, {_load(n)['gpu']}, {_load(n)['kilnrt_commit']})"
                                     for n in ZOO) + "; a later file's row replaces an earlier one's.")
    return "\n".join(lines)


def earlier_calls() -> str:
    lines = []
    for name in CALLS:
        lines += _calls_table(_load(name)["rows"], lambda row: f"{NAMES.get(row['model'], row['model'])} batch 1")
    lines.append("")
    lines.append("From " + ", ".join(f"`{n}` ({_load(n)['date']}, {_load(n)['gpu']})" for n in CALLS) + ".")
    return "\n".join(lines)


def _build_s(build: dict | None) -> str:
    return "—" if not build else f"{build['seconds']:.1f} s"


def builds() -> str:
    lines = ["| model | cold build, earlier | cold build | warm build | kernels compiled | results file |",
             "|---|---|---|---|---|---|"]
    for name in BUILDS:
        for row in _load(name)["rows"]:
            before = row.get("cold_before_s", row.get("cold_before_parallel_compile_s"))
            kernels = (row["cold"].get("parallel_compile") or {}).get("kernels")
            was = f"{row['kernels_before']} → " if row.get("kernels_before") else ""
            lines.append(f"| {row['model']} batch {row['batch']} | {'—' if before is None else f'{before:.1f} s'} "
                         f"| {row['cold']['seconds']:.1f} s | {_build_s(row.get('warm'))} "
                         f"| {was}{'—' if kernels is None else kernels} | `{name}` |")
    lines.append("")
    lines.append("From " + ", ".join(f"`{n}` ({_load(n)['date']}, {_load(n)['gpu']})" for n in BUILDS) + ".")
    return "\n".join(lines)


def _run_rows() -> tuple[dict, list[dict]]:
    doc = _load(RUN)
    return doc, doc["rows"]


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _row_name(row: dict, batches_per_model: int) -> str:
    name = NAMES.get(row["model"], row["model"]) + (" †" if row.get("tuned") else "")
    return f"{name}, batch {row['batch']}" if batches_per_model > 1 else name


def _compile_ratio(row: dict) -> float | None:
    """torch.compile default's time over kilnrt's, where both were replayed from a CUDA graph."""
    if not row.get("torch_compile_default_ms") or row.get("torch_compile_default_graph") is False:
        return None
    return row["torch_compile_default_ms"] / row["kilnrt_ms"]


def speed() -> str:
    """README's table: every row of one run, the tuned models first."""
    doc, rows = _run_rows()
    per_model = max((sum(r["model"] == m for r in rows) for m in {r["model"] for r in rows}), default=1)
    lines = ["| model | family | torch eager | torch.compile default | kilnrt (public call) | `engine.run` "
             "| ÷ torch.compile | rel. L2 (eager's) | cold build |",
             "|---|---|---|---|---|---|---|---|---|"]
    measured = [r for r in rows if r.get("kilnrt_ms") is not None]
    for row in measured:
        lines.append(f"| {_row_name(row, per_model)} | {row.get('family', '')} | {_peer_ms(row, 'torch_eager')} "
                     f"| {_peer_ms(row, 'torch_compile_default')} | {_ms(row['kilnrt_ms'])} "
                     f"| {_ms(row.get('kilnrt_run_ms'))} "
                     f"| {_ratio(row.get('torch_compile_default_ms'), row['kilnrt_ms'])} "
                     f"| {_err(row.get('relerr'))} ({_err(row.get('eager_relerr'))}) | {row['build_s']:.0f} s |")
    lines.append("")
    ratios = [(row, _compile_ratio(row)) for row in measured if _compile_ratio(row) is not None]
    every = [v for _, v in ratios]
    tuned = [v for row, v in ratios if row.get("tuned")]
    others = [v for row, v in ratios if not row.get("tuned")]
    below = ", ".join(f"{_row_name(row, per_model).rstrip(' †')} {v:.2f}×" for row, v in ratios if v < 1.0)
    builds = [r["build_s"] for r in measured]
    lines.append(f"† tuned on. Against torch.compile's default mode, over the {len(every)} rows where both were "
                 f"replayed from a CUDA graph: geometric mean **{_geomean(every):.2f}×** ({_geomean(tuned):.2f}× on "
                 f"the {len(tuned)} kilnrt was tuned on, {_geomean(others):.2f}× on the {len(others)} nobody tuned "
                 f"for); at least 1.1× on {sum(v >= 1.1 for v in every)}; below 1.0× on {sum(v < 1.0 for v in every)}"
                 + (f" ({below})" if below else "") + f". Cold builds: {min(builds):.0f}–{max(builds):.0f} s, "
                 f"median {statistics.median(builds):.0f} s.")
    lines.append("")
    have = {(r["model"], r["batch"]) for r in rows}
    missing = [f"{r['model']} ({r.get('error', 'no result')[:80]})" for r in rows if r.get("kilnrt_ms") is None]
    missing += [f"{m} batch {b} (not reached)" if per_model > 1 else f"{m} (not reached)"
                for m, b in doc.get("planned", []) if (m, b) not in have]
    if missing:
        lines.append("Not measured in this run: " + "; ".join(missing) + ".")
        lines.append("")
    lines.append(f"From `{RUN}` ({doc['date']}, {doc['gpu']}, torch {doc['torch']}, Triton {doc['triton']}, "
                 f"kilnrt {doc['kilnrt_commit']}).")
    return "\n".join(lines)


def _calls_table(rows: list[dict], label) -> list[str]:
    lines = ["| model | `execute_async_v3` GPU time | host time per call | `engine.run` GPU time | host time per call "
             "| outer graph |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {label(row)} | {_ms(row['kilnrt_ms'])} | {row['host_us']:.1f} µs "
                     f"| {_ms(row['kilnrt_run_ms'])} | {row['run_host_us']:.1f} µs | {_ms(row['kilnrt_graph_ms'])} |")
    return lines


def calls() -> str:
    """The cost of a call, from the same run: the models kilnrt was tuned on."""
    doc, rows = _run_rows()
    per_model = max((sum(r["model"] == m for r in rows) for m in {r["model"] for r in rows}), default=1)
    lines = _calls_table([r for r in rows if r.get("tuned") and r.get("kilnrt_ms") is not None],
                         lambda row: _row_name(row, per_model).rstrip(" †"))
    lines.append("")
    lines.append(f"From `{RUN}` (the run above).")
    return "\n".join(lines)


# file -> {block name: its maker}
BLOCKS = {README: {"speed": speed, "calls": calls},
          EARLIER: {"tuned": tuned, "zoo": zoo, "calls": earlier_calls, "builds": builds}}


def render(text: str, blocks: dict) -> str:
    """``text`` with every generated block of ``blocks`` made again."""
    for name, make in blocks.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"no <!-- generated:{name} --> block")
        body = make()
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def chart() -> str:
    sys.path.insert(0, ROOT)
    from kilnrt.cli.plots import results_figure

    doc, rows = _run_rows()
    fig = results_figure([r for r in rows if r.get("kilnrt_ms") is not None], [f"{doc['gpu']}, {doc['date']}"],
                         title=f"kilnrt over each peer, one run ({doc['gpu']}, {doc['date']}, kilnrt "
                               f"{doc['kilnrt_commit']}): peer ms / kilnrt public-call ms, batch 1, FP16")
    os.makedirs(os.path.dirname(CHART), exist_ok=True)
    fig.savefig(CHART, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return CHART


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="only compare the files with what the results give")
    args = p.parse_args(argv)
    stale = []
    for path, blocks in BLOCKS.items():
        with open(path) as f:
            text = f.read()
        new = render(text, blocks)
        if new == text:
            continue
        stale.append(os.path.relpath(path, ROOT))
        if not args.check:
            with open(path, "w") as f:
                f.write(new)
    if args.check:
        if stale:
            print(f"{', '.join(stale)}: generated blocks differ from the results files: run python benchmarks/report.py")
            return 1
        return 0
    print(f"updated: {', '.join(stale) or 'nothing'}; chart: {chart()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
