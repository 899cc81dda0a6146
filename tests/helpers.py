"""Small builders the tests share: a teacher whose train/eval modes differ, a tiny synthetic run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill.data import DataError, find_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


def make_bn_teacher(in_features: int = 6, num_classes: int = 3, seed: int = 0) -> nn.Module:
    """A tiny MLP with BatchNorm and dropout, so train/eval mode changes its outputs."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(in_features, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(8, num_classes),
    )
    # Non-trivial running statistics, so that eval-mode outputs differ clearly from train-mode ones.
    bn = model[1]
    bn.running_mean.uniform_(-1.0, 1.0)
    bn.running_var.uniform_(0.5, 2.0)
    return model


def outlier_inputs(n: int = 256) -> torch.Tensor:
    """Inputs of width 16 with two channels 60 times wider than the rest, as a transformer's activations have
    (what SmoothQuant is for)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 16, generator=g)
    x[:, 3] *= 60
    x[:, 11] *= 60
    return x


def synthetic_overrides(tmp_path: Path, name: str = "syn") -> list[str]:
    """A whole run in seconds: 400 synthetic 8x8 images of 4 classes, MLP teacher and student, 2 seeds."""
    return [
        "data.name=synthetic",
        "data.val_size=60",
        "data.synthetic={n_train: 400, n_test: 200, num_classes: 4, side: 8}",
        "teacher.model.arch=mlp",
        "teacher.model.kwargs={hidden: [32]}",
        "teacher.train.epochs=3",
        "student.model.kwargs={hidden: [8]}",
        "student.train.epochs=2",
        "seeds=[0,1]",
        "threads=1",
        f"output_dir={tmp_path}",
        f"name={name}",
    ]


def skip_without_fashion() -> None:
    """Skip a test that needs the real Fashion-MNIST files when they are absent, except under ``make test`` (CI):
    there ``KDISTILL_REQUIRE_FASHION=1`` makes it a failure, so no run can pass with the configs uncovered."""
    if fashion_available():
        return
    why = "Fashion-MNIST files not installed (run scripts/get_data.sh)"
    if os.environ.get("KDISTILL_REQUIRE_FASHION") == "1":
        pytest.fail(why + "; KDISTILL_REQUIRE_FASHION=1 (make test) requires them")
    pytest.skip(why)


def fashion_available() -> bool:
    try:
        find_fashion_mnist(download=False)
        return True
    except DataError:
        return False


def cli_run(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m kdistill run <empty config> ARGS`` in a child process (every setting from the overrides)."""
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    return subprocess.run(
        [sys.executable, "-m", "kdistill", "run", str(config), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=300,
    )
