"""Scores of predictions already made, computed from tensors alone (no model runs here).

- :class:`EvalResult`, :func:`score`: accuracy, error count and NLL; :func:`class_accuracy` on chosen classes.
- :func:`expected_calibration_error`, :func:`reliability_data`: calibration of scratch, label-smoothing
  and KD students (equal-width confidence bins, Guo et al. 2017).
- :func:`soft_targets`, :func:`entropy`, :func:`dark_knowledge_matrix`: what soft targets carry: a
  teacher's softmax at several temperatures, how much it spreads (nearly one-hot at low T, uniform with
  entropy ``log C`` at high T), and the mean soft target per true class, whose off-diagonal part
  ("dark knowledge", Hinton et al. 2015) is what a one-hot label throws away.
- :func:`regression_scores`: RMSE, MAE and R² of regression predictions.
- :func:`percent`: how every table writes a fraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kdistill.losses.checks import check_temperatures, float_dtype

DEFAULT_TEMPERATURES: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 20.0)


@dataclass
class EvalResult:
    acc: float
    errors: int
    nll: float
    n: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_acc": self.acc, f"{prefix}_errors": self.errors, f"{prefix}_nll": self.nll}


def score(logits: torch.Tensor, labels: torch.Tensor) -> EvalResult:
    """Accuracy, error count and NLL of predictions already made (no second forward pass).

    Language-model logits ``[N, L, V]`` with next tokens ``[N, L]`` are scored per token (``nll`` in nats per
    token; positions whose target is ``-1`` are left out)."""
    if logits.dim() == 3:
        keep = labels.reshape(-1) >= 0
        logits, labels = logits.reshape(-1, logits.shape[-1])[keep], labels.reshape(-1)[keep]
    correct = int((logits.argmax(1) == labels).sum())
    nll = float(F.cross_entropy(logits, labels))
    return EvalResult(acc=correct / len(labels), errors=len(labels) - correct, nll=nll, n=len(labels))


def regression_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """RMSE, MAE (both over every row and output) and R² (1 - SSE / SST per output, averaged over outputs; SST
    around the evaluated set's own mean, as scikit-learn's ``r2_score``) of float predictions ``[N]`` or ``[N, K]``."""
    pred, target = pred.double().reshape(len(pred), -1), target.double().reshape(len(target), -1)
    if pred.shape != target.shape or len(pred) < 2:
        raise ValueError(f"need >= 2 rows of equal shape; got {tuple(pred.shape)} and {tuple(target.shape)}")
    err = pred - target
    sst = ((target - target.mean(0)) ** 2).sum(0)
    r2 = 1.0 - (err**2).sum(0) / sst.clamp_min(1e-300)
    return {"rmse": float(err.pow(2).mean().sqrt()), "mae": float(err.abs().mean()), "r2": float(r2.mean())}


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> float:
    """Accuracy on the samples whose label is in ``classes`` (nan when there are none)."""
    mask = torch.isin(labels, torch.as_tensor(list(classes), dtype=labels.dtype))
    if not bool(mask.any()):
        return float("nan")
    return float((logits[mask].argmax(1) == labels[mask]).float().mean())


def percent(x: float | None, missing: str = "–") -> str:
    """A fraction as a percentage with two decimals (``0.9109`` -> ``91.09``); ``missing`` for None or text."""
    try:
        return f"{100 * float(x):.2f}"
    except (TypeError, ValueError):
        return missing


# ----------------------------------------------------------------------------- checks


def check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    """A 2-D ``(n, classes)`` tensor of finite values with at least one row and two classes."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{name} must be a 2-D tensor of shape (n, classes), got {shape}")
    if logits.shape[0] < 1 or logits.shape[1] < 2:
        raise ValueError(f"{name} needs at least one row and two classes, got shape {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_labels(labels: torch.Tensor, n: int, num_classes: int, name: str = "labels") -> None:
    """``n`` integer class indices in ``0..num_classes - 1``."""
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


def check_probs(probs: torch.Tensor, labels: torch.Tensor, name: str = "probs") -> None:
    """Softmax probabilities (rows in [0, 1] summing to 1) and one label per row."""
    check_logits(probs, name)
    if bool((probs < 0).any()) or bool((probs > 1).any()):
        raise ValueError(f"{name} must lie in [0, 1]; these look like logits, apply softmax first")
    sums = probs.double().sum(dim=1)
    if not bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
        raise ValueError(
            f"each row of {name} must sum to 1 (found sums {sums.min().item():.4g}..{sums.max().item():.4g}); "
            "pass softmax probabilities, not logits"
        )
    check_labels(labels, probs.shape[0], probs.shape[1])


# ----------------------------------------------------------------------------- soft targets and entropy


def soft_targets(logits: torch.Tensor, temperatures: Sequence[float]) -> torch.Tensor:
    """``softmax(logits / T)`` for every ``T``: a ``(len(temperatures), n, C)`` tensor."""
    check_logits(logits)
    ts = torch.tensor(check_temperatures(temperatures), dtype=float_dtype(logits))
    return F.softmax(logits.detach().to(float_dtype(logits))[None] / ts[:, None, None], dim=-1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of each distribution along the last dimension (``0 log 0 = 0``)."""
    if not isinstance(p, torch.Tensor) or p.dim() < 1 or p.shape[-1] < 1:
        raise ValueError("entropy needs a tensor whose last dimension holds a distribution")
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ValueError("entropy needs finite probabilities >= 0; these look like logits, apply softmax first")
    p = p.to(float_dtype(p))
    return -torch.xlogy(p, p).sum(dim=-1)


def dark_knowledge_matrix(
    teacher_logits: torch.Tensor, labels: torch.Tensor, num_classes: int, T: float
) -> torch.Tensor:
    """Mean soft target at temperature ``T`` per true class: row ``i`` averages the rows labelled ``i``.

    The result is ``(C, C)`` and each row sums to 1; a class with no sample gets a row of NaN (there is
    nothing to average, and 0 would read as "the teacher never confuses it").
    """
    check_logits(teacher_logits, "teacher_logits")
    if teacher_logits.shape[1] != num_classes:
        raise ValueError(f"teacher_logits have {teacher_logits.shape[1]} columns but num_classes={num_classes}")
    check_labels(labels, teacher_logits.shape[0], num_classes)
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
    check_probs(probs, labels)
    p = probs.detach().to(float_dtype(probs))
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
