"""Augmentation on batched tensors: random shifts (pad + crop), horizontal flips, mixup / cutmix, seeded.

An augmentation draw is three small integers per sample: the shift ``(dy, dx)`` into the padded image
and a flip bit. :func:`apply_params` turns draws into pixels, so the same draw can be replayed later:
the online path draws per batch (:class:`Augmenter`), the teacher's view cache
(:class:`kdistill.caches.ViewCache`) draws once per (sample, view) and stores the draws.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from kdistill.config import AugmentConfig
from kdistill.data import Batch


def is_mixing(cfg: AugmentConfig) -> bool:
    """Mixup or cutmix: each image is blended with another of its batch (no single label is left)."""
    return cfg.mixup > 0 or cfg.cutmix > 0


def is_augmented(cfg: AugmentConfig) -> bool:
    return cfg.shift > 0 or cfg.flip or is_mixing(cfg)


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
    """Random shift (pad + crop) and optional horizontal flip, per sample, on a whole batch (no mixing)."""
    if x.dim() != 4 or not (cfg.shift > 0 or cfg.flip):
        return x
    return apply_params(x, draw_params(x.shape[0], cfg, gen), cfg.shift)


def _beta(a: float, gen: torch.Generator) -> float:
    # torch's Beta sampler takes no generator; a numpy draw seeded from ours stays reproducible and resumable.
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(a, a))


def mix_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Blend every image of a ``(B, C, H, W)`` batch with a partner from the same batch.

    One draw per batch, as in the mixup / cutmix papers: a random permutation gives the partners, ``lam``
    comes from ``Beta(a, a)``; mixup returns ``lam * x + (1 - lam) * x[perm]``, cutmix pastes a box of the
    partner covering ``1 - lam`` of the image (``lam`` is then the share actually kept, after clipping the box
    to the image). With both on, each batch uses one of the two, chosen by a fair coin. Returns the mixed
    batch, ``perm`` and ``lam``.
    """
    B, _, H, W = x.shape
    use_cutmix = cfg.cutmix > 0 and (cfg.mixup <= 0 or bool(torch.rand(1, generator=gen) < 0.5))
    lam = _beta(cfg.cutmix if use_cutmix else cfg.mixup, gen)
    perm = torch.randperm(B, generator=gen).to(x.device)
    if not use_cutmix:
        return lam * x + (1.0 - lam) * x[perm], perm, lam
    cut = math.sqrt(1.0 - lam)
    h, w = round(H * cut), round(W * cut)
    cy, cx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=gen))
    cy, cx = cy % H, cx % W
    y0, y1 = max(cy - h // 2, 0), min(cy - h // 2 + h, H)
    x0, x1 = max(cx - w // 2, 0), min(cx - w // 2 + w, W)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    return out, perm, 1.0 - (y1 - y0) * (x1 - x0) / (H * W)


class Augmenter:
    """Fresh random draws for every batch, from one generator whose state a checkpoint keeps.

    ``augmenter(batch)`` is the batch with ``x`` augmented (the very batch when augmentation is off: then
    nothing is drawn, so the generator's state does not move). With mixup / cutmix the rows' labels become
    -1 (unlabelled): a blend of two images has no single label, only the teacher's output on it.
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
        x = augment_batch(batch["x"], self.cfg, self.generator)
        if not (is_mixing(self.cfg) and x.dim() == 4):
            return {**batch, "x": x}
        x, _, _ = mix_batch(x, self.cfg, self.generator)
        return {**batch, "x": x, "y": torch.full_like(batch["y"], -1)}
