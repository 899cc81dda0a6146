"""Where a split's inputs live: in memory, or in a ``.npy`` file read a batch at a time.

A data source hands over raw arrays: uint8 images ``(N, C, H, W)`` (scaled by 1/255) or float arrays
(images or feature vectors ``(N, D)``, scale 1). :func:`normalize` turns rows into the float32 inputs every
model sees, ``(x * scale - mean_c) / std_c`` per channel (per feature for vectors), always with the same
operations, so a batch read from disk is bit for bit the batch built in memory.

When a split's float32 inputs fit ``data.memory_budget_mb`` they are built once as a tensor (the fast path of
the in-memory batcher). Otherwise they stay on disk as :class:`LazyInputs`: a view of rows of a ``.npy``
file whose batches are read row by row with ``os.preadv`` (no memory map, whose pages would stay in the
process) and normalised on the fly. Both index the same way (``x[rows]``, slices), so the batch loader, the
teacher's caches and prediction need no second path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdistill.data.base import DataError


@dataclass(frozen=True)
class NpyFile:
    """An array in a ``.npy`` file (or an uncompressed member of a ``.npz``): where its data starts, its dtype
    and the shape it is stored in. Rows are read one system call each into the batch they belong to: nothing
    is mapped or read whole.
    ``channels_last``: images stored ``(N, H, W, C)``, handed out ``(N, C, H, W)`` like every other source."""

    path: Path
    offset: int
    dtype: np.dtype
    stored: tuple[int, ...]
    channels_last: bool = False

    @classmethod
    def open(cls, path: str | Path, offset: int = 0) -> NpyFile:
        """The array of a ``.npy`` file, or of one whose ``.npy`` data starts at ``offset`` (a zip member)."""
        path = Path(path)
        with open(path, "rb") as f:
            f.seek(offset)
            try:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in read_header:
                    raise ValueError(f".npy format version {version}; save it with np.save")
                shape, fortran, dtype = read_header[version](f)
            except ValueError as e:
                raise DataError(f"{path}: not a readable .npy array ({e})") from None
            if fortran and len(shape) > 1:
                raise DataError(f"{path}: Fortran-ordered array; save it with np.save(np.ascontiguousarray(x))")
            if dtype.hasobject:
                raise DataError(f"{path}: holds Python objects; save a numeric array")
            return cls(path, f.tell(), dtype, tuple(shape))

    @property
    def shape(self) -> tuple[int, ...]:
        if self.channels_last:
            n, h, w, c = self.stored
            return (n, c, h, w)
        return self.stored

    def __len__(self) -> int:
        return self.stored[0] if self.stored else 0

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.stored[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.row_bytes * len(self)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (in that order) as an in-memory array, each read straight into its place.

        ``os.preadv`` rather than a memory map: faulting a mapped file page maps a whole block of the page cache
        around it (about 1 MB per fault here, with large folios), so 128 random rows through a map held 150 MB;
        a read system call copies just the row (0.4 ms per batch of 128 rows of 784 bytes)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.stored[1:]), self.dtype)
        if len(rows):
            if int(rows.min()) < 0 or int(rows.max()) >= len(self):
                raise IndexError(f"{self.path}: rows outside 0..{len(self) - 1}")
            buf, rb, fd = memoryview(out.reshape(-1).view(np.uint8)), self.row_bytes, self._fd()
            for k, r in enumerate(rows.tolist()):
                if os.preadv(fd, [buf[k * rb : (k + 1) * rb]], self.offset + r * rb) != rb:
                    raise DataError(f"{self.path}: the file ends early (truncated?); write it again")
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if self.channels_last else out

    def _fd(self) -> int:
        """A descriptor of the file, opened on first use in each process (closed with the process)."""
        cached = self.__dict__.get("_open")
        if cached is None or cached[0] != os.getpid():
            cached = (os.getpid(), os.open(self.path, os.O_RDONLY))
            object.__setattr__(self, "_open", cached)  # a cache, not a field: equality and hashing ignore it
        return cached[1]

    def load(self) -> np.ndarray:
        """The whole array in memory (when it fits the budget)."""
        return self.read(np.arange(len(self)))

    def chunks(self, size: int = 4096) -> Iterator[np.ndarray]:
        for i in range(0, len(self), size):
            yield self.read(np.arange(i, min(i + size, len(self))))

    def identity(self) -> str:
        """Changes when the file does: path, size and modification time."""
        st = self.path.stat()
        return f"{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{self.offset}:{self.channels_last}"


class MemoryRows:
    """Raw rows already in memory (a source that had to read its file whole, e.g. a CIFAR pickle), with the
    interface of :class:`NpyFile`, so that inputs too large for the budget as float32 can stay uint8 and be
    normalised a batch at a time."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.dtype = array.dtype
        self.shape = tuple(array.shape)
        self._identity: str | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.array[rows]

    def load(self) -> np.ndarray:
        return self.array

    def chunks(self, size: int = 4096) -> Iterator[np.ndarray]:
        for i in range(0, len(self), size):
            yield self.array[i : i + size]

    def identity(self) -> str:
        if self._identity is None:
            self._identity = hashlib.sha256(np.ascontiguousarray(self.array).tobytes()).hexdigest()
        return self._identity


Rows = NpyFile | MemoryRows  # raw inputs that can be read a batch at a time


@dataclass(frozen=True)
class Normalization:
    """``x = (raw * scale - mean[c]) / std[c]`` per channel ``c`` (per feature of a vector)."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def as_dict(self) -> dict:
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)}


def scale_of(dtype: np.dtype) -> float:
    """uint8 pixels are brought to [0, 1]; anything else is taken as it is."""
    return 1 / 255 if dtype == np.uint8 else 1.0


def normalize(raw: np.ndarray, norm: Normalization) -> torch.Tensor:
    """Rows of raw inputs as float32 model inputs. Per channel with Python-scalar arithmetic for images (the
    operations Fashion-MNIST runs always used, so its numbers do not move), broadcast for feature vectors."""
    x = raw.astype(np.float32)
    x = torch.from_numpy(x / 255.0 if norm.scale == 1 / 255 else x)
    if x.dim() == 2:  # feature vectors: one statistic per feature
        mean = torch.tensor(norm.mean, dtype=torch.float32)
        return ((x - mean) / torch.tensor(norm.std, dtype=torch.float32)).contiguous()
    if len(norm.mean) == 1:
        return ((x - norm.mean[0]) / norm.std[0]).contiguous()
    for c, (m, s) in enumerate(zip(norm.mean, norm.std, strict=True)):
        x[:, c] = (x[:, c] - m) / s
    return x.contiguous()


def in_memory_stats(raw: np.ndarray) -> Normalization:
    """Mean and std per channel of a training split held in memory, in float32 (as kdistill always did)."""
    scale = scale_of(raw.dtype)
    x = raw.astype(np.float32)
    x = x / 255.0 if scale == 1 / 255 else x
    if x.ndim == 2:
        mean, std = x.mean(axis=0), x.std(axis=0)
    else:
        per = [x[:, c] for c in range(x.shape[1])]
        mean, std = np.array([p.mean() for p in per]), np.array([p.std() for p in per])
    return Normalization(scale, tuple(float(m) for m in mean), tuple(float(s) or 1.0 for s in std))


def streamed_stats(src: Rows) -> Normalization:
    """The same statistics for a training split on disk, read in chunks and accumulated in float64 (uint8
    images: from exact per-channel pixel counts). They agree with :func:`in_memory_stats` to ~1e-7."""
    scale = scale_of(src.dtype)
    if src.dtype == np.uint8 and len(src.shape) == 4:
        counts = np.zeros((src.shape[1], 256), np.int64)
        for chunk in src.chunks():
            for c in range(src.shape[1]):
                counts[c] += np.bincount(chunk[:, c].reshape(-1), minlength=256)
        v = np.arange(256) / 255.0
        n = counts.sum(1)
        mean = (counts * v).sum(1) / n
        var = (counts * v**2).sum(1) / n - mean**2
    else:
        axes = (0,) if len(src.shape) == 2 else (0, 2, 3)
        n = 0
        s1 = s2 = 0.0
        for chunk in src.chunks():
            c = chunk.astype(np.float64)
            n += c.size // (c.shape[1] if c.ndim > 1 else 1)
            s1 = s1 + c.sum(axis=axes)
            s2 = s2 + (c**2).sum(axis=axes)
        mean = s1 / n
        var = s2 / n - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    return Normalization(scale, tuple(float(m) for m in mean), tuple(float(s) or 1.0 for s in std))


class LazyInputs:
    """Raw rows (of a ``.npy`` file, or uint8 rows in memory), normalised when indexed: the streamed counterpart
    of an input tensor.

    ``x[rows]`` (an index tensor, array, list or slice) reads those rows from disk and returns the float32
    batch; :meth:`take` returns another view (of chosen rows) without reading anything.
    """

    def __init__(self, src: Rows, norm: Normalization, rows: np.ndarray | None = None) -> None:
        self.src, self.norm = src, norm
        self.rows = np.arange(len(src)) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.src.shape[1:])

    def _positions(self, idx: object) -> np.ndarray:
        if isinstance(idx, slice):
            return self.rows[idx]
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        pos = np.asarray(idx)
        if pos.dtype == bool:
            return self.rows[pos]
        return self.rows[pos.astype(np.int64)]

    def __getitem__(self, idx: object) -> torch.Tensor:
        return normalize(self.src.read(self._positions(idx)), self.norm)

    def take(self, idx: object) -> LazyInputs:
        return LazyInputs(self.src, self.norm, self._positions(idx))

    def fingerprint(self) -> str:
        """Identifies the inputs without reading them: the file, the rows, the normalization."""
        h = hashlib.sha256(self.src.identity().encode())
        h.update(self.rows.tobytes())
        h.update(json.dumps(self.norm.as_dict()).encode())
        return h.hexdigest()


Inputs = torch.Tensor | LazyInputs


def fingerprint(x: Inputs) -> str:
    """SHA-256 of a split's inputs: their bytes in memory, the file and rows on disk."""
    if isinstance(x, LazyInputs):
        return x.fingerprint()
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()
