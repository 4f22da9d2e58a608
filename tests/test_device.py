"""The default device: CUDA where a GPU is visible, the CPU otherwise, everywhere a device can
be chosen; and a CPU engine refuses GPU memory bound by raw pointer."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import kilnrt
from kilnrt.builder import BuilderConfig
from kilnrt.device import default_device, resolve_device
from kilnrt.errors import ExecutionError, KilnError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "examples", "digits.onnx")


@pytest.mark.parametrize("gpu", [True, False])
def test_the_gpu_when_one_is_visible(monkeypatch, gpu):
    monkeypatch.delenv("KILNRT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    want = "cuda" if gpu else "cpu"
    assert default_device() == resolve_device(None) == BuilderConfig().device == want
    from kilnrt.serve.config import ModelSettings

    assert ModelSettings("m", DIGITS).device == want


def test_the_environment_overrides_and_is_checked(monkeypatch):
    monkeypatch.setenv("KILNRT_DEVICE", "CPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cpu"
    monkeypatch.setenv("KILNRT_DEVICE", "tpu")
    with pytest.raises(KilnError, match="KILNRT_DEVICE='tpu'; use cpu or cuda"):
        default_device()
    with pytest.raises(KilnError, match="device='gpu'"):
        resolve_device("gpu")


def test_build_without_a_device_builds_where_the_default_says():
    engine = kilnrt.build(DIGITS)           # KILNRT_DEVICE=cpu in the test suite (conftest.py)
    assert engine.device == default_device() == "cpu"


def test_torch_compile_follows_the_example_inputs():
    from kilnrt.torch.compiler import _inputs_device

    assert _inputs_device((torch.randn(2),), {}) == "cpu"
    assert _inputs_device((3,), {"x": torch.randn(2)}) == "cpu"
    assert _inputs_device((), {}) is None


def test_a_cpu_engine_refuses_a_gpu_pointer(monkeypatch):
    import kilnrt.engine.context as context

    engine = kilnrt.build(DIGITS, device="cpu")
    ctx = engine.create_execution_context()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = np.empty((4, 10), np.float32)
    ctx.set_input_shape("input", x.shape)
    ctx.set_tensor_address("input", x.ctypes.data)
    ctx.set_tensor_address("logits", y.ctypes.data)
    assert ctx.execute_v2([x.ctypes.data, y.ctypes.data])   # host pointers: fine
    np.testing.assert_allclose(y, engine.run({"input": x})["logits"], rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(context, "pointer_kind", lambda ptr: "device")   # as the driver says of GPU memory
    with pytest.raises(ExecutionError, match="bound to GPU memory .* this engine runs on the CPU"):
        ctx.execute_v2([x.ctypes.data, y.ctypes.data])


@pytest.mark.cuda
def test_a_cpu_engine_refuses_real_gpu_memory():
    engine = kilnrt.build(DIGITS, device="cpu")
    x = torch.randn(4, 1, 8, 8, device="cuda")
    y = torch.empty(4, 10, device="cuda")
    ctx = engine.create_execution_context()
    ctx.set_input_shape("input", tuple(x.shape))
    with pytest.raises(ExecutionError, match="bound to GPU memory"):
        ctx.execute_v2([x.data_ptr(), y.data_ptr()])
