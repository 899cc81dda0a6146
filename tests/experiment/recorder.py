"""Watching what the roles train: which objective each model gets and what its teacher is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill.io import safe_load
from kdistill.teacher import FrozenTeacher
from kdistill.trainer import fit
from tests.helpers import synthetic_overrides


def one_seed(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [*synthetic_overrides(tmp_path, name), "seeds=[0]", *extra]


class Recorder:
    """Wraps the ``fit`` of the experiment layer: notes, for every model trained, what its objective learns from.
    ``Recorder.install(monkeypatch)`` puts it in place."""

    def __init__(self) -> None:
        self.calls: dict[str, dict] = {}

    def __call__(self, objective: nn.Module, *args, **kwargs):
        teacher = getattr(objective, "teacher", None)
        note: dict = {"objective": type(objective).__name__}
        if isinstance(teacher, FrozenTeacher):
            note["teacher_state"] = {k: v.detach().clone() for k, v in teacher.model.state_dict().items()}
            note["teacher_grad"] = [p.requires_grad for p in teacher.parameters()]
            note["teacher_training"] = teacher.model.training
        self.calls[kwargs["out_dir"].name] = note
        return fit(objective, *args, **kwargs)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Recorder:
        for where in ("kdistill.experiment.train.fit", "kdistill.experiment.roles.dml.fit"):
            monkeypatch.setattr(where, self)
        return self


def saved(path: Path) -> dict[str, torch.Tensor]:
    return safe_load(path)["state_dict"]


def refuse_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any training fail: for checks that must come first."""

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("something was trained before the bad config was reported")

    for where in (
        "kdistill.experiment.train.fit",
        "kdistill.experiment.roles.dml.fit",
        "kdistill.experiment.teachers.fit",
    ):
        monkeypatch.setattr(where, refuse)
