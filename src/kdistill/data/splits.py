"""Splits and :func:`load_data`: a source's arrays -> normalised inputs -> carved splits.

``index`` is a sample's position in its *original* split, so teacher outputs can be cached per sample
and found again after any shuffle or subset. A label of ``-1`` means "unlabelled": the loss functions
ignore it. The few-labels transfer set uses it so that labels the student must not read are not there.

What is read from the data, not configured: the number of classes and their names, the input shape and
channels, and the per-channel mean and std of the training images. Inputs that fit the memory budget as
float32 are held as tensors; larger ones stay where the source left them (a ``.npy`` file, or uint8 in
memory) and are normalised a batch at a time (:class:`~kdistill.data.store.LazyInputs`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdistill import dist
from kdistill.data.arrays import arrays
from kdistill.data.base import UNLABELLED, DataError
from kdistill.data.cifar import cifar
from kdistill.data.digits import digits
from kdistill.data.factory import factory
from kdistill.data.fashion_mnist import fashion_mnist
from kdistill.data.folder import folder
from kdistill.data.idx import idx
from kdistill.data.raw import RawData, SourceArgs
from kdistill.data.store import (
    Inputs,
    LazyInputs,
    MemoryRows,
    Normalization,
    NpyFile,
    Rows,
    in_memory_stats,
    normalize,
    streamed_stats,
)
from kdistill.data.synthetic import synthetic

# A source reads a dataset (SourceArgs -> RawData). One file per source; its options are the config section
# data.<name> (data.folder, data.arrays, ...).
Source = Callable[[SourceArgs], RawData]
SOURCES: dict[str, Source] = {
    "fashion_mnist": fashion_mnist,
    "digits": digits,
    "synthetic": synthetic,
    "idx": idx,
    "folder": folder,
    "arrays": arrays,
    "cifar": cifar,
    "factory": factory,
}
DEFAULT_BUDGET_MB = 2048.0


@dataclass
class Split:
    """One split: inputs ``x`` (a tensor, or :class:`~kdistill.data.store.LazyInputs` read a batch at a time),
    labels ``y`` (``-1`` = unlabelled) and sample ``index``, all row-aligned; ``lengths``, where rows differ in
    cost (sentences: tokens before padding), lets the loader batch rows of similar length together."""

    x: Inputs
    y: torch.Tensor
    index: torch.Tensor
    lengths: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, rows: torch.Tensor) -> Split:
        x = self.x.take(rows) if isinstance(self.x, LazyInputs) else self.x[rows]
        return Split(x, self.y[rows], self.index[rows], None if self.lengths is None else self.lengths[rows])

    def unlabelled(self) -> Split:
        return Split(self.x, torch.full_like(self.y, UNLABELLED), self.index, self.lengths)


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
    streamed: bool = False  # inputs read a batch at a time (larger than the memory budget)
    notes: list[str] = field(default_factory=list)  # what the source said about the data

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
    val_size: float = 5000,
    labelled: int | None = None,
    transfer: str = "labelled",
    split_seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    synthetic: dict | None = None,
    exclude_classes: Sequence[int | str] = (),
    options: dict | None = None,
    memory_budget_mb: float = DEFAULT_BUDGET_MB,
    cache_dir: str | Path | None = None,
) -> DataBundle:
    """Load a dataset and carve the splits.

    ``name`` is a source of :data:`SOURCES`, ``options`` its config section (``data.<name>``; ``synthetic`` is
    the synthetic source's). ``val_size`` images are taken out of the training set for model selection (test
    is never used for tuning), unless the source has a validation split of its own. ``labelled`` (optional)
    keeps labels for only that many stratified training images: the scratch and label-smoothing students see
    those alone. ``transfer="all"`` gives the KD student soft targets on *every* training image, with the
    labels of the unlabelled part removed. ``limit_*`` shrink the splits (the ``--smoke`` mode).
    ``exclude_classes`` (numbers or names) are removed from the students' labelled set and from the transfer
    set, by their true labels (also where the transfer set hides them); train (the teacher's), validation and
    test keep them. Inputs larger than ``memory_budget_mb`` as float32 are read a batch at a time; prepared
    files (a decoded image folder, ...) go to ``cache_dir`` (default ``~/.cache/kdistill/prepared``).
    """
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; choose {', '.join(SOURCES)}")
    if transfer not in ("all", "labelled"):
        raise DataError(f"kd.transfer={transfer!r}: choose 'labelled' or 'all'")
    budget = int(memory_budget_mb * 2**20)
    raw = _read_source(name, root, download, synthetic if options is None else options, cache_dir, budget)
    classes = _check(raw, name)
    streamed = _float_bytes(raw) > budget
    full, test, val, norm = _inputs(raw, streamed)

    # One generator for every random choice below, drawn from in this order: the same seed, the same splits.
    gen = torch.Generator().manual_seed(split_seed)
    full, test = _limit(full, test, limit_train, limit_test, gen)
    if val is None:
        train, val = _carve_validation(full, val_size, gen)
    else:
        train = full
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
        # What a deployed model needs to prepare raw inputs: x = (raw * scale - mean[c]) / std[c].
        extra={"normalize": norm.as_dict(), **raw.record},
        streamed=streamed,
        notes=list(raw.notes),
    )


def _read_source(
    name: str, root: str | None, download: bool, options: dict | None, cache_dir: str | Path | None, budget: int
) -> RawData:
    """The source's arrays. Only rank 0 of a distributed run prepares files; the others wait, then read them."""
    cache = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "kdistill" / "prepared"
    args = SourceArgs(root, download, dict(options or {}), cache, budget)
    if dist.world() == 1:
        return SOURCES[name](args)
    failure, raw = None, None
    if dist.is_main():
        try:
            raw = SOURCES[name](args)
        except DataError as e:
            failure = str(e)
    failure = dist.broadcast_object(failure)  # every rank fails alike instead of waiting for rank 0
    if failure is not None:
        raise DataError(failure)
    return raw if raw is not None else SOURCES[name](args)


def _check(raw: RawData, name: str) -> list[str]:
    """Shapes and labels that fit together, before anything else: the class names, or a DataError."""
    classes = [str(c) for c in raw.class_names]
    splits = [("train", raw.train_images, raw.train_labels), ("test", raw.test_images, raw.test_labels)]
    if raw.val_images is not None:
        splits.append(("val", raw.val_images, raw.val_labels))
    shapes = {s: tuple(_rows_of(x).shape[1:]) for s, x, _ in splits}
    if len(set(shapes.values())) != 1:
        raise DataError(f"{name}: the splits' inputs have different shapes {shapes}; every split needs one shape")
    seen: dict[str, set[int]] = {}
    for s, x, y in splits:
        if len(x) != len(y):
            raise DataError(f"{name}: {s} has {len(x)} inputs but {len(y)} labels; they must match row for row")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            bad = sorted({int(v) for v in np.unique(y) if not 0 <= v < len(classes)})[:5]
            raise DataError(
                f"{name}: {s} labels {bad} are outside 0..{len(classes) - 1} ({len(classes)} classes: "
                f"{', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}); give every class a name "
                "(class_names) or fix the labels"
            )
        seen[s] = {int(v) for v in np.unique(y)}
    if not len(raw.train_labels):
        raise DataError(f"{name}: the training split is empty")
    missing = sorted(set(range(len(classes))) - seen["train"])
    if missing:
        shown = ", ".join(f"{c}={classes[c]}" for c in missing[:5])
        raise DataError(f"{name}: classes {shown} have no training image; drop them from class_names or add images")
    extra = sorted(seen["test"] - seen["train"])
    if extra:
        raise DataError(f"{name}: the test split has classes {extra} that train does not; the class sets must match")
    return classes


def _float_bytes(raw: RawData) -> int:
    """What all inputs would take as float32 tensors."""
    arrays = [raw.train_images, raw.test_images] + ([raw.val_images] if raw.val_images is not None else [])
    return sum(len(a) * int(np.prod(a.shape[1:], dtype=np.int64)) * 4 for a in arrays)


def _rows_of(a: np.ndarray | Rows) -> Rows:
    if isinstance(a, (NpyFile, MemoryRows)):
        return a
    return MemoryRows(a[:, None] if a.ndim == 3 else a)  # (N, H, W) images get their channel


def _inputs(raw: RawData, streamed: bool) -> tuple[Split, Split, Split | None, Normalization]:
    """Normalised splits of the source's train, test (and validation) inputs; statistics from train alone."""
    arrays = {"train": (raw.train_images, raw.train_labels), "test": (raw.test_images, raw.test_labels)}
    if raw.val_images is not None:
        arrays["val"] = (raw.val_images, raw.val_labels)
    rows = {s: _rows_of(x) for s, (x, _) in arrays.items()}
    if streamed:
        norm = streamed_stats(rows["train"])
        xs: dict[str, Inputs] = {s: LazyInputs(r, norm) for s, r in rows.items()}
    else:
        loaded = {s: r.load() for s, r in rows.items()}
        norm = in_memory_stats(loaded["train"])
        xs = {s: normalize(a, norm) for s, a in loaded.items()}
    splits = {
        s: Split(xs[s], torch.from_numpy(np.asarray(y).astype(np.int64)), torch.arange(len(y)))
        for s, (_, y) in arrays.items()
    }
    return splits["train"], splits["test"], splits.get("val"), norm


def _limit(
    full: Split, test: Split, limit_train: int | None, limit_test: int | None, gen: torch.Generator
) -> tuple[Split, Split]:
    """A random ``limit_train`` of the training images, the first ``limit_test`` test images (smoke runs)."""
    if limit_train is not None and limit_train < len(full):
        full = full.take(torch.randperm(len(full), generator=gen)[:limit_train].sort().values)
    if limit_test is not None and limit_test < len(test):
        test = test.take(torch.arange(limit_test))
    return full, test


def _carve_validation(full: Split, val_size: float, gen: torch.Generator) -> tuple[Split, Split]:
    """A random validation split of ``val_size`` images (a count, or a fraction of train when below 1)."""
    if 0 < val_size < 1:
        val_size = max(1, round(val_size * len(full)))
    if not 0 < val_size < len(full) or val_size != int(val_size):
        raise DataError(
            f"data.val_size={val_size} must be a count between 1 and the {len(full)} training images - 1, or a "
            "fraction below 1 (e.g. 0.1)"
        )
    val_size = int(val_size)
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
