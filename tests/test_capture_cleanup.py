"""What kilnrt does after a CUDA-graph capture fails (``kilnrt.engine.cudagraph.capturing``),
on the CPU with PyTorch's CUDA calls replaced by recorders: the capture's own error reaches
the caller, the current stream is restored, the pool's recording is ended and its share given
back, and an empty capture runs, even when one of those steps fails.  The GPU test is
``test_a_failed_capture_leaves_pytorch_as_it_was`` in tests/test_cuda_call_path.py."""
from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from kilnrt.engine import cudagraph


class _Calls:
    def __init__(self, monkeypatch, end_raises=None, heal_raises=None):
        self.log, self.stream = [], "caller"
        self.end_raises, self.heal_raises = end_raises, heal_raises
        monkeypatch.setattr(torch.cuda, "current_stream", lambda: self.stream)
        monkeypatch.setattr(torch.cuda, "set_stream", self.set_stream)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda: self.log.append("synchronize"))
        monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "heal")
        monkeypatch.setattr(torch.cuda, "graph", self.graph)
        monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", self.end, raising=False)
        monkeypatch.setattr(torch._C, "_cuda_releasePool", lambda d, p: self.log.append(("release", p)), raising=False)

    def set_stream(self, s):
        self.stream = s
        self.log.append(("set_stream", s))

    def end(self, device, pool):
        self.log.append(("end", pool))
        if self.end_raises is not None:
            raise self.end_raises

    @contextlib.contextmanager
    def graph(self, graph, pool=None, stream=None, capture_error_mode="global"):
        self.stream = stream   # as torch.cuda.graph's __enter__, whose __exit__ a failed capture skips
        self.log.append(("capture", graph, capture_error_mode))
        if graph == "heal" and self.heal_raises is not None:
            raise self.heal_raises
        yield
        if graph == "heal":   # the empty capture of the heal succeeded: its stream context exits
            self.stream = "caller"


@pytest.mark.parametrize("end_raises, released", [(None, True), (RuntimeError("not recording"), False),
                                                  (TypeError("changed signature"), False)])
def test_a_failed_capture_is_undone_and_its_error_goes_on(monkeypatch, end_raises, released):
    calls = _Calls(monkeypatch, end_raises=end_raises)
    with pytest.raises(ValueError, match="host sync in the body"):
        with cudagraph.capturing("real", (0, 7), "side", "thread_local"):
            raise ValueError("host sync in the body")
    assert calls.stream == "caller"
    assert ("end", (0, 7)) in calls.log and (("release", (0, 7)) in calls.log) == released
    assert ("capture", "heal", "thread_local") in calls.log   # the heal, in the same mode


def test_a_failing_heal_still_restores_the_stream_and_keeps_the_first_error(monkeypatch, caplog):
    calls = _Calls(monkeypatch, heal_raises=RuntimeError("sticky error"))
    with caplog.at_level(logging.WARNING, logger="kilnrt.runtime"):
        with pytest.raises(ValueError, match="the first error"):
            with cudagraph.capturing("real", (0, 7), "side"):
                raise ValueError("the first error")
    assert calls.stream == "caller"
    assert "random generator may still be in capture mode" in caplog.text


def test_a_graph_pool_moves_on_after_a_failed_capture_and_only_then(monkeypatch):
    """GraphPool: a successful capture keeps the pool; a failed one (any exception, Ctrl+C
    too) gives later captures a new handle and keeps the failed graph; the one GraphPool a
    context gives its GraphCache and BoundGraphs is shared, so both move on together."""
    calls = _Calls(monkeypatch)
    handles = iter([(0, 1), (0, 2), (0, 3)])
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: next(handles))
    pool = cudagraph.GraphPool()
    with pool.capture("ok", "side"):
        pass
    assert pool.handle == (0, 1) and ("capture", "ok", cudagraph.CAPTURE_MODE) in calls.log
    for exc in (RuntimeError("operation not permitted when stream is capturing"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with pool.capture("bad", "side"):
                raise exc
    assert pool.handle == (0, 3) and len(pool._failed) == 2
    assert [entry[1] for entry in calls.log if entry[0] == "release"] == [(0, 1), (0, 2)]
    monkeypatch.setattr(cudagraph, "owned_stream", lambda owner: "side")
    cache, bound = cudagraph.GraphCache(object(), pool=pool), cudagraph.BoundGraphs(pool=pool)
    assert cache._pool is bound._pool is pool
