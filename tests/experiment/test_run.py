"""kdistill run end to end: every shipped config in --smoke mode, reproducibility, teacher reuse, the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdistill.config import load_config
from kdistill.experiment.roles import ROLES
from kdistill.experiment.run import run_experiment
from tests.data.builders import images, write_arrays, write_cifar10, write_folder, write_idx_files
from tests.helpers import ROOT, skip_without_fashion, synthetic_overrides

# own_data configs need data.root (run on generated data below); text configs: tests/experiment/test_text_run.py;
# regression configs: tests/experiment/test_regression_run.py
SEPARATE = ("own_data", "text", "regression")
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name not in SEPARATE)
OWN_DATA = sorted((ROOT / "configs" / "own_data").glob("*.yaml"))


def test_configs_are_shipped() -> None:
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    assert {"fashion_mnist/hinton.yaml", "fashion_mnist/few_labels.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_every_shipped_config_smoke(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(config, [f"output_dir={tmp_path}", "threads=1"])
    if cfg.data.name == "fashion_mnist":
        skip_without_fashion()
    monkeypatch.chdir(ROOT)  # shipped configs name the teacher checkpoint relative to the repo root
    summary = run_experiment(cfg, smoke=True)
    run_dir = tmp_path / f"{cfg.name}-smoke"
    roles = [r["role"] for r in summary["rows"]]
    assert roles[0] == "teacher"
    assert sorted(set(roles[1:])) == sorted(cfg.roles)
    assert len(roles) == 1 + sum(ROLES[r].rows_per_seed(cfg) for r in cfg.roles) * len(cfg.seeds)
    for f in ("config.yaml", "summary.json", "summary.md"):
        assert (run_dir / f).stat().st_size > 0
    for row in summary["rows"]:
        assert 0.0 <= row["test_acc"] <= 1.0
        assert row["test_errors"] == round((1 - row["test_acc"]) * 500)
        assert row["params"] > 0
        if row["role"] != "teacher" and not row.get("ensemble"):  # mode roles' rows name their directory
            assert (run_dir / row.get("dir", f"{row['role']}-seed{row['seed']}") / "weights.pt").is_file()
    if cfg.roles:
        assert (run_dir / "curves.png").stat().st_size > 1000
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["aggregate"].keys() == summary["aggregate"].keys()


WRITERS = {
    "folder": lambda d: write_folder(d, images()),
    "arrays": lambda d: write_arrays(d, images()),
    "idx": lambda d: write_idx_files(d, images()),
    "cifar": write_cifar10,
    "factory": lambda d: write_folder(d, images()),  # the example factory reads an image folder
}


def test_every_own_data_config_has_generated_data() -> None:
    assert sorted(p.stem for p in OWN_DATA) == sorted(WRITERS)


@pytest.mark.parametrize("config", OWN_DATA, ids=lambda p: p.stem)
def test_own_data_configs_smoke_on_generated_data(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each config's only machine-specific value is data.root: given one, it runs."""
    root = WRITERS[config.stem](tmp_path / "data")
    monkeypatch.chdir(ROOT)  # the factory config names examples/own_dataset.py relative to the repo root
    cfg = load_config(config, [f"output_dir={tmp_path / 'runs'}", "threads=1", f"data.root={root}", "data.val_size=10"])
    summary = run_experiment(cfg, smoke=True)
    assert [r["role"] for r in summary["rows"]] == ["teacher", "scratch", "kd"]
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in summary["rows"])
    assert not any(p.name.startswith(("_", ".")) for p in root.iterdir())  # nothing written into data.root


def test_identical_seeds_give_identical_metrics(tmp_path: Path) -> None:
    a = run_experiment(load_config(None, synthetic_overrides(tmp_path, "a")))
    b = run_experiment(load_config(None, synthetic_overrides(tmp_path / "other", "b")))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("train_seconds", "weights")} for r in rows]
    assert strip(a["rows"]) == strip(b["rows"])
    # ... and the seed matters: seed 0 and seed 1 students are different models.
    kd = [r for r in a["rows"] if r["role"] == "kd"]
    wa = torch.load(tmp_path / "a" / "kd-seed0" / "weights.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "a" / "kd-seed1" / "weights.pt", weights_only=True)["state_dict"]
    assert len(kd) == 2 and not torch.equal(wa["classifier.weight"], wb["classifier.weight"])


def test_summary_has_mean_std_and_gap(tmp_path: Path) -> None:
    s = run_experiment(load_config(None, synthetic_overrides(tmp_path)))
    agg = s["aggregate"]
    assert set(agg) == {"teacher", "scratch", "kd", "label_smoothing"}
    accs = [r["test_acc"] for r in s["rows"] if r["role"] == "kd"]
    assert agg["kd"]["test_acc_mean"] == pytest.approx(sum(accs) / 2)
    assert agg["kd"]["test_acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
    t, sc, k = (agg[r]["test_acc_mean"] for r in ("teacher", "scratch", "kd"))
    if abs(t - sc) > 1e-9:
        assert s["derived"]["gap_recovered"] == pytest.approx((k - sc) / (t - sc))
    md = (tmp_path / "syn" / "summary.md").read_text()
    assert "± " in md and "label_smoothing" in md
    # Metrics depend on the CPU's kernel path: every summary says which machine measured it.
    env = s["environment"]
    assert env["cpu"] and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert f"Measured on {env['cpu']}, {env['cpu_capability']}" in md


def test_teacher_is_trained_once_then_reused(tmp_path: Path) -> None:
    first = run_experiment(load_config(None, synthetic_overrides(tmp_path, "one")))
    second = run_experiment(load_config(None, synthetic_overrides(tmp_path, "two") + ["kd.T=2"]))
    assert first["rows"][0]["source"] == "trained"
    assert second["rows"][0]["source"] == "reused"
    assert second["rows"][0]["test_acc"] == first["rows"][0]["test_acc"]
    # A different teacher recipe is a different teacher.
    third = run_experiment(load_config(None, synthetic_overrides(tmp_path, "three") + ["teacher.train.epochs=4"]))
    assert third["rows"][0]["source"] == "trained"
