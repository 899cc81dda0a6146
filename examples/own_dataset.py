"""A dataset factory for ``data.name: factory``: your own ``torch.utils.data.Dataset`` in a kdistill run.

    kdistill run configs/own_data/factory.yaml data.root=DIR      # DIR/train/<class>/*.png, DIR/test/<class>/...

``datasets(root)`` returns ``(train, test, class_names)``; each item is ``(image tensor (C, H, W) uint8, label)``,
read from disk with Pillow when asked for, as a typical user Dataset does. kdistill reads every item once
(into memory, or into prepared files when the data is larger than ``data.memory_budget_mb``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


class ImageFiles(Dataset):
    """``root/<split>/<class>/<image>``, decoded on demand, grey or RGB as stored, resized to ``size``."""

    def __init__(self, root: str | Path, split: str, classes: list[str], size: int = 32) -> None:
        self.size = size
        folders = [(c, Path(root) / split / name) for c, name in enumerate(classes)]
        self.items = [(p, c) for c, d in folders for p in sorted(d.iterdir()) if p.is_file()]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        with Image.open(path) as img:
            img = img.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy())
        return x, label


def datasets(root: str, size: int = 32) -> tuple[Dataset, Dataset, list[str]]:
    classes = sorted(p.name for p in (Path(root) / "train").iterdir() if p.is_dir())
    return ImageFiles(root, "train", classes, size), ImageFiles(root, "test", classes, size), classes
