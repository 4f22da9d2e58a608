"""A plugin's Triton kernel is a CUDA tactic like any other: enumerated for its layers and checked
here against the plugin's PyTorch reference on random inputs, on the CPU under Triton's interpreter
(TRITON_INTERPRET=1, set before triton is imported; see tests/test_triton_kernels.py)."""
from __future__ import annotations

import os

import pytest
import torch

if torch.cuda.is_available():  # the env var below would make every Triton tactic of this process interpreted
    pytest.skip("interpreter tests run on CPU machines", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

import kilnrt.plugins as kp  # noqa: E402
from kilnrt.kernels.registry import TacticContext, get_tactic, tactics_for  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.testing import fresh_seed  # noqa: E402


@triton.jit
def _leaky_scale(x_ptr, y_ptr, n, alpha, slope, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    y = tl.where(x > 0, x, x * slope) * alpha
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


if not isinstance(_leaky_scale, triton.runtime.interpreter.InterpretedFunction):
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; run this file on its own",
                allow_module_level=True)


@pytest.fixture(scope="module")
def leaky_scale():
    @kp.register("triton_test::leaky_scale", shape=lambda x, *, alpha, slope: x.like())
    def leaky_scale(x: torch.Tensor, *, alpha: float = 1.0, slope: float = 0.01) -> torch.Tensor:
        return torch.where(x > 0, x, x * slope) * alpha

    @leaky_scale.kernel("triton", supports=lambda x, **_: x.dtype in (DataType.FLOAT, DataType.HALF))
    def _(x, *, alpha, slope):
        x = x.contiguous()
        y = torch.empty_like(x)
        n = x.numel()
        _leaky_scale[(triton.cdiv(n, 256),)](x, y, n, alpha, slope, BLOCK=256)
        return y

    yield leaky_scale
    kp.deregister("triton_test::leaky_scale")


@pytest.mark.parametrize("dtype, shape", [(torch.float32, (7, 33)), (torch.float16, (2, 3, 100)),
                                          (torch.float32, (1000,))])
def test_triton_plugin_tactic_matches_the_reference(leaky_scale, dtype, shape):
    seed = fresh_seed()
    torch.manual_seed(seed)
    net = Network()
    x = net.add_input("x", DataType.from_torch(dtype), shape)
    layer = net.add_plugin_v3([x], [], leaky_scale.instance(alpha=1.7, slope=0.2))
    ctx = TacticContext(torch.device("cpu"))
    names = [t.name for t in tactics_for(layer, "cuda", ctx)]
    assert "cuda.plugin.triton_test::leaky_scale.v1.triton" in names and "cuda.plugin.torch" in names
    tactic = get_tactic("cuda.plugin.triton_test::leaky_scale.v1.triton")
    xv = torch.randn(shape).to(dtype)
    [out] = tactic.run(tactic.prepare(layer, ctx), [xv])
    ref = leaky_scale(xv.double(), alpha=1.7, slope=0.2)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert out.dtype == dtype and out.shape == xv.shape
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=lambda m: f"seed={seed}\n{m}")


def test_triton_plugin_tactic_declines_what_its_supports_rule_refuses(leaky_scale):
    net = Network()
    x = net.add_input("x", DataType.DOUBLE, (4, 4))
    layer = net.add_plugin_v3([x], [], leaky_scale.instance())
    names = [t.name for t in tactics_for(layer, "cuda", TacticContext(torch.device("cpu")))]
    assert names == ["cuda.plugin.torch"]
