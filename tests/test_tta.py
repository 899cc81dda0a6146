"""Test-time augmentation of a teacher: shifted views by hand, the views in the cache keys, the wiring in a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill.caches import state_fingerprint
from kdistill.config import ConfigError, TeacherConfig, load_config
from kdistill.experiment.run import run_experiment
from kdistill.experiment.teachers import _teacher_arch
from kdistill.tta import ShiftAveraged, shift_offsets, view_count
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


def test_mirrored_views_by_hand() -> None:
    # one row [1, 2, 6]: its mirror is [6, 2, 1]; with shift 1 along x only the plus pattern's (0, +-1) views move it
    x = torch.tensor([[[[1.0, 2.0, 6.0]]]])
    plain = ShiftAveraged(nn.Flatten(), 1, "plus")
    mirrored = ShiftAveraged(nn.Flatten(), 1, "plus", flip=True)
    assert plain.views == 5 == view_count(1, "plus") and mirrored.views == 10 == view_count(1, "plus", flip=True)
    # the mean over the views of the image and of its mirror is symmetric, and is the mean of the two plain means
    out = mirrored(x)
    assert torch.allclose(out, out.flip(-1))
    assert torch.allclose(out, (plain(x) + plain(x.flip(-1))) / 2)
    # by hand: pad with the minimum (1); rows up/down are all background [1, 1, 1]; left/right shifts move the row
    views = [[1, 2, 6], [1, 1, 1], [1, 1, 1], [2, 6, 1], [1, 1, 2]]
    mean_plain = torch.tensor(views, dtype=torch.float).mean(0)
    assert torch.allclose(plain(x), mean_plain[None])
    assert torch.allclose(out, ((mean_plain + mean_plain.flip(0)) / 2)[None])


def test_views_enter_the_fingerprint_and_bad_inputs_are_named() -> None:
    net = nn.Linear(4, 2)
    plus, grid = ShiftAveraged(net, 1, "plus"), ShiftAveraged(net, 1, "grid")
    mirrored = ShiftAveraged(net, 1, "plus", flip=True)
    assert len({state_fingerprint(m) for m in (net, plus, grid, mirrored)}) == 4
    # without flips the state is what it was before flips existed: the caches built then keep their keys
    assert set(plus.state_dict()) == {"offsets", "model.weight", "model.bias"}
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
    assert "with test-time shifts {'shift': 1, 'pattern': 'plus', 'flip': False}; student" in md
    assert "test-time shifts" not in (tmp_path / "plain" / "summary.md").read_text()
    kd_plain, kd_tta = plain["rows"][1], tta["rows"][1]
    assert kd_plain["role"] == kd_tta["role"] == "kd" and kd_plain["test_nll"] != kd_tta["test_nll"]


def test_tta_refuses_terms_that_read_inner_teacher_layers(tmp_path: Path) -> None:
    term = "terms=[{method: fitnet, layers: [[features.0, features.0]]}]"
    with pytest.raises(ConfigError, match=r"teacher.tta averages .* terms \['fitnet'\] read its inner layers"):
        load_config(None, [*synthetic_overrides(tmp_path), "teacher.tta={shift: 1}", term])
    load_config(None, [*synthetic_overrides(tmp_path), "teacher.tta={pattern: grid}", "terms=[{method: dkd}]"])


def test_teacher_row_names_its_views() -> None:
    assert _teacher_arch(TeacherConfig()) == "cnn"
    assert _teacher_arch(TeacherConfig(tta={"pattern": "grid"})) == "cnn + tta (9 views, 1 px)"
    assert _teacher_arch(TeacherConfig(tta={"pattern": "grid", "flip": True})) == "cnn + tta (18 views, 1 px, mirrored)"
