"""GPU check of ``cuda.pooling.triton_nhwc``: right answers first, then speed against the other pooling tactics.

    python benchmarks/pool_check.py            # ~20 s on an H100/H200 with a cold Triton cache
    python benchmarks/pool_check.py --tune     # also time a grid of tile sizes on the ResNet-50 shape

1. Odd sizes (H/W 1, 7, 13, 112; C 1, 3, 64, 65; 2x2 s2, 3x3 s2 p1, 3x3 s1 p1 ceil, 5x3 dilation 2)
   and NaN/inf inputs: max must equal the CPU reference kernel exactly.
2. Realistic channels-last shapes (ResNet-50's stem pool at batch 256, and others): the output
   must equal ``F.max_pool2d`` exactly (average: ``F.avg_pool2d`` within fp16 tolerance) and be
   channels-last; then every CUDA pooling tactic is timed (``triton.testing.do_bench`` median)
   and the table shows the effective bandwidth (input read once + output written), and, for
   comparison, PyTorch's pooling on the same tensor and on its NCHW copy.
3. A CUDA-graph capture and replay (engines replay graphs).

Exits with status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.testing

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kilnrt.kernels.registry import TacticContext, get_tactic, reference_kernel, tactics_for  # noqa: E402
from kilnrt.kernels.triton.pool import pool_blocks, pool_nhwc  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.network.layers import LayerKind, PaddingMode as PM, PoolingParams, PoolingType as PT  # noqa: E402

NAME = "cuda.pooling.triton_nhwc"
CTX = TacticContext(torch.device("cuda"))
DT = {torch.float32: DataType.FLOAT, torch.float16: DataType.HALF, torch.bfloat16: DataType.BF16}
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DOWN, UP = PM.EXPLICIT_ROUND_DOWN, PM.EXPLICIT_ROUND_UP

WINDOWS = {  # (window, stride, pre, post, dilation, mode)
    "2x2 s2": ((2, 2), (2, 2), (0, 0), (0, 0), (1, 1), DOWN),
    "3x3 s2 p1": ((3, 3), (2, 2), (1, 1), (1, 1), (1, 1), DOWN),
    "3x3 s1 p1 ceil": ((3, 3), (1, 1), (1, 1), (1, 1), (1, 1), UP),
    "5x3 d2": ((5, 3), (1, 1), (0, 0), (0, 0), (2, 2), DOWN),
}


def make_layer(p, dtype, shape):
    net = Network()
    return net.add_layer(LayerKind.POOLING, p, [net.add_input("x", DT[dtype], shape)])


def rand(shape, dtype):
    return torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)


def channels_last(t):
    return t.is_contiguous(memory_format=torch.channels_last)


def run_triton(p, x):
    tac = get_tactic(NAME)
    layer = make_layer(p, x.dtype, tuple(x.shape))
    if not tac.supports(layer, CTX):
        return None
    return tac.run(tac.prepare(layer, CTX), [x])[0]


def odd_sizes() -> int:
    t0, failures, cases = time.perf_counter(), 0, 0
    ref_fn = reference_kernel(LayerKind.POOLING)
    for win, args in WINDOWS.items():
        p = PoolingParams(PT.MAX, *args)
        for c in (1, 3, 64, 65):
            for hw in ((1, 1), (7, 13), (13, 7), (112, 112)):
                x = rand((2, c) + hw, F16)
                try:
                    ref = ref_fn(p, x.float().cpu())
                except RuntimeError:
                    continue  # the window does not fit (the tactic defers to the reference, which raises)
                cases += 1
                out = run_triton(p, x)
                ok = out is not None and out.shape == ref.shape and channels_last(out) \
                    and torch.equal(out.float().cpu(), ref)
                if not ok:
                    failures += 1
                    print(f"  FAIL odd size {win} x={tuple(x.shape)}")
    x = torch.randn(2, 64, 13, 13, device="cuda", dtype=F16)
    x[0, 0, 3, 4], x[1, 5, 0, 0], x[0, 7, 12, 12], x[1, 9] = float("nan"), float("nan"), float("inf"), float("-inf")
    x = x.contiguous(memory_format=torch.channels_last)
    for win, args in WINDOWS.items():
        p = PoolingParams(PT.MAX, *args)
        out, ref = run_triton(p, x), ref_fn(p, x.float().cpu())
        cases += 1
        if not torch.equal(out.float().cpu().nan_to_num(7.0), ref.nan_to_num(7.0)):
            failures += 1
            print(f"  FAIL nan/inf {win}")
    print(f"odd sizes + nan/inf: {cases - failures}/{cases} equal to the CPU reference "
          f"in {time.perf_counter() - t0:.1f} s")
    return failures


def realistic():
    max3 = PoolingParams(PT.MAX, *WINDOWS["3x3 s2 p1"])
    return [
        ("resnet50 stem", max3, (256, 64, 112, 112), F16),
        ("resnet50 stem bf16", max3, (256, 64, 112, 112), BF16),
        ("vgg 2x2 s2", PoolingParams(PT.MAX, *WINDOWS["2x2 s2"]), (64, 128, 112, 112), F16),
        ("googlenet 3x3s2 ceil", PoolingParams(PT.MAX, (3, 3), (2, 2), (0, 0), (0, 0), (), UP), (128, 192, 56, 56),
         F16),
        ("inception avg 3x3 p1", PoolingParams(PT.AVERAGE, (3, 3), (1, 1), (1, 1), (1, 1), (), DOWN, False),
         (128, 256, 35, 35), F16),
    ]


def torch_pool(p, x):
    stride, pad, dil = p.stride_nd or (1, 1), p.pre_padding or (0, 0), p.dilation_nd or (1, 1)
    ceil = p.padding_mode == UP
    if p.type == PT.MAX:
        return F.max_pool2d(x, p.window_size_nd, stride, pad, dil, ceil)
    return F.avg_pool2d(x, p.window_size_nd, stride, pad, ceil, not p.average_count_excludes_padding)


def bench() -> int:
    failures, rows = 0, []
    for name, p, shape, dtype in realistic():
        x = rand(shape, dtype)
        layer = make_layer(p, dtype, shape)
        out, ref = run_triton(p, x), torch_pool(p, x)
        if out is None:
            ok, why = False, "declined"
        elif out.shape != ref.shape or out.dtype != ref.dtype or not channels_last(out):
            ok, why = False, f"shape/dtype/layout {out.dtype}{tuple(out.shape)} {out.stride()}"
        elif p.type == PT.MAX:
            ok, why = torch.equal(out, ref), "values differ"
        else:
            ok, why = torch.allclose(out.float(), ref.float(), rtol=1e-2, atol=1e-2), "values differ"
        failures += not ok
        times = {}
        for tac in tactics_for(layer, "cuda", CTX):
            state = tac.prepare(layer, CTX)
            times[tac.name] = triton.testing.do_bench(lambda: tac.run(state, [x]), return_mode="median")
        mine = times.pop(NAME, float("nan"))
        # PyTorch's own pooling (the cuda.pooling.native tactic, for average pooling only: its max
        # pooling propagates NaN), on these NHWC values and on the same values in NCHW
        native = triton.testing.do_bench(lambda: torch_pool(p, x), return_mode="median")
        x_nchw = x.contiguous()
        native_nchw = triton.testing.do_bench(lambda: torch_pool(p, x_nchw), return_mode="median")
        moved = (x.numel() + ref.numel()) * x.element_size()
        rows.append((name, "x".join(map(str, shape)), str(dtype).replace("torch.", ""), mine, native, native_nchw,
                     min(times.values(), default=float("nan")), moved / mine / 1e6, pool_blocks(shape[1]),
                     "ok" if ok else f"FAIL {why}"))
    print(f"\n{'case':22} {'input (NCHW dims)':18} {'dtype':9} {'triton ms':>9} {'native ms':>9} "
          f"{'best other':>10} {'speedup':>8} {'GB/s':>7} {'native NCHW':>11}  {'(BLOCK_P, BLOCK_C, warps)':26} check")
    for name, shape, dt, mine, native, native_nchw, other, gbs, blocks, status in rows:
        print(f"{name:22} {shape:18} {dt:9} {mine:9.4f} {native:9.4f} {other:10.4f} {native / mine:7.2f}x "
              f"{gbs:7.0f} {native_nchw:11.4f}  {str(blocks):26} {status}")
    print("inputs are channels-last; 'best other' is the fastest other CUDA pooling tactic; GB/s counts the input "
          "read once and the output written once; 'native' is PyTorch's pooling, 'native NCHW' the same on the "
          "values in NCHW layout (ms)")
    return failures


def tune() -> None:
    """Time a grid of tile sizes on the ResNet-50 stem pool (for choosing pool_blocks' heuristic)."""
    p = PoolingParams(PT.MAX, *WINDOWS["3x3 s2 p1"])
    x = rand((256, 64, 112, 112), F16)
    ref = F.max_pool2d(x, 3, 2, 1)
    print("\ntile sweep, resnet50 stem fp16 (ms, median):")
    for block_c in (32, 64):
        for block_p in (8, 16, 32, 64, 128):
            line = []
            for warps in (1, 2, 4, 8):
                if block_p * block_c < 32 * warps * 2:
                    continue
                cfg = (block_p, block_c, warps)
                ok = torch.equal(pool_nhwc(p, x, cfg), ref)
                ms = triton.testing.do_bench(lambda: pool_nhwc(p, x, cfg), return_mode="median")
                line.append(f"w{warps}: {ms:.4f}{'' if ok else ' WRONG'}")
            print(f"  BLOCK_P {block_p:3} BLOCK_C {block_c:3}  " + "  ".join(line))


def graph_replay() -> int:
    p = PoolingParams(PT.MAX, *WINDOWS["3x3 s2 p1"])
    x = rand((8, 64, 56, 56), F16)
    tac = get_tactic(NAME)
    state = tac.prepare(make_layer(p, F16, tuple(x.shape)), CTX)
    tac.run(state, [x])  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = tac.run(state, [x])[0]
    x.copy_(rand(tuple(x.shape), F16))
    graph.replay()
    torch.cuda.synchronize()
    ok = torch.equal(y, F.max_pool2d(x, 3, 2, 1))
    print(f"\ncuda graph capture + replay of {NAME}: {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", action="store_true", help="also time a grid of tile sizes on the ResNet-50 shape")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    t0 = time.perf_counter()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    torch.manual_seed(0)
    failures = odd_sizes()
    failures += bench()
    failures += graph_replay()
    if args.tune:
        tune()
    print(f"\n{'all checks passed' if not failures else f'{failures} check(s) FAILED'} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
