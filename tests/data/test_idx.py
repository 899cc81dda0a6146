"""Reading IDX files: shapes, headers, truncated and foreign files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from kdistill.data import DataError, read_idx
from tests.data.idx_files import IMAGES, LABELS, idx_bytes, write_idx

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
