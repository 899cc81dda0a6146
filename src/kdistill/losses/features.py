"""Pure losses on intermediate feature maps: FitNets hints and attention transfer.

Same contract as :mod:`kdistill.losses.logits`: tensors in, a scalar tensor out, no module state.
Teacher features are detached: they are targets, and a loss must never push gradients into a frozen
teacher (or a cache of its features) by accident. Everything is computed in at least float32 so that
half-precision features do not lose the small differences the losses are made of.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdistill.losses.checks import check_pair, float_dtype


def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """FitNets hint (Romero et al. 2015): mean squared error between an adapted student feature and the teacher's.

    The student feature must already have gone through its regressor/adapter: this loss does no
    reshaping, because silently broadcasting or pooling would hide a wiring bug. Mean over all elements.
    """
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(
            "hint_loss needs the (adapted) student feature to have exactly the teacher's shape, got "
            f"student {tuple(student_feat.shape)}, teacher {tuple(teacher_feat.shape)}; add an adapter to the student"
        )
    if student_feat.numel() == 0:
        raise ValueError(f"hint_loss got empty features of shape {tuple(student_feat.shape)}")
    dtype = float_dtype(student_feat, teacher_feat)
    return F.mse_loss(student_feat.to(dtype), teacher_feat.detach().to(dtype))


def _check_p(p: float) -> None:
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"attention exponent p must be a finite number > 0, got {p}")


def _raw_attention(feat: torch.Tensor, p: float) -> torch.Tensor:
    # (b, c, *spatial) -> (b, *spatial): the channel mean of |f|^p, before any normalisation.
    return feat.to(float_dtype(feat)).abs().pow(p).mean(dim=1)


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention map of Zagoruyko & Komodakis (2017): ``normalize(mean_c |f_c|^p)`` flattened, shape ``(b, h*w)``.

    ``feat`` is ``(b, c, *spatial)``. Each sample's map has unit L2 norm, so only *where* the network
    looks matters, not how large its activations are.
    """
    _check_p(p)
    if feat.dim() < 3:
        raise ValueError(f"attention_map needs a (batch, channels, *spatial) feature, got shape {tuple(feat.shape)}")
    return F.normalize(_raw_attention(feat, p).flatten(1), dim=1)


def attention_transfer_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer: ``(Q_s - Q_t)^2`` averaged over batch and positions, Q the :func:`attention_map`.

    This is the reference implementation's ``(at(x) - at(y)).pow(2).mean()``; its ``beta / 2`` weight
    (1000 / 2 there) belongs to the caller. Channel counts may differ (the map averages channels out), so
    no adapter is needed. If the spatial sizes differ, both *un-normalised* maps are adaptive-average-
    pooled to the smaller height and the smaller width (2-D maps only) and then normalised; the
    pooled map is the channel mean of a pooled ``|f|^p``, not the map of a pooled feature.
    """
    _check_p(p)
    check_pair("attention_transfer_loss", student_feat, teacher_feat, min_dim=3)
    map_s = _raw_attention(student_feat, p)
    map_t = _raw_attention(teacher_feat.detach(), p)
    if map_s.shape[1:] != map_t.shape[1:]:
        if map_s.dim() != 3 or map_t.dim() != 3:
            raise ValueError(
                "attention_transfer_loss can only resize 2-D spatial maps, got "
                f"student {tuple(student_feat.shape)}, teacher {tuple(teacher_feat.shape)}"
            )
        size = (min(map_s.shape[1], map_t.shape[1]), min(map_s.shape[2], map_t.shape[2]))
        map_s = F.adaptive_avg_pool2d(map_s.unsqueeze(1), size).squeeze(1)
        map_t = F.adaptive_avg_pool2d(map_t.unsqueeze(1), size).squeeze(1)
    dtype = torch.promote_types(map_s.dtype, map_t.dtype)
    q_s = F.normalize(map_s.to(dtype).flatten(1), dim=1)
    q_t = F.normalize(map_t.to(dtype).flatten(1), dim=1)
    return (q_s - q_t).pow(2).mean()
