"""Splits held in memory, and :func:`load_data`: a source's arrays -> normalised, carved splits.

``index`` is a sample's position in its *original* split, so teacher outputs can be cached per sample
and found again after any shuffle or subset. A label of ``-1`` means "unlabelled": the loss functions
ignore it. The few-labels transfer set uses it so that labels the student must not read are not there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from kdistill.data.base import UNLABELLED, DataError, RawData
from kdistill.data.digits import digits
from kdistill.data.fashion_mnist import fashion_mnist
from kdistill.data.synthetic import synthetic

# A source reads a dataset: (data.root, data.download, its options) -> RawData. One file per source.
Source = Callable[[str | None, bool, dict], RawData]
SOURCES: dict[str, Source] = {"fashion_mnist": fashion_mnist, "digits": digits, "synthetic": synthetic}


@dataclass
class Split:
    """One split held in memory: inputs ``x``, labels ``y`` (``-1`` = unlabelled), sample ``index``."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, rows: torch.Tensor) -> Split:
        return Split(self.x[rows], self.y[rows], self.index[rows])

    def unlabelled(self) -> Split:
        return Split(self.x, torch.full_like(self.y, UNLABELLED), self.index)


@dataclass
class DataBundle:
    """Everything a run needs: splits, shapes, class names, and an id that changes with the data."""

    train: Split  # all labelled training data left after carving out validation
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]
    name: str
    fingerprint: str = ""
    student_train: Split | None = None  # labelled subset (few-labels runs); None = train
    transfer: Split | None = None  # inputs that get soft targets; None = student_train
    extra: dict = field(default_factory=dict)
    excluded_classes: list[int] = field(default_factory=list)  # left out of the students' training sets

    @property
    def student_labelled(self) -> Split:
        return self.student_train if self.student_train is not None else self.train

    @property
    def transfer_set(self) -> Split:
        return self.transfer if self.transfer is not None else self.student_labelled


def _fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _to_split(x_uint8: np.ndarray, y: np.ndarray, mean: float, std: float) -> Split:
    x = torch.from_numpy(x_uint8.astype(np.float32) / 255.0)
    x = (x - mean) / std
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (N, 1, H, W)
    return Split(x.contiguous(), torch.from_numpy(y.astype(np.int64)), torch.arange(len(y)))


def _stratified(y: torch.Tensor, n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """Row positions of ``n`` samples with (as nearly as possible) equal counts per class."""
    per = [n // num_classes + (1 if c < n % num_classes else 0) for c in range(num_classes)]
    rows = []
    for c in range(num_classes):
        cls = torch.nonzero(y == c).flatten()
        if len(cls) < per[c]:
            raise DataError(f"asked for {per[c]} samples of class {c} but the split has only {len(cls)}")
        rows.append(cls[torch.randperm(len(cls), generator=gen)[: per[c]]])
    return torch.cat(rows).sort().values


def load_data(
    name: str,
    *,
    root: str | None = None,
    download: bool = True,
    val_size: int = 5000,
    labelled: int | None = None,
    transfer: str = "labelled",
    split_seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    synthetic: dict | None = None,
    exclude_classes: Sequence[int | str] = (),
) -> DataBundle:
    """Load a dataset and carve the splits.

    ``val_size`` images are taken out of the training set for model selection (test is never used
    for tuning). ``labelled`` (optional) keeps labels for only that many stratified training images:
    the scratch and label-smoothing students see those alone. ``transfer="all"`` gives the KD student
    soft targets on *every* training image, with the labels of the unlabelled part removed.
    ``limit_*`` shrink the splits (the ``--smoke`` mode). ``exclude_classes`` (numbers or names) are
    removed from the students' labelled set and from the transfer set, by their true labels (also
    where the transfer set hides them); train (the teacher's), validation and test keep them.
    """
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; choose {', '.join(SOURCES)}")
    if transfer not in ("all", "labelled"):
        raise DataError(f"kd.transfer={transfer!r}: choose 'labelled' or 'all'")
    raw = SOURCES[name](root, download, synthetic or {})
    classes = raw.class_names
    # Normalization statistics come from the training images only.
    tr = raw.train_images.astype(np.float32) / 255.0
    mean, std = float(tr.mean()), float(tr.std()) or 1.0
    full = _to_split(raw.train_images, raw.train_labels, mean, std)
    test = _to_split(raw.test_images, raw.test_labels, mean, std)

    # One generator for every random choice below, drawn from in this order: the same seed, the same splits.
    gen = torch.Generator().manual_seed(split_seed)
    full, test = _limit(full, test, limit_train, limit_test, gen)
    train, val = _carve_validation(full, val_size, gen)
    student_train, rows = _labelled_subset(train, labelled, len(classes), gen)
    transfer_set = _transfer_set(train, rows) if transfer == "all" and rows is not None else None
    excluded = resolve_classes(exclude_classes, classes)
    if excluded:
        student_train, transfer_set = _exclude(full, train, student_train, transfer_set, excluded)

    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(classes),
        input_shape=tuple(full.x.shape[1:]),
        class_names=classes,
        name=name,
        fingerprint=_fingerprint(full.x[:64], full.y, test.y, val.index),
        student_train=student_train,
        transfer=transfer_set,
        excluded_classes=excluded,
        # What a deployed model needs to prepare raw pixels: x = (pixel / 255 - mean) / std.
        extra={"normalize": {"scale": 1 / 255, "mean": mean, "std": std}},
    )


def _limit(
    full: Split, test: Split, limit_train: int | None, limit_test: int | None, gen: torch.Generator
) -> tuple[Split, Split]:
    """A random ``limit_train`` of the training images, the first ``limit_test`` test images (smoke runs)."""
    if limit_train is not None and limit_train < len(full):
        full = full.take(torch.randperm(len(full), generator=gen)[:limit_train].sort().values)
    if limit_test is not None and limit_test < len(test):
        test = test.take(torch.arange(limit_test))
    return full, test


def _carve_validation(full: Split, val_size: int, gen: torch.Generator) -> tuple[Split, Split]:
    if not 0 < val_size < len(full):
        raise DataError(f"data.val_size={val_size} must be between 1 and the {len(full)} training images - 1")
    perm = torch.randperm(len(full), generator=gen)
    return full.take(perm[val_size:].sort().values), full.take(perm[:val_size].sort().values)


def _labelled_subset(
    train: Split, labelled: int | None, num_classes: int, gen: torch.Generator
) -> tuple[Split | None, torch.Tensor | None]:
    """The stratified subset whose labels the students may read (None: all of them), and its rows."""
    if labelled is None:
        return None, None
    if not 0 < labelled <= len(train):
        raise DataError(f"data.labelled={labelled} must be between 1 and the {len(train)} training images")
    rows = _stratified(train.y, labelled, num_classes, gen)
    return train.take(rows), rows


def _transfer_set(train: Split, labelled_rows: torch.Tensor) -> Split:
    """Soft targets on every training image; labels kept only where the student may read them."""
    keep = torch.zeros(len(train), dtype=torch.bool)
    keep[labelled_rows] = True
    y = torch.where(keep, train.y, torch.full_like(train.y, UNLABELLED))
    return Split(train.x, y, train.index)


def _exclude(
    full: Split, train: Split, student_train: Split | None, transfer_set: Split | None, excluded: list[int]
) -> tuple[Split, Split]:
    """The students' labelled set and transfer set without the excluded classes, by true label (also for
    rows whose label the transfer set hides)."""
    true_y = torch.full((int(full.index.max()) + 1,), -1, dtype=torch.long)
    true_y[full.index] = full.y

    def without(split: Split) -> Split:
        return split.take(~torch.isin(true_y[split.index], torch.tensor(excluded)))

    labelled_part = without(student_train if student_train is not None else train)
    return labelled_part, without(transfer_set if transfer_set is not None else labelled_part)


def resolve_classes(spec: Sequence[int | str], class_names: Sequence[str]) -> list[int]:
    """Class numbers from numbers or names (``[3]`` or ``["Dress"]``); unknown ones are a DataError."""
    out: list[int] = []
    for c in spec:
        if isinstance(c, str) and c in class_names:
            out.append(list(class_names).index(c))
        elif isinstance(c, int) and 0 <= c < len(class_names):
            out.append(c)
        else:
            listed = ", ".join(f"{i}={n}" for i, n in enumerate(class_names))
            raise DataError(f"kd.exclude_classes: class {c!r} does not exist; the classes are {listed}")
    if len(set(out)) == len(class_names):
        raise DataError("kd.exclude_classes leaves no class to train on")
    return sorted(set(out))
