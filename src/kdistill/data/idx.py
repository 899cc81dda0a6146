"""IDX files (the format of MNIST and Fashion-MNIST), optionally gzipped."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from kdistill.data.base import DataError
from kdistill.data.raw import RawData, SourceArgs, source_root


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


# The standard names of MNIST-style datasets (each may also be gzipped: name + ".gz").
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def find_idx_file(root: Path, name: str) -> Path:
    """``root/name`` or ``root/name.gz``, whichever exists."""
    for cand in (root / name, root / (name + ".gz"), root / name.removesuffix(".gz")):
        if cand.is_file():
            return cand
    raise DataError(
        f"IDX file {name} (or {name}.gz) not found in {root}; put it there or name the files in data.idx.files"
    )


def read_idx_dataset(root: Path, files: dict[str, str], class_names: list[str] | None) -> RawData:
    """The four IDX files of a dataset as arrays (images ``(N, H, W)`` or ``(N, C, H, W)`` uint8)."""
    arrays = {key: read_idx(find_idx_file(root, files[key])) for key in IDX_FILES}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim not in (3, 4) or labels.ndim != 1:
            raise DataError(
                f"{root}: {files[split + '_images']} has shape {images.shape} and {files[split + '_labels']} "
                f"{labels.shape}; expected images (N, H, W) or (N, C, H, W) and labels (N,)"
            )
    n = int(max(arrays["train_labels"].max(initial=0), arrays["test_labels"].max(initial=0))) + 1
    names = list(class_names) if class_names else [str(i) for i in range(n)]
    return RawData(arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"], names)


def idx(args: SourceArgs) -> RawData:
    """Source ``idx``: the four IDX files of any MNIST-style dataset in ``data.root`` (names in
    ``data.idx.files``, gzipped or not; class names in ``data.idx.class_names``, else numbered)."""
    d = source_root(args, "idx", "the directory that holds the four IDX files")
    files = {**IDX_FILES, **(args.options.get("files") or {})}
    return read_idx_dataset(d, files, args.options.get("class_names"))
