"""GPU self-check of kilnrt's Triton tactics: right answers first, then speed against the other tactics.

    python benchmarks/triton_check.py             # about a minute on an H100 with a cold Triton cache
    python benchmarks/triton_check.py --no-sweep  # only the realistic shapes

1. Sweep: every op the generated pointwise tactics cover (activations, unary, elementwise with
   and without broadcasting), fp32 on a small odd shape, against the CPU reference kernel.
2. Realistic shapes (transformer and CNN sizes): each Triton tactic against the CPU reference
   on float32 copies of the same inputs, then timed (``triton.testing.do_bench`` median)
   beside every other CUDA tactic that supports the layer (``cuda.<kind>.torch``, ...).
3. A CUDA-graph capture and replay of a Triton tactic (engines replay graphs).

Exits with status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import triton
import triton.testing

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kilnrt.kernels.registry import TacticContext, get_tactic, reference_kernel, tactics_for  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.network.layers import (ActivationParams, ActivationType as A, ElementWiseOperation as E,  # noqa: E402
                                   ElementWiseParams, LayerKind, NormalizationParams, SoftmaxParams,
                                   UnaryOperation as U, UnaryParams)

CTX = TacticContext(torch.device("cuda"))
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2)}
DT = {torch.float32: DataType.FLOAT, torch.float16: DataType.HALF, torch.bfloat16: DataType.BF16}
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def make_layer(kind, params, *specs):
    net = Network()
    ts = [net.add_input(f"in{i}", DT[dt], shape) for i, (dt, shape) in enumerate(specs)]
    return net.add_layer(kind, params, ts)


def rand(shape, dtype, positive=False):
    x = torch.randn(shape, device="cuda")
    x = torch.where(x.abs() < 1e-2, torch.full_like(x, 0.5), x)
    return (x.abs() + 0.1 if positive else x).to(dtype)


def check(layer, inputs, name=None):
    """(ok, max abs error) of a Triton tactic (default: ``cuda.<kind>.triton``) against the CPU
    reference on float32 copies."""
    tac = get_tactic(name or f"cuda.{layer.kind.value}.triton")
    if not tac.supports(layer, CTX):
        return False, float("nan"), "declined"
    out = tac.run(tac.prepare(layer, CTX), inputs)[0]
    ref = reference_kernel(layer.kind)(layer.params, *[t.float().cpu() for t in inputs])
    got = out.float().cpu()
    rtol, atol = TOL[inputs[0].dtype]
    if out.dtype != inputs[0].dtype or got.shape != ref.shape:
        return False, float("nan"), f"dtype/shape {out.dtype}{tuple(got.shape)}"
    err = (got - ref).abs().nan_to_num(0.0)
    bad = ~torch.isclose(got, ref, rtol=rtol, atol=atol, equal_nan=True)
    return not bool(bad.any()), float(err.max()) if err.numel() else 0.0, ""


def sweep() -> int:
    cases = []
    acts = [(A.RELU, 0, 0), (A.SIGMOID, 0, 0), (A.TANH, 0, 0), (A.LEAKY_RELU, 0.1, 0), (A.ELU, 1.3, 0),
            (A.SELU, 1.6732632, 1.0507010), (A.SOFTSIGN, 0, 0), (A.SOFTPLUS, 0, 0), (A.CLIP, -0.5, 0.7),
            (A.HARD_SIGMOID, 0.2, 0.5), (A.SCALED_TANH, 1.5, 0.7), (A.THRESHOLDED_RELU, 0.3, 0),
            (A.GELU_ERF, 0, 0), (A.GELU_TANH, 0, 0), (A.SILU, 0, 0), (A.MISH, 0, 0), (A.HARD_SWISH, 0, 0),
            (A.CELU, 0.8, 0)]
    shape = (37, 129)
    for act, a, b in acts:
        x = rand(shape, F32) * 3
        x.view(-1)[:4] = torch.tensor([25.0, -25.0, 1e-4, -1e-4])
        cases.append((act.name, make_layer(LayerKind.ACTIVATION, ActivationParams(act, a, b), (F32, shape)), [x]))
    for op in [U.EXP, U.LOG, U.SQRT, U.RECIP, U.ABS, U.NEG, U.SIN, U.COS, U.TAN, U.SINH, U.COSH, U.ERF,
               U.FLOOR, U.CEIL, U.SIGN]:
        x = rand(shape, F32, positive=op in (U.LOG, U.SQRT)) * 2
        cases.append((op.name, make_layer(LayerKind.UNARY, UnaryParams(op), (F32, shape)), [x]))
    for op in [E.SUM, E.PROD, E.SUB, E.DIV, E.MAX, E.MIN, E.POW]:
        for sb in [shape, (shape[-1],)]:
            a = rand(shape, F32, positive=op == E.POW) * 2
            b = rand(sb, F32, positive=op == E.DIV) * 2
            b = b.clamp(-3, 3) if op == E.POW else b
            cases.append((f"{op.name} {tuple(sb)}", make_layer(LayerKind.ELEMENTWISE, ElementWiseParams(op),
                                                               (F32, shape), (F32, sb)), [a, b]))
    failures = 0
    t0 = time.perf_counter()
    for name, layer, inputs in cases:
        ok, err, why = check(layer, inputs)
        if not ok:
            failures += 1
            print(f"  FAIL sweep {layer.kind.value:12} {name:24} max abs err {err:.3g} {why}")
    print(f"sweep: {len(cases) - failures}/{len(cases)} ops match the CPU reference (fp32, {shape}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return failures


def realistic():
    ln = NormalizationParams(axes=(1,), epsilon=1e-5)
    rms = NormalizationParams(axes=(1,), epsilon=1e-6, rms=True)
    act = lambda t: ActivationParams(t)  # noqa: E731
    return [
        ("softmax attn", LayerKind.SOFTMAX, SoftmaxParams(axis=-1), [(F16, (32 * 12 * 128, 128))]),
        ("softmax 1000", LayerKind.SOFTMAX, SoftmaxParams(axis=-1), [(F32, (4096, 1000))]),
        ("log_softmax 32000", LayerKind.SOFTMAX, SoftmaxParams(axis=-1, log=True), [(F16, (512, 32000))]),
        ("layernorm 768", LayerKind.NORMALIZATION, ln, [(F16, (4096, 768)), (F16, (768,)), (F16, (768,))]),
        ("layernorm 1024 bf16", LayerKind.NORMALIZATION, ln, [(BF16, (4096, 1024)), (BF16, (1024,)),
                                                              (BF16, (1024,))]),
        ("rmsnorm 4096", LayerKind.NORMALIZATION, rms, [(F16, (4096, 4096)), (F16, (4096,))]),
        ("instancenorm 64 ch", LayerKind.NORMALIZATION, ln, [(F16, (64, 3136)), (F16, (64, 1)), (F16, (64, 1))]),
        ("groupnorm 1 group", LayerKind.NORMALIZATION, ln, [(F16, (1, 200704)), (F16, (1, 1)), (F16, (1, 1))]),
        ("gelu_erf", LayerKind.ACTIVATION, act(A.GELU_ERF), [(F16, (4096, 3072))]),
        ("gelu_tanh", LayerKind.ACTIVATION, act(A.GELU_TANH), [(F16, (4096, 3072))]),
        ("silu", LayerKind.ACTIVATION, act(A.SILU), [(F16, (4096, 11008))]),
        ("relu NCHW", LayerKind.ACTIVATION, act(A.RELU), [(F16, (32, 64, 112, 112))]),
        ("add", LayerKind.ELEMENTWISE, ElementWiseParams(E.SUM), [(F16, (4096, 768)), (F16, (4096, 768))]),
        ("add bias", LayerKind.ELEMENTWISE, ElementWiseParams(E.SUM), [(F16, (4096, 768)), (F16, (768,))]),
        ("mul channel", LayerKind.ELEMENTWISE, ElementWiseParams(E.PROD), [(F16, (32, 64, 56, 56)),
                                                                           (F16, (1, 64, 1, 1))]),
        ("exp fp32", LayerKind.UNARY, UnaryParams(U.EXP), [(F32, (4096, 3072))]),
    ]


def bench() -> int:
    failures = 0
    rows = []
    for name, kind, params, specs in realistic():
        layer = make_layer(kind, params, *specs)
        inputs = [rand(shape, dt) for dt, shape in specs]
        times = {}
        for tac in tactics_for(layer, "cuda", CTX):
            state = tac.prepare(layer, CTX)
            times[tac.name] = triton.testing.do_bench(lambda: tac.run(state, inputs), return_mode="median")
        ours = [n for n in times if n.startswith(f"cuda.{kind.value}.triton")]   # the fastest of them
        chosen = min(ours, key=times.get) if ours else None
        ok, err, why = check(layer, inputs, chosen)
        failures += not ok
        mine = times.pop(chosen, float("nan"))
        for other in ours:
            times.pop(other, None)
        best = min(times, key=times.get) if times else "-"
        other = times.get(best, float("nan"))
        shapes = " ".join("x".join(map(str, s)) for _, s in specs)
        rows.append((name, shapes, str(specs[0][0]).replace("torch.", ""), mine, best, other, err,
                     "ok" if ok else f"FAIL {why}"))
    print(f"\n{'case':20} {'shapes':26} {'dtype':9} {'triton ms':>10} {'best other tactic':34} "
          f"{'ms':>8} {'speedup':>8} {'max err':>9}  check")
    for name, shapes, dt, mine, best, other, err, status in rows:
        print(f"{name:20} {shapes[:26]:26} {dt:9} {mine:10.4f} {best:34} {other:8.4f} {other / mine:7.2f}x "
              f"{err:9.2e}  {status}")
    return failures


def graph_replay() -> int:
    layer = make_layer(LayerKind.SOFTMAX, SoftmaxParams(axis=-1), (F16, (256, 128)))
    tac = get_tactic("cuda.softmax.triton")
    state = tac.prepare(layer, CTX)
    x = rand((256, 128), F16)
    tac.run(state, [x])  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = tac.run(state, [x])[0]
    x.copy_(rand((256, 128), F16))
    graph.replay()
    torch.cuda.synchronize()
    ok = torch.allclose(y.float(), torch.softmax(x.float(), -1), rtol=1e-2, atol=1e-3)
    print(f"\ncuda graph capture + replay of cuda.softmax.triton: {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-sweep", action="store_true", help="skip the all-ops correctness sweep")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    t0 = time.perf_counter()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    torch.manual_seed(0)
    failures = 0 if args.no_sweep else sweep()
    failures += bench()
    failures += graph_replay()
    print(f"\n{'all checks passed' if not failures else f'{failures} check(s) FAILED'} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
