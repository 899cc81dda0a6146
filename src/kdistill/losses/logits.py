"""Pure loss functions on logits: no config, no module state, no names.

Every function takes tensors and returns a scalar tensor (mean over the labelled / all rows), so they
can be tested against closed-form values and reused by any wiring.
Labels equal to ``-1`` mark unlabelled rows (a transfer set whose labels the student must not read).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -1


def _check_temperature(T: float) -> None:
    # ``not T > 0`` also catches NaN, which would otherwise turn every loss into NaN silently.
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f"temperature T must be a finite number > 0, got {T}")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled rows; exactly 0 (with a graph) when no row is labelled."""
    mask = labels != IGNORE
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask], labels[mask])


def label_smoothing_ce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy against ``(1 - eps) * onehot + eps / K`` (Szegedy et al. 2016).

    Written out instead of calling ``F.cross_entropy(label_smoothing=...)`` so the target is explicit:
    every wrong class gets the same ``eps / K``, which is precisely the information about class
    similarity that a teacher's soft targets carry and label smoothing throws away.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    mask = labels != IGNORE
    if not bool(mask.any()):
        return logits.sum() * 0.0
    logp = F.log_softmax(logits[mask], dim=-1)
    nll = -logp.gather(1, labels[mask, None]).squeeze(1)
    uniform = -logp.mean(dim=-1)
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean()


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T))``, mean over rows, computed from log-softmaxes for stability."""
    _check_temperature(T)
    # Compute both softmaxes in at least float32 (a float16 cache or a bf16 autocast teacher loses too
    # much in the exponent) without ever downcasting float64 inputs.
    t = teacher_logits.detach()
    dtype = torch.promote_types(torch.promote_types(t.dtype, student_logits.dtype), torch.float32)
    log_p_s = F.log_softmax(student_logits.to(dtype) / T, dim=-1)
    log_p_t = F.log_softmax(t.to(dtype) / T, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def kd_loss_parts(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    T: float,
    alpha: float,
) -> dict[str, torch.Tensor]:
    """Hinton et al. (2015): ``alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(s, y)``.

    The soft term is multiplied by ``T^2`` because its gradient with respect to the logits scales as
    ``1/T^2``; with the factor, changing T does not silently re-weight soft against hard targets.
    Returns the weighted parts (``soft``, ``hard``) and their sum (``loss``).
    """
    _check_temperature(T)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    soft = (
        alpha * T * T * soft_target_kl(student_logits, teacher_logits, T) if alpha > 0 else student_logits.sum() * 0.0
    )
    hard = (1.0 - alpha) * cross_entropy(student_logits, labels) if alpha < 1 else student_logits.sum() * 0.0
    return {"loss": soft + hard, "soft": soft, "hard": hard}


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    T: float = 4.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """The total Hinton KD loss (see :func:`kd_loss_parts`)."""
    return kd_loss_parts(student_logits, teacher_logits, labels, T, alpha)["loss"]
