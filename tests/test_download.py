"""The download path of the Fashion-MNIST loader, against a local file:// mirror (no network)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import kdistill.data as data
from kdistill.data import FASHION_FILES, DataError, find_fashion_mnist


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No system copy, no $KDISTILL_DATA: only the user cache (under tmp_path) and the mirror."""
    monkeypatch.setattr(data, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    monkeypatch.delenv("KDISTILL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    return mirror


def test_downloads_validated_files_into_user_cache(isolated: Path, tmp_path: Path) -> None:
    for key, name in FASHION_FILES.items():
        _write_idx(isolated / name, np.zeros((3, 4, 4) if "images" in key else (3,)))
    d = find_fashion_mnist(download=True, mirror=isolated.as_uri())
    assert d == tmp_path / "cache" / "kdistill" / "fashion-mnist"
    assert sorted(p.name for p in d.iterdir()) == sorted(FASHION_FILES.values())


def test_corrupt_download_is_reported_and_not_kept(isolated: Path, tmp_path: Path) -> None:
    for name in FASHION_FILES.values():
        (isolated / name).write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 5))  # header cut short
    with pytest.raises(DataError) as e:
        find_fashion_mnist(download=True, mirror=isolated.as_uri())
    msg = str(e.value)
    assert "download failed" in msg and "train-images-idx3-ubyte.gz" in msg
    cache = tmp_path / "cache" / "kdistill" / "fashion-mnist"
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing half-written left behind


def test_missing_everywhere_says_where_it_looked(isolated: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        find_fashion_mnist(root=str(tmp_path / "mine"), download=False)
    msg = str(e.value)
    assert str(tmp_path / "mine") in msg and "no-debian" in msg and "apt-get install dataset-fashion-mnist" in msg
