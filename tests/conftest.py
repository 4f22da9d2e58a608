"""Shared pytest setup: two torch threads, the ``cuda`` marker, and small fixtures."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
# kilnrt builds for the GPU by default where one is visible; the tests that are not marked
# ``cuda`` check the CPU backend, so they keep it on every machine (cuda tests say device="cuda")
os.environ.setdefault("KILNRT_DEVICE", "cpu")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
