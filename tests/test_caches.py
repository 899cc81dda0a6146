"""Teacher caches: per-sample rows found by sample index after any shuffle or subset, augmented views that
belong to the very input the student receives, files checked before they are trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill.augment import Augmenter
from kdistill.caches import CacheError, LogitCache, ViewCache, cache_key
from kdistill.config import AugmentConfig, TrainConfig
from kdistill.data import BatchLoader, Split
from kdistill.distiller import Distiller, StepOutput
from kdistill.teacher import FrozenTeacher
from kdistill.terms import TermContext, build_term
from kdistill.trainer import fit
from tests.helpers import make_bn_teacher
from tests.images import AUG, conv_teacher, images

# ----------------------------------------------------------------------------- one row per sample


def _cache_for(split: Split, teacher: nn.Module) -> LogitCache:
    return LogitCache.build(teacher, BatchLoader(split, 7))


def test_logit_cache_rows_follow_sample_index_through_shuffles_and_subsets(
    sparse_split: Split, bn_teacher: nn.Module
) -> None:
    bn_teacher.train()  # build() must evaluate in eval mode and then restore the mode
    cache = _cache_for(sparse_split, bn_teacher)
    assert bn_teacher.training
    assert len(cache) == len(sparse_split)
    reference = make_bn_teacher().eval()  # same weights and statistics, evaluated one sample at a time

    rows = torch.tensor([1, 3, 4, 8, 11, 12, 15, 19])
    subset = sparse_split.take(rows)
    assert not torch.equal(subset.index, torch.arange(len(subset)))
    loader = BatchLoader(subset, batch_size=3, shuffle=True, seed=11)
    orders = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        order = []
        for b in loader:
            got = cache.lookup(b["index"])
            with torch.no_grad():
                want = reference(b["x"])
            assert torch.allclose(got, want, atol=1e-6), b["index"]
            order += b["index"].tolist()
        orders.append(order)
    assert sorted(orders[0]) == sorted(subset.index.tolist())
    assert orders[0] != subset.index.tolist() and orders[0] != orders[1]  # really shuffled, per epoch
    # A lookup by position in the subset (instead of by sample index) would have given other rows.
    assert not torch.allclose(cache.logits[: len(subset)], cache.lookup(subset.index))


def test_logit_cache_miss_raises_key_error(sparse_split: Split, bn_teacher: nn.Module) -> None:
    cache = _cache_for(sparse_split.take(torch.arange(10)), bn_teacher)
    present = sparse_split.index[:10]
    absent = sorted(set(range(int(present.max()) + 1)) - set(present.tolist()))[:2]
    with pytest.raises(KeyError, match=str(absent[0])):
        cache.lookup(torch.tensor([int(present[0]), absent[0], absent[1]]))
    with torch.no_grad():
        want = make_bn_teacher().eval()(sparse_split.x[:3])
    torch.testing.assert_close(cache.lookup(present[:3]), want)


@pytest.mark.parametrize("bad", [10_000, -1])
def test_logit_cache_out_of_range_index_is_a_miss(bad: int) -> None:
    cache = LogitCache(torch.randn(4, 3), torch.arange(4))
    with pytest.raises(KeyError):
        cache.lookup(torch.tensor([0, bad]))


def test_logit_cache_refuses_augmented_batches(sparse_split: Split, bn_teacher: nn.Module) -> None:
    """A cache keyed by sample index alone is wrong once inputs are augmented: it would freeze one view."""
    cache = _cache_for(sparse_split, bn_teacher)
    batch = next(iter(BatchLoader(sparse_split, 4)))
    assert cache.student_batch(batch, 0, 0, Augmenter(AugmentConfig(), torch.Generator())) is batch
    with pytest.raises(ValueError, match="only valid without augmentation"):
        cache.student_batch(batch, 0, 0, Augmenter(AUG, torch.Generator()))


# ----------------------------------------------------------------------------- K augmented views per sample


def test_every_cached_row_is_the_teachers_output_on_the_input_the_student_receives() -> None:
    """Through the real training loop: at every step the teacher, run on the batch the student gets,
    gives the logits the cache hands to the loss (to float16 precision, the cache's storage)."""
    split, teacher = images(), conv_teacher()
    cache = ViewCache.build(teacher, split, AUG, views=3, seed=11)
    checked: list[int] = []

    class Checking(Distiller):
        def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
            with torch.no_grad():
                online = self.teacher.model(batch["x"])
            cached = self.teacher_logits(batch)  # from the source: the view cache
            assert torch.allclose(cached, online.half().float(), atol=2e-3, rtol=2e-3)
            checked.append(len(batch["x"]))
            return super().forward(batch)

    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    cfg = TrainConfig(epochs=3, batch_size=16, augment=AUG)
    fit(
        Checking(student, FrozenTeacher(teacher), T=4.0, alpha=0.9, source=cache),
        split,
        split,
        cfg,
        seed=0,
        verbose=False,
    )
    assert sum(checked) == 3 * 32  # 2 full batches of 16 per epoch (drop_last), 3 epochs


def test_views_are_fixed_per_sample_and_the_choice_varies_with_epoch_and_seed() -> None:
    split, teacher = images(), conv_teacher()
    cache = ViewCache.build(teacher, split, AUG, views=4, seed=2)
    # other batching and another order of the same samples
    again = ViewCache.build(teacher, split.take(torch.randperm(40)), AUG, views=4, seed=2, batch_size=7)
    rows = again.rows(cache.index)  # `again` holds the same samples in another order
    assert torch.equal(cache.params, again.params[rows])
    torch.testing.assert_close(cache.logits, again.logits[rows], atol=2e-3, rtol=2e-3)
    idx = split.index
    assert torch.equal(cache.choose(idx, 0, seed=0), cache.choose(idx, 0, seed=0))
    assert not torch.equal(cache.choose(idx, 0, seed=0), cache.choose(idx, 1, seed=0))
    assert not torch.equal(cache.choose(idx, 0, seed=0), cache.choose(idx, 0, seed=1))
    # Over many epochs every view gets used.
    used = torch.stack([cache.choose(idx, e) for e in range(20)])
    assert set(used.flatten().tolist()) == {0, 1, 2, 3}


def test_saved_cache_is_memory_mapped_back_identically(tmp_path: Path) -> None:
    split, teacher = images(), conv_teacher()
    mem = ViewCache.build(teacher, split, AUG, views=2, seed=0)
    disk = ViewCache.build(teacher, split, AUG, views=2, seed=0, path=tmp_path / "c", key="k1")
    assert disk.path == tmp_path / "c"
    for name in ("logits", "params", "index"):
        assert torch.equal(getattr(mem, name), getattr(disk, name))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["index.i64", "logits.f16", "meta.json", "params.i16"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def _saved(tmp_path: Path) -> Path:
    ViewCache.build(conv_teacher(), images(), AUG, views=2, seed=0, path=tmp_path / "c", key="k1")
    return tmp_path / "c"


def test_truncated_cache_file_is_reported(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = (path / "logits.f16").read_bytes()
    (path / "logits.f16").write_bytes(data[:-6])
    with pytest.raises(CacheError, match=r"logits.f16 has \d+ bytes, meta.json says \d+"):
        ViewCache.open(path, "k1")


def test_corrupt_cache_file_fails_its_checksum(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = bytearray((path / "params.i16").read_bytes())
    data[3] ^= 0xFF
    (path / "params.i16").write_bytes(bytes(data))
    with pytest.raises(CacheError, match="SHA-256"):
        ViewCache.open(path, "k1")


def test_stale_or_foreign_cache_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    with pytest.raises(CacheError, match="teacher, data or augmentation changed"):
        ViewCache.open(path, "another-key")
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CacheError, match="corrupt"):
        ViewCache.open(path, "k1")
    with pytest.raises(CacheError, match="no meta.json"):
        ViewCache.open(tmp_path / "nothing-here", "k1")


def test_cache_key_changes_with_teacher_data_and_augmentation() -> None:
    split, teacher = images(), conv_teacher()
    base = cache_key(teacher, split.x, split.index, AUG, 4, 0, None, 4.0)
    assert base == cache_key(teacher, split.x, split.index, AUG, 4, 0, None, 8.0)  # T unused without top-k
    other_teacher = conv_teacher()
    with torch.no_grad():
        other_teacher[0].weight[0, 0, 0, 0] += 1e-3
    changed = [
        cache_key(other_teacher, split.x, split.index, AUG, 4, 0, None, 4.0),
        cache_key(teacher, split.x + 1e-3, split.index, AUG, 4, 0, None, 4.0),
        cache_key(teacher, split.x, split.index + 1, AUG, 4, 0, None, 4.0),
        cache_key(teacher, split.x, split.index, AugmentConfig(shift=1, flip=True), 4, 0, None, 4.0),
        cache_key(teacher, split.x, split.index, AUG, 8, 0, None, 4.0),
        cache_key(teacher, split.x, split.index, AUG, 4, 1, None, 4.0),
        cache_key(teacher, split.x, split.index, AUG, 4, 0, 2, 4.0),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_topk_keeps_the_k_largest_soft_targets_exactly_and_spreads_the_rest() -> None:
    split, teacher = images(), conv_teacher()
    full = ViewCache.build(teacher, split, AUG, views=2, seed=0)
    top = ViewCache.build(teacher, split, AUG, views=2, seed=0, topk=1, T=2.0)
    p_full = (full.logits.float() / 2.0).softmax(-1)
    p_top = (top.logits.float() / 2.0).softmax(-1)
    torch.testing.assert_close(p_top.sum(-1), torch.ones(p_top.shape[:2]), atol=1e-3, rtol=0)
    best = p_full.argmax(-1, keepdim=True)
    torch.testing.assert_close(p_top.gather(-1, best), p_full.gather(-1, best), atol=2e-3, rtol=0)
    others = p_top.masked_fill(torch.zeros_like(p_top, dtype=torch.bool).scatter(-1, best, True), float("nan"))
    rest = (1 - p_full.gather(-1, best)) / 2  # 3 classes: the remaining mass is split over 2
    torch.testing.assert_close(others.nanmean(-1, keepdim=True), rest, atol=2e-3, rtol=0)


def test_meta_records_sizes_and_checksums(tmp_path: Path) -> None:
    meta = json.loads((_saved(tmp_path) / "meta.json").read_text())
    assert meta["key"] == "k1" and meta["shape"] == [40, 2, 3]
    assert {f["name"] for f in meta["files"].values()} == {"logits.f16", "params.i16", "index.i64"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in meta["files"].values())


def test_feature_terms_cannot_read_a_view_cache() -> None:
    split, teacher = images(), conv_teacher()
    cache = ViewCache.build(teacher, split, AUG, views=2, seed=0)
    student = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    term = build_term("fitnet", TermContext("0", "0", (4, 8, 8), (4, 8, 8), 3, 200, 4.0, "none"), {}, 1.0, 0.0)
    with pytest.raises(ValueError, match="kd.cache.mode=online"):
        Distiller(student, teacher, source=cache, terms=[term])
