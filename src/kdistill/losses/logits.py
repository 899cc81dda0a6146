"""Pure loss functions on logits: no config, no module state, no names.

Every function takes tensors and returns a scalar tensor (mean over the labelled / all rows), so they
can be tested against closed-form values and reused by any wiring.
Labels equal to ``-1`` mark unlabelled rows (a transfer set whose labels the student must not read).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from kdistill.losses.checks import check_temperature, float_dtype

IGNORE = -1


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
    check_temperature(T)
    # Compute both softmaxes in at least float32 (a float16 cache or a bf16 autocast teacher loses too
    # much in the exponent) without ever downcasting float64 inputs.
    t = teacher_logits.detach()
    dtype = float_dtype(t, student_logits)
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
    check_temperature(T)
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


# ----------------------------------------------------------------------------- decoupled KD and DIST


def _check_logit_pair(name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{name} needs student and teacher logits of the same (batch, classes) shape, got "
            f"student {tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape[0] < 1 or student_logits.shape[1] < 2:
        raise ValueError(f"{name} needs at least one row and two classes, got {tuple(student_logits.shape)}")


def _check_weight(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def dkd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    T: float,
    reduction: str = "mean",
) -> dict[str, torch.Tensor]:
    """The two unweighted Decoupled-KD terms (Zhao et al. 2022), each already multiplied by ``T^2``.

    ``tckd``: KL between the teacher's and the student's binary ``[p_target, 1 - p_target]`` at T.
    ``nckd``: KL between their distributions over the non-target classes only (renormalised), at T.
    Per sample, ``T^2 KL(p_t || p_s) = tckd + (1 - p_t[target]) * nckd``, with ``p_t`` the teacher's
    softmax at T: classic KD is DKD with a target-dependent NCKD weight. ``reduction``: ``"mean"`` over
    rows, or ``"none"`` for ``(b,)`` tensors. Every row needs a label (see :func:`dkd_loss_parts`).
    """
    check_temperature(T)
    _check_logit_pair("dkd", student_logits, teacher_logits)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    b, num_classes = student_logits.shape
    if labels.shape != (b,):
        raise ValueError(f"dkd needs one label per row: labels {tuple(labels.shape)} for logits {(b, num_classes)}")
    if bool((labels == IGNORE).any()):
        raise ValueError(
            "dkd needs a label for every row: DKD splits the distributions into the target class and the rest, "
            "so an unlabelled (-1) row cannot be decoupled; filter those rows out or use soft_target_kl for them"
        )
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        lo, hi = int(labels.min()), int(labels.max())
        raise ValueError(f"dkd labels must be in [0, {num_classes}), got min {lo}, max {hi}")
    dtype = float_dtype(student_logits, teacher_logits)
    z_s = student_logits.to(dtype) / T
    z_t = teacher_logits.detach().to(dtype) / T
    target = F.one_hot(labels, num_classes).bool()

    def split(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Log-probabilities of [target, not target] straight from logsumexps (no log(1 - p) cancellation),
        # and the non-target logits themselves: removing the target column is the exact version of the
        # reference code's "subtract 1000 from the target logit before the softmax".
        lse_all = torch.logsumexp(z, dim=1)
        others = z[~target].view(b, num_classes - 1)
        log_binary = torch.stack([z[target] - lse_all, torch.logsumexp(others, dim=1) - lse_all], dim=1)
        return log_binary, F.log_softmax(others, dim=1)

    bin_s, rest_s = split(z_s)
    bin_t, rest_t = split(z_t)
    tckd = (bin_t.exp() * (bin_t - bin_s)).sum(dim=1) * (T * T)
    nckd = (rest_t.exp() * (rest_t - rest_s)).sum(dim=1) * (T * T)
    if reduction == "mean":
        tckd, nckd = tckd.mean(), nckd.mean()
    return {"tckd": tckd, "nckd": nckd}


def dkd_loss_parts(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    T: float,
    alpha: float,
    beta: float,
) -> dict[str, torch.Tensor]:
    """Decoupled KD (Zhao et al. 2022): ``loss = alpha * tckd + beta * nckd`` (mean over rows).

    Unlike :func:`kd_loss_parts`, ``tckd`` and ``nckd`` are returned *unweighted* (but ``T^2``-scaled),
    so logs show the two knowledge terms themselves. The paper's defaults are alpha = 1, beta = 8, T = 4;
    any cross-entropy term and warm-up are the caller's. Rows labelled -1 raise ``ValueError``: the
    target class is what DKD decouples on, so unlabelled rows need another loss.
    """
    _check_weight("dkd alpha", alpha)
    _check_weight("dkd beta", beta)
    terms = dkd_terms(student_logits, teacher_logits, labels, T)
    return {**terms, "loss": alpha * terms["tckd"] + beta * terms["nckd"]}


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    # Pearson correlation of matching rows; eps as in the reference code (keeps constant rows finite).
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    T: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al. 2022): match prediction *relations* by Pearson correlation instead of exact values.

    With ``P = softmax(z / T)`` as ``(b, C)`` matrices: inter-class ``= 1 - mean_i rho(P_s[i], P_t[i])``,
    intra-class ``= 1 - mean_c rho(P_s[:, c], P_t[:, c])``; loss ``= T^2 (beta * inter + gamma * intra)``.
    Pearson correlation ignores positive affine changes of either side, so a student whose rows are
    ``a * p_t + (1 - a) / C`` (same relations, less confident) is not penalised. The intra-class term
    correlates over the batch, so it needs b >= 2 whenever ``gamma > 0``.
    """
    check_temperature(T)
    _check_weight("dist beta", beta)
    _check_weight("dist gamma", gamma)
    _check_logit_pair("dist_loss", student_logits, teacher_logits)
    if gamma > 0 and student_logits.shape[0] < 2:
        raise ValueError(
            f"dist_loss intra-class term correlates over the batch and needs b >= 2, got {tuple(student_logits.shape)}"
        )
    dtype = float_dtype(student_logits, teacher_logits)
    p_s = F.softmax(student_logits.to(dtype) / T, dim=1)
    p_t = F.softmax(teacher_logits.detach().to(dtype) / T, dim=1)
    inter = 1.0 - _pearson_rows(p_s, p_t).mean()
    intra = 1.0 - _pearson_rows(p_s.T, p_t.T).mean()
    return (T * T) * (beta * inter + gamma * intra)


# ----------------------------------------------------------------------------- logit standardization, WTTM, CTKD


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score every row: ``(z - mean(z)) / (std(z) + eps)`` with the unbiased (n - 1) std, as the reference code.

    Logit standardization (Sun et al., CVPR 2024) applies this to both the student's and the teacher's logits
    before the tempered softmax: the student then only has to match the teacher's logits up to a shift and a
    positive scale, instead of also their range, which a small student often cannot reach.
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"standardize_logits needs (batch, classes >= 2) logits, got {tuple(logits.shape)}")
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + eps)


def logit_standardized_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 2.0) -> torch.Tensor:
    """``T^2 * KL(softmax(Z(t)/T) || softmax(Z(s)/T))`` with ``Z`` = :func:`standardize_logits`, mean over rows.

    Invariant to adding a constant to, or multiplying by a positive number, either side's logits. The
    gradient flows through the student's own mean and std (as in the paper's code).
    """
    check_temperature(T)
    _check_logit_pair("logit_standardized_kd", student_logits, teacher_logits)
    dtype = float_dtype(student_logits, teacher_logits)
    z_s = standardize_logits(student_logits.to(dtype))
    z_t = standardize_logits(teacher_logits.detach().to(dtype))
    return (T * T) * soft_target_kl(z_s, z_t, T)


def wttm_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, gamma: float = 0.25) -> torch.Tensor:
    """Weighted transformed teacher matching (Zheng & Yang, ICLR 2024), mean over rows.

    The teacher's probabilities are raised to the power ``gamma`` and renormalised (``softmax(gamma * t)``: a
    temperature ``1 / gamma`` on the teacher only); the student is matched at temperature 1 by
    ``U(p_t) * KL(p_t^gamma / U || softmax(s))`` with ``U(p_t) = sum_c p_t[c]^gamma``, the power sum, which is
    1 for a one-hot teacher and ``C^(1 - gamma)`` for a uniform one: samples where the teacher hesitates weigh
    more. ``gamma = 1`` is plain KD at T = 1.
    """
    if not (0.0 < gamma <= 1.0):
        raise ValueError(f"wttm gamma must be in (0, 1] (a temperature 1/gamma >= 1 on the teacher), got {gamma}")
    _check_logit_pair("wttm_loss", student_logits, teacher_logits)
    dtype = float_dtype(student_logits, teacher_logits)
    log_p_t = F.log_softmax(teacher_logits.detach().to(dtype), dim=1)
    log_q_t = F.log_softmax(gamma * log_p_t, dim=1)  # log of p_t^gamma / U, without forming p_t^gamma
    log_u = torch.logsumexp(gamma * log_p_t, dim=1)  # log U(p_t)
    log_q_s = F.log_softmax(student_logits.to(dtype), dim=1)
    kl = (log_q_t.exp() * (log_q_t - log_q_s)).sum(dim=1)
    return (log_u.exp() * kl).mean()


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def gradient_reversal(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the backward pass multiplies the gradient by ``-scale`` (Ganin & Lempitsky 2015).

    CTKD puts it between its learnable temperature and the KD loss: the student descends the loss while the
    temperature ascends it, so the temperature keeps making the task harder as the student learns.
    """
    if not (scale >= 0 and math.isfinite(scale)):
        raise ValueError(f"gradient reversal scale must be a finite number >= 0, got {scale}")
    return _GradientReversal.apply(x, scale)


def learned_temperature_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` with ``T`` a 0-dim tensor that may carry a gradient (CTKD)."""
    if T.dim() != 0:
        raise ValueError(f"learned_temperature_kd needs a scalar temperature, got shape {tuple(T.shape)}")
    check_temperature(float(T.detach()))
    _check_logit_pair("learned_temperature_kd", student_logits, teacher_logits)
    dtype = float_dtype(student_logits, teacher_logits)
    T = T.to(dtype)
    log_p_s = F.log_softmax(student_logits.to(dtype) / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().to(dtype) / T, dim=1)
    return T * T * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
