"""Role born_again: each generation learns from the saved previous one; resume keeps finished generations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdistill.config import load_config
from kdistill.experiment.run import run_experiment
from kdistill.io import safe_load
from tests.experiment.recorder import Recorder, one_seed, saved


def test_born_again_generation_learns_from_the_saved_previous_one(tmp_path: Path, monkeypatch) -> None:
    rec = Recorder().install(monkeypatch)
    ov = one_seed(tmp_path, "ban", "roles=[born_again]", "born_again.generations=2")
    s = run_experiment(load_config(None, ov))
    run = tmp_path / "ban"
    assert rec.calls["born_again-seed0-gen0"] == {"objective": "Supervised"}  # Furlanello et al.: labels only
    for k in (1, 2):
        note = rec.calls[f"born_again-seed0-gen{k}"]
        assert note["objective"] == "Distiller"
        previous = saved(run / f"born_again-seed0-gen{k - 1}" / "weights.pt")
        assert note["teacher_state"].keys() == previous.keys()
        for key, value in previous.items():
            assert torch.equal(note["teacher_state"][key], value), key
        assert not any(note["teacher_grad"]) and note["teacher_training"] is False
    rows = [r for r in s["rows"] if r["role"] == "born_again"]
    assert [r["variant"] for r in rows] == ["gen0", "gen1", "gen2", "ensemble"]
    assert [r["headline"] for r in rows] == [False, False, True, False]
    labels = safe_load(run / "teacher" / "predictions.pt")["test_labels"]
    gens = [safe_load(run / r["dir"] / "predictions.pt")["test_logits"] for r in rows[:3]]
    mean = torch.stack([g.softmax(1) for g in gens]).mean(0)
    assert rows[3]["test_acc"] == pytest.approx(float((mean.argmax(1) == labels).float().mean()))
    assert rows[3]["test_nll"] == pytest.approx(float(-mean[torch.arange(len(labels)), labels].log().mean()), rel=1e-5)


def test_born_again_can_start_from_the_teacher(tmp_path: Path, monkeypatch) -> None:
    rec = Recorder().install(monkeypatch)
    ov = one_seed(tmp_path, "ban", "roles=[born_again]", "born_again={generations: 1, start: teacher}")
    run_experiment(load_config(None, ov))
    note, teacher = rec.calls["born_again-seed0-gen0"], saved(tmp_path / "ban" / "teacher" / "weights.pt")
    assert note["objective"] == "Distiller" and not any(note["teacher_grad"])
    assert all(torch.equal(note["teacher_state"][k], v) for k, v in teacher.items())
    assert rec.calls["born_again-seed0-gen1"]["objective"] == "Distiller"


def test_born_again_resume_keeps_finished_generations(tmp_path: Path, monkeypatch) -> None:
    ov = one_seed(tmp_path, "ban", "roles=[born_again]", "born_again.generations=2")
    first = run_experiment(load_config(None, ov))
    last = tmp_path / "ban" / "born_again-seed0-gen2"
    (last / "row.json").unlink()  # as if interrupted before generation 2 finished
    rec = Recorder().install(monkeypatch)
    again = run_experiment(load_config(None, ov), resume=True)
    assert list(rec.calls) == ["born_again-seed0-gen2"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]
    assert strip(again["rows"][1:]) == strip(first["rows"][1:])
