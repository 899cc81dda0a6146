"""Datasets as in-memory tensors, and a batched loader that yields ``{"x", "y", "index"}`` dicts.

Fashion-MNIST, scikit-learn's bundled ``digits`` and a seeded synthetic set all fit in memory, and
slicing whole batches out of one tensor is several times faster on 2 CPU cores than a per-sample
``DataLoader``. ``index`` is a sample's position in its *original* split, so teacher outputs can be
cached per sample and found again after any shuffle or subset.

A label of ``-1`` means "unlabelled": the loss functions ignore it. The few-labels transfer set uses
it so that labels the student must not read are not there at all.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

UNLABELLED = -1

FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# Shape each file must have once decompressed; checked on every load so that a truncated or
# mixed-up file is caught with a message instead of a reshape error deep inside numpy.
FASHION_SHAPES = {
    "train_images": (60000, 28, 28),
    "train_labels": (60000,),
    "test_images": (10000, 28, 28),
    "test_labels": (10000,),
}
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# The dataset's official mirror (the Zalando Research project page links it).
FASHION_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


class DataError(RuntimeError):
    """A dataset is missing, truncated or malformed. The message says where and how to fix it."""


# ----------------------------------------------------------------------------- IDX files


def read_idx(path: str | Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file, validating the magic number and the byte count."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises EOFError on a truncated stream
        raise DataError(
            f"{path}: cannot read ({e}); the file is truncated or corrupt, delete it and fetch it again"
        ) from e
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX header; fetch the file again")
    zero, dtype_code, ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise DataError(
            f"{path}: bad IDX magic number {raw[:4].hex()} (expected 00000801 for labels or 00000803 "
            "for images); this is not an IDX file from the dataset"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header cut short; fetch the file again")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header announces shape {dims} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header}; the file is truncated or corrupt, delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdistill" / "fashion-mnist"


def fashion_search_dirs(root: str | None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order."""
    dirs: list[Path] = []
    if root:
        dirs.append(Path(root).expanduser())
    if os.environ.get("KDISTILL_DATA"):
        dirs.append(Path(os.environ["KDISTILL_DATA"]).expanduser())
    dirs += [Path(DEBIAN_DIR), _user_cache_dir()]
    return dirs


def find_fashion_mnist(root: str | None = None, download: bool = True, mirror: str | None = None) -> Path:
    """Return the directory holding the four Fashion-MNIST files, downloading them if allowed."""
    dirs = fashion_search_dirs(root)
    for d in dirs:
        if all((d / f).is_file() for f in FASHION_FILES.values()):
            return d
    cache = _user_cache_dir()
    mirror = mirror or os.environ.get("KDISTILL_FASHION_MIRROR", FASHION_MIRROR)
    errors = []
    if download:
        for fname in FASHION_FILES.values():
            if (cache / fname).is_file():
                continue
            try:
                # gzip files are validated after download by reading them as IDX.
                _download_gz(mirror.rstrip("/") + "/" + fname, cache / fname)
            except Exception as e:  # network or validation failure: report all places tried
                errors.append(f"{fname}: {e}")
                break
        if not errors:
            return cache
    looked = "\n".join(f"  - {d}" for d in dirs)
    why = ("\n  download failed: " + errors[0]) if errors else ("\n  (download disabled)" if not download else "")
    raise DataError(
        "Fashion-MNIST not found. Looked for "
        + ", ".join(FASHION_FILES.values())
        + " in:\n"
        + looked
        + why
        + "\nFix: on Debian/Ubuntu run `apt-get install dataset-fashion-mnist`; or download the four files from "
        "the dataset's official mirror into one of the directories above (or set data.root / $KDISTILL_DATA)."
    )


def _download_gz(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.stem + ".", suffix=".gz")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
            shutil.copyfileobj(resp, out)
        read_idx(tmp)  # magic number and size checked before the file is kept
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_fashion_arrays(root: str | None = None, download: bool = True) -> dict[str, np.ndarray]:
    d = find_fashion_mnist(root, download)
    arrays = {}
    for key, fname in FASHION_FILES.items():
        a = read_idx(d / fname)
        if a.shape != FASHION_SHAPES[key]:
            raise DataError(
                f"{d / fname}: shape {a.shape}, expected {FASHION_SHAPES[key]} for Fashion-MNIST {key}; "
                "the file belongs to another dataset or is incomplete"
            )
        arrays[key] = a
    if arrays["train_labels"].max() > 9 or arrays["test_labels"].max() > 9:
        raise DataError(f"{d}: labels outside 0..9; the label files are corrupt")
    return arrays


# ----------------------------------------------------------------------------- splits


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


def synthetic_arrays(
    n_train: int = 600, n_test: int = 200, num_classes: int = 4, side: int = 8, seed: int = 0
) -> dict[str, np.ndarray]:
    """A seeded, learnable image set: each class is a fixed random template plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(num_classes, side, side))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, num_classes, size=n)
        x = templates[y] * 0.6 + rng.uniform(0, 255, size=(n, side, side)) * 0.4
        return x.clip(0, 255).astype(np.uint8), y.astype(np.uint8)

    tx, ty = make(n_train)
    sx, sy = make(n_test)
    return {"train_images": tx, "train_labels": ty, "test_images": sx, "test_labels": sy}


def digits_arrays(test_fraction: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), split into train and test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    y = d.target.astype(np.uint8)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return {"train_images": x[tr], "train_labels": y[tr], "test_images": x[te], "test_labels": y[te]}


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
    if name == "fashion_mnist":
        arrays = load_fashion_arrays(root, download)
        classes = list(FASHION_CLASSES)
    elif name == "digits":
        # The test split is fixed (seed 0) like Fashion-MNIST's: split_seed only moves train/val.
        arrays = digits_arrays()
        classes = [str(i) for i in range(10)]
    elif name == "synthetic":
        arrays = synthetic_arrays(**(synthetic or {}))
        classes = [f"class{i}" for i in range(int(arrays["train_labels"].max()) + 1)]
    else:
        raise DataError(f"unknown dataset {name!r}; choose fashion_mnist, digits or synthetic")

    # Normalization statistics come from the training images only.
    tr = arrays["train_images"].astype(np.float32) / 255.0
    mean, std = float(tr.mean()), float(tr.std()) or 1.0
    full = _to_split(arrays["train_images"], arrays["train_labels"], mean, std)
    test = _to_split(arrays["test_images"], arrays["test_labels"], mean, std)
    num_classes = len(classes)

    gen = torch.Generator().manual_seed(split_seed)
    if limit_train is not None and limit_train < len(full):
        full = full.take(torch.randperm(len(full), generator=gen)[:limit_train].sort().values)
    if limit_test is not None and limit_test < len(test):
        test = test.take(torch.arange(limit_test))
    if not 0 < val_size < len(full):
        raise DataError(f"data.val_size={val_size} must be between 1 and the {len(full)} training images - 1")
    perm = torch.randperm(len(full), generator=gen)
    val = full.take(perm[:val_size].sort().values)
    train = full.take(perm[val_size:].sort().values)

    student_train = transfer_set = None
    if labelled is not None:
        if not 0 < labelled <= len(train):
            raise DataError(f"data.labelled={labelled} must be between 1 and the {len(train)} training images")
        rows = _stratified(train.y, labelled, num_classes, gen)
        student_train = train.take(rows)
    if transfer == "all" and student_train is not None:
        # Soft targets on every training image; labels kept only where the student may read them.
        keep = torch.zeros(len(train), dtype=torch.bool)
        keep[rows] = True
        y = torch.where(keep, train.y, torch.full_like(train.y, UNLABELLED))
        transfer_set = Split(train.x, y, train.index)
    elif transfer not in ("all", "labelled"):
        raise DataError(f"kd.transfer={transfer!r}: choose 'labelled' or 'all'")

    excluded = resolve_classes(exclude_classes, classes)
    if excluded:
        # True labels by sample index, also for rows whose label the transfer set hides.
        true_y = torch.full((int(full.index.max()) + 1,), -1, dtype=torch.long)
        true_y[full.index] = full.y

        def without(split: Split) -> Split:
            return split.take(~torch.isin(true_y[split.index], torch.tensor(excluded)))

        labelled_part = without(student_train if student_train is not None else train)
        transfer_set = without(transfer_set if transfer_set is not None else labelled_part)
        student_train = labelled_part

    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
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


# ----------------------------------------------------------------------------- loader


class RowIndex:
    """Maps sample indices (``batch["index"]``) to rows of a per-sample table, such as a teacher cache.

    A lookup table of size ``max(index) + 1`` finds each sample's row after shuffles, subsets and
    transfer sets; indices outside it or without a row are a :class:`KeyError` naming ``what``
    (negative indices would otherwise wrap around to another sample's row).
    """

    def __init__(self, index: torch.Tensor, what: str) -> None:
        if index.dim() != 1 or len(index.unique()) != len(index):
            raise ValueError(f"{what} needs one distinct sample index per row, got index {tuple(index.shape)}")
        self.what = what
        self.table = torch.full((int(index.max()) + 1 if len(index) else 0,), -1, dtype=torch.long)
        self.table[index] = torch.arange(len(index))

    def __len__(self) -> int:
        return len(self.table)

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        index = index.cpu()  # the table lives in host memory; the batch may be on a GPU
        n = len(self.table)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            bad = index[(index < 0) | (index >= n)][:5].tolist()
            raise KeyError(f"sample indices {bad} are outside the {self.what} (indices 0..{n - 1})")
        rows = self.table[index]
        if bool((rows < 0).any()):
            raise KeyError(f"{self.what} has no entry for sample indices {index[rows < 0][:5].tolist()}")
        return rows


class BatchLoader:
    """Iterate over a :class:`Split` in batches of dicts, shuffled reproducibly per epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same batches as
    an uninterrupted one. With ``world > 1`` (distributed), rank ``r`` yields its share of each global
    batch of ``batch_size`` rows. ``extra`` tensors (e.g. cached teacher logits, row-aligned with the split)
    are sliced alongside.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world > 1 and batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world} processes; the global "
                             f"batch is split evenly across them (use a multiple of {world})")  # fmt: skip
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> torch.Tensor:
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n)
        # SeedSequence mixes (seed, epoch) so that no two pairs share an order (seed*K + epoch would).
        mixed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0] >> 1)
        g = torch.Generator().manual_seed(mixed)
        return torch.randperm(n, generator=g)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self.order()
        for b in range(len(self)):
            rows = order[b * self.batch_size : (b + 1) * self.batch_size]
            # Distributed: every rank walks the same global order and takes every world-th row of each
            # global batch, so N processes together see exactly the batches of one process.
            rows = rows[self.rank :: self.world]
            yield {"x": self.split.x[rows], "y": self.split.y[rows], "index": self.split.index[rows]}
