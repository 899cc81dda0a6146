"""Exact resume: a run SIGKILLed in the middle of an epoch and resumed ends exactly where an uninterrupted
run with the same seed ends; bad resumes fail with a message that names the problem."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from kdistill.config import load_config
from kdistill.experiment.checks import check_resumable
from kdistill.experiment.run import run_experiment
from kdistill.io import CheckpointError
from tests.helpers import cli_run

STEPS_PER_EPOCH = 10  # 340 training images (400 - 60 validation), batches of 32, last one dropped
TEACHER_EPOCHS, STUDENT_EPOCHS = 3, 4


def overrides(out: Path) -> list[str]:
    return [
        "name=resume",
        "data.name=synthetic",
        "data.val_size=60",
        "data.synthetic={n_train: 400, n_test: 200, num_classes: 4, side: 8}",
        "teacher.model.arch=mlp",
        "teacher.model.kwargs={hidden: [32]}",
        f"teacher.train.epochs={TEACHER_EPOCHS}",
        "teacher.train.batch_size=32",
        "student.model.kwargs={hidden: [16]}",
        f"student.train.epochs={STUDENT_EPOCHS}",
        "student.train.batch_size=32",
        # Augmented views from the teacher cache, and a term with its own state (CRD's memory bank and
        # embedding heads, which draws random negatives): everything that must be restored exactly.
        "student.train.augment={shift: 1}",
        "kd.cache.views=3",
        "terms=[{method: crd, layers: [[logits, logits]], weight: 0.1, options: {feat_dim: 8, negatives: 16}}]",
        "roles=[scratch, kd]",
        "seeds=[0]",
        "threads=1",
        f"output_dir={out}",
    ]


def _students(summary: dict) -> list[dict]:
    drop = {"train_seconds"}
    return [{k: v for k, v in r.items() if k not in drop} for r in summary["rows"] if r["role"] != "teacher"]


def _history(run: Path, role: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / f"{role}-seed0" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_sigkill_mid_epoch_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    reference = run_experiment(load_config(None, overrides(tmp_path / "ref")))

    # Killed right after the 5th step of the kd student's 2nd epoch (the teacher and the scratch
    # student have finished; the kd student's last.pt holds epoch 1).
    kill_after = (TEACHER_EPOCHS + STUDENT_EPOCHS + 1) * STEPS_PER_EPOCH + 5
    killed = cli_run(overrides(tmp_path / "cut"), tmp_path, {"KDISTILL_KILL_AFTER_STEPS": str(kill_after)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "cut" / "resume"
    assert (run / "scratch-seed0" / "row.json").is_file()
    assert not (run / "kd-seed0" / "row.json").exists() and not (run / "summary.json").exists()
    assert len(_history(run, "kd")) == 1  # one finished epoch on disk
    assert not [p for p in run.rglob("*.tmp")]  # atomic writes: no half-written file left behind

    resumed = cli_run([*overrides(tmp_path / "cut"), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "already finished (before an interruption" in resumed.stdout
    assert "resumed from" in resumed.stdout and "after epoch 1/4" in resumed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert _students(summary) == _students(reference)
    ref_run = tmp_path / "ref" / "resume"
    assert _history(run, "kd") == _history(ref_run, "kd")
    assert _history(run, "scratch") == _history(ref_run, "scratch")


def test_resume_without_a_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds no run to resume"):
        run_experiment(load_config(None, overrides(tmp_path)), resume=True)


def test_resume_with_another_config_names_what_differs(tmp_path: Path) -> None:
    run = tmp_path / "resume"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(load_config(None, overrides(tmp_path)).to_yaml())
    (run / "kd-seed0").mkdir()
    (run / "kd-seed0" / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"kd\.T: 4\.0 in .*config\.yaml, 8\.0 now"):
        run_experiment(load_config(None, [*overrides(tmp_path), "kd.T=8"]), resume=True)
    # Threads and device only change the speed: they may differ (the check passes), any other key may not.
    check_resumable(run, load_config(None, [*overrides(tmp_path), "threads=2", "device=cpu"]))
    with pytest.raises(CheckpointError, match=r"student\.train\.lr"):
        check_resumable(run, load_config(None, [*overrides(tmp_path), "threads=2", "student.train.lr=0.5"]))


def test_resume_with_nothing_to_continue_is_a_clear_error(tmp_path: Path) -> None:
    run = tmp_path / "resume"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(load_config(None, overrides(tmp_path)).to_yaml())
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        run_experiment(load_config(None, overrides(tmp_path)), resume=True)


def test_truncated_checkpoint_is_reported_not_loaded(tmp_path: Path) -> None:
    cfg = load_config(None, [*overrides(tmp_path), "roles=[scratch]", "student.train.epochs=1"])
    run_experiment(cfg)
    last = tmp_path / "resume" / "scratch-seed0" / "last.pt"
    (tmp_path / "resume" / "scratch-seed0" / "row.json").unlink()  # pretend it was interrupted
    last.write_bytes(last.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        run_experiment(cfg, resume=True)


def test_checkpoint_of_another_recipe_is_refused(tmp_path: Path) -> None:
    cfg = load_config(None, [*overrides(tmp_path), "roles=[scratch]", "student.train.epochs=1"])
    run_experiment(cfg)
    (tmp_path / "resume" / "scratch-seed0" / "row.json").unlink()
    # The run's config.yaml is rewritten to match, as if the student recipe had been edited in place.
    cfg2 = load_config(
        None, [*overrides(tmp_path), "roles=[scratch]", "student.train.epochs=1", "student.train.lr=0.01"]
    )
    (tmp_path / "resume" / "config.yaml").write_text(cfg2.to_yaml())
    with pytest.raises(CheckpointError, match=r"train\.lr: 0\.05 in the checkpoint, 0\.01 now"):
        run_experiment(cfg2, resume=True)
