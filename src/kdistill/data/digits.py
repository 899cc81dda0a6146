"""scikit-learn's bundled 8x8 digits (1,797 images, no download)."""

from __future__ import annotations

import numpy as np

from kdistill.data.raw import RawData, SourceArgs


def digits_arrays(test_fraction: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), split into train and test."""
    # Imported here: scikit-learn takes about a second to import, and only this source needs it.
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    y = d.target.astype(np.uint8)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return {"train_images": x[tr], "train_labels": y[tr], "test_images": x[te], "test_labels": y[te]}


def digits(args: SourceArgs) -> RawData:
    """Source ``digits``. The test split is fixed (seed 0) like Fashion-MNIST's: split_seed only moves
    train/val."""
    return RawData(**digits_arrays(), class_names=[str(i) for i in range(10)])
