"""Augmentation on batched tensors: random shifts (pad + crop) and horizontal flips, seeded.

An augmentation draw is three small integers per sample: the shift ``(dy, dx)`` into the padded image
and a flip bit. :func:`apply_params` turns draws into pixels, so the same draw can be replayed later:
the online path draws per batch (:class:`Augmenter`), the teacher's view cache
(:class:`kdistill.caches.ViewCache`) draws once per (sample, view) and stores the draws.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdistill.config import AugmentConfig
from kdistill.data import Batch


def is_augmented(cfg: AugmentConfig) -> bool:
    return cfg.shift > 0 or cfg.flip


def draw_params(n: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """``n`` augmentation draws as an ``(n, 3)`` int16 tensor: shift ``dy``, ``dx`` in ``[0, 2*shift]``, flip."""
    p = cfg.shift
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    flip = (torch.rand(n, generator=gen) < 0.5) if cfg.flip else torch.zeros(n, dtype=torch.bool)
    return torch.stack([dy, dx, flip.long()], 1).to(torch.int16)


def apply_params(x: torch.Tensor, params: torch.Tensor, shift: int) -> torch.Tensor:
    """Apply per-sample draws to a batch ``(B, C, H, W)``: pad by ``shift``, crop at ``(dy, dx)``, flip.

    Padding uses each image's own minimum (the background of normalized Fashion-MNIST/digits images), so
    a shifted image grows no artificial border and a sample's view never depends on its batch-mates,
    which is what lets the cache store a view computed in another batch.
    """
    if x.dim() != 4:
        return x
    B, C, H, W = x.shape
    params = params.to(x.device).long()
    if shift > 0:
        p = shift
        fill = x.amin(dim=(1, 2, 3), keepdim=True)
        xp = F.pad(x - fill, (p, p, p, p)) + fill  # pad with zeros around the shifted image, i.e. with `fill`
        rows = (params[:, 0, None] + torch.arange(H, device=x.device)[None])[:, None, :, None]
        cols = (params[:, 1, None] + torch.arange(W, device=x.device)[None])[:, None, None, :]
        b = torch.arange(B, device=x.device)[:, None, None, None]
        c = torch.arange(C, device=x.device)[None, :, None, None]
        x = xp[b, c, rows, cols]
    flip = params[:, 2].bool()
    if bool(flip.any()):
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random shift (pad + crop) and optional horizontal flip, per sample, on a whole batch."""
    if x.dim() != 4 or not is_augmented(cfg):
        return x
    return apply_params(x, draw_params(x.shape[0], cfg, gen), cfg.shift)


class Augmenter:
    """Fresh random draws for every batch, from one generator whose state a checkpoint keeps.

    ``augmenter(batch)`` is the batch with ``x`` augmented (the very batch when augmentation is off: then
    nothing is drawn, so the generator's state does not move).
    """

    def __init__(self, cfg: AugmentConfig, generator: torch.Generator) -> None:
        self.cfg = cfg
        self.generator = generator

    @property
    def active(self) -> bool:
        return is_augmented(self.cfg)

    def __call__(self, batch: Batch) -> Batch:
        if not self.active:
            return batch
        return {**batch, "x": augment_batch(batch["x"], self.cfg, self.generator)}
