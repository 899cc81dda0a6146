"""Tables for regression: a 1-D toy of a known function, scikit-learn's bundled ``diabetes`` set, or a ``.npz``.

Every source ends as :class:`Table`: float inputs ``[N, D]`` and float targets ``[N, K]`` per split, both
standardized with the training split's mean and standard deviation (the scales are kept, so that metrics are
reported in the targets' own units). Targets are checked before any training: integers (class labels look the
same), NaN or infinite values (counted, with their rows) and row counts that differ from the inputs' are errors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdistill.data import Split
from kdistill.data.base import DataError
from kdistill.regression.config import RegressionData, ToyConfig

SPLITS = ("train", "val", "test")


# The toy's functions: the formula the data notes print, and the function itself.
TOY_FUNCTIONS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "wave": ("sin(3x) + 0.3x", lambda x: np.sin(3 * x) + 0.3 * x),
    "cubic": ("x^3/4 - x", lambda x: x**3 / 4 - x),
}


def toy_function(x: np.ndarray, name: str) -> np.ndarray:
    """The noiseless 1-D function a toy config samples."""
    if name not in TOY_FUNCTIONS:
        raise ValueError(f"unknown toy function {name!r}; use one of {list(TOY_FUNCTIONS)}")
    return TOY_FUNCTIONS[name][1](x)


@dataclass
class Table:
    """Standardized splits; ``x_mean``/``x_std`` and ``y_mean``/``y_std`` undo the scaling."""

    splits: dict[str, Split]
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor
    source: str
    notes: list[str] = field(default_factory=list)
    fingerprint: str = ""

    def __getitem__(self, split: str) -> Split:
        return self.splits[split]

    @property
    def inputs(self) -> int:
        return int(self.x_mean.numel())

    @property
    def outputs(self) -> int:
        return int(self.y_mean.numel())

    def unscale(self, y: torch.Tensor) -> torch.Tensor:
        """Standardized predictions back in the targets' units."""
        return y * self.y_std + self.y_mean

    def scale_x(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_mean) / self.x_std

    def describe(self) -> dict:
        return {
            "source": self.source,
            "rows": {s: len(self.splits[s]) for s in SPLITS},
            "inputs": self.inputs,
            "outputs": self.outputs,
            "target_mean": self.y_mean.tolist(),
            "target_std": self.y_std.tolist(),
            "notes": self.notes,
            "fingerprint": self.fingerprint,
        }


def load_table(cfg: RegressionData) -> Table:
    """The configured source as a :class:`Table` (raises :class:`DataError` naming what is wrong)."""
    rng = np.random.default_rng(cfg.seed)
    notes: list[str] = []
    if cfg.source == "toy1d":
        raw = _toy(cfg.toy, rng)
        notes.append(f"y = {TOY_FUNCTIONS[cfg.toy.function][0]} + N(0, {cfg.toy.noise}²)")
    elif cfg.source == "diabetes":
        from sklearn.datasets import load_diabetes  # bundled with scikit-learn: no download

        d = load_diabetes()
        raw = _holdout(d.data, d.target, cfg.test_fraction, rng, "diabetes")
        notes.append("scikit-learn's diabetes: 442 patients, 10 features, disease progression after one year")
    else:
        raw = _npz(Path(cfg.path or ""), cfg.integer_targets)
    for split, (x, y) in list(raw.items()):
        raw[split] = (x, _check_targets(y, x, split, cfg.integer_targets))
    if "val" not in raw:  # carved out of train, as the image sources do
        x, y = raw["train"]
        n_val = max(2, round(cfg.val_fraction * len(x)))
        if len(x) - n_val < 4:
            raise DataError(f"train has {len(x)} rows: too few to carve out a validation split of {n_val}")
        perm = rng.permutation(len(x))
        raw["val"], raw["train"] = (x[perm[:n_val]], y[perm[:n_val]]), (x[perm[n_val:]], y[perm[n_val:]])
    return _standardize(raw, cfg.source, notes)


def _toy(cfg: ToyConfig, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if cfg.high <= cfg.low:
        raise DataError(f"data.toy: high ({cfg.high}) must exceed low ({cfg.low})")
    out = {}
    for split, n in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        x = rng.uniform(cfg.low, cfg.high, size=(n, 1))
        out[split] = (x, toy_function(x, cfg.function) + cfg.noise * rng.standard_normal((n, 1)))
    return out


def _holdout(
    x: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator, what: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    perm = rng.permutation(len(x))
    n_test = max(2, round(fraction * len(x)))
    if len(x) - n_test < 8:
        raise DataError(f"{what}: {len(x)} rows leave too few for training after a test split of {n_test}")
    return {"test": (x[perm[:n_test]], y[perm[:n_test]]), "train": (x[perm[n_test:]], y[perm[n_test:]])}


def _npz(path: Path, integer_targets: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not path.is_file():
        raise DataError(f"data.path {path}: no such file; give a .npz with x_train, y_train, x_test, y_test")
    try:
        found = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npz without pickled objects ({e})") from None
    names = set(found.files)
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in names]
    if missing:
        raise DataError(
            f"{path}: no array(s) {missing} (have {sorted(names)}); a regression .npz needs "
            "x_train, y_train, x_test, y_test (optionally x_val, y_val)"
        )
    out = {}
    for split in SPLITS:
        if f"x_{split}" in names and f"y_{split}" in names:
            x = np.asarray(found[f"x_{split}"])
            if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
                raise DataError(f"{path}: x_{split} holds {x.dtype}, not numbers")
            out[split] = (x.reshape(len(x), -1).astype(np.float64), np.asarray(found[f"y_{split}"]))
    return out


def _check_targets(y: np.ndarray, x: np.ndarray, split: str, integer_targets: bool) -> np.ndarray:
    """``y`` as float64 ``[N, K]``, or a :class:`DataError` saying what is wrong with it and how to fix it."""
    name = f"y_{split}"
    if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        if not integer_targets:
            values = np.unique(y)
            raise DataError(
                f"{name} holds integers ({len(values)} distinct values, {values.min()}..{values.max()}): these look "
                "like class labels, and a regression config needs float targets. For classes use an image/arrays "
                "config (no task: regression); for integer quantities (counts, years) set data.integer_targets=true"
            )
    elif not np.issubdtype(y.dtype, np.floating):
        raise DataError(f"{name} holds {y.dtype}; a regression target must be a float array of shape (N,) or (N, K)")
    if y.ndim not in (1, 2) or len(y) != len(x):
        raise DataError(f"{name} has shape {y.shape} for {len(x)} input rows; expected ({len(x)},) or ({len(x)}, K)")
    y = y.reshape(len(y), -1).astype(np.float64)
    bad = ~np.isfinite(y).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise DataError(
            f"{name}: {len(rows)} row(s) hold NaN or infinite targets (rows {shown}); drop or impute them first"
        )
    bad_x = ~np.isfinite(x).all(axis=1)
    if bad_x.any():
        raise DataError(
            f"x_{split}: {int(bad_x.sum())} row(s) hold NaN or infinite inputs "
            f"(rows {', '.join(map(str, np.flatnonzero(bad_x)[:10]))}); drop or impute them first"
        )
    return y


def _standardize(raw: dict[str, tuple[np.ndarray, np.ndarray]], source: str, notes: list[str]) -> Table:
    x_tr, y_tr = raw["train"]
    widths = {s: (raw[s][0].shape[1], raw[s][1].shape[1]) for s in SPLITS}
    if len(set(widths.values())) != 1:
        raise DataError(f"the splits disagree on (inputs, outputs) per row: {widths}")
    x_mean, y_mean = x_tr.mean(0), y_tr.mean(0)
    x_std, y_std = _scale(x_tr.std(0)), _scale(y_tr.std(0))
    splits, h = {}, hashlib.sha256(source.encode())
    for s in SPLITS:
        x, y = raw[s]
        h.update(x.tobytes())
        h.update(y.tobytes())
        xs = torch.as_tensor((x - x_mean) / x_std, dtype=torch.float32)
        ys = torch.as_tensor((y - y_mean) / y_std, dtype=torch.float32)
        splits[s] = Split(xs, ys, torch.arange(len(xs)))
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731 - four conversions
    return Table(splits, as_t(x_mean), as_t(x_std), as_t(y_mean), as_t(y_std), source, notes, h.hexdigest()[:16])


def _scale(std: np.ndarray) -> np.ndarray:
    """A constant column keeps scale 1 (dividing by 0 would turn it into NaN)."""
    return np.where(std > 1e-12, std, 1.0)
