"""Inputs read a batch at a time are the inputs built in memory: same rows, same normalization, any order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdistill.data import DataError
from kdistill.data.prepared import NpyWriter
from kdistill.data.store import (
    LazyInputs,
    MemoryRows,
    NpyFile,
    fingerprint,
    in_memory_stats,
    normalize,
    streamed_stats,
)


def _raw(n: int = 50, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, 5, 4)).astype(np.uint8)


def test_npy_rows_come_back_in_the_asked_order(tmp_path: Path) -> None:
    raw = _raw()
    np.save(tmp_path / "x.npy", raw)
    src = NpyFile.open(tmp_path / "x.npy")
    assert src.shape == raw.shape and len(src) == 50 and src.nbytes == raw.nbytes
    rows = np.array([7, 3, 4, 5, 49, 0, 3])  # runs, repeats, out of order
    assert np.array_equal(src.read(rows), raw[rows])
    assert np.array_equal(src.load(), raw)
    assert np.array_equal(np.concatenate(list(src.chunks(16))), raw)


def test_channels_last_files_are_handed_out_channels_first(tmp_path: Path) -> None:
    raw = _raw()
    np.save(tmp_path / "x.npy", raw.transpose(0, 2, 3, 1))  # stored (N, H, W, C)
    stored = NpyFile.open(tmp_path / "x.npy")
    src = NpyFile(stored.path, stored.offset, stored.dtype, stored.stored, channels_last=True)
    assert src.shape == raw.shape
    assert np.array_equal(src.read(np.array([4, 1])), raw[[4, 1]])


def test_lazy_inputs_equal_the_in_memory_tensor(tmp_path: Path) -> None:
    raw = _raw()
    np.save(tmp_path / "x.npy", raw)
    norm = in_memory_stats(raw)
    whole = normalize(raw, norm)
    for lazy in (LazyInputs(NpyFile.open(tmp_path / "x.npy"), norm), LazyInputs(MemoryRows(raw), norm)):
        assert lazy.shape == tuple(whole.shape)
        idx = torch.tensor([9, 2, 2, 40])
        assert torch.equal(lazy[idx], whole[idx])  # bit for bit: the same operations
        assert torch.equal(lazy[3:8], whole[3:8])
        view = lazy.take(torch.tensor([10, 20, 30]))  # a view: nothing read yet
        assert len(view) == 3 and torch.equal(view[torch.tensor([2, 0])], whole[[30, 10]])
        assert torch.equal(view.take(np.array([1]))[0:1], whole[20:21])


def test_streamed_statistics_agree_with_in_memory_ones(tmp_path: Path) -> None:
    for raw in (_raw(seed=1), np.random.default_rng(2).normal(3, 2, size=(40, 6)).astype(np.float32)):
        np.save(tmp_path / "x.npy", raw)
        a, b = in_memory_stats(raw), streamed_stats(NpyFile.open(tmp_path / "x.npy"))
        assert a.scale == b.scale and len(a.mean) == raw.shape[1]
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6)
        np.testing.assert_allclose(a.std, b.std, rtol=1e-5)
    # Per channel: a constant channel gets std 1 (not a division by zero).
    flat = np.zeros((4, 2, 3, 3), np.uint8)
    flat[:, 1] = 255
    assert in_memory_stats(flat).std == (1.0, 1.0) and streamed_stats(MemoryRows(flat)).std == (1.0, 1.0)


def test_fingerprints_follow_the_data(tmp_path: Path) -> None:
    raw = _raw()
    np.save(tmp_path / "x.npy", raw)
    norm = in_memory_stats(raw)
    lazy = LazyInputs(NpyFile.open(tmp_path / "x.npy"), norm)
    assert fingerprint(lazy) == fingerprint(LazyInputs(NpyFile.open(tmp_path / "x.npy"), norm))
    assert fingerprint(lazy) != fingerprint(lazy.take(np.arange(10)))
    assert fingerprint(normalize(raw, norm)) != fingerprint(normalize(raw[::-1].copy(), norm))


def test_writer_and_reader_agree_and_refuse_what_they_must(tmp_path: Path) -> None:
    raw = _raw(n=10)
    w = NpyWriter(tmp_path / "y.npy", np.uint8, raw.shape)
    w.write(raw[:4])
    w.write(raw[4:])
    w.close()
    assert np.array_equal(np.load(tmp_path / "y.npy"), raw)
    w = NpyWriter(tmp_path / "z.npy", np.uint8, raw.shape)
    w.write(raw[:3])
    with pytest.raises(ValueError, match="3 rows written, 10 announced"):
        w.close()
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"bad.npy: not a readable .npy array"):
        NpyFile.open(tmp_path / "bad.npy")
    short = NpyFile.open(tmp_path / "y.npy")
    (tmp_path / "y.npy").write_bytes((tmp_path / "y.npy").read_bytes()[:-30])
    with pytest.raises(DataError, match="ends early"):
        short.read(np.array([9]))
