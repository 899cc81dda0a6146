"""Finding (and downloading) Fashion-MNIST: search order, all four files, a corrupt download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kdistill.data import FASHION_FILES, DataError, find_fashion_mnist, read_idx
from kdistill.data import fashion_mnist as fashion_source
from tests.data.idx_files import IMAGES, LABELS, write_idx

# ----------------------------------------------------------------------------- find_fashion_mnist


@pytest.fixture
def isolated_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """No system-wide Fashion-MNIST, no user cache, no $KDISTILL_DATA: only what the test provides."""
    debian = tmp_path / "debian-fashion-mnist"
    xdg = tmp_path / "xdg-cache"
    monkeypatch.setattr(fashion_source, "DEBIAN_DIR", str(debian))
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
    with pytest.raises(DataError) as info:
        find_fashion_mnist(download=False)
    msg = str(info.value)
    for d in (isolated_search["debian"], isolated_search["cache"]):
        assert f"  - {d}" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "download disabled" in msg
    assert all(f in msg for f in FASHION_FILES.values())


def test_an_explicit_root_without_the_files_is_an_error_even_when_they_exist_elsewhere(
    tmp_path: Path, isolated_search: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDISTILL_DATA", str(_write_fake_fashion(tmp_path / "elsewhere")))
    with pytest.raises(DataError) as info:
        find_fashion_mnist(root=str(tmp_path / "nonexistent"), download=False)
    msg = str(info.value)
    assert f"data.root={tmp_path / 'nonexistent'}" in msg and "missing train-images-idx3-ubyte.gz" in msg
    assert "elsewhere" not in msg


def test_an_explicit_root_is_never_downloaded_into(tmp_path: Path, isolated_search: dict[str, Path]) -> None:
    mirror = _write_fake_fashion(tmp_path / "mirror")
    root = tmp_path / "mine"
    with pytest.raises(DataError, match="data.root="):
        find_fashion_mnist(root=str(root), download=True, mirror=mirror.as_uri())
    assert not root.exists()


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


def test_ci_fails_instead_of_skipping_when_the_data_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.helpers as h

    monkeypatch.setattr(h, "fashion_available", lambda: False)
    monkeypatch.setenv("KDISTILL_REQUIRE_FASHION", "1")
    with pytest.raises(pytest.fail.Exception, match="KDISTILL_REQUIRE_FASHION=1"):
        h.skip_without_fashion()
    monkeypatch.delenv("KDISTILL_REQUIRE_FASHION")
    with pytest.raises(pytest.skip.Exception):
        h.skip_without_fashion()
