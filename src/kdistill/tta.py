"""Test-time augmentation as a model: :class:`ShiftAveraged` answers with the mean logits of a classifier over
fixed shifted copies of each image, a cheap ensemble of one network over views it was trained to accept.

A teacher used this way (``teacher.tta``) scores its test row, labels the transfer set and is timed with its
views: its soft targets are averaged over the very shifts its training augmentation drew from. The shifts
pad with each image's own minimum, as the training augmentation does (:func:`kdistill.augment.apply_params`),
so a shifted copy grows no border the network never saw.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from kdistill.augment import apply_params

Pattern = Literal["plus", "grid"]


def shift_offsets(shift: int, pattern: Pattern) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` offsets of the views, the unshifted image first: ``plus`` the image and its four
    ``shift``-pixel shifts up, down, left and right; ``grid`` every offset in ``{-shift, 0, shift}^2`` (9)."""
    if shift < 1:
        raise ValueError(f"tta shift must be >= 1 pixel, got {shift}")
    if pattern == "plus":
        return [(0, 0), (-shift, 0), (shift, 0), (0, -shift), (0, shift)]
    if pattern == "grid":
        steps = (0, -shift, shift)
        return [(dy, dx) for dy in steps for dx in steps]
    raise ValueError(f"unknown tta pattern {pattern!r}; use plus (5 views) or grid (9 views)")


def view_count(shift: int, pattern: Pattern, flip: bool = False) -> int:
    """How many views :class:`ShiftAveraged` answers each image from with these settings."""
    return len(shift_offsets(shift, pattern)) * (2 if flip else 1)


class ShiftAveraged(nn.Module):
    """``model``'s logits averaged over shifted views of each image (inputs ``[B, C, H, W]``); with ``flip``, over
    those views and their mirror images (twice as many: for a network trained with horizontal flips)."""

    def __init__(self, model: nn.Module, shift: int = 1, pattern: Pattern = "plus", flip: bool = False) -> None:
        super().__init__()
        self.model, self.shift = model, shift
        # Buffers, so that the views enter the state dict and with it every cache key of this teacher's outputs;
        # "mirror" exists only with flips, so a teacher without them keeps the keys its caches were built under.
        offsets = torch.tensor(shift_offsets(shift, pattern), dtype=torch.int16)
        self.register_buffer("offsets", offsets)
        if flip:
            self.register_buffer("mirror", torch.ones((), dtype=torch.int16))
        self.flips = [0, 1] if flip else [0]

    @property
    def views(self) -> int:
        """How many views each image is answered from."""
        return len(self.offsets) * len(self.flips)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"teacher.tta shifts images [B, C, H, W], got inputs of shape {tuple(x.shape)}; "
                "remove teacher.tta for data that are not images"
            )
        # apply_params crops a copy padded by `shift` at (dy, dx) in [0, 2 * shift]: offset 0 is `shift`.
        params = torch.zeros(len(x), 3, dtype=torch.int16, device=x.device)
        total = None
        for flip in self.flips:
            params[:, 2] = flip
            for dy, dx in self.offsets.tolist():
                params[:, 0], params[:, 1] = self.shift + dy, self.shift + dx
                out = self.model(apply_params(x, params, self.shift))
                total = out if total is None else total + out
        assert total is not None
        return total / self.views
