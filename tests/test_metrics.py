"""Scores of predictions: calibration against hand-computed numbers, soft-target properties, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdistill.metrics import (
    dark_knowledge_matrix,
    entropy,
    expected_calibration_error,
    percent,
    reliability_data,
    score,
    soft_targets,
)

# ----------------------------------------------------------------------------- calibration


def test_ece_hand_computed_example() -> None:
    # Five 2-class predictions, 5 bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]:
    #   conf .90 right, conf .95 right          -> bin (.8,1]: acc 1.0, conf .925, |gap| .075, weight 2/5
    #   conf .70 wrong (pred 0, y 1), .70 right -> bin (.6,.8]: acc 0.5, conf .700, |gap| .200, weight 2/5
    #   conf .55 right                          -> bin (.4,.6]: acc 1.0, conf .550, |gap| .450, weight 1/5
    # ECE = .4 * .075 + .4 * .2 + .2 * .45 = .03 + .08 + .09 = 0.20
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.3, 0.7], [0.55, 0.45], [0.95, 0.05]])
    labels = torch.tensor([0, 1, 1, 0, 0])
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.20, abs=1e-9)
    rel = reliability_data(probs, labels, n_bins=5)
    assert rel.count.tolist() == [0, 0, 1, 2, 2]
    assert rel.accuracy[2:].tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert rel.confidence[2:].tolist() == pytest.approx([0.55, 0.7, 0.925])
    assert math.isnan(rel.accuracy[0]) and math.isnan(rel.confidence[1])  # empty bins: no value, not 0


def test_ece_zero_when_perfectly_calibrated() -> None:
    # 10 predictions at confidence .8 with 8 right, 5 at confidence .6 with 3 right: acc == conf per bin.
    # float64: in float32, 0.8 is 0.800000012 and the "perfect" gap would be 1e-8, not 0.
    probs = torch.tensor([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5, dtype=torch.float64)
    labels = torch.tensor([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_reliability_bin_edges_are_right_closed() -> None:
    # (lower, upper]: a confidence exactly on an edge belongs to the bin below; 1.0 to the last bin.
    probs = torch.tensor([[0.6, 0.4], [1.0, 0.0], [0.5, 0.5]])
    rel = reliability_data(probs, torch.tensor([0, 0, 0]), n_bins=5)
    assert rel.count.tolist() == [0, 0, 2, 0, 1]
    assert rel.edges.tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])


# ----------------------------------------------------------------------------- soft targets


def test_soft_targets_shape_and_limits(gen: torch.Generator) -> None:
    z = torch.randn(6, 5, generator=gen) * 4
    p = soft_targets(z, [1.0, 3.0, 1e6])
    assert p.shape == (3, 6, 5)
    torch.testing.assert_close(p[0], F.softmax(z, dim=1))
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 6))
    assert (p[2] - 1 / 5).abs().max() < 1e-4  # T -> large: uniform
    assert entropy(p[2]).min() == pytest.approx(math.log(5), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_entropy_increases_monotonically_with_temperature(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(20, 7, generator=g, dtype=torch.float64) * 5
    ts = torch.logspace(-1, 2, 40).tolist()
    h = entropy(soft_targets(z, ts))  # (T, n)
    assert bool((h.diff(dim=0) >= -1e-10).all())
    assert bool((h <= math.log(7) + 1e-10).all())


def test_entropy_closed_forms() -> None:
    assert entropy(torch.tensor([1.0, 0.0, 0.0])).item() == 0.0  # 0 log 0 = 0, not NaN
    assert entropy(torch.full((4,), 0.25)).item() == pytest.approx(math.log(4))
    assert entropy(torch.tensor([0.5, 0.5])).item() == pytest.approx(math.log(2))


# ----------------------------------------------------------------------------- dark knowledge


def test_dark_knowledge_matrix_matches_loop(gen: torch.Generator) -> None:
    z = torch.randn(30, 4, generator=gen, dtype=torch.float64) * 3
    y = torch.arange(30) % 4
    T = 2.5
    m = dark_knowledge_matrix(z, y, 4, T)
    torch.testing.assert_close(m.sum(dim=1), torch.ones(4, dtype=m.dtype))
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for c in range(4):
        rows = [torch.softmax(z[i] / T, dim=0) for i in range(30) if int(y[i]) == c]
        expected[c] = sum(rows) / len(rows)
    torch.testing.assert_close(m, expected)


def test_dark_knowledge_class_without_samples_is_nan() -> None:
    m = dark_knowledge_matrix(torch.zeros(2, 3), torch.tensor([0, 0]), 3, 1.0)
    assert torch.isnan(m[1]).all() and torch.isnan(m[2]).all()
    torch.testing.assert_close(m[0], torch.full((3,), 1 / 3))


# ----------------------------------------------------------------------------- figures


# ----------------------------------------------------------------------------- bad input

_Z = torch.zeros(4, 3)
_P = torch.full((4, 3), 1 / 3)
_Y = torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: soft_targets(_Z, [1.0, 0.0]), "temperatures must be finite numbers > 0"),
        (lambda: soft_targets(_Z, [-2.0]), "> 0"),
        (lambda: soft_targets(_Z, [float("nan")]), "> 0"),
        (lambda: soft_targets(_Z, []), "at least one temperature"),
        (lambda: soft_targets(torch.zeros(3), [1.0]), r"2-D tensor of shape \(n, classes\)"),
        (lambda: entropy(torch.tensor([-0.5, 1.5])), "probabilities >= 0"),
        (lambda: expected_calibration_error(_P, _Y[:3]), "3 entries but there are 4 rows"),
        (lambda: expected_calibration_error(_P, _Y, n_bins=0), "n_bins must be an integer >= 1"),
        (lambda: expected_calibration_error(_Z + 2.0, _Y), "apply softmax first"),
        (lambda: expected_calibration_error(_P * 0.5, _Y), "sum to 1"),
        (lambda: expected_calibration_error(_P, torch.tensor([0, 1, 2, 3])), r"must lie in 0\.\.2"),
        (lambda: reliability_data(_P, _Y, n_bins=2.5), "n_bins must be an integer"),
        (lambda: dark_knowledge_matrix(_Z, _Y, 3, 0.0), "> 0"),
        (lambda: dark_knowledge_matrix(_Z, _Y[:2], 3, 1.0), "one label per row"),
        (lambda: dark_knowledge_matrix(_Z, _Y, 4, 1.0), "num_classes=4"),
    ],
)
def test_bad_input_raises_clear_value_error(call, match: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a call that wrongly succeeded must not litter the repository
    with pytest.raises(ValueError, match=match):
        call()


def test_score_and_percent_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    ev = score(logits, torch.tensor([0, 1, 1]))
    assert (ev.acc, ev.errors, ev.n) == (2 / 3, 1, 3)
    nll = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + (3 + math.log1p(math.exp(-3)))) / 3
    assert ev.nll == pytest.approx(nll, rel=1e-6)
    assert percent(0.91094) == "91.09" and percent(None) == "–" and percent("x", "n/a") == "n/a"
