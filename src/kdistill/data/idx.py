"""IDX files (the format of MNIST and Fashion-MNIST), optionally gzipped."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from kdistill.data.base import DataError


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
