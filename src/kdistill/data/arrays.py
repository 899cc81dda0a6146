"""Source ``arrays``: a ``.npz`` (or ``.npy`` files) with images ``(N, H, W[, C])`` or feature vectors ``(N, D)``.

``data.root`` is the directory holding one ``.npz`` (or the file named by ``data.arrays.file``) with the keys
``x_train``, ``y_train``, ``x_test``, ``y_test`` (optionally ``x_val``, ``y_val``), or the same names as
``.npy`` files; ``data.arrays.keys`` renames them. Inputs are never read whole: a ``.npy`` or an
uncompressed ``.npz`` member is read a batch at a time straight from the file; a compressed member is
extracted once into the prepared-data directory. Labels (small) are read into memory.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

from kdistill.data.base import DataError
from kdistill.data.prepared import NpyWriter, key_of, open_prepared, prepare
from kdistill.data.raw import RawData, SourceArgs, source_root
from kdistill.data.store import NpyFile

KEYS = ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")


def arrays(args: SourceArgs) -> RawData:
    root = source_root(args, "arrays", "a directory with a .npz (x_train, y_train, x_test, y_test) or those .npy files")
    opts = args.options
    names = {k: (opts.get("keys") or {}).get(k, k) for k in KEYS}
    found = _members(root, opts.get("file"), args.cache_dir)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        if names[k] not in found:
            raise DataError(
                f"{root}: no array {names[k]!r} (have {sorted(found)}); name it in data.arrays.keys, e.g. "
                f"data.arrays.keys={{{k}: my_name}}"
            )
    get = {k: found[names[k]] for k in KEYS if names[k] in found}
    layout = opts.get("layout", "auto")
    x = {k: _images(get[k], layout, names[k]) for k in ("x_train", "x_test", "x_val") if k in get}
    y = {k: _labels(get[k], names[k]) for k in ("y_train", "y_test", "y_val") if k in get}
    for split in ("train", "test", "val"):
        if f"x_{split}" in x and len(x[f"x_{split}"]) != len(y.get(f"y_{split}", [])):
            raise DataError(
                f"{root}: {names['x_' + split]} has {len(x['x_' + split])} rows but {names['y_' + split]} has "
                f"{len(y.get('y_' + split, []))} labels; they must match row for row"
            )
    n = int(max(v.max(initial=-1) for v in y.values())) + 1
    classes = opts.get("class_names") or [str(i) for i in range(n)]
    return RawData(x["x_train"], y["y_train"], x["x_test"], y["y_test"], list(classes), x.get("x_val"), y.get("y_val"))


def _members(root: Path, file: str | None, cache_dir: Path) -> dict[str, NpyFile]:
    """The arrays of the ``.npz`` in ``root`` (or of the ``.npy`` files there), by name."""
    if file is not None:
        path = root / file
        if not path.is_file():
            raise DataError(f"data.arrays.file={file}: {path} not found")
        return _npz(path, cache_dir) if path.suffix == ".npz" else {path.stem: NpyFile.open(path)}
    npz = sorted(root.glob("*.npz"))
    if len(npz) > 1:
        raise DataError(f"{root}: several .npz files ({', '.join(p.name for p in npz)}); choose with data.arrays.file")
    if npz:
        return _npz(npz[0], cache_dir)
    npy = {p.stem: NpyFile.open(p) for p in sorted(root.glob("*.npy"))}
    if not npy:
        raise DataError(f"{root}: no .npz and no .npy files; save the arrays with np.savez(path, x_train=..., ...)")
    return npy


def _npz(path: Path, cache_dir: Path) -> dict[str, NpyFile]:
    """Members of a ``.npz``: read in place when stored uncompressed (``np.savez``), else extracted once."""
    out: dict[str, NpyFile] = {}
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: not a .npz archive ({e})") from None
    with zf:
        compressed = [i for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED]
        for info in zf.infolist():
            if info.filename.endswith(".npy") and info.compress_type == zipfile.ZIP_STORED:
                out[info.filename[:-4]] = NpyFile.open(path, _data_offset(path, info))
    if compressed:
        out.update(_extract(path, compressed, cache_dir))
    return out


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored (uncompressed) zip member's bytes start: after its local header and its name and extra."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if local[:4] != b"PK\x03\x04":
        raise DataError(f"{path}: damaged zip header of member {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _extract(path: Path, members: list[zipfile.ZipInfo], cache_dir: Path) -> dict[str, NpyFile]:
    """Compressed members (``np.savez_compressed``) decompressed once into ``.npy`` files, in blocks."""
    st = path.stat()
    dest = cache_dir / f"npz-{key_of([str(path.resolve()), st.st_size, st.st_mtime_ns])}"

    def fill(tmp: Path) -> dict:
        with zipfile.ZipFile(path) as zf:
            for info in members:
                with zf.open(info) as src:
                    version = np.lib.format.read_magic(src)
                    header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                    shape, fortran, dtype = header[version](src)
                    if dtype.hasobject or (fortran and len(shape) > 1):
                        raise DataError(f"{path}: member {info.filename} is not a plain C-ordered numeric array")
                    writer = NpyWriter(tmp / info.filename, dtype, shape)
                    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
                    per = max(1, (16 << 20) // max(row, 1))
                    for start in range(0, shape[0] if shape else 0, per):
                        n = min(per, shape[0] - start)
                        writer.write(np.frombuffer(src.read(n * row), dtype).reshape(n, *shape[1:]))
                    writer.close()
        return {"source": str(path), "members": [i.filename for i in members]}

    if open_prepared(dest) is None:
        prepare(dest, fill)
    return {i.filename[:-4]: NpyFile.open(dest / i.filename) for i in members}


def _images(a: NpyFile, layout: str, name: str) -> NpyFile:
    """Inputs as ``(N, C, H, W)`` images (``(N, H, W)`` gets a channel) or ``(N, D)`` vectors."""
    shape = a.stored
    if len(shape) not in (2, 3, 4):
        raise DataError(
            f"{name}: shape {shape}; expected images (N, H, W), (N, H, W, C), (N, C, H, W) or vectors (N, D)"
        )
    if len(shape) == 4:
        last = layout == "nhwc" or (layout == "auto" and shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4))
        return NpyFile(a.path, a.offset, a.dtype, shape, channels_last=last)
    if len(shape) == 3:
        return NpyFile(a.path, a.offset, a.dtype, (shape[0], 1, shape[1], shape[2]))
    return a


def _labels(a: NpyFile, name: str) -> np.ndarray:
    y = a.load()
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.mod(y[np.isfinite(y)], 1) == 0):
        raise DataError(
            f"{name}: float targets ({y.dtype} {y.shape}, e.g. {y.ravel()[:3].tolist()}) where class labels (integers "
            "0..C-1) belong; to predict numbers, write a regression config (task: regression, data.source: npz; "
            "see configs/regression/)"
        )
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise DataError(f"{name}: labels must be integers of shape (N,), got {y.dtype} {y.shape}")
    return y.astype(np.int64)
