"""Test-time augmentation of a teacher: shifted views by hand, the views in the cache keys, the wiring in a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill.caches import state_fingerprint
from kdistill.config import ConfigError, load_config
from kdistill.experiment.run import run_experiment
from kdistill.tta import ShiftAveraged, shift_offsets
from tests.helpers import synthetic_overrides


def test_offsets_of_each_pattern() -> None:
    assert shift_offsets(1, "plus") == [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
    grid = shift_offsets(2, "grid")
    assert len(grid) == 9 and grid[0] == (0, 0) and set(grid) == {(a, b) for a in (-2, 0, 2) for b in (-2, 0, 2)}
    with pytest.raises(ValueError, match="tta shift must be >= 1"):
        shift_offsets(0, "plus")
    with pytest.raises(ValueError, match="unknown tta pattern 'ring'"):
        shift_offsets(1, "ring")  # type: ignore[arg-type]


def test_mean_over_shifted_views_by_hand() -> None:
    # a 3x3 image on background 0 with one bright pixel in the middle; the model reads the pixels out
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 5.0
    out = ShiftAveraged(nn.Flatten(), 1, "plus")(x)
    # the centre, and the pixel moved one step up, down, left and right: 1/5 of it at each of the five places
    expected = torch.zeros(3, 3)
    for r, c in [(1, 1), (0, 1), (2, 1), (1, 0), (1, 2)]:
        expected[r, c] = 1.0
    assert torch.allclose(out.view(3, 3), expected)
    # the background fill is each image's own minimum, as in training augmentation: a constant image stays constant
    flat = torch.full((2, 1, 4, 4), -0.7)
    assert torch.allclose(ShiftAveraged(nn.Flatten(), 1, "grid")(flat), flat.flatten(1))


def test_views_enter_the_fingerprint_and_bad_inputs_are_named() -> None:
    net = nn.Linear(4, 2)
    plus, grid = ShiftAveraged(net, 1, "plus"), ShiftAveraged(net, 1, "grid")
    assert len({state_fingerprint(net), state_fingerprint(plus), state_fingerprint(grid)}) == 3
    with pytest.raises(ValueError, match=r"shifts images \[B, C, H, W\], got inputs of shape \(3, 4\)"):
        plus(torch.randn(3, 4))


def test_a_run_with_a_tta_teacher(tmp_path: Path) -> None:
    base = synthetic_overrides(tmp_path, "plain") + ["seeds=[0]", "roles=[kd]"]
    plain = run_experiment(load_config(None, base))
    tta = run_experiment(load_config(None, [*base, "name=tta", "teacher.tta={}"]))  # later overrides win
    t_plain, t_tta = plain["rows"][0], tta["rows"][0]
    # the same trained weights (the cache holds the plain network), scored and distilled through its views
    assert t_tta["source"] == "reused" and t_tta["test_acc"] != t_plain["test_acc"]
    assert t_plain["arch"] == "mlp" and t_tta["arch"] == "mlp + tta (5 views, 1 px)"
    md = (tmp_path / "tta" / "summary.md").read_text()
    assert "with test-time shifts {'shift': 1, 'pattern': 'plus'}; student" in md
    assert "test-time shifts" not in (tmp_path / "plain" / "summary.md").read_text()
    kd_plain, kd_tta = plain["rows"][1], tta["rows"][1]
    assert kd_plain["role"] == kd_tta["role"] == "kd" and kd_plain["test_nll"] != kd_tta["test_nll"]


def test_tta_refuses_terms_that_read_inner_teacher_layers(tmp_path: Path) -> None:
    term = "terms=[{method: fitnet, layers: [[features.0, features.0]]}]"
    with pytest.raises(ConfigError, match=r"teacher.tta averages .* terms \['fitnet'\] read its inner layers"):
        load_config(None, [*synthetic_overrides(tmp_path), "teacher.tta={shift: 1}", term])
    load_config(None, [*synthetic_overrides(tmp_path), "teacher.tta={pattern: grid}", "terms=[{method: dkd}]"])
