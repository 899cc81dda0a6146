"""Logit standardization, WTTM and CTKD's pieces (kdistill.losses.logits) against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import (
    gradient_reversal,
    learned_temperature_kd,
    logit_standardized_kd,
    soft_target_kl,
    standardize_logits,
    wttm_loss,
)
from tests.losses.reference import D, close

# ----------------------------------------------------------------------------- logit standardization


def test_standardize_hand_computed() -> None:
    z = torch.tensor([[1.0, 2.0, 3.0]], dtype=D)  # mean 2, unbiased std 1
    torch.testing.assert_close(standardize_logits(z, eps=0.0), torch.tensor([[-1.0, 0.0, 1.0]], dtype=D))


def test_two_classes_hand_computed() -> None:
    # Any 2-class row standardises to +-1/sqrt(2); with opposite winners p = sigmoid(sqrt(2)/T) and
    # KL(p || 1 - p) = (2p - 1) * log(p / (1 - p)) = (2p - 1) * sqrt(2) / T.
    T = 2.0
    s = torch.tensor([[5.0, -1.0]], dtype=D)
    t = torch.tensor([[0.3, 0.9]], dtype=D)
    p = 1 / (1 + math.exp(-math.sqrt(2) / T))
    close(logit_standardized_kd(s, t, T), T * T * (2 * p - 1) * math.sqrt(2) / T, 1e-6)


def test_logit_standardization_invariances(gen: torch.Generator) -> None:
    s = torch.randn(6, 5, generator=gen, dtype=D) * 3
    t = torch.randn(6, 5, generator=gen, dtype=D) * 3
    loss = logit_standardized_kd(s, t, 2.0)
    torch.testing.assert_close(logit_standardized_kd(0.2 * s - 7, 5 * t + 1, 2.0), loss)
    torch.testing.assert_close(loss, 4.0 * soft_target_kl(standardize_logits(s), standardize_logits(t), 2.0))
    # a student whose logits are any positive affine map of the teacher's has nothing left to learn
    assert logit_standardized_kd(0.1 * t + 3, t, 2.0).item() < 1e-12
    assert soft_target_kl(0.1 * t + 3, t, 2.0).item() > 0.05  # plain KD still punishes its range


def test_logit_standardization_gradcheck_and_errors(gen: torch.Generator) -> None:
    s = torch.randn(3, 4, generator=gen, dtype=D, requires_grad=True)
    t = torch.randn(3, 4, generator=gen, dtype=D)
    assert torch.autograd.gradcheck(lambda x: logit_standardized_kd(x, t, 3.0), (s,))
    with pytest.raises(ValueError, match="temperature"):
        logit_standardized_kd(s, t, 0.0)
    with pytest.raises(ValueError, match="same"):
        logit_standardized_kd(s, t[:2], 2.0)


# ----------------------------------------------------------------------------- WTTM


def test_wttm_gamma_one_is_plain_kd(gen: torch.Generator) -> None:
    s = torch.randn(5, 4, generator=gen, dtype=D)
    t = torch.randn(5, 4, generator=gen, dtype=D) * 2
    torch.testing.assert_close(wttm_loss(s, t, 1.0), soft_target_kl(s, t, 1.0))


def test_wttm_matches_definition(gen: torch.Generator) -> None:
    s = torch.randn(4, 3, generator=gen, dtype=D)
    t = torch.randn(4, 3, generator=gen, dtype=D) * 3
    g = 0.3
    p_t = F.softmax(t, 1)
    u = (p_t**g).sum(1)
    q = p_t**g / u[:, None]
    q_s = F.softmax(s, 1)
    expected = (u * (q * (q / q_s).log()).sum(1)).mean()
    torch.testing.assert_close(wttm_loss(s, t, g), expected)
    # the transformed teacher is a temperature 1/gamma on the teacher only
    torch.testing.assert_close(q, F.softmax(t / (1 / g), 1))


def test_wttm_weight_is_power_sum() -> None:
    # A uniform teacher gets weight U = C^(1 - gamma); a student matching the transformed teacher pays 0.
    c, g = 4, 0.25
    t = torch.zeros(1, c, dtype=D)
    s = torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=D)
    q_s = F.softmax(s, 1)
    kl = (0.25 * (0.25 / q_s).log()).sum()
    close(wttm_loss(s, t, g), c ** (1 - g) * kl.item(), 1e-9)
    assert wttm_loss(torch.zeros(1, c, dtype=D), t, g).item() < 1e-12
    with pytest.raises(ValueError, match="gamma"):
        wttm_loss(s, t, 0.0)


# ----------------------------------------------------------------------------- CTKD's pieces


def test_gradient_reversal_flips_and_scales_the_gradient() -> None:
    x = torch.tensor(2.0, dtype=D, requires_grad=True)
    y = gradient_reversal(x, 0.5)
    assert y.item() == 2.0
    (3 * y).backward()
    assert x.grad.item() == -1.5
    with pytest.raises(ValueError, match="scale"):
        gradient_reversal(x, -1.0)


def test_learned_temperature_kd_equals_kd_and_has_a_temperature_gradient(gen: torch.Generator) -> None:
    s = torch.randn(5, 4, generator=gen, dtype=D)
    t = torch.randn(5, 4, generator=gen, dtype=D) * 2
    T = torch.tensor(3.0, dtype=D, requires_grad=True)
    loss = learned_temperature_kd(s, t, T)
    torch.testing.assert_close(loss, 9.0 * soft_target_kl(s, t, 3.0))
    assert torch.autograd.gradcheck(lambda temp: learned_temperature_kd(s, t, temp), (T,))
    with pytest.raises(ValueError, match="temperature"):
        learned_temperature_kd(s, t, torch.tensor(-1.0, dtype=D))
