"""Every figure is a real PNG written atomically; bad input to a figure is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdistill.data import Split
from kdistill.metrics import dark_knowledge_matrix
from kdistill.models import MLP
from kdistill.report.figures import (
    plot_dark_knowledge,
    plot_decision_regions,
    plot_entropy_vs_T,
    plot_reliability,
    plot_soft_targets,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE
    # Written through a temporary file and renamed: nothing else is left in the directory.
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_plots_write_png(tmp_path: Path, gen: torch.Generator) -> None:
    z = torch.randn(12, 3, generator=gen) * 3
    y = torch.arange(12) % 3
    names = ["cat", "dog", "ship"]
    cases = {
        "soft": lambda p: plot_soft_targets(z[:2], y[:2], names, p, images=torch.rand(2, 1, 4, 4)),
        "soft_noimg": lambda p: plot_soft_targets(z[:1], y[:1], None, p, temperatures=[1, 5]),
        "entropy": lambda p: plot_entropy_vs_T(z, p, temperatures=[0.5, 1, 4, 16]),
        "dark": lambda p: plot_dark_knowledge(dark_knowledge_matrix(z, y, 3, 4.0), names, 4.0, p),
        "reliability": lambda p: plot_reliability(
            {"scratch": (F.softmax(z, 1), y), "kd": (F.softmax(z / 3, 1), y)}, p, n_bins=5
        ),
    }
    for name, draw in cases.items():
        path = tmp_path / name / "fig.png"
        assert draw(path) == path
        assert_png(path)


_Z = torch.zeros(4, 3)
_P = torch.full((4, 3), 1 / 3)
_Y = torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: plot_soft_targets(_Z, _Y, ["a", "b"], "x.png"), "2 class names for 3 classes"),
        (lambda: plot_soft_targets(_Z, _Y, None, "x.png", temperatures=[0]), "> 0"),
        (lambda: plot_soft_targets(_Z, _Y, None, "x.png", images=torch.zeros(3, 1, 4, 4)), "one per logit row"),
        (lambda: plot_soft_targets(torch.zeros(40, 3), torch.zeros(40, dtype=torch.long), None, "x.png"), "at most"),
        (lambda: plot_dark_knowledge(torch.zeros(2, 3), None, 1.0, "x.png"), "must be square"),
        (lambda: plot_reliability({}, "x.png"), "curves is empty"),
        (lambda: plot_reliability({"a": (_P,)}, "x.png"), r"\(probs, labels\) pair"),
    ],
)
def test_bad_figure_input_raises_clear_value_error(call, match: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a call that wrongly succeeded must not litter the repository
    with pytest.raises(ValueError, match=match):
        call()


def test_decision_regions_with_unlabelled_points_and_no_test(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(20, 2)
    split = Split(x, torch.tensor([0, 1, -1, 2] * 5), torch.arange(20))
    models = {"a": MLP(2, 3, hidden=(4,)), "b": MLP(2, 3, hidden=(4,))}
    path = plot_decision_regions(models, split, tmp_path / "sub" / "r.png", resolution=10, reference="a")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_decision_regions_bad_input(tmp_path: Path) -> None:
    split = Split(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.arange(4))
    with pytest.raises(ValueError, match="2-D inputs"):
        plot_decision_regions({"m": MLP(3, 2, hidden=(2,))}, split, tmp_path / "x.png")
    with pytest.raises(ValueError, match="models is empty"):
        plot_decision_regions({}, split, tmp_path / "x.png")
