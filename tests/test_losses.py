"""The KD losses against closed forms, hand-computed numbers and independent formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import cross_entropy, kd_loss, kd_loss_parts, label_smoothing_ce, soft_target_kl


def _zero_mean_logits(n: int, k: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    z = torch.randn(n, k, generator=gen, dtype=torch.float64) * scale
    return z - z.mean(dim=1, keepdim=True)


def _kl_reference(s: torch.Tensor, t: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """sum_k p_t (log p_t - log p_s), averaged over rows; written out from the definition."""
    p_t = torch.exp(t / T) / torch.exp(t / T).sum(dim=1, keepdim=True)
    p_s = torch.exp(s / T) / torch.exp(s / T).sum(dim=1, keepdim=True)
    return (p_t * (torch.log(p_t) - torch.log(p_s))).sum(dim=1).mean()


# ----------------------------------------------------------------------------- (1) alpha = 0


def test_alpha_zero_is_plain_cross_entropy_exactly(gen: torch.Generator) -> None:
    s = torch.randn(5, 4, generator=gen)
    t = torch.randn(5, 4, generator=gen) * 10  # the teacher must not matter at all
    y = torch.tensor([0, 3, 1, 2, 3])
    parts = kd_loss_parts(s, t, y, T=4.0, alpha=0.0)
    expected = F.cross_entropy(s, y)
    assert torch.equal(parts["loss"], expected)
    assert torch.equal(kd_loss(s, t, y, T=4.0, alpha=0.0), expected)
    assert parts["soft"].item() == 0.0
    assert torch.equal(parts["hard"], expected)


def test_alpha_zero_gradient_is_cross_entropy_gradient(gen: torch.Generator) -> None:
    s1 = torch.randn(4, 3, generator=gen, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    t = torch.randn(4, 3, generator=gen)
    y = torch.tensor([2, 0, 1, 1])
    kd_loss(s1, t, y, T=3.0, alpha=0.0).backward()
    F.cross_entropy(s2, y).backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-7, rtol=0)


# ----------------------------------------------------------------------------- (2) T = 1, alpha = 1


def test_t1_alpha1_equals_reference_kl(gen: torch.Generator) -> None:
    s = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    t = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    ref = _kl_reference(s, t)
    assert ref.item() > 0.05  # a non-trivial divergence
    torch.testing.assert_close(kd_loss(s, t, y, T=1.0, alpha=1.0), ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(soft_target_kl(s, t, 1.0), ref, atol=1e-12, rtol=1e-10)
    parts = kd_loss_parts(s, t, y, T=1.0, alpha=1.0)
    assert parts["hard"].item() == 0.0  # alpha = 1: the labels play no part


def test_alpha1_at_temperature_is_t_squared_times_tempered_kl(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    expected = 2.5**2 * _kl_reference(s, t, T=2.5)
    torch.testing.assert_close(kd_loss(s, t, y, T=2.5, alpha=1.0), expected, atol=1e-6, rtol=1e-6)


def test_hand_computed_two_class_kl() -> None:
    # teacher logits (ln 3, 0) -> p_t = (3/4, 1/4); student logits (0, 0) -> p_s = (1/2, 1/2)
    # KL = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2) = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.1308120359...
    t = torch.tensor([[math.log(3.0), 0.0]])
    s = torch.zeros(1, 2)
    y = torch.tensor([0])
    assert kd_loss(s, t, y, T=1.0, alpha=1.0).item() == pytest.approx(0.1308120359, abs=1e-6)
    assert 0.75 * math.log(1.5) + 0.25 * math.log(0.5) == pytest.approx(0.1308120359, abs=1e-9)


def test_hand_computed_three_class_kl_is_averaged_over_rows() -> None:
    # row 0: teacher (ln 4, ln 2, 0) -> p_t = (4/7, 2/7, 1/7); student (0, 0, 0) -> p_s = (1/3, 1/3, 1/3)
    #        KL = 4/7 ln(12/7) + 2/7 ln(6/7) + 1/7 ln(3/7) = 0.1429123976...
    # row 1: student == teacher -> KL = 0.   Mean over the two rows = 0.0714561988...
    t = torch.tensor([[math.log(4.0), math.log(2.0), 0.0], [1.0, -2.0, 0.5]])
    s = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    y = torch.tensor([0, 1])
    assert kd_loss(s, t, y, T=1.0, alpha=1.0).item() == pytest.approx(0.1429123976 / 2, abs=1e-6)
    # Shifting a row of logits by a constant changes nothing (softmax is shift-invariant).
    assert kd_loss(s + 5.0, t - 3.0, y, T=1.0, alpha=1.0).item() == pytest.approx(0.1429123976 / 2, abs=1e-6)


def test_mixed_loss_is_weighted_sum_of_parts(gen: torch.Generator) -> None:
    s = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    t = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 0])
    T, alpha = 3.0, 0.3
    parts = kd_loss_parts(s, t, y, T=T, alpha=alpha)
    soft = alpha * T * T * _kl_reference(s, t, T)
    hard = (1 - alpha) * F.cross_entropy(s, y)
    torch.testing.assert_close(parts["soft"], soft, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(parts["hard"], hard)
    torch.testing.assert_close(parts["loss"], soft + hard, atol=1e-6, rtol=1e-6)


def test_teacher_gets_no_gradient(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, generator=gen, requires_grad=True)
    t = torch.randn(3, 4, generator=gen, requires_grad=True)
    kd_loss(s, t, torch.tensor([0, 1, 2]), T=2.0, alpha=0.7).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


# ----------------------------------------------------------------------------- (3) the T^2 factor


def _soft_grad(s: torch.Tensor, t: torch.Tensor, T: float, scaled: bool) -> torch.Tensor:
    s = s.detach().clone().requires_grad_(True)
    y = torch.zeros(s.shape[0], dtype=torch.long)
    loss = kd_loss(s, t, y, T=T, alpha=1.0)  # alpha = 1: the T^2-scaled soft term alone
    if not scaled:
        loss = loss / (T * T)
    loss.backward()
    return s.grad


def test_t_squared_keeps_soft_gradient_scale_constant(gen: torch.Generator) -> None:
    s = _zero_mean_logits(16, 10, gen)
    t = _zero_mean_logits(16, 10, gen)
    temps = [2.0, 5.0, 10.0, 20.0]
    scaled = {T: _soft_grad(s, t, T, scaled=True).norm().item() for T in temps}
    unscaled = {T: _soft_grad(s, t, T, scaled=False).norm().item() for T in temps}
    # With T^2: every pair of temperatures within a factor 2.
    assert max(scaled.values()) / min(scaled.values()) < 2.0
    # Without T^2: the gradient shrinks like 1/T^2 (checked pairwise up to a factor 2) ...
    for a in temps:
        for b in temps:
            if a < b:
                ratio = unscaled[b] / unscaled[a]
                assert (a / b) ** 2 / 2 < ratio < 2 * (a / b) ** 2, (a, b, ratio)
    # ... so from T=2 to T=20 it loses two orders of magnitude.
    assert unscaled[20.0] < unscaled[2.0] / 50


@pytest.mark.parametrize("T, tol", [(20.0, 0.06), (100.0, 0.012)])
def test_high_temperature_limit_matches_logit_matching(gen: torch.Generator, T: float, tol: float) -> None:
    """Hinton et al. eq. 2-3: for zero-mean logits and large T, dC/dz_i -> (z_i - v_i) / (N K) with T^2."""
    n, k = 8, 10
    s = _zero_mean_logits(n, k, gen)
    t = _zero_mean_logits(n, k, gen)
    grad = _soft_grad(s, t, T, scaled=True)
    limit = (s - t) / (n * k)
    rel = ((grad - limit).norm() / limit.norm()).item()
    assert rel < tol
    # The gradient is exactly (p_s - p_t) * T / N at any temperature (derivative of T^2 * KL / N).
    p_s, p_t = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)
    torch.testing.assert_close(grad, (p_s - p_t) * T / n, atol=1e-6, rtol=1e-3)


# ----------------------------------------------------------------------------- (4) label smoothing


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 0.9])
def test_label_smoothing_matches_torch(gen: torch.Generator, eps: float) -> None:
    s = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (7,), generator=gen)
    torch.testing.assert_close(label_smoothing_ce(s, y, eps), F.cross_entropy(s, y, label_smoothing=eps))


def test_label_smoothing_hand_computed() -> None:
    # logits (ln 2, 0) -> p = (2/3, 1/3); label 0, eps = 0.2 -> target (0.8 + 0.1, 0.1) = (0.9, 0.1)
    # loss = -(0.9 ln(2/3) + 0.1 ln(1/3)) = 0.4747798262...
    s = torch.tensor([[math.log(2.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    assert label_smoothing_ce(s, y, 0.2).item() == pytest.approx(0.4747798262, abs=1e-9)
    # eps = 0 is plain cross-entropy: -ln(2/3)
    assert label_smoothing_ce(s, y, 0.0).item() == pytest.approx(math.log(1.5), abs=1e-12)


# ----------------------------------------------------------------------------- (5) unlabelled rows


def test_unlabelled_rows_are_ignored(gen: torch.Generator) -> None:
    s = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([1, -1, 3, -1, -1, 0])
    mask = y != -1
    torch.testing.assert_close(cross_entropy(s, y), F.cross_entropy(s[mask], y[mask]))
    torch.testing.assert_close(cross_entropy(s, y), F.cross_entropy(s, y, ignore_index=-1))
    torch.testing.assert_close(label_smoothing_ce(s, y, 0.2), F.cross_entropy(s[mask], y[mask], label_smoothing=0.2))
    # Changing the logits of unlabelled rows changes neither loss.
    s2 = s.clone()
    s2[~mask] = torch.randn(int((~mask).sum()), 4, generator=gen, dtype=torch.float64) * 50
    assert cross_entropy(s2, y).item() == pytest.approx(cross_entropy(s, y).item(), abs=1e-12)
    assert label_smoothing_ce(s2, y, 0.2).item() == pytest.approx(label_smoothing_ce(s, y, 0.2).item(), abs=1e-12)


def test_kd_hard_part_ignores_unlabelled_but_soft_part_uses_all_rows(gen: torch.Generator) -> None:
    s = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([2, -1, -1, 0, -1])
    mask = y != -1
    parts = kd_loss_parts(s, t, y, T=2.0, alpha=0.25)
    torch.testing.assert_close(parts["hard"], 0.75 * F.cross_entropy(s[mask], y[mask]))
    torch.testing.assert_close(parts["soft"], 0.25 * 4.0 * _kl_reference(s, t, 2.0), atol=1e-6, rtol=1e-6)
    parts["hard"].backward()
    assert torch.all(s.grad[~mask] == 0)
    assert torch.all(s.grad[mask].abs().sum(dim=1) > 0)


def test_all_unlabelled_gives_exact_zero_with_working_backward(gen: torch.Generator) -> None:
    s = torch.randn(4, 3, generator=gen, requires_grad=True)
    t = torch.randn(4, 3, generator=gen)
    y = torch.full((4,), -1)
    for loss in (cross_entropy(s, y), label_smoothing_ce(s, y, 0.1)):
        assert loss.item() == 0.0
        assert loss.requires_grad
        s.grad = None
        loss.backward()
        assert s.grad is not None and torch.all(s.grad == 0)
    parts = kd_loss_parts(s, t, y, T=2.0, alpha=0.5)
    assert parts["hard"].item() == 0.0
    torch.testing.assert_close(parts["loss"], parts["soft"])
    s.grad = None
    parts["loss"].backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0  # the soft targets still teach
    # alpha = 0 on an all-unlabelled batch: nothing to learn, exactly 0, still backpropagates.
    zero = kd_loss(s, t, y, T=2.0, alpha=0.0)
    assert zero.item() == 0.0
    s.grad = None
    zero.backward()
    assert torch.all(s.grad == 0)


# ----------------------------------------------------------------------------- (6) bad arguments


@pytest.mark.parametrize("T", [0.0, -1.0])
def test_bad_temperature_raises(T: float) -> None:
    s, t, y = torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="temperature T must be a finite number > 0"):
        kd_loss(s, t, y, T=T, alpha=0.5)
    with pytest.raises(ValueError, match="temperature T must be a finite number > 0"):
        soft_target_kl(s, t, T)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_bad_alpha_raises(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), T=2.0, alpha=alpha)


@pytest.mark.parametrize("eps", [-0.1, 1.0, 2.0, float("nan")])
def test_bad_smoothing_raises(eps: float) -> None:
    with pytest.raises(ValueError, match="label smoothing must be in"):
        label_smoothing_ce(torch.zeros(2, 3), torch.tensor([0, 1]), eps)


@pytest.mark.parametrize("T, alpha", [(0.0, 0.0), (-2.0, 0.0), (float("nan"), 0.5)])
def test_bad_temperature_raises_for_every_alpha(T: float, alpha: float) -> None:
    with pytest.raises(ValueError):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), T=T, alpha=alpha)


def test_soft_target_kl_keeps_float64_precision(gen: torch.Generator) -> None:
    s = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    t = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2
    torch.testing.assert_close(soft_target_kl(s, t, 1.0), _kl_reference(s, t), atol=1e-12, rtol=1e-10)
