"""Shared test set-up: CPU only, fp32, deterministic, no network."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import torch  # noqa: E402

# On a loaded 2-core machine, intra-op threads make tiny ops orders of magnitude slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def root() -> Path:
    return ROOT


def python_bin() -> str:
    return sys.executable
