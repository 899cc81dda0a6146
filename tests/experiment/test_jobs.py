"""`kdistill run --jobs N`: seeds trained in N worker processes end in one summary, equal to a one-process run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdistill.cli import main
from tests.helpers import synthetic_overrides


def _rows(run: Path) -> dict[tuple[str, int], float]:
    summary = json.loads((run / "summary.json").read_text())
    return {(r["role"], r["seed"]): r["test_acc"] for r in summary["rows"]}


def test_jobs_split_the_seeds_and_write_one_summary_equal_to_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    common = ["seeds=[0,1,2]", "roles=[scratch,kd]", "threads=1"]
    assert main(["run", str(cfg), *synthetic_overrides(tmp_path, "one"), *common]) == 0
    assert main(["run", str(cfg), *synthetic_overrides(tmp_path, "two"), *common, "--jobs", "2"]) == 0
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(two) == 1 + 2 * 3 and two == one  # every (role, seed), the same numbers (1 thread either way)
    assert not list((tmp_path / "two").glob(".*"))  # no lock, no worker config left behind
    assert main(["run", str(cfg), *synthetic_overrides(tmp_path, "bad"), *common, "--jobs", "0"]) == 2
    assert "--jobs 0" in capsys.readouterr().err


def test_a_failing_worker_is_one_error_and_the_finished_students_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    ov = [*synthetic_overrides(tmp_path, "div"), "seeds=[0,1]", "roles=[scratch]", "student.train.lr=1e12"]
    assert main(["run", str(cfg), *ov, "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert "kdistill: error: --jobs: worker(s) failed: seeds [0] exited with code 2" in err
    assert (tmp_path / "div" / "teacher" / "predictions.pt").is_file()


def test_workers_compute_the_teacher_logits_once(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """Three workers need the teacher's logits on the transfer set at once: one computes them (under a lock on
    the teacher-output cache), the others read the file it wrote; a --resume reads it too, and so does another
    run with the same teacher and transfer images (the few-labels scenario after the compression one)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    ov = [*synthetic_overrides(tmp_path, "run"), "seeds=[0,1,2]", "roles=[kd]", "threads=1"]
    assert main(["run", str(cfg), *ov, "--jobs", "3"]) == 0
    out = capfd.readouterr()
    log = out.out + out.err
    assert log.count("teacher logits cached for") == 1, log
    assert log.count("teacher logits read back for") >= 2
    assert len(list((tmp_path / "_teacher_cache").glob("logits/*.pt"))) == 1
    assert len(list((tmp_path / "_teacher_cache").glob("predictions/*.pt"))) == 1
    assert main(["run", str(cfg), *ov, "--resume"]) == 0
    assert "teacher logits cached for" not in capfd.readouterr().out
    other = [*ov, "name=other", "data.labelled=100", "kd.transfer=all"]  # labels differ; images and teacher do not
    assert main(["run", str(cfg), *other]) == 0
    assert "teacher logits read back for" in capfd.readouterr().out
    assert len(list((tmp_path / "_teacher_cache").glob("*/*.pt"))) == 2  # nothing computed twice
    rows = {r["role"]: r for r in json.loads((tmp_path / "other" / "summary.json").read_text())["rows"]}
    first = {r["role"]: r for r in json.loads((tmp_path / "run" / "summary.json").read_text())["rows"]}
    assert rows["teacher"]["test_acc"] == first["teacher"]["test_acc"]
