"""The batch loader: every sample once per epoch, order from (seed, epoch) only, drop_last."""

from __future__ import annotations

import pytest
import torch

from kdistill.data import BatchLoader, Split

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
        assert sorted(ids) == split.index.tolist()
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
    assert _epoch(BatchLoader(split, batch_size=4), 1) == split.index.tolist()


def test_drop_last() -> None:
    split = _split(10)
    loader = BatchLoader(split, batch_size=4, shuffle=True, seed=0, drop_last=True)
    assert len(loader) == 2
    batches = list(loader)
    assert [len(b["index"]) for b in batches] == [4, 4]
    ids = [i for b in batches for i in b["index"].tolist()]
    assert len(set(ids)) == 8 and set(ids) <= set(split.index.tolist())
    assert len(BatchLoader(split, batch_size=4, drop_last=False)) == 3
    assert len(BatchLoader(split, batch_size=5, drop_last=True)) == 2
    assert list(BatchLoader(split, batch_size=11, drop_last=True)) == []
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(split, batch_size=0)
