"""The command line: clear errors with exit code 2, overrides after options."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdistill.cli import main
from kdistill.config import load_config
from kdistill.experiment.run import run_experiment
from tests.helpers import synthetic_overrides


def test_teacher_checkpoint_for_other_architecture_names_keys(tmp_path: Path, capsys) -> None:
    run_experiment(load_config(None, synthetic_overrides(tmp_path, "src")))
    ckpt = tmp_path / "src" / "teacher" / "weights.pt"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("{}\n")
    ov = synthetic_overrides(tmp_path, "dst") + [
        f"teacher.checkpoint={ckpt}",
        "teacher.model.kwargs={hidden: [16, 16]}",
    ]
    rc = main(["run", str(cfg_file), *ov])
    err = capsys.readouterr().err
    assert rc == 2
    assert "does not fit the model" in err
    assert "features.3.weight" in err  # a layer only the 2-hidden-layer model has
    assert "shape mismatch" in err and "features.1.weight" in err


def test_cli_config_typo_is_a_clear_error(tmp_path: Path, capsys) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("kd:\n  temperature: 4\n")
    assert main(["run", str(cfg_file)]) == 2
    err = capsys.readouterr().err
    assert "kd.temperature" in err and "unknown key" in err


def test_cli_accepts_overrides_after_options(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("roles: [scratch]\n")
    args = ["run", str(cfg_file), "--smoke", *synthetic_overrides(tmp_path, "cli"), "seeds=[0]"]
    assert main(args) == 0
    assert (tmp_path / "cli-smoke" / "summary.json").is_file()
    with pytest.raises(SystemExit):
        main(["run", str(cfg_file), "--smok"])


def test_device_and_jobs_flags_are_refused_where_a_task_has_no_use_for_them(capsys) -> None:
    """A flag a run cannot honour is an error, never silently dropped: language-model and regression runs train on
    the CPU, and only image runs split seeds over processes."""
    root = Path(__file__).resolve().parents[1] / "configs"
    for config in (root / "text" / "stdlib_tiny.yaml", next((root / "regression").glob("*.yaml"))):
        assert main(["run", str(config), "--device", "cuda"]) == 2
        assert "trains on the CPU; drop --device" in capsys.readouterr().err
    assert main(["run", str(root / "text" / "minilm_shrink.yaml"), "--jobs", "2"]) == 2
    assert "--jobs applies to image runs" in capsys.readouterr().err


def test_a_diverging_run_is_one_error_line_and_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("{}\n")
    ov = [*synthetic_overrides(tmp_path, "div"), "student.train.lr=1e12", "seeds=[0]", "roles=[scratch]"]
    assert main(["run", str(cfg_file), *ov]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdistill: error: scratch") and "Traceback" not in err
    assert "loss became" in err and "lower the learning rate (lr=1000000000000.0 now)" in err
    assert (tmp_path / "div" / "teacher").is_dir()  # the teacher trained before the failure is kept
    with pytest.raises(FloatingPointError):
        main(["--debug", "run", str(cfg_file), *ov])
