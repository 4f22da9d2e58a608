"""ONNX models nobody tuned for, on the CPU: PyTorch's default exporter (dynamo) writes each
architecture with random weights, and kilnrt's engine must match ONNX Runtime on the file.
timm and torchvision models, each where its package is installed (skipped otherwise); no
weights are downloaded.

    python scripts/onnx_model_sweep.py [--models a,b] [--out results.json]

Each model runs in a process of its own (a crash or a hang stops only that model), at batch 2.
A row is correct when every output of ``kilnrt.build(path).run`` on a fresh standard-normal
input is within rel. L2 1e-4 of ONNX Runtime's on the same file (float32).  A model whose
export fails, or that ONNX Runtime cannot run, says so and does not count against kilnrt.
torchvision's ViT starts with a zero head (an all-zero output), so its head is randomised here.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time

from torch_frontend_sweep import sweep

TIMM = ["convnext_atto", "efficientformer_l1", "efficientformerv2_s0", "fastvit_t8", "repvit_m1", "mobilevitv2_050",
        "coat_lite_tiny", "crossvit_tiny_240", "deit_tiny_patch16_224", "xcit_nano_12_p16_224", "cait_xxs24_224",
        "twins_svt_small", "tnt_s_patch16_224", "nest_tiny", "gcvit_xxtiny", "davit_tiny", "hrnet_w18_small", "dla34",
        "dpn68", "vovnet39a", "selecsls42b", "rexnet_100", "tinynet_a", "lcnet_050", "hardcorenas_a", "mixnet_s",
        "resnest14d", "skresnet18", "res2net50_14w_8s", "cspresnet50"]
TORCHVISION = ["regnet_x_400mf", "efficientnet_b0", "convnext_tiny", "vit_b_16", "swin_v2_t", "mobilenet_v2",
               "wide_resnet50_2"]
MODELS = [f"timm:{m}" for m in TIMM] + TORCHVISION
SIZES = {"timm:crossvit_tiny_240": 240}


def make(name: str):
    import torch

    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False)
    import torchvision.models as M

    model = getattr(M, name)(weights=None)
    if name == "vit_b_16":
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def one(name: str) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    import kilnrt

    torch.manual_seed(0)
    torch.set_num_threads(1)
    size = SIZES.get(name, 224)
    try:
        model = make(name).eval()
    except ImportError as exc:
        return {"model": name, "status": "skipped", "error": f"{type(exc).__name__}: {exc}"}
    row = {"model": name}
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    try:
        with torch.no_grad():
            torch.onnx.export(model, (torch.randn(2, 3, size, size),), dynamo=True).save(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - not kilnrt's: the row says what failed
        root = exc
        while root.__cause__ is not None:   # the exporter wraps the reason in advice
            root = root.__cause__
        text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(root)).split())   # without the exporter's colours
        return {**row, "status": "export failed", "error": f"{type(root).__name__}: {text[:400]}"}
    x = np.random.default_rng().standard_normal((2, 3, size, size)).astype(np.float32)
    name_in = session.get_inputs()[0].name
    want = session.run(None, {name_in: x})
    t0 = time.perf_counter()
    try:
        engine = kilnrt.build(path)
        row["build_s"] = round(time.perf_counter() - t0, 2)
        got = engine.run({name_in: x})
    except Exception as exc:  # noqa: BLE001 - the row says what failed
        return {**row, "status": "failed", "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:500]}"}
    errors = []
    for output, w in zip(session.get_outputs(), want):
        g = np.asarray(got[output.name], np.float64)
        w = np.asarray(w, np.float64)
        errors.append(float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30)) if g.shape == w.shape
                      else float("inf"))
    worst = max(errors)
    return {**row, "relerr": worst, "status": "correct" if worst < 1e-4 else "wrong"}


def main(argv=None) -> int:
    return sweep(__file__, __doc__, MODELS, one, "onnx-model-sweep",
                 ("correct", "wrong", "failed", "crashed", "timeout", "export failed", "skipped"), argv)


if __name__ == "__main__":
    sys.exit(main())
