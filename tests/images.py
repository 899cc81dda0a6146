"""Tiny images and a tiny conv teacher for the augmentation and cache tests."""

from __future__ import annotations

import torch
from torch import nn

from kdistill.config import AugmentConfig
from kdistill.data import Split

AUG = AugmentConfig(shift=2, flip=True)


def images(n: int = 40, side: int = 8, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, side, side, generator=g)
    return Split(x, torch.randint(0, 3, (n,), generator=g), torch.arange(n) * 2 + 5)


def conv_teacher(side: int = 8) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * side * side, 3)).eval()
