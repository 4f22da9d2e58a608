"""benchmarks/stress.py on the CPU: contexts shared by threads, every output checked against the
single-threaded reference; a tolerance no output can meet makes every run count as wrong, so
the check is live.  The GPU run (64 contexts, 8 streams, 100,000 runs) is the real one."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

STRESS = Path(__file__).resolve().parents[1] / "benchmarks" / "stress.py"


def _stress():
    spec = importlib.util.spec_from_file_location("kilnrt_bench_stress", STRESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_threads_share_contexts_and_every_output_is_checked(tmp_path):
    stress = _stress()
    out = tmp_path / "stress.json"
    assert stress.main(["--device", "cpu", "--runs", "400", "--contexts", "6", "--threads", "3",
                        "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["runs"] == 399 and row["wrong"] == 0 and row["exceptions"] == 0
    assert row["reference_vs_cpu_max_abs"] == 0.0
    assert stress.main(["--device", "cpu", "--runs", "60", "--contexts", "2", "--threads", "2", "--atol", "-1",
                        "--out", str(out)]) == 1
    assert json.loads(out.read_text())["rows"][0]["wrong"] == 60
