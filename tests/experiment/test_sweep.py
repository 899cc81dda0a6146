"""Sweeps: argument splitting, validation before training, selection on validation, end-to-end grid, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdistill.cli import main
from kdistill.config import ConfigError
from kdistill.experiment.sweep import parse_sweep_args, point_slug, run_sweep, select_winner
from tests.helpers import synthetic_overrides


def tiny(tmp_path: Path, name: str = "sw") -> list[str]:
    """The synthetic config of the run tests, smaller still: one seed, one epoch each."""
    return [*synthetic_overrides(tmp_path, name), "seeds=[0]", "teacher.train.epochs=1", "student.train.epochs=1"]


# ----------------------------------------------------------------------------- arguments


def test_parse_splits_axes_from_plain_overrides() -> None:
    axes, plain = parse_sweep_args(
        ["kd.T=1,2,4.5", "kd.alpha=0.5", "seeds=[0,1,2]", "data.synthetic={n_train: 400, side: 8}", "x.flag=true,false"]
    )
    assert axes == {"kd.T": [1, 2, 4.5], "x.flag": [True, False]}
    assert [type(v) for v in axes["kd.T"]] == [int, int, float]
    assert plain == ["kd.alpha=0.5", "seeds=[0,1,2]", "data.synthetic={n_train: 400, side: 8}"]
    axes, _ = parse_sweep_args(["student.train.optimizer=sgd, adam"])
    assert axes == {"student.train.optimizer": ["sgd", "adam"]}
    assert parse_sweep_args(["description='a, b'"]) == ({}, ["description='a, b'"])


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["kd.T=,"], "no values"),
        (["kd.T=1,,2"], "empty value"),
        (["kd.T=4,"], "empty value"),
        (["kd.T=1,2", "kd.T=4,8"], "given twice"),
        (["kd.T=1,2", "kd.T=4"], "both a sweep axis and a plain override"),
        (["kd.T=2,2.0"], "appears twice"),
        (["kd.T"], "not of the form"),
    ],
)
def test_parse_rejects_bad_axes(args: list[str], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        parse_sweep_args(args)


def test_point_slug_is_a_readable_plain_directory_name() -> None:
    assert point_slug({"kd.T": 4, "kd.alpha": 0.5}) == "T4_alpha0.5"
    slug = point_slug({"teacher.train.lr": 0.1, "student.train.lr": 0.05, "data.root": "/a/b"})
    assert slug == "teacher.train.lr0.1_student.train.lr0.05_roota-b"
    assert "/" not in slug and not slug.startswith(".")


# ----------------------------------------------------------------------------- validation before training


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("kd.temperature=1,2", ["kd.temperature", "unknown key"]),
        ("kd.alph=0.6,0.7", ["kd.alph", "unknown key", "did you mean 'kd.alpha'"]),
        ("kd.T=abc,2", ["kd.T", "valid number", "'abc'"]),
    ],
)
def test_bad_point_fails_before_training(tmp_path: Path, arg: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        run_sweep(None, [*tiny(tmp_path), "kd.alpha=0.5,0.9", arg])
    for text in expected:
        assert text in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no sweep dir, no teacher cache: nothing was trained


def test_sweep_controlled_keys_and_unknown_roles_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sets this key itself"):
        run_sweep(None, [*tiny(tmp_path), "teacher_cache_dir=a,b"])
    with pytest.raises(ConfigError, match="unknown role 'kdd'"):
        run_sweep(None, [*tiny(tmp_path), "kd.T=1,2"], roles=["kdd"])
    with pytest.raises(ConfigError, match="no sweep axis"):
        run_sweep(None, tiny(tmp_path))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- selection


def test_select_winner_uses_validation_never_test() -> None:
    points = [
        {"index": 0, "val_acc_mean": 0.80, "test_acc_mean": 0.95},
        {"index": 1, "val_acc_mean": 0.90, "test_acc_mean": 0.70},
        {"index": 2, "val_acc_mean": 0.85, "test_acc_mean": 0.99},
        {"index": 3, "val_acc_mean": 0.90, "test_acc_mean": 0.99},  # a tie on validation: the earlier wins
    ]
    assert select_winner(points)["index"] == 1
    with pytest.raises(ValueError):
        select_winner([])


# ----------------------------------------------------------------------------- end to end


def test_grid_end_to_end_trains_teacher_once(tmp_path: Path) -> None:
    sweep = run_sweep(None, [*tiny(tmp_path), "kd.T=1,4", "kd.alpha=0.5"])
    sweep_dir = tmp_path / "sw-sweep"
    for f in ("sweep.json", "sweep.md"):
        assert (sweep_dir / f).stat().st_size > 0
    assert (sweep_dir / "sweep.png").stat().st_size > 1000
    on_disk = json.loads((sweep_dir / "sweep.json").read_text())
    assert on_disk["status"] == "complete"
    assert on_disk["axes"] == {"kd.T": [1, 4]}
    assert [p["slug"] for p in on_disk["points"]] == ["T1", "T4"]
    assert [p["overrides"] for p in on_disk["points"]] == [{"kd.T": 1}, {"kd.T": 4}]
    for p in on_disk["points"]:
        assert p["seeds"] == [0] and len(p["val_acc"]) == 1 and len(p["test_acc"]) == 1
        assert p["val_acc_mean"] == p["val_acc"][0] and p["val_acc_std"] == 0.0
        summary = json.loads((Path(p["run_dir"]) / "summary.json").read_text())
        assert sorted({r["role"] for r in summary["rows"]}) == ["kd", "teacher"]  # only kd at each point
        assert summary["config"]["kd"]["alpha"] == 0.5
    best = max(on_disk["points"], key=lambda p: p["val_acc_mean"])
    assert on_disk["winner"]["index"] == best["index"]
    # One teacher, trained by the first point, reused by the second and by the reference run.
    assert [p["teacher_source"] for p in on_disk["points"]] == ["trained", "reused"]
    assert on_disk["references"]["teacher_source"] == "reused"
    assert len([d for d in (tmp_path / "_teachers").iterdir() if d.is_dir()]) == 1
    assert set(on_disk["references"]["roles"]) == {"scratch", "label_smoothing"}
    assert (sweep_dir / "reference" / "scratch-seed0" / "weights.pt").is_file()
    md = (sweep_dir / "sweep.md").read_text()
    assert "★" in md and "kdistill sweep" in md and "scratch" in md
    assert sweep["winner"] == on_disk["winner"]


def test_cli_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("roles: [scratch, kd]\n")
    args = ["sweep", str(cfg_file), "--smoke", *tiny(tmp_path, "cli"), "kd.alpha=0.5,0.9", "--roles", "kd"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Winner" in out and "alpha" in out
    sweep = json.loads((tmp_path / "cli-smoke-sweep" / "sweep.json").read_text())
    assert sweep["smoke"] and len(sweep["points"]) == 2 and set(sweep["references"]["roles"]) == {"scratch"}

    assert main(["sweep", str(cfg_file), *tiny(tmp_path, "bad"), "kd.temperature=1,2"]) == 2
    err = capsys.readouterr().err
    assert "kdistill: error:" in err and "kd.temperature" in err and "unknown key" in err
    assert not (tmp_path / "bad-sweep").exists()
