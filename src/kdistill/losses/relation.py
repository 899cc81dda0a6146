"""Pure relational distillation losses: the student matches how samples relate, not the features themselves.

Similarity-preserving KD (Tung & Mori 2019), relational KD distance and angle (Park et al. 2019) and
probabilistic knowledge transfer (Passalis & Tefas 2018). All compare batch-internal structure, so
student and teacher feature sizes may differ and no adapter is needed; inputs are ``(b, ...)`` and are
flattened to ``(b, d)``. The teacher side is detached (a target), and the batch must be the same
samples in the same order for both networks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdistill.losses.checks import check_pair, float_dtype


def _flat_pair(
    name: str, student: torch.Tensor, teacher: torch.Tensor, min_batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    check_pair(name, student, teacher, min_dim=2, min_batch=min_batch)
    dtype = float_dtype(student, teacher)
    return student.to(dtype).flatten(1), teacher.detach().to(dtype).flatten(1)


def _offdiag(n: int, device: torch.device) -> torch.Tensor:
    return ~torch.eye(n, dtype=torch.bool, device=device)


# ----------------------------------------------------------------------------- similarity preserving


def similarity_preserving_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Tung & Mori (2019): ``||G_s - G_t||_F^2 / b^2`` with ``G = row_l2_normalize(f f^T)``, f flattened.

    Row normalisation makes the loss invariant to the scale of either network's features.
    """
    f_s, f_t = _flat_pair("similarity_preserving_loss", student_feat, teacher_feat, min_batch=1)
    g_s = F.normalize(f_s @ f_s.T, dim=1)
    g_t = F.normalize(f_t @ f_t.T, dim=1)
    b = f_s.shape[0]
    return (g_s - g_t).pow(2).sum() / (b * b)


# ----------------------------------------------------------------------------- relational KD


def _pair_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of all ordered pairs i != j, flattened to ``(b * (b - 1),)``.

    Via the Gram matrix (b^2 memory instead of b^2 * d for explicit differences); the clamp keeps the
    square root's gradient finite when two samples coincide.
    """
    sq = e.pow(2).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (e @ e.T)
    return d2[_offdiag(e.shape[0], e.device)].clamp_min(1e-12).sqrt()


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD-D (Park et al. 2019): Huber (smooth-L1, beta = 1) between mean-normalised pairwise distances.

    Each network's distances are divided by their own mean over the pairs i != j, so the loss ignores
    the overall scale of either embedding. The mean is taken over ordered pairs i != j (the paper's
    pairs of distinct samples); the reference code also averages in the zero diagonal, i.e. it equals
    this loss times ``(b - 1) / b``.
    """
    e_s, e_t = _flat_pair("rkd_distance_loss", student, teacher, min_batch=2)
    d_s = _pair_distances(e_s)
    d_t = _pair_distances(e_t)
    # The clamp only matters when every sample of a network coincides (all distances ~0).
    d_s = d_s / d_s.mean().clamp_min(1e-12)
    d_t = d_t / d_t.mean().clamp_min(1e-12)
    return F.smooth_l1_loss(d_s, d_t, beta=1.0)


def _triplet_cosines(e: torch.Tensor) -> torch.Tensor:
    """``cos`` of the angle at vertex j between ``e_i - e_j`` and ``e_k - e_j``, for all distinct (i, j, k).

    Returns a flat tensor of ``b (b - 1) (b - 2)`` values. Needs ``b^2 * d`` memory for the differences.
    """
    b = e.shape[0]
    unit = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # unit[j, i] = (e_i - e_j) / |e_i - e_j|
    cos = unit @ unit.transpose(1, 2)  # cos[j, i, k]
    r = torch.arange(b, device=e.device)
    distinct = (r[:, None, None] != r[None, :, None]) & (r[:, None, None] != r[None, None, :])
    distinct &= r[None, :, None] != r[None, None, :]
    return cos[distinct]


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD-A (Park et al. 2019): Huber (smooth-L1, beta = 1) between the triplet angle cosines.

    Mean over all ordered triplets of distinct samples (needs b >= 3); the reference code also averages
    in degenerate triplets (repeated indices), which only rescales the loss. Invariant to translation,
    rotation and scale of either embedding.
    """
    e_s, e_t = _flat_pair("rkd_angle_loss", student, teacher, min_batch=3)
    return F.smooth_l1_loss(_triplet_cosines(e_s), _triplet_cosines(e_t), beta=1.0)


# ----------------------------------------------------------------------------- PKT


def _pkt_conditional(e: torch.Tensor, eps: float) -> torch.Tensor:
    """``P[i, j] = K(i, j) / sum_{k != i} K(i, k)``, ``K = (cos + 1) / 2`` in [0, 1], zero diagonal."""
    unit = e / (e.norm(dim=1, keepdim=True) + eps)
    # Rounding can push a cosine a hair below -1; a negative "probability" would break the log.
    kernel = ((unit @ unit.T + 1.0) / 2.0).clamp_min(0.0)
    kernel = kernel.masked_fill(~_offdiag(e.shape[0], e.device), 0.0)
    return kernel / kernel.sum(dim=1, keepdim=True).clamp_min(eps)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018): ``KL(P_t || P_s)`` of the conditionals.

    Cosine similarities are mapped to ``[0, 1]`` and each row normalised over the *other* samples
    (``k != i``, as in the paper's definition; the reference code keeps the self-similarity) into
    ``p(j | i)``. Returns ``sum_j p_t log((p_t + eps) / (p_s + eps))`` averaged over rows i, i.e.
    a batch-mean KL; the reference code's elementwise mean is this divided by b. Invariant to the
    per-sample scale of either feature. Needs b >= 2.
    """
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"pkt_loss eps must be a finite number > 0, got {eps}")
    e_s, e_t = _flat_pair("pkt_loss", student, teacher, min_batch=2)
    p_s = _pkt_conditional(e_s, eps)
    p_t = _pkt_conditional(e_t, eps)
    # The diagonal is 0 in p_t, so it contributes nothing.
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).sum() / e_s.shape[0]
