"""Datasets: one file per source (``fashion_mnist``, ``idx``, ``digits``, ``synthetic``, ``folder``, ``arrays``,
``cifar``, ``factory``), splits carved by :func:`load_data`, inputs in memory or read a batch at a time
(:mod:`.store`), and the batch loader every training loop reads."""

from kdistill.data.base import UNLABELLED, DataError
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
from kdistill.data.raw import RawData, SourceArgs
from kdistill.data.splits import DEFAULT_BUDGET_MB, SOURCES, DataBundle, Split, load_data, resolve_classes
from kdistill.data.store import LazyInputs, Normalization, fingerprint

__all__ = [
    "DEBIAN_DIR",
    "DEFAULT_BUDGET_MB",
    "FASHION_CLASSES",
    "FASHION_FILES",
    "SOURCES",
    "UNLABELLED",
    "Batch",
    "BatchLoader",
    "DataBundle",
    "DataError",
    "LazyInputs",
    "Normalization",
    "RawData",
    "RowIndex",
    "SourceArgs",
    "Split",
    "fashion_search_dirs",
    "find_fashion_mnist",
    "fingerprint",
    "load_data",
    "load_fashion_arrays",
    "read_idx",
    "resolve_classes",
]
