"""Datasets: one file per source (``fashion_mnist``, ``digits``, ``synthetic``), in-memory splits carved by
:func:`load_data`, and the batch loader every training loop reads."""

from kdistill.data.base import UNLABELLED, DataError, RawData
from kdistill.data.fashion_mnist import (
    DEBIAN_DIR,
    FASHION_CLASSES,
    FASHION_FILES,
    fashion_search_dirs,
    find_fashion_mnist,
    load_fashion_arrays,
)
from kdistill.data.idx import read_idx
from kdistill.data.loader import Batch, BatchLoader, RowIndex
from kdistill.data.splits import SOURCES, DataBundle, Split, load_data, resolve_classes

__all__ = [
    "DEBIAN_DIR",
    "FASHION_CLASSES",
    "FASHION_FILES",
    "SOURCES",
    "UNLABELLED",
    "Batch",
    "BatchLoader",
    "DataBundle",
    "DataError",
    "RawData",
    "RowIndex",
    "Split",
    "fashion_search_dirs",
    "find_fashion_mnist",
    "load_data",
    "load_fashion_arrays",
    "read_idx",
    "resolve_classes",
]
