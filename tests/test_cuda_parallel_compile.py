"""Parallel Triton compilation before timing (kilnrt/builder/precompile.py): a cold build with
compile workers records the candidates' kernels, compiles them in forked processes, and builds
the same correct engine as a build that compiles on first launch.

Marked ``cuda``: skipped without a GPU; run on the GPU machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.cuda
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
import numpy as np, onnx, torch
from onnx import helper, numpy_helper, TensorProto
import kilnrt

rng = np.random.default_rng(0)
inits = [numpy_helper.from_array((rng.standard_normal((64, 96, 3, 3)) * 0.05).astype(np.float32), "w1"),
         numpy_helper.from_array((rng.standard_normal((64 * 400, 256)) * 0.01).astype(np.float32), "w2")]
nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["f"]),
         helper.make_node("MatMul", ["f", "w2"], ["m"]),
         helper.make_node("Softmax", ["m"], ["y"], axis=1)]
graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 96, 20, 20])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 256])], inits)
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), sys.argv[1])
engine = kilnrt.build(sys.argv[1], device="cuda", fp16=True, timing_cache=sys.argv[2] if len(sys.argv) > 2 else None)
feed = torch.from_numpy(rng.standard_normal((4, 96, 20, 20)).astype(np.float32)).cuda()
out = engine.run({"x": feed})["y"].float().cpu().numpy()
print("RESULT " + json.dumps({"info": {k: engine.build_info.get(k) for k in ("parallel_compile", "phases")},
                              "tactics": [l.tactic for l in engine.layers], "out": out.ravel()[:256].tolist()}))
"""


def _build(workers: int, cache_dir: str, timing_cache: str | None = None) -> dict:
    env = dict(os.environ, TRITON_CACHE_DIR=cache_dir, PYTHONPATH=ROOT, KILNRT_COMPILE_WORKERS=str(workers))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, os.path.join(cache_dir + ".onnx"),
                           *([timing_cache] if timing_cache else [])], env=env,
                          capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


def test_parallel_compile_builds_the_same_correct_engine(tmp_path):
    parallel = _build(4, str(tmp_path / "a"))
    serial = _build(0, str(tmp_path / "b"))
    stats = parallel["info"]["parallel_compile"]
    assert stats is not None and stats["kernels"] > 0 and stats["failed"] == 0, stats
    assert sum(stats["by_kernel"].values()) == stats["kernels"], stats
    assert 1 <= stats["launchers"] <= stats["kernels"], stats   # one launcher per kernel signature
    assert serial["info"]["parallel_compile"] is None
    assert len(parallel["tactics"]) == len(serial["tactics"])
    # same model, same inputs: the same probabilities, to FP16's accuracy (tactics may differ)
    np.testing.assert_allclose(parallel["out"], serial["out"], rtol=2e-2, atol=2e-3)
    assert abs(sum(parallel["out"]) - 1.0) < 1e-2   # the first row of a softmax sums to 1


def test_warm_build_runs_nothing_ahead_and_chooses_the_same(tmp_path):
    """A second build with the first one's timing cache and Triton cache: every layer's timings
    and written layouts come from the timing cache, so kernel discovery runs no candidate; the
    same tactics are chosen, with the same outputs."""
    cache = str(tmp_path / "timing.cache")
    cold = _build(4, str(tmp_path / "a"), cache)
    warm = _build(4, str(tmp_path / "a"), cache)
    assert cold["info"]["parallel_compile"]["discovery_runs"] > 0
    assert warm["info"]["parallel_compile"]["discovery_runs"] == 0, warm["info"]
    assert warm["tactics"] == cold["tactics"]
    np.testing.assert_allclose(warm["out"], cold["out"], rtol=1e-3, atol=1e-4)


LAUNCHER_SCRIPT = r"""
import glob, inspect, json, os
import torch, triton, triton.language as tl
from triton.backends.nvidia import driver as nvidia_driver
from kilnrt.kernels import compile_pool

@triton.jit
def _add_one(x_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) + 1, mask=i < n)

x = torch.arange(100, dtype=torch.float32, device="cuda")
with compile_pool.discover() as found:
    _add_one[(1,)](x, 100, BLOCK=128)          # recorded, not compiled nor run
stats = compile_pool.compile_all(found, 2)
cache = os.environ["TRITON_CACHE_DIR"]
launched = lambda: sorted(f for f in glob.glob(os.path.join(cache, "**", "*.so"), recursive=True)
                         if "__triton_launcher" in f)
launchers = launched()
_add_one[(1,)](x, 100, BLOCK=128)
print("RESULT " + json.dumps({"stats": stats, "launchers_before_launch": len(launchers),
      "same_after_launch": launched() == launchers,
      "per_signature": "__triton_launcher" in inspect.getsource(nvidia_driver),
      "correct": bool(torch.equal(x.cpu(), torch.arange(100, dtype=torch.float32) + 1))}))
"""


def test_workers_build_the_launchers(tmp_path):
    """On a Triton that compiles a C launcher per kernel signature, the compile workers build it:
    it is in Triton's cache before the building process first launches the kernel."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton"), PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    script = tmp_path / "launchers.py"   # a file: @triton.jit reads its kernel's source
    script.write_text(LAUNCHER_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    result = json.loads(line[len("RESULT "):])
    assert result["correct"] and result["stats"]["kernels"] == 1 and result["stats"]["failed"] == 0, result
    if not result["per_signature"]:
        pytest.skip("this Triton has one generic launcher: nothing to build")
    # built by the worker, and the one the launch then loaded (none was built again)
    assert result["launchers_before_launch"] >= 1 and result["same_after_launch"], result
