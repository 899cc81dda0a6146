"""Role multi_teacher: the second teacher is trained once, cached, and mixed with the run's."""

from __future__ import annotations

from pathlib import Path

import torch

from kdistill.config import load_config
from kdistill.experiment.run import run_experiment
from tests.experiment.recorder import Recorder, one_seed, saved


def test_multi_teacher_run_trains_its_second_teacher_once(tmp_path: Path, monkeypatch) -> None:
    section = (
        "multi_teacher={teachers: [{model: {arch: mlp, kwargs: {hidden: [16]}}, train: {epochs: 2}}], weights: [1, 3]}"
    )
    rec = Recorder().install(monkeypatch)
    s = run_experiment(load_config(None, one_seed(tmp_path, "mt", "roles=[multi_teacher]", section)))
    row = s["rows"][1]
    assert row["role"] == "multi_teacher" and "variant" not in row
    assert [t["source"] for t in row["teachers"]] == ["trained", "trained"]
    assert row["teacher_weights"] == [0.25, 0.75]
    assert (tmp_path / "mt" / "multi_teacher-t0" / "weights.pt").is_file()
    # The student's teacher: both teachers, frozen, as trained.
    note = rec.calls["multi_teacher-seed0"]
    assert not any(note["teacher_grad"]) and note["teacher_training"] is False
    second = saved(tmp_path / "mt" / "multi_teacher-t0" / "weights.pt")
    assert all(torch.equal(note["teacher_state"][f"teachers.1.{k}"], v) for k, v in second.items())
    again = run_experiment(load_config(None, one_seed(tmp_path, "mt2", "roles=[multi_teacher]", section)))
    assert [t["source"] for t in again["rows"][1]["teachers"]] == ["reused", "reused"]
    assert again["rows"][1]["teacher_mean_test_acc"] == row["teacher_mean_test_acc"]
