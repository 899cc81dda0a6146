"""Language-model divergences against hand-computed values, their limiting cases, T scaling, masks, and TRL."""

from __future__ import annotations

import math
import os

import pytest
import torch

from kdistill.losses.text import (
    DIVERGENCES,
    forward_kl,
    generalized_jsd,
    lm_cross_entropy,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
)

# p = teacher = (1/2, 1/2); q = student = (3/4, 1/4), as logits of one position.
T_LOGITS = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
S_LOGITS = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)


def kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


P, Q = [0.5, 0.5], [0.75, 0.25]


def test_hand_computed_values() -> None:
    assert float(forward_kl(S_LOGITS, T_LOGITS)) == pytest.approx(0.5 * math.log(4 / 3), abs=1e-12)
    assert float(reverse_kl(S_LOGITS, T_LOGITS)) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    m = [0.625, 0.375]  # (p + q) / 2
    assert float(generalized_jsd(S_LOGITS, T_LOGITS, beta=0.5)) == pytest.approx(0.5 * kl(P, m) + 0.5 * kl(Q, m))
    assert float(generalized_jsd(S_LOGITS, T_LOGITS, beta=0.5)) == pytest.approx(0.0338220, abs=1e-6)
    assert float(skew_kl(S_LOGITS, T_LOGITS, skew=0.1)) == pytest.approx(kl(P, [0.725, 0.275]), abs=1e-12)
    assert float(skew_reverse_kl(S_LOGITS, T_LOGITS, skew=0.1)) == pytest.approx(kl(Q, [0.525, 0.475]), abs=1e-12)


def test_generalized_jsd_weights_the_two_sides_by_beta() -> None:
    beta = 0.3
    m = [beta * a + (1 - beta) * b for a, b in zip(P, Q, strict=True)]
    want = beta * kl(P, m) + (1 - beta) * kl(Q, m)
    assert float(generalized_jsd(S_LOGITS, T_LOGITS, beta=beta)) == pytest.approx(want, abs=1e-12)


def test_limits_of_beta_and_skew() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(6, 11, dtype=torch.float64), torch.randn(6, 11, dtype=torch.float64)
    fkl, rkl = float(forward_kl(s, t)), float(reverse_kl(s, t))
    # The JSD itself vanishes at both ends; divided by beta (1 - beta) it tends to KL(p||q) (KL(q||p)).
    eps = 1e-6
    assert float(generalized_jsd(s, t, beta=eps)) / eps == pytest.approx(fkl, rel=1e-4)
    assert float(generalized_jsd(s, t, beta=1 - eps)) / eps == pytest.approx(rkl, rel=1e-4)
    assert float(generalized_jsd(s, t, beta=0.0)) == pytest.approx(fkl) and float(generalized_jsd(s, t, beta=1.0)) == (
        pytest.approx(rkl)
    )
    assert float(skew_kl(s, t, skew=0.0)) == pytest.approx(fkl)
    assert float(skew_reverse_kl(s, t, skew=0.0)) == pytest.approx(rkl)
    # Skewing bounds the divergence: KL(p || a p + (1-a) q) <= log(1/a), whatever q is.
    far = torch.full((1, 11), -30.0, dtype=torch.float64)
    far[0, 0] = 30.0
    assert float(skew_kl(far, -far, skew=0.1)) <= math.log(10) + 1e-9 < float(forward_kl(far, -far))


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_equal_distributions_give_zero_and_gradients_flow(name: str) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 5, 7, dtype=torch.float64)
    assert float(DIVERGENCES[name](x, x.clone(), 2.0)) == pytest.approx(0.0, abs=1e-12)
    s = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: DIVERGENCES[name](a, t, 1.5), (s,))
    DIVERGENCES[name](s, t).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_temperature_scales_by_t_squared(name: str) -> None:
    torch.manual_seed(2)
    s, t = torch.randn(4, 9, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)
    T = 3.0
    assert float(DIVERGENCES[name](s, t, T)) == pytest.approx(T**2 * float(DIVERGENCES[name](s / T, t / T, 1.0)))


def test_mask_averages_the_chosen_positions_only() -> None:
    torch.manual_seed(3)
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    per = [float(forward_kl(s[i, j][None], t[i, j][None])) for i, j in mask.nonzero().tolist()]
    assert float(forward_kl(s, t, mask=mask)) == pytest.approx(sum(per) / len(per), rel=1e-5)
    assert float(forward_kl(s, t, mask=torch.zeros(2, 4, dtype=torch.bool))) == 0.0


def test_cross_entropy_ignores_minus_one() -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    assert float(lm_cross_entropy(logits, torch.tensor([[0, -1]]))) == pytest.approx(math.log(2))
    assert float(lm_cross_entropy(logits, torch.tensor([[0, 1]]))) == pytest.approx(
        -(math.log(0.5) + math.log(0.8)) / 2
    )


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="share one vocabulary"):
        forward_kl(torch.zeros(2, 5), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="beta must be in"):
        generalized_jsd(S_LOGITS, T_LOGITS, beta=1.5)
    with pytest.raises(ValueError, match="skew must be in"):
        skew_kl(S_LOGITS, T_LOGITS, skew=1.0)
    with pytest.raises(ValueError, match="temperature"):
        reverse_kl(S_LOGITS, T_LOGITS, T=0.0)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_agrees_with_trl(beta: float) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKD lives in trl.experimental; we know
    pytest.importorskip("trl", reason="trl (the dev extra) is not installed")
    try:  # where TRL keeps its GKD trainer moved between releases
        from trl.experimental.gkd import gkd_trainer as trainer
    except ImportError:
        from trl.trainer import gkd_trainer as trainer
    torch.manual_seed(4)
    s, t = torch.randn(2, 5, 13), torch.randn(2, 5, 13)
    labels = torch.tensor([[1, 2, -100, 3, 4], [-100, 5, 6, 7, -100]])
    for T in (1.0, 2.0):
        want = trainer.GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=T)
        got = generalized_jsd(s, t, T, mask=labels != -100, beta=beta) / T**2  # TRL has no T^2 factor
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
