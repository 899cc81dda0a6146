"""Source ``factory``: a function of yours, ``package.module:function``, that returns ``torch.utils.data.Dataset``\\ s.

``data.factory.function`` is called with ``data.factory.kwargs`` (and ``root=data.root`` when it takes a ``root``
argument) and returns ``(train, test)``,
``(train, test, class_names)`` or a dict with ``train``, ``test`` and optionally ``val`` and ``class_names``.
Each item is ``(x, y)``: ``x`` a tensor (``(C, H, W)`` or a vector), a NumPy array or a PIL image, ``y`` an
integer class. The items are read once: into memory when they fit the memory budget, else into prepared
``.npy`` files (keyed by the function, its arguments, the dataset sizes and a sample of items) that later
runs read a batch at a time.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from kdistill.data.base import DataError
from kdistill.data.prepared import NpyWriter, key_of, open_prepared, prepare, prepared_arrays
from kdistill.data.raw import RawData, SourceArgs
from kdistill.plugins import import_callable

SPLITS = ("train", "val", "test")


def factory(args: SourceArgs) -> RawData:
    opts = args.options
    path = opts.get("function")
    if not path:
        raise DataError("data.name=factory needs data.factory.function: 'package.module:function'")
    what = f"data.factory.function {path!r}"
    try:
        fn = import_callable(path, what, "write it as 'package.module:function' (a function returning Datasets)")
    except ValueError as e:
        raise DataError(str(e)) from None
    kwargs = dict(opts.get("kwargs") or {})
    if args.root is not None and "root" not in kwargs and "root" in inspect.signature(fn).parameters:
        kwargs["root"] = args.root  # data.root reaches a factory that takes it
    datasets, classes = _unpack(fn(**kwargs), what)
    first = {s: _item(ds, 0, s) for s, ds in datasets.items()}
    shapes = {x.shape for x, _ in first.values()}
    if len(shapes) != 1:
        raise DataError(f"{what}: the splits' inputs have different shapes {sorted(shapes)}; they must match")
    dtype = np.uint8 if all(x.dtype == np.uint8 for x, _ in first.values()) else np.float32
    row = int(np.prod(next(iter(shapes)))) * np.dtype(dtype).itemsize
    if sum(len(ds) for ds in datasets.values()) * row <= args.budget_bytes:
        arrays = {s: _read(ds, s, dtype) for s, ds in datasets.items()}
        x = {s: a[0] for s, a in arrays.items()}
        y = {s: a[1] for s, a in arrays.items()}
    else:
        x, y = _prepared(datasets, dtype, path, opts, args.cache_dir)
    n = int(max(v.max(initial=-1) for v in y.values())) + 1
    names = list(classes) if classes is not None else [str(i) for i in range(n)]
    return RawData(x["train"], y["train"], x["test"], y["test"], names, x.get("val"), y.get("val"))


def _unpack(out: Any, what: str) -> tuple[dict[str, Any], list[str] | None]:
    if isinstance(out, dict):
        datasets = {s: out[s] for s in SPLITS if out.get(s) is not None}
        classes = out.get("class_names")
    elif isinstance(out, (tuple, list)) and len(out) in (2, 3):
        datasets, classes = {"train": out[0], "test": out[1]}, (out[2] if len(out) == 3 else None)
    else:
        raise DataError(
            f"{what} returned {type(out).__name__}; return (train, test), (train, test, class_names) or a dict with "
            "train, test and optionally val and class_names"
        )
    for s in ("train", "test"):
        if s not in datasets:
            raise DataError(f"{what} returned no {s} dataset")
    for s, ds in datasets.items():
        container = isinstance(ds, (str, bytes, list, tuple, dict, np.ndarray, torch.Tensor))
        duck = hasattr(ds, "__len__") and hasattr(ds, "__getitem__") and not container
        if not (isinstance(ds, torch.utils.data.Dataset) or duck):
            raise DataError(
                f"{what}: its {s} split is a {type(ds).__name__}, not a torch.utils.data.Dataset (an object with "
                "__len__ and __getitem__ returning (x, y))"
            )
        if len(ds) == 0:
            raise DataError(f"{what}: its {s} split is empty")
    return datasets, (list(classes) if classes is not None else None)


def _item(ds: Any, i: int, split: str) -> tuple[np.ndarray, int]:
    """Item ``i`` as ``(x as (C, H, W) or (D,) array, integer label)``."""
    item = ds[i]
    if not (isinstance(item, (tuple, list)) and len(item) >= 2):
        raise DataError(f"{split} item {i}: expected (x, y), got {type(item).__name__}")
    x, y = item[0], item[1]
    if isinstance(x, Image.Image):
        a = np.asarray(x)
        x = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    elif isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(np.asarray(x))
    if x.ndim == 2:
        x = x[None]
    try:
        label = int(y)
    except (TypeError, ValueError):
        raise DataError(f"{split} item {i}: the label {y!r} is not an integer class") from None
    if float(y) != label:
        raise DataError(
            f"{split} item {i}: the label {y!r} is not an integer class; to predict numbers, write a regression "
            "config (task: regression; see configs/regression/)"
        )
    return x, label


def _rows(ds: Any, split: str, dtype: type, shape: tuple[int, ...]) -> Any:
    for i in range(len(ds)):
        x, y = _item(ds, i, split)
        if x.shape != shape:
            raise DataError(f"{split} item {i} has shape {x.shape}, item 0 has {shape}; every item needs one shape")
        yield x.astype(dtype, copy=False), y


def _read(ds: Any, split: str, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    shape = _item(ds, 0, split)[0].shape
    xs, ys = zip(*_rows(ds, split, dtype, shape), strict=True)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def _prepared(datasets: dict, dtype: type, path: str, opts: dict, cache_dir: Path) -> tuple[dict, dict]:
    """Items written once into ``.npy`` files, row by row (never all in memory)."""
    sample = hashlib.sha256()
    for s, ds in datasets.items():
        for i in np.linspace(0, len(ds) - 1, 8).astype(int).tolist():
            sample.update(_item(ds, i, s)[0].tobytes())
    sizes = {s: len(ds) for s, ds in datasets.items()}
    dest = cache_dir / f"factory-{key_of([path, opts.get('kwargs'), sizes, sample.hexdigest(), str(dtype)])}"

    def fill(tmp: Path) -> dict:
        for s, ds in datasets.items():
            shape = _item(ds, 0, s)[0].shape
            writer = NpyWriter(tmp / f"{s}_x.npy", dtype, (len(ds), *shape))
            labels = []
            for x, y in _rows(ds, s, dtype, shape):
                writer.write(x[None])
                labels.append(y)
            writer.close()
            np.save(tmp / f"{s}_y.npy", np.array(labels, dtype=np.int64))
        return {"function": path, "sizes": sizes}

    if open_prepared(dest) is None:
        prepare(dest, fill)
    files = prepared_arrays(dest, [f"{s}_{k}" for s in datasets for k in ("x", "y")])
    return {s: files[f"{s}_x"] for s in datasets}, {s: files[f"{s}_y"].load() for s in datasets}
