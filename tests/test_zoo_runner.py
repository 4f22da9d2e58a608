"""benchmarks/zoo.py's bookkeeping, on the CPU: ``--resume`` goes on only with a results file
of the same commit and GPU model, so one file is one run of one code on one kind of GPU."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def zoo(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("kilnrt_bench_zoo", BENCH / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Stand-in GPU")
    monkeypatch.setenv("KILNRT_COMMIT", "abc1234")
    return module


def _results(path: Path, commit: str, gpu: str = "Stand-in GPU") -> None:
    path.write_text(json.dumps({"date": "2026-12-02", "gpu": gpu, "kilnrt_commit": commit, "set": "zoo",
                                "rows": [{"model": "squeezenet1_1", "batch": 1, "kilnrt_ms": 0.09, "relerr": 1e-3,
                                          "build_s": 10.0}]}))


def test_resume_refuses_another_commits_or_gpus_file(zoo, tmp_path, capsys):
    out = tmp_path / "zoo.json"
    assert zoo.resume_mismatch(str(out), "abc1234", "Stand-in GPU") is None        # no file yet
    _results(out, "abc1234")
    assert zoo.resume_mismatch(str(out), "abc1234", "Stand-in GPU") is None
    _results(out, "0ld0000")
    assert "begun at commit 0ld0000, and this is abc1234" in zoo.resume_mismatch(str(out), "abc1234", "Stand-in GPU")
    _results(out, "abc1234", gpu="Other GPU")
    assert "begun on a Other GPU" in zoo.resume_mismatch(str(out), "abc1234", "Stand-in GPU")
    with pytest.raises(SystemExit):
        zoo.main(["--models", "squeezenet1_1", "--batches", "1", "--out", str(out), "--resume"])
    assert "one results file holds one commit's run" in capsys.readouterr().err
    # code that cannot be shown to be the same: unknown, or with uncommitted changes
    _results(out, "abc1234")
    assert "not known" in zoo.resume_mismatch(str(out), None, "Stand-in GPU")
    assert "abc1234+changes" in zoo.resume_mismatch(str(out), "abc1234+changes", "Stand-in GPU")
    out.write_text("{not json")
    assert "cannot be read" in zoo.resume_mismatch(str(out), "abc1234", "Stand-in GPU")
    with pytest.raises(SystemExit):
        zoo.main(["--models", "squeezenet1_1", "--out", str(out), "--resume-any-commit"])
    assert "goes with --resume" in capsys.readouterr().err


def test_resume_any_commit_goes_on_and_skips_the_rows_held(zoo, tmp_path, monkeypatch):
    out = tmp_path / "zoo.json"
    _results(out, "0ld0000")
    seen = []

    def prepare_all(todo, *args, **kwargs):   # no GPU here: every row's preparation fails
        seen.extend(todo)
        return {key: RuntimeError("stand-in") for key in todo}, []

    monkeypatch.setattr(zoo, "prepare_all", prepare_all)
    zoo.main(["--models", "squeezenet1_1,shufflenet_v2_x1_0", "--batches", "1", "--out", str(out), "--resume",
              "--resume-any-commit", "--peers", "eager", "--folder", str(tmp_path / "rows")])
    assert [name for name, _ in seen] == ["shufflenet_v2_x1_0"]   # squeezenet1_1's row was held
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert [r["model"] for r in rows] == ["squeezenet1_1", "shufflenet_v2_x1_0"]
    assert rows[0]["kilnrt_ms"] == 0.09 and "stand-in" in rows[1]["error"]
    # each row names its commit (the held one its file's), and the file says it is mixed
    assert [r["kilnrt_commit"] for r in rows] == ["0ld0000", "abc1234"]
    assert doc["kilnrt_commit"] == "mixed" and doc["gpu"] == "Stand-in GPU"
    assert "begun at commit mixed" in zoo.resume_mismatch(str(out), "abc1234", "Stand-in GPU")


def test_the_planned_rows_are_kept_across_resumed_runs(zoo, tmp_path):
    """A results file lists the rows its runs set out to measure, so that a report can name
    the ones a stopped run never reached."""
    out = tmp_path / "zoo.json"
    assert zoo.load_planned(str(out)) == []
    zoo.write_results(str(out), [{"model": "squeezenet1_1", "batch": 1, "kilnrt_ms": 0.09}],
                      [["squeezenet1_1", 1], ["gpt2", 1]])
    doc = json.loads(out.read_text())
    assert doc["planned"] == [["squeezenet1_1", 1], ["gpt2", 1]] and doc["kilnrt_commit"] == "abc1234"
    assert zoo.load_planned(str(out)) == [["squeezenet1_1", 1], ["gpt2", 1]]
