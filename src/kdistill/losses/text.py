"""Token-level divergences for distilling language models: pure functions on logits ``[..., V]``.

``p`` is the teacher's next-token distribution, ``q`` the student's, both ``softmax(logits / T)``. Each
divergence is summed over the vocabulary, averaged over the positions where ``mask`` is true (all when
``mask`` is None), and multiplied by ``T**2`` so that its gradients keep their scale as ``T`` changes
(the house rule of the image losses; at the usual ``T = 1`` the factor is 1).

- :func:`forward_kl`       ``KL(p || q)``: token-level KD (mass-covering: q must cover every token p likes).
- :func:`reverse_kl`       ``KL(q || p)``: MiniLLM (Gu et al. 2024; mode-seeking: q may drop p's tail).
- :func:`generalized_jsd`  GKD's ``beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 - beta) q``
  (Agarwal et al. 2024); ``beta = 0`` is defined as ``KL(p || q)`` and ``beta = 1`` as ``KL(q || p)``, as
  TRL's ``generalized_jsd_loss`` does (the JSD itself vanishes at both ends: divided by ``beta`` or
  ``1 - beta`` it tends to those two KLs).
- :func:`skew_kl`          DistiLLM's ``KL(p || a p + (1 - a) q)`` (Ko et al. 2024): bounded, unlike ``KL(p || q)``.
- :func:`skew_reverse_kl`  DistiLLM's ``KL(q || (1 - a) p + a q)``.
- :func:`lm_cross_entropy` the next-token CE each divergence is mixed with.

:data:`DIVERGENCES` maps the config names (``fkl``, ``rkl``, ``jsd``, ``skl``, ``srkl``) to them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdistill.losses.checks import check_temperature, float_dtype

IGNORE = -1


def _prepare(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> tuple:
    check_temperature(T)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "teacher and student must share one vocabulary and see the same tokens"
        )
    dtype = float_dtype(student_logits, teacher_logits)
    s, t = student_logits.to(dtype), teacher_logits.detach().to(dtype)
    if T != 1.0:  # a [B, L, V] division each: skipped at the usual T = 1
        s, t = s / T, t / T
    return s, F.log_softmax(t, dim=-1)


def _weighted_grad(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The gradient with respect to the logits of a function of ``q = softmax(z)`` whose gradient in ``q`` is ``g``."""
    return q * (g - (q * g).sum(-1, keepdim=True))


def _divergence(kind: str, z: torch.Tensor, log_p: torch.Tensor, w: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position value and its gradient in the logits ``z`` (written out: autograd through these expressions
    keeps several ``[B, L, V]`` intermediates and ran 2-4x slower than a cross-entropy; this runs in ~1.3x)."""
    log_q = F.log_softmax(z, dim=-1)
    q, p = log_q.exp(), log_p.exp()
    if kind == "fkl":
        return (p * (log_p - log_q)).sum(-1), q - p
    if kind == "rkl":
        d = log_q - log_p
        value = (q * d).sum(-1)
        return value, q * (d - value[..., None])
    if kind == "jsd":  # m = w p + (1 - w) q; d JSD / d q = (1 - w) log(q / m)
        log_m = torch.lerp(q, p, w).log()
        d_q = log_q - log_m
        a = (q * d_q).sum(-1)  # KL(q || m), reused by the gradient
        value = w * (p * (log_p - log_m)).sum(-1) + (1.0 - w) * a
        return value, (1.0 - w) * q * (d_q - a[..., None])
    if kind == "skl":  # m = w p + (1 - w) q; d KL(p || m) / d q = -(1 - w) p / m  (<= (1 - w) / w: bounded)
        m = torch.lerp(q, p, w)
        value = (p * (log_p - m.log())).sum(-1)
        return value, _weighted_grad(q, -(1.0 - w) * p / m)
    # srkl: m = (1 - w) p + w q; d KL(q || m) / d q = log(q / m) + 1 - w q / m
    m = torch.lerp(p, q, w)
    d = log_q - m.log()
    return (q * d).sum(-1), _weighted_grad(q, d + 1.0 - w * q / m)


class _Divergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, log_p: torch.Tensor, kind: str, w: float) -> torch.Tensor:  # noqa: ANN001
        value, grad = _divergence(kind, z, log_p, w)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx, grad_value: torch.Tensor) -> tuple:  # noqa: ANN001
        (grad,) = ctx.saved_tensors
        return grad * grad_value[..., None], None, None, None


def _apply(kind: str, s: torch.Tensor, t: torch.Tensor, T: float, mask: torch.Tensor | None, w: float = 0.0):  # noqa: ANN202
    z, log_p = _prepare(s, t, T)
    if kind == "fkl":  # KL(p || q) = CE(q; p) - H(p): the fused soft-target cross-entropy carries the gradient
        p = log_p.exp()
        V = z.shape[-1]
        ce = F.cross_entropy(z.reshape(-1, V), p.reshape(-1, V), reduction="none").view(z.shape[:-1])
        per = ce + (p * log_p).sum(-1)
        return _reduce(per, mask, T)
    return _reduce(_Divergence.apply(z, log_p, kind, w), mask, T)


def _reduce(per_position: torch.Tensor, mask: torch.Tensor | None, T: float) -> torch.Tensor:
    if mask is None:
        return per_position.mean() * T**2
    mask = mask.to(torch.bool)
    if mask.shape != per_position.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the positions' shape {tuple(per_position.shape)}")
    if not bool(mask.any()):
        return per_position.sum() * 0.0
    return per_position[mask].mean() * T**2


def forward_kl(s: torch.Tensor, t: torch.Tensor, T: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 KL(p || q)`` averaged over positions: token-level KD."""
    return _apply("fkl", s, t, T, mask)


def reverse_kl(s: torch.Tensor, t: torch.Tensor, T: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 KL(q || p)`` averaged over positions: MiniLLM's mode-seeking objective."""
    return _apply("rkl", s, t, T, mask)


def generalized_jsd(
    s: torch.Tensor, t: torch.Tensor, T: float = 1.0, mask: torch.Tensor | None = None, beta: float = 0.5
) -> torch.Tensor:
    """GKD's generalized Jensen-Shannon divergence (see the module docstring for ``beta`` 0 and 1)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"generalized JSD: beta must be in [0, 1], got {beta}")
    if beta in (0.0, 1.0):
        return _apply("fkl" if beta == 0.0 else "rkl", s, t, T, mask)
    return _apply("jsd", s, t, T, mask, beta)


def _check_skew(a: float, name: str) -> None:
    if not 0.0 <= a < 1.0:
        raise ValueError(f"{name}: the skew must be in [0, 1), got {a} (at 1 the divergence is 0 for any student)")


def skew_kl(
    s: torch.Tensor, t: torch.Tensor, T: float = 1.0, mask: torch.Tensor | None = None, skew: float = 0.1
) -> torch.Tensor:
    """DistiLLM's skew KL ``T^2 KL(p || a p + (1 - a) q)``; ``a = 0`` is the forward KL."""
    _check_skew(skew, "skew KL")
    return _apply("skl", s, t, T, mask, skew) if skew > 0 else _apply("fkl", s, t, T, mask)


def skew_reverse_kl(
    s: torch.Tensor, t: torch.Tensor, T: float = 1.0, mask: torch.Tensor | None = None, skew: float = 0.1
) -> torch.Tensor:
    """DistiLLM's skew reverse KL ``T^2 KL(q || (1 - a) p + a q)``; ``a = 0`` is the reverse KL."""
    _check_skew(skew, "skew reverse KL")
    return _apply("srkl", s, t, T, mask, skew) if skew > 0 else _apply("rkl", s, t, T, mask)


def lm_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats per token) over the positions whose target is not ``-1``."""
    flat, y = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    keep = y != IGNORE
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(flat[keep].float(), y[keep])


Divergence = Callable[..., torch.Tensor]

DIVERGENCES: dict[str, Divergence] = {
    "fkl": forward_kl,
    "rkl": reverse_kl,
    "jsd": generalized_jsd,
    "skl": skew_kl,
    "srkl": skew_reverse_kl,
}
