"""A seeded, learnable image set for tests: each class is a fixed random template plus noise."""

from __future__ import annotations

import numpy as np

from kdistill.data.raw import RawData, SourceArgs


def synthetic_arrays(
    n_train: int = 600, n_test: int = 200, num_classes: int = 4, side: int = 8, seed: int = 0
) -> dict[str, np.ndarray]:
    """A seeded, learnable image set: each class is a fixed random template plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(num_classes, side, side))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, num_classes, size=n)
        x = templates[y] * 0.6 + rng.uniform(0, 255, size=(n, side, side)) * 0.4
        return x.clip(0, 255).astype(np.uint8), y.astype(np.uint8)

    tx, ty = make(n_train)
    sx, sy = make(n_test)
    return {"train_images": tx, "train_labels": ty, "test_images": sx, "test_labels": sy}


def synthetic(args: SourceArgs) -> RawData:
    """Source ``synthetic``; ``data.synthetic`` holds :func:`synthetic_arrays`' keyword arguments."""
    arrays = synthetic_arrays(**args.options)
    classes = [f"class{i}" for i in range(int(arrays["train_labels"].max()) + 1)]
    return RawData(**arrays, class_names=classes)
