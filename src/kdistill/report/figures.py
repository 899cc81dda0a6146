"""Every figure kdistill draws, as PNG files, from tensors and run files (never from logs).

- why KD works: :func:`plot_soft_targets` (a teacher's softmax at several temperatures),
  :func:`plot_entropy_vs_T`, :func:`plot_dark_knowledge` (mean soft target per true class),
  :func:`plot_reliability` (calibration of scratch, label-smoothing and KD students);
- a run: :func:`plot_curves` (validation accuracy and training loss per epoch, from ``metrics.jsonl``);
- a sweep: :func:`plot_sweep`; the 2-D toy: :func:`plot_decision_regions`.

Figures are drawn on :class:`matplotlib.figure.Figure` objects directly (no pyplot, so no global backend or
figure state is touched) and written atomically with :func:`save_figure`.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from torch import nn

from kdistill.config import yaml_text
from kdistill.data import Split
from kdistill.io import atomic_write_bytes
from kdistill.losses.checks import check_temperatures
from kdistill.metrics import (
    DEFAULT_TEMPERATURES,
    check_labels,
    check_logits,
    entropy,
    reliability_data,
    soft_targets,
)
from kdistill.models import count_params
from kdistill.toy import grid_predictions, toy_grid
from kdistill.trainer import evaluate

MAX_SOFT_TARGET_ROWS = 32  # one subplot per row: beyond this the figure is unreadable anyway


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A constrained-layout figure that is not registered with pyplot (nothing global to close or leak)."""
    return Figure(figsize=figsize, layout="constrained")


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG through a temporary file in the same directory and an atomic rename."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())  # ordinary file permissions, never a half-written PNG
    return path


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for {num_classes} classes")
    return names


# ----------------------------------------------------------------------------- plots


def plot_soft_targets(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str] | None,
    path: str | Path,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    images: torch.Tensor | None = None,
) -> Path:
    """One panel per row of ``teacher_logits``: the teacher's softmax at each temperature, side by side.

    Bars are grouped by class and coloured by T; the true class is shaded and its tick label bold.
    ``images`` (``(n, 1, H, W)``, ``(n, 3, H, W)`` or ``(n, H, W)``; normalised inputs are fine: each thumbnail is
    stretched to its own range), when given, adds each input's thumbnail on the left.
    Choose the rows first (e.g. ``logits[idx]``): at most 32 panels.
    """
    check_logits(teacher_logits, "teacher_logits")
    n, C = teacher_logits.shape
    if n > MAX_SOFT_TARGET_ROWS:
        raise ValueError(f"{n} rows would make {n} panels; pick at most {MAX_SOFT_TARGET_ROWS} (e.g. logits[idx])")
    check_labels(labels, n, C)
    names = _class_names(class_names, C)
    ts = check_temperatures(temperatures)
    if images is not None:
        if images.dim() == 4 and images.shape[1] == 1:
            images = images[:, 0]
        elif images.dim() == 4 and images.shape[1] == 3:
            images = images.permute(0, 2, 3, 1)  # colour thumbnails: (n, H, W, 3)
        if images.dim() not in (3, 4) or images.shape[0] != n:
            raise ValueError(
                f"images must be (n, 1, H, W), (n, 3, H, W) or (n, H, W) with n={n} (one per logit row), got "
                f"{tuple(images.shape)}"
            )
    probs = soft_targets(teacher_logits, ts).numpy()  # (len(T), n, C)
    colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, len(ts)))
    fig = new_figure((max(6.0, 0.75 * C * (1 + 0.15 * len(ts))) + (1.6 if images is not None else 0), 2.1 * n + 0.6))
    cols = 2 if images is not None else 1
    grid = fig.add_gridspec(n, cols, width_ratios=[1, 7] if cols == 2 else [1])
    width = 0.8 / len(ts)
    x = np.arange(C)
    for r in range(n):
        y = int(labels[r])
        if images is not None:
            ax_im = fig.add_subplot(grid[r, 0])
            im = images[r].detach().float()
            im = (im - im.min()) / (im.max() - im.min()).clamp_min(1e-12)  # its own range, grey or colour
            ax_im.imshow(im.numpy(), cmap="gray")
            ax_im.set_axis_off()
        ax = fig.add_subplot(grid[r, cols - 1])
        ax.axvspan(y - 0.45, y + 0.45, color="gold", alpha=0.25, lw=0)
        for k, t in enumerate(ts):
            offset = (k - (len(ts) - 1) / 2) * width
            ax.bar(x + offset, probs[k, r], width=width, color=colors[k], label=f"T={t:g}" if r == 0 else None)
        ax.set_xticks(x, names, rotation=30 if max(map(len, names)) > 3 else 0, ha="right", fontsize=8)
        ax.get_xticklabels()[y].set_fontweight("bold")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("p(class)")
        ax.grid(axis="y", alpha=0.3)
        top = int(probs[0, r].argmax())
        ax.set_title(f"true: {names[y]}, teacher at T={ts[0]:g}: {names[top]} ({probs[0, r, top]:.2f})", fontsize=9)
        if r == 0:
            ax.legend(fontsize=7, ncols=min(len(ts), 5), loc="upper right", title="temperature", title_fontsize=7)
    fig.suptitle("Teacher soft targets: higher T reveals which wrong classes the teacher finds plausible")
    return save_figure(fig, path)


def plot_entropy_vs_T(
    teacher_logits: torch.Tensor, path: str | Path, temperatures: Sequence[float] | None = None
) -> Path:
    """Mean entropy of the soft targets (band: ± one standard deviation over rows) against T, log x axis.

    The dashed line is the maximum, ``log C`` (uniform soft targets: no information at all).
    Default temperatures: 40 log-spaced values from 0.5 to 50.
    """
    check_logits(teacher_logits, "teacher_logits")
    ts = check_temperatures(np.geomspace(0.5, 50.0, 40) if temperatures is None else temperatures)
    order = np.argsort(ts)
    ts = [ts[i] for i in order]
    h = entropy(soft_targets(teacher_logits, ts))  # (len(T), n)
    mean = h.mean(dim=1).numpy()
    std = (h.std(dim=1) if h.shape[1] > 1 else torch.zeros_like(h[:, 0])).numpy()
    C = teacher_logits.shape[1]
    hmax = math.log(C)
    fig = new_figure((6.4, 4.2))
    ax = fig.add_subplot()
    ax.plot(ts, mean, color="tab:red", marker=".", label=f"mean over {h.shape[1]} inputs")
    ax.fill_between(
        ts, np.clip(mean - std, 0, hmax), np.clip(mean + std, 0, hmax), color="tab:red", alpha=0.2, label="± 1 std"
    )
    ax.axhline(hmax, color="black", ls="--", lw=1, label=f"log C = {hmax:.2f} (uniform)")
    if ts[0] <= 1.0 <= ts[-1]:
        ax.axvline(1.0, color="gray", ls=":", lw=1)
    ax.set(
        xscale="log",
        xlabel="temperature T",
        ylabel="entropy of softmax(z / T) (nats)",
        title="Soft-target entropy against temperature",
        ylim=(0, hmax * 1.08),
    )
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # "1", "10" rather than 10^0, 10^1
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def _annotate(ax: Axes, values: np.ndarray, vmax: float, fmt: str) -> None:
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            if np.isnan(v):
                continue
            # White text on the dark end of the colour map keeps the number legible.
            color = "white" if v > 0.6 * vmax else "black"
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=6, color=color)


def plot_dark_knowledge(matrix: torch.Tensor, class_names: Sequence[str] | None, T: float, path: str | Path) -> Path:
    """Two heat maps of :func:`dark_knowledge_matrix`: the full matrix, and the same without its diagonal.

    The diagonal (the true class) dwarfs everything else, so the second panel masks it and rescales the
    colours to the off-diagonal values: the teacher's "dark knowledge" about which classes resemble which.
    """
    m = matrix.detach().double().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"matrix must be square (C, C) with C >= 2, got shape {m.shape}")
    check_temperatures([T])
    C = m.shape[0]
    names = _class_names(class_names, C)
    off = m.copy()
    np.fill_diagonal(off, np.nan)
    side = max(4.0, 0.55 * C + 1.5)
    fig = new_figure((2 * side + 1.0, side))
    axes = fig.subplots(1, 2)
    panels = [(m, "mean soft target", "Blues"), (off, "off-diagonal only (dark knowledge)", "Reds")]
    for ax, (values, title, cmap) in zip(axes, panels, strict=True):
        vmax = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
        vmax = vmax if vmax > 0 else 1.0
        # Masked cells (the diagonal, classes without samples) read as "not shown", not as 0.
        cm = matplotlib.colormaps[cmap].with_extremes(bad="lightgray")
        im = ax.imshow(np.ma.masked_invalid(values), cmap=cm, vmin=0.0, vmax=vmax)
        _annotate(ax, values, vmax, ".2f" if values is m else ".3f")
        ax.set_xticks(range(C), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(C), names, fontsize=8)
        ax.set(xlabel="soft-target class", ylabel="true class", title=title)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"Teacher's mean soft target per true class, T={T:g}")
    return save_figure(fig, path)


def plot_reliability(
    curves: Mapping[str, tuple[torch.Tensor, torch.Tensor]], path: str | Path, n_bins: int = 15
) -> Path:
    """Reliability diagrams side by side, one per model: ``{name: (probs, labels)}``, probs after softmax.

    Bars are the accuracy per confidence bin, the red part the gap to the bin's mean confidence; the
    dashed diagonal is perfect calibration. Each title gives the model's ECE and accuracy.
    """
    if not curves:
        raise ValueError("curves is empty; give {name: (probs, labels)} for at least one model")
    data = {}
    for name, pair in curves.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"curves[{name!r}] must be a (probs, labels) pair")
        probs, labels = pair
        data[name] = (reliability_data(probs, labels, n_bins), float((probs.argmax(1) == labels).double().mean()))
    k = len(data)
    fig = new_figure((3.6 * k + 0.4, 4.0))
    axes = np.atleast_1d(fig.subplots(1, k, sharey=True))
    for ax, (name, (rel, acc)) in zip(axes, data.items(), strict=True):
        centers = (rel.edges[:-1] + rel.edges[1:]) / 2
        width = rel.edges[1] - rel.edges[0]
        full = rel.count > 0
        ax.bar(
            centers[full],
            rel.accuracy[full],
            width=width,
            color="tab:blue",
            edgecolor="black",
            lw=0.5,
            label="accuracy",
        )
        lo = np.minimum(rel.accuracy[full], rel.confidence[full])
        gap = np.abs(rel.accuracy[full] - rel.confidence[full])
        ax.bar(
            centers[full],
            gap,
            bottom=lo,
            width=width,
            color="tab:red",
            alpha=0.35,
            edgecolor="tab:red",
            hatch="//",
            lw=0.5,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], ls="--", color="black", lw=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", aspect="equal")
        ax.set_title(f"{name}: ECE {100 * rel.ece:.2f} %, acc {100 * acc:.1f} %", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=7)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- a run


def plot_curves(run_dir: Path, out: Path, colors: Mapping[str, str] | None = None) -> bool:
    """Validation accuracy and training loss per epoch for every model, from its ``metrics.jsonl``; ``colors``
    maps a role (the directory name before ``-seed``) to its colour."""
    runs = sorted(p for p in run_dir.glob("*/metrics.jsonl"))
    if not runs:
        return False
    colors = colors or {}
    fig = new_figure((11, 4))
    axes = fig.subplots(1, 2)
    seen: set[str] = set()
    for p in runs:
        hist = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        role = p.parent.name.split("-seed")[0]
        ep = [h["epoch"] for h in hist]
        label = role if role not in seen else None
        seen.add(role)
        c = colors.get(role, "gray")
        axes[0].plot(ep, [100 * h["val_acc"] for h in hist], color=c, label=label, alpha=0.8, marker=".")
        axes[1].plot(ep, [h["train_loss"] for h in hist], color=c, label=label, alpha=0.8, marker=".")
    axes[0].set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
    axes[1].set(xlabel="epoch", ylabel="training loss (objective)", title="Training loss", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, out, dpi=100)
    return True


# ----------------------------------------------------------------------------- a sweep


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_sweep(sweep: dict, out: Path) -> bool:
    """Validation and test accuracy of the selected role against the first axis, one line per value
    (combination) of the other axes, the reference students as horizontal lines, the winner starred."""
    points = sweep["points"]
    if not points:
        return False
    axes = sweep["axes"]
    first, *others = list(axes)
    xs_vals = axes[first]
    numeric = _numeric(xs_vals)
    pos = {yaml_text(v): (v if numeric else i) for i, v in enumerate(xs_vals)}
    positive = numeric and all(v > 0 for v in xs_vals)
    logx = positive and (first == "kd.T" or max(xs_vals) / min(xs_vals) > 10)

    fig = new_figure((11, 4.2))
    ax_val, ax_test = fig.subplots(1, 2, sharey=True)
    combos = list(itertools.product(*(axes[k] for k in others))) if others else [()]
    for combo in combos:
        want = {k: yaml_text(v) for k, v in zip(others, combo, strict=True)}
        sel = [p for p in points if all(yaml_text(p["overrides"][k]) == v for k, v in want.items())]
        sel.sort(key=lambda p: list(pos).index(yaml_text(p["overrides"][first])))
        if not sel:
            continue
        label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in want.items()) or sweep["select_role"]
        x = [pos[yaml_text(p["overrides"][first])] for p in sel]
        for ax, key in ((ax_val, "val_acc"), (ax_test, "test_acc")):
            y = [100 * p[f"{key}_mean"] for p in sel]
            err = [100 * (p[f"{key}_std"] or 0.0) for p in sel]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, alpha=0.9)
    _sweep_marks(
        sweep, ax_val, ax_test, pos[yaml_text(sweep["winner"]["overrides"][first])] if sweep.get("winner") else None
    )
    for ax, title in ((ax_val, "Validation accuracy (selects the winner)"), (ax_test, "Test accuracy (reported only)")):
        if logx:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(list(pos.values()), list(pos))
        elif len(xs_vals) <= 12:
            ax.set_xticks(xs_vals, [yaml_text(v) for v in xs_vals])
            ax.minorticks_off()
        ax.set(xlabel=first, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_val.set_ylabel("accuracy (%), mean ± std over seeds")
    fig.suptitle(f"Sweep {sweep['name']}" + (" (smoke)" if sweep.get("smoke") else ""))
    save_figure(fig, out, dpi=100)
    return True


def _sweep_marks(sweep: dict, ax_val: Axes, ax_test: Axes, winner_x: float | None) -> None:
    """The winner's star (on validation) and the reference students as horizontal lines."""
    if winner_x is not None:
        style = {"marker": "*", "color": "gold", "markersize": 16, "markeredgecolor": "k", "linestyle": "none"}
        ax_val.plot([winner_x], [100 * sweep["winner"]["val_acc_mean"]], label="winner (validation)", zorder=5, **style)
    refs = (sweep.get("references") or {}).get("roles", {})
    styles = {"scratch": ("tab:gray", "--"), "label_smoothing": ("tab:green", ":"), "kd": ("tab:red", "-.")}
    for role, s in refs.items():
        color, ls = styles.get(role, ("k", "--"))
        for ax, key in ((ax_val, "val_acc"), (ax_test, "test_acc")):
            if s.get(f"{key}_mean") is not None:
                ax.axhline(100 * s[f"{key}_mean"], color=color, linestyle=ls, label=f"{role} (reference)")


# ----------------------------------------------------------------------------- the 2-D toy


def plot_decision_regions(
    models: Mapping[str, nn.Module],
    train: Split,
    path: str | Path,
    resolution: int = 200,
    test: Split | None = None,
    reference: str | None = "teacher",
) -> Path:
    """Decision regions of each model side by side, training points on top.

    Titles give the test accuracy when ``test`` is given (the training accuracy otherwise, and say so),
    and, for every model but ``reference``, the share of the plane where it agrees with ``reference``.
    """
    if not models:
        raise ValueError("models is empty; give {name: model} for at least one model")
    if train.x.dim() != 2 or train.x.shape[1] != 2:
        raise ValueError(f"decision regions need 2-D inputs, got x of shape {tuple(train.x.shape)}")
    xx, yy = toy_grid(train.x, resolution)
    preds = {name: grid_predictions(m, xx, yy) for name, m in models.items()}
    has_label = train.y >= 0
    k = max([int(train.y.max()) + 1] + [int(p.max()) + 1 for p in preds.values()])
    palette = matplotlib.colormaps["tab10"](np.arange(max(k, 2)) % 10)
    light = ListedColormap(0.55 + 0.45 * palette[:, :3])  # pale class colours for the regions
    # Unlabelled rows (-1) have no true class to score against or to colour by.
    eval_split, which = (
        (test, "test") if test is not None else (train.take(torch.nonzero(has_label).flatten()), "train")
    )
    fig = new_figure((4.2 * len(models), 4.4))
    axes = np.atleast_1d(fig.subplots(1, len(models), sharex=True, sharey=True))
    gx, gy = xx.numpy(), yy.numpy()
    for ax, (name, model) in zip(axes, models.items(), strict=True):
        p = preds[name].numpy()
        ax.pcolormesh(gx, gy, p, cmap=light, vmin=-0.5, vmax=len(palette) - 0.5, shading="auto")
        for c in np.unique(p) if len(np.unique(p)) > 1 else []:
            # One indicator contour per class: a boundary between classes 0 and 2 is drawn once, in the
            # middle, instead of twice (levels 0.5 and 1.5 of the label map).
            ax.contour(gx, gy, (p == c).astype(float), levels=[0.5], colors="black", linewidths=0.6)
        x = train.x.numpy()
        ax.scatter(x[~has_label, 0], x[~has_label, 1], c="gray", s=4, alpha=0.5)
        lab = has_label.numpy()
        ax.scatter(x[lab, 0], x[lab, 1], c=palette[train.y[has_label].numpy()], s=9, edgecolors="black", linewidths=0.3)
        title = f"{name} ({count_params(model):,} params)"
        if len(eval_split):
            title += f"\n{which} acc {100 * evaluate(model, eval_split).acc:.1f} %"
        if reference in preds and name != reference:
            agree = float((preds[name] == preds[reference]).double().mean())
            title += f"\nagrees with {reference} on {100 * agree:.1f} % of the plane"
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path)
