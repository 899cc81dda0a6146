"""``task: regression``: every shipped config in --smoke mode, reproducible and resumable runs, the report, and
the bad inputs the issue names (integer labels, NaN targets, a teacher of the wrong width), each refused before
the run directory changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from kdistill.cli import main
from kdistill.config import ConfigError, task_of
from kdistill.data import DataError
from kdistill.experiment.regression_run import run_regression
from kdistill.io import CheckpointError
from kdistill.regression.config import RegressionExperimentConfig, load_regression_config
from kdistill.regression.data import load_table
from kdistill.regression.teacher import TeacherError
from tests.helpers import ROOT

CONFIGS = sorted((ROOT / "configs" / "regression").glob("*.yaml"))


def tiny(tmp_path: Path, **over: object) -> RegressionExperimentConfig:
    raw = {
        "name": "tiny",
        "output_dir": str(tmp_path),
        "threads": 1,
        "seeds": [0, 1],
        "budgets": [6, None],
        "data": {"source": "toy1d", "toy": {"n_train": 60, "n_val": 12, "n_test": 30}},
        "teacher": {
            "members": 2,
            "hidden": [16],
            "train": {"epochs": 3, "optimizer": "adam", "lr": 0.01, "select": "nll"},
        },
        "student": {
            "hidden": [8],
            "train": {"steps": 15, "batch_size": 16, "optimizer": "adam", "lr": 0.01, "select": "last"},
        },
        **over,
    }
    return RegressionExperimentConfig.model_validate(raw)


def test_regression_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS}
    assert {"toy1d.yaml", "toy1d_linear.yaml", "diabetes.yaml", "diabetes_linear.yaml"} <= names
    assert all(task_of(p) == "regression" for p in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_regression_config_smoke(config: Path, tmp_path: Path) -> None:
    cfg = load_regression_config(config, [f"output_dir={tmp_path}"])
    summary = run_regression(cfg, smoke=True)
    run_dir = tmp_path / f"{cfg.name}-smoke"
    rows = summary["rows"]
    assert rows[0]["role"] == "teacher" and np.isfinite(rows[0]["rmse"])
    assert {r["role"] for r in rows[1:]} == set(cfg.roles)
    assert len(rows) == 1 + 2 * len(cfg.roles)  # smoke: one seed, two budgets
    for r in rows[1:]:
        assert r["rmse"] > 0 and r["mae"] > 0 and r["r2"] <= 1 and r["params"] > 0
        assert (run_dir / f"b{r['budget']}-{r['role']}-seed{r['seed']}" / "weights.pt").is_file()
    data = json.loads((run_dir / "data.json").read_text())
    if not cfg.student.hidden:  # a linear student: one weight per input and output, one bias per output
        assert rows[1]["params"] == (data["inputs"] + 1) * data["outputs"]
    for f in ("config.yaml", "data.json", "teacher.pt", "summary.md", "report.html", "budgets.png"):
        assert (run_dir / f).stat().st_size > 0
    if cfg.data.source == "toy1d":
        assert (run_dir / "curves.png").stat().st_size > 1000
        curves = json.loads((run_dir / "curves.json").read_text())
        assert len(curves["x"]) == len(curves["true"]) == len(curves["teacher"]) == 50


def test_fixed_seeds_reproduce_and_resume_ends_where_a_full_run_ends(tmp_path: Path) -> None:
    a = run_regression(tiny(tmp_path / "a"))
    b = run_regression(tiny(tmp_path / "b"))
    metrics = lambda s: [(r["role"], r["budget"], r["seed"], r["rmse"], r["r2"]) for r in s["rows"]]  # noqa: E731
    assert metrics(a) == metrics(b)
    # an interrupted run: one student unfinished (no row.json), the summary never written
    run_dir = tmp_path / "b" / "tiny"
    (run_dir / "b6-kd-seed1" / "row.json").unlink()
    (run_dir / "summary.json").unlink()
    done = (run_dir / "b6-scratch-seed0" / "row.json").stat().st_mtime_ns
    # a run saved before a key existed resumes: the new key counts at its default
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["student"]["train"]["precision"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    c = run_regression(tiny(tmp_path / "b"), resume=True)
    assert metrics(c) == metrics(a)
    assert (run_dir / "b6-scratch-seed0" / "row.json").stat().st_mtime_ns == done  # finished students kept
    with pytest.raises(CheckpointError, match="the config differs: student.hidden"):
        run_regression(tiny(tmp_path / "b", student={"hidden": [4]}), resume=True)


def test_kd_learns_from_the_teacher_on_unlabelled_inputs(tmp_path: Path) -> None:
    """Few labels, a good teacher: the distilled student ends closer to the teacher than the scratch one, and
    its rmse is below scratch's on every seed (the transfer-set effect the README measures at full size)."""
    cfg = tiny(
        tmp_path,
        seeds=[0, 1],
        budgets=[6],
        data={"source": "toy1d", "toy": {"n_train": 300, "n_val": 30, "n_test": 200, "noise": 0.1}},
        teacher={
            "members": 2,
            "hidden": [64, 64],
            "train": {"epochs": 40, "optimizer": "adam", "lr": 0.01, "select": "nll"},
        },
        student={
            "hidden": [32, 32],
            "train": {"steps": 400, "batch_size": 32, "optimizer": "adam", "lr": 0.01, "select": "last"},
        },
    )
    rows = run_regression(cfg)["rows"]
    by = {(r["role"], r["seed"]): r for r in rows[1:]}
    for seed in (0, 1):
        assert by[("kd", seed)]["rmse_to_teacher"] < by[("scratch", seed)]["rmse_to_teacher"]
        assert by[("kd", seed)]["rmse"] < by[("scratch", seed)]["rmse"]


def test_summary_tests_the_gain_against_two_standard_deviations(tmp_path: Path) -> None:
    s = run_regression(tiny(tmp_path))
    gains = {(g["budget"], g["role"]): g for g in s["gains"]}
    assert set(gains) == {(6, "kd"), (6, "kd_weighted"), (60, "kd"), (60, "kd_weighted")}
    for g in gains.values():
        agg = {(a["budget"], a["role"]): a for a in s["aggregate"]}
        assert g["gain"] == pytest.approx(agg[(g["budget"], "scratch")]["rmse"] - agg[(g["budget"], g["role"])]["rmse"])
        assert g["verdict"] == (
            "better" if g["gain"] > 2 * g["sd"] else "worse" if g["gain"] < -2 * g["sd"] else "within 2 sd"
        )
        assert len(g["paired"]) == 2
        mean = sum(g["paired"]) / 2
        assert mean == pytest.approx(g["gain"])  # equal seeds: the mean of the paired differences is the gain
        assert g["paired_sd"] == pytest.approx(abs(g["paired"][0] - g["paired"][1]) / 2**0.5)
    run_dir = tmp_path / "tiny"
    md = (run_dir / "summary.md").read_text()
    assert "KD − scratch per label budget" in md and "![curves.png](curves.png)" in md
    for f in ("summary.md", "report.html", "curves.png", "budgets.png"):  # kdistill report rebuilds them all
        (run_dir / f).unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "summary.md").read_text() == md and (run_dir / "curves.png").stat().st_size > 1000
    assert "<table>" in (run_dir / "report.html").read_text()


# ----------------------------------------------------------------------------- bad input


def write_npz(path: Path, y_train: np.ndarray, y_test: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(0)
    n = len(y_train)
    y_test = y_test if y_test is not None else rng.normal(size=(20,))
    np.savez(
        path, x_train=rng.normal(size=(n, 3)), y_train=y_train, x_test=rng.normal(size=(len(y_test), 3)), y_test=y_test
    )
    return path


def test_npz_source_reads_float_targets_of_several_outputs(tmp_path: Path) -> None:
    p = write_npz(
        tmp_path / "t.npz",
        np.random.default_rng(1).normal(size=(50, 2)) * 5 + 3,
        np.random.default_rng(2).normal(size=(20, 2)),
    )
    cfg = tiny(tmp_path, data={"source": "npz", "path": str(p)}, budgets=[10])
    t = load_table(cfg.data)
    assert t.outputs == 2 and t.inputs == 3 and len(t["test"]) == 20
    assert torch.allclose(t["train"].y.mean(0), torch.zeros(2), atol=1e-5)  # standardized on train
    rows = run_regression(cfg)["rows"]
    assert rows[0]["budget"] == len(t["train"]) and len(rows) == 1 + 3 * 2


def test_integer_class_labels_in_a_regression_config_are_refused(tmp_path: Path) -> None:
    p = write_npz(tmp_path / "c.npz", np.arange(50) % 10)
    cfg = tiny(tmp_path, data={"source": "npz", "path": str(p)})
    with pytest.raises(DataError, match=r"y_train holds integers \(10 distinct values, 0..9\).*class labels"):
        run_regression(cfg)
    assert not (tmp_path / "tiny").exists()  # refused before the run directory is made
    ok = tiny(tmp_path, data={"source": "npz", "path": str(p), "integer_targets": True}, budgets=[10])
    assert load_table(ok.data).outputs == 1  # counts / years: allowed when asked for


def test_nan_and_infinite_targets_are_counted_and_named(tmp_path: Path) -> None:
    y = np.random.default_rng(0).normal(size=50)
    y[[3, 17]] = np.nan
    y[40] = np.inf
    cfg = tiny(tmp_path, data={"source": "npz", "path": str(write_npz(tmp_path / "n.npz", y))})
    with pytest.raises(DataError, match=r"y_train: 3 row\(s\) hold NaN or infinite targets \(rows 3, 17, 40\)"):
        run_regression(cfg)


def test_float_targets_in_a_classification_config_are_refused(tmp_path: Path) -> None:
    from kdistill.data import load_data

    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "f.npz",
        x_train=rng.normal(size=(40, 4)).astype(np.float32),
        y_train=rng.normal(size=40),
        x_test=rng.normal(size=(10, 4)).astype(np.float32),
        y_test=rng.normal(size=10),
    )
    with pytest.raises(DataError, match="float targets.*task: regression"):
        load_data("arrays", root=tmp_path, cache_dir=tmp_path / "cache")


def teacher_3_outputs() -> nn.Module:
    return nn.Linear(1, 3)


def test_a_teacher_whose_width_differs_from_the_targets_is_refused(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    torch.save(teacher_3_outputs().state_dict(), tmp_path / "t.pt")
    teacher = {"kind": "module", "arch": f"{__name__}:teacher_3_outputs", "checkpoint": str(tmp_path / "t.pt")}
    cfg = tiny(tmp_path, teacher=teacher, roles=["scratch", "kd"])
    with pytest.raises(TeacherError, match=r"predicts shape \(3,\) per row, but the targets have 1 output"):
        run_regression(cfg)
    assert not (tmp_path / "tiny").exists()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.model_dump_json())
    assert main(["run", str(path)]) == 2
    assert "kdistill: error: teacher" in capsys.readouterr().err


def test_config_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kd_weighted .* needs a teacher with a spread"):
        tiny(tmp_path, teacher={"members": 1})
    with pytest.raises(ValueError, match="budgets: distinct"):
        tiny(tmp_path, budgets=[5, 5])
    with pytest.raises(ConfigError, match=r"budgets \[500\] exceed the 60 training rows"):
        run_regression(tiny(tmp_path, budgets=[500]))
    with pytest.raises(ValueError, match="student.train.select acc: a regression model has no accuracy"):
        tiny(tmp_path, student={"train": {"select": "acc"}})
    with pytest.raises(ConfigError, match="did you mean"):
        load_regression_config(CONFIGS[0], ["distill.alpah=0.3"])
