"""``kdistill run`` of a ``task: regression`` config: table -> teacher (trained on every training label) -> its
predictions (and spread) on every training input, cached -> for every label budget, seed and role a student ->
RMSE, MAE and R² on the test split -> summary, report.

A student with budget ``b`` sees the labels of ``b`` training rows (the first ``b`` of a permutation drawn from
its seed, so that a seed's budgets are nested); ``scratch`` trains on those rows alone, ``kd`` and
``kd_weighted`` on those labels plus the teacher's predictions on every training input (the transfer set). All
roles of one (budget, seed) start from the same initialization and take the same number of optimizer steps, and
keep their last epoch: choosing an epoch on a labelled validation split would use labels beyond the budget. The
run directory::

    config.yaml, data.json     the resolved config; rows per split, target scales
    teacher.pt                 the teacher's standardized predictions (and variances) of train / val / test
    b<budget>-<role>-seed<k>/  row.json, metrics.jsonl, weights.pt
    curves.json                toy1d: the true function, the teacher and the first seed's students on a grid
    summary.json, summary.md, report.html, *.png
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdistill.config import ConfigError
from kdistill.data import Split
from kdistill.experiment.context import log, open_run_dir, plain_run_dir
from kdistill.io import atomic_save, atomic_write_text, safe_load
from kdistill.lock import run_lock
from kdistill.losses.regression import inverse_variance_weights
from kdistill.metrics import regression_scores
from kdistill.models import count_params
from kdistill.regression.config import RegressionExperimentConfig
from kdistill.regression.data import Table, load_table, toy_function
from kdistill.regression.objective import RegressionObjective
from kdistill.regression.teacher import load_module_teacher, regressor, train_teacher
from kdistill.report.regression import write_regression_summary
from kdistill.trainer import fit, predict

SPLITS = ("train", "val", "test")


@dataclass
class Cached:
    """The teacher's standardized predictions per split (and ``grid``: the toy's curve points), and their
    variances (None without a spread)."""

    mean: dict[str, torch.Tensor]
    var: dict[str, torch.Tensor] | None


def run_regression(cfg: RegressionExperimentConfig, smoke: bool = False, resume: bool = False) -> dict:
    with run_lock(plain_run_dir(cfg, smoke)):  # one writer per run directory
        return _run(smoke_regression(cfg) if smoke else cfg, smoke, resume)


def smoke_regression(cfg: RegressionExperimentConfig) -> RegressionExperimentConfig:
    """The same pipeline on a small toy / few steps, one seed, two budgets: seconds, numbers meaningless."""
    c = cfg.model_copy(deep=True)
    c.seeds = c.seeds[:1]
    c.data.toy = c.data.toy.model_copy(update={"n_train": 120, "n_val": 20, "n_test": 40})
    c.teacher = c.teacher.model_copy(update={"members": min(c.teacher.members, 2)})
    c.teacher.train = c.teacher.train.model_copy(update={"epochs": 2, "steps": None})
    c.teacher.gbr = c.teacher.gbr.model_copy(update={"n_estimators": 10})
    c.student.train = c.student.train.model_copy(update={"steps": 10})
    c.budgets = list(dict.fromkeys(b if b is None else min(b, 40) for b in c.budgets[:2]))
    c.curve_points = 50
    return c


def _run(cfg: RegressionExperimentConfig, smoke: bool, resume: bool) -> dict:
    table = load_table(cfg.data)  # bad data fails here, before the run directory changes
    n_train = len(table["train"])
    too_big = [b for b in cfg.budgets if b is not None and b > n_train]
    if too_big:
        raise ConfigError(f"budgets {too_big} exceed the {n_train} training rows; use budgets <= {n_train} (or null)")
    if cfg.teacher.kind == "module":  # a teacher that does not fit the targets fails before the directory changes
        load_module_teacher(cfg.teacher, table)
    run_dir, resolved = open_run_dir(cfg, smoke, resume)
    data = table.describe()
    atomic_write_text(run_dir / "data.json", json.dumps(data, indent=1) + "\n")
    log(f"data: {data['source']}, rows {data['rows']}, {data['inputs']} input(s), {data['outputs']} output(s)")
    cached, t_row = _teacher(cfg, table, run_dir, resume)
    rows = [t_row]
    models: dict[tuple[int, str], torch.nn.Module] = {}
    for budget in cfg.budgets:
        b = n_train if budget is None else budget
        for seed in cfg.seeds:
            labelled = _labelled(n_train, seed)[:b]
            for role in cfg.roles:
                row, model = _student(cfg, table, cached, run_dir, role, b, seed, labelled, resume)
                rows.append(row)
                if seed == cfg.seeds[0]:
                    models[(b, role)] = model
    curves = _curves(cfg, table, cached, models) if cfg.data.source == "toy1d" else None
    if curves is not None:
        atomic_write_text(run_dir / "curves.json", json.dumps(curves) + "\n")
    return write_regression_summary(run_dir, resolved, rows, data, smoke)


def _labelled(n_train: int, seed: int) -> torch.Tensor:
    """Seed ``seed``'s order of the training rows: a budget of ``b`` labels is its first ``b`` (nested budgets)."""
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))


def _grid(cfg: RegressionExperimentConfig, table: Table) -> tuple[np.ndarray, torch.Tensor]:
    """The toy's curve points, in its own units and standardized as the models read them."""
    toy = cfg.data.toy
    grid = np.linspace(toy.low, toy.high, cfg.curve_points)
    return grid, table.scale_x(torch.as_tensor(grid[:, None], dtype=torch.float32))


def _teacher(cfg: RegressionExperimentConfig, table: Table, run_dir: Path, resume: bool) -> tuple[Cached, dict]:
    """Train the teacher (or, resuming, read its predictions back) and score it on the test split. Its predictions
    are kept for train / val / test and, for the toy, on the curve grid (so a resumed run needs no teacher)."""
    path = run_dir / "teacher.pt"
    key = {"teacher": cfg.teacher.model_dump(mode="json"), "data": table.fingerprint, "grid": cfg.curve_points}
    if resume and path.is_file() and (saved := safe_load(path)).get("key") == key:
        cached, seconds, params = Cached(saved["mean"], saved.get("var")), saved["seconds"], saved["params"]
        log("teacher: predictions read back from teacher.pt")
    else:
        log(f"teacher: {cfg.teacher.kind}, {cfg.teacher.members} member(s), on {len(table['train'])} labels")
        teacher = train_teacher(cfg.teacher, table)
        inputs = {s: table[s].x for s in SPLITS}
        if cfg.data.source == "toy1d":
            inputs["grid"] = _grid(cfg, table)[1]
        preds = {s: teacher.predict(x) for s, x in inputs.items()}
        var = {s: v for s, (_, v) in preds.items()} if preds["train"][1] is not None else None
        cached = Cached({s: m for s, (m, _) in preds.items()}, var)
        seconds, params = teacher.seconds, teacher.params
        atomic_save({"key": key, "mean": cached.mean, "var": cached.var, "seconds": seconds, "params": params}, path)
    scores = _scores(table, cached.mean["test"], table["test"].y)
    row = {
        "role": "teacher",
        "budget": len(table["train"]),
        "seed": None,
        **scores,
        "params": params,
        "seconds": round(seconds, 3),
        "kind": cfg.teacher.kind,
        "members": cfg.teacher.members,
    }
    log(f"teacher: test RMSE {scores['rmse']:.4g}, R² {scores['r2']:.3f}")
    return cached, row


def _scores(table: Table, pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """RMSE, MAE and R² in the targets' own units."""
    return regression_scores(table.unscale(pred), table.unscale(target))


def _student(
    cfg: RegressionExperimentConfig,
    table: Table,
    cached: Cached,
    run_dir: Path,
    role: str,
    budget: int,
    seed: int,
    labelled: torch.Tensor,
    resume: bool,
) -> tuple[dict, torch.nn.Module]:
    out = run_dir / f"b{budget}-{role}-seed{seed}"
    torch.manual_seed(seed)  # scratch and kd of one (budget, seed) start from the same weights
    model = regressor(table.inputs, table.outputs, cfg.student.hidden)
    if resume and (out / "row.json").is_file() and (out / "weights.pt").is_file():
        model.load_state_dict(safe_load(out / "weights.pt"))
        return json.loads((out / "row.json").read_text()), model.eval()
    train = table["train"]
    d = cfg.distill
    if role == "scratch":
        objective = RegressionObjective(model, kind=d.loss, delta=d.delta)
        split = train.take(labelled)
    else:
        y = torch.full_like(train.y, float("nan"))  # the transfer set: every training input, `budget` labels
        y[labelled] = train.y[labelled]
        split = Split(train.x, y, train.index)
        weights = None
        if role == "kd_weighted":
            assert cached.var is not None  # the config refuses kd_weighted without a spread
            weights = inverse_variance_weights(cached.var["train"], max_weight=d.max_weight)
        objective = RegressionObjective(model, d.alpha, d.loss, d.delta, cached.mean["train"], weights)
    t0 = time.perf_counter()
    res = fit(objective, split, table["val"], cfg.student.train, seed=seed, desc=out.name, verbose=False)
    seconds = time.perf_counter() - t0
    model.eval()
    pred = predict(model, table["test"])
    scores = _scores(table, pred, table["test"].y)
    to_teacher = _scores(table, pred, cached.mean["test"])["rmse"]
    row = {
        "role": role,
        "budget": budget,
        "seed": seed,
        **scores,
        "rmse_to_teacher": to_teacher,
        "val_mse": res.history[-1]["val_nll"],
        "params": count_params(model),
        "steps": res.steps,
        "seconds": round(seconds, 3),
        "rows_seen": len(split),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in res.history))
    atomic_save(model.state_dict(), out / "weights.pt")
    atomic_write_text(out / "row.json", json.dumps(row) + "\n")  # last: its presence means the student is done
    log(f"{out.name}: test RMSE {scores['rmse']:.4g}, R² {scores['r2']:.3f} ({seconds:.1f}s)")
    return row, model


def _curves(
    cfg: RegressionExperimentConfig,
    table: Table,
    cached: Cached,
    models: dict[tuple[int, str], torch.nn.Module],
) -> dict:
    """The true function, the teacher (mean ± std) and the first seed's students on a grid over the toy's range,
    and the labelled points of each budget, all in the data's own units."""
    grid, xs = _grid(cfg, table)
    curves: dict = {"x": grid.tolist(), "true": toy_function(grid, cfg.data.toy.function).tolist(), "students": {}}
    curves["teacher"] = table.unscale(cached.mean["grid"])[:, 0].tolist()
    if cached.var is not None:
        curves["teacher_std"] = (cached.var["grid"].sqrt() * table.y_std)[:, 0].tolist()
    with torch.no_grad():  # the students are in eval mode (see _student)
        for (budget, role), model in models.items():
            curves["students"].setdefault(str(budget), {})[role] = table.unscale(model(xs))[:, 0].tolist()
    train = table["train"]
    n = len(train)
    order = _labelled(n, cfg.seeds[0])
    curves["labelled"] = {}
    for b in sorted({n if b is None else b for b in cfg.budgets}):
        rows = order[:b]
        x = train.x[rows] * table.x_std + table.x_mean
        curves["labelled"][str(b)] = {"x": x[:, 0].tolist(), "y": table.unscale(train.y[rows])[:, 0].tolist()}
    return curves
