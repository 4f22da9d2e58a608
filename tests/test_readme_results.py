"""README.md's speed tables are generated from benchmarks/results/ (benchmarks/report.py):
they must be exactly what the results files give."""
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
