"""IDX reading, finding Fashion-MNIST, split carving, and the batch loader."""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from kdistill import data as kdata
from kdistill.data import FASHION_FILES, BatchLoader, DataError, Split, find_fashion_mnist, load_data, read_idx


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


# ----------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_images(tmp_path: Path, name: str) -> None:
    a = read_idx(write_idx(tmp_path / name, IMAGES))
    assert a.shape == (2, 3, 4) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, IMAGES)


@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_read_idx_labels(tmp_path: Path, name: str) -> None:
    a = read_idx(write_idx(tmp_path / name, LABELS))
    np.testing.assert_array_equal(a, LABELS)
    assert a.shape == (5,)


def test_read_idx_header_bytes_by_hand(tmp_path: Path) -> None:
    p = tmp_path / "hand-idx1-ubyte"
    p.write_bytes(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03" + b"\x07\x00\xff")
    np.testing.assert_array_equal(read_idx(p), np.array([7, 0, 255], dtype=np.uint8))


def _assert_data_error(path: Path, *fragments: str) -> None:
    with pytest.raises(DataError) as info:
        read_idx(path)
    msg = str(info.value)
    assert str(path) in msg
    for f in fragments:
        assert f in msg


def test_truncated_gz_raises_data_error(tmp_path: Path) -> None:
    p = tmp_path / "images-idx3-ubyte.gz"
    full = gzip.compress(idx_bytes(np.zeros((4, 5, 5), dtype=np.uint8) + 7))
    p.write_bytes(full[: len(full) - 12])
    _assert_data_error(p, "truncated or corrupt")


def test_not_gzip_but_named_gz_raises_data_error(tmp_path: Path) -> None:
    p = tmp_path / "labels-idx1-ubyte.gz"
    p.write_bytes(idx_bytes(LABELS))  # plain bytes under a .gz name
    _assert_data_error(p, "cannot read")


@pytest.mark.parametrize(
    "magic",
    [b"\x00\x00\x08\x02", b"\x00\x00\x0d\x03", b"\x01\x00\x08\x01", b"PK\x03\x04", b"<htm"],
)
def test_wrong_magic_raises_data_error(tmp_path: Path, magic: bytes) -> None:
    p = tmp_path / "labels-idx1-ubyte"
    p.write_bytes(magic + idx_bytes(LABELS)[4:])
    _assert_data_error(p, "bad IDX magic number", magic.hex())


def test_header_announcing_more_data_raises_data_error(tmp_path: Path) -> None:
    p = tmp_path / "images-idx3-ubyte"
    raw = idx_bytes(IMAGES)
    p.write_bytes(raw[:-5])  # header says 2x3x4 = 24 bytes, 19 present
    _assert_data_error(p, "(2, 3, 4)", "24 bytes", "holds 19")
    pg = tmp_path / "images-idx3-ubyte.gz"
    pg.write_bytes(gzip.compress(raw[:-5]))  # a valid gzip stream of too little data
    _assert_data_error(pg, "holds 19")


def test_trailing_bytes_and_short_files_raise_data_error(tmp_path: Path) -> None:
    p = tmp_path / "labels-idx1-ubyte"
    p.write_bytes(idx_bytes(LABELS) + b"\x00")
    _assert_data_error(p, "holds 6")
    p.write_bytes(b"\x00\x00")
    _assert_data_error(p, "too short")
    p.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    _assert_data_error(p, "header cut short")


# ----------------------------------------------------------------------------- find_fashion_mnist


@pytest.fixture
def isolated_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """No system-wide Fashion-MNIST, no user cache, no $KDISTILL_DATA: only what the test provides."""
    debian = tmp_path / "debian-fashion-mnist"
    xdg = tmp_path / "xdg-cache"
    monkeypatch.setattr(kdata, "DEBIAN_DIR", str(debian))
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.delenv("KDISTILL_DATA", raising=False)
    monkeypatch.delenv("KDISTILL_FASHION_MIRROR", raising=False)
    return {"debian": debian, "cache": xdg / "kdistill" / "fashion-mnist"}


def _write_fake_fashion(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for key, fname in FASHION_FILES.items():
        write_idx(d / fname, IMAGES if "images" in key else LABELS)
    return d


def test_find_fashion_mnist_missing_lists_places_and_fix(tmp_path: Path, isolated_search: dict[str, Path]) -> None:
    root = tmp_path / "no-files-here"
    root.mkdir()
    with pytest.raises(DataError) as info:
        find_fashion_mnist(root=str(root), download=False)
    msg = str(info.value)
    for d in (root, isolated_search["debian"], isolated_search["cache"]):
        assert f"  - {d}" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "download disabled" in msg
    assert all(f in msg for f in FASHION_FILES.values())


def test_find_fashion_mnist_needs_all_four_files(tmp_path: Path, isolated_search: dict[str, Path]) -> None:
    root = _write_fake_fashion(tmp_path / "partial")
    (root / FASHION_FILES["test_labels"]).unlink()
    with pytest.raises(DataError, match="not found"):
        find_fashion_mnist(root=str(root), download=False)


def test_find_fashion_mnist_uses_kdistill_data(
    tmp_path: Path, isolated_search: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _write_fake_fashion(tmp_path / "from-env")
    monkeypatch.setenv("KDISTILL_DATA", str(d))
    assert find_fashion_mnist(download=False) == d
    # An explicit root is searched first.
    r = _write_fake_fashion(tmp_path / "explicit-root")
    assert find_fashion_mnist(root=str(r), download=False) == r


def test_find_fashion_mnist_downloads_into_cache_from_mirror(tmp_path: Path, isolated_search: dict[str, Path]) -> None:
    mirror = _write_fake_fashion(tmp_path / "mirror")
    got = find_fashion_mnist(root=None, download=True, mirror=mirror.as_uri())
    assert got == isolated_search["cache"]
    assert sorted(p.name for p in got.iterdir()) == sorted(FASHION_FILES.values())
    np.testing.assert_array_equal(read_idx(got / FASHION_FILES["train_labels"]), LABELS)


def test_find_fashion_mnist_rejects_corrupt_download(tmp_path: Path, isolated_search: dict[str, Path]) -> None:
    mirror = _write_fake_fashion(tmp_path / "mirror")
    bad = mirror / FASHION_FILES["train_images"]
    bad.write_bytes(bad.read_bytes()[:-8])  # truncated gzip on the mirror
    with pytest.raises(DataError) as info:
        find_fashion_mnist(download=True, mirror=mirror.as_uri())
    msg = str(info.value)
    assert "download failed" in msg and FASHION_FILES["train_images"] in msg
    cache = isolated_search["cache"]
    assert not cache.exists() or not any(p.name.startswith("train-images") for p in cache.iterdir())


# ----------------------------------------------------------------------------- load_data


def _ids(split: Split) -> list[int]:
    return split.index.tolist()


@pytest.mark.parametrize("name, val_size, n_full", [("synthetic", 100, 600), ("digits", 200, 1438)])
def test_train_val_disjoint_and_reproducible(name: str, val_size: int, n_full: int) -> None:
    a = load_data(name, val_size=val_size, split_seed=0)
    train, val = set(_ids(a.train)), set(_ids(a.val))
    assert len(val) == val_size and len(a.val) == val_size
    assert not train & val
    assert train | val == set(range(n_full))
    b = load_data(name, val_size=val_size, split_seed=0)
    assert torch.equal(a.val.index, b.val.index) and torch.equal(a.val.x, b.val.x)
    assert torch.equal(a.val.y, b.val.y) and a.fingerprint == b.fingerprint
    c = load_data(name, val_size=val_size, split_seed=1)
    assert not torch.equal(a.val.index, c.val.index)
    # Asking for few labels does not move the validation split.
    d = load_data(name, val_size=val_size, split_seed=0, labelled=20)
    assert torch.equal(a.val.index, d.val.index) and torch.equal(a.train.index, d.train.index)


@pytest.mark.parametrize("name, labelled, per_class", [("synthetic", 40, 10), ("digits", 50, 5)])
def test_labelled_subset_is_stratified(name: str, labelled: int, per_class: int) -> None:
    b = load_data(name, val_size=100, labelled=labelled)
    st = b.student_labelled
    assert len(st) == labelled
    assert Counter(st.y.tolist()) == {c: per_class for c in range(b.num_classes)}
    assert set(_ids(st)) <= set(_ids(b.train))
    # Labels are the true ones, looked up by sample index.
    true = dict(zip(_ids(b.train), b.train.y.tolist(), strict=True))
    assert all(true[i] == y for i, y in zip(_ids(st), st.y.tolist(), strict=True))
    assert b.transfer_set is st  # transfer="labelled": soft targets on the labelled set only


def test_labelled_not_divisible_is_as_even_as_possible() -> None:
    b = load_data("synthetic", val_size=100, labelled=42)
    counts = Counter(b.student_labelled.y.tolist())
    assert sum(counts.values()) == 42 and max(counts.values()) - min(counts.values()) <= 1


def test_transfer_all_keeps_labels_only_at_labelled_rows() -> None:
    b = load_data("synthetic", val_size=100, labelled=20, transfer="all")
    ts, st = b.transfer_set, b.student_labelled
    assert len(ts) == len(b.train)
    assert torch.equal(ts.index, b.train.index) and torch.equal(ts.x, b.train.x)
    labelled_ids = set(_ids(st))
    for i, y, y_true in zip(_ids(ts), ts.y.tolist(), b.train.y.tolist(), strict=True):
        assert y == (y_true if i in labelled_ids else -1)
    assert int((ts.y != -1).sum()) == 20
    assert torch.equal(b.train.y, load_data("synthetic", val_size=100).train.y)  # train keeps every label


def test_bad_split_sizes_raise_data_error() -> None:
    with pytest.raises(DataError, match="val_size"):
        load_data("synthetic", val_size=600)
    with pytest.raises(DataError, match="labelled"):
        load_data("synthetic", val_size=100, labelled=501)
    with pytest.raises(DataError, match="unknown dataset"):
        load_data("cifar", val_size=10)


# ----------------------------------------------------------------------------- BatchLoader


def _split(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % 3, torch.arange(n) * 7 + 2)


def _epoch(loader: BatchLoader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return [i for b in loader for i in b["index"].tolist()]


def test_every_sample_once_per_epoch() -> None:
    split = _split(23)
    loader = BatchLoader(split, batch_size=5, shuffle=True, seed=3)
    assert len(loader) == 5
    for epoch in range(3):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert [len(b["index"]) for b in batches] == [5, 5, 5, 5, 3]
        ids = [i for b in batches for i in b["index"].tolist()]
        assert sorted(ids) == _ids(split)
        for b in batches:  # x, y and index stay row-aligned
            rows = (b["index"] - 2) // 7
            assert torch.equal(b["x"][:, 0], rows.float()) and torch.equal(b["y"], rows % 3)


def test_order_differs_between_epochs_and_depends_only_on_seed_and_epoch() -> None:
    split = _split(30)
    a = BatchLoader(split, batch_size=4, shuffle=True, seed=5)
    orders = [_epoch(a, e) for e in range(3)]
    assert orders[0] != orders[1] != orders[2] != orders[0]
    # A fresh loader jumping straight to epoch 2 sees what the first saw in epoch 2 (resumed runs).
    b = BatchLoader(split, batch_size=4, shuffle=True, seed=5)
    assert _epoch(b, 2) == orders[2]
    assert _epoch(a, 0) == orders[0]  # revisiting an epoch reproduces it
    assert _epoch(BatchLoader(split, batch_size=4, shuffle=True, seed=6), 0) != orders[0]
    # Without shuffle the order is the split's own.
    assert _epoch(BatchLoader(split, batch_size=4), 1) == _ids(split)


def test_drop_last() -> None:
    split = _split(10)
    loader = BatchLoader(split, batch_size=4, shuffle=True, seed=0, drop_last=True)
    assert len(loader) == 2
    batches = list(loader)
    assert [len(b["index"]) for b in batches] == [4, 4]
    ids = [i for b in batches for i in b["index"].tolist()]
    assert len(set(ids)) == 8 and set(ids) <= set(_ids(split))
    assert len(BatchLoader(split, batch_size=4, drop_last=False)) == 3
    assert len(BatchLoader(split, batch_size=5, drop_last=True)) == 2
    assert list(BatchLoader(split, batch_size=11, drop_last=True)) == []
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(split, batch_size=0)
