"""kilnrt.compile over real architectures with random weights, on the CPU: does each import,
build and match eager?  torchvision, timm and transformers models, each where its package is
installed (skipped otherwise); no weights are downloaded.

    python scripts/torch_frontend_sweep.py [--models a,b] [--out results.json]

Each model runs in a process of its own (a crash or a hang stops only that model).  A row is
correct when the compiled module's output on a fresh input is within rel. L2 1e-4 of eager's
(float32).  torchvision's ViT starts with a zero head (an all-zero output), so its head is
randomised here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

TORCHVISION = {"resnet18": {}, "mobilenet_v3_small": {}, "squeezenet1_1": {}, "shufflenet_v2_x0_5": {},
               "efficientnet_b0": {}, "regnet_y_400mf": {}, "convnext_tiny": {}, "swin_t": {}, "vit_b_16": {},
               "densenet121": {}, "googlenet": {"aux_logits": False, "init_weights": True}, "mnasnet0_5": {},
               "maxvit_t": {}, "inception_v3": {"aux_logits": False, "init_weights": True}}
TIMM = ["levit_128s", "mobilevit_s", "poolformer_s12", "ghostnet_100", "cspdarknet53", "pvt_v2_b0"]
TRANSFORMERS = ["bert", "gpt2", "t5_encoder", "llama"]
MODELS = list(TORCHVISION) + [f"timm:{m}" for m in TIMM] + [f"hf:{m}" for m in TRANSFORMERS]


def make(name: str):
    """(module, example input shape or "ids")."""
    import torch

    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False), (1, 3, 224, 224)
    if name.startswith("hf:"):
        import transformers as T

        kind = name[3:]
        model = {"bert": lambda: T.BertModel(T.BertConfig(num_hidden_layers=2, hidden_size=128, num_attention_heads=2,
                                                          intermediate_size=256)),
                 "gpt2": lambda: T.GPT2Model(T.GPT2Config(n_layer=2, n_embd=128, n_head=2)),
                 "t5_encoder": lambda: T.T5EncoderModel(T.T5Config(num_layers=2, d_model=128, num_heads=2, d_ff=256,
                                                                   d_kv=64)),
                 "llama": lambda: T.LlamaModel(T.LlamaConfig(num_hidden_layers=2, hidden_size=128, num_attention_heads=4,
                                                             num_key_value_heads=2, intermediate_size=256,
                                                             vocab_size=1000))}[kind]()

        class LastHidden(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids):
                return self.m(input_ids=input_ids).last_hidden_state

        return LastHidden(model), "ids"
    import torchvision.models as M

    model = getattr(M, name)(weights=None, **TORCHVISION[name])
    if name == "vit_b_16":
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    size = 299 if name == "inception_v3" else 224
    return model, (1, 3, size, size)


def one(name: str) -> dict:
    import torch

    import kilnrt

    torch.manual_seed(0)
    torch.set_num_threads(1)
    try:
        model, shape = make(name)
    except ImportError as exc:
        return {"model": name, "status": "skipped", "error": f"{type(exc).__name__}: {exc}"}
    model.eval()

    def inputs(seed):
        g = torch.Generator().manual_seed(seed)
        return (torch.randint(0, 1000, (1, 16), generator=g),) if shape == "ids" else (torch.randn(*shape, generator=g),)

    row = {"model": name}
    with torch.no_grad():
        t0 = time.perf_counter()
        try:
            compiled = kilnrt.compile(model, inputs(1))
        except Exception as exc:  # noqa: BLE001 - the row says what failed
            return {**row, "status": "failed", "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:500]}"}
        row["build_s"] = round(time.perf_counter() - t0, 2)
        x = inputs(2)
        got, want = compiled(*x).double(), model(*x).double()
    relerr = float((got - want).norm() / want.norm().clamp_min(1e-30))
    return {**row, "relerr": relerr, "status": "correct" if relerr < 1e-4 else "wrong"}


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for package in ("torch", "torchvision", "timm", "transformers"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def _commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    return done.stdout.strip() or None


def sweep(script: str, doc: str, models: list[str], one_row, set_name: str, statuses: tuple[str, ...],
          argv=None) -> int:
    """The command line both sweeps share (``doc``: the script's docstring): ``--one NAME`` prints ``one_row(NAME)`` as JSON;
    otherwise each of ``--models`` (default ``models``) runs as ``script --one NAME`` in a
    process of its own, a line is printed per row, the counts by status last, and ``--out``
    gets the rows in the results format.  Exit status 1 when a row is wrong, failed, crashed
    or timed out."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--models", default=",".join(models))
    p.add_argument("--out", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_row(args.one)))
        return 0
    rows = []
    for name in args.models.split(","):
        try:
            done = subprocess.run([sys.executable, script, "--one", name], capture_output=True, text=True, timeout=600)
            lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
            row = json.loads(lines[-1]) if lines else \
                {"model": name, "status": "crashed", "error": (done.stderr.strip().splitlines() or ["?"])[-1][:500]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "status": "timeout"}
        rows.append(row)
        print(f"{name:28} {row['status']:14} {row.get('relerr', ''):<24} {row.get('build_s', '')} "
              f"{row.get('error', '')[:110]}", flush=True)
    counts = {s: sum(r["status"] == s for r in rows) for s in statuses}
    print(counts)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "set": set_name, "device": "cpu",
                       "kilnrt_commit": _commit(), "packages": _versions(), "counts": counts, "rows": rows}, f, indent=1)
    return 0 if not (counts["wrong"] or counts["failed"] or counts["crashed"] or counts["timeout"]) else 1


def main(argv=None) -> int:
    return sweep(__file__, __doc__, MODELS, one, "torch-frontend-sweep",
                 ("correct", "wrong", "failed", "crashed", "timeout", "skipped"), argv)


if __name__ == "__main__":
    sys.exit(main())
