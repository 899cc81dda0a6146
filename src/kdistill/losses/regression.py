"""Regression distillation: what is left of Hinton's idea when the teacher has no softmax and no temperature.

A regression teacher's "soft target" is its prediction ``t`` itself; the student learns from

    (1 - alpha) * loss(s, y)  +  alpha * loss(s, t)

on the rows that have a label ``y`` (the first term) and on every row of the transfer set (the second). An
uncertain teacher (an ensemble's spread, a Gaussian head's variance) can say how much to trust each of its
targets: weights ``1 / variance``, scaled to average 1 over the transfer set, so that equal variances give the
unweighted loss. Rows without a label carry ``NaN`` in ``y`` (the float analogue of the class label ``-1``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Kind = Literal["mse", "huber"]


def regression_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: Kind = "mse",
    delta: float = 1.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over rows and outputs of the squared error (``mse``) or the Huber loss with threshold ``delta``;
    ``weight`` (broadcastable to ``pred``) weights each element (the mean is then ``sum(w * l) / numel``, so a
    weight of 1 everywhere is the plain loss). An empty batch gives 0 (with a gradient), not NaN."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.numel() == 0:
        return pred.sum() * 0.0
    if kind == "mse":
        per = (pred - target) ** 2
    elif kind == "huber":
        per = F.huber_loss(pred, target, reduction="none", delta=delta)
    else:
        raise ValueError(f"unknown regression loss {kind!r}; use 'mse' or 'huber'")
    if weight is not None:
        per = per * weight
    return per.mean()


def inverse_variance_weights(variance: torch.Tensor, floor: float = 1e-6, max_weight: float = 10.0) -> torch.Tensor:
    """Per-element weights ``1 / variance``, scaled so that each output's weights average 1 over the rows, then
    clipped at ``max_weight`` (one near-zero variance must not take over the loss). Equal variances -> all 1."""
    if bool((variance < 0).any()) or not bool(torch.isfinite(variance).all()):
        raise ValueError("teacher variances must be finite and >= 0")
    inv = 1.0 / variance.clamp_min(floor)
    w = inv / inv.mean(dim=0, keepdim=True)
    return w.clamp(max=max_weight)


def regression_kd_parts(
    student: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor,
    alpha: float,
    kind: Kind = "mse",
    delta: float = 1.0,
    weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``{"loss", "label", "teacher"}`` of the distilled regression objective for one batch.

    ``labels`` rows that are NaN have no label: the label term is the mean over the labelled rows (0 when the batch
    has none), the teacher term the mean over all rows (weighted by ``weight`` when given). ``alpha = 0`` is plain
    regression on the labels; a teacher that predicts the labels exactly gives the plain regression loss for any
    ``alpha`` (on a fully labelled batch, unweighted)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    labelled = ~torch.isnan(labels).any(dim=-1) if labels.dim() > 1 else ~torch.isnan(labels)
    label = regression_loss(student[labelled], labels[labelled], kind, delta)
    soft = regression_loss(student, teacher.to(student.dtype), kind, delta, weight)
    return {"loss": (1.0 - alpha) * label + alpha * soft, "label": label.detach(), "teacher": soft.detach()}
