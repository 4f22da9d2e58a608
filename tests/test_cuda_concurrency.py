"""A build beside other CUDA work in the same process: the builder's timing captures must not
take in another thread's kernels, nor make its allocations and synchronizations fail."""
from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import kilnrt
from kilnrt.testing import fresh_seed

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _mlp(seed: int, width: int = 256, depth: int = 6) -> bytes:
    """A stack of GEMM + ReLU layers: a few tactics to time for each."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(depth):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        b = rng.standard_normal(width).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"g{i}"]),
                  helper.make_node("Relu", [f"g{i}"], [f"r{i}"])]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [32, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def build_beside_cuda_work(seed: int) -> tuple[list[str], int, float]:
    """Build an engine (no timing cache: every tactic is timed) while another thread copies
    host data of new sizes to the GPU, launches kernels on a pooled stream, frees the cache
    and synchronizes, checking each result against float64 on the host.  Returns that thread's
    errors, how many checks it made, and the engine's rel. L2 error against ONNX Runtime."""
    model = _mlp(seed)
    stop, errors, checks = threading.Event(), [], [0]

    def worker() -> None:
        rng = np.random.default_rng(seed)
        stream = torch.cuda.Stream()   # one of PyTorch's pooled streams, as user code gets
        try:
            with torch.cuda.stream(stream):
                while not stop.is_set():
                    # drawn on the host: PyTorch's CUDA generator is in capture mode for every
                    # thread while any thread captures (docs/robustness.md)
                    host = torch.from_numpy(rng.standard_normal(int(rng.integers(1, 1 << 16))).astype(np.float32))
                    a = host.to("cuda")
                    got = float((a * 2 + 1).sum())   # a synchronization
                    want = float((host.double() * 2 + 1).sum())
                    if abs(got - want) > 1e-3 * max(1.0, abs(want)):
                        errors.append(f"wrong sum of {host.numel()} values: {got} against {want}")
                    checks[0] += 1
                    if checks[0] % 8 == 0:
                        torch.cuda.empty_cache()   # frees device memory: an unsafe call in a global capture
        except Exception as exc:  # noqa: BLE001 - the test reports what the thread met
            errors.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        engine = kilnrt.build(model, device="cuda", fp16=True, timing_cache=None)
    finally:
        stop.set()
        thread.join()
    x = np.random.default_rng(seed).standard_normal((32, 256)).astype(np.float32)
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = np.asarray(list(engine.run({"x": x}).values())[0], dtype=np.float32)
    return errors, checks[0], float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_a_build_beside_a_thread_running_cuda_work():
    errors, checks, rel = build_beside_cuda_work(fresh_seed())
    assert not errors, errors[:5]
    assert checks > 0
    assert rel < 1e-2, rel
