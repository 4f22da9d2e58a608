"""Train a small CNN on scikit-learn's bundled ``digits`` dataset and export it.

This produces kilnrt's small, real, trained default example model:

* ``examples/digits.onnx``     -- the trained CNN (eval mode), opset 17, a single
  self-contained file with the weights embedded.  Input ``"input"`` is float32
  ``[batch, 1, 8, 8]`` (pixels scaled to [0, 1]) with a dynamic ``batch`` dim;
  output ``"logits"`` is float32 ``[batch, 10]``.
* ``examples/digits_test.npz`` -- the held-out test split, with arrays
  ``images`` (float32, ``[N, 1, 8, 8]``) and ``labels`` (int64, ``[N]``).

The dataset ships with scikit-learn (``sklearn.datasets.load_digits``: 1797
8x8 grayscale images, 10 classes), so no download is needed.  The train/test
split, the seeds and the training schedule are all fixed, and training runs
single-process on 2 CPU threads with deterministic algorithms, so reruns give
the same model.

After exporting, the script checks the ONNX model with onnxruntime: it must
reach the same test accuracy as the torch model, and its op list is printed.

Rerun from the repository root with::

    python scripts/train_digits.py
"""

from __future__ import annotations

import collections
import random
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
EPOCHS = 30
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
OPSET = 17

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO_ROOT / "examples"
ONNX_PATH = EXAMPLES_DIR / "digits.onnx"
TEST_NPZ_PATH = EXAMPLES_DIR / "digits_test.npz"


def set_determinism(seed: int) -> None:
    """Seed every RNG in use and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, x_test, y_train, y_test); images are [N,1,8,8] in [0,1]."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    return train_test_split(
        images, labels, test_size=0.25, random_state=SEED, stratify=labels
    )


class DigitsCNN(nn.Module):
    """Two conv blocks, one max-pool, then a small MLP head: [B,1,8,8] -> [B,10]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def train(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray) -> None:
    """Train with Adam + cosine LR decay on fixed-seed shuffled mini-batches."""
    x = torch.from_numpy(x_train)
    y = torch.from_numpy(y_train)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)

    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(x), generator=generator)
        total_loss = 0.0
        for start in range(0, len(x), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
        scheduler.step()
        if (epoch + 1) % 5 == 0:
            print(f"epoch {epoch + 1:3d}/{EPOCHS}  train loss {total_loss / len(x):.4f}")


@torch.no_grad()
def torch_predict(model: nn.Module, images: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(images)).argmax(dim=1).numpy()


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export the eval-mode model as one self-contained ONNX file (dynamic batch)."""
    model.eval()
    dummy = torch.zeros(1, 1, 8, 8, dtype=torch.float32)
    with warnings.catch_warnings():
        # The legacy exporter is deprecated (but still present) in torch >= 2.9.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,  # legacy TorchScript exporter: weights embedded, BN folded
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    # Make sure nothing was written as external data next to the model.
    onnx_model = onnx.load(str(path), load_external_data=False)
    for init in onnx_model.graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL, init.name
    onnx.checker.check_model(onnx_model)


def onnx_op_counts(path: Path) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def ort_predict(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (predicted labels, logits) from onnxruntime on the CPU."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": images})
    return logits.argmax(axis=1), logits


def main() -> None:
    t0 = time.perf_counter()
    set_determinism(SEED)
    EXAMPLES_DIR.mkdir(parents=True, exist_ok=True)

    x_train, x_test, y_train, y_test = load_data()
    print(f"train: {len(x_train)} images, test: {len(x_test)} images")

    model = DigitsCNN()
    train(model, x_train, y_train)

    torch_acc = float((torch_predict(model, x_test) == y_test).mean())
    print(f"torch test accuracy: {torch_acc:.4f}")

    export_onnx(model, ONNX_PATH)
    np.savez_compressed(TEST_NPZ_PATH, images=x_test, labels=y_test)

    ort_pred, ort_logits = ort_predict(ONNX_PATH, x_test)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    onnx_acc = float((ort_pred == y_test).mean())
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    print(f"onnx  test accuracy: {onnx_acc:.4f}  (max |logit diff| vs torch: {max_diff:.2e})")
    assert onnx_acc == torch_acc, "onnxruntime and torch accuracies differ"

    print(f"onnx ops: {onnx_op_counts(ONNX_PATH)}")
    for path in (ONNX_PATH, TEST_NPZ_PATH):
        print(f"wrote {path.relative_to(REPO_ROOT)} ({path.stat().st_size / 1024:.1f} KiB)")
    print(f"total time: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
