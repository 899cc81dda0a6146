"""The user's own data through everything that exists: an RGB image folder read from disk a batch at a time
(memory budget below its size) survives a SIGKILL and resume exactly, exports with its per-channel
normalization and class names, sweeps, and names its classes in the report."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest

from kdistill.cli import main
from kdistill.config import load_config
from kdistill.experiment.run import run_experiment
from tests.data.builders import CLASSES, images, write_folder
from tests.helpers import cli_run

pytest.importorskip("onnxruntime")

STEPS_PER_EPOCH = 3  # 81 training images (90 - 9 validation) in batches of 27
TEACHER_EPOCHS, STUDENT_EPOCHS = 2, 3


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = images()
    rng = np.random.default_rng(0)
    for split in ("train", "test"):  # grey -> RGB with a different gain per channel: per-channel statistics
        x = data[f"x_{split}"].astype(np.float32)[..., None] * np.array([1.0, 0.6, 0.3], dtype=np.float32)
        data[f"x_{split}"] = np.clip(x + rng.integers(0, 40, size=x.shape), 0, 255).astype(np.uint8)
    return write_folder(tmp_path_factory.mktemp("photos"), data)


def overrides(root: Path, out: Path) -> list[str]:
    return [
        "name=own",
        "data.name=folder",
        f"data.root={root}",
        "data.folder={mode: rgb}",
        "data.memory_budget_mb=0.001",  # far below the images: read from disk a batch at a time
        f"data.prepare_dir={out / 'prepared'}",
        "data.val_size=9",
        "teacher.model.arch=mlp",
        "teacher.model.kwargs={hidden: [32]}",
        f"teacher.train={{epochs: {TEACHER_EPOCHS}, batch_size: 27}}",
        "student.model.kwargs={hidden: [8]}",
        f"student.train={{epochs: {STUDENT_EPOCHS}, batch_size: 27, augment: {{shift: 1, flip: true}}}}",
        "kd.cache.views=2",
        "roles=[scratch, kd]",
        "seeds=[0]",
        "threads=1",
        f"output_dir={out}",
    ]


def _students(summary: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in summary["rows"] if r["role"] != "teacher"]


def test_streamed_folder_resumes_exports_sweeps_and_reports(
    rgb_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In this process the figures are skipped (slow); the resumed CLI run below draws its whole report.
    monkeypatch.setattr("kdistill.experiment.run.build_report", lambda run_dir: run_dir / "report.html")
    before = {str(p): p.stat().st_mtime_ns for p in rgb_folder.rglob("*")}
    reference = run_experiment(load_config(None, overrides(rgb_folder, tmp_path / "ref")))
    found = json.loads((tmp_path / "ref" / "own" / "data.json").read_text())
    assert found["held"] == "disk" and found["class_names"] == CLASSES and found["input_shape"] == [3, 8, 8]
    assert found["counts"] == {"train": 81, "val": 9, "test": 30, "student_labelled": 81, "transfer": 81}

    # Killed in the kd student's 2nd epoch; resumed, it ends where the uninterrupted run ended.
    kill_after = (TEACHER_EPOCHS + STUDENT_EPOCHS + 1) * STEPS_PER_EPOCH + 2
    cut = overrides(rgb_folder, tmp_path / "cut")
    killed = cli_run(cut, tmp_path, {"KDISTILL_KILL_AFTER_STEPS": str(kill_after)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = cli_run([*cut, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    run = tmp_path / "cut" / "own"
    assert _students(json.loads((run / "summary.json").read_text())) == _students(reference)

    # Export: per-channel normalization from the training split, the folder's class names, a passing check.
    assert main(["export", str(run), "--format", "onnx"]) == 0
    manifest = json.loads((run / "export" / "student.json").read_text())
    assert manifest["input_shape"] == [3, 8, 8] and manifest["class_names"] == CLASSES
    norm = manifest["input"]["normalize"]
    assert len(norm["mean"]) == 3 and norm["mean"][0] > norm["mean"][1] > norm["mean"][2]
    assert json.loads((run / "export" / "verify.json").read_text())["onnx"]["ok"]

    # The report names the classes; a sweep runs on the same data.
    assert all(c in (run / "summary.md").read_text() + (run / "report.html").read_text() for c in CLASSES)
    args = ["sweep", str(tmp_path / "empty.yaml"), "--smoke", *overrides(rgb_folder, tmp_path / "sw"), "kd.T=2,4"]
    assert main(args) == 0
    sweep = json.loads((tmp_path / "sw" / "own-smoke-sweep" / "sweep.json").read_text())
    assert len(sweep["points"]) == 2
    assert {str(p): p.stat().st_mtime_ns for p in rgb_folder.rglob("*")} == before  # nothing written there
