"""Rows of a run with classes left out of the transfer set: raw and corrected, never reading test labels to
choose a shift; the students' sets lose the classes, the teacher's and the judges' do not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from kdistill.config import load_config
from kdistill.data import DataError, load_data
from kdistill.experiment.evaluate import left_out_report
from kdistill.experiment.run import run_experiment
from kdistill.models import build_model
from kdistill.trainer import predict
from tests.helpers import synthetic_overrides

SYN = {"n_train": 400, "n_test": 200, "num_classes": 4, "side": 8}


def test_excluded_classes_leave_students_sets_but_not_teacher_val_or_test() -> None:
    full = load_data("synthetic", val_size=60, labelled=80, transfer="all", synthetic=SYN)
    d = load_data("synthetic", val_size=60, labelled=80, transfer="all", synthetic=SYN, exclude_classes=[1, "class3"])
    assert d.excluded_classes == [1, 3]
    true_y = full.train.y[torch.searchsorted(full.train.index, d.transfer_set.index)]
    assert not torch.isin(true_y, torch.tensor([1, 3])).any()  # also where the transfer set hides labels
    assert (d.transfer_set.y == -1).any()
    assert not torch.isin(d.student_labelled.y, torch.tensor([1, 3])).any()
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(d, split).y, getattr(full, split).y)  # the teacher's and the judges' data
    with pytest.raises(DataError, match=r"class 'Dres' does not exist; the classes are 0=class0"):
        load_data("synthetic", val_size=60, synthetic=SYN, exclude_classes=["Dres"])


def test_bias_correction_reads_no_test_labels() -> None:
    data = load_data("synthetic", val_size=60, synthetic=SYN, exclude_classes=[2])
    torch.manual_seed(0)
    student = build_model("mlp", data.input_shape, 4, {"hidden": [8]})
    teacher = build_model("mlp", data.input_shape, 4, {"hidden": [8]})
    s_val, t_val = predict(student, data.val), predict(teacher, data.val)
    a = left_out_report(predict(student, data.test), s_val, t_val, data, fixed=3.5)
    scrambled = dataclasses.replace(data, test=dataclasses.replace(data.test, y=data.test.y.flip(0)))
    b = left_out_report(predict(student, scrambled.test), s_val, t_val, scrambled, fixed=3.5)
    assert a["label_free_shift"] == b["label_free_shift"]  # estimated from validation pixels only
    assert a["left_out"] == [2]


def test_unknown_left_out_class_fails_before_training(tmp_path: Path) -> None:
    cfg = load_config(None, synthetic_overrides(tmp_path) + ["kd.exclude_classes=[9]"])
    with pytest.raises(DataError, match="class 9 does not exist"):
        run_experiment(cfg)
    assert not list(tmp_path.rglob("*.pt"))


def test_left_out_run_reports_raw_and_corrected(tmp_path: Path) -> None:
    cfg = load_config(
        None, synthetic_overrides(tmp_path) + ["kd.exclude_classes=[0]", "kd.bias_shift=3.5", "roles=[scratch,kd]"]
    )
    summary = run_experiment(cfg)
    kd = [r for r in summary["rows"] if r["role"] == "kd"]
    assert all({"left_out_acc", "label_free_test_acc", "fixed_shift_left_out_acc"} <= set(r) for r in kd)
    assert all(r["left_out"] == [0] and 0.0 <= r["left_out_acc"] <= 1.0 for r in summary["rows"][1:])
    assert "left_out_acc_mean" in summary["aggregate"]["kd"]
    md = (tmp_path / "syn" / "summary.md").read_text()
    assert "Left out of the transfer set" in md and "shift +3.5" in md
