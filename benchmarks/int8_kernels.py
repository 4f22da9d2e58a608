"""INT8 against FP16 GEMM kernels on the GPU, on the GEMM shapes of BERT-base at 32x128.

For each ``[M, K] @ [K, N]``: cuBLAS FP16 (``torch.mm``), kilnrt's FP16 Triton GEMM (best tile),
kilnrt's INT8 Triton GEMM (best tile; float input quantized in the kernel, and an int8 input),
cuBLASLt INT8 (``torch._int_mm``, weights column-major and row-major) with the separate
quantize and rescale passes the ``int_mm`` tactic runs, kilnrt's quantize kernel alone (what a
QUANTIZE layer before an 8-bit GEMM costs), and FP8 E4M3: kilnrt's Triton GEMM on an FP8 input and
cuBLASLt's ``torch._scaled_mm``.  Every INT8 result is checked against the exact integer product.
Prints a table; ``--json PATH`` writes the rows.

    python benchmarks/int8_kernels.py [--json out.json]   (FP8 columns need compute capability 8.9+)
"""
from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.testing

from kilnrt.kernels.triton import gemm as fp16_gemm
from kilnrt.kernels.triton import gemm_int8, quantize
from kilnrt.kernels.triton.gemm import config_dict
from kilnrt.network.dtypes import DataType

SHAPES = [(4096, 768, 2304), (4096, 768, 768), (4096, 768, 3072), (4096, 3072, 768), (256, 768, 768)]


def bench(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=50) * 1000.0   # us


def best(fns: dict) -> tuple[str, float]:
    times = {name: bench(fn) for name, fn in fns.items()}
    name = min(times, key=times.get)
    return name, times[name]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for m, k, n in SHAPES:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        w16 = torch.randn(k, n, device="cuda", dtype=torch.float16) / k ** 0.5
        w8 = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
        ws = torch.rand(n, device="cuda") * 1e-3 + 1e-4
        s = float(x.abs().max()) / 127
        q = gemm_int8.Int8Weights(w8, ws, s, 0, DataType.INT8)
        xq = torch.clamp(torch.round(x.float() / s), -128, 127).to(torch.int8)
        exact = (xq.double() @ w8.double().t()) * (ws.double() * s)
        row = {"m": m, "k": k, "n": n}
        row["cublas_fp16_us"] = bench(lambda: torch.mm(x, w16))
        cfg16 = {fp16_gemm.config_name(*c): config_dict(*c) for c in fp16_gemm.CONFIGS}
        row["triton_fp16"], row["triton_fp16_us"] = best(
            {nm: (lambda c=c: fp16_gemm.gemm(x, w16, None, None, "none", 0, 0, c)) for nm, c in cfg16.items()})
        cfg8 = {fp16_gemm.config_name(*c): config_dict(*c) for c in gemm_int8.CONFIGS}
        errs = []
        for c in cfg8.values():
            y = gemm_int8.gemm_int8(x, q, None, None, "none", 0, 0, c, torch.float32)
            errs.append(float(((y.double() - exact).abs().max() / exact.abs().max())))
        row["int8_max_rel_err"] = max(errs)
        row["triton_int8"], row["triton_int8_us"] = best(
            {nm: (lambda c=c: gemm_int8.gemm_int8(x, q, None, None, "none", 0, 0, c, torch.float16))
             for nm, c in cfg8.items()})
        row["triton_int8_in"], row["triton_int8_in_us"] = best(
            {nm: (lambda c=c: gemm_int8.gemm_int8(xq, q, None, None, "none", 0, 0, c, torch.float16, True))
             for nm, c in cfg8.items()})
        wcol = w8.t()                      # [K, N] column-major: cuBLASLt's INT8 layout
        wrow = w8.t().contiguous()         # [K, N] row-major
        row["int_mm_colmajor_us"] = bench(lambda: torch._int_mm(xq, wcol))
        row["int_mm_rowmajor_us"] = bench(lambda: torch._int_mm(xq, wrow))
        row["int_mm_tactic_us"] = bench(lambda: (torch._int_mm(torch.clamp(torch.round(x.float() / s), -128, 127)
                                                               .to(torch.int8), wcol).float() * (ws * s)).half())
        xq8 = torch.empty_like(xq)
        row["quantize_us"] = bench(lambda: quantize._quantize[(triton.cdiv(x.numel(), quantize.BLOCK),)](
            x, xq8, x.numel(), 1.0 / s, 0.0, -128.0, 127.0, FP8=False, BLOCK=quantize.BLOCK, num_warps=8,
            USE_PDL=False))
        assert torch.equal(xq8, xq) or float((xq8.int() - xq.int()).abs().max()) <= 1
        s8 = float(x.abs().max()) / 448
        w8f = (torch.randn(n, k, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
        q8 = gemm_int8.Int8Weights(w8f, ws, s8, 0, DataType.FP8)
        xf = (x.float() / s8).clamp(-448, 448).to(torch.float8_e4m3fn)
        exact8 = (xf.double() @ w8f.double().t()) * (ws.double() * s8)
        y8 = gemm_int8.gemm_int8(xf, q8, None, None, "none", 0, 0, config_dict(*gemm_int8.CONFIGS[0]), torch.float32,
                                 True)
        row["fp8_max_rel_err"] = float((y8.double() - exact8).abs().max() / exact8.abs().max())
        row["triton_fp8_in"], row["triton_fp8_in_us"] = best(
            {nm: (lambda c=c: gemm_int8.gemm_int8(xf, q8, None, None, "none", 0, 0, c, torch.float16, True))
             for nm, c in cfg8.items()})
        one = torch.ones((), device="cuda")
        row["scaled_mm_fp8_us"] = bench(lambda: torch._scaled_mm(xf, w8f.t(), one, one, out_dtype=torch.float16))
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = ["cublas_fp16_us", "triton_fp16_us", "triton_int8_us", "triton_int8_in_us", "quantize_us",
            "triton_fp8_in_us", "scaled_mm_fp8_us", "int_mm_colmajor_us", "int_mm_rowmajor_us", "int_mm_tactic_us"]
    print(f"{'M x K x N':>18} " + " ".join(f"{k[:-3]:>17}" for k in keys) + "  int8/fp8 rel err")
    for r in rows:
        print(f"{r['m']:>6}x{r['k']:>5}x{r['n']:>5} " + " ".join(f"{r[k]:>17.1f}" for k in keys)
              + f"  {r['int8_max_rel_err']:.1e} {r['fp8_max_rel_err']:.1e}  ({r['triton_int8']}, {r['triton_int8_in']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
