"""load_data: train/validation carving, stratified labelled subsets, transfer sets, bad sizes."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from kdistill.data import DataError, Split, load_data

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
        load_data("cifar10", val_size=10)
