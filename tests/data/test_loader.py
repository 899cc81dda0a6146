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


def test_batches_by_length_are_uniform_shuffled_and_reproducible() -> None:
    g = torch.Generator().manual_seed(0)
    n, bs = 1000, 8
    lengths = torch.randint(3, 60, (n,), generator=g)
    split = Split(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long), torch.arange(n), lengths)
    loader = BatchLoader(split, batch_size=bs, shuffle=True, seed=1, by_length=True)
    batches = [b["index"] for b in loader]
    assert sorted(torch.cat(batches).tolist()) == list(range(n))  # every row once
    # within a batch the lengths are close: far below a random batch's spread
    spread = torch.tensor([float(lengths[b].max() - lengths[b].min()) for b in batches])
    rand = [float(lengths[b["index"]].max() - lengths[b["index"]].min()) for b in BatchLoader(split, bs, True, 1)]
    assert spread.mean() < 0.2 * torch.tensor(rand).mean()
    # the batches come in random order, not sorted by length, and each epoch differs
    means = [float(lengths[b].float().mean()) for b in batches]
    assert means != sorted(means) and _epoch(loader, 1) != _epoch(loader, 0)
    assert _epoch(BatchLoader(split, bs, shuffle=True, seed=1, by_length=True), 1) == _epoch(loader, 1)
    # drop_last drops fewer than a batch; two ranks together see one process's batches
    dropped = BatchLoader(split, 48, shuffle=True, seed=1, drop_last=True, by_length=True)
    assert sum(len(b["index"]) for b in dropped) == 48 * (n // 48)
    one = [b["index"] for b in BatchLoader(split, 8, shuffle=True, seed=2, by_length=True)]
    ranks = [[b["index"] for b in BatchLoader(split, 8, True, 2, rank=r, world=2, by_length=True)] for r in (0, 1)]
    for whole, a, b in zip(one, *ranks, strict=True):
        assert sorted(whole.tolist()) == sorted(a.tolist() + b.tolist())
    assert torch.equal(split.take(torch.tensor([5, 2])).lengths, lengths[[5, 2]])
    with pytest.raises(ValueError, match="need a split with lengths"):
        BatchLoader(_split(10), 2, shuffle=True, by_length=True)
