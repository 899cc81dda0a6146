"""Tiny IDX files written on the fly (the format of MNIST and Fashion-MNIST)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(a: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x00 0x00 0x08 ndim, big-endian dims, data)."""
    a = np.asarray(a, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(">" + "I" * a.ndim, *a.shape) + a.tobytes()


def write_idx(path: Path, a: np.ndarray) -> Path:
    raw = idx_bytes(a)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


IMAGES = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
LABELS = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
