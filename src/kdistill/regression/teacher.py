"""Regression teachers: an ensemble (MLPs trained here, or scikit-learn's gradient boosting) whose mean is the
target the student learns and whose spread is how unsure the teacher is; or the user's own trained module.

Each maps standardized inputs ``[N, D]`` to standardized ``(mean [N, K], variance [N, K] or None)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from kdistill.io import safe_load
from kdistill.models import build_model, count_params
from kdistill.regression.config import RegressionTeacher
from kdistill.regression.data import Table
from kdistill.regression.objective import RegressionObjective
from kdistill.trainer import fit


class TeacherError(ValueError):
    """The configured teacher does not fit the data (its output width, its file)."""


Predict = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def regressor(inputs: int, outputs: int, hidden: list[int]) -> nn.Module:
    """An MLP (ReLU between ``hidden`` widths) with ``outputs`` linear outputs; ``hidden=[]`` is a linear model."""
    return build_model("mlp", (inputs,), outputs, {"hidden": list(hidden)})


class Teacher:
    """A trained teacher: ``predict(x)`` -> (mean, variance or None), plus what the report says about it."""

    def __init__(self, predict: Predict, params: int, seconds: float, kind: str, members: int) -> None:
        self.predict, self.params, self.seconds, self.kind, self.members = predict, params, seconds, kind, members


def load_module_teacher(cfg: RegressionTeacher, table: Table) -> Teacher:
    """The user's trained ``nn.Module`` (``arch`` + ``checkpoint``), fed inputs in their own units and read as
    targets in theirs; its output width is checked against the targets' before anything is trained."""
    model = build_model(cfg.arch or "", (table.inputs,), table.outputs, cfg.kwargs)
    if cfg.checkpoint:
        state = safe_load(cfg.checkpoint)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise TeacherError(
                f"teacher.checkpoint {cfg.checkpoint} does not fit teacher.arch {cfg.arch}: {e}"
            ) from None
    model.eval()
    probe = table["train"].x[:2]
    with torch.no_grad():
        out = model(probe * table.x_std + table.x_mean)
    width = out.shape[1] if out.dim() == 2 else None
    if out.dim() != 2 or width != table.outputs:
        raise TeacherError(
            f"teacher {cfg.arch} predicts shape {tuple(out.shape[1:])} per row, but the targets have {table.outputs} "
            f"output(s) per row: give the teacher {table.outputs} output(s) (e.g. a final nn.Linear(..., "
            f"{table.outputs})) or use data whose targets match it"
        )

    @torch.no_grad()
    def predict(x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (model(x * table.x_std + table.x_mean).float() - table.y_mean) / table.y_std, None

    return Teacher(predict, count_params(model), 0.0, "module", 1)


def train_teacher(cfg: RegressionTeacher, table: Table, verbose: bool = False) -> Teacher:
    """Train ``cfg.members`` members on every training label (validation split for selection)."""
    if cfg.kind == "module":
        return load_module_teacher(cfg, table)
    if cfg.kind == "gbr":
        return _gbr(cfg, table)
    members, seconds = [], 0.0
    for m in range(cfg.members):
        torch.manual_seed(1000 + m)
        model = regressor(table.inputs, table.outputs, cfg.hidden)
        res = fit(
            RegressionObjective(model),
            table["train"],
            table["val"],
            cfg.train,
            seed=1000 + m,
            desc=f"teacher member {m}",
            verbose=verbose,
        )
        seconds += res.train_seconds
        members.append(model.eval())

    @torch.no_grad()
    def predict(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        preds = torch.stack([mdl(x) for mdl in members])
        return preds.mean(0), preds.var(0, unbiased=False) if len(members) > 1 else None

    return Teacher(predict, sum(count_params(mdl) for mdl in members), seconds, "mlp_ensemble", len(members))


def _gbr(cfg: RegressionTeacher, table: Table) -> Teacher:
    from sklearn.ensemble import GradientBoostingRegressor

    x, y = table["train"].x.numpy(), table["train"].y.numpy()
    t0 = time.perf_counter()
    members = []  # members[m][k]: member m's model of output k
    for m in range(cfg.members):
        g = cfg.gbr
        members.append(
            [
                GradientBoostingRegressor(
                    n_estimators=g.n_estimators,
                    max_depth=g.max_depth,
                    learning_rate=g.learning_rate,
                    subsample=g.subsample,
                    random_state=m,
                ).fit(x, y[:, k])
                for k in range(y.shape[1])
            ]
        )
    seconds = time.perf_counter() - t0
    nodes = sum(t.tree_.node_count for mem in members for est in mem for t in est.estimators_.ravel())

    def predict(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        xn = x.numpy()
        preds = np.stack([np.stack([est.predict(xn) for est in mem], axis=1) for mem in members])
        t = torch.as_tensor(preds, dtype=torch.float32)
        return t.mean(0), t.var(0, unbiased=False) if len(members) > 1 else None

    return Teacher(predict, nodes, seconds, "gbr", len(members))
