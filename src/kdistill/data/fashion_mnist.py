"""Fashion-MNIST: found in ``data.root``, ``$KDISTILL_DATA``, Debian's package directory or the user cache,
downloaded from the dataset's official mirror into the user cache when allowed."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from kdistill.data.base import DataError
from kdistill.data.idx import read_idx
from kdistill.data.raw import RawData, SourceArgs

FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# Shape each file must have once decompressed; checked on every load so that a truncated or
# mixed-up file is caught with a message instead of a reshape error deep inside numpy.
FASHION_SHAPES = {
    "train_images": (60000, 28, 28),
    "train_labels": (60000,),
    "test_images": (10000, 28, 28),
    "test_labels": (10000,),
}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# The dataset's official mirror (the Zalando Research project page links it).
FASHION_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdistill" / "fashion-mnist"


def fashion_search_dirs(root: str | None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order."""
    dirs: list[Path] = []
    if root:
        dirs.append(Path(root).expanduser())
    if os.environ.get("KDISTILL_DATA"):
        dirs.append(Path(os.environ["KDISTILL_DATA"]).expanduser())
    dirs += [Path(DEBIAN_DIR), _user_cache_dir()]
    return dirs


def find_fashion_mnist(root: str | None = None, download: bool = True, mirror: str | None = None) -> Path:
    """Return the directory holding the four Fashion-MNIST files, downloading them if allowed.

    An explicit ``root`` is the only place looked at, and never written to: a run that names a directory must
    not quietly train on files found somewhere else. Without one, ``$KDISTILL_DATA``, Debian's directory and
    the user cache are searched in that order, and a download goes to the user cache.
    """
    if root:
        d = Path(root).expanduser()
        missing = [f for f in FASHION_FILES.values() if not (d / f).is_file()]
        if not missing:
            return d
        raise DataError(
            f"Fashion-MNIST not found in data.root={root}: missing {', '.join(missing)}\n"
            "Fix: point data.root at the directory that holds the four files, or leave data.root unset to search "
            "$KDISTILL_DATA, /usr/share/datasets/fashion-mnist and the user cache (downloading there if allowed)."
        )
    dirs = fashion_search_dirs(None)
    for d in dirs:
        if all((d / f).is_file() for f in FASHION_FILES.values()):
            return d
    cache = _user_cache_dir()
    mirror = mirror or os.environ.get("KDISTILL_FASHION_MIRROR", FASHION_MIRROR)
    errors = []
    if download:
        for fname in FASHION_FILES.values():
            if (cache / fname).is_file():
                continue
            try:
                # gzip files are validated after download by reading them as IDX.
                _download_gz(mirror.rstrip("/") + "/" + fname, cache / fname)
            except Exception as e:  # network or validation failure: report all places tried
                errors.append(f"{fname}: {e}")
                break
        if not errors:
            return cache
    looked = "\n".join(f"  - {d}" for d in dirs)
    why = ("\n  download failed: " + errors[0]) if errors else ("\n  (download disabled)" if not download else "")
    raise DataError(
        "Fashion-MNIST not found. Looked for "
        + ", ".join(FASHION_FILES.values())
        + " in:\n"
        + looked
        + why
        + "\nFix: on Debian/Ubuntu run `apt-get install dataset-fashion-mnist`; or download the four files from "
        "the dataset's official mirror into one of the directories above (or set data.root / $KDISTILL_DATA)."
    )


def _download_gz(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.stem + ".", suffix=".gz")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
            shutil.copyfileobj(resp, out)
        read_idx(tmp)  # magic number and size checked before the file is kept
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_fashion_arrays(root: str | None = None, download: bool = True) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST arrays, each checked against its known shape."""
    d = find_fashion_mnist(root, download)
    arrays = {}
    for key, fname in FASHION_FILES.items():
        a = read_idx(d / fname)
        if a.shape != FASHION_SHAPES[key]:
            raise DataError(
                f"{d / fname}: shape {a.shape}, expected {FASHION_SHAPES[key]} for Fashion-MNIST {key}; "
                "the file belongs to another dataset or is incomplete"
            )
        arrays[key] = a
    if arrays["train_labels"].max() > 9 or arrays["test_labels"].max() > 9:
        raise DataError(f"{d}: labels outside 0..9; the label files are corrupt")
    return arrays


def fashion_mnist(args: SourceArgs) -> RawData:
    """Source ``fashion_mnist``: the 60,000 + 10,000 images of Zalando's Fashion-MNIST (IDX files)."""
    return RawData(**load_fashion_arrays(args.root, args.download), class_names=list(FASHION_CLASSES))
