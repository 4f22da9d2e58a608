"""The speed tables of README.md and docs/earlier-results.md are generated from
benchmarks/results/ (benchmarks/report.py): they must be exactly what the results files give,
and README.md's must be one run."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import report  # noqa: E402


def test_readme_speed_tables_are_the_results_files():
    assert report.main(["--check"]) == 0


def test_a_changed_figure_is_caught(monkeypatch):
    real = report._load

    def tampered(name):
        doc = real(name)
        for row in doc["rows"]:
            if "kilnrt_ms" in row:
                row["kilnrt_ms"] *= 0.5
        return doc

    monkeypatch.setattr(report, "_load", tampered)
    assert report.main(["--check"]) == 1


def test_the_readme_shows_one_run():
    """Every row of README.md's run: the file's commit (not a mixed or uncommitted one), its GPU."""
    doc = report._load(report.RUN)
    commit = doc["kilnrt_commit"]
    assert commit and commit != "mixed" and "+changes" not in commit
    assert {row.get("kilnrt_commit") for row in doc["rows"]} == {commit}
    assert {row.get("gpu") for row in doc["rows"]} == {doc["gpu"]}
