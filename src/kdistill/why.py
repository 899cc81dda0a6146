"""Figures that show *why* knowledge distillation works, computed from tensors alone (no training here).

- :func:`soft_targets`, :func:`plot_soft_targets`: a teacher's softmax at several temperatures. At T=1
  a confident teacher says little more than the label; raising T lifts the small probabilities of the
  wrong classes into view, and those carry what the teacher learned about class similarity.
- :func:`entropy`, :func:`plot_entropy_vs_T`: how much information the soft targets spread, from
  nearly one-hot (low T) to uniform (high T, entropy ``log C``).
- :func:`dark_knowledge_matrix`, :func:`plot_dark_knowledge`: the mean soft target per true class. Its
  off-diagonal part ("dark knowledge", Hinton et al. 2015) is what a one-hot label throws away.
- :func:`expected_calibration_error`, :func:`reliability_data`, :func:`plot_reliability`: calibration
  of scratch, label-smoothing and KD students (equal-width confidence bins, Guo et al. 2017).

Figures are drawn on :class:`matplotlib.figure.Figure` objects directly (no pyplot, so no global
backend or figure state is touched) and written atomically with :func:`save_figure`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from kdistill.io import atomic_write_bytes

if TYPE_CHECKING:  # matplotlib is imported lazily: the pure functions must not pay for it
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DEFAULT_TEMPERATURES: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 20.0)
MAX_SOFT_TARGET_ROWS = 32  # one subplot per row: beyond this the figure is unreadable anyway


# ----------------------------------------------------------------------------- checks


def _check_temperatures(temperatures: Sequence[float] | float) -> list[float]:
    ts = [float(temperatures)] if isinstance(temperatures, (int, float)) else [float(t) for t in temperatures]
    if not ts:
        raise ValueError("give at least one temperature")
    bad = [t for t in ts if not (t > 0 and math.isfinite(t))]  # `not t > 0` also catches NaN
    if bad:
        raise ValueError(f"temperatures must be finite numbers > 0, got {bad}")
    return ts


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{name} must be a 2-D tensor of shape (n, classes), got {shape}")
    if logits.shape[0] < 1 or logits.shape[1] < 2:
        raise ValueError(f"{name} needs at least one row and two classes, got shape {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_labels(labels: torch.Tensor, n: int, num_classes: int, name: str = "labels") -> None:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of class indices")
    if len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} entries but there are {n} rows; give one label per row")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} must lie in 0..{num_classes - 1}, got values in {int(labels.min())}..{int(labels.max())} "
            "(unlabelled rows, -1, have no true class: drop them first)"
        )


def _check_probs(probs: torch.Tensor, labels: torch.Tensor, name: str = "probs") -> None:
    _check_logits(probs, name)
    if bool((probs < 0).any()) or bool((probs > 1).any()):
        raise ValueError(f"{name} must lie in [0, 1]; these look like logits, apply softmax first")
    sums = probs.double().sum(dim=1)
    if not bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
        raise ValueError(
            f"each row of {name} must sum to 1 (found sums {sums.min().item():.4g}..{sums.max().item():.4g}); "
            "pass softmax probabilities, not logits"
        )
    _check_labels(labels, probs.shape[0], probs.shape[1])


def _float(t: torch.Tensor) -> torch.Tensor:
    # At least float32 (a float16 cache loses too much in exp), never a downcast of float64.
    return t.to(torch.promote_types(t.dtype, torch.float32))


# ----------------------------------------------------------------------------- soft targets and entropy


def soft_targets(logits: torch.Tensor, temperatures: Sequence[float]) -> torch.Tensor:
    """``softmax(logits / T)`` for every ``T``: a ``(len(temperatures), n, C)`` tensor."""
    _check_logits(logits)
    ts = torch.tensor(_check_temperatures(temperatures), dtype=_float(logits).dtype)
    return F.softmax(_float(logits.detach())[None] / ts[:, None, None], dim=-1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of each distribution along the last dimension (``0 log 0 = 0``)."""
    if not isinstance(p, torch.Tensor) or p.dim() < 1 or p.shape[-1] < 1:
        raise ValueError("entropy needs a tensor whose last dimension holds a distribution")
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ValueError("entropy needs finite probabilities >= 0; these look like logits, apply softmax first")
    p = _float(p)
    return -torch.xlogy(p, p).sum(dim=-1)


def dark_knowledge_matrix(
    teacher_logits: torch.Tensor, labels: torch.Tensor, num_classes: int, T: float
) -> torch.Tensor:
    """Mean soft target at temperature ``T`` per true class: row ``i`` averages the rows labelled ``i``.

    The result is ``(C, C)`` and each row sums to 1; a class with no sample gets a row of NaN (there is
    nothing to average, and 0 would read as "the teacher never confuses it").
    """
    _check_logits(teacher_logits, "teacher_logits")
    if teacher_logits.shape[1] != num_classes:
        raise ValueError(f"teacher_logits have {teacher_logits.shape[1]} columns but num_classes={num_classes}")
    _check_labels(labels, teacher_logits.shape[0], num_classes)
    p = soft_targets(teacher_logits, [T])[0]
    sums = torch.zeros(num_classes, num_classes, dtype=p.dtype).index_add_(0, labels, p)
    counts = torch.bincount(labels, minlength=num_classes).to(p.dtype)
    return sums / counts[:, None]  # 0/0 -> NaN for classes without samples, as documented


# ----------------------------------------------------------------------------- calibration


@dataclass
class ReliabilityBins:
    """Equal-width confidence bins ``(edges[i], edges[i+1]]``; empty bins hold NaN confidence/accuracy."""

    edges: np.ndarray  # (n_bins + 1,)
    confidence: np.ndarray  # (n_bins,) mean top-1 probability in the bin
    accuracy: np.ndarray  # (n_bins,) share of top-1 predictions that are right
    count: np.ndarray  # (n_bins,) samples in the bin

    @property
    def ece(self) -> float:
        """``sum_b (n_b / n) * |acc_b - conf_b|`` over non-empty bins."""
        full = self.count > 0
        gaps = np.abs(self.accuracy[full] - self.confidence[full])
        return float((self.count[full] / self.count.sum() * gaps).sum())


def reliability_data(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> ReliabilityBins:
    """Per-bin mean confidence, accuracy and count of the top-1 predictions (Guo et al. 2017).

    ``probs`` are softmax probabilities ``(n, C)``; a confidence ``c`` falls in the bin with
    ``edges[i] < c <= edges[i + 1]``, so a confidence of exactly 1 is counted in the last bin.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    _check_probs(probs, labels)
    p = _float(probs.detach())
    conf, pred = p.max(dim=1)
    correct = (pred == labels).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # Compare in the probabilities' own precision: float32 0.6 is 0.6000000238 in float64 and would
    # otherwise land above the edge 0.6. right=False: index i with edges[i] < c <= edges[i+1].
    which = torch.bucketize(conf, edges[1:-1].to(conf.dtype), right=False)
    conf = conf.double()
    count = torch.bincount(which, minlength=n_bins).double()
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, which, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, which, correct)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ReliabilityBins(
            edges=edges.numpy(),
            confidence=(conf_sum / count).numpy(),
            accuracy=(acc_sum / count).numpy(),
            count=count.numpy().astype(np.int64),
        )


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 predictions: bin-size-weighted mean ``|accuracy - confidence|``."""
    return reliability_data(probs, labels, n_bins).ece


# ----------------------------------------------------------------------------- figure helpers


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A constrained-layout figure that is not registered with pyplot (nothing global to close or leak)."""
    from matplotlib.figure import Figure  # noqa: F811 - lazy import; the Agg canvas is used on save

    return Figure(figsize=figsize, layout="constrained")


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG through a temporary file in the same directory and an atomic rename."""
    import io

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
    ``images`` (``(n, 1, H, W)`` or ``(n, H, W)``), when given, adds each input's thumbnail on the left.
    Choose the rows first (e.g. ``logits[idx]``): at most 32 panels.
    """
    _check_logits(teacher_logits, "teacher_logits")
    n, C = teacher_logits.shape
    if n > MAX_SOFT_TARGET_ROWS:
        raise ValueError(f"{n} rows would make {n} panels; pick at most {MAX_SOFT_TARGET_ROWS} (e.g. logits[idx])")
    _check_labels(labels, n, C)
    names = _class_names(class_names, C)
    ts = _check_temperatures(temperatures)
    if images is not None:
        if images.dim() == 4 and images.shape[1] == 1:
            images = images[:, 0]
        if images.dim() != 3 or images.shape[0] != n:
            raise ValueError(
                f"images must be (n, 1, H, W) or (n, H, W) with n={n} (one per logit row), got {tuple(images.shape)}"
            )
    import matplotlib

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
            ax_im.imshow(images[r].detach().float().numpy(), cmap="gray")
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
    _check_logits(teacher_logits, "teacher_logits")
    ts = _check_temperatures(np.geomspace(0.5, 50.0, 40) if temperatures is None else temperatures)
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
    ax.fill_between(ts, np.clip(mean - std, 0, hmax), np.clip(mean + std, 0, hmax), color="tab:red", alpha=0.2,
                    label="± 1 std")  # fmt: skip
    ax.axhline(hmax, color="black", ls="--", lw=1, label=f"log C = {hmax:.2f} (uniform)")
    if ts[0] <= 1.0 <= ts[-1]:
        ax.axvline(1.0, color="gray", ls=":", lw=1)
    ax.set(xscale="log", xlabel="temperature T", ylabel="entropy of softmax(z / T) (nats)",
           title="Soft-target entropy against temperature", ylim=(0, hmax * 1.08))  # fmt: skip
    from matplotlib.ticker import FuncFormatter

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
    _check_temperatures([T])
    C = m.shape[0]
    names = _class_names(class_names, C)
    import matplotlib

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
        ax.bar(centers[full], rel.accuracy[full], width=width, color="tab:blue", edgecolor="black", lw=0.5,
               label="accuracy")  # fmt: skip
        lo = np.minimum(rel.accuracy[full], rel.confidence[full])
        gap = np.abs(rel.accuracy[full] - rel.confidence[full])
        ax.bar(centers[full], gap, bottom=lo, width=width, color="tab:red", alpha=0.35, edgecolor="tab:red",
               hatch="//", lw=0.5, label="gap to confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], ls="--", color="black", lw=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", aspect="equal")
        ax.set_title(f"{name}: ECE {100 * rel.ece:.2f} %, acc {100 * acc:.1f} %", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=7)
    return save_figure(fig, path)
