"""What every data source returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdistill.data.base import DataError
from kdistill.data.store import NpyFile


@dataclass
class RawData:
    """A dataset as a source reads it, before normalization and splitting.

    Inputs are uint8 images ``(N, H, W)`` or ``(N, C, H, W)``, float images, or float feature vectors
    ``(N, D)``, in memory or in a ``.npy`` file (:class:`~kdistill.data.store.NpyFile`, read a batch at a
    time when the data does not fit the memory budget); labels are integers in memory. ``val_*``: a validation
    split the source provides itself (otherwise one is carved from train). ``notes``: what the source wants
    said about the data (files skipped, a test split it carved), shown by ``kdistill data`` and logged;
    ``record``: the same facts in full for the run's ``data.json`` (the carved test split's files, say).
    """

    train_images: np.ndarray | NpyFile
    train_labels: np.ndarray
    test_images: np.ndarray | NpyFile
    test_labels: np.ndarray
    class_names: list[str]
    val_images: np.ndarray | NpyFile | None = None
    val_labels: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SourceArgs:
    """What a source is given: ``data.root``, ``data.download``, its own config section as a dict, where it may
    keep prepared files (never in the user's data folder), and the memory budget in bytes."""

    root: str | None
    download: bool
    options: dict
    cache_dir: Path
    budget_bytes: int


def source_root(args: SourceArgs, source: str, what: str) -> Path:
    """``data.root`` as an existing directory, or a DataError that says what it must hold."""
    if not args.root:
        raise DataError(f"data.name={source} needs data.root: {what}")
    d = Path(args.root).expanduser()
    if not d.is_dir():
        raise DataError(f"data.root={args.root}: no such directory (data.name={source} needs {what})")
    return d
