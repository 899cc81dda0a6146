"""Regression distillation losses against closed forms and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.losses.regression import inverse_variance_weights, regression_kd_parts, regression_loss
from kdistill.metrics import regression_scores

NAN = float("nan")


def test_mse_and_huber_by_hand() -> None:
    pred, target = torch.tensor([[0.0], [3.0]]), torch.tensor([[0.5], [0.0]])
    assert regression_loss(pred, target).item() == pytest.approx((0.25 + 9.0) / 2)
    # Huber, delta 1: 0.5 * 0.5**2 = 0.125 inside; 1 * (3 - 0.5) = 2.5 outside.
    assert regression_loss(pred, target, "huber", 1.0).item() == pytest.approx((0.125 + 2.5) / 2)
    w = torch.tensor([[2.0], [0.0]])
    assert regression_loss(pred, target, weight=w).item() == pytest.approx(2 * 0.25 / 2)


def test_alpha_zero_is_plain_regression_on_the_labelled_rows() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(6, 2), torch.randn(6, 2)
    y = torch.randn(6, 2)
    y[[1, 4]] = NAN  # two rows of the transfer set without a label
    parts = regression_kd_parts(s, y, t, alpha=0.0)
    keep = torch.tensor([0, 2, 3, 5])
    assert parts["loss"].item() == pytest.approx(regression_loss(s[keep], y[keep]).item())
    assert parts["teacher"].item() == pytest.approx(((s - t) ** 2).mean().item())


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("kind", ["mse", "huber"])
def test_a_teacher_that_predicts_the_labels_gives_the_scratch_loss(alpha: float, kind: str) -> None:
    torch.manual_seed(1)
    s, y = torch.randn(8, 3), torch.randn(8, 3) * 2
    kd = regression_kd_parts(s, y, y.clone(), alpha, kind)["loss"]
    assert kd.item() == pytest.approx(regression_loss(s, y, kind).item(), rel=1e-6)


def test_mse_distillation_is_regression_to_the_blended_target() -> None:
    """(1 - a)(s - y)² + a(s - t)² = (s - m)² + a(1 - a)(y - t)² with m = (1 - a) y + a t: on labelled rows, MSE
    distillation moves the label towards the teacher, the regression form of label smoothing."""
    torch.manual_seed(4)
    s, y, t, a = torch.randn(7, 2), torch.randn(7, 2), torch.randn(7, 2), 0.3
    m = (1 - a) * y + a * t
    blended = regression_loss(s, m) + a * (1 - a) * ((y - t) ** 2).mean()
    assert regression_kd_parts(s, y, t, a)["loss"].item() == pytest.approx(blended.item(), rel=1e-6)


def test_equal_variances_give_the_unweighted_loss() -> None:
    torch.manual_seed(2)
    s, y, t = torch.randn(5, 2), torch.randn(5, 2), torch.randn(5, 2)
    w = inverse_variance_weights(torch.full((5, 2), 0.37))
    assert torch.equal(w, torch.ones(5, 2))
    weighted = regression_kd_parts(s, y, t, 0.6, weight=w)["loss"]
    assert weighted.item() == pytest.approx(regression_kd_parts(s, y, t, 0.6)["loss"].item())


def test_inverse_variance_weights_by_hand() -> None:
    # 1/var = [1, 0.25], mean 0.625 -> [1.6, 0.4]; a third row with variance 0 is floored, then capped.
    w = inverse_variance_weights(torch.tensor([[1.0], [4.0]]))
    assert w[:, 0].tolist() == pytest.approx([1.6, 0.4])
    capped = inverse_variance_weights(torch.tensor([[1.0], [4.0], [0.0]]), max_weight=2.0)
    assert capped.max().item() == 2.0
    with pytest.raises(ValueError, match="finite and >= 0"):
        inverse_variance_weights(torch.tensor([[-1.0]]))


def test_unlabelled_rows_leave_no_nan_in_the_gradient() -> None:
    s = torch.randn(4, 1, requires_grad=True)
    y = torch.tensor([[NAN], [1.0], [NAN], [NAN]])
    parts = regression_kd_parts(s, y, torch.zeros(4, 1), 0.5)
    parts["loss"].backward()
    assert torch.isfinite(s.grad).all()
    # d/ds of 0.5 * (s1 - 1)^2 (one labelled row) + 0.5 * mean(s^2) over 4 rows
    expect = 0.5 * 2 * s.detach() / 4
    expect[1] += 0.5 * 2 * (s.detach()[1] - 1.0)
    assert torch.allclose(s.grad, expect)
    # a batch without labels: the label term is 0, not NaN
    none = regression_kd_parts(s, torch.full((4, 1), NAN), torch.zeros(4, 1), 0.5)
    assert none["label"].item() == 0.0 and math.isfinite(none["loss"].item())


def test_regression_kd_parts_rejects_bad_alpha_and_shapes() -> None:
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        regression_kd_parts(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1), 1.5)
    with pytest.raises(ValueError, match="prediction shape"):
        regression_loss(torch.zeros(2, 1), torch.zeros(2, 2))


def test_regression_scores_match_scikit_learn() -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    torch.manual_seed(3)
    y = torch.randn(50, 2)
    p = y + 0.3 * torch.randn(50, 2)
    got = regression_scores(p, y)
    assert got["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y.numpy(), p.numpy())), rel=1e-6)
    assert got["mae"] == pytest.approx(mean_absolute_error(y.numpy(), p.numpy()), rel=1e-6)
    assert got["r2"] == pytest.approx(r2_score(y.numpy(), p.numpy()), rel=1e-6)
    assert regression_scores(y, y)["r2"] == 1.0
