"""benchmarks/stress.py on the CPU: contexts shared by threads, every output checked against the
single-threaded reference; a tolerance no output can meet makes every run count as wrong, so
the check is live.  The GPU run (64 contexts, 8 streams, 100,000 runs) is the real one."""
from __future__ import annotations

import gc
import importlib.util
import json
from pathlib import Path

import pytest

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


@pytest.mark.cuda
def test_cuda_threads_capture_and_run_at_once(tmp_path):
    """Eight threads, each on a stream of its own, capture graphs and run at the same time:
    no capture may take in another thread's kernels (the capture streams are the contexts'
    own, not torch's pooled ones) and none may fail because another thread allocates."""
    stress = _stress()
    out = tmp_path / "stress.json"
    for calls in ("v3", "run"):
        assert stress.main(["--device", "cuda", "--runs", "4000", "--contexts", "32", "--threads", "8",
                            "--calls", calls, "--out", str(out)]) == 0, out.read_text()


class _Owner:
    """What owns a capture stream (a graph cache, in kilnrt)."""


@pytest.mark.cuda
def test_cuda_capture_streams_are_never_torchs_pooled_ones():
    import torch

    from kilnrt.engine.cudagraph import _IDLE_STREAMS, owned_stream

    owners = [_Owner() for _ in range(40)]
    owned = [owned_stream(o) for o in owners]
    pooled = {torch.cuda.Stream().cuda_stream for _ in range(64)}
    handles = {s.cuda_stream for s in owned}
    assert len(handles) == 40 and not handles & pooled
    x = torch.randn(1000, device="cuda")
    with torch.cuda.stream(owned[0]):
        y = x * 2
    torch.cuda.current_stream().wait_stream(owned[0])
    torch.testing.assert_close(y, x * 2)
    # a stream whose owner is gone is handed out again, never destroyed (PyTorch's allocator
    # keeps using the handles of streams that blocks were used on)
    del owners
    gc.collect()
    idle = set(_IDLE_STREAMS[torch.cuda.current_device()])
    assert handles <= idle
    again = {owned_stream(o).cuda_stream for o in [_Owner() for _ in range(40)]}
    assert again <= idle


def test_capture_streams_go_back_when_their_owner_is_gone(monkeypatch):
    """The hand-back itself, with a stand-in driver: a stream is made only when none is idle,
    and one goes back to the idle list when its owner (not the stream object) is collected."""
    import ctypes
    from types import SimpleNamespace

    import torch

    from kilnrt.engine import cudagraph

    made = []

    def stream_create(out, flags):
        made.append(1000 + len(made))
        ctypes.cast(out, ctypes.POINTER(ctypes.c_void_p))[0] = made[-1]
        return 0

    def ctx_get_current(out):
        ctypes.cast(out, ctypes.POINTER(ctypes.c_void_p))[0] = 1
        return 0

    driver = SimpleNamespace(cuStreamCreate=stream_create, cuCtxGetCurrent=ctx_get_current)
    monkeypatch.setattr(cudagraph, "_driver", lambda: driver)
    monkeypatch.setattr(cudagraph, "_IDLE_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "ExternalStream", lambda handle, device: SimpleNamespace(cuda_stream=handle))
    a, b = _Owner(), _Owner()
    sa, sb = cudagraph.owned_stream(a), cudagraph.owned_stream(b)
    assert (sa.cuda_stream, sb.cuda_stream) == (1000, 1001) and made == [1000, 1001]
    del a
    gc.collect()
    assert cudagraph._IDLE_STREAMS == {0: [1000]}      # the stream object still lives: its owner decides
    c = _Owner()
    assert cudagraph.owned_stream(c).cuda_stream == 1000 and made == [1000, 1001]
    assert cudagraph.owned_stream(_Owner()).cuda_stream == 1002 and made == [1000, 1001, 1002]
    gc.collect()
    assert cudagraph._IDLE_STREAMS == {0: [1002]}


@pytest.mark.cuda
def test_cuda_stays_usable_after_engines_of_library_calls_are_dropped():
    """An FFT layer's engine (cuFFT plans made on its capture stream) built, run and dropped,
    twenty times; CUDA then still works in this process.  Destroying the capture streams made
    every later CUDA call fail with "context is destroyed"."""
    import numpy as np
    import torch
    from onnx import TensorProto, helper

    import kilnrt

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 3, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    axis = helper.make_tensor("axis", TensorProto.INT64, [], [1])
    graph = helper.make_graph([helper.make_node("DFT", ["x", "", "axis"], ["y"])], "dft", [x], [y], [axis])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]).SerializeToString()
    feed = np.random.default_rng(7).standard_normal((2, 8, 3, 1)).astype(np.float32)
    want = np.fft.fft(feed[..., 0], axis=1)
    for _ in range(20):
        engine = kilnrt.build(model, device="cuda")
        ctx = engine.create_execution_context()
        got = ctx.run({"x": torch.from_numpy(feed).cuda()})["y"].cpu().numpy()
        np.testing.assert_allclose(got[..., 0] + 1j * got[..., 1], want, rtol=1e-4, atol=1e-4)
        # the axis reaches the layer as a host value: no wait for the GPU, so the run is a graph
        assert ctx.graph_stats.captures == 1, ctx.graph_stats.fallback_reason
        del engine, ctx
        gc.collect()
    z = torch.randn(1000, device="cuda")
    torch.testing.assert_close((z * 2).cpu(), z.cpu() * 2)
