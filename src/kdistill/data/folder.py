"""Source ``folder``: an image folder tree, one sub-folder per class.

    <data.root>/train/<class>/*.png|jpg|jpeg|bmp|gif|webp|tif|tiff
    <data.root>/val/<class>/...     optional: the validation split (else carved from train)
    <data.root>/test/<class>/...    optional: the test split (else a stratified test split is carved from
                                    train, data.folder.test_fraction of each class, and recorded)

Classes are the sub-folders of ``train/``, sorted, or in the order ``data.folder.classes`` gives (a teacher
trained elsewhere has its own order). Images are decoded with Pillow, converted to grey or RGB
(``data.folder.mode``; ``auto``: grey when every image is), and resized or centre-cropped to
``data.folder.size`` (``null``: every image must already have one size). The decoded images are prepared
once into uint8 ``.npy`` files under the prepared-data directory (keyed by the file list, sizes,
modification times and these settings), so that later runs read them at disk speed; nothing is written into
``data.root``.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from kdistill.data.base import DataError
from kdistill.data.prepared import NpyWriter, key_of, open_prepared, prepare, prepared_arrays
from kdistill.data.raw import RawData, SourceArgs, source_root

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;L"}


def _images_of(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.name[0] != ".")


def scan(root: Path, order: list[str] | None = None) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names (train's sub-folders, sorted, or in the given ``order``) and, per split present, ``(file,
    class)`` pairs in a fixed order."""
    train = root / "train"
    if not train.is_dir():
        raise DataError(
            f"data.root={root}: no train/ folder; the folder source expects {root}/train/<class>/<image files> "
            "(and optionally val/ and test/ in the same layout)"
        )
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and p.name[0] != ".")
    if not classes:
        raise DataError(f"{train}: no class folders; put each class's images in {train}/<class name>/")
    if order is not None:  # e.g. the class order of a teacher trained elsewhere
        if sorted(order) != classes:
            missing, extra = sorted(set(order) - set(classes)), sorted(set(classes) - set(order))
            raise DataError(
                f"data.folder.classes lists {missing or 'no'} class(es) without a folder in {train} and leaves out "
                f"{extra or 'none'}; list every class folder exactly once"
            )
        classes = list(order)
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        d = root / split
        if not d.is_dir():
            continue
        found = sorted(p.name for p in d.iterdir() if p.is_dir() and p.name[0] != ".")
        if split != "train" and found != sorted(classes):
            missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
            raise DataError(
                f"{d}: its class folders differ from train/'s (missing {missing}, not in train {extra}); every "
                "split needs the same classes"
            )
        files[split] = []
        for c, name in enumerate(classes):
            images = _images_of(d / name)
            if not images:
                raise DataError(
                    f"{d / name}: empty class folder (no {', '.join(sorted(IMAGE_SUFFIXES))} files); add images or "
                    "remove the folder"
                )
            files[split] += [(p, c) for p in images]
    return classes, files


def _probe(path: Path) -> tuple[tuple[int, int], str] | str:
    """``((height, width), mode)`` of an image file from its header, or the reason Pillow cannot read it."""
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            return (img.height, img.width), img.mode
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        return f"{type(e).__name__}: {e}"


def _decode(job: tuple[str, tuple[int, int] | None, str, str]) -> np.ndarray | str:
    """One image as uint8 ``(C, H, W)``: converted, resized or centre-cropped; or why it failed."""
    path, size, mode, fit = job
    try:
        with Image.open(path) as img:
            img = img.convert("L" if mode == "grey" else "RGB")
            if size is not None and (img.height, img.width) != tuple(size):
                img = _fit(img, size, fit)
            a = np.asarray(img, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def _fit(img: Image.Image, size: tuple[int, int], fit: str) -> Image.Image:
    h, w = size
    if fit == "resize":
        return img.resize((w, h), Image.BILINEAR)
    scale = max(h / img.height, w / img.width)  # centre_crop: cover the target, then cut the middle
    img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.BILINEAR)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def _size(size: object) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size  # validated by the config: [height, width]
    return (int(h), int(w))


def _carve_test(files: list[tuple[Path, int]], fraction: float) -> tuple[list, list]:
    """A stratified, seeded test split of ``files`` (at least one image of each class stays in train)."""
    rng = np.random.default_rng(0)
    train, test = [], []
    for c in sorted({c for _, c in files}):
        members = [f for f in files if f[1] == c]
        pick = set(rng.permutation(len(members))[: min(len(members) - 1, round(len(members) * fraction))].tolist())
        for i, f in enumerate(members):
            (test if i in pick else train).append(f)
    return train, test


def folder(args: SourceArgs) -> RawData:
    root = source_root(args, "folder", "a folder with train/<class>/<images> (and optionally val/, test/)")
    opts = args.options
    classes, files = scan(root, opts.get("classes"))
    listing = {
        s: [(str(p.relative_to(root)), c, p.stat().st_size, p.stat().st_mtime_ns) for p, c in fs]
        for s, fs in files.items()
    }
    settings = {k: opts.get(k) for k in ("size", "fit", "mode", "on_error", "test_fraction", "classes")}
    path = args.cache_dir / f"folder-{key_of({'files': listing, 'settings': settings})}"
    meta = open_prepared(path)
    if meta is None:
        meta = prepare(path, lambda tmp: _prepare(tmp, root, classes, files, opts))
    arrays = prepared_arrays(path, [f"{s}_{k}" for s in SPLITS for k in ("x", "y")])
    notes = [f"prepared images: {path} ({meta['decode']})"]
    if meta["skipped"]:
        shown = ", ".join(meta["skipped"][:5]) + (" ..." if len(meta["skipped"]) > 5 else "")
        notes.append(f"skipped {len(meta['skipped'])} files Pillow cannot decode (data.folder.on_error=skip): {shown}")
    if meta.get("carved_test"):
        notes.append(
            f"no test/ folder: {len(meta['carved_test'])} training images ({opts.get('test_fraction')} of each "
            f"class, seed 0) form the test split; a run lists them in its data.json"
        )
    val = "val_x" in arrays
    return RawData(
        arrays["train_x"],
        arrays["train_y"].load(),
        arrays["test_x"],
        arrays["test_y"].load(),
        classes,
        val_images=arrays["val_x"] if val else None,
        val_labels=arrays["val_y"].load() if val else None,
        notes=notes,
        record={k: meta[k] for k in ("carved_test", "skipped") if meta.get(k)},
    )


def _prepare(tmp: Path, root: Path, classes: list[str], files: dict, opts: dict) -> dict:
    """Decode every image (in parallel processes) into ``<split>_x.npy`` / ``<split>_y.npy`` in ``tmp``."""
    t0 = time.perf_counter()
    size, mode, carved = _size(opts.get("size")), opts.get("mode", "auto"), None
    if "test" not in files:
        files["train"], files["test"] = _carve_test(files["train"], float(opts.get("test_fraction", 0.2)))
        carved = [str(p.relative_to(root)) for p, _ in files["test"]]
    every = [p for fs in files.values() for p, _ in fs]
    workers = max(1, min(os.cpu_count() or 1, 8))
    with ProcessPoolExecutor(workers) as pool:
        probes = dict(zip(every, pool.map(_probe, every, chunksize=256), strict=True))
        bad = {p: why for p, why in probes.items() if isinstance(why, str)}
        if bad and opts.get("on_error", "error") != "skip":
            p, why = next(iter(bad.items()))
            raise DataError(
                f"{p}: Pillow cannot decode it ({why}); {len(bad)} such file(s) in {root}. Remove or replace it, or "
                "set data.folder.on_error=skip to skip such files (they are counted and listed)"
            )
        good = {p: v for p, v in probes.items() if p not in bad}
        if size is None:
            sizes = {v[0] for v in good.values()}
            if len(sizes) > 1:
                examples = {}
                for p, (s, _) in good.items():
                    examples.setdefault(s, p)
                shown = "; ".join(f"{p.relative_to(root)} {h}x{w}" for (h, w), p in list(examples.items())[:3])
                raise DataError(
                    f"{root}: images of {len(sizes)} different sizes ({shown}); set data.folder.size: [height, "
                    "width] (and data.folder.fit: resize or centre_crop) to bring them to one"
                )
            size = next(iter(sizes)) if sizes else (1, 1)
        if mode == "auto":
            mode = "grey" if all(m in GREY_MODES for _, m in good.values()) else "rgb"
        fit = opts.get("fit", "resize")
        channels = 1 if mode == "grey" else 3
        for split, fs in files.items():
            kept = [(p, c) for p, c in fs if p not in bad]
            writer = NpyWriter(tmp / f"{split}_x.npy", np.uint8, (len(kept), channels, *size))
            jobs = [(str(p), size, mode, fit) for p, _ in kept]
            for p, img in zip(kept, pool.map(_decode, jobs, chunksize=64), strict=True):
                if isinstance(img, str):  # readable header, unreadable pixels
                    raise DataError(f"{p[0]}: Pillow cannot decode it ({img}); remove or replace the file")
                writer.write(img[None])
            writer.close()
            np.save(tmp / f"{split}_y.npy", np.array([c for _, c in kept], dtype=np.int64))
    seconds = time.perf_counter() - t0
    n = len(every) - len(bad)
    return {
        "root": str(root),
        "classes": classes,
        "counts": {s: len([1 for p, _ in fs if p not in bad]) for s, fs in files.items()},
        "size": list(size),
        "mode": mode,
        "skipped": [str(p.relative_to(root)) for p in bad],
        "carved_test": carved,
        "decode": f"decoded {n:,} images in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f} images/s, "
        f"{workers} processes)",
    }
