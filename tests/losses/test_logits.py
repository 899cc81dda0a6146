"""The logit losses (kdistill.losses.logits: KD, CE, label smoothing, DKD, DIST) against closed forms,
hand-computed numbers and independent formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import (
    cross_entropy,
    dist_loss,
    dkd_loss_parts,
    dkd_terms,
    kd_loss,
    kd_loss_parts,
    label_smoothing_ce,
    soft_target_kl,
)
from tests.losses.reference import D, close, dot, norm


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


# ============================================================================= DKD


def _kl_rows(s: torch.Tensor, t: torch.Tensor, T: float) -> list[float]:
    out = []
    for zs, zt in zip(s.tolist(), t.tolist(), strict=True):
        es, et = [math.exp(v / T) for v in zs], [math.exp(v / T) for v in zt]
        ps, pt = [v / sum(es) for v in es], [v / sum(et) for v in et]
        out.append(sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True)))
    return out


def test_dkd_hand_computed() -> None:
    # teacher logits [log2, log2, 0] -> p_t = [0.4, 0.4, 0.2]; student uniform [1/3]*3; target 0; T = 1
    # TCKD: KL([0.4, 0.6] || [1/3, 2/3]) = 0.4 log 1.2 + 0.6 log 0.9
    # NCKD: non-target teacher [0.4, 0.2]/0.6 = [2/3, 1/3], student [1/2, 1/2]: 2/3 log(4/3) + 1/3 log(2/3)
    t = torch.tensor([[math.log(2), math.log(2), 0.0]], dtype=D)
    s = torch.zeros(1, 3, dtype=D)
    parts = dkd_loss_parts(s, t, torch.tensor([0]), T=1.0, alpha=2.0, beta=8.0)
    tckd = 0.4 * math.log(1.2) + 0.6 * math.log(0.9)  # 0.0097127
    nckd = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)  # 0.0566330
    close(parts["tckd"], tckd)
    close(parts["nckd"], nckd)
    close(parts["loss"], 2 * tckd + 8 * nckd)


def test_dkd_matches_reference_style_masking(gen: torch.Generator) -> None:
    # The reference code's formulation: binary probs summed from the softmax, non-target softmax with the
    # target logit pushed down by 1000; loop over rows.
    T, b, c = 3.0, 5, 6
    s = torch.randn(b, c, generator=gen, dtype=D) * 3
    t = torch.randn(b, c, generator=gen, dtype=D) * 3
    y = torch.tensor([0, 5, 2, 2, 3])
    tckd = nckd = 0.0
    for i in range(b):
        ps, pt = F.softmax(s[i] / T, 0).tolist(), F.softmax(t[i] / T, 0).tolist()
        bs, bt = [ps[y[i]], 1 - ps[y[i]]], [pt[y[i]], 1 - pt[y[i]]]
        tckd += sum(q * math.log(q / p) for p, q in zip(bs, bt, strict=True))
        mask = F.one_hot(y[i], c).to(D) * 1000.0
        qs = F.softmax(s[i] / T - mask, 0).tolist()
        qt = F.softmax(t[i] / T - mask, 0).tolist()
        nckd += sum(q * math.log(q / p) for p, q in zip(qs, qt, strict=True) if q > 0)
    tckd, nckd = tckd * T * T / b, nckd * T * T / b
    parts = dkd_loss_parts(s, t, y, T, alpha=1.0, beta=8.0)
    close(parts["tckd"], tckd, 1e-9)
    close(parts["nckd"], nckd, 1e-9)
    close(parts["loss"], tckd + 8 * nckd, 1e-9)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_decomposes_classic_kd(gen: torch.Generator, T: float) -> None:
    b, c = 6, 5
    s = torch.randn(b, c, generator=gen, dtype=D) * 2
    t = torch.randn(b, c, generator=gen, dtype=D) * 2
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    terms = dkd_terms(s, t, y, T, reduction="none")
    p_target = F.softmax(t / T, dim=1).gather(1, y[:, None]).squeeze(1)  # the teacher's target probability
    kl = torch.tensor(_kl_rows(s, t, T), dtype=D) * T * T
    # per sample: T^2 KL = TCKD + (1 - p_t[target]) NCKD
    torch.testing.assert_close(terms["tckd"] + (1 - p_target) * terms["nckd"], kl, atol=1e-12, rtol=1e-10)
    # so alpha = 1, beta = 1 - p_target gives classic KD's T^2-scaled soft term, row by row ...
    for i in range(b):
        row = dkd_loss_parts(s[i : i + 1], t[i : i + 1], y[i : i + 1], T, alpha=1.0, beta=float(1 - p_target[i]))
        torch.testing.assert_close(row["loss"], soft_target_kl(s[i : i + 1], t[i : i + 1], T) * T * T)
    # ... and averaged over the batch
    torch.testing.assert_close((terms["tckd"] + (1 - p_target) * terms["nckd"]).mean(), soft_target_kl(s, t, T) * T * T)


def test_dkd_gradcheck_and_bad_labels(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, generator=gen, dtype=D, requires_grad=True)
    t = torch.randn(3, 4, generator=gen, dtype=D)
    y = torch.tensor([1, 0, 3])
    assert torch.autograd.gradcheck(lambda x: dkd_loss_parts(x, t, y, 2.0, 1.0, 8.0)["loss"], (s,))
    with pytest.raises(ValueError, match="unlabelled"):
        dkd_loss_parts(s, t, torch.tensor([1, -1, 3]), 2.0, 1.0, 8.0)
    with pytest.raises(ValueError, match="labels must be in"):
        dkd_loss_parts(s, t, torch.tensor([1, 4, 3]), 2.0, 1.0, 8.0)
    with pytest.raises(ValueError, match="temperature"):
        dkd_loss_parts(s, t, y, 0.0, 1.0, 8.0)
    with pytest.raises(ValueError, match="beta"):
        dkd_loss_parts(s, t, y, 2.0, 1.0, -1.0)


# ============================================================================= DIST


def _pearson(a: list[float], b: list[float], eps: float = 1e-8) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    ca, cb = [v - ma for v in a], [v - mb for v in b]
    return dot(ca, cb) / (norm(ca) * norm(cb) + eps)


def _dist_reference(s: torch.Tensor, t: torch.Tensor, beta: float, gamma: float, T: float) -> float:
    ps, pt = F.softmax(s / T, 1).tolist(), F.softmax(t / T, 1).tolist()
    b, c = len(ps), len(ps[0])
    inter = 1 - sum(_pearson(ps[i], pt[i]) for i in range(b)) / b
    cols = [([ps[i][j] for i in range(b)], [pt[i][j] for i in range(b)]) for j in range(c)]
    intra = 1 - sum(_pearson(x, y) for x, y in cols) / c
    return T * T * (beta * inter + gamma * intra)


def test_dist_matches_loop_reference(gen: torch.Generator) -> None:
    s = torch.randn(5, 4, generator=gen, dtype=D) * 2
    t = torch.randn(5, 4, generator=gen, dtype=D) * 2
    for beta, gamma, T in [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (1.0, 0.0, 2.0)]:
        close(dist_loss(s, t, beta, gamma, T), _dist_reference(s, t, beta, gamma, T), 1e-9)


def test_dist_relaxed_match_and_invariances(gen: torch.Generator) -> None:
    b, c = 6, 5
    t = torch.randn(b, c, generator=gen, dtype=D) * 2
    # not exactly 0: Pearson's denominator carries eps = 1e-8, against squared norms of centred probabilities
    assert dist_loss(t, t).item() < 1e-5
    # A student with the same relations but less confident: p_s = a p_t + (1 - a) / C, a positive affine map
    # of every row (so Pearson-invariant) that keeps rows summing to 1, and the same map of every column.
    p_s = 0.3 * F.softmax(t, 1) + 0.7 / c
    s = p_s.log()
    assert soft_target_kl(s, t, 1.0).item() > 0.05  # KL punishes this student ...
    assert dist_loss(s, t).item() < 1e-5  # ... DIST does not
    s = torch.randn(b, c, generator=gen, dtype=D)
    loss = dist_loss(s, t)
    rows, cols = torch.randperm(b, generator=gen), torch.randperm(c, generator=gen)
    torch.testing.assert_close(dist_loss(s[rows][:, cols], t[rows][:, cols]), loss)  # sample / class order
    shift = torch.randn(b, 1, generator=gen, dtype=D) * 5
    torch.testing.assert_close(dist_loss(s + shift, t - shift), loss)  # per-row logit shifts (softmax)


def test_dist_gradcheck_and_bad_arguments(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, generator=gen, dtype=D, requires_grad=True)
    t = torch.randn(3, 4, generator=gen, dtype=D)
    assert torch.autograd.gradcheck(lambda x: dist_loss(x, t, 1.0, 2.0, 2.0), (s,))
    with pytest.raises(ValueError, match="b >= 2"):
        dist_loss(s[:1], t[:1])
    dist_loss(s[:1], t[:1], gamma=0.0)  # the inter-class term alone is fine on one row
