"""Every convolution tactic on real layers: right answers, then speed.

    python benchmarks/conv_check.py                # all layers
    python benchmarks/conv_check.py --only resnet  # layers whose label contains "resnet"

For depthwise layers of MobileNetV2, EfficientNet-B0 and ConvNeXt-T and dense layers of
ResNet-50 (fp16, channels-last, batch 1 and a large batch) every tactic the builder would
time for the layer runs: the output must match PyTorch's ``act(conv2d(x) + bias)`` in
float32 within fp16 tolerance, and each tactic's median time (CUDA-graph replay) is printed
beside two floors: input read once + output written once at 4.2 TB/s, and the FLOPs at
750 TFLOP/s (H200 fp16 dense).  Exits with status 1 if any output is wrong.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kilnrt.builder.timing import time_cuda_graph  # noqa: E402
from kilnrt.kernels.registry import TacticContext, tactics_for  # noqa: E402
from kilnrt.network.dtypes import DataType  # noqa: E402
from kilnrt.network.graph import Network  # noqa: E402
from kilnrt.network.layers import ActivationType as A, ConvolutionParams, LayerKind  # noqa: E402

# (label, in channels, out channels (0: depthwise), spatial in, window, stride, activation, large batch)
LAYERS = [
    ("mobilenet_v2 dw1", 32, 0, 112, 3, 1, A.CLIP, 128),
    ("mobilenet_v2 dw2 s2", 96, 0, 112, 3, 2, A.CLIP, 128),
    ("mobilenet_v2 dw 14x14", 384, 0, 14, 3, 1, A.CLIP, 128),
    ("mobilenet_v2 expand 1x1", 24, 144, 56, 1, 1, A.CLIP, 128),
    ("efficientnet_b0 5x5 s2", 144, 0, 56, 5, 2, A.SILU, 128),
    ("efficientnet_b0 5x5", 672, 0, 14, 5, 1, A.SILU, 128),
    ("convnext_t 7x7 stage1", 96, 0, 56, 7, 1, None, 128),
    ("convnext_t stem 4x4 s4", 3, 96, 224, 4, 4, None, 128),
    ("resnet50 stem 7x7 s2", 3, 64, 224, 7, 2, A.RELU, 256),
    ("resnet50 layer1 3x3", 64, 64, 56, 3, 1, A.RELU, 256),
    ("resnet50 layer2 3x3 s2", 128, 128, 56, 3, 2, A.RELU, 256),
    ("resnet50 layer3 3x3", 256, 256, 14, 3, 1, A.RELU, 256),
    ("resnet50 layer4 3x3", 512, 512, 7, 3, 1, A.RELU, 256),
    ("resnet50 downsample 1x1 s2", 512, 1024, 28, 1, 2, None, 256),
]
ACT_FN = {A.CLIP: lambda y: y.clamp(0.0, 6.0), A.SILU: F.silu, A.RELU: F.relu, None: lambda y: y}


def check(label, c, k_out, size, k, s, act, batch) -> tuple[list[str], int]:
    groups, k_out = (c, c) if k_out == 0 else (1, k_out)
    pad = k // 2 if k % 2 else 0
    params = ConvolutionParams(num_output_maps=k_out, kernel_size_nd=(k, k), stride_nd=(s, s), pre_padding=(pad,) * 2,
                               post_padding=(pad,) * 2, num_groups=groups, activation=act,
                               activation_beta=6.0 if act == A.CLIP else 0.0)
    x = torch.randn(batch, c, size, size, device="cuda").half().contiguous(memory_format=torch.channels_last)
    w = (torch.randn(k_out, c // groups, k, k, device="cuda") / (k * (c // groups) ** 0.5)).half()
    b = torch.randn(k_out, device="cuda").half()
    net = Network()
    layer = net.add_layer(LayerKind.CONVOLUTION, params, [
        net.add_input("x", DataType.HALF, tuple(x.shape)), net.add_input("w", DataType.HALF, tuple(w.shape)),
        net.add_input("b", DataType.HALF, (k_out,))])
    ctx = TacticContext(torch.device("cuda"), {"w": w, "b": b})
    ref = ACT_FN[act](F.conv2d(x.float(), w.float(), b.float(), s, pad, 1, groups))
    floor_ms = max((x.numel() + ref.numel()) * 2 / 4.2e12, 2 * ref.numel() * k * k * (c // groups) / 750e12) * 1e3
    rows, failures = [], 0
    for tac in tactics_for(layer, "cuda", ctx):
        state = tac.prepare(layer, ctx)
        out = tac.run(state, [x, w, b])[0]
        err = (out.float() - ref).abs().max().item()
        ok = err <= 2e-2 * max(1.0, ref.abs().max().item())
        failures += not ok
        ms = time_cuda_graph(lambda: tac.run(state, [x, w, b]), iters=50, repeat=3)
        rows.append(f"{label:26s} b{batch:<4d} {tac.name:56s} {ms * 1e3:8.1f} us  floor {floor_ms * 1e3:6.1f} us"
                    f"  {'ok' if ok else f'WRONG max err {err:.3g}'}")
    return rows, failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="", help="run the layers whose label contains this")
    args = p.parse_args(argv)
    failures = 0
    for label, c, k_out, size, k, s, act, large in LAYERS:
        if args.only not in label:
            continue
        for batch in (1, large):
            rows, bad = check(label, c, k_out, size, k, s, act, batch)
            failures += bad
            print("\n".join(rows), flush=True)
    print("conv check:", "FAILED" if failures else "all outputs right")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
