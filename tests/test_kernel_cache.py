"""Plans carry compiled Triton kernels as data: collected after a build, installed on load,
and nothing but kernel artifacts is ever written."""
from __future__ import annotations

import base64
import os

import pytest

from kilnrt.engine import kernel_cache


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_cache, "triton_cache_dir", lambda: str(tmp_path))
    return tmp_path


def test_collect_then_install_round_trip(cache_dir, tmp_path_factory):
    since = kernel_cache.snapshot()
    (cache_dir / "ABC123").mkdir()
    (cache_dir / "ABC123" / "kern.cubin").write_bytes(b"\x7fELF-gpu-code")
    (cache_dir / "ABC123" / "kern.json").write_text('{"name": "kern"}')
    (cache_dir / "ABC123" / "launcher.so").write_bytes(b"host code")
    entries = kernel_cache.collect(since)
    assert set(entries) == {"triton-cache/ABC123/kern.cubin", "triton-cache/ABC123/kern.json"}
    for f in (cache_dir / "ABC123").iterdir():
        f.unlink()
    assert kernel_cache.install(entries) == 2
    assert (cache_dir / "ABC123" / "kern.cubin").read_bytes() == b"\x7fELF-gpu-code"


@pytest.mark.parametrize("key", ["triton-cache/../evil/x.json", "triton-cache/a/b/c.json", "triton-cache/ABC/x.so",
                                 "triton-cache/ABC/run.py", "triton-cache//x.json"])
def test_install_refuses_anything_but_kernel_artifacts(cache_dir, key):
    assert kernel_cache.install({key: base64.b64encode(b"x").decode()}) == 0
    assert not any(p.is_file() for p in cache_dir.rglob("*"))
    assert not os.path.exists(cache_dir.parent / "evil")
