"""Every GEMM tactic on transformer-sized problems, timed the way the builder times them.

    python benchmarks/gemm_check.py                 # BERT-base / ViT-B GEMMs at batch 1 and large
    python benchmarks/gemm_check.py --shapes 4096x768x3072:gelu_erf

Each row: M x K x N with an epilogue; each column a tactic (cuBLASLt's F.linear plus a
separate activation kernel where cuBLASLt has no such epilogue, and each Triton tile
config).  Checks every tactic's output against float32 first.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kilnrt.builder.timing import time_callable  # noqa: E402
from kilnrt.kernels.registry import TacticContext, reference_kernel, tactics_for  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.network.layers import ActivationType, LayerKind, MatrixMultiplyParams, MatrixOperation  # noqa: E402

DEFAULT = ("128x768x2304:none,128x768x768:none,128x768x3072:gelu_erf,128x3072x768:none,"
           "4096x768x2304:none,4096x768x3072:gelu_erf,4096x3072x768:none,12608x768x3072:gelu_erf")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default=DEFAULT)
    args = p.parse_args(argv)
    for spec in args.shapes.split(","):
        dims, act = spec.split(":")
        m, k, n = (int(v) for v in dims.split("x"))
        act = None if act == "none" else ActivationType(act)
        net = Network()
        ins = [net.add_input("x", DataType.HALF, (m, k)), net.add_input("w", DataType.HALF, (n, k)),
               net.add_input("b", DataType.HALF, (n,))]
        layer = net.add_layer(LayerKind.MATRIX_MULTIPLY,
                              MatrixMultiplyParams(op1=MatrixOperation.TRANSPOSE, activation=act), ins)
        w = (torch.randn(n, k, device="cuda") / k ** 0.5).half()
        b = torch.randn(n, device="cuda").half()
        x = torch.randn(m, k, device="cuda").half()
        ctx = TacticContext(torch.device("cuda"), {"w": w, "b": b})
        ref = reference_kernel(LayerKind.MATRIX_MULTIPLY)(layer.params, x.float(), w.float(), b.float())
        flops = 2 * m * k * n
        print(f"\n{m}x{k}x{n} {act.value if act else 'none'}")
        for tac in tactics_for(layer, "cuda", ctx):
            try:
                state = tac.prepare(layer, ctx)
                out = tac.run(state, [x, w, b])[0]
                err = float((out.float() - ref).norm() / ref.norm())
                ms = time_callable(lambda: tac.run(state, [x, w, b]), "cuda")
                print(f"  {tac.name:48} {ms * 1e3:8.1f} us {flops / ms / 1e9:7.1f} TFLOP/s  rel err {err:.1e}")
            except Exception as exc:  # noqa: BLE001
                print(f"  {tac.name:48} FAILED {type(exc).__name__}: {str(exc)[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
