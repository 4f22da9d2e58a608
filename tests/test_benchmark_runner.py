"""benchmarks/run.py's bookkeeping, on the CPU: the results JSON is written after every row,
and a run stopped by SIGTERM (``timeout``) keeps the rows and the part of a row it measured.
The measurements themselves need a GPU; here ``bench_row`` is a stand-in that fills a row the
way the real one does, field by field."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture
def run(monkeypatch):
    spec = importlib.util.spec_from_file_location("kilnrt_bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Stand-in GPU")
    return module


def _fake_bench_row(stop_at: int | None, seen: list):
    """Fills kilnrt's and eager's numbers; at call ``stop_at`` the process gets SIGTERM where
    torch.compile would start, behind an ``except Exception`` as in inductor's autotuner."""

    def bench_row(row, name, batch, seq, precision, use_compile, iters, cache_path, log):
        seen.append((name, batch))
        row.update({"seq": None, "precision": precision, "build_s": 1.5, "rel_l2_vs_fp32": 1e-3,
                    "kilnrt_ms": 0.25 * batch, "torch_eager_ms": 0.5 * batch, "torch_eager_rel_l2_vs_fp32": 1e-3})
        if len(seen) == stop_at:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)   # the handler raises in here
            except Exception:  # noqa: BLE001 - must not swallow the stop
                pytest.fail("Stopped was caught as an Exception")
            pytest.fail("SIGTERM did not stop the row")
        row.update({"torch_compile_ms": 0.4 * batch, "speedup_vs_best_peer": 1.6})

    return bench_row


def test_every_row_is_written_as_it_finishes(run, monkeypatch, tmp_path):
    out = tmp_path / "r.json"
    seen: list = []
    written: list = []
    real_write = run.write_results

    def spy(path, stamp, rows):
        real_write(path, stamp, rows)
        written.append(len(json.loads(Path(path).read_text())["rows"]))

    monkeypatch.setattr(run, "bench_row", _fake_bench_row(None, seen))
    monkeypatch.setattr(run, "write_results", spy)
    assert run.main(["--models", "resnet50,mobilenet_v2", "--batches", "1,8", "--out", str(out)]) == 0
    assert written == [1, 2, 3, 4]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == seen == [("resnet50", 1), ("resnet50", 8),
                                                              ("mobilenet_v2", 1), ("mobilenet_v2", 8)]
    assert all("error" not in r and r["torch_compile_ms"] == pytest.approx(0.4 * r["batch"]) for r in rows)
    assert not list(tmp_path.glob("*.tmp"))


def test_sigterm_keeps_what_was_measured_and_stops(run, monkeypatch, tmp_path, capsys):
    out = tmp_path / "r.json"
    seen: list = []
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(run, "bench_row", _fake_bench_row(2, seen))
    code = run.main(["--models", "resnet50,bert", "--batches", "1,256", "--out", str(out)])
    assert code == 124
    assert signal.getsignal(signal.SIGTERM) is before   # the handler is put back
    assert seen == [("resnet50", 1), ("resnet50", 256)]   # no row started after the signal
    first, second = json.loads(out.read_text())["rows"]
    assert "error" not in first and first["torch_compile_ms"] == pytest.approx(0.4)
    assert second["kilnrt_ms"] == pytest.approx(64.0) and second["torch_eager_ms"] == pytest.approx(128.0)
    assert "torch_compile_ms" not in second and "SIGTERM" in second["error"]
    table = capsys.readouterr().out.splitlines()
    assert any(l.startswith("resnet50") and "64.000" in l and "SIGTERM" in l for l in table), table


def test_a_failing_row_keeps_its_numbers_and_the_run_goes_on(run, monkeypatch, tmp_path):
    out = tmp_path / "r.json"
    calls = []

    def bench_row(row, name, batch, *rest):
        calls.append(batch)
        row.update({"precision": "fp16", "build_s": 1.0, "rel_l2_vs_fp32": 1e-3, "kilnrt_ms": 0.3})
        if batch == 1:
            raise RuntimeError("the peer ran out of memory")

    monkeypatch.setattr(run, "bench_row", bench_row)
    assert run.main(["--models", "resnet50", "--batches", "1,2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert calls == [1, 2]
    assert rows[0]["error"] == "RuntimeError: the peer ran out of memory" and rows[0]["kilnrt_ms"] == 0.3
    assert "error" not in rows[1]
