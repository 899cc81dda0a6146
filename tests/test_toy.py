"""The 2-D toy: seeded data, a tiny end-to-end teacher / scratch / KD run, and the decision-region figure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdistill.report.figures import plot_decision_regions
from kdistill.toy import make_toy, run_toy

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("kind", "k"), [("moons", 2), ("spirals", 3)])
def test_make_toy_is_seeded_balanced_and_standardized(kind: str, k: int) -> None:
    train, test = make_toy(kind, n_train=61, n_test=30, noise=0.1, seed=3)
    again, again_test = make_toy(kind, n_train=61, n_test=30, noise=0.1, seed=3)
    other, _ = make_toy(kind, n_train=61, n_test=30, noise=0.1, seed=4)
    assert torch.equal(train.x, again.x) and torch.equal(train.y, again.y) and torch.equal(test.x, again_test.x)
    assert not torch.equal(train.x, other.x)
    assert train.x.shape == (61, 2) and train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert torch.equal(train.index, torch.arange(61)) and len(test) == 30
    for split in (train, test):
        counts = torch.bincount(split.y, minlength=k)
        assert len(counts) == k and int(counts.max() - counts.min()) <= 1  # balanced
    torch.testing.assert_close(train.x.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.x.std(0, unbiased=False), torch.ones(2), atol=1e-5, rtol=0)
    assert len(set(train.y[:10].tolist())) > 1  # shuffled, not sorted by class


def test_make_toy_spirals_with_more_arms() -> None:
    train, _ = make_toy("spirals", n_train=50, n_test=5, seed=0, num_classes=4)
    assert torch.bincount(train.y).tolist() == [13, 13, 12, 12]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "circles"}, "unknown toy kind 'circles'"),
        ({"kind": "moons", "num_classes": 3}, "moons have exactly 2 classes"),
        ({"kind": "spirals", "num_classes": 1}, "num_classes must be >= 2"),
        ({"n_train": 1}, "n_train >= 2"),
        ({"noise": -0.1}, "noise must be"),
        ({"turns": 0}, "turns must be"),
    ],
)
def test_make_toy_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_toy(**kwargs)


def test_tiny_run_toy_and_decision_regions(tmp_path: Path) -> None:
    r = run_toy(
        "spirals",
        seed=0,
        n_train=90,
        n_val=30,
        n_transfer=90,
        n_test=90,
        teacher_hidden=(64, 64),
        student_hidden=(4,),
        teacher_steps=300,
        student_steps=60,
        batch_size=32,
        resolution=24,
    )
    assert set(r["models"]) == {"teacher", "scratch", "kd"}
    assert r["test_acc"]["teacher"] > 0.5  # three classes: chance is 1/3
    for name in ("scratch", "kd"):
        assert 0.0 <= r["test_acc"][name] <= 1.0
        assert 0.0 <= r["agreement"][name] <= 1.0 and 0.0 <= r["test_agreement"][name] <= 1.0
    assert r["params"]["teacher"] > r["params"]["kd"] == r["params"]["scratch"]
    # The KD transfer set is the labelled points plus unlabelled ones; the teacher never trains on it.
    assert len(r["transfer"]) == 180 and int((r["transfer"].y == -1).sum()) == 90
    assert torch.equal(r["transfer"].x[:90], r["train"].x)

    path = tmp_path / "regions.png"
    assert plot_decision_regions(r["models"], r["train"], path, resolution=30, test=r["test"]) == path
    assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["regions.png"]  # the temporary file was renamed
