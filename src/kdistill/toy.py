"""The solution space, drawn: a big teacher, a small student from scratch and a small KD student on 2-D data.

On three interleaved spirals a tiny MLP (16 hidden units) trained on a few labelled points settles for
a cruder, more angular boundary than a big teacher's. The same MLP, from the same initial weights and
with the same number of optimizer steps, follows the teacher's boundary more closely when it learns
from the teacher's soft targets, on the labelled points and on unlabelled ones (a transfer set).
:func:`run_toy` trains the three models with kdistill's own :func:`~kdistill.trainer.fit` and measures
how often each student agrees with the teacher on a dense grid; :func:`plot_decision_regions` draws
them side by side."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from kdistill.config import TrainConfig
from kdistill.data import Split
from kdistill.distiller import Distiller, FrozenTeacher, Supervised
from kdistill.models import MLP, count_params
from kdistill.trainer import evaluate, fit, predict

TOY_KINDS = ("moons", "spirals")


# ----------------------------------------------------------------------------- data


def _per_class(n: int, k: int) -> list[int]:
    return [n // k + (1 if c < n % k else 0) for c in range(k)]


def _moons(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    # Same geometry as sklearn's make_moons (upper half circle, and a lower one shifted to interleave).
    n0, n1 = _per_class(n, 2)
    t0, t1 = rng.uniform(0, math.pi, n0), rng.uniform(0, math.pi, n1)
    upper = np.stack([np.cos(t0), np.sin(t0)], axis=1)
    lower = np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], axis=1)
    x = np.concatenate([upper, lower]) + rng.normal(0.0, noise, size=(n, 2))
    return x, np.repeat([0, 1], [n0, n1])


def _spirals(rng: np.random.Generator, n: int, noise: float, k: int, turns: float) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for c, m in enumerate(_per_class(n, k)):
        # sqrt: uniform density along the arm's area rather than crowding the centre.
        r = np.sqrt(rng.uniform(0.02, 1.0, m))
        theta = 2 * math.pi * (c / k + turns * r)
        xs.append(np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1))
        ys.append(np.full(m, c))
    x = np.concatenate(xs) + rng.normal(0.0, noise, size=(n, 2))
    return x, np.concatenate(ys)


def make_toy(
    kind: str = "moons",
    n_train: int = 300,
    n_test: int = 1000,
    noise: float = 0.1,
    seed: int = 0,
    *,
    num_classes: int | None = None,
    turns: float = 1.25,
) -> tuple[Split, Split]:
    """Two seeded 2-D splits of ``kind`` ``"moons"`` (2 classes) or ``"spirals"`` (``num_classes`` arms, 3 by default).

    Classes are balanced (counts differ by at most one), rows are shuffled, and ``x`` (float32, ``(n, 2)``)
    is standardized with the training split's mean and standard deviation. ``noise`` is the standard
    deviation of Gaussian jitter in the raw units (moons have radius 1, spirals radius 1); ``turns`` is
    how many times each spiral arm winds around the centre.
    """
    if kind not in TOY_KINDS:
        raise ValueError(f"unknown toy kind {kind!r}; choose one of {', '.join(TOY_KINDS)}")
    if n_train < 2 or n_test < 1:
        raise ValueError(f"need n_train >= 2 and n_test >= 1, got n_train={n_train}, n_test={n_test}")
    if not (noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    k = num_classes if num_classes is not None else (2 if kind == "moons" else 3)
    if kind == "moons" and k != 2:
        raise ValueError(f"moons have exactly 2 classes, got num_classes={k}")
    if k < 2:
        raise ValueError(f"num_classes must be >= 2, got {k}")
    if not (turns > 0 and math.isfinite(turns)):
        raise ValueError(f"turns must be a finite number > 0, got {turns}")

    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = _moons(rng, n, noise) if kind == "moons" else _spirals(rng, n, noise, k, turns)
        order = rng.permutation(n)
        return x[order], y[order]

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    mean, std = xtr.mean(axis=0), xtr.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
        return Split(xt, torch.from_numpy(y.astype(np.int64)), torch.arange(len(y)))

    return split(xtr, ytr), split(xte, yte)


# ----------------------------------------------------------------------------- grid


def toy_grid(points: torch.Tensor, resolution: int = 200, margin: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``resolution x resolution`` grid over the points' bounding box plus ``margin``: ``(xx, yy)``."""
    if points.dim() != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"points must be a non-empty (n, 2) tensor, got shape {tuple(points.shape)}")
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    lo, hi = points.min(dim=0).values - margin, points.max(dim=0).values + margin
    xs = torch.linspace(float(lo[0]), float(hi[0]), resolution)
    ys = torch.linspace(float(lo[1]), float(hi[1]), resolution)
    return torch.meshgrid(xs, ys, indexing="xy")


def grid_predictions(model: nn.Module, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """Predicted class at every grid point, shaped like ``xx``."""
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    logits = predict(model, Split(pts, torch.zeros(len(pts), dtype=torch.long), torch.arange(len(pts))), 10_000)
    return logits.argmax(dim=1).reshape(xx.shape)


# ----------------------------------------------------------------------------- run


def run_toy(
    kind: str = "spirals",
    seed: int = 0,
    *,
    n_train: int = 150,
    n_val: int = 300,
    n_transfer: int = 3000,
    n_test: int = 2000,
    noise: float = 0.06,
    turns: float = 1.25,
    teacher_hidden: Sequence[int] = (128, 128),
    student_hidden: Sequence[int] = (16,),
    teacher_steps: int = 1500,
    student_steps: int = 4000,
    batch_size: int = 64,
    lr: float = 0.03,
    T: float = 2.0,
    alpha: float = 0.5,
    resolution: int = 200,
) -> dict[str, Any]:
    """Train a big MLP teacher, then a small MLP from scratch and the same small MLP with KD.

    Teacher and scratch student learn from the ``n_train`` labelled points. The KD student gets the
    teacher's soft targets on those points (with their labels) and on ``n_transfer`` further points of
    the same distribution whose labels are removed, Hinton et al.'s transfer set: soft targets need no
    labels, so unlabelled inputs show the student the teacher's function where no label is. Both
    students start from the same initial weights and take the same number of optimizer steps, so they
    differ only in their objective and the inputs it can use. Model selection uses a separate validation
    draw (``n_val`` points), never the test points.

    Returns ``train``, ``val``, ``test``, ``transfer`` (Splits), ``models`` (``teacher``, ``scratch``,
    ``kd``), ``test_acc``, ``agreement`` (share of a ``resolution``-square grid over the training points
    where each student predicts the teacher's class), ``test_agreement`` (the same on the test points),
    ``params`` and ``seconds``.
    """
    if n_train < 2 or n_val < 1 or n_transfer < 0:
        raise ValueError(f"need n_train >= 2, n_val >= 1, n_transfer >= 0; got {n_train}, {n_val}, {n_transfer}")
    full, test = make_toy(kind, n_train + n_val + n_transfer, n_test, noise, seed, turns=turns)
    train = full.take(torch.arange(n_train))
    val = full.take(torch.arange(n_train, n_train + n_val))
    extra = full.take(torch.arange(n_train + n_val, len(full))).unlabelled()
    transfer = Split(torch.cat([train.x, extra.x]), torch.cat([train.y, extra.y]), torch.arange(n_train + n_transfer))
    k = int(full.y.max()) + 1
    # Adam without weight decay: a 2-D toy needs no regularizer, and Adam is insensitive to the loss scale
    # (CE alone vs. T^2-weighted KL), so one learning rate serves every objective.
    cfg = TrainConfig(optimizer="adam", lr=lr, weight_decay=0.0, batch_size=batch_size, schedule="cosine")
    t0 = time.perf_counter()

    torch.manual_seed(seed)
    teacher = MLP(2, k, hidden=teacher_hidden)
    fit(
        Supervised(teacher),
        train,
        val,
        cfg.model_copy(update={"steps": teacher_steps}),
        seed=seed,
        verbose=False,
        progress=False,
    )

    torch.manual_seed(seed + 1)
    scratch = MLP(2, k, hidden=student_hidden)
    kd = MLP(2, k, hidden=student_hidden)
    kd.load_state_dict(scratch.state_dict())  # same start: only the objective differs
    student_cfg = cfg.model_copy(update={"steps": student_steps})
    fit(Supervised(scratch), train, val, student_cfg, seed=seed + 1, verbose=False, progress=False)
    fit(
        Distiller(kd, FrozenTeacher(teacher), T=T, alpha=alpha),
        transfer,
        val,
        student_cfg,
        seed=seed + 1,
        verbose=False,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    models: dict[str, nn.Module] = {"teacher": teacher, "scratch": scratch, "kd": kd}
    splits = {"kind": kind, "train": train, "val": val, "test": test, "transfer": transfer}
    return {**splits, "models": models, **_agreement(models, train, test, resolution), "seconds": seconds}


def _agreement(models: dict[str, nn.Module], train: Split, test: Split, resolution: int) -> dict[str, Any]:
    """Test accuracy of each model and how often each student predicts the teacher's class, on a grid over
    the training points and on the test points."""
    xx, yy = toy_grid(train.x, resolution)
    grid = {name: grid_predictions(m, xx, yy) for name, m in models.items()}
    test_pred = {name: predict(m, test).argmax(dim=1) for name, m in models.items()}
    students = ("scratch", "kd")
    return {
        "test_acc": {name: evaluate(m, test).acc for name, m in models.items()},
        "agreement": {s: float((grid[s] == grid["teacher"]).double().mean()) for s in students},
        "test_agreement": {s: float((test_pred[s] == test_pred["teacher"]).double().mean()) for s in students},
        "params": {name: count_params(m) for name, m in models.items()},
    }
