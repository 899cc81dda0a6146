"""Source ``cifar``: CIFAR-10 / CIFAR-100 in their "python version" batches, the format most KD papers use.

``data.root`` is ``cifar-10-batches-py`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``)
or ``cifar-100-python`` (``train``, ``test``, ``meta``), or a directory that holds one of them. CIFAR-100
has 100 fine and 20 coarse labels: ``data.cifar.labels`` chooses. The batches are Python pickles of
NumPy arrays; they are read with an unpickler that accepts NumPy's array reconstruction and plain
containers only, so a file that asks for anything else is refused, never executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from kdistill.data.base import DataError
from kdistill.data.raw import RawData, SourceArgs, source_root

CIFAR10 = "cifar-10-batches-py"
CIFAR100 = "cifar-100-python"
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: CIFAR batches hold NumPy arrays only")


def read_batch(path: Path) -> dict:
    """One CIFAR batch file as a dict with str keys."""
    if not path.is_file():
        raise DataError(f"CIFAR batch {path} not found; is data.root the extracted {CIFAR10} or {CIFAR100} directory?")
    try:
        with open(path, "rb") as f:
            raw = _NumpyOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a readable CIFAR batch ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a CIFAR batch is a dict, this file holds {type(raw).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _images(batch: dict, path: Path) -> np.ndarray:
    data = np.asarray(batch.get("data"))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DataError(
            f"{path}: 'data' should be uint8 rows of 3072 values (3 x 32 x 32), got {data.dtype} {data.shape}"
        )
    return data.reshape(-1, 3, 32, 32)


def _names(meta: dict, key: str) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def cifar(args: SourceArgs) -> RawData:
    root = source_root(args, "cifar", f"the extracted {CIFAR10} or {CIFAR100} directory")
    for d in (root, root / CIFAR10, root / CIFAR100):
        if (d / "batches.meta").is_file():
            return _cifar10(d)
        if (d / "meta").is_file() and (d / "train").is_file():
            return _cifar100(d, args.options.get("labels", "fine"))
    raise DataError(
        f"data.root={root}: neither {CIFAR10} (batches.meta, data_batch_1..5, test_batch) nor {CIFAR100} "
        "(meta, train, test) found there"
    )


def _cifar10(d: Path) -> RawData:
    train = [read_batch(d / f"data_batch_{i}") for i in range(1, 6)]
    test = read_batch(d / "test_batch")
    return RawData(
        np.concatenate([_images(b, d / f"data_batch_{i + 1}") for i, b in enumerate(train)]),
        np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in train]),
        _images(test, d / "test_batch"),
        np.asarray(test["labels"], dtype=np.int64),
        _names(read_batch(d / "batches.meta"), "label_names"),
    )


def _cifar100(d: Path, labels: str) -> RawData:
    train, test, meta = (read_batch(d / n) for n in ("train", "test", "meta"))
    key = "fine_labels" if labels == "fine" else "coarse_labels"
    return RawData(
        _images(train, d / "train"),
        np.asarray(train[key], dtype=np.int64),
        _images(test, d / "test"),
        np.asarray(test[key], dtype=np.int64),
        _names(meta, "fine_label_names" if labels == "fine" else "coarse_label_names"),
    )
