"""Prepared arrays: a dataset decoded (or extracted) once into ``.npy`` files that later runs read at disk speed.

A prepared dataset is a directory ``<cache_dir>/<kind>-<key>/`` with one ``.npy`` per array and a
``meta.json``. The key hashes whatever the arrays were made from (a folder's file list, sizes and
modification times and the decode settings; an archive's identity), so a change builds a new directory
instead of reusing a stale one. It is written into a temporary directory and renamed into place whole:
an interrupted preparation leaves nothing that looks finished. The user's own data folder is never written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kdistill.data.store import NpyFile
from kdistill.io import replace_dir

PREPARED_FORMAT = "kdistill-prepared/1"


def key_of(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


class NpyWriter:
    """Write a ``.npy`` file row block by row block, its shape known in advance (nothing held in memory)."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape, self.rows = path, np.dtype(dtype), tuple(shape), 0
        self.f = open(path, "wb")  # noqa: SIM115 - closed by close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self.f, header)

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path.name}: rows of shape {block.shape[1:]}, expected {self.shape[1:]}")
        self.f.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        self.f.close()
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self.rows} rows written, {self.shape[0]} announced")


def open_prepared(path: Path) -> dict | None:
    """``meta.json`` of a finished prepared directory, or None when there is none (or it is not one)."""
    meta = path / "meta.json"
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return None
    return data if data.get("format") == PREPARED_FORMAT else None


def prepare(path: Path, fill: Callable[[Path], dict]) -> dict:
    """Build the prepared directory ``path`` with ``fill(tmp_dir) -> meta`` (which writes the ``.npy`` files)
    and rename it into place; returns the meta as written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        meta = {"format": PREPARED_FORMAT, **fill(tmp)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def prepared_arrays(path: Path, names: list[str]) -> dict[str, NpyFile]:
    return {n: NpyFile.open(path / f"{n}.npy") for n in names if (path / f"{n}.npy").is_file()}
