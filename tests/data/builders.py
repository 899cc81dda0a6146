"""Tiny datasets of every format, written on the fly from the same synthetic images."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from kdistill.data.synthetic import synthetic_arrays
from tests.data.idx_files import write_idx

CLASSES = ["class0", "class1", "class2"]


def images(n_train: int = 90, n_test: int = 30, side: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic uint8 images ``(N, side, side)`` of 3 classes, ordered by class (as a folder lists them)."""
    a = synthetic_arrays(n_train=n_train, n_test=n_test, num_classes=3, side=side, seed=seed)
    out = {}
    for split in ("train", "test"):
        order = np.argsort(a[f"{split}_labels"], kind="stable")
        out[f"x_{split}"] = a[f"{split}_images"][order]
        out[f"y_{split}"] = a[f"{split}_labels"][order].astype(np.int64)
    return out


def write_folder(root: Path, data: dict[str, np.ndarray], splits: tuple[str, ...] = ("train", "test")) -> Path:
    """``root/<split>/<class>/<i>.png``; file names sort in the arrays' order within each class."""
    for split in splits:
        for i, (x, y) in enumerate(zip(data[f"x_{split}"], data[f"y_{split}"], strict=True)):
            d = root / split / CLASSES[int(y)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(d / f"{i:05d}.png")
    return root


def write_arrays(root: Path, data: dict[str, np.ndarray], compressed: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(root / "data.npz", **data)
    return root


def write_idx_files(root: Path, data: dict[str, np.ndarray]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte.gz", data["x_train"])
    write_idx(root / "train-labels-idx1-ubyte.gz", data["y_train"].astype(np.uint8))
    write_idx(root / "t10k-images-idx3-ubyte", data["x_test"])
    write_idx(root / "t10k-labels-idx1-ubyte", data["y_test"].astype(np.uint8))
    return root


def write_cifar10(root: Path, per_batch: int = 12, n_test: int = 15, seed: int = 0) -> Path:
    """A miniature ``cifar-10-batches-py``: pickled dicts of uint8 rows (3 x 32 x 32), as the real one."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(3, 3072))
    names = [b"airplane", b"automobile", b"bird"]

    def batch(n: int) -> dict:
        labels = np.arange(n) % 3
        data = (templates[labels] * 0.6 + rng.integers(0, 256, size=(n, 3072)) * 0.4).astype(np.uint8)
        return {b"batch_label": b"x", b"labels": labels.tolist(), b"data": data}

    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch), protocol=2))
    (d / "test_batch").write_bytes(pickle.dumps(batch(n_test), protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))
    return root


def in_memory(n_train: int = 90, n_test: int = 30, side: int = 8) -> tuple:
    """The same images as in-memory TensorDatasets (a ``data.factory.function`` for the comparisons)."""
    import torch
    from torch.utils.data import TensorDataset

    d = images(n_train, n_test, side)
    split = {
        s: TensorDataset(torch.from_numpy(d[f"x_{s}"][:, None]), torch.from_numpy(d[f"y_{s}"]))
        for s in ("train", "test")
    }
    return split["train"], split["test"], CLASSES
